//! `cni-node`: the CNI plugin when `CNI_COMMAND` is set, else the agent or
//! the installer (see the library for each).

use std::process::ExitCode;

use clap::Parser;
use cni_node::cli::{Cli, Cmd};
use cni_node::{agent, plugin};

fn main() -> ExitCode {
    if std::env::var_os("CNI_COMMAND").is_some() {
        return plugin::plugin_main();
    }
    let cli = Cli::parse();
    // stdout stays clean: a CNI runtime may read it.
    ambit_app::init_tracing(cli.log.log_format, true);
    match cli.command {
        Cmd::Run(a) => ambit_app::run_main("cni-node", a, agent::dataplane, agent::run),
        Cmd::Install(a) => plugin::install_main(&a, false),
        Cmd::Uninstall(a) => plugin::install_main(&a, true),
    }
}

include!("../../libm.rs");
