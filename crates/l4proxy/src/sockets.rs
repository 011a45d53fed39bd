//! How the proxy makes its sockets: in which namespace, with which mark,
//! and whether they spoof the original source address.

use std::io;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;

use ambit_netns::NetNs;
use socket2::{Domain, Protocol, SockAddr, Socket, Type};
use tokio::net::{TcpListener, TcpSocket, TcpStream};

/// How long a connect to a workload (or a passthrough destination) may
/// take: a black-holed destination must not hold a connection slot for the
/// kernel's two-minute SYN retry budget.
pub(crate) const DIAL_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(10);

/// A socket factory: plain, marked (`SO_MARK`), transparent (original-source
/// spoofing and TPROXY listeners), optionally inside another namespace
/// (in-pod mode makes each pod's sockets inside the pod).
#[derive(Debug, Clone, Default)]
pub struct Sockets {
    netns: Option<Arc<NetNs>>,
    mark: Option<u32>,
}

impl Sockets {
    /// Sockets in the proxy's own namespace, unmarked.
    pub fn new() -> Self {
        Self::default()
    }

    /// Makes every socket inside `ns`.
    pub fn in_netns(mut self, ns: Arc<NetNs>) -> Self {
        self.netns = Some(ns);
        self
    }

    /// Sets `SO_MARK` on every socket (needs CAP_NET_ADMIN).
    pub fn with_mark(mut self, mark: Option<u32>) -> Self {
        self.mark = mark;
        self
    }

    fn socket(&self, domain: Domain) -> io::Result<Socket> {
        let s = match &self.netns {
            Some(ns) => ns
                .socket(domain, Type::STREAM, Some(Protocol::TCP))
                .map_err(io::Error::other)?,
            None => Socket::new(domain, Type::STREAM, Some(Protocol::TCP))?,
        };
        s.set_nonblocking(true)?;
        s.set_cloexec(true)?;
        if let Some(m) = self.mark {
            s.set_mark(m)?;
        }
        Ok(s)
    }

    /// Connects to `dst`. With `spoof`, the connection's source is that
    /// address (IP_TRANSPARENT; the return path must route it back).
    pub async fn connect(&self, dst: SocketAddr, spoof: Option<IpAddr>) -> io::Result<TcpStream> {
        let s = self.socket(Domain::for_address(dst))?;
        s.set_tcp_nodelay(true)?;
        if let Some(src) = spoof.filter(|s| s.is_ipv4() == dst.is_ipv4()) {
            s.set_ip_transparent_v4(true)?;
            s.bind(&SockAddr::from(SocketAddr::new(src, 0)))?;
        }
        let std: std::net::TcpStream = s.into();
        let connect = TcpSocket::from_std_stream(std).connect(dst);
        tokio::time::timeout(DIAL_TIMEOUT, connect)
            .await
            .map_err(|_| {
                io::Error::new(
                    io::ErrorKind::TimedOut,
                    format!("no answer from {dst} within {DIAL_TIMEOUT:?}"),
                )
            })?
    }

    /// Binds a listener. `transparent` accepts TPROXYed connections for
    /// any destination (IP_TRANSPARENT).
    pub fn listen(&self, addr: SocketAddr, transparent: bool) -> io::Result<TcpListener> {
        let s = self.socket(Domain::for_address(addr))?;
        s.set_reuse_address(true)?;
        // A new ztunnel binds the same listeners before the old one drains
        // (Istio's INPOD_PORT_REUSE); see `enable_request_migration`.
        s.set_reuse_port(true)?;
        if transparent {
            s.set_ip_transparent_v4(true)?;
        }
        s.bind(&SockAddr::from(addr))?;
        s.listen(1024)?;
        TcpListener::from_std(s.into())
    }
}

impl Sockets {
    /// Turns on `net.ipv4.tcp_migrate_req` in this factory's namespace: when
    /// a listener of a `SO_REUSEPORT` group closes (the old ztunnel drains),
    /// the connections waiting in its accept queue move to another listener
    /// of the group instead of being reset. Best effort: without it (a
    /// kernel before 5.14, no permission) an upgrade may reset the few
    /// connections queued at the moment the old listener closes.
    pub fn enable_request_migration(&self) {
        const KNOB: &str = "/proc/sys/net/ipv4/tcp_migrate_req";
        let write = || std::fs::write(KNOB, "1");
        let r = match &self.netns {
            Some(ns) => ns.run(write).map_err(io::Error::other).and_then(|r| r),
            None => write(),
        };
        if let Err(error) = r {
            tracing::debug!(%error, "cannot enable tcp_migrate_req; an upgrade may reset queued connections");
        }
    }
}

/// The original destination of a connection that REDIRECT captured.
pub fn original_dst(stream: &TcpStream) -> io::Result<SocketAddr> {
    let sock = socket2::SockRef::from(stream);
    let addr = match stream.local_addr()? {
        SocketAddr::V4(_) => sock.original_dst_v4()?,
        SocketAddr::V6(_) => sock.original_dst_v6()?,
    };
    addr.as_socket()
        .ok_or_else(|| io::Error::other("original destination is not an inet address"))
}

impl ambit_hbone::Dialer for Sockets {
    fn dial(
        &self,
        source: Option<IpAddr>,
        address: SocketAddr,
    ) -> ambit_hbone::BoxFuture<'static, io::Result<TcpStream>> {
        let me = self.clone();
        Box::pin(async move { me.connect(address, source).await })
    }
}
