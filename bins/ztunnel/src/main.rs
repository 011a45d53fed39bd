//! `ztunnel`: parse the command line, start logging, drop capabilities
//! before any thread exists, then run (see the library for the wiring).

use std::process::ExitCode;

use clap::Parser;
use ztunnel::cli::Command;
use ztunnel::{Args, privileges};

fn main() -> ExitCode {
    // `ztunnel version` needs no configuration (as Istio's); the command
    // after flags (`ztunnel --node-name n version`) is honoured too.
    if std::env::args().nth(1).as_deref() == Some("version") {
        return version();
    }
    let args = Args::parse();
    if args.command == Command::Version {
        return version();
    }
    let args = match args.resolve() {
        Ok(a) => a,
        Err(e) => {
            eprintln!("ztunnel: invalid configuration: {e:#}");
            return ExitCode::from(ambit_app::EXIT_CONFIG);
        }
    };
    ambit_app::init_tracing(args.log.log_format, false);
    // Before any thread exists: threads inherit their creator's capabilities.
    match privileges::drop_all_but(&privileges::needed(args.inpod, &args.binds())) {
        Ok(kept) => tracing::info!(?kept, "dropped every other capability"),
        Err(e) => {
            eprintln!("ztunnel: dropping capabilities: {e}");
            return ExitCode::FAILURE;
        }
    }
    let threads = Some(args.resolved.worker_threads);
    ambit_app::run_main_threads("ztunnel", threads, args, ztunnel::setup, ztunnel::run)
}

fn version() -> ExitCode {
    println!("ztunnel {} (ambit)", env!("CARGO_PKG_VERSION"));
    ExitCode::SUCCESS
}

include!("../../libm.rs");
