//! `waypoint`: parse the command line, start logging, run (see the library
//! for the wiring).

use std::process::ExitCode;

use clap::Parser;
use waypoint::Args;

fn main() -> ExitCode {
    let args = Args::parse();
    ambit_app::init_tracing(args.log.log_format, false);
    // The main runtime holds the control plane (xDS, the Kubernetes
    // watches, certificates, admin); requests run on the per-core workers
    // (`--concurrency`).
    ambit_app::run_main_threads("waypoint", Some(1), args, waypoint::setup, waypoint::run)
}

include!("../../libm.rs");
