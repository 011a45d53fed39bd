//! Per-core serving: worker threads that each run a current-thread tokio
//! runtime over a listener of their own.
//!
//! A multi-threaded runtime steals tasks between threads, so the halves of
//! one proxied request (the client connection's task, the upstream
//! connection's task, the pool that hands the upstream connection out)
//! often run on different threads, and every handoff between them is a
//! cross-thread wake-up. With one runtime per worker and one
//! `SO_REUSEPORT` listener per worker, the kernel spreads new connections
//! over the workers and everything a connection starts stays on its
//! worker's thread — the model of nginx's worker processes and Envoy's
//! worker threads.
//!
//! [`reuseport_listeners`] binds the listeners (all or none), and
//! [`Workers::start`] starts one thread per listener, builds its runtime
//! and runs the future the caller makes for it there. The future need not
//! be `Send`: it is made and polled on its worker's thread.
//!
//! ```no_run
//! use ambit_server::{Limits, Workers, reuseport_listeners, run};
//! use tokio::io::AsyncWriteExt;
//!
//! # fn main() -> std::io::Result<()> {
//! // Two workers on one port; each serves until its listener fails.
//! let listeners = reuseport_listeners("127.0.0.1:8080".parse().unwrap(), 2)?;
//! let workers = Workers::start("hello", listeners, |index, l| async move {
//!     let Ok(l) = tokio::net::TcpListener::from_std(l) else {
//!         return;
//!     };
//!     run(l, std::future::pending(), Limits::default(), move |mut s, _, _| async move {
//!         let _ = s.write_all(format!("worker {index}\n").as_bytes()).await;
//!     })
//!     .await;
//! })?;
//! // From any runtime: wait for them (here: forever).
//! # let rt = tokio::runtime::Builder::new_current_thread().build()?;
//! rt.block_on(workers.join());
//! # Ok(())
//! # }
//! ```

use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::sync::Arc;

use socket2::{Domain, Protocol, Socket, Type};
use tokio::sync::oneshot;

/// The listen backlog of each listener (the kernel caps it at
/// `net.core.somaxconn`).
const BACKLOG: i32 = 1024;

/// Binds `n` (at least 1) TCP listeners on `addr` with `SO_REUSEPORT`, so
/// the kernel spreads incoming connections over them. With port 0 the
/// first listener's port is used for the rest. Non-blocking, ready for
/// [`tokio::net::TcpListener::from_std`] on any runtime.
///
/// Only sockets of the same user can join a reuseport group, and every
/// socket of the group must set the option, so a listener bound without it
/// (another process on the port) makes this fail with `EADDRINUSE`, as a
/// plain bind would.
pub fn reuseport_listeners(addr: SocketAddr, n: usize) -> io::Result<Vec<std::net::TcpListener>> {
    let mut out: Vec<std::net::TcpListener> = Vec::with_capacity(n.max(1));
    let mut at = addr;
    for _ in 0..n.max(1) {
        let l = reuseport_listener(at)
            .map_err(|e| io::Error::new(e.kind(), format!("binding {at} (SO_REUSEPORT): {e}")))?;
        if at.port() == 0 {
            at = l.local_addr()?;
        }
        out.push(l);
    }
    Ok(out)
}

fn reuseport_listener(addr: SocketAddr) -> io::Result<std::net::TcpListener> {
    let s = Socket::new(
        Domain::for_address(addr),
        Type::STREAM.nonblocking().cloexec(),
        Some(Protocol::TCP),
    )?;
    // As tokio's and std's `bind` do: a restart can rebind at once while
    // the previous process's connections sit in TIME_WAIT.
    s.set_reuse_address(true)?;
    s.set_reuse_port(true)?;
    s.bind(&addr.into())?;
    s.listen(BACKLOG)?;
    Ok(s.into())
}

/// A worker's thread ended without an outcome: it panicked.
#[derive(Debug, thiserror::Error)]
#[error("worker {index} ({name}) panicked")]
pub struct WorkerPanicked {
    /// The worker's index.
    pub index: usize,
    /// The worker's thread name.
    pub name: String,
}

/// Worker threads, each running one future on a current-thread runtime of
/// its own.
#[derive(Debug)]
pub struct Workers<T> {
    outcomes: Vec<(String, oneshot::Receiver<T>)>,
}

