//! Installing the plugin on a node, as Istio's `install-cni` does: chain
//! our entry as the last plugin of the primary CNI configuration (the
//! lexically first `.conf`, `.conflist` or `.json` in the config dir, or
//! the one named), wrapping a single-plugin `.conf` into a `.conflist`,
//! and copy the plugin binary into the CNI bin dir under its `type` (and,
//! when the plugin is the small one, the full plugin it hands API-server
//! decisions to, as `<type>-kube`). [`uninstall`] removes exactly that: our
//! entry (restoring a wrapped `.conf` as it was) and our binaries.

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use serde_json::{Map, Value, json};

use crate::agent::write_atomic;
use crate::error::Error;

/// Suffix of the original single-plugin `.conf` kept while wrapped (not a
/// CNI extension, so runtimes ignore it).
pub const ORIGINAL_SUFFIX: &str = "ambit-orig";

/// Where and what to install.
#[derive(Debug, Clone)]
pub struct InstallConfig {
    /// The host's CNI config dir (`/etc/cni/net.d`).
    pub conf_dir: PathBuf,
    /// The host's CNI bin dir (`/opt/cni/bin`).
    pub bin_dir: PathBuf,
    /// The binary to copy as `<type>`.
    pub plugin_binary: PathBuf,
    /// The full plugin to copy beside it as `<type>-kube`
    /// ([`KUBE_SUFFIX`]), where the small plugin finds it; `None` when the
    /// plugin binary is the full plugin itself or never reads the API server.
    pub kube_plugin: Option<PathBuf>,
    /// The primary config file name; the lexically first one when `None`.
    pub conf_name: Option<String>,
    /// Our chained entry (see [`plugin_entry`]).
    pub entry: Value,
}

/// What [`install`] did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Installed {
    /// The `.conflist` now holding our entry.
    pub conflist: PathBuf,
    /// The single-plugin `.conf` that was wrapped (kept aside), if any.
    pub wrapped: Option<PathBuf>,
    /// The installed binary.
    pub binary: PathBuf,
    /// The installed full plugin, when one was asked for.
    pub kube_plugin: Option<PathBuf>,
}

/// Suffix of the full plugin's file name beside the small plugin.
pub const KUBE_SUFFIX: &str = "-kube";

/// Istio's chained entry.
pub fn plugin_entry(plugin_type: &str, run_dir: &Path, exclude_namespaces: &[String]) -> Value {
    json!({
        "type": plugin_type,
        "cni_agent_run_dir": run_dir,
        "ambient_enabled": true,
        "exclude_namespaces": exclude_namespaces,
    })
}

fn entry_type(entry: &Value) -> Result<&str, Error> {
    entry
        .get("type")
        .and_then(Value::as_str)
        .filter(|t| !t.is_empty() && !t.contains('/'))
        .ok_or_else(|| Error::invalid("plugin entry", "needs a plain `type`"))
}

fn is_cni_file(p: &Path) -> bool {
    p.extension()
        .and_then(|e| e.to_str())
        .is_some_and(|e| matches!(e, "conf" | "conflist" | "json"))
}

fn cni_files(dir: &Path) -> Result<Vec<PathBuf>, Error> {
    let mut v: Vec<PathBuf> = std::fs::read_dir(dir)
        .map_err(|e| Error::io(format!("reading {}", dir.display()), e))?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.is_file() && is_cni_file(p))
        .collect();
    v.sort();
    Ok(v)
}

fn read_json(path: &Path) -> Result<Map<String, Value>, Error> {
    let bytes =
        std::fs::read(path).map_err(|e| Error::io(format!("reading {}", path.display()), e))?;
    match serde_json::from_slice(&bytes) {
        Ok(Value::Object(m)) => Ok(m),
        Ok(_) => Err(cfg_err(path, "not a JSON object")),
        Err(e) => Err(cfg_err(path, &e.to_string())),
    }
}

fn cfg_err(path: &Path, reason: &str) -> Error {
    Error::Config {
        path: path.to_owned(),
        reason: reason.to_owned(),
    }
}

