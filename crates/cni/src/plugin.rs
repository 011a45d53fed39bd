//! The plugin's commands, as Istio's `istio-cni` plugin behaves in ambient
//! mode: ADD posts the pod event to the node agent and passes the primary
//! plugin's result through unchanged; DEL and CHECK succeed without
//! touching anything (DEL also notifies the agent, best effort, so a pod
//! known only from plugin events is unenrolled promptly).
//!
//! [`run`] is pure apart from the [`EventSink`]: it takes the environment
//! through a closure and stdin as bytes, and returns what to print and
//! whether the invocation succeeded.

use crate::event::{EventKind, EventSink, PodEvent, PostError};
use crate::spec::{CniEnv, CniError, Command, ErrorCode, K8sArgs, NetConf, version_result};

/// Pod name prefixes in the agent's namespace that are never enrolled:
/// the agent itself and ztunnel.
pub const SYSTEM_POD_PREFIXES: &[&str] = &["istio-cni-node", "ztunnel"];

/// What the plugin prints and how it exits.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Outcome {
    /// stdout: a result, a version answer, nothing, or an error object.
    pub stdout: String,
    /// The error, when the invocation failed (exit status 1).
    pub error: Option<CniError>,
}

impl Outcome {
    fn ok(stdout: impl Into<String>) -> Self {
        Self {
            stdout: stdout.into(),
            error: None,
        }
    }

    fn err(e: CniError) -> Self {
        Self {
            stdout: e.to_json(),
            error: Some(e),
        }
    }
}

/// Why an ADD was passed through without an event.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Skip {
    /// `ambient_enabled` is false.
    AmbientDisabled,
    /// The namespace is in `exclude_namespaces`.
    ExcludedNamespace,
    /// The agent's own pod or ztunnel.
    SystemPod,
}

/// Whether a pod's event goes to the agent.
pub fn skip_reason(conf: &NetConf, pod: &K8sArgs) -> Option<Skip> {
    if !conf.ambient_enabled {
        Some(Skip::AmbientDisabled)
    } else if conf.exclude_namespaces.contains(&pod.namespace) {
        Some(Skip::ExcludedNamespace)
    } else if pod.namespace == conf.pod_namespace
        && SYSTEM_POD_PREFIXES.iter().any(|p| pod.name.starts_with(p))
    {
        Some(Skip::SystemPod)
    } else {
        None
    }
}

/// Runs one invocation. `var` reads the environment; `sink` is where
/// events go (the agent's socket in production).
pub fn run(var: impl Fn(&str) -> Option<String>, stdin: &[u8], sink: &dyn EventSink) -> Outcome {
    let env = match CniEnv::from_vars(var) {
        Ok(e) => e,
        Err(e) => return Outcome::err(e.with_version(&lenient_version(stdin))),
    };
    if env.command == Command::Version {
        return Outcome::ok(version_result(&lenient_version(stdin)));
    }
    let conf = match NetConf::parse(stdin) {
        Ok(c) => c,
        Err(e) => return Outcome::err(e.with_version(&lenient_version(stdin))),
    };
    let version = conf.cni_version.clone();
    match command(&env, &conf, sink) {
        Ok(out) => Outcome::ok(out),
        Err(e) => Outcome::err(e.with_version(&version)),
    }
}

fn command(env: &CniEnv, conf: &NetConf, sink: &dyn EventSink) -> Result<String, CniError> {
    match env.command {
        Command::Add => add(env, conf, sink),
        Command::Del => {
            // Never fails: the spec asks DEL to succeed when state is gone,
            // and Istio drives removal from its pod watch anyway.
            if conf.ambient_enabled
                && let Ok(pod) = env.pod()
                && skip_reason(conf, &pod).is_none()
            {
                let _ = sink.post(
                    &conf.cni_agent_run_dir,
                    EventKind::Del,
                    &event(env, &pod, Vec::new()),
                );
            }
            Ok(String::new())
        }
        Command::Check | Command::Version => Ok(String::new()),
    }
}

