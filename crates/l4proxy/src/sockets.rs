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
    options: SocketOptions,
}

/// TCP keepalive probing (Istio's `KEEPALIVE_TIME`, `KEEPALIVE_INTERVAL`,
/// `KEEPALIVE_RETRIES`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Keepalive {
    /// Idle time before the first probe.
    pub time: std::time::Duration,
    /// Time between probes.
    pub interval: std::time::Duration,
    /// Unanswered probes before the connection is dropped.
    pub retries: u32,
}

impl Default for Keepalive {
    /// istio/ztunnel's defaults: 180 s, 180 s, 9 probes.
    fn default() -> Self {
        Self {
            time: std::time::Duration::from_secs(180),
            interval: std::time::Duration::from_secs(180),
            retries: 9,
        }
    }
}

/// Options set on every socket a [`Sockets`] makes; listeners pass them on
/// to the connections they accept (Linux copies them to accepted sockets).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SocketOptions {
    /// TCP keepalive (`KEEPALIVE_ENABLED`, on by default); `None`: off.
    pub keepalive: Option<Keepalive>,
    /// Also set `TCP_USER_TIMEOUT` to the keepalive budget (time + retries
    /// × interval), so unacknowledged data gives up as soon as probes
    /// would (`USER_TIMEOUT_ENABLED`, off by default).
    pub user_timeout: bool,
    /// `SO_REUSEPORT` on listeners, so a new ztunnel binds them while the
    /// old one drains (`INPOD_PORT_REUSE`, on by default).
    pub port_reuse: bool,
}

impl Default for SocketOptions {
    fn default() -> Self {
        Self {
            keepalive: Some(Keepalive::default()),
            user_timeout: false,
            port_reuse: true,
        }
    }
}

impl SocketOptions {
    /// Applies the keepalive and user-timeout options to `s`.
    fn apply(&self, s: &socket2::SockRef<'_>) -> io::Result<()> {
        let Some(k) = self.keepalive else {
            return Ok(());
        };
        let ka = socket2::TcpKeepalive::new()
            .with_time(k.time)
            .with_interval(k.interval)
            .with_retries(k.retries);
        s.set_tcp_keepalive(&ka)?;
        if self.user_timeout {
            let budget = k.time + k.interval.saturating_mul(k.retries);
            s.set_tcp_user_timeout(Some(budget))?;
        }
        Ok(())
    }
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

    /// Sets keepalive, user timeout and port reuse (see [`SocketOptions`]).
    pub fn with_options(mut self, options: SocketOptions) -> Self {
        self.options = options;
        self
    }

    fn socket(&self, domain: Domain) -> io::Result<Socket> {
        // Non-blocking and close-on-exec from `socket(2)` itself (socket2
        // adds SOCK_CLOEXEC): no fcntl round trips per connection.
        let ty = Type::STREAM.nonblocking();
        let s = match &self.netns {
            Some(ns) => ns
                .socket(domain, ty, Some(Protocol::TCP))
                .map_err(io::Error::other)?,
            None => Socket::new(domain, ty, Some(Protocol::TCP))?,
        };
        if let Some(m) = self.mark {
            s.set_mark(m)?;
        }
        self.options.apply(&socket2::SockRef::from(&s))?;
        Ok(s)
    }

    /// Connects to `dst`. With `spoof`, the connection's source is that
    /// address (IP_TRANSPARENT; the return path must route it back).
    pub async fn connect(&self, dst: SocketAddr, spoof: Option<IpAddr>) -> io::Result<TcpStream> {
        let s = self.socket(Domain::for_address(dst))?;
        s.set_tcp_nodelay(true)?;
        if let Some(src) = spoof.filter(|s| s.is_ipv4() == dst.is_ipv4()) {
            if src.is_ipv4() {
                s.set_ip_transparent_v4(true)?;
            } else {
                s.set_ip_transparent_v6(true)?;
            }
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

    /// Binds a UDP socket (marked and in this factory's namespace, like
    /// every other socket).
    pub fn udp_bind(&self, addr: SocketAddr) -> io::Result<tokio::net::UdpSocket> {
        let s = match &self.netns {
            Some(ns) => ns
                .socket(Domain::for_address(addr), Type::DGRAM, Some(Protocol::UDP))
                .map_err(io::Error::other)?,
            None => Socket::new(Domain::for_address(addr), Type::DGRAM, Some(Protocol::UDP))?,
        };
        s.set_nonblocking(true)?;
        s.set_cloexec(true)?;
        if let Some(m) = self.mark {
            s.set_mark(m)?;
        }
        s.set_reuse_address(true)?;
        s.set_reuse_port(self.options.port_reuse)?;
        s.bind(&SockAddr::from(addr))?;
        tokio::net::UdpSocket::from_std(s.into())
    }

    /// Binds a listener. `transparent` accepts TPROXYed connections for
    /// any destination (IP_TRANSPARENT).
    pub fn listen(&self, addr: SocketAddr, transparent: bool) -> io::Result<TcpListener> {
        let s = self.socket(Domain::for_address(addr))?;
        s.set_reuse_address(true)?;
        // A new ztunnel binds the same listeners before the old one drains
        // (Istio's INPOD_PORT_REUSE); see `enable_request_migration`.
        s.set_reuse_port(self.options.port_reuse)?;
        if addr.is_ipv6() {
            // `[::]` takes IPv4 too, whatever `net.ipv6.bindv6only` says.
            s.set_only_v6(false)?;
        }
        if transparent {
            if addr.is_ipv4() {
                s.set_ip_transparent_v4(true)?;
            } else {
                s.set_ip_transparent_v6(true)?;
            }
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

/// The original destination of a connection that REDIRECT captured. On a
/// dual-stack listener an IPv4 connection (a mapped local address) was
/// redirected by the IPv4 rules: its conntrack entry is IPv4, so it is
/// asked for at the IPv4 level.
pub fn original_dst(stream: &TcpStream) -> io::Result<SocketAddr> {
    let sock = socket2::SockRef::from(stream);
    let addr = match canonical(stream.local_addr()?) {
        SocketAddr::V4(_) => sock.original_dst_v4()?,
        SocketAddr::V6(_) => sock.original_dst_v6()?,
    };
    addr.as_socket()
        .map(canonical)
        .ok_or_else(|| io::Error::other("original destination is not an inet address"))
}

/// `addr` with an IPv4-mapped IPv6 address (`::ffff:a.b.c.d`, what a
/// dual-stack socket reports for IPv4 peers) turned back into IPv4; other
/// addresses unchanged.
pub fn canonical(addr: SocketAddr) -> SocketAddr {
    match addr {
        SocketAddr::V6(v6) => match v6.ip().to_ipv4_mapped() {
            Some(v4) => SocketAddr::new(IpAddr::V4(v4), v6.port()),
            None => addr,
        },
        SocketAddr::V4(_) => addr,
    }
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
