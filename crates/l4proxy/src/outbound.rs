//! Carrying out an [`OutboundPlan`]: dial the hop it names, answer a SOCKS5
//! client, copy both ways, and close the connection's record.

use std::net::SocketAddr;

use ambit_hbone::{ConnectHeaders, ConnectRequest, Forwarded, InnerConnect, copy_bidirectional};
use bytes::Bytes;
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;

use crate::conn::{ConnRecord, Peers, Reporter};
use crate::plan::{Entry, Hop, OutboundPlan, Refusal, plan_outbound};
use crate::proxy::Proxy;
use crate::serve::Scope;
use crate::socks5::{self, Reply};
use crate::watch::{Facts, REVOKED, until_revoked};

/// The far side of an outbound connection, once connected.
enum Upstream {
    Tcp(TcpStream),
    Hbone(Box<ambit_hbone::HboneStream>),
}

impl Upstream {
    /// The local address of the hop (SOCKS5's BND.ADDR).
    fn bound(&self) -> SocketAddr {
        match self {
            Self::Tcp(s) => s.local_addr().unwrap_or_else(|_| socks5::unspecified()),
            Self::Hbone(_) => socks5::unspecified(),
        }
    }

    /// Copies both ways between the client and this upstream: bytes
    /// received from the client, bytes sent to it.
    async fn copy_with(self, client: &mut TcpStream) -> Result<(u64, u64), String> {
        let r = match self {
            Self::Tcp(mut up) => copy_bidirectional(client, &mut up).await,
            Self::Hbone(mut up) => copy_bidirectional(client, &mut *up).await,
        };
        r.map(|s| (s.a_to_b, s.b_to_a)).map_err(|e| e.to_string())
    }
}

/// Why dialling failed: for the access log, and the SOCKS5 reply.
struct Failure {
    reason: String,
    reply: Reply,
}

impl Failure {
    fn io(what: String, e: &std::io::Error) -> Self {
        Self {
            reason: format!("{what}: {e}"),
            reply: Reply::for_io(e),
        }
    }

    /// An HBONE failure: the far ztunnel's 401 is a policy refusal, its
    /// 503 a refused or unknown upstream.
    fn hbone(address: SocketAddr, e: &ambit_hbone::ClientError) -> Self {
        use ambit_hbone::ClientError as E;
        let reply = match e {
            E::Status { status, .. } if status.as_u16() == 401 || status.as_u16() == 403 => {
                Reply::NotAllowed
            }
            E::Status { status, .. } if status.as_u16() == 503 => Reply::ConnectionRefused,
            E::Connect { source, .. } => Reply::for_io(source),
            E::ConnectTimeout { .. } => Reply::TtlExpired,
            E::Tls { .. } | E::TlsConfig { .. } => Reply::NotAllowed,
            _ => Reply::GeneralFailure,
        };
        Self {
            reason: match std::error::Error::source(e) {
                Some(why) => format!("hbone connect {address}: {e}: {why}"),
                None => format!("hbone connect {address}: {e}"),
            },
            reply,
        }
    }
}

impl Refusal {
    fn reply(self) -> Reply {
        match self {
            Self::Policy => Reply::NotAllowed,
            Self::Unreachable => Reply::HostUnreachable,
        }
    }
}

impl Proxy {
    /// One outbound connection from `peer` to `dst`, captured or over
    /// SOCKS5: plan it, then carry the plan out.
    pub(crate) async fn outbound(
        &self,
        tcp: TcpStream,
        peer: SocketAddr,
        dst: SocketAddr,
        entry: Entry,
        scope: &Scope,
    ) {
        let plan = {
            let Ok(st) = self.inner.state.read() else {
                return;
            };
            let cfg = &self.inner.cfg;
            plan_outbound(&st, cfg, &scope.local, entry, peer, dst)
        };
        self.carry(tcp, peer, plan, entry, scope, None).await;
    }

