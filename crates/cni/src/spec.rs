//! The CNI protocol as data: commands, environment, network configuration,
//! `prevResult`, and error objects, per the CNI specification 0.4.0 and
//! 1.0.x (older 0.3.x configurations are accepted as well).
//!
//! Nothing here touches the system: [`CniEnv::from_vars`] takes the
//! variables as a map and [`NetConf::parse`] takes stdin's bytes, so every
//! rule is unit-tested.

use std::collections::BTreeMap;
use std::net::IpAddr;
use std::path::PathBuf;

use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;

/// Versions this plugin speaks; `VERSION` reports them.
pub const SUPPORTED_VERSIONS: &[&str] = &["0.3.0", "0.3.1", "0.4.0", "1.0.0", "1.1.0"];

/// The version assumed when a configuration names none (the spec's default).
pub const DEFAULT_VERSION: &str = "0.1.0";

/// Istio's agent run directory (`cni_agent_run_dir`).
pub const DEFAULT_RUN_DIR: &str = "/var/run/istio-cni";

/// The plugin-event socket inside the run directory.
pub const EVENT_SOCKET: &str = "pluginevent.sock";

/// Well-known CNI error codes (spec section "Error"); 100 and up are ours.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum ErrorCode {
    /// 1: incompatible CNI version.
    IncompatibleVersion,
    /// 2: unsupported field in the network configuration.
    UnsupportedField,
    /// 3: container unknown or does not exist.
    UnknownContainer,
    /// 4: invalid necessary environment variables (including an unknown
    /// `CNI_COMMAND`).
    InvalidEnv,
    /// 5: I/O failure (e.g. reading stdin).
    IoFailure,
    /// 6: failed to decode content (stdin is not valid JSON).
    DecodingFailure,
    /// 7: invalid network configuration.
    InvalidNetworkConfig,
    /// 11: try again later (the node agent is not reachable yet).
    TryAgainLater,
    /// 100: the node agent answered the pod event with an error.
    AgentRejected,
    /// 101: the pod event could not be delivered for another reason.
    AgentProtocol,
}

impl ErrorCode {
    /// The number on the wire.
    pub fn code(self) -> u32 {
        match self {
            Self::IncompatibleVersion => 1,
            Self::UnsupportedField => 2,
            Self::UnknownContainer => 3,
            Self::InvalidEnv => 4,
            Self::IoFailure => 5,
            Self::DecodingFailure => 6,
            Self::InvalidNetworkConfig => 7,
            Self::TryAgainLater => 11,
            Self::AgentRejected => 100,
            Self::AgentProtocol => 101,
        }
    }
}

/// A CNI error object, printed on stdout with a non-zero exit status.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, thiserror::Error)]
#[error("cni error {code}: {msg}")]
pub struct CniError {
    /// The configuration's `cniVersion` (or the newest we speak).
    #[serde(rename = "cniVersion")]
    pub cni_version: String,
    /// The error code.
    pub code: u32,
    /// A short message.
    pub msg: String,
    /// Longer details (may be empty).
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub details: String,
}

impl CniError {
    /// A new error object.
    pub fn new(code: ErrorCode, msg: impl Into<String>, details: impl Into<String>) -> Self {
        Self {
            cni_version: latest_version().to_owned(),
            code: code.code(),
            msg: msg.into(),
            details: details.into(),
        }
    }

    /// The same error reported under the configuration's version.
    pub fn with_version(mut self, version: &str) -> Self {
        version.clone_into(&mut self.cni_version);
        self
    }

    /// The JSON object.
    pub fn to_json(&self) -> String {
        serde_json::to_string(self).unwrap_or_else(|_| {
            format!(
                "{{\"cniVersion\":\"1.0.0\",\"code\":{},\"msg\":\"unprintable error\"}}",
                self.code
            )
        })
    }
}

/// The newest version in [`SUPPORTED_VERSIONS`].
pub fn latest_version() -> &'static str {
    SUPPORTED_VERSIONS
        .last()
        .copied()
        .unwrap_or(DEFAULT_VERSION)
}

/// Whether `v` is one of [`SUPPORTED_VERSIONS`].
pub fn version_supported(v: &str) -> bool {
    SUPPORTED_VERSIONS.contains(&v)
}

