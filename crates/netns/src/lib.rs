//! Linux network namespaces as a safe handle.
//!
//! `ambit-netns` owns one job: getting code, sockets and processes into the
//! right network namespace without disturbing the caller. A [`NetNs`] is an
//! open descriptor for a namespace — named (`ip netns add`), anonymous, a
//! path such as a CNI `CNI_NETNS`, a pid, or a descriptor received from
//! elsewhere. Work that must happen inside it ([`NetNs::run`],
//! [`NetNs::spawn_command`], [`NetNs::spawn_async`]) runs on a dedicated
//! thread that joins the namespace, so the calling thread — often a tokio
//! worker — never changes namespace; short work that leaves the thread as
//! it found it ([`NetNs::run_reused`], [`NetNs::sysctl`]) shares one
//! long-lived worker thread that joins the namespace and leaves it again,
//! instead of a thread per call. [`NetNs::socket`] and [`NetNs::run_here`]
//! join the namespace on the calling thread, for one `socket(2)` or a few
//! short synchronous calls, and return straight after, waking no other
//! thread. A socket keeps the namespace it was created in, so it can then
//! be used from any thread.
//!
//! With the `test-harness` feature, [`harness`] builds multi-node clusters
//! of namespaces for integration tests, and cleans them up even on panic.
//!
//! ```no_run
//! use ambit_netns::NetNs;
//! # fn main() -> Result<(), ambit_netns::Error> {
//! let ns = NetNs::create_named("demo")?;
//! let listener = ns.tcp_listener("127.0.0.1:8080".parse().unwrap())?;
//! let forwarding = ns.sysctl("net.ipv4.ip_forward")?;
//! # drop((listener, forwarding));
//! NetNs::delete_named("demo")?;
//! # Ok(()) }
//! ```
#![forbid(unsafe_code)]

mod error;
#[cfg(feature = "test-harness")]
pub mod harness;
mod ns;

#[cfg(feature = "tokio")]
pub use self::ns::NsTask;
pub use self::{
    error::{Error, Result},
    ns::{NETNS_RUN_DIR, NetNs},
};
pub use socket2::{Domain, Protocol, Type};
