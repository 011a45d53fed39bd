//! The container runtime's side of CNI, as libcni does it: run each plugin
//! of a network configuration list with the CNI environment and the
//! plugin's config on stdin — ADD in order with the previous plugin's
//! result as `prevResult`, DEL in reverse with the cached result. For
//! tests, local meshes and tools that wire pods without a kubelet.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use ambit_netns::NetNs;
use serde_json::Value;

use crate::error::Error;

/// One pod sandbox, as the runtime describes it to plugins.
#[derive(Debug, Clone)]
pub struct Sandbox {
    /// `CNI_CONTAINERID`.
    pub container_id: String,
    /// `CNI_NETNS`: the sandbox's network namespace path.
    pub netns: PathBuf,
    /// `CNI_IFNAME`.
    pub ifname: String,
    /// Pod namespace (`K8S_POD_NAMESPACE`).
    pub pod_namespace: String,
    /// Pod name (`K8S_POD_NAME`).
    pub pod_name: String,
    /// Pod UID (`K8S_POD_UID`).
    pub pod_uid: String,
}

/// Runs plugins found in `cni_path` (a `:`-separated list of directories),
/// inside `netns` when given (the runtime's namespace: the node).
#[derive(Debug)]
pub struct Runtime<'a> {
    /// Plugin directories, `:`-separated (`CNI_PATH`).
    pub cni_path: String,
    /// The namespace plugins run in; `None`: this process's.
    pub netns: Option<&'a NetNs>,
}

impl Runtime<'_> {
    /// ADD through every plugin of `conflist`; returns the last result.
    /// If a plugin fails, the plugins that succeeded are deleted again
    /// (as libcni leaves it to the runtime to do) and the error names the
    /// failing plugin with its CNI error output.
    pub fn add(&self, conflist: &Value, sb: &Sandbox) -> Result<Value, Error> {
        let plugins = plugins(conflist)?;
        let mut prev: Option<Value> = None;
        for (i, plugin) in plugins.iter().enumerate() {
            match self.exec(conflist, plugin, "ADD", sb, prev.as_ref()) {
                Ok(out) => prev = Some(out),
                Err(e) => {
                    let done = conflist_prefix(conflist, &plugins[..i]);
                    if let Some(p) = &prev {
                        let _ = self.del(&done, sb, Some(p));
                    }
                    return Err(e);
                }
            }
        }
        prev.ok_or_else(|| Error::invalid("conflist", "no plugins"))
    }

    /// DEL through every plugin of `conflist`, last first, with `result`
    /// (the cached ADD result) as `prevResult`. Every plugin is called
    /// even if one fails; the first failure is returned.
    pub fn del(&self, conflist: &Value, sb: &Sandbox, result: Option<&Value>) -> Result<(), Error> {
        let mut first = None;
        for plugin in plugins(conflist)?.iter().rev() {
            if let Err(e) = self.exec(conflist, plugin, "DEL", sb, result) {
                first.get_or_insert(e);
            }
        }
        first.map_or(Ok(()), Err)
    }

    fn exec(
        &self,
        conflist: &Value,
        plugin: &Value,
        command: &str,
        sb: &Sandbox,
        prev: Option<&Value>,
    ) -> Result<Value, Error> {
        let ty = plugin["type"]
            .as_str()
            .ok_or_else(|| Error::invalid("conflist", "a plugin without `type`"))?;
        let binary = self.find(ty)?;
        let mut conf = plugin.clone();
        conf["cniVersion"] = conflist["cniVersion"].clone();
        conf["name"] = conflist["name"].clone();
        if let Some(p) = prev {
            conf["prevResult"] = p.clone();
        }
        let mut cmd = Command::new(&binary);
        cmd.env_clear()
            .env("PATH", "/usr/sbin:/usr/bin:/sbin:/bin")
            .env("CNI_COMMAND", command)
            .env("CNI_CONTAINERID", &sb.container_id)
            .env("CNI_NETNS", &sb.netns)
            .env("CNI_IFNAME", &sb.ifname)
            .env("CNI_PATH", &self.cni_path)
            .env(
                "CNI_ARGS",
                format!(
                    "IgnoreUnknown=1;K8S_POD_NAMESPACE={};K8S_POD_NAME={};K8S_POD_INFRA_CONTAINER_ID={};K8S_POD_UID={}",
                    sb.pod_namespace, sb.pod_name, sb.container_id, sb.pod_uid
                ),
            )
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        let spawn = |cmd: &mut Command| match self.netns {
            Some(ns) => ns.spawn_command(cmd).map_err(|e| e.to_string()),
            None => cmd.spawn().map_err(|e| e.to_string()),
        };
        let mut child = spawn(&mut cmd)
            .map_err(|e| Error::invalid(format!("running {}", binary.display()), e))?;
        if let Some(mut stdin) = child.stdin.take() {
            stdin
                .write_all(conf.to_string().as_bytes())
                .map_err(|e| Error::io(format!("writing {ty}'s stdin"), e))?;
        }
        let out = child
            .wait_with_output()
            .map_err(|e| Error::io(format!("waiting for {ty}"), e))?;
        let stdout = String::from_utf8_lossy(&out.stdout);
        if !out.status.success() {
            return Err(Error::invalid(
                format!("plugin {ty} {command}"),
                format!(
                    "{} {}",
                    stdout.trim(),
                    String::from_utf8_lossy(&out.stderr).trim()
                ),
            ));
        }
        if command == "DEL" || stdout.trim().is_empty() {
            return Ok(Value::Null);
        }
        serde_json::from_str(&stdout)
            .map_err(|e| Error::invalid(format!("plugin {ty} {command} result"), e.to_string()))
    }

    /// The plugin binary for `ty`, as libcni finds it in `CNI_PATH`.
    pub fn find(&self, ty: &str) -> Result<PathBuf, Error> {
        if ty.contains('/') {
            return Err(Error::invalid(
                "conflist",
                format!("bad plugin type {ty:?}"),
            ));
        }
        self.cni_path
            .split(':')
            .map(|d| Path::new(d).join(ty))
            .find(|p| p.is_file())
            .ok_or_else(|| {
                Error::invalid(
                    "cni plugin",
                    format!("{ty} not found in CNI_PATH {}", self.cni_path),
                )
            })
    }
}

fn plugins(conflist: &Value) -> Result<Vec<Value>, Error> {
    conflist["plugins"]
        .as_array()
        .filter(|p| !p.is_empty())
        .cloned()
        .ok_or_else(|| Error::invalid("conflist", "no `plugins` list"))
}

fn conflist_prefix(conflist: &Value, plugins: &[Value]) -> Value {
    let mut c = conflist.clone();
    c["plugins"] = Value::Array(plugins.to_vec());
    c
}
