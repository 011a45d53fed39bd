//! The main skeleton: runtime, configuration check, run, exit code; the
//! stop signal and the listeners every binary binds.

use std::future::Future;
use std::net::SocketAddr;
use std::process::ExitCode;

use anyhow::Context;
use tokio::sync::{Notify, watch};

/// Exit code for bad configuration (`EX_USAGE`).
pub const EXIT_CONFIG: u8 = 64;

/// Runs a binary: builds a multi-threaded runtime, calls `check(&args)`
/// inside it (clients built there run on it; an error is bad
/// configuration: printed as `NAME: invalid configuration: …`, exit 64),
/// then blocks on `run(args, checked)` (an error is logged and printed,
/// exit 1).
pub fn run_main<A, C, F, Fut>(
    name: &str,
    args: A,
    check: impl FnOnce(&A) -> anyhow::Result<C>,
    run: F,
) -> ExitCode
where
    F: FnOnce(A, C) -> Fut,
    Fut: Future<Output = anyhow::Result<()>>,
{
    run_main_threads(name, None, args, check, run)
}

/// [`run_main`] with `threads` runtime worker threads (`None`: one per
/// CPU, tokio's default).
pub fn run_main_threads<A, C, F, Fut>(
    name: &str,
    threads: Option<usize>,
    args: A,
    check: impl FnOnce(&A) -> anyhow::Result<C>,
    run: F,
) -> ExitCode
where
    F: FnOnce(A, C) -> Fut,
    Fut: Future<Output = anyhow::Result<()>>,
{
    raise_open_files_limit();
    let mut builder = tokio::runtime::Builder::new_multi_thread();
    if let Some(n) = threads {
        builder.worker_threads(n.max(1));
    }
    let rt = match builder.enable_all().build() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("{name}: starting the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let checked = {
        let _enter = rt.enter();
        check(&args)
    };
    let checked = match checked {
        Ok(c) => c,
        Err(e) => {
            eprintln!("{name}: invalid configuration: {e:#}");
            return ExitCode::from(EXIT_CONFIG);
        }
    };
    match rt.block_on(run(args, checked)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            tracing::error!("{e:#}");
            eprintln!("{name}: {e:#}");
            ExitCode::FAILURE
        }
    }
}

/// Raises the soft limit on open files to the hard limit, as istio/ztunnel
/// does at start: a proxy holds two sockets per connection, and the
/// usual soft limit (1,024) would cap it at a few hundred. Best effort: a
/// failure leaves the limit as it was and is reported once the logs are
/// up (here, on stderr).
pub fn raise_open_files_limit() {
    use nix::sys::resource::{Resource, getrlimit, setrlimit};
    match getrlimit(Resource::RLIMIT_NOFILE) {
        Ok((soft, hard)) if soft < hard => {
            if let Err(e) = setrlimit(Resource::RLIMIT_NOFILE, hard, hard) {
                eprintln!("cannot raise the open-files limit from {soft} to {hard}: {e}");
            }
        }
        Ok(_) => {}
        Err(e) => eprintln!("cannot read the open-files limit: {e}"),
    }
}

/// One stop signal for every server of a process: each takes
/// [`Stop::wait`] as its shutdown future; [`Stop::trigger`] ends them all.
#[derive(Debug, Clone)]
pub struct Stop {
    tx: watch::Sender<bool>,
}

impl Default for Stop {
    fn default() -> Self {
        Self::new()
    }
}

impl Stop {
    /// A stop not yet triggered.
    pub fn new() -> Self {
        Self {
            tx: watch::Sender::new(false),
        }
    }

    /// Resolves once [`Stop::trigger`] is called.
    pub fn wait(&self) -> impl Future<Output = ()> + Send + use<> {
        let mut rx = self.tx.subscribe();
        async move {
            let _ = rx.wait_for(|s| *s).await;
        }
    }

    /// Stops every server waiting on this.
    pub fn trigger(&self) {
        self.tx.send_replace(true);
    }
}

/// SIGINT and SIGTERM, installed before serving so a failure to install
/// them is an error at start rather than a process that cannot be stopped.
#[derive(Debug)]
pub struct Signals {
    term: tokio::signal::unix::Signal,
}

impl Signals {
    /// Installs the handlers.
    pub fn install() -> anyhow::Result<Self> {
        use tokio::signal::unix::{SignalKind, signal};
        let term = signal(SignalKind::terminate()).context("installing the SIGTERM handler")?;
        Ok(Self { term })
    }

    /// Waits for SIGINT, SIGTERM or `quit` (an admin `/quitquitquit`) and
    /// logs which, followed by `what` ("draining", "stopping").
    pub async fn wait(mut self, quit: Option<&Notify>, what: &str) {
        let quit = async {
            match quit {
                Some(q) => q.notified().await,
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            _ = tokio::signal::ctrl_c() => tracing::info!("SIGINT: {what}"),
            _ = self.term.recv() => tracing::info!("SIGTERM: {what}"),
            () = quit => tracing::info!("/quitquitquit: {what}"),
        }
    }
}

/// Binds a TCP listener, naming the address in the error.
pub async fn bind(addr: SocketAddr) -> anyhow::Result<tokio::net::TcpListener> {
    tokio::net::TcpListener::bind(addr)
        .await
        .with_context(|| format!("binding {addr}"))
}