impl<T: Send + 'static> Workers<T> {
    /// Starts one thread per item of `inputs` (a listener, typically),
    /// named `{name}-{index}`, each building a current-thread runtime (I/O
    /// and timers) and running `make(index, input)` on it to completion.
    /// `make` runs on the worker's thread, so the future may hold `!Send`
    /// state. Fails, with no thread left running, if a thread or runtime
    /// cannot be started.
    pub fn start<I, F, Fut>(name: &str, inputs: Vec<I>, make: F) -> io::Result<Self>
    where
        I: Send + 'static,
        F: Fn(usize, I) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = T> + 'static,
    {
        let make = Arc::new(make);
        let mut outcomes = Vec::with_capacity(inputs.len());
        // Each thread reports whether its runtime started before running
        // anything, so a failure leaves no half-started set behind: the
        // threads already running are told to stop by dropping `go`.
        let mut gates = Vec::with_capacity(inputs.len());
        for (index, input) in inputs.into_iter().enumerate() {
            let thread = format!("{name}-{index}");
            let (started_tx, started_rx) = std::sync::mpsc::channel::<io::Result<()>>();
            let (go_tx, go_rx) = std::sync::mpsc::channel::<()>();
            let (done_tx, done_rx) = oneshot::channel();
            let make = Arc::clone(&make);
            let spawned = std::thread::Builder::new()
                .name(thread.clone())
                .spawn(move || {
                    let rt = match tokio::runtime::Builder::new_current_thread()
                        .enable_all()
                        .build()
                    {
                        Ok(rt) => rt,
                        Err(e) => {
                            let _ = started_tx.send(Err(e));
                            return;
                        }
                    };
                    let _ = started_tx.send(Ok(()));
                    if go_rx.recv().is_err() {
                        return;
                    }
                    let out = rt.block_on(async move { make(index, input).await });
                    let _ = done_tx.send(out);
                });
            if let Err(e) = spawned {
                return Err(io::Error::new(
                    e.kind(),
                    format!("starting worker thread {thread}: {e}"),
                ));
            }
            match started_rx.recv() {
                Ok(Ok(())) => {}
                Ok(Err(e)) => {
                    return Err(io::Error::new(
                        e.kind(),
                        format!("runtime of worker thread {thread}: {e}"),
                    ));
                }
                Err(_) => {
                    return Err(io::Error::other(format!(
                        "worker thread {thread} ended while starting"
                    )));
                }
            }
            gates.push(go_tx);
            outcomes.push((thread, done_rx));
        }
        for g in gates {
            // A thread that is gone will show as panicked in `join`.
            let _ = g.send(());
        }
        Ok(Self { outcomes })
    }

    /// How many workers there are.
    pub fn len(&self) -> usize {
        self.outcomes.len()
    }

    /// Whether there are no workers.
    pub fn is_empty(&self) -> bool {
        self.outcomes.is_empty()
    }

    /// Waits (without blocking the caller's thread) for every worker's
    /// future to finish, and returns their outputs in worker order; a
    /// worker that panicked gives [`WorkerPanicked`].
    pub async fn join(self) -> Vec<Result<T, WorkerPanicked>> {
        let mut out = Vec::with_capacity(self.outcomes.len());
        for (index, (name, rx)) in self.outcomes.into_iter().enumerate() {
            out.push(rx.await.map_err(|_| WorkerPanicked { index, name }));
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashSet;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    #[tokio::test]
    async fn listeners_share_one_port_and_all_accept() {
        let ls = reuseport_listeners("127.0.0.1:0".parse().expect("addr"), 3).expect("bind");
        let ports: HashSet<u16> = ls
            .iter()
            .map(|l| l.local_addr().expect("addr").port())
            .collect();
        assert_eq!(ports.len(), 1, "one port for the group");
        let addr = ls[0].local_addr().expect("addr");
        // Each worker answers with its index; across many connections the
        // kernel's hash reaches every worker.
        let workers = Workers::start("test", ls, |i, l| async move {
            let l = tokio::net::TcpListener::from_std(l).expect("register");
            // Each worker serves until a client tells it to stop.
            loop {
                let Ok((mut s, _)) = l.accept().await else {
                    return i;
                };
                let mut b = [0u8; 1];
                let _ = s.read_exact(&mut b).await;
                let _ = s.write_all(&[i as u8]).await;
                if b[0] == b'q' {
                    return i;
                }
            }
        })
        .expect("start");
        assert_eq!(workers.len(), 3);
        let mut seen = HashSet::new();
        for _ in 0..200 {
            let mut s = tokio::net::TcpStream::connect(addr).await.expect("connect");
            s.write_all(b"x").await.expect("write");
            let mut b = [0u8; 1];
            s.read_exact(&mut b).await.expect("read");
            seen.insert(b[0]);
            if seen.len() == 3 {
                break;
            }
        }
        assert_eq!(seen.len(), 3, "every worker accepted: {seen:?}");
        // Stop them: keep sending `q` until each has answered one.
        let mut stopped = HashSet::new();
        // A connection queued on a worker that has just returned is reset:
        // try again.
        while stopped.len() < 3 {
            let Ok(mut s) = tokio::net::TcpStream::connect(addr).await else {
                continue;
            };
            let mut b = [0u8; 1];
            if s.write_all(b"q").await.is_ok() && s.read_exact(&mut b).await.is_ok() {
                stopped.insert(b[0]);
            }
        }
        let out: Vec<usize> = workers
            .join()
            .await
            .into_iter()
            .map(|r| r.expect("no panic"))
            .collect();
        assert_eq!(out, vec![0, 1, 2]);
    }

    #[test]
    fn a_port_held_without_reuseport_is_refused() {
        let plain = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        let addr = plain.local_addr().expect("addr");
        let e = reuseport_listeners(addr, 2).expect_err("port in use");
        assert_eq!(e.kind(), io::ErrorKind::AddrInUse);
        assert!(e.to_string().contains(&addr.to_string()), "{e}");
    }

    #[tokio::test]
    async fn a_panicking_worker_is_reported() {
        let w = Workers::start("boom", vec![0u8, 1], |i, _| async move {
            assert!(i != 1, "worker 1 fails on purpose");
            i
        })
        .expect("start");
        let out = w.join().await;
        assert_eq!(out[0].as_ref().ok(), Some(&0));
        let e = out[1].as_ref().expect_err("panicked");
        assert_eq!(e.index, 1);
        assert_eq!(e.name, "boom-1");
    }
}