/// `CNI_COMMAND`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Command {
    /// Attach a container.
    Add,
    /// Detach a container (must tolerate repeats and missing state).
    Del,
    /// Check a container's attachment.
    Check,
    /// Report supported versions.
    Version,
}

impl std::str::FromStr for Command {
    type Err = CniError;

    fn from_str(s: &str) -> Result<Self, CniError> {
        match s {
            "ADD" => Ok(Self::Add),
            "DEL" => Ok(Self::Del),
            "CHECK" => Ok(Self::Check),
            "VERSION" => Ok(Self::Version),
            other => Err(CniError::new(
                ErrorCode::InvalidEnv,
                format!("unknown CNI_COMMAND {other:?}"),
                "expected ADD, DEL, CHECK or VERSION",
            )),
        }
    }
}

/// The CNI environment of one invocation.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CniEnv {
    /// `CNI_COMMAND`.
    pub command: Command,
    /// `CNI_CONTAINERID`.
    pub container_id: String,
    /// `CNI_NETNS` (may be empty for DEL).
    pub netns: String,
    /// `CNI_IFNAME`.
    pub ifname: String,
    /// `CNI_ARGS`, split into `KEY=VALUE` pairs.
    pub args: BTreeMap<String, String>,
    /// `CNI_PATH`.
    pub path: String,
}

impl CniEnv {
    /// Reads the CNI variables from `get` (e.g. `std::env::var`). Which
    /// are required depends on the command, as the spec gives it: all of
    /// them for ADD and CHECK; DEL tolerates an empty `CNI_NETNS`; VERSION
    /// needs none.
    pub fn from_vars(get: impl Fn(&str) -> Option<String>) -> Result<Self, CniError> {
        let command: Command = get("CNI_COMMAND")
            .ok_or_else(|| CniError::new(ErrorCode::InvalidEnv, "CNI_COMMAND is not set", ""))?
            .parse()?;
        let var = |name: &str, required: bool| -> Result<String, CniError> {
            match get(name).filter(|v| !v.is_empty()) {
                Some(v) => Ok(v),
                None if required => Err(CniError::new(
                    ErrorCode::InvalidEnv,
                    format!("required environment variable {name} is missing"),
                    format!("{name} must be set for {command:?}"),
                )),
                None => Ok(String::new()),
            }
        };
        let full = matches!(command, Command::Add | Command::Check);
        let container_id = var("CNI_CONTAINERID", command != Command::Version)?;
        let netns = var("CNI_NETNS", full)?;
        let ifname = var("CNI_IFNAME", command != Command::Version)?;
        let args = parse_args(&var("CNI_ARGS", false)?)?;
        Ok(Self {
            command,
            container_id,
            netns,
            ifname,
            args,
            path: var("CNI_PATH", false)?,
        })
    }

    /// The Kubernetes pod this invocation is for, from `CNI_ARGS`.
    pub fn pod(&self) -> Result<K8sArgs, CniError> {
        let get = |k: &str| self.args.get(k).filter(|v| !v.is_empty()).cloned();
        match (get("K8S_POD_NAME"), get("K8S_POD_NAMESPACE")) {
            (Some(name), Some(namespace)) => Ok(K8sArgs {
                name,
                namespace,
                uid: get("K8S_POD_UID"),
                infra_container_id: get("K8S_POD_INFRA_CONTAINER_ID"),
            }),
            _ => Err(CniError::new(
                ErrorCode::InvalidEnv,
                "CNI_ARGS lacks K8S_POD_NAME or K8S_POD_NAMESPACE",
                "the runtime must pass the Kubernetes pod name and namespace",
            )),
        }
    }
}

/// Splits `CNI_ARGS` (`K1=V1;K2=V2`). Empty pieces are ignored; a piece
/// without `=` is an invalid environment.
pub fn parse_args(s: &str) -> Result<BTreeMap<String, String>, CniError> {
    let mut out = BTreeMap::new();
    for piece in s.split(';').filter(|p| !p.is_empty()) {
        let Some((k, v)) = piece.split_once('=') else {
            return Err(CniError::new(
                ErrorCode::InvalidEnv,
                "CNI_ARGS is malformed",
                format!("{piece:?} is not KEY=VALUE"),
            ));
        };
        out.insert(k.to_owned(), v.to_owned());
    }
    Ok(out)
}