    /// Carries out `plan` for the client `tcp` at `peer`; `socks` is the
    /// SOCKS5 handshake of a SOCKS5 client, answered here. The client's
    /// first bytes, when it sent them already (after its SOCKS5 request;
    /// a captured client's are read here if they are there), leave with
    /// the dial: behind the CONNECT's HEADERS over HBONE, right after the
    /// connect over TCP.
    pub(crate) async fn carry(
        &self,
        mut tcp: TcpStream,
        peer: SocketAddr,
        plan: OutboundPlan,
        entry: Entry,
        scope: &Scope,
        mut socks: Option<socks5::Handshake>,
    ) {
        let src_id = plan.source_identity();
        let peers = Peers {
            reporter: Reporter::Source,
            source: plan.source.as_deref(),
            source_principal: src_id.as_deref(),
            destination: plan.workload.as_deref(),
            service: plan.service.as_deref(),
            mtls: plan.mtls,
        };
        let mut record = ConnRecord::new(&self.inner.metrics, "outbound", peer, plan.dst)
            .with_peers(&peers)
            .with_via(plan.via)
            .with_hbone_target(match &plan.hop {
                Hop::Hbone { authority, .. } => Some(*authority),
                Hop::DoubleHbone {
                    inner_authority: ambit_hbone::Authority::Addr(a),
                    ..
                } => Some(*a),
                _ => None,
            });
        // A same-node delivery is authorized here, as its inbound side
        // would be: the policy watcher re-checks it like an inbound one.
        let tracked = match (&plan.hop, &plan.workload) {
            (Hop::SameNode { target }, Some(w)) => Some(self.inner.registry.track(Facts {
                workload: w.uid.clone(),
                src_identity: src_id.as_deref().cloned(),
                src_ip: peer.ip(),
                dst: *target,
            })),
            _ => None,
        };
        let early = match socks.as_mut() {
            Some(hs) => std::mem::take(&mut hs.early),
            // Over TCP the copy takes them just as soon: only a tunnel
            // saves a round trip by sending them with its CONNECT.
            None if entry == Entry::Captured
                && matches!(plan.hop, Hop::Hbone { .. } | Hop::DoubleHbone { .. }) =>
            {
                ready_bytes(&tcp)
            }
            None => Bytes::new(),
        };
        // Client bytes sent before the copy starts.
        let mut sent_early = early.len() as u64;
        let connected = match plan.hop {
            Hop::Refuse { reason, refusal } => {
                if let Some(hs) = socks.as_mut() {
                    let _ = hs
                        .reply(&mut tcp, refusal.reply(), socks5::unspecified())
                        .await;
                }
                record.refuse("REJECT", &reason);
                return;
            }
            Hop::Passthrough { address } => {
                record.open();
                match scope.sockets.connect(address, None).await {
                    Ok(up) => Ok(Upstream::Tcp(up)),
                    Err(e) => Err(Failure::io(format!("connect {address}"), &e)),
                }
            }
            Hop::SameNode { target } => {
                record.open();
                let spoof = self.inner.cfg.spoof_source.then_some(peer.ip());
                match scope.sockets.connect(target, spoof).await {
                    Ok(up) => Ok(Upstream::Tcp(up)),
                    Err(e) => Err(Failure::io(format!("connect {target}"), &e)),
                }
            }
            Hop::Hbone {
                address,
                authority,
                source_identity,
                identities,
            } => {
                record.open();
                let headers = ConnectHeaders {
                    forwarded: Some(Forwarded::new(peer)),
                    ..ConnectHeaders::default()
                };
                // Dial from the source workload's own address, so the far
                // side (and NetworkPolicy) sees the real source; in-pod the
                // scope's sockets are already in the pod's namespace.
                let source = (entry == Entry::Captured
                    && plan.source.is_some()
                    && self.inner.cfg.spoof_source)
                    .then_some(peer.ip());
                let req = ConnectRequest::new(source_identity, identities, address, authority)
                    .with_headers(headers)
                    .with_origin(scope.origin(source))
                    .with_early_data(early.clone());
                // A captured client that had sent nothing yet may do so
                // while the CONNECT is answered: that goes out at once.
                let first = first_bytes(&tcp, entry == Entry::Captured && early.is_empty());
                // Boxed: the dial's state (pool checkout, maybe a TLS
                // handshake) is freed once connected instead of sizing the
                // connection's task for its whole life.
                let connect = Box::pin(self.inner.client.connect_then(req, first));
                match connect.await {
                    Ok((stream, got)) => {
                        sent_early += got.len() as u64;
                        Ok(Upstream::Hbone(Box::new(stream)))
                    }
                    Err(e) => Err(Failure::hbone(address, &e)),
                }
            }
            Hop::DoubleHbone {
                gateway,
                authority,
                gateway_identities,
                inner_authority,
                source_identity,
                identities,
            } => {
                record.open();
                let headers = || ConnectHeaders {
                    forwarded: Some(Forwarded::new(peer)),
                    ..ConnectHeaders::default()
                };
                let mut inner = InnerConnect::new(identities, inner_authority);
                inner.headers = headers();
                let source = (entry == Entry::Captured
                    && plan.source.is_some()
                    && self.inner.cfg.spoof_source)
                    .then_some(peer.ip());
                let req =
                    ConnectRequest::new(source_identity, gateway_identities, gateway, authority)
                        .with_headers(headers())
                        .with_origin(scope.origin(source))
                        .with_inner(inner)
                        .with_early_data(early.clone());
                match Box::pin(self.inner.client.connect(req)).await {
                    Ok(stream) => Ok(Upstream::Hbone(Box::new(stream))),
                    Err(e) => Err(Failure::hbone(gateway, &e)),
                }
            }
        };
        let up = match connected {
            Ok(Upstream::Tcp(mut up)) if !early.is_empty() => match up.write_all(&early).await {
                Ok(()) => Upstream::Tcp(up),
                Err(e) => {
                    record.fail(&format!("writing the first bytes upstream: {e}"));
                    return;
                }
            },
            Ok(up) => up,
            Err(f) => {
                if let Some(hs) = socks.as_mut() {
                    let _ = hs.reply(&mut tcp, f.reply, socks5::unspecified()).await;
                }
                record.fail(&f.reason);
                return;
            }
        };
        if let Some(hs) = socks.as_mut()
            && let Err(e) = hs.reply(&mut tcp, Reply::Succeeded, up.bound()).await
        {
            record.fail(&format!("socks5 reply: {e}"));
            return;
        }
        // Nothing of the opening stays allocated while the bytes flow.
        drop((early, socks));
        let copied = match &tracked {
            Some(t) => until_revoked(t, up.copy_with(&mut tcp)).await,
            None => Some(up.copy_with(&mut tcp).await),
        };
        match copied {
            Some(Ok((rx, tx))) => record.close(sent_early + rx, tx, ""),
            Some(Err(e)) => record.fail(&e),
            None => record.close(0, 0, REVOKED),
        }
    }
}

