//! The socket: opened inside a namespace, then used from any thread.

use std::collections::{HashMap, HashSet};
use std::io;
use std::mem::ManuallyDrop;
use std::ops::Range;
use std::sync::OnceLock;
use std::sync::mpsc;
use std::time::Duration;

use ambit_netns::NetNs;
use netlink_sys::{Socket as SysSocket, SocketAddr};

use crate::NETLINK_NETFILTER;
use crate::error::{Error, Nack, Result};
use crate::message::{DumpProgress, Messages, NLMSG_ERROR, dump_datagram, set_seq};

/// Most bytes put in one `sendmsg`; acks are read after each chunk so the
/// receive buffer never overflows.
const CHUNK: usize = 64 * 1024;

/// How long [`Socket::send_batch`] waits for the kernel's answers.
const BATCH_TIMEOUT: Duration = Duration::from_secs(5);
/// The receive buffer: twice the largest part the kernel sends in a dump.
const RECV_BUF: usize = 64 * 1024;
/// `MSG_TRUNC` (Linux): `recv` returns the datagram's real length.
const MSG_TRUNC: i32 = 0x20;
/// `MSG_DONTWAIT` (Linux): `recv` does not block.
const MSG_DONTWAIT: i32 = 0x40;

/// A synchronous netlink socket opened inside one network namespace.
///
/// A netlink socket talks to the namespace it was created in for its whole
/// life, so it is created by the calling thread while it briefly joins
/// the namespace ([`NetNs::run_here`]: no other thread is created or
/// woken) and then used from any thread. It deals in whole messages as bytes
/// (see [`header`](crate::header)); codecs build and parse the payloads.
/// Each request is stamped with a fresh sequence number, and replies to
/// other sequence numbers (a request given up on) are skipped.
///
/// Dropping a `NETLINK_NETFILTER` socket does not wait for the kernel: its
/// last reference is released on a background thread, because nf_tables makes the closing thread wait for
/// the clean-up of the previous commit (an RCU grace period, ~10 ms here).
#[derive(Debug)]
pub struct Socket {
    /// Dropped by hand, in `Drop`: on the closer thread or here.
    sock: ManuallyDrop<SysSocket>,
    seq: u32,
    ns: String,
    protocol: isize,
}

impl Drop for Socket {
    fn drop(&mut self) {
        // SAFETY: `sock` is taken once, here, and never used again.
        #[allow(unsafe_code)]
        let sock = unsafe { ManuallyDrop::take(&mut self.sock) };
        if self.protocol == NETLINK_NETFILTER {
            close_later(sock);
        } else {
            drop(sock);
        }
    }
}

/// Closes `sock` on a background thread (one per process, started on first
/// use), or here if that thread cannot be started.
///
/// Releasing a `NETLINK_NETFILTER` socket runs nf_tables' netlink notifier,
/// which flushes the destruction of every committed transaction
/// (`nft_rcv_nl_event` → `nf_tables_trans_destroy_flush_work`): after any
/// commit, the close blocks for an RCU grace period. Nothing the caller
/// does depends on that release, so it need not wait for it.
fn close_later(sock: SysSocket) {
    static CLOSER: OnceLock<Option<mpsc::Sender<SysSocket>>> = OnceLock::new();
    let closer = CLOSER.get_or_init(|| {
        let (tx, rx) = mpsc::channel::<SysSocket>();
        std::thread::Builder::new()
            .name("netlink-close".into())
            .spawn(move || rx.into_iter().for_each(drop))
            .ok()
            .map(|_| tx)
    });
    if let Some(tx) = closer {
        // A send fails only if the thread is gone; the socket then closes
        // here.
        let _ = tx.send(sock);
    }
}

/// The label of `ns` in errors (`current` for the caller's namespace).
fn label_of(ns: Option<&NetNs>) -> String {
    ns.map_or_else(|| "current".to_owned(), |n| n.label().to_owned())
}

/// A socket of `protocol` in the calling thread's namespace, connected to
/// the kernel, with capped acks and, where the kernel has them, extended
/// acks.
fn make_socket(protocol: isize) -> io::Result<SysSocket> {
    let mut s = SysSocket::new(protocol)?;
    s.bind_auto()?;
    s.connect(&SocketAddr::new(0, 0))?;
    s.set_cap_ack(true)?;
    // Extended acks carry the kernel's reason; older kernels lack them.
    let _ = s.set_ext_ack(true);
    Ok(s)
}

impl Socket {
    /// Opens a socket of `protocol` ([`NETLINK_ROUTE`](crate::NETLINK_ROUTE),
    /// [`NETLINK_NETFILTER`](crate::NETLINK_NETFILTER), ...) inside `ns`, or
    /// in the caller's namespace (labelled `current` in errors). It is
    /// connected to the kernel, asks for capped acks, and for extended acks
    /// where the kernel has them.
    pub fn open(ns: Option<&NetNs>, protocol: isize) -> Result<Self> {
        let mut v = Self::open_many(ns, &[protocol])?;
        v.pop().ok_or_else(|| Error::Open {
            protocol,
            ns: label_of(ns),
            source: io::Error::other("no socket made"),
        })
    }