/// The Kubernetes arguments the runtime passes in `CNI_ARGS`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct K8sArgs {
    /// `K8S_POD_NAME`.
    pub name: String,
    /// `K8S_POD_NAMESPACE`.
    pub namespace: String,
    /// `K8S_POD_UID`, when the runtime sends it.
    pub uid: Option<String>,
    /// `K8S_POD_INFRA_CONTAINER_ID`.
    pub infra_container_id: Option<String>,
}

/// Our entry in the chained `.conflist` (Istio's field names), as the
/// runtime passes it on stdin, with `cniVersion`, `name` and `prevResult`
/// filled in.
#[derive(Debug, Clone, Deserialize)]
pub struct NetConf {
    /// `cniVersion`.
    #[serde(rename = "cniVersion", default = "default_version")]
    pub cni_version: String,
    /// The network name.
    #[serde(default)]
    pub name: String,
    /// The plugin type (`istio-cni`).
    #[serde(rename = "type")]
    pub plugin_type: String,
    /// Where the agent's socket lives.
    #[serde(default = "default_run_dir")]
    pub cni_agent_run_dir: PathBuf,
    /// Send pod events to the ambient agent.
    #[serde(default)]
    pub ambient_enabled: bool,
    /// Namespaces whose pods are never sent.
    #[serde(default)]
    pub exclude_namespaces: Vec<String>,
    /// The agent's own namespace: pods there named after the agent or
    /// ztunnel are never sent.
    #[serde(default = "default_system_namespace")]
    pub pod_namespace: String,
    /// The previous plugin's result, kept byte for byte.
    #[serde(rename = "prevResult", default)]
    pub prev_result: Option<Box<RawValue>>,
    /// Istio's `kubernetes` block: the kubeconfig the plugin reads pods and
    /// namespaces with, to decide ambient membership itself.
    #[serde(default)]
    pub kubernetes: Option<KubernetesConf>,
    /// A directory of pod records (as the agent's `dir` source reads) the
    /// plugin decides membership from when there is no cluster.
    #[serde(default)]
    pub pod_records_dir: Option<PathBuf>,
    /// The plugin that reads the API server, for the small plugin
    /// (`ambit-cni-plugin`) to hand an ADD to when its agent-first fast
    /// path cannot finish it (see [`crate::plugin::run_agent_first`]).
    /// When absent (the installer does not write it), the small plugin
    /// looks for `<its own file>-kube` beside itself, where
    /// `cni-node install --plugin-kubeconfig` copies `cni-node`, then for
    /// `cni-node` beside itself.
    #[serde(default)]
    pub kube_plugin: Option<PathBuf>,
}

/// The `kubernetes` block of the plugin's network configuration.
#[derive(Debug, Clone, Default, Deserialize)]
pub struct KubernetesConf {
    /// Path of the kubeconfig the plugin uses to read pods and namespaces.
    #[serde(default)]
    pub kubeconfig: Option<PathBuf>,
}

fn default_version() -> String {
    DEFAULT_VERSION.to_owned()
}

fn default_run_dir() -> PathBuf {
    PathBuf::from(DEFAULT_RUN_DIR)
}

fn default_system_namespace() -> String {
    "istio-system".to_owned()
}

impl NetConf {
    /// Parses stdin: not JSON → code 6; JSON of the wrong shape, or a
    /// version we do not speak → code 7 / code 1.
    pub fn parse(stdin: &[u8]) -> Result<Self, CniError> {
        let value: serde_json::Value = serde_json::from_slice(stdin).map_err(|e| {
            CniError::new(
                ErrorCode::DecodingFailure,
                "failed to decode the network configuration",
                e.to_string(),
            )
        })?;
        if let Some(v) = value.get("cniVersion").and_then(|v| v.as_str())
            && !version_supported(v)
        {
            return Err(CniError::new(
                ErrorCode::IncompatibleVersion,
                format!("incompatible CNI version {v}"),
                format!("supported: {}", SUPPORTED_VERSIONS.join(", ")),
            ));
        }
        let conf: Self = serde_json::from_slice(stdin).map_err(|e| {
            CniError::new(
                ErrorCode::InvalidNetworkConfig,
                "invalid network configuration",
                e.to_string(),
            )
        })?;
        if !version_supported(&conf.cni_version) {
            return Err(CniError::new(
                ErrorCode::IncompatibleVersion,
                format!("incompatible CNI version {}", conf.cni_version),
                format!("supported: {}", SUPPORTED_VERSIONS.join(", ")),
            ));
        }
        if conf.plugin_type.is_empty() {
            return Err(CniError::new(
                ErrorCode::InvalidNetworkConfig,
                "invalid network configuration",
                "`type` is empty",
            ));
        }
        Ok(conf)
    }

