//! The plugin's commands, as Istio's `istio-cni` plugin behaves in ambient
//! mode: ADD decides ambient membership first (from the API server or a
//! pod-record directory, see [`crate::membership`]); a pod outside the mesh
//! starts without the agent; an ambient pod's event is posted to the node
//! agent, and the ADD succeeds — passing the primary plugin's result
//! through unchanged — only once the agent confirms the pod enrolled. DEL
//! and CHECK succeed without touching anything (DEL also notifies the
//! agent, best effort, so a pod known only from plugin events is unenrolled
//! promptly).
//!
//! ADD's decision:
//!
//! | membership | agent | result |
//! |---|---|---|
//! | not ambient | (not asked) | prevResult |
//! | ambient | enrolled / not ambient | prevResult |
//! | ambient | unreachable, unknown pod, not ready | code 11, try again later |
//! | unknown (no source, or it failed) | enrolled / not ambient / unknown | prevResult |
//! | unknown | unreachable | code 11 |
//! | any | answered an error | code 100 |
//!
//! [`run`] is pure apart from the [`EventSink`] and the membership source:
//! it takes the environment through a closure and stdin as bytes, and
//! returns what to print and whether the invocation succeeded.

use crate::event::{AddAnswer, EventKind, EventSink, PodEvent, PostError};
use crate::membership::Membership;
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

/// Picks the membership source for a network configuration
/// ([`crate::membership::from_conf`] in production).
pub type MembershipFor<'a> = &'a dyn Fn(&NetConf) -> Option<Box<dyn Membership>>;

/// Runs one invocation. `var` reads the environment; `sink` is where
/// events go (the agent's socket in production); `membership` picks where
/// pod labels come from.
pub fn run(
    var: impl Fn(&str) -> Option<String>,
    stdin: &[u8],
    sink: &dyn EventSink,
    membership: MembershipFor<'_>,
) -> Outcome {
    match invocation(var, stdin) {
        Ok((env, conf)) => finish(&env, &conf, sink, membership),
        Err(out) => *out,
    }
}

/// An invocation's environment and network configuration, or the outcome
/// that ends it before any command runs (bad input, VERSION).
fn invocation(
    var: impl Fn(&str) -> Option<String>,
    stdin: &[u8],
) -> Result<(CniEnv, NetConf), Box<Outcome>> {
    let bad = |e: CniError| Box::new(Outcome::err(e.with_version(&lenient_version(stdin))));
    let env = CniEnv::from_vars(var).map_err(bad)?;
    if env.command == Command::Version {
        return Err(Box::new(Outcome::ok(version_result(&lenient_version(
            stdin,
        )))));
    }
    let conf = NetConf::parse(stdin).map_err(bad)?;
    Ok((env, conf))
}

fn finish(
    env: &CniEnv,
    conf: &NetConf,
    sink: &dyn EventSink,
    membership: MembershipFor<'_>,
) -> Outcome {
    match command(env, conf, sink, membership) {
        Ok(out) => Outcome::ok(out),
        Err(e) => Outcome::err(e.with_version(&conf.cni_version)),
    }
}

/// What [`run_agent_first`] decided.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AgentFirst {
    /// The invocation is finished: print and exit as [`run`]'s outcome.
    Done(Outcome),
    /// The ADD needs the pod's membership from the API server, which this
    /// build does not read: run the full plugin (the configuration's
    /// `kube_plugin`) with the same environment and stdin; its answer is
    /// the invocation's.
    Delegate,
}

/// The small plugin's entry: [`run`], except for an ADD whose
/// configuration names a kubeconfig. Such an ADD asks the agent first. The
/// agent's own pod source knows the pod's membership, so when it answers
/// `enrolled` or `not-ambient` the result is the one [`run`] would give,
/// without reading the API server. Any other answer, or no answer (agent
/// down or restarting), is [`AgentFirst::Delegate`]: the full plugin then
/// decides membership from the API server first, so a pod outside the mesh
/// still starts while the agent is down and an ambient pod still does not
/// start uncaptured.
///
/// One difference from [`run`]: the agent sees events of pods the API
/// server says are outside the mesh (it answers `not-ambient` and does
/// nothing, unless its own pod source says otherwise, and its source is
/// what keeps enrolment right for the pod's whole life anyway).
pub fn run_agent_first(
    var: impl Fn(&str) -> Option<String>,
    stdin: &[u8],
    sink: &dyn EventSink,
    membership: MembershipFor<'_>,
) -> AgentFirst {
    let (env, conf) = match invocation(var, stdin) {
        Ok(v) => v,
        Err(out) => return AgentFirst::Done(*out),
    };
    let reads_api = conf
        .kubernetes
        .as_ref()
        .is_some_and(|k| k.kubeconfig.is_some());
    if env.command != Command::Add || !reads_api {
        return AgentFirst::Done(finish(&env, &conf, sink, membership));
    }
    match add_agent_first(&env, &conf, sink) {
        Some(out) => AgentFirst::Done(Outcome::ok(out)),
        None => AgentFirst::Delegate,
    }
}