fn write_json(path: &Path, v: &Map<String, Value>) -> Result<(), Error> {
    let mut text = serde_json::to_string_pretty(v).map_err(|e| cfg_err(path, &e.to_string()))?;
    text.push('\n');
    write_atomic(path, text.as_bytes())
}

/// Installs the entry and the binary (idempotent: a second install
/// replaces our entry rather than adding another).
pub fn install(cfg: &InstallConfig) -> Result<Installed, Error> {
    let ty = entry_type(&cfg.entry)?.to_owned();
    let primary = match &cfg.conf_name {
        Some(n) => cfg.conf_dir.join(n),
        None => cni_files(&cfg.conf_dir)?
            .into_iter()
            .next()
            .ok_or_else(|| {
                cfg_err(
                    &cfg.conf_dir,
                    "no primary CNI configuration (.conf, .conflist, .json) yet",
                )
            })?,
    };
    let mut conf = read_json(&primary)?;
    let (conflist, wrapped) = if conf.get("plugins").is_some_and(Value::is_array) {
        (primary.clone(), None)
    } else {
        // A single-plugin config: wrap it, keeping the original aside.
        let version = conf.remove("cniVersion").unwrap_or(json!("1.0.0"));
        let name = conf.remove("name").unwrap_or(json!("k8s-pod-network"));
        let list = primary.with_extension("conflist");
        if list.exists() && list != primary {
            return Err(cfg_err(
                &list,
                "exists; refusing to overwrite it while wrapping",
            ));
        }
        let mut m = Map::new();
        m.insert("cniVersion".into(), version);
        m.insert("name".into(), name);
        m.insert("plugins".into(), Value::Array(vec![Value::Object(conf)]));
        let aside = PathBuf::from(format!("{}.{ORIGINAL_SUFFIX}", primary.display()));
        conf = m;
        (list, Some(aside))
    };
    if let Some(Value::Array(plugins)) = conf.get_mut("plugins") {
        plugins.retain(|p| p.get("type").and_then(Value::as_str) != Some(ty.as_str()));
        plugins.push(cfg.entry.clone());
    }
    // The helper first: the plugin that may run it is in place only after.
    let kube_plugin = cfg
        .kube_plugin
        .as_ref()
        .map(|src| copy_binary(src, &cfg.bin_dir, &format!("{ty}{KUBE_SUFFIX}")))
        .transpose()?;
    let binary = copy_binary(&cfg.plugin_binary, &cfg.bin_dir, &ty)?;
    if let Some(aside) = &wrapped {
        std::fs::copy(&primary, aside)
            .map_err(|e| Error::io(format!("keeping {}", primary.display()), e))?;
    }
    write_json(&conflist, &conf)?;
    if wrapped.is_some() {
        std::fs::remove_file(&primary)
            .map_err(|e| Error::io(format!("removing wrapped {}", primary.display()), e))?;
    }
    Ok(Installed {
        conflist,
        wrapped,
        binary,
        kube_plugin,
    })
}

fn copy_binary(src: &Path, bin_dir: &Path, ty: &str) -> Result<PathBuf, Error> {
    std::fs::create_dir_all(bin_dir)
        .map_err(|e| Error::io(format!("creating {}", bin_dir.display()), e))?;
    let dst = bin_dir.join(ty);
    let tmp = bin_dir.join(format!(".{ty}.tmp"));
    std::fs::copy(src, &tmp)
        .map_err(|e| Error::io(format!("copying {} to {}", src.display(), tmp.display()), e))?;
    std::fs::set_permissions(&tmp, std::fs::Permissions::from_mode(0o755))
        .map_err(|e| Error::io(format!("chmod {}", tmp.display()), e))?;
    std::fs::rename(&tmp, &dst)
        .map_err(|e| Error::io(format!("installing {}", dst.display()), e))?;
    Ok(dst)
}

