//! The bodies of Ambit's fuzz targets, one function per target.
//!
//! Each `fuzz_targets/<name>.rs` is a one-liner calling [`<name>`](TARGETS),
//! and the workspace replays every file of `corpus/<name>/` through the
//! same function on stable (`crates/fuzz-replay/tests/fuzz_corpus.rs` includes this
//! file), so the seeds and every crash input added to them are checked by
//! `cargo test`. A body may panic only when an invariant of the code under
//! test is broken: bad input must come back as an error.
//!
//! Only the libraries' public decoders are used here; this file must keep
//! building both in `fuzz/` (nightly, sanitizers) and in the workspace.

use std::{fs::File, os::fd::OwnedFd};

/// A target: its name (the `corpus/` directory and the binary) and its body.
pub type Target = (&'static str, fn(&[u8]));

/// Every target.
pub const TARGETS: &[Target] = &[
    ("spiffe_id", spiffe_id),
    ("hbone_headers", hbone_headers),
    ("xds_address", xds_address),
    ("xds_authorization", xds_authorization),
    ("zds_message", zds_message),
    ("ipset_reply", ipset_reply),
    ("rtnetlink_reply", rtnetlink_reply),
    ("cni_stdin", cni_stdin),
    ("mesh_local", mesh_local),
    ("socks5_request", socks5_request),
    ("waypoint_config", waypoint_config),
    ("dns_request", dns_request),
    ("http1_response", http1_response),
    ("http1_request", http1_request),
];

/// SPIFFE id parsing on arbitrary bytes: whatever parses is canonical
/// (displays as the input) and re-parses to the same value.
pub fn spiffe_id(data: &[u8]) {
    use ambit_identity::Identity;

    if let Ok(id) = Identity::from_bytes(data) {
        assert_eq!(id.as_str().as_bytes(), data);
        let again: Identity = id.to_string().parse().expect("display re-parses");
        assert_eq!(again, id);
        let parts = Identity::new(id.trust_domain(), id.namespace(), id.service_account())
            .expect("parts rebuild the id");
        assert_eq!(parts, id);
    }
    if let Ok(s) = std::str::from_utf8(data) {
        let _ = s.parse::<Identity>();
    }
}

/// ambit-hbone's header codecs: `:authority` (strict and with hostnames),
/// `forwarded`, `baggage` and `traceparent`; whatever parses survives a
/// render → parse round trip.
pub fn hbone_headers(data: &[u8]) {
    use ambit_hbone::headers::{
        Authority, AuthorityOptions, Baggage, Forwarded, MAX_BAGGAGE_LEN, TraceParent,
    };

    for options in [AuthorityOptions::STRICT, AuthorityOptions::WITH_HOSTNAMES] {
        if let Ok(authority) = Authority::parse(data, options) {
            let again = Authority::parse(authority.to_string().as_bytes(), options)
                .expect("a rendered authority parses");
            assert_eq!(again, authority);
        }
    }
    if let Ok(forwarded) = Forwarded::parse(data) {
        let again = Forwarded::parse(forwarded.to_string().as_bytes())
            .expect("a rendered forwarded parses");
        assert_eq!(again, forwarded);
    }
    if let Ok(baggage) = Baggage::parse(data) {
        let rendered = baggage.to_string();
        if !baggage.is_empty() && rendered.len() <= MAX_BAGGAGE_LEN {
            let again = Baggage::parse(rendered.as_bytes()).expect("a rendered baggage parses");
            assert_eq!(again, baggage);
        }
    }
    if let Ok(traceparent) = TraceParent::parse(data) {
        let again = TraceParent::parse(traceparent.to_string().as_bytes())
            .expect("a rendered traceparent parses");
        assert_eq!(again, traceparent);
    }
}

/// `istio.workload.Address` resources: decoding round-trips, and whatever
/// decodes goes through the conversion into mesh state the xDS handler
/// does, after which the state's indexes agree with what it holds.
pub fn xds_address(data: &[u8]) {
    use ambit_mesh::{MeshState, xds::AddressKind};
    use ambit_xds::{ADDRESS_TYPE_URL, decode_address, proto::protobuf::Any, to_any};

    let any = Any {
        type_url: ADDRESS_TYPE_URL.to_owned(),
        value: data.to_vec(),
    };
    let Ok(address) = decode_address("fuzz", &any) else {
        return;
    };
    let again = decode_address("fuzz", &to_any(&address)).expect("re-encoded address decodes");
    assert_eq!(again, address);
    let Ok(kind) = ambit_mesh::xds::address("fuzz", &address) else {
        return;
    };
    let mut state = MeshState::new();
    match kind {
        AddressKind::Workload(w) => state.insert_workload(*w),
        AddressKind::Service(s) => state.insert_service(*s),
    }
    check_state(&state);
}

/// `istio.security.Authorization` resources: decoding round-trips, and
/// whatever converts into a policy is evaluated against a workload.
pub fn xds_authorization(data: &[u8]) {
    use ambit_mesh::MeshState;
    use ambit_xds::{AUTHORIZATION_TYPE_URL, decode_authorization, proto::protobuf::Any, to_any};

    let any = Any {
        type_url: AUTHORIZATION_TYPE_URL.to_owned(),
        value: data.to_vec(),
    };
    let Ok(policy) = decode_authorization("fuzz", &any) else {
        return;
    };
    let again = decode_authorization("fuzz", &to_any(&policy)).expect("re-encoded policy decodes");
    assert_eq!(again, policy);
    let Ok(policy) = ambit_mesh::xds::policy(&policy) else {
        return;
    };
    let mut state = MeshState::new();
    let namespace = policy.namespace.clone();
    state.insert_policy(policy);
    let workload = ambit_mesh::Workload {
        uid: "fuzz".into(),
        namespace,
        addresses: vec![[10, 0, 0, 1].into()],
        ..Default::default()
    };
    state.insert_workload(workload);
    check_state(&state);
}

/// ZDS packets as each side receives them. The first byte picks how many
/// descriptors arrive with a request (0–2); an add has exactly one and
/// nothing else has any.
pub fn zds_message(data: &[u8]) {
    use ambit_xds::{
        ZdsMessage,
        zds::codec::{decode_ack, decode_hello, decode_request},
    };

    fn fds(n: u8) -> Vec<OwnedFd> {
        (0..n % 3)
            .filter_map(|_| File::open("/dev/null").ok().map(OwnedFd::from))
            .collect()
    }

    let Some((&first, body)) = data.split_first() else {
        return;
    };
    let count = fds(first).len();
    match decode_request(body, fds(first)) {
        Ok(ZdsMessage::Add { uid, .. }) => {
            assert_eq!(count, 1);
            assert!(!uid.is_empty());
        }
        Ok(_) => assert_eq!(count, 0),
        Err(e) => {
            let _ = e.to_string();
        }
    }
    let _ = decode_ack(body, Vec::new());
    let _ = decode_hello(body, Vec::new());
}

/// One datagram of an ipset dump (`ipset list`) as the kernel would send
/// it: every message that decodes survives an emit → parse round trip.
pub fn ipset_reply(data: &[u8]) {
    use ambit_redirect::ipset::codec::IpsetMessage;

    let Ok(reply) = ambit_redirect::fuzzing::ipset_reply(data) else {
        return;
    };
    for m in &reply.messages {
        let mut payload = Vec::new();
        m.emit_payload(&mut payload);
        assert_eq!(payload.len(), m.buffer_len());
        let again = IpsetMessage::parse(m.command.message_type(), &payload)
            .expect("an emitted message parses");
        assert_eq!(&again, m);
    }
    assert!(reply.names.len() <= reply.messages.len());
    assert_eq!(reply.set.is_some(), !reply.messages.is_empty());
}

/// One datagram of an rtnetlink rule or route dump: every rule this crate
/// can express reads back the same after being encoded again, and routes
/// print.
pub fn rtnetlink_reply(data: &[u8]) {
    let Ok(reply) = ambit_redirect::fuzzing::rtnetlink_reply(data) else {
        return;
    };
    for (rule, again) in &reply.rules {
        assert_eq!(again.as_ref(), Some(rule), "rule {rule} round trip");
        let _ = rule.to_string();
    }
    for route in &reply.routes {
        let _ = route.to_string();
    }
}

/// The CNI plugin's inputs: the network configuration on stdin (with its
/// `prevResult`), and the same bytes as `CNI_ARGS`, through the checks the
/// plugin makes before it talks to the agent.
pub fn cni_stdin(data: &[u8]) {
    use ambit_cni::{
        plugin::skip_reason,
        spec::{CniEnv, NetConf, parse_args},
    };

    let conf = NetConf::parse(data);
    if let Ok(conf) = &conf {
        assert!(!conf.plugin_type.is_empty());
        let _ = conf.prev_ips();
    }
    let Ok(args) = std::str::from_utf8(data) else {
        return;
    };
    if let Ok(map) = parse_args(args) {
        assert!(map.keys().all(|k| !k.contains(';') && !k.contains('=')));
    }
    let env = CniEnv::from_vars(|name| match name {
        "CNI_COMMAND" => Some("ADD".to_owned()),
        "CNI_CONTAINERID" => Some("fuzz".to_owned()),
        "CNI_NETNS" => Some("/var/run/netns/fuzz".to_owned()),
        "CNI_IFNAME" => Some("eth0".to_owned()),
        "CNI_ARGS" => Some(args.to_owned()),
        _ => None,
    });
    if let (Ok(env), Ok(conf)) = (env, &conf)
        && let Ok(pod) = env.pod()
    {
        assert!(!pod.name.is_empty() && !pod.namespace.is_empty());
        let _ = skip_reason(conf, &pod);
    }
}

/// ztunnel's local mesh YAML (`LOCAL_XDS_PATH`): parsing, conversion into
/// mesh state, and the lookups, endpoint selection and authorization the
/// proxy does with it.
pub fn mesh_local(data: &[u8]) {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let Ok(config) = ambit_mesh::local::Config::parse(text, "fuzz") else {
        return;
    };
    check_state(&ambit_mesh::MeshState::from_config(config));
}

/// The SOCKS5 greeting and request parsers: a finished message took no
/// more bytes than it was given and parses the same from exactly those
/// bytes; an unfinished one asks for more than it was given.
pub fn socks5_request(data: &[u8]) {
    use ambit_l4proxy::socks5::{Parsed, parse_greeting, parse_request};

    match parse_greeting(data) {
        Ok(Parsed::Done(methods, n)) => {
            assert!(n <= data.len() && !methods.is_empty());
            assert_eq!(
                parse_greeting(&data[..n]).ok(),
                Some(Parsed::Done(methods, n))
            );
        }
        Ok(Parsed::Need(n)) => assert!(n > data.len()),
        Err(e) => {
            let _ = (e.to_string(), e.reply());
        }
    }
    match parse_request(data) {
        Ok(Parsed::Done(address, n)) => {
            assert!(n <= data.len());
            let _ = address.to_string();
            assert_eq!(
                parse_request(&data[..n]).ok(),
                Some(Parsed::Done(address, n))
            );
        }
        Ok(Parsed::Need(n)) => assert!(n > data.len()),
        Err(e) => {
            let _ = (e.to_string(), e.reply());
        }
    }
}

/// The waypoint's routing and L7 policy YAML (`WAYPOINT_CONFIG`), and the
/// route selection, weighted backend choice and header edits a request
/// goes through with it.
pub fn waypoint_config(data: &[u8]) {
    use ambit_l7proxy::{
        RouteConfig,
        route::{RequestFacts, pick_backend, select, total_weight},
    };

    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let Ok(config) = RouteConfig::parse(text, "fuzz") else {
        return;
    };
    let mut headers = http::HeaderMap::new();
    headers.insert("x-fuzz", http::HeaderValue::from_static("a"));
    for service in &config.services {
        assert!(config.service(&service.host).is_some());
        for path in ["/", "/a/b"] {
            let req = RequestFacts {
                method: &http::Method::GET,
                path,
                query: Some("a=b&c"),
                headers: &headers,
            };
            let Some((route, _)) = select(&service.routes, &req) else {
                continue;
            };
            let total = total_weight(&route.backends);
            if total > 0 {
                assert!(pick_backend(&route.backends, 0).is_some());
                assert!(pick_backend(&route.backends, total - 1).is_some());
                assert!(pick_backend(&route.backends, total).is_none());
            }
            let mut edited = headers.clone();
            route.request_headers.apply(&mut edited);
            route.response_headers.apply(&mut edited);
        }
    }
}

/// What the proxy does with mesh state, on whatever a target loaded: every
/// index points at something holding the key, endpoints are healthy
/// members, and authorization decides for every workload.
fn check_state(state: &ambit_mesh::MeshState) {
    use ambit_mesh::{Connection, Target};

    for w in state.workloads() {
        for ip in &w.addresses {
            match state.lookup(&w.network, *ip) {
                Some(Target::Workload(found)) => {
                    assert!(found.addresses.contains(ip) && found.network == w.network);
                }
                Some(Target::Service(s)) => {
                    assert!(s.vips.iter().any(|(n, v)| v == ip && *n == w.network));
                }
                None => {}
            }
        }
        let id =
            ambit_identity::Identity::new(&w.trust_domain, &w.namespace, &w.service_account).ok();
        for src_ip in w.addresses.iter().take(4) {
            let conn = Connection {
                src_identity: id.as_ref(),
                src_ip: *src_ip,
                dst_ip: *src_ip,
                dst_port: 80,
            };
            let _ = state.authorize(w, &conn);
        }
    }
    for s in state.services() {
        for (net, vip) in &s.vips {
            if let Some(found) = state.service_by_vip(net, *vip) {
                assert!(found.vips.iter().any(|(n, v)| n == net && v == vip));
            }
        }
        for port in s.ports.iter().take(8) {
            for ep in state.endpoints(s, port.service_port) {
                assert!(ep.workload.services.contains_key(&s.key()));
            }
            let source = state.workloads().next().map(|w| w.as_ref());
            let _ = state.pick_endpoint(s, port.service_port, "", source);
        }
        let client = state.workloads().next().map(|w| w.as_ref());
        let _ = state.resolve_host(&s.hostname, client, "cluster.local", Some(&s.namespace));
        let _ = state.resolve_host(&s.name, client, "", None);
    }
}

/// ambit-dns's request path without the network: parse a client's query
/// and answer it for a fixed mesh resolver (one mesh name with both
/// families, one with many addresses, one IPv4-only) or decide to forward.
/// A reply keeps the query's id, is a response (so fed back in, it is
/// dropped), and over UDP fits the proxy's payload cap.
pub fn dns_request(data: &[u8]) {
    use std::net::{IpAddr, SocketAddr};
    use std::sync::Arc;

    use ambit_dns::{Config, DnsProxy, Family, MeshAnswer, Metrics, Name, Outcome, Protocol};

    fn mesh(_: SocketAddr, name: &Name, family: Family) -> Option<MeshAnswer> {
        match name.to_lowercase().to_ascii().as_str() {
            "svc.ns.svc.cluster.local." => Some(MeshAnswer::addrs([
                IpAddr::from([10, 0, 0, 1]),
                IpAddr::from([0xfd00, 0, 0, 0, 0, 0, 0, 1]),
            ])),
            "big.ns.svc.cluster.local." => Some(MeshAnswer::addrs(
                (0..=255u8).map(|i| IpAddr::from([10, 1, 0, i])),
            )),
            "v4.ns.svc.cluster.local." if family == Family::V6 => Some(MeshAnswer::default()),
            _ => None,
        }
    }

    let config = Config::default();
    let cap = usize::from(config.max_udp_payload);
    let proxy = DnsProxy::new(config, Arc::new(mesh), Metrics::unregistered());
    let client = SocketAddr::from(([127, 0, 0, 1], 40000));
    for protocol in [Protocol::Udp, Protocol::Tcp] {
        match proxy.handle_local(data, client, protocol) {
            Outcome::Reply(reply) => {
                assert!(reply.len() >= 12, "a reply has a header");
                assert_eq!(reply[..2], data[..2], "the reply keeps the id");
                assert!(reply[2] & 0x80 != 0, "the reply is a response");
                if protocol == Protocol::Udp {
                    assert!(reply.len() <= cap, "a UDP reply fits the cap");
                }
                assert!(matches!(
                    proxy.handle_local(&reply, client, protocol),
                    Outcome::Drop
                ));
            }
            Outcome::Forward(query) => assert!(query.query().is_some()),
            Outcome::Drop => {}
        }
    }
}

/// The waypoint's lean HTTP/1.1 upstream client on one whole answer (to a
/// `GET`, or a `HEAD` when the first byte is odd): a decoded body has the
/// length its `content-length` gives, and a chunked one decodes the same
/// after being chunked again.
pub fn http1_response(data: &[u8]) {
    use ambit_l7proxy::fuzzing::http1_response;

    let head = data.first().is_some_and(|b| b % 2 == 1);
    let Ok(Some((status, body, _reusable))) = http1_response(data, head) else {
        return;
    };
    assert!((200..1000).contains(&status), "a final status: {status}");
    if head {
        assert!(body.is_empty(), "no body after HEAD");
    }
    let mut again = b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n".to_vec();
    if !body.is_empty() {
        again.extend_from_slice(format!("{:x}\r\n", body.len()).as_bytes());
        again.extend_from_slice(&body);
        again.extend_from_slice(b"\r\n");
    }
    again.extend_from_slice(b"0\r\n\r\n");
    let (_, decoded, reusable) = http1_response(&again, false)
        .expect("a chunked re-encoding decodes")
        .expect("and is complete");
    assert_eq!(decoded, body);
    assert!(reusable);
}

/// The waypoint's lean HTTP/1.1 server loop on a request head: what it
/// serves has nothing hyper should decide (no transfer coding, `expect`,
/// `upgrade`, `te`, HTTP/1.0 or `CONNECT`; at most one `content-length`,
/// which is the small body it reads) and re-encodes to the same request;
/// what it refuses is left byte for byte for hyper.
pub fn http1_request(data: &[u8]) {
    use ambit_l7proxy::fuzzing::http1_request;
    use http::{Method, header};

    match http1_request(data) {
        Ok((req, used, body)) => {
            assert!(used <= data.len());
            assert!(body <= 64 * 1024, "bodies the loop reads are small");
            assert_ne!(req.method(), Method::CONNECT);
            assert!(req.uri().path().starts_with('/'));
            for h in [
                header::TRANSFER_ENCODING,
                header::EXPECT,
                header::UPGRADE,
                header::TE,
            ] {
                assert!(!req.headers().contains_key(&h), "{h} is hyper's");
            }
            let lengths: Vec<_> = req
                .headers()
                .get_all(header::CONTENT_LENGTH)
                .iter()
                .collect();
            assert!(lengths.len() <= 1, "one length at most");
            let declared = lengths.first().map(|v| {
                std::str::from_utf8(v.as_bytes())
                    .expect("digits")
                    .parse::<usize>()
            });
            assert_eq!(
                declared.unwrap_or(Ok(0)),
                Ok(body),
                "the body is the declared length"
            );
            let target = req
                .uri()
                .path_and_query()
                .map_or("/", |p| p.as_str())
                .to_owned();
            let mut wire = format!("{} {target} HTTP/1.1\r\n", req.method()).into_bytes();
            for (n, v) in req.headers() {
                wire.extend_from_slice(n.as_str().as_bytes());
                wire.extend_from_slice(b": ");
                wire.extend_from_slice(v.as_bytes());
                wire.extend_from_slice(b"\r\n");
            }
            wire.extend_from_slice(b"\r\n");
            let (again, n, again_body) =
                http1_request(&wire).expect("a re-encoded request is served");
            assert_eq!((n, again_body), (wire.len(), body));
            assert_eq!(again.method(), req.method());
            assert_eq!(again.uri(), req.uri());
            assert_eq!(again.headers(), req.headers());
        }
        Err(untouched) => assert!(untouched, "bytes refused must be left for hyper"),
    }
}