    /// Opens one socket per entry of `protocols` inside `ns` (or the
    /// caller's namespace), as [`Socket::open`] does, in one trip into the
    /// namespace: callers that need several sockets there (a route and a
    /// netfilter one, say) pay for joining it once. The calling thread
    /// joins the namespace for the trip and returns straight after
    /// ([`NetNs::run_here`]); no other thread is involved.
    pub fn open_many(ns: Option<&NetNs>, protocols: &[isize]) -> Result<Vec<Self>> {
        Self::open_many_with(ns, protocols, || ()).map(|(v, ())| v)
    }

    /// [`Socket::open_many`], running `also` inside the namespace in the
    /// same trip (after the sockets are made) and returning its result:
    /// for a caller that reads something there too.
    pub fn open_many_with<T, F>(
        ns: Option<&NetNs>,
        protocols: &[isize],
        also: F,
    ) -> Result<(Vec<Self>, T)>
    where
        F: FnOnce() -> T + Send + 'static,
        T: Send + 'static,
    {
        let label = label_of(ns);
        let wanted = protocols.to_vec();
        let make = move || -> (Vec<(isize, io::Result<SysSocket>)>, T) {
            let socks = wanted.into_iter().map(|p| (p, make_socket(p))).collect();
            (socks, also())
        };
        let first = protocols.first().copied().unwrap_or_default();
        let (made, extra) = match ns {
            Some(ns) => ns.run_here(make).map_err(|source| Error::Netns {
                protocol: first,
                source,
            })?,
            None => make(),
        };
        let seq = std::process::id().wrapping_mul(2_654_435_761);
        let mut out = Vec::with_capacity(made.len());
        for (protocol, sock) in made {
            let sock = sock.map_err(|source| Error::Open {
                protocol,
                ns: label.clone(),
                source,
            })?;
            out.push(Self {
                sock: ManuallyDrop::new(sock),
                seq,
                ns: label.clone(),
                protocol,
            });
        }
        Ok((out, extra))
    }

    /// Turns strict checking of dump requests on or off
    /// (`NETLINK_GET_STRICT_CHK`): with it, the kernel validates a dump's
    /// header and honours its filters (a route dump's table, say) instead
    /// of returning everything. Fails on kernels older than 4.20.
    pub fn set_strict_check(&self, on: bool) -> Result<()> {
        self.sock
            .set_netlink_get_strict_chk(on)
            .map_err(|source| self.io("setting NETLINK_GET_STRICT_CHK", source))
    }

    /// The namespace label, as used in errors.
    pub fn ns(&self) -> &str {
        &self.ns
    }

    fn next_seq(&mut self) -> u32 {
        self.seq = self.seq.wrapping_add(1);
        self.seq
    }

    /// Sends every message (each must ask for an ack, `NLM_F_ACK`) and
    /// returns the kernel's answer to each, in order. Messages are stamped
    /// with fresh sequence numbers and sent many per `sendmsg` (at most
    /// 64 KiB), the acks of one chunk read before the next is sent.
    pub fn transact(&mut self, msgs: &mut [Vec<u8>]) -> Result<Vec<Result<(), Nack>>> {
        let mut results = vec![Ok(()); msgs.len()];
        let mut i = 0;
        while i < msgs.len() {
            let mut buf = Vec::with_capacity(CHUNK);
            let mut pending: HashMap<u32, usize> = HashMap::new();
            while i < msgs.len() && (buf.is_empty() || buf.len() + msgs[i].len() <= CHUNK) {
                let seq = self.next_seq();
                set_seq(&mut msgs[i], seq);
                buf.extend_from_slice(&msgs[i]);
                pending.insert(seq, i);
                i += 1;
            }
            self.send(&buf)?;
            while !pending.is_empty() {
                let data = self.recv()?;
                for msg in Messages::new(&data) {
                    let msg = msg.map_err(|reason| self.decode("acks", reason))?;
                    if msg.ty != NLMSG_ERROR {
                        continue;
                    }
                    if let Some(idx) = pending.remove(&msg.seq) {
                        results[idx] = msg.ack();
                    }
                }
            }
        }
        Ok(results)
    }

    /// Sends one request that asks for an ack and returns the kernel's answer.
    pub fn request(&mut self, mut msg: Vec<u8>) -> Result<Result<(), Nack>> {
        let mut v = self.transact(std::slice::from_mut(&mut msg))?;
        Ok(v.pop().unwrap_or(Ok(())))
    }