/// Removes our entry from every config list that has it (restoring a
/// wrapped `.conf`) and our binary. Absent pieces are fine.
pub fn uninstall(cfg: &InstallConfig) -> Result<Vec<PathBuf>, Error> {
    let ty = entry_type(&cfg.entry)?.to_owned();
    let mut touched = Vec::new();
    for path in cni_files(&cfg.conf_dir)? {
        let Ok(mut conf) = read_json(&path) else {
            continue;
        };
        let Some(Value::Array(plugins)) = conf.get_mut("plugins") else {
            continue;
        };
        let before = plugins.len();
        plugins.retain(|p| p.get("type").and_then(Value::as_str) != Some(ty.as_str()));
        if plugins.len() == before {
            continue;
        }
        let original = ["conf", "json"]
            .iter()
            .map(|e| {
                PathBuf::from(format!(
                    "{}.{ORIGINAL_SUFFIX}",
                    path.with_extension(e).display()
                ))
            })
            .find(|p| p.exists());
        match original {
            Some(aside) => {
                let restored = PathBuf::from(
                    aside
                        .to_string_lossy()
                        .trim_end_matches(&format!(".{ORIGINAL_SUFFIX}"))
                        .to_owned(),
                );
                std::fs::rename(&aside, &restored)
                    .map_err(|e| Error::io(format!("restoring {}", restored.display()), e))?;
                std::fs::remove_file(&path)
                    .map_err(|e| Error::io(format!("removing {}", path.display()), e))?;
                touched.push(restored);
            }
            None => {
                write_json(&path, &conf)?;
                touched.push(path);
            }
        }
    }
    for name in [ty.clone(), format!("{ty}{KUBE_SUFFIX}")] {
        let bin = cfg.bin_dir.join(name);
        match std::fs::remove_file(&bin) {
            Ok(()) => touched.push(bin),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(Error::io(format!("removing {}", bin.display()), e)),
        }
    }
    Ok(touched)
}

#[cfg(test)]
mod tests {
    use super::*;

    struct Dirs(PathBuf);

    impl Drop for Dirs {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }

    fn setup(tag: &str) -> (Dirs, InstallConfig) {
        let root =
            std::env::temp_dir().join(format!("ambit-cni-inst-{}-{tag}", std::process::id()));
        let _ = std::fs::remove_dir_all(&root);
        for d in ["net.d", "bin"] {
            std::fs::create_dir_all(root.join(d)).expect("mkdir");
        }
        let binary = root.join("cni-node");
        std::fs::write(&binary, b"#!/bin/true\n").expect("bin");
        let cfg = InstallConfig {
            conf_dir: root.join("net.d"),
            bin_dir: root.join("bin"),
            plugin_binary: binary,
            kube_plugin: None,
            conf_name: None,
            entry: plugin_entry(
                "istio-cni",
                Path::new("/var/run/istio-cni"),
                &["kube-system".into()],
            ),
        };
        (Dirs(root), cfg)
    }

    fn snapshot(dir: &Path) -> Vec<(String, Vec<u8>)> {
        let mut v: Vec<_> = std::fs::read_dir(dir)
            .expect("read")
            .filter_map(|e| e.ok())
            .map(|e| {
                (
                    e.file_name().to_string_lossy().into_owned(),
                    std::fs::read(e.path()).expect("read"),
                )
            })
            .collect();
        v.sort();
        v
    }