/// An ADD answered without the membership source: the result when the
/// event is not sent at all or the agent's answer settles it, `None` when
/// only the membership source can.
fn add_agent_first(env: &CniEnv, conf: &NetConf, sink: &dyn EventSink) -> Option<String> {
    let prev = conf.prev_result.as_ref()?;
    if !conf.ambient_enabled {
        return Some(prev.get().to_owned());
    }
    let pod = env.pod().ok()?;
    if skip_reason(conf, &pod).is_some() {
        return Some(prev.get().to_owned());
    }
    let ips = conf.prev_ips().ok()?;
    let answer = sink
        .post(
            &conf.cni_agent_run_dir,
            EventKind::Add,
            &event(env, &pod, ips),
        )
        .ok()?;
    match AddAnswer::parse(&answer)? {
        AddAnswer::Enrolled | AddAnswer::NotAmbient => Some(prev.get().to_owned()),
        AddAnswer::Unknown | AddAnswer::NotReady | AddAnswer::Removed => None,
    }
}

fn command(
    env: &CniEnv,
    conf: &NetConf,
    sink: &dyn EventSink,
    membership: MembershipFor<'_>,
) -> Result<String, CniError> {
    match env.command {
        Command::Add => add(env, conf, sink, membership),
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

fn add(
    env: &CniEnv,
    conf: &NetConf,
    sink: &dyn EventSink,
    membership: MembershipFor<'_>,
) -> Result<String, CniError> {
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
    let who = format!("pod {}/{}", pod.namespace, pod.name);
    // Membership first: `Some(false)` starts the pod without the agent.
    let ambient = membership(conf).and_then(|m| match m.lookup(&pod.namespace, &pod.name) {
        Ok(Some(record)) => Some(record.wants_ambient()),
        // Unknown to the source, or the source failed: the agent decides.
        Ok(None) | Err(_) => None,
    });
    if ambient == Some(false) {
        return Ok(prev.get().to_owned());
    }
    let answer = sink
        .post(
            &conf.cni_agent_run_dir,
            EventKind::Add,
            &event(env, &pod, ips),
        )
        .map_err(|e| {
            let (code, msg) = match e {
                PostError::Unreachable { .. } | PostError::Io { .. } => (
                    ErrorCode::TryAgainLater,
                    format!(
                        "{who}: the node agent is not reachable, so the pod cannot be \
                         captured yet; try again later"
                    ),
                ),
                PostError::Refused { .. } => (
                    ErrorCode::AgentRejected,
                    format!("{who}: the node agent refused the pod"),
                ),
                _ => (
                    ErrorCode::AgentProtocol,
                    format!("{who}: the node agent's answer was not understood"),
                ),
            };
            CniError::new(code, msg, e.to_string())
        })?;
    match (AddAnswer::parse(&answer), ambient) {
        (Some(AddAnswer::Enrolled | AddAnswer::NotAmbient), _) | (Some(_), None) => {
            Ok(prev.get().to_owned())
        }
        (Some(a), Some(_)) => Err(CniError::new(
            ErrorCode::TryAgainLater,
            format!(
                "{who} is ambient but the node agent cannot confirm its capture yet; try again later"
            ),
            format!("agent answered {:?}", a.as_str()),
        )),
        (None, _) => Err(CniError::new(
            ErrorCode::AgentProtocol,
            format!("{who}: the node agent's answer was not understood"),
            answer,
        )),
    }
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
        netns_id: None,
    }
}

/// The `cniVersion` of stdin if it has a readable one, for error objects
/// and VERSION; the newest supported otherwise.
pub fn lenient_version(stdin: &[u8]) -> String {
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
        answer: fn() -> Result<String, PostError>,
        seen: RefCell<Vec<(EventKind, PodEvent)>>,
    }

    impl Recorder {
        fn new(answer: fn() -> Result<String, PostError>) -> Self {
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
        ) -> Result<String, PostError> {
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
        run(|k| vars.get(k).cloned(), stdin.as_bytes(), sink, &|_| None)
    }

    /// A membership source that knows one answer for every pod.
    struct Fixed(Result<Option<bool>, String>);

    impl Membership for Fixed {
        fn describe(&self) -> String {
            "fixed".into()
        }

        fn lookup(
            &self,
            namespace: &str,
            name: &str,
        ) -> Result<Option<crate::pod::PodRecord>, String> {
            let ambient = match &self.0 {
                Ok(Some(a)) => *a,
                Ok(None) => return Ok(None),
                Err(e) => return Err(e.clone()),
            };
            let mode = if ambient { "ambient" } else { "none" };
            Ok(Some(crate::pod::PodRecord {
                name: name.into(),
                namespace: namespace.into(),
                uid: "uid-1".into(),
                ips: vec![],
                netns: None,
                node: None,
                labels: BTreeMap::new(),
                annotations: BTreeMap::new(),
                namespace_labels: [(crate::pod::DATAPLANE_MODE_LABEL.to_owned(), mode.to_owned())]
                    .into(),
                service_account: String::new(),
            }))
        }
    }

    fn invoke_with(membership: Result<Option<bool>, String>, sink: &Recorder) -> Outcome {
        let vars = vars("ADD", "default", "web-0");
        let fixed = std::cell::RefCell::new(Some(Fixed(membership)));
        let pick = move |_: &NetConf| {
            fixed
                .borrow_mut()
                .take()
                .map(|f| Box::new(f) as Box<dyn Membership>)
        };
        run(|k| vars.get(k).cloned(), stdin("").as_bytes(), sink, &pick)
    }

    fn unreachable() -> Result<String, PostError> {
        Err(PostError::Unreachable {
            path: "/x".into(),
            source: std::io::Error::from(std::io::ErrorKind::NotFound),
        })
    }

    fn agent_first(cmd: &str, extra: &str, pod: (&str, &str), sink: &Recorder) -> AgentFirst {
        let vars = vars(cmd, pod.0, pod.1);
        run_agent_first(
            |k| vars.get(k).cloned(),
            stdin(extra).as_bytes(),
            sink,
            &|_| None,
        )
    }

    const KUBE: &str = r#","kubernetes":{"kubeconfig":"/etc/cni/net.d/ambit-kubeconfig"}"#;

    #[test]
    fn agent_first_finishes_an_add_the_agent_settles() {
        for answer in [(|| Ok("enrolled".to_owned())) as fn() -> _, || {
            Ok("not-ambient".to_owned())
        }] {
            let sink = Recorder::new(answer);
            let out = agent_first("ADD", KUBE, ("default", "web-0"), &sink);
            assert_eq!(out, AgentFirst::Done(Outcome::ok(PREV)));
            let seen = sink.seen.borrow();
            assert_eq!(seen.len(), 1);
            assert_eq!(seen[0].0, EventKind::Add);
            assert_eq!(seen[0].1.pod_name, "web-0");
            assert_eq!(
                seen[0].1.ips,
                vec!["10.244.0.130".parse::<std::net::IpAddr>().expect("ip")]
            );
        }
    }

    #[test]
    fn agent_first_hands_over_what_only_membership_can_decide() {
        for answer in [
            unreachable as fn() -> _,
            || Ok("unknown".to_owned()),
            || Ok("not-ready".to_owned()),
            || Ok("what?".to_owned()),
            || {
                Err(PostError::Refused {
                    status: 500,
                    body: "boom".into(),
                })
            },
        ] {
            let sink = Recorder::new(answer);
            let out = agent_first("ADD", KUBE, ("default", "web-0"), &sink);
            assert_eq!(out, AgentFirst::Delegate);
            assert_eq!(sink.seen.borrow().len(), 1);
        }
    }

    #[test]
    fn agent_first_is_run_for_everything_else() {
        // Skipped pods never reach the agent, with or without a kubeconfig.
        let down = Recorder::new(unreachable);
        let out = agent_first("ADD", KUBE, ("kube-system", "dns"), &down);
        assert_eq!(out, AgentFirst::Done(Outcome::ok(PREV)));
        assert!(down.seen.borrow().is_empty());
        // No kubeconfig: exactly `run` (membership unknown, agent down: 11).
        let vars_add = vars("ADD", "default", "web-0");
        let plain = run(
            |k| vars_add.get(k).cloned(),
            stdin("").as_bytes(),
            &down,
            &|_| None,
        );
        assert_eq!(plain.error.as_ref().map(|e| e.code), Some(11));
        let out = agent_first("ADD", "", ("default", "web-0"), &down);
        assert_eq!(out, AgentFirst::Done(plain));
        // DEL, CHECK and VERSION never need the API server.
        for cmd in ["DEL", "CHECK", "VERSION"] {
            let out = agent_first(cmd, KUBE, ("default", "web-0"), &down);
            assert!(
                matches!(&out, AgentFirst::Done(o) if o.error.is_none()),
                "{cmd}: {out:?}"
            );
        }
        // Bad stdin is answered here, as `run` answers it.
        let vars_add = vars("ADD", "default", "web-0");
        let bad = run_agent_first(|k| vars_add.get(k).cloned(), b"{", &down, &|_| None);
        let AgentFirst::Done(bad) = bad else {
            panic!("bad stdin delegated");
        };
        assert_eq!(bad.error.map(|e| e.code), Some(6));
    }

    #[test]
    fn membership_is_decided_before_the_agent_is_asked() {
        // Not ambient: starts with the agent down, and the agent is not asked.
        let away = Recorder::new(unreachable);
        let out = invoke_with(Ok(Some(false)), &away);
        assert_eq!(out, Outcome::ok(PREV));
        assert!(away.seen.borrow().is_empty());
        // Ambient, agent down: try again later.
        let out = invoke_with(Ok(Some(true)), &away);
        let e = out.error.expect("ambient pod must not start uncaptured");
        assert_eq!(e.code, 11);
        assert!(e.msg.contains("not reachable"), "{e:?}");
        // Ambient, the agent answers that it cannot enrol the pod yet.
        for body in ["not-ready", "unknown"] {
            let sink = Recorder::new(match body {
                "not-ready" => || Ok("not-ready".to_owned()),
                _ => || Ok("unknown".to_owned()),
            });
            let e = invoke_with(Ok(Some(true)), &sink).error.expect(body);
            assert_eq!(e.code, 11, "{body}");
            assert!(e.msg.contains("cannot confirm"), "{e:?}");
        }
        // Ambient and enrolled; or the agent (fresher) says not ambient.
        for answer in [
            || Ok("enrolled".to_owned()),
            || Ok("not-ambient".to_owned()),
        ] {
            let sink = Recorder::new(answer);
            assert_eq!(invoke_with(Ok(Some(true)), &sink), Outcome::ok(PREV));
        }
        // Membership unknown (no record, or the source failed): the agent decides.
        for m in [Ok(None), Err("api server down".to_owned())] {
            let sink = Recorder::new(|| Ok("unknown".to_owned()));
            assert_eq!(invoke_with(m.clone(), &sink), Outcome::ok(PREV));
            assert_eq!(sink.seen.borrow().len(), 1);
            let away = Recorder::new(unreachable);
            assert_eq!(invoke_with(m, &away).error.map(|e| e.code), Some(11));
        }
        // A garbled answer is a protocol error.
        let odd = Recorder::new(|| Ok("Enrolled(maybe)".to_owned()));
        assert_eq!(
            invoke_with(Ok(Some(true)), &odd).error.map(|e| e.code),
            Some(101)
        );
    }

    #[test]
    fn add_posts_the_event_and_returns_prev_result_byte_for_byte() {
        let sink = Recorder::new(|| Ok("enrolled".into()));
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
        let sink = Recorder::new(|| Ok("enrolled".into()));
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
        let sink = Recorder::new(|| Ok("enrolled".into()));
        let v: BTreeMap<String, String> = [("CNI_COMMAND".to_owned(), "VERSION".to_owned())].into();
        let out = invoke(&v, r#"{"cniVersion":"0.4.0"}"#, &sink);
        let j: serde_json::Value = serde_json::from_str(&out.stdout).expect("json");
        assert_eq!(j["cniVersion"], "0.4.0");
    }
}