/// The client's first bytes once it sends some (empty on EOF or an
/// error); with `wanted` false, never.
async fn first_bytes(tcp: &TcpStream, wanted: bool) -> Bytes {
    if !wanted {
        return std::future::pending().await;
    }
    loop {
        if tcp.readable().await.is_err() {
            return Bytes::new();
        }
        let mut buf = vec![0u8; EARLY_READ];
        match tcp.try_read(&mut buf) {
            // A copy the size of what came, as in `ready_bytes`.
            Ok(n) => return Bytes::copy_from_slice(&buf[..n]),
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {}
            Err(_) => return Bytes::new(),
        }
    }
}

/// How much of a captured client's first bytes is read before dialling.
const EARLY_READ: usize = 8 * 1024;

/// What the client has sent already, without waiting: one non-blocking
/// `recv` (tokio's readiness would say "not yet" until its driver has seen
/// the socket, which it usually has not right after the accept). Empty on
/// nothing there yet, on EOF and on an error, which the copy meets again.
/// The bytes are copied out at their size (the read buffer is on the stack
/// of this synchronous call), so nothing larger stays allocated.
fn ready_bytes(tcp: &TcpStream) -> Bytes {
    use std::os::fd::AsRawFd;
    let mut buf = [0u8; EARLY_READ];
    match nix::sys::socket::recv(
        tcp.as_raw_fd(),
        &mut buf,
        nix::sys::socket::MsgFlags::MSG_DONTWAIT,
    ) {
        Ok(n) if n > 0 => Bytes::copy_from_slice(&buf[..n]),
        _ => Bytes::new(),
    }
}