    #[test]
    fn conflist_gets_our_entry_last_once_and_uninstall_restores_it() {
        let (_d, cfg) = setup("list");
        let list = r#"{"cniVersion":"1.0.0","name":"k8s","plugins":[{"type":"bridge"},{"type":"portmap"}]}"#;
        std::fs::write(cfg.conf_dir.join("10-k8s.conflist"), list).expect("w");
        std::fs::write(cfg.conf_dir.join("20-other.conf"), r#"{"type":"x"}"#).expect("w");
        let before = snapshot(&cfg.conf_dir);
        let done = install(&cfg).expect("install");
        install(&cfg).expect("install again");
        assert_eq!(done.conflist, cfg.conf_dir.join("10-k8s.conflist"));
        let v = read_json(&done.conflist).expect("json");
        let types: Vec<_> = v["plugins"]
            .as_array()
            .expect("plugins")
            .iter()
            .map(|p| p["type"].as_str().unwrap_or_default().to_owned())
            .collect();
        assert_eq!(types, ["bridge", "portmap", "istio-cni"]);
        assert!(done.binary.exists());
        let mode = std::fs::metadata(&done.binary)
            .expect("meta")
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o755);
        uninstall(&cfg).expect("uninstall");
        assert!(!done.binary.exists());
        let after: Vec<_> = snapshot(&cfg.conf_dir);
        assert_eq!(after.len(), before.len());
        let v = read_json(&cfg.conf_dir.join("10-k8s.conflist")).expect("json");
        assert_eq!(
            Value::Object(v),
            serde_json::from_str::<Value>(list).expect("orig")
        );
        uninstall(&cfg).expect("uninstall twice is fine");
    }

    #[test]
    fn single_conf_is_wrapped_and_restored_byte_for_byte() {
        let (_d, cfg) = setup("conf");
        let conf = "{\"cniVersion\":\"0.4.0\",\"name\":\"net\",\"type\":\"bridge\",\"ipam\":{\"type\":\"host-local\"}}";
        std::fs::write(cfg.conf_dir.join("10-net.conf"), conf).expect("w");
        let before = snapshot(&cfg.conf_dir);
        let done = install(&cfg).expect("install");
        assert_eq!(done.conflist, cfg.conf_dir.join("10-net.conflist"));
        assert!(!cfg.conf_dir.join("10-net.conf").exists());
        let v = read_json(&done.conflist).expect("json");
        assert_eq!(v["cniVersion"], "0.4.0");
        assert_eq!(v["name"], "net");
        assert_eq!(v["plugins"][0]["type"], "bridge");
        assert_eq!(v["plugins"][1]["type"], "istio-cni");
        assert_eq!(v["plugins"][1]["exclude_namespaces"][0], "kube-system");
        uninstall(&cfg).expect("uninstall");
        assert_eq!(snapshot(&cfg.conf_dir), before);
    }

    #[test]
    fn the_small_plugin_gets_its_full_plugin_beside_it_and_both_go() {
        let (_d, mut cfg) = setup("small");
        let small = cfg.plugin_binary.with_file_name("ambit-cni-plugin");
        std::fs::write(&small, b"#!/bin/false\n").expect("small");
        cfg.kube_plugin = Some(std::mem::replace(&mut cfg.plugin_binary, small));
        let list = r#"{"cniVersion":"1.0.0","name":"k8s","plugins":[{"type":"bridge"}]}"#;
        std::fs::write(cfg.conf_dir.join("10-k8s.conflist"), list).expect("w");
        let done = install(&cfg).expect("install");
        assert_eq!(done.binary, cfg.bin_dir.join("istio-cni"));
        assert_eq!(
            std::fs::read(&done.binary).expect("plugin"),
            b"#!/bin/false\n"
        );
        let full = done.kube_plugin.expect("full plugin installed");
        assert_eq!(full, cfg.bin_dir.join("istio-cni-kube"));
        assert_eq!(std::fs::read(&full).expect("full"), b"#!/bin/true\n");
        let touched = uninstall(&cfg).expect("uninstall");
        assert!(touched.contains(&full) && touched.contains(&done.binary));
        assert!(snapshot(&cfg.bin_dir).is_empty(), "both binaries removed");
    }

    #[test]
    fn no_primary_config_is_an_error() {
        let (_d, cfg) = setup("none");
        assert!(matches!(install(&cfg), Err(Error::Config { .. })));
        std::fs::write(cfg.conf_dir.join("10-bad.conflist"), "{").expect("w");
        assert!(matches!(install(&cfg), Err(Error::Config { .. })));
        assert!(
            !cfg.bin_dir.join("istio-cni").exists(),
            "nothing half-installed"
        );
    }
}
