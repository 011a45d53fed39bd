use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicUsize, Ordering};

use hickory_proto::op::{Edns, Message, MessageType, OpCode, Query, ResponseCode};
use hickory_proto::rr::{Name, RData, RecordType};

use super::*;
use crate::resolver::MeshAnswer;

const CLIENT: SocketAddr = SocketAddr::new(IpAddr::V4(std::net::Ipv4Addr::LOCALHOST), 5353);

fn mesh(_: SocketAddr, name: &Name, family: Family) -> Option<MeshAnswer> {
    let name = name.to_lowercase().to_ascii();
    match name.as_str() {
        "svc.ns.svc.cluster.local." => Some(MeshAnswer::addrs([
            IpAddr::from([10, 0, 0, 1]),
            IpAddr::from([0xfd00, 0, 0, 0, 0, 0, 0, 1]),
        ])),
        "v4only.ns.svc.cluster.local." => Some(MeshAnswer::addrs([IpAddr::from([10, 0, 0, 2])])),
        "big.ns.svc.cluster.local." => Some(MeshAnswer::addrs(
            (0..200u8).map(|i| IpAddr::from([10, 1, 0, i])),
        )),
        "svc.ns.svc.cluster.local.ns.svc.cluster.local." => Some(
            MeshAnswer::addrs([IpAddr::from([10, 0, 0, 1])]).with_canonical_name(
                Name::from_ascii("svc.ns.svc.cluster.local.").expect("test value"),
            ),
        ),
        _ => {
            let _ = family;
            None
        }
    }
}

fn query(name: &str, ty: RecordType, edns: Option<u16>) -> Vec<u8> {
    let mut m = Message::new(0x1234, MessageType::Query, OpCode::Query);
    m.metadata.recursion_desired = true;
    m.add_query(Query::query(
        Name::from_ascii(name).expect("test value"),
        ty,
    ));
    if let Some(size) = edns {
        let mut e = Edns::new();
        e.set_max_payload(size);
        m.set_edns(e);
    }
    m.to_vec().expect("test value")
}

fn run(packet: &[u8], protocol: Protocol) -> (Outcome, usize) {
    let counted = AtomicUsize::new(0);
    let ctx = Context {
        resolver: &mesh,
        ttl: 30,
        max_udp_payload: 1232,
    };
    let out = handle(&ctx, packet, CLIENT, protocol, &|_| {
        counted.fetch_add(1, Ordering::Relaxed);
    });
    (out, counted.load(Ordering::Relaxed))
}

fn reply(packet: &[u8], protocol: Protocol) -> Message {
    match run(packet, protocol).0 {
        Outcome::Reply(bytes) => Message::from_vec(&bytes).expect("test value"),
        other => panic!("expected a reply, got {other:?}"),
    }
}

#[test]
fn answers_a_and_aaaa_for_a_mesh_name_authoritatively_with_the_ttl() {
    for (ty, want) in [
        (RecordType::A, IpAddr::from([10, 0, 0, 1])),
        (
            RecordType::AAAA,
            IpAddr::from([0xfd00, 0, 0, 0, 0, 0, 0, 1]),
        ),
    ] {
        let r = reply(&query("SVC.ns.svc.cluster.local.", ty, None), Protocol::Udp);
        assert_eq!(r.metadata.id, 0x1234);
        assert_eq!(r.metadata.message_type, MessageType::Response);
        assert!(r.metadata.authoritative && r.metadata.recursion_desired);
        assert_eq!(r.metadata.response_code, ResponseCode::NoError);
        assert_eq!(r.queries.len(), 1);
        assert_eq!(r.answers.len(), 1, "only the asked family");
        assert_eq!(r.answers[0].ttl, 30);
        let got = match &r.answers[0].data {
            RData::A(a) => IpAddr::V4(a.0),
            RData::AAAA(a) => IpAddr::V6(a.0),
            other => panic!("{other:?}"),
        };
        assert_eq!(got, want);
    }
}

#[test]
fn a_mesh_name_without_the_family_is_nodata_not_nxdomain() {
    let r = reply(
        &query("v4only.ns.svc.cluster.local.", RecordType::AAAA, None),
        Protocol::Udp,
    );
    assert_eq!(r.metadata.response_code, ResponseCode::NoError);
    assert!(r.metadata.authoritative);
    assert!(r.answers.is_empty());
}

#[test]
fn a_canonical_name_gives_a_cname_then_addresses() {
    let r = reply(
        &query(
            "svc.ns.svc.cluster.local.ns.svc.cluster.local.",
            RecordType::A,
            None,
        ),
        Protocol::Udp,
    );
    assert_eq!(r.answers.len(), 2);
    assert_eq!(r.answers[0].record_type(), RecordType::CNAME);
    assert_eq!(r.answers[1].name.to_ascii(), "svc.ns.svc.cluster.local.");
}

