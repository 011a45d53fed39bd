//! The chained CNI plugin (when `CNI_COMMAND` is set) and the installer.

use std::process::ExitCode;

use ambit_cni::install::{self, InstallConfig};
use ambit_cni::{UnixHttpSink, plugin, spec};
use anyhow::Context;

use crate::cli::InstallArgs;

/// The plugin: stdout carries only the CNI answer.
pub fn plugin_main() -> ExitCode {
    let mut stdin = Vec::new();
    let out = match std::io::Read::read_to_end(&mut std::io::stdin(), &mut stdin) {
        Ok(_) => plugin::run(
            |k| std::env::var(k).ok(),
            &stdin,
            &UnixHttpSink::default(),
            &ambit_cni::membership::from_conf,
        ),
        Err(e) => {
            let err =
                spec::CniError::new(spec::ErrorCode::IoFailure, "reading stdin", e.to_string());
            plugin::Outcome {
                stdout: err.to_json(),
                error: Some(err),
            }
        }
    };
    println!("{}", out.stdout);
    match out.error {
        None => ExitCode::SUCCESS,
        Some(e) => {
            eprintln!("cni-node plugin: {e}: {}", e.details);
            ExitCode::FAILURE
        }
    }
}

/// The chained entry, with where the plugin decides membership from.
fn plugin_entry(a: &InstallArgs) -> serde_json::Value {
    let mut entry = install::plugin_entry(&a.plugin_type, &a.run_dir, &a.exclude_namespaces);
    if let Some(k) = &a.plugin_kubeconfig {
        entry["kubernetes"] = serde_json::json!({ "kubeconfig": k });
    }
    if let Some(d) = &a.plugin_pod_records_dir {
        entry["pod_records_dir"] = serde_json::json!(d);
    }
    entry
}

/// `install` (or `uninstall` when `remove`): chain the plugin into the
/// host's CNI config and copy the binary, or undo exactly that.
pub fn install_main(a: &InstallArgs, remove: bool) -> ExitCode {
    let result = (|| -> anyhow::Result<()> {
        let cfg = InstallConfig {
            conf_dir: a.cni_net_dir.clone(),
            bin_dir: a.cni_bin_dir.clone(),
            plugin_binary: std::env::current_exe().context("finding this binary")?,
            conf_name: a.cni_conf_name.clone(),
            entry: plugin_entry(a),
        };
        if remove {
            let touched = install::uninstall(&cfg)?;
            tracing::info!(?touched, "uninstalled");
        } else {
            let done = install::install(&cfg)?;
            tracing::info!(conflist = %done.conflist.display(), binary = %done.binary.display(), wrapped = ?done.wrapped, "installed");
        }
        Ok(())
    })();
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("cni-node: {e:#}");
            ExitCode::FAILURE
        }
    }
}
