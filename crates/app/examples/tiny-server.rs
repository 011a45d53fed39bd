//! A minimal binary on the `ambit-app` skeleton: logging and admin flags
//! from the shared groups, a configuration check that runs before serving,
//! a readiness endpoint, and a clean stop on SIGINT/SIGTERM.
//!
//! ```sh
//! cargo run -p ambit-app --example tiny-server -- --readiness-addr 127.0.0.1:0 --help
//! ```

use std::process::ExitCode;

use ambit_app::{AdminArgs, LogArgs, Signals, init_tracing, run_main};
use clap::Parser;

/// A server that only reports whether it is ready.
#[derive(Debug, Parser)]
#[command(version)]
struct Args {
    #[command(flatten)]
    log: LogArgs,
    #[command(flatten)]
    admin: AdminArgs,
}

fn main() -> ExitCode {
    let args = Args::parse();
    init_tracing(args.log.log_format, false);
    run_main(
        "tiny-server",
        args,
        // Checked inside the runtime, before anything is bound: an error
        // here exits 64 with `tiny-server: invalid configuration: …`.
        |a| {
            anyhow::ensure!(
                a.admin.drain_seconds <= 600,
                "DRAIN_DURATION above 10 minutes"
            );
            Ok(())
        },
        |a, ()| async move {
            let signals = Signals::install()?;
            let listener = ambit_app::bind(a.admin.readiness_addr).await?;
            tracing::info!(addr = %listener.local_addr()?, "readiness endpoint");
            println!("ready on {}; Ctrl-C to stop", listener.local_addr()?);
            signals.wait(None, "stopping").await;
            Ok(())
        },
    )
}