    /// Sends a request and collects every reply message (header included)
    /// until the reply ends: `NLMSG_DONE` after a dump (`NLM_F_DUMP`), the
    /// ack of an acknowledged request, a single-part reply to a get, or the
    /// kernel's error.
    pub fn dump(&mut self, mut msg: Vec<u8>) -> Result<Result<Vec<Vec<u8>>, Nack>> {
        let seq = self.next_seq();
        set_seq(&mut msg, seq);
        self.send(&msg)?;
        let mut out = Vec::new();
        loop {
            let data = self.recv()?;
            match dump_datagram(&data, seq, &mut out).map_err(|r| self.decode("dump", r))? {
                DumpProgress::More => {}
                DumpProgress::Done(r) => return Ok(r.map(|()| out)),
            }
        }
    }

    /// Sends a prepared nfnetlink batch (begin, messages, end, with their
    /// own sequence numbers) in one `sendmsg` and collects the kernel's
    /// errors for any message of the batch, the batch markers included (a
    /// failed commit is answered on `BATCH_BEGIN`). `expect` names the
    /// batch's messages; the wait ends with the acks of those that ask for
    /// one (`NLM_F_ACK`), so a batch that asks for an ack on its last
    /// message only is read with one ack instead of one per message. The
    /// kernel applies the batch all or nothing; after a failure it may not
    /// answer every message, so a read that times out (5 s) ends the wait.
    pub fn send_batch(&mut self, bytes: &[u8], expect: Range<u32>) -> Result<Vec<(u32, Nack)>> {
        let mut batch: HashSet<u32> = HashSet::new();
        let mut pending: HashSet<u32> = HashSet::new();
        for m in Messages::new(bytes) {
            let m = m.map_err(|reason| self.decode("the batch to send", reason))?;
            batch.insert(m.seq);
            if expect.contains(&m.seq) && m.flags & crate::NLM_F_ACK != 0 {
                pending.insert(m.seq);
            }
        }
        self.set_timeout(Some(BATCH_TIMEOUT))?;
        self.send(bytes)?;
        let mut errors = Vec::new();
        // The kernel handles a batch inside `sendmsg`: every answer is
        // queued by now, so a batch that asks for no ack is read to the end
        // of the queue.
        let drain = pending.is_empty();
        while drain || !pending.is_empty() {
            let data = match self.recv_one(if drain { MSG_DONTWAIT } else { 0 }) {
                Ok(d) => d,
                Err(e) if drain && e.kind() == io::ErrorKind::WouldBlock => break,
                // After a failure the kernel may not answer every message.
                Err(_) if !errors.is_empty() => break,
                Err(source) => {
                    return Err(self.io("waiting for nftables batch acks", source));
                }
            };
            for m in Messages::new(&data) {
                let m = m.map_err(|reason| self.decode("batch acks", reason))?;
                if m.ty != NLMSG_ERROR || !batch.contains(&m.seq) {
                    continue;
                }
                pending.remove(&m.seq);
                if let Err(e) = m.ack() {
                    errors.push((m.seq, e));
                }
            }
        }
        self.set_timeout(None)?;
        Ok(errors)
    }

    fn set_timeout(&self, d: Option<Duration>) -> Result<()> {
        socket2::SockRef::from(&*self.sock)
            .set_read_timeout(d)
            .map_err(|source| self.io("setting a netlink timeout", source))
    }

    fn send(&self, buf: &[u8]) -> Result<()> {
        let op = "sending netlink request";
        let n = self
            .sock
            .send(buf, 0)
            .map_err(|source| self.io(op, source))?;
        if n != buf.len() {
            let short = io::Error::other(format!("short send: {n} of {} bytes", buf.len()));
            return Err(self.io(op, short));
        }
        Ok(())
    }

    fn recv(&self) -> Result<Vec<u8>> {
        self.recv_one(0)
            .map_err(|source| self.io("reading netlink reply", source))
    }

    /// Reads one datagram with one `recv` into a [`RECV_BUF`] buffer. The
    /// kernel's datagrams fit (a dump's parts are at most 32 KiB); a larger
    /// one is an error, never cut short silently (`MSG_TRUNC` reports its
    /// real length).
    fn recv_one(&self, flags: i32) -> io::Result<Vec<u8>> {
        let mut buf = Vec::with_capacity(RECV_BUF);
        let n = self.sock.recv(&mut buf, flags | MSG_TRUNC)?;
        if n > buf.len() {
            return Err(io::Error::other(format!(
                "a {n}-byte netlink datagram does not fit the {RECV_BUF}-byte buffer"
            )));
        }
        Ok(buf)
    }

    fn io(&self, op: &'static str, source: io::Error) -> Error {
        Error::Io {
            op,
            ns: self.ns.clone(),
            source,
        }
    }

    fn decode(&self, op: &'static str, reason: String) -> Error {
        Error::Decode {
            op,
            ns: self.ns.clone(),
            reason,
        }
    }
}
