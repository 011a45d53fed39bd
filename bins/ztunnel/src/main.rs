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

/// `pow`, the one libm function the release binary calls (tokio's scheduler
/// keeps a moving average of task poll times with `f64::powf`), defined
/// here from the `libm` crate, and `log2`, which a debug build calls too.
/// With them the binary needs no `libm.so.6`, whose mapping otherwise
/// stays resident (about 0.5 MB of a ztunnel's idle RSS: the kernel maps
/// whole large folios of a library's text, however little of it runs;
/// PERFORMANCE.md, issue 21, fourteenth pass). A symbol in the executable
/// takes precedence over a shared library's, so nothing else changes.
/// `tests/binary.rs` checks that `libm.so.6` stays out.
// An exported symbol is what the lint flags; the functions are safe.
#[allow(unsafe_code)]
#[unsafe(no_mangle)]
pub extern "C" fn pow(x: f64, y: f64) -> f64 {
    libm::pow(x, y)
}

/// See [`pow`].
#[allow(unsafe_code)]
#[unsafe(no_mangle)]
pub extern "C" fn log2(x: f64) -> f64 {
    libm::log2(x)
}

#[cfg(test)]
mod tests {
    /// The binary's `pow` is the one `f64::powf` calls in it: exact where
    /// the result is representable, and right at the edges tokio can reach
    /// (an average's weight to the power of a poll count).
    #[test]
    fn pow_and_log2() {
        assert_eq!(super::pow(2.0, 10.0), 1024.0);
        assert_eq!(super::pow(0.5, 3.0), 0.125);
        assert_eq!(super::pow(10.0, 0.0), 1.0);
        assert_eq!(super::pow(0.0, 0.0), 1.0);
        assert_eq!(2f64.powf(-2.0), 0.25);
        assert!(super::pow(-1.0, 0.5).is_nan());
        let w = super::pow(0.1, 1.0 / 61.0);
        assert!((w - 0.962_956_252_459_902_6).abs() < 1e-12, "{w}");
        assert_eq!(super::pow(w, 1e6), 0.0);
        assert_eq!(super::log2(1024.0), 10.0);
        assert_eq!(super::log2(1.0), 0.0);
        assert!(super::log2(-1.0).is_nan());
    }
}
