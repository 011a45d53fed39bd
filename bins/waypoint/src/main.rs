//! `waypoint`: parse the command line, start logging, run (see the library
//! for the wiring).

use std::process::ExitCode;

use clap::Parser;
use waypoint::Args;

fn main() -> ExitCode {
    let args = Args::parse();
    ambit_app::init_tracing(args.log.log_format, false);
    ambit_app::run_main("waypoint", args, waypoint::setup, waypoint::run)
}
