//! A unix SOCK_SEQPACKET socket on tokio that sends and receives one
//! packet with descriptors at a time (nix `sendmsg`/`recvmsg`, socket2 for
//! the socket itself, tokio `AsyncFd` for readiness).

use std::{
    io::{self, IoSlice, IoSliceMut},
    os::fd::{AsRawFd, BorrowedFd, FromRawFd, OwnedFd, RawFd},
    path::Path,
};

use nix::sys::socket::{ControlMessage, ControlMessageOwned, MsgFlags, recvmsg, sendmsg};
use socket2::{Domain, SockAddr, Socket, Type};
use tokio::io::unix::AsyncFd;

/// The most descriptors one `SCM_RIGHTS` message may carry (the kernel's
/// SCM_MAX_FD); the control buffer is sized for it so the kernel never
/// truncates descriptors we would then be unable to close.
const SCM_MAX_FD: usize = 253;

/// One received packet.
#[derive(Debug)]
pub(crate) struct Packet {
    /// Bytes received (a prefix of the buffer).
    pub(crate) len: usize,
    /// Descriptors received, owned.
    pub(crate) fds: Vec<OwnedFd>,
    /// The packet was larger than the buffer.
    pub(crate) truncated: bool,
}

/// A connected seqpacket socket.
#[derive(Debug)]
pub(crate) struct SeqPacket {
    inner: AsyncFd<Socket>,
}

/// Registers a non-blocking socket with tokio's reactor.
fn register(socket: Socket) -> io::Result<AsyncFd<Socket>> {
    #[allow(unsafe_code)]
    // SAFETY: `Socket` owns its descriptor and never swaps or closes it while
    // alive; the `AsyncFd` owns the `Socket`, so the registered fd stays
    // valid and unchanged until the registration is dropped.
    let registered = unsafe { AsyncFd::register(socket) };
    registered.map_err(|e| e.into_parts().1)
}

pub(crate) fn seqpacket() -> io::Result<Socket> {
    Socket::new(Domain::UNIX, Type::SEQPACKET.cloexec(), None)
}

impl SeqPacket {
    pub(crate) fn new(socket: Socket) -> io::Result<Self> {
        socket.set_nonblocking(true)?;
        Ok(Self {
            inner: register(socket)?,
        })
    }

    /// Connects to `path` (on a blocking thread: a full backlog blocks).
    pub(crate) async fn connect(path: &Path) -> io::Result<Self> {
        let addr = SockAddr::unix(path)?;
        let socket = tokio::task::spawn_blocking(move || {
            let socket = seqpacket()?;
            socket.connect(&addr)?;
            Ok::<_, io::Error>(socket)
        })
        .await
        .map_err(io::Error::other)??;
        Self::new(socket)
    }

    /// Sends one packet with `fds` attached.
    pub(crate) async fn send(&self, bytes: &[u8], fds: &[BorrowedFd<'_>]) -> io::Result<()> {
        let raw: Vec<RawFd> = fds.iter().map(AsRawFd::as_raw_fd).collect();
        loop {
            let mut guard = self.inner.writable().await?;
            let result = guard.try_io(|socket| {
                let iov = [IoSlice::new(bytes)];
                let rights = [ControlMessage::ScmRights(&raw)];
                let cmsgs: &[ControlMessage<'_>] = if raw.is_empty() { &[] } else { &rights };
                sendmsg::<()>(
                    socket.as_raw_fd(),
                    &iov,
                    cmsgs,
                    MsgFlags::MSG_NOSIGNAL,
                    None,
                )
                .map_err(io::Error::from)
            });
            match result {
                Ok(sent) => {
                    let sent = sent?;
                    if sent != bytes.len() {
                        return Err(io::Error::other(format!(
                            "short send: {sent} of {} bytes",
                            bytes.len()
                        )));
                    }
                    return Ok(());
                }
                Err(_would_block) => continue,
            }
        }
    }

    /// Receives one packet into `buf`. A zero-length packet without
    /// descriptors means the peer closed.
    pub(crate) async fn recv(&self, buf: &mut [u8]) -> io::Result<Packet> {
        let mut cmsg = nix::cmsg_space!([RawFd; SCM_MAX_FD]);
        loop {
            let mut guard = self.inner.readable().await?;
            let result = guard.try_io(|socket| {
                let mut iov = [IoSliceMut::new(buf)];
                let msg = recvmsg::<()>(
                    socket.as_raw_fd(),
                    &mut iov,
                    Some(&mut cmsg),
                    MsgFlags::MSG_CMSG_CLOEXEC,
                )
                .map_err(io::Error::from)?;
                let mut fds = Vec::new();
                let cmsgs = msg
                    .cmsgs()
                    .map_err(|e| io::Error::other(format!("control data truncated: {e}")))?;
                for cmsg in cmsgs {
                    if let ControlMessageOwned::ScmRights(received) = cmsg {
                        for fd in received {
                            #[allow(unsafe_code)]
                            // SAFETY: the kernel has just installed `fd` in this
                            // process's table for this message; nothing else
                            // knows it, so taking sole ownership is sound.
                            fds.push(unsafe { OwnedFd::from_raw_fd(fd) });
                        }
                    }
                }
                Ok(Packet {
                    len: msg.bytes,
                    fds,
                    truncated: msg.flags.contains(MsgFlags::MSG_TRUNC),
                })
            });
            match result {
                Ok(packet) => return packet,
                Err(_would_block) => continue,
            }
        }
    }
}

/// A listening seqpacket socket.
#[derive(Debug)]
pub(crate) struct SeqPacketListener {
    inner: AsyncFd<Socket>,
}

impl SeqPacketListener {
    pub(crate) fn bind(path: &Path) -> io::Result<Self> {
        let socket = seqpacket()?;
        socket.bind(&SockAddr::unix(path)?)?;
        socket.listen(128)?;
        socket.set_nonblocking(true)?;
        Ok(Self {
            inner: register(socket)?,
        })
    }

    pub(crate) async fn accept(&self) -> io::Result<SeqPacket> {
        loop {
            let mut guard = self.inner.readable().await?;
            match guard.try_io(|socket| socket.get_ref().accept()) {
                Ok(accepted) => return SeqPacket::new(accepted?.0),
                Err(_would_block) => continue,
            }
        }
    }
}