fn add(env: &CniEnv, conf: &NetConf, sink: &dyn EventSink) -> Result<String, CniError> {
    let prev = conf.prev_result.as_ref().ok_or_else(|| {
        CniError::new(
            ErrorCode::InvalidNetworkConfig,
            "no prevResult: this plugin must be chained after the primary plugin",
            "",
        )
    })?;
    if !conf.ambient_enabled {
        return Ok(prev.get().to_owned());
    }
    let pod = env.pod()?;
    if skip_reason(conf, &pod).is_some() {
        return Ok(prev.get().to_owned());
    }
    let ips = conf.prev_ips()?;
    sink.post(
        &conf.cni_agent_run_dir,
        EventKind::Add,
        &event(env, &pod, ips),
    )
    .map_err(|e| {
        let code = match e {
            PostError::Unreachable { .. } => ErrorCode::TryAgainLater,
            PostError::Refused { .. } => ErrorCode::AgentRejected,
            _ => ErrorCode::AgentProtocol,
        };
        CniError::new(
            code,
            format!(
                "pod {}/{}: the node agent did not take the event",
                pod.namespace, pod.name
            ),
            e.to_string(),
        )
    })?;
    Ok(prev.get().to_owned())
}

fn event(env: &CniEnv, pod: &K8sArgs, ips: Vec<std::net::IpAddr>) -> PodEvent {
    PodEvent {
        netns: env.netns.clone(),
        container_id: env.container_id.clone(),
        ifname: env.ifname.clone(),
        pod_name: pod.name.clone(),
        pod_namespace: pod.namespace.clone(),
        pod_uid: pod.uid.clone(),
        ips,
    }
}

/// The `cniVersion` of stdin if it has a readable one, for error objects
/// and VERSION; the newest supported otherwise.
fn lenient_version(stdin: &[u8]) -> String {
    serde_json::from_slice::<serde_json::Value>(stdin)
        .ok()
        .and_then(|v| v.get("cniVersion")?.as_str().map(str::to_owned))
        .filter(|v| crate::spec::version_supported(v))
        .unwrap_or_else(|| crate::spec::latest_version().to_owned())
}

#[cfg(test)]
mod tests {
    use std::cell::RefCell;
    use std::collections::BTreeMap;

    use super::*;

    /// Records events; answers with a canned result.
    struct Recorder {
        answer: fn() -> Result<(), PostError>,
        seen: RefCell<Vec<(EventKind, PodEvent)>>,
    }

    impl Recorder {
        fn new(answer: fn() -> Result<(), PostError>) -> Self {
            Self {
                answer,
                seen: RefCell::new(Vec::new()),
            }
        }
    }

    impl EventSink for Recorder {
        fn post(
            &self,
            _run_dir: &std::path::Path,
            kind: EventKind,
            event: &PodEvent,
        ) -> Result<(), PostError> {
            self.seen.borrow_mut().push((kind, event.clone()));
            (self.answer)()
        }
    }

    const PREV: &str = r#"{"cniVersion":"1.0.0","interfaces":[{"name":"cni0","mac":"aa:bb:cc:dd:ee:ff"},{"name":"eth0","sandbox":"/run/netns/p"}],"ips":[{"interface":1,"address":"10.244.0.130/25","gateway":"10.244.0.129"}],"dns":{}}"#;

    fn stdin(extra: &str) -> String {
        format!(
            r#"{{"cniVersion":"1.0.0","name":"k8s-pod-network","type":"istio-cni","ambient_enabled":true,"exclude_namespaces":["kube-system"]{extra},"prevResult":{PREV}}}"#
        )
    }

