//! What every Ambit server shares.
//!
//! `ambit-server` is the bottom layer of the proxies and agents in this
//! workspace: one drain-aware accept loop ([`run`]) that every listener goes
//! through — TCP or Unix, with backoff when `accept` fails (usually
//! `EMFILE`), an optional cap on concurrent connections and a deadline for
//! connections to finish once shutdown starts — and, behind the default
//! `admin` feature, the small HTTP/1 server for admin, metrics and
//! readiness endpoints ([`admin`]), with a header timeout, a per-connection
//! time limit and a connection cap so a slow or hostile scraper cannot tie
//! it up.
//!
//! Servers are shaped `run(listener, shutdown)`: bind port 0 in a test,
//! pass any future as the shutdown signal, and the loop tells each
//! connection when draining starts through its [`Drain`].
//!
//! [`workers`] runs a server per core: `SO_REUSEPORT` listeners and one
//! current-thread runtime per worker thread, so a connection and what it
//! starts stay on one thread.
#![forbid(unsafe_code)]

mod accept;
#[cfg(feature = "admin")]
pub mod admin;
pub mod workers;

pub use self::accept::{Drain, Limits, Listener, run};
pub use self::workers::{WorkerPanicked, Workers, reuseport_listeners};