    /// The pod addresses in `prevResult` (`ips[].address`, prefix dropped).
    pub fn prev_ips(&self) -> Result<Vec<IpAddr>, CniError> {
        let Some(raw) = &self.prev_result else {
            return Ok(Vec::new());
        };
        let r: PrevResult = serde_json::from_str(raw.get()).map_err(|e| {
            CniError::new(
                ErrorCode::InvalidNetworkConfig,
                "invalid prevResult",
                e.to_string(),
            )
        })?;
        r.ips
            .iter()
            .map(|i| {
                i.address
                    .parse::<ipnet::IpNet>()
                    .map(|n| n.addr())
                    .or_else(|_| i.address.parse::<IpAddr>())
                    .map_err(|_| {
                        CniError::new(
                            ErrorCode::InvalidNetworkConfig,
                            "invalid prevResult",
                            format!("ips[].address {:?} is not an address", i.address),
                        )
                    })
            })
            .collect()
    }
}

#[derive(Debug, Deserialize)]
struct PrevResult {
    #[serde(default)]
    ips: Vec<PrevIp>,
}

#[derive(Debug, Deserialize)]
struct PrevIp {
    address: String,
}

/// The `VERSION` command's answer.
pub fn version_result(requested: &str) -> String {
    serde_json::json!({
        "cniVersion": if version_supported(requested) { requested } else { latest_version() },
        "supportedVersions": SUPPORTED_VERSIONS,
    })
    .to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env(vars: &[(&str, &str)]) -> Result<CniEnv, CniError> {
        let map: BTreeMap<String, String> = vars
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect();
        CniEnv::from_vars(|k| map.get(k).cloned())
    }

    const FULL: &[(&str, &str)] = &[
        ("CNI_COMMAND", "ADD"),
        ("CNI_CONTAINERID", "c1"),
        ("CNI_NETNS", "/run/netns/p"),
        ("CNI_IFNAME", "eth0"),
        (
            "CNI_ARGS",
            "IgnoreUnknown=1;K8S_POD_NAMESPACE=default;K8S_POD_NAME=web-0;K8S_POD_UID=u-1",
        ),
    ];

    #[test]
    fn env_parses_a_runtime_invocation() {
        let e = env(FULL).expect("env");
        assert_eq!(e.command, Command::Add);
        assert_eq!(e.args["IgnoreUnknown"], "1");
        let pod = e.pod().expect("pod");
        assert_eq!(
            (
                pod.name.as_str(),
                pod.namespace.as_str(),
                pod.uid.as_deref()
            ),
            ("web-0", "default", Some("u-1"))
        );
    }

    #[test]
    fn env_errors_use_code_4() {
        let mut v = FULL.to_vec();
        v[0] = ("CNI_COMMAND", "FROB");
        assert_eq!(env(&v).expect_err("unknown").code, 4);
        assert_eq!(env(&FULL[1..]).expect_err("no command").code, 4);
        let no_netns: Vec<_> = FULL
            .iter()
            .copied()
            .filter(|(k, _)| *k != "CNI_NETNS")
            .collect();
        let e = env(&no_netns).expect_err("no netns");
        assert_eq!(e.code, 4);
        assert!(e.msg.contains("CNI_NETNS"), "{e:?}");
        let no_args: Vec<_> = FULL
            .iter()
            .copied()
            .filter(|(k, _)| *k != "CNI_ARGS")
            .collect();
        assert_eq!(
            env(&no_args).expect("env").pod().expect_err("no pod").code,
            4
        );
        let mut bad = FULL.to_vec();
        bad[4] = ("CNI_ARGS", "K8S_POD_NAME");
        assert_eq!(env(&bad).expect_err("malformed").code, 4);
    }

    #[test]
    fn del_tolerates_a_missing_netns_and_version_needs_nothing() {
        let del: Vec<_> = FULL
            .iter()
            .copied()
            .map(|(k, v)| {
                if k == "CNI_COMMAND" {
                    (k, "DEL")
                } else {
                    (k, v)
                }
            })
            .filter(|(k, _)| *k != "CNI_NETNS")
            .collect();
        assert_eq!(env(&del).expect("del").netns, "");
        assert_eq!(
            env(&[("CNI_COMMAND", "VERSION")]).expect("version").command,
            Command::Version
        );
    }

    #[test]
    fn netconf_errors_have_the_spec_codes() {
        assert_eq!(NetConf::parse(b"{not json").expect_err("json").code, 6);
        assert_eq!(NetConf::parse(b"").expect_err("empty").code, 6);
        let e = NetConf::parse(br#"{"cniVersion":"0.2.0","type":"istio-cni"}"#).expect_err("v");
        assert_eq!(e.code, 1);
        assert!(e.details.contains("1.0.0"), "{e:?}");
        assert_eq!(
            NetConf::parse(br#"{"cniVersion":"1.0.0"}"#)
                .expect_err("no type")
                .code,
            7
        );
        assert_eq!(
            NetConf::parse(
                br#"{"cniVersion":"1.0.0","type":"x","exclude_namespaces":"kube-system"}"#
            )
            .expect_err("wrong shape")
            .code,
            7
        );
        // No cniVersion means 0.1.0, which we do not speak.
        assert_eq!(
            NetConf::parse(br#"{"type":"x"}"#).expect_err("0.1.0").code,
            1
        );
    }

    #[test]
    fn netconf_keeps_prev_result_bytes_and_reads_ips() {
        let prev = r#"{"cniVersion":"1.0.0","interfaces":[{"name":"eth0","sandbox":"/run/netns/p"}],"ips":[{"address":"10.244.0.130/25","gateway":"10.244.0.129","interface":0},{"address":"fd00::5/64"}],"dns":{}}"#;
        let stdin = format!(
            r#"{{"cniVersion":"1.0.0","name":"k8s","type":"istio-cni","ambient_enabled":true,"exclude_namespaces":["kube-system"],"cni_agent_run_dir":"/tmp/x","prevResult":{prev}}}"#
        );
        let c = NetConf::parse(stdin.as_bytes()).expect("conf");
        assert_eq!(c.prev_result.as_ref().map(|r| r.get()), Some(prev));
        assert_eq!(
            c.prev_ips().expect("ips"),
            vec![
                "10.244.0.130".parse::<IpAddr>().expect("ip"),
                "fd00::5".parse().expect("ip")
            ]
        );
        assert!(c.ambient_enabled);
        assert_eq!(c.cni_agent_run_dir, PathBuf::from("/tmp/x"));
        assert_eq!(c.pod_namespace, "istio-system");
    }

    #[test]
    fn bad_prev_result_is_code_7() {
        let c = NetConf::parse(
            br#"{"cniVersion":"0.4.0","type":"istio-cni","prevResult":{"ips":[{"address":"nope"}]}}"#,
        )
        .expect("conf");
        assert_eq!(c.prev_ips().expect_err("bad ip").code, 7);
    }

    #[test]
    fn error_object_shape() {
        let e = CniError::new(ErrorCode::TryAgainLater, "agent away", "").with_version("0.4.0");
        let v: serde_json::Value = serde_json::from_str(&e.to_json()).expect("json");
        assert_eq!(
            v,
            serde_json::json!({"cniVersion":"0.4.0","code":11,"msg":"agent away"})
        );
    }

    #[test]
    fn version_answer() {
        let v: serde_json::Value = serde_json::from_str(&version_result("0.4.0")).expect("json");
        assert_eq!(v["cniVersion"], "0.4.0");
        assert!(
            v["supportedVersions"]
                .as_array()
                .expect("array")
                .contains(&"1.0.0".into())
        );
        let v: serde_json::Value = serde_json::from_str(&version_result("9.9.9")).expect("json");
        assert_eq!(v["cniVersion"], latest_version());
    }
}
