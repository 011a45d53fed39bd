//! The chained CNI plugin (when `CNI_COMMAND` is set) and the installer.

use std::process::ExitCode;

use ambit_cni::install::{self, InstallConfig};
use ambit_cni::{UnixHttpSink, plugin, spec};
use anyhow::Context;

use crate::cli::InstallArgs;

/// The plugin: stdout carries only the CNI answer.
pub fn plugin_main() -> ExitCode {
    let out = match read_stdin() {
        Ok(stdin) => plugin::run(
            |k| std::env::var(k).ok(),
            &stdin,
            &UnixHttpSink::default(),
            &ambit_cni::membership::from_conf,
        ),
        Err(out) => out,
    };
    emit("cni-node plugin", out)
}

/// The file name of the small plugin, built beside `cni-node`.
pub const SMALL_PLUGIN: &str = "ambit-cni-plugin";

/// `ambit-cni-plugin`: the plugin without the Kubernetes client and the
/// agent, so that the process starts in about half the time (PERFORMANCE.md,
/// issue 21, ninth pass). An ADD that needs the API server is handed to the
/// full plugin (`cni-node`) with the same environment and stdin.
pub fn small_plugin_main() -> ExitCode {
    let stdin = match read_stdin() {
        Ok(stdin) => stdin,
        Err(out) => return emit(SMALL_PLUGIN, out),
    };
    match plugin::run_agent_first(
        |k| std::env::var(k).ok(),
        &stdin,
        &UnixHttpSink::default(),
        &ambit_cni::membership::dir_from_conf,
    ) {
        plugin::AgentFirst::Done(out) => emit(SMALL_PLUGIN, out),
        plugin::AgentFirst::Delegate => delegate(&stdin),
    }
}

fn read_stdin() -> Result<Vec<u8>, plugin::Outcome> {
    let mut stdin = Vec::new();
    match std::io::Read::read_to_end(&mut std::io::stdin(), &mut stdin) {
        Ok(_) => Ok(stdin),
        Err(e) => Err(failed(spec::CniError::new(
            spec::ErrorCode::IoFailure,
            "reading stdin",
            e.to_string(),
        ))),
    }
}

fn failed(err: spec::CniError) -> plugin::Outcome {
    plugin::Outcome {
        stdout: err.to_json(),
        error: Some(err),
    }
}

fn emit(who: &str, out: plugin::Outcome) -> ExitCode {
    println!("{}", out.stdout);
    match out.error {
        None => ExitCode::SUCCESS,
        Some(e) => {
            eprintln!("{who}: {e}: {}", e.details);
            ExitCode::FAILURE
        }
    }
}

/// Where the full plugin is: the configuration's `kube_plugin`; else
/// `<this file>-kube` beside this executable, where the installer puts it;
/// else `cni-node` beside it (the image, a build tree).
fn full_plugin(stdin: &[u8]) -> Option<std::path::PathBuf> {
    if let Some(named) = spec::NetConf::parse(stdin).ok().and_then(|c| c.kube_plugin) {
        return Some(named);
    }
    let exe = std::env::current_exe().ok()?;
    let mut beside = exe.clone().into_os_string();
    beside.push(ambit_cni::install::KUBE_SUFFIX);
    let beside = std::path::PathBuf::from(beside);
    Some(if beside.is_file() {
        beside
    } else {
        exe.with_file_name("cni-node")
    })
}

/// Runs the full plugin on the same invocation: it inherits the
/// environment, stdout and stderr, reads the same stdin, and its exit
/// status is ours.
fn delegate(stdin: &[u8]) -> ExitCode {
    let version = plugin::lenient_version(stdin);
    let cannot = |path: &std::path::Path, why: String| {
        emit(
            SMALL_PLUGIN,
            failed(
                spec::CniError::new(
                    spec::ErrorCode::TryAgainLater,
                    format!(
                        "the node agent could not settle this ADD, and the plugin that reads \
                         the API server ({}) could not be run; try again later",
                        path.display()
                    ),
                    why,
                )
                .with_version(&version),
            ),
        )
    };
    let Some(path) = full_plugin(stdin) else {
        return cannot(
            std::path::Path::new("cni-node"),
            "no kube_plugin in the configuration and no cni-node beside this plugin".into(),
        );
    };
    let mut child = match std::process::Command::new(&path)
        .stdin(std::process::Stdio::piped())
        .spawn()
    {
        Ok(c) => c,
        Err(e) => return cannot(&path, e.to_string()),
    };
    if let Some(mut input) = child.stdin.take()
        && let Err(e) = std::io::Write::write_all(&mut input, stdin)
    {
        let _ = child.kill();
        let _ = child.wait();
        return cannot(&path, format!("writing its stdin: {e}"));
    }
    match child.wait() {
        Ok(status) => match status.code() {
            Some(0) => ExitCode::SUCCESS,
            Some(code) => ExitCode::from(u8::try_from(code).unwrap_or(1)),
            None => cannot(&path, format!("it ended with {status}")),
        },
        Err(e) => cannot(&path, e.to_string()),
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
        let exe = std::env::current_exe().context("finding this binary")?;
        // The small plugin when it was shipped beside this binary; this
        // binary then only backs it for ADDs that need the API server.
        let small = exe.with_file_name(SMALL_PLUGIN);
        let (plugin_binary, kube_plugin) = if small.is_file() {
            (small, a.plugin_kubeconfig.is_some().then_some(exe))
        } else {
            (exe, None)
        };
        let cfg = InstallConfig {
            conf_dir: a.cni_net_dir.clone(),
            bin_dir: a.cni_bin_dir.clone(),
            plugin_binary,
            kube_plugin,
            conf_name: a.cni_conf_name.clone(),
            entry: plugin_entry(a),
        };
        if remove {
            let touched = install::uninstall(&cfg)?;
            tracing::info!(?touched, "uninstalled");
        } else {
            let done = install::install(&cfg)?;
            tracing::info!(conflist = %done.conflist.display(), binary = %done.binary.display(), kube_plugin = ?done.kube_plugin, wrapped = ?done.wrapped, "installed");
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