    fn vars(cmd: &str, ns: &str, name: &str) -> BTreeMap<String, String> {
        [
            ("CNI_COMMAND", cmd.to_owned()),
            ("CNI_CONTAINERID", "abc".into()),
            ("CNI_NETNS", "/run/netns/p".into()),
            ("CNI_IFNAME", "eth0".into()),
            (
                "CNI_ARGS",
                format!(
                    "IgnoreUnknown=1;K8S_POD_NAMESPACE={ns};K8S_POD_NAME={name};K8S_POD_UID=uid-1"
                ),
            ),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_owned(), v))
        .collect()
    }

    fn invoke(vars: &BTreeMap<String, String>, stdin: &str, sink: &Recorder) -> Outcome {
        run(|k| vars.get(k).cloned(), stdin.as_bytes(), sink)
    }

    #[test]
    fn add_posts_the_event_and_returns_prev_result_byte_for_byte() {
        let sink = Recorder::new(|| Ok(()));
        let out = invoke(&vars("ADD", "default", "web-0"), &stdin(""), &sink);
        assert_eq!(out.error, None);
        assert_eq!(out.stdout, PREV);
        let seen = sink.seen.borrow();
        assert_eq!(seen.len(), 1);
        let (kind, e) = &seen[0];
        assert_eq!(*kind, EventKind::Add);
        assert_eq!(e.netns, "/run/netns/p");
        assert_eq!(e.pod_uid.as_deref(), Some("uid-1"));
        assert_eq!(
            e.ips,
            vec!["10.244.0.130".parse::<std::net::IpAddr>().expect("ip")]
        );
    }

    #[test]
    fn excluded_namespaces_system_pods_and_disabled_ambient_pass_through() {
        for (ns, name, extra) in [
            ("kube-system", "coredns-1", ""),
            ("istio-system", "ztunnel-abcde", ""),
            ("istio-system", "istio-cni-node-x", ""),
            ("default", "web-0", r#","ambient_enabled":false"#),
        ] {
            let sink = Recorder::new(|| Err(PostError::Malformed("must not be called".into())));
            let input = if extra.is_empty() {
                stdin("")
            } else {
                stdin("").replace(r#""ambient_enabled":true"#, r#""ambient_enabled":false"#)
            };
            let out = invoke(&vars("ADD", ns, name), &input, &sink);
            assert_eq!(out.error, None, "{ns}/{name}");
            assert_eq!(out.stdout, PREV);
            assert!(sink.seen.borrow().is_empty(), "{ns}/{name}");
        }
    }

    #[test]
    fn agent_failures_fail_add_with_codes() {
        let away = Recorder::new(|| {
            Err(PostError::Unreachable {
                path: "/x".into(),
                source: std::io::Error::from(std::io::ErrorKind::NotFound),
            })
        });
        let out = invoke(&vars("ADD", "default", "web-0"), &stdin(""), &away);
        assert_eq!(out.error.as_ref().map(|e| e.code), Some(11));
        let refused = Recorder::new(|| {
            Err(PostError::Refused {
                status: 500,
                body: "netns gone".into(),
            })
        });
        let out = invoke(&vars("ADD", "default", "web-0"), &stdin(""), &refused);
        let e = out.error.expect("error");
        assert_eq!(e.code, 100);
        assert!(e.details.contains("netns gone"), "{e:?}");
        let v: serde_json::Value = serde_json::from_str(&out.stdout).expect("json");
        assert_eq!(v["code"], 100);
        assert_eq!(v["cniVersion"], "1.0.0");
    }

    #[test]
    fn bad_input_gives_spec_codes() {
        let sink = Recorder::new(|| Ok(()));
        let add = vars("ADD", "default", "web-0");
        assert_eq!(invoke(&add, "{", &sink).error.map(|e| e.code), Some(6));
        let old = stdin("").replace(
            r#""cniVersion":"1.0.0","name""#,
            r#""cniVersion":"0.2.0","name""#,
        );
        assert_eq!(invoke(&add, &old, &sink).error.map(|e| e.code), Some(1));
        let mut no_args = add.clone();
        no_args.remove("CNI_ARGS");
        assert_eq!(
            invoke(&no_args, &stdin(""), &sink).error.map(|e| e.code),
            Some(4)
        );
        let mut unknown = add.clone();
        unknown.insert("CNI_COMMAND".into(), "GC2".into());
        assert_eq!(
            invoke(&unknown, &stdin(""), &sink).error.map(|e| e.code),
            Some(4)
        );
        let unchained = r#"{"cniVersion":"1.0.0","type":"istio-cni","ambient_enabled":true}"#;
        assert_eq!(
            invoke(&add, unchained, &sink).error.map(|e| e.code),
            Some(7)
        );
        assert!(sink.seen.borrow().is_empty());
    }

    #[test]
    fn del_and_check_always_succeed_and_del_notifies() {
        let away = Recorder::new(|| {
            Err(PostError::Unreachable {
                path: "/x".into(),
                source: std::io::Error::from(std::io::ErrorKind::NotFound),
            })
        });
        for _ in 0..2 {
            let out = invoke(&vars("DEL", "default", "web-0"), &stdin(""), &away);
            assert_eq!(out, Outcome::ok(""));
        }
        assert_eq!(away.seen.borrow().len(), 2);
        assert_eq!(away.seen.borrow()[0].0, EventKind::Del);
        let out = invoke(&vars("CHECK", "default", "web-0"), &stdin(""), &away);
        assert_eq!(out, Outcome::ok(""));
    }

    #[test]
    fn version_command() {
        let sink = Recorder::new(|| Ok(()));
        let v: BTreeMap<String, String> = [("CNI_COMMAND".to_owned(), "VERSION".to_owned())].into();
        let out = invoke(&v, r#"{"cniVersion":"0.4.0"}"#, &sink);
        let j: serde_json::Value = serde_json::from_str(&out.stdout).expect("json");
        assert_eq!(j["cniVersion"], "0.4.0");
    }
}