#[test]
fn other_names_and_types_are_forwarded_and_counted() {
    for (name, ty) in [
        ("example.com.", RecordType::A),
        ("svc.ns.svc.cluster.local.", RecordType::TXT),
        ("svc.ns.svc.cluster.local.", RecordType::SRV),
    ] {
        let (out, counted) = run(&query(name, ty, None), Protocol::Udp);
        assert!(matches!(out, Outcome::Forward(_)), "{name} {ty}");
        assert_eq!(counted, 1);
    }
}

#[test]
fn a_big_answer_is_truncated_over_udp_and_whole_over_tcp() {
    let packet = query("big.ns.svc.cluster.local.", RecordType::A, None);
    let r = reply(&packet, Protocol::Udp);
    assert!(r.metadata.truncation);
    assert!(r.answers.is_empty());
    assert_eq!(r.queries.len(), 1);
    // EDNS raises the limit up to the configured cap; 200 A records still
    // do not fit in 1232 bytes.
    let with_edns = query("big.ns.svc.cluster.local.", RecordType::A, Some(4096));
    assert!(reply(&with_edns, Protocol::Udp).metadata.truncation);
    let r = reply(&packet, Protocol::Tcp);
    assert!(!r.metadata.truncation);
    assert_eq!(r.answers.len(), 200);
}

#[test]
fn the_udp_limit_follows_edns_within_bounds() {
    let m = |size| Message::from_vec(&query("a.", RecordType::A, size)).expect("test value");
    assert_eq!(max_reply(&m(None), Protocol::Udp, 1232), 512);
    assert_eq!(max_reply(&m(Some(100)), Protocol::Udp, 1232), 512);
    assert_eq!(max_reply(&m(Some(1000)), Protocol::Udp, 1232), 1000);
    assert_eq!(max_reply(&m(Some(65000)), Protocol::Udp, 1232), 1232);
    assert_eq!(max_reply(&m(None), Protocol::Tcp, 1232), MAX_MESSAGE);
}

#[test]
fn malformed_input_gets_formerr_or_nothing() {
    // Too short for a header, or a response: dropped.
    assert!(matches!(run(&[1, 2, 3], Protocol::Udp).0, Outcome::Drop));
    let mut response = query("a.", RecordType::A, None);
    response[2] |= 0x80;
    assert!(matches!(run(&response, Protocol::Udp).0, Outcome::Drop));
    // A header claiming a question that is not there.
    let mut bad = vec![0xab, 0xcd, 0x01, 0x00, 0, 1, 0, 0, 0, 0, 0, 0];
    bad.extend_from_slice(&[0x3f, b'x']);
    let r = reply(&bad, Protocol::Udp);
    assert_eq!(r.metadata.id, 0xabcd);
    assert_eq!(r.metadata.response_code, ResponseCode::FormErr);
    // Two questions.
    let mut two = Message::from_vec(&query("a.", RecordType::A, None)).expect("test value");
    two.add_query(Query::query(
        Name::from_ascii("b.").expect("test value"),
        RecordType::A,
    ));
    let r = reply(&two.to_vec().expect("test value"), Protocol::Udp);
    assert_eq!(r.metadata.response_code, ResponseCode::FormErr);
    // Not a standard query.
    let mut notify = Message::from_vec(&query("a.", RecordType::A, None)).expect("test value");
    notify.metadata.op_code = OpCode::Notify;
    let r = reply(&notify.to_vec().expect("test value"), Protocol::Udp);
    assert_eq!(r.metadata.response_code, ResponseCode::NotImp);
    assert_eq!(
        run(&bad, Protocol::Udp).1,
        0,
        "malformed queries are not counted"
    );
}

#[test]
fn relayed_replies_are_fitted_to_the_client() {
    let request = Message::from_vec(&query("big.ns.svc.cluster.local.", RecordType::A, None))
        .expect("test value");
    let Outcome::Reply(whole) = run(
        &query("big.ns.svc.cluster.local.", RecordType::A, None),
        Protocol::Tcp,
    )
    .0
    else {
        panic!("reply expected");
    };
    assert_eq!(fit_relayed(whole.clone(), MAX_MESSAGE, &request), whole);
    let short = Message::from_vec(&fit_relayed(whole, 512, &request)).expect("test value");
    assert!(short.metadata.truncation && short.answers.is_empty());
    let garbage = fit_relayed(
        vec![
            0x12, 0x34, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 1, 2,
        ],
        12,
        &request,
    );
    assert_eq!(
        Message::from_vec(&garbage)
            .expect("test value")
            .metadata
            .response_code,
        ResponseCode::ServFail
    );
}
