//! Round trips of every Istio message this crate defines, and byte strings
//! built by hand from the field numbers in ztunnel-wire.md and
//! istio-redirection.md, decoded as istiod / the node agent would send them.

use std::collections::HashMap;

use ambit_xds::{
    ADDRESS_TYPE_URL, AUTHORIZATION_TYPE_URL, decode_address, decode_authorization,
    proto::{
        istio::{
            security::{
                self, Action, Authorization, Clause, Rule, ServiceAccountMatch, StringMatch,
                string_match::MatchType,
            },
            workload::{
                Address, AppProtocol, ApplicationTunnel, Extension, GatewayAddress, IpFamilies,
                LoadBalancing, Locality, NamespacedHostname, NetworkAddress, NetworkMode, Port,
                PortList, Service, TunnelProtocol, Workload, WorkloadStatus, WorkloadType, address,
                application_tunnel, gateway_address, load_balancing,
                zds::{
                    Ack, AddWorkload, DelWorkload, KeepWorkload, SnapshotSent, Version,
                    WorkloadInfo, WorkloadRequest, WorkloadResponse, ZdsHello, workload_request,
                    workload_response,
                },
            },
        },
        protobuf::Any,
    },
    to_any,
};
use prost::Message;

fn round_trip<M: Message + Default + PartialEq + std::fmt::Debug>(message: &M) {
    let bytes = message.encode_to_vec();
    let decoded = M::decode(bytes.as_slice()).expect("decodes");
    assert_eq!(&decoded, message);
    assert_eq!(decoded.encode_to_vec(), bytes, "re-encoding is stable");
}

fn full_workload() -> Workload {
    Workload {
        uid: "cluster1//v1/Pod/default/web-0".into(),
        name: "web-0".into(),
        namespace: "default".into(),
        addresses: vec![vec![10, 0, 0, 7], vec![0xfd; 16]],
        hostname: "web-0.example".into(),
        network: "net1".into(),
        tunnel_protocol: TunnelProtocol::Hbone as i32,
        trust_domain: "cluster.local".into(),
        service_account: "web".into(),
        waypoint: Some(GatewayAddress {
            destination: Some(gateway_address::Destination::Hostname(NamespacedHostname {
                namespace: "default".into(),
                hostname: "waypoint.default.svc.cluster.local".into(),
            })),
            hbone_mtls_port: 15008,
        }),
        network_gateway: Some(GatewayAddress {
            destination: Some(gateway_address::Destination::Address(NetworkAddress {
                network: "net2".into(),
                address: vec![192, 168, 1, 1],
                length: Some(32),
            })),
            hbone_mtls_port: 15008,
        }),
        node: "worker-1".into(),
        canonical_name: "web".into(),
        canonical_revision: "v1".into(),
        workload_type: WorkloadType::Pod as i32,
        workload_name: "web".into(),
        native_tunnel: true,
        application_tunnel: Some(ApplicationTunnel {
            protocol: application_tunnel::Protocol::Proxy as i32,
            port: 15088,
        }),
        services: HashMap::from([(
            "default/web.default.svc.cluster.local".into(),
            PortList {
                ports: vec![Port {
                    service_port: 80,
                    target_port: 8080,
                    app_protocol: AppProtocol::Http2 as i32,
                }],
            },
        )]),
        authorization_policies: vec!["default/allow-web".into()],
        status: WorkloadStatus::Unhealthy as i32,
        cluster_id: "cluster1".into(),
        locality: Some(Locality {
            region: "r".into(),
            zone: "z".into(),
            subzone: "s".into(),
        }),
        network_mode: NetworkMode::HostNetwork as i32,
        extensions: vec![Extension {
            name: "ext".into(),
            config: Some(Any {
                type_url: "type.googleapis.com/x".into(),
                value: vec![1, 2, 3],
            }),
        }],
        capacity: Some(3),
    }
}

fn full_service() -> Service {
    Service {
        name: "web".into(),
        namespace: "default".into(),
        hostname: "web.default.svc.cluster.local".into(),
        addresses: vec![NetworkAddress {
            network: "".into(),
            address: vec![10, 96, 0, 10],
            length: None,
        }],
        ports: vec![Port {
            service_port: 80,
            target_port: 8080,
            app_protocol: AppProtocol::Http11 as i32,
        }],
        subject_alt_names: vec!["spiffe://cluster.local/ns/default/sa/web".into()],
        waypoint: None,
        load_balancing: Some(LoadBalancing {
            routing_preference: vec![
                load_balancing::Scope::Network as i32,
                load_balancing::Scope::Zone as i32,
            ],
            mode: load_balancing::Mode::Failover as i32,
            health_policy: load_balancing::HealthPolicy::AllowAll as i32,
        }),
        ip_families: IpFamilies::Dual as i32,
        extensions: vec![],
        canonical: true,
        ingress_use_waypoint: true,
    }
}

fn full_authorization() -> Authorization {
    let sm = |m| StringMatch {
        match_type: Some(m),
    };
    Authorization {
        name: "allow-web".into(),
        namespace: "default".into(),
        scope: security::Scope::WorkloadSelector as i32,
        action: Action::Deny as i32,
        rules: vec![Rule {
            clauses: vec![Clause {
                matches: vec![security::Match {
                    namespaces: vec![sm(MatchType::Exact("default".into()))],
                    not_namespaces: vec![sm(MatchType::Prefix("kube-".into()))],
                    principals: vec![sm(MatchType::Suffix("/sa/web".into()))],
                    not_principals: vec![sm(MatchType::Presence(()))],
                    source_ips: vec![security::Address {
                        address: vec![10, 0, 0, 0],
                        length: 8,
                    }],
                    not_source_ips: vec![security::Address {
                        address: vec![0; 16],
                        length: 0,
                    }],
                    destination_ips: vec![security::Address {
                        address: vec![10, 0, 0, 7],
                        length: 32,
                    }],
                    not_destination_ips: vec![],
                    destination_ports: vec![80, 8080],
                    not_destination_ports: vec![9999],
                    service_accounts: vec![ServiceAccountMatch {
                        namespace: "default".into(),
                        service_account: "web".into(),
                    }],
                    not_service_accounts: vec![],
                    extensions: vec![Extension {
                        name: "e".into(),
                        config: None,
                    }],
                }],
            }],
        }],
        dry_run: true,
        extensions: vec![],
    }
}

#[test]
fn workload_api_round_trips() {
    round_trip(&full_workload());
    round_trip(&full_service());
    round_trip(&Address {
        r#type: Some(address::Type::Workload(full_workload())),
    });
    round_trip(&Address {
        r#type: Some(address::Type::Service(full_service())),
    });
    round_trip(&Address { r#type: None });
}

#[test]
fn security_api_round_trips() {
    round_trip(&full_authorization());
    let any = to_any(&full_authorization());
    assert_eq!(any.type_url, AUTHORIZATION_TYPE_URL);
    assert_eq!(
        decode_authorization("default/allow-web", &any).expect("decodes"),
        full_authorization()
    );
}

#[test]
fn zds_round_trips() {
    round_trip(&ZdsHello {
        version: Version::V1 as i32,
    });
    let info = WorkloadInfo {
        name: "web-0".into(),
        namespace: "default".into(),
        service_account: "web".into(),
    };
    for payload in [
        workload_request::Payload::Add(AddWorkload {
            uid: "u1".into(),
            workload_info: Some(info),
        }),
        workload_request::Payload::Keep(KeepWorkload { uid: "u2".into() }),
        workload_request::Payload::Del(DelWorkload { uid: "u3".into() }),
        workload_request::Payload::SnapshotSent(SnapshotSent {}),
    ] {
        round_trip(&WorkloadRequest {
            payload: Some(payload),
        });
    }
    round_trip(&WorkloadResponse {
        payload: Some(workload_response::Payload::Ack(Ack {
            error: "no such netns".into(),
        })),
    });
}

// --- hand-built bytes -----------------------------------------------------

/// A protobuf tag: field number and wire type (0 varint, 2 length-delimited).
fn tag(field: u32, wire_type: u32) -> Vec<u8> {
    varint(u64::from((field << 3) | wire_type))
}

fn varint(mut v: u64) -> Vec<u8> {
    let mut out = Vec::new();
    loop {
        let byte = (v & 0x7f) as u8;
        v >>= 7;
        if v == 0 {
            out.push(byte);
            return out;
        }
        out.push(byte | 0x80);
    }
}

/// Field `field` holding `body` length-delimited.
fn ld(field: u32, body: &[u8]) -> Vec<u8> {
    let mut out = tag(field, 2);
    out.extend(varint(body.len() as u64));
    out.extend_from_slice(body);
    out
}

fn vi(field: u32, value: u64) -> Vec<u8> {
    let mut out = tag(field, 0);
    out.extend(varint(value));
    out
}

fn address_any(bytes: Vec<u8>) -> Any {
    Any {
        type_url: ADDRESS_TYPE_URL.into(),
        value: bytes,
    }
}

#[test]
fn hand_built_tags_are_what_the_reference_says() {
    // Workload.uid = 20, length-delimited: 0xa2 0x01.
    assert_eq!(tag(20, 2), [0xa2, 0x01]);
    // Workload.services = 22: 0xb2 0x01; capacity = 27: 0xda 0x01.
    assert_eq!(tag(22, 2), [0xb2, 0x01]);
    assert_eq!(tag(27, 2), [0xda, 0x01]);
}

#[test]
fn hand_built_workload_decodes() {
    let port = [vi(1, 80), vi(2, 8080), vi(3, 2)].concat(); // HTTP2 = 2
    let entry = [
        ld(1, b"default/web.default.svc.cluster.local"),
        ld(2, &ld(1, &port)),
    ]
    .concat();
    let waypoint = [
        ld(
            1,
            &[
                ld(1, b"default"),
                ld(2, b"waypoint.default.svc.cluster.local"),
            ]
            .concat(),
        ),
        vi(3, 15008),
    ]
    .concat();
    let workload = [
        vec![0xa2, 0x01, 2, b'u', b'1'], // uid = 20
        ld(1, b"web-0"),
        ld(2, b"default"),
        ld(3, &[10, 0, 0, 7]),
        vi(5, 1), // HBONE
        ld(6, b"cluster.local"),
        ld(7, b"web"),
        ld(8, &waypoint),
        ld(9, b"worker-1"),
        vi(12, 2), // POD
        vi(14, 1),
        ld(16, b"default/allow"),
        vi(17, 1), // UNHEALTHY
        ld(18, b"cluster1"),
        ld(22, &entry),
        ld(23, &[vi(1, 1), vi(2, 15088)].concat()), // PROXY
        ld(24, &[ld(1, b"r1"), ld(2, b"z1")].concat()),
        vi(25, 1), // HOST_NETWORK
        ld(27, &vi(1, 5)),
        // Fields this crate does not model are skipped, as proto3 requires.
        vi(99, 7),
    ]
    .concat();
    let any = address_any(ld(1, &workload));
    let address = decode_address("u1", &any).expect("decodes");
    let Some(address::Type::Workload(w)) = address.r#type else {
        panic!("not a workload: {address:?}");
    };
    assert_eq!(w.uid, "u1");
    assert_eq!(w.name, "web-0");
    assert_eq!(w.addresses, [vec![10, 0, 0, 7]]);
    assert_eq!(w.tunnel_protocol(), TunnelProtocol::Hbone);
    assert_eq!(w.trust_domain, "cluster.local");
    let wp = w.waypoint.clone().expect("waypoint");
    assert_eq!(wp.hbone_mtls_port, 15008);
    assert!(matches!(
        wp.destination,
        Some(gateway_address::Destination::Hostname(NamespacedHostname { ref hostname, .. }))
            if hostname == "waypoint.default.svc.cluster.local"
    ));
    assert_eq!(w.workload_type(), WorkloadType::Pod);
    assert!(w.native_tunnel);
    assert_eq!(w.status(), WorkloadStatus::Unhealthy);
    let ports = &w.services["default/web.default.svc.cluster.local"].ports;
    assert_eq!(
        (
            ports[0].service_port,
            ports[0].target_port,
            ports[0].app_protocol()
        ),
        (80, 8080, AppProtocol::Http2)
    );
    let tunnel = w.application_tunnel.expect("tunnel");
    assert_eq!(tunnel.protocol(), application_tunnel::Protocol::Proxy);
    assert_eq!(tunnel.port, 15088);
    assert_eq!(w.locality.as_ref().expect("locality").zone, "z1");
    assert_eq!(w.network_mode(), NetworkMode::HostNetwork);
    assert_eq!(w.capacity, Some(5));
}

#[test]
fn hand_built_service_decodes() {
    let service = [
        ld(1, b"web"),
        ld(2, b"default"),
        ld(3, b"web.default.svc.cluster.local"),
        ld(
            4,
            &[ld(1, b"net1"), ld(2, &[10, 96, 0, 10]), vi(3, 32)].concat(),
        ),
        ld(5, &[vi(1, 80), vi(2, 8080)].concat()),
        ld(6, b"spiffe://cluster.local/ns/default/sa/web"),
        ld(8, &[ld(1, &[6, 2]), vi(2, 1), vi(3, 1)].concat()), // packed scopes
        vi(9, 1),                                              // IPV4_ONLY
        vi(11, 1),                                             // canonical
        vi(12, 1),                                             // ingress_use_waypoint
    ]
    .concat();
    let address = decode_address("default/web", &address_any(ld(2, &service))).expect("decodes");
    let Some(address::Type::Service(s)) = address.r#type else {
        panic!("not a service");
    };
    assert_eq!(s.hostname, "web.default.svc.cluster.local");
    assert_eq!(s.addresses[0].address, [10, 96, 0, 10]);
    assert_eq!(s.addresses[0].network, "net1");
    assert_eq!(s.addresses[0].length, Some(32));
    assert_eq!(
        (s.ports[0].service_port, s.ports[0].target_port),
        (80, 8080)
    );
    let lb = s.load_balancing.clone().expect("lb");
    assert_eq!(
        lb.routing_preference().collect::<Vec<_>>(),
        [load_balancing::Scope::Network, load_balancing::Scope::Zone]
    );
    assert_eq!(lb.mode(), load_balancing::Mode::Strict);
    assert_eq!(lb.health_policy(), load_balancing::HealthPolicy::AllowAll);
    assert_eq!(s.ip_families(), IpFamilies::Ipv4Only);
    assert!(s.canonical && s.ingress_use_waypoint);
}

#[test]
fn hand_built_authorization_decodes() {
    let matches = [
        ld(1, &ld(1, b"default")),                            // namespaces: exact
        ld(3, &ld(2, b"spiffe://cluster.local/ns/")),         // principals: prefix
        ld(4, &ld(4, &[])),                                   // not_principals: presence
        ld(5, &[ld(1, &[10, 0, 0, 0]), vi(2, 8)].concat()),   // source_ips
        ld(9, &[80, 0x90, 0x3f]),                             // destination_ports, packed
        vi(10, 9999),                                         // not_destination_ports, unpacked
        ld(11, &[ld(1, b"default"), ld(2, b"web")].concat()), // service_accounts
    ]
    .concat();
    let policy = [
        ld(1, b"deny-9999"),
        ld(2, b"default"),
        vi(3, 1), // NAMESPACE
        vi(4, 1), // DENY
        ld(5, &ld(1, &ld(2, &matches))),
        vi(6, 1),
    ]
    .concat();
    let any = Any {
        type_url: AUTHORIZATION_TYPE_URL.into(),
        value: policy,
    };
    let p = decode_authorization("default/deny-9999", &any).expect("decodes");
    assert_eq!(p.name, "deny-9999");
    assert_eq!(p.scope(), security::Scope::Namespace);
    assert_eq!(p.action(), Action::Deny);
    assert!(p.dry_run);
    let m = &p.rules[0].clauses[0].matches[0];
    assert_eq!(
        m.namespaces[0].match_type,
        Some(MatchType::Exact("default".into()))
    );
    assert_eq!(
        m.principals[0].match_type,
        Some(MatchType::Prefix("spiffe://cluster.local/ns/".into()))
    );
    assert_eq!(
        m.not_principals[0].match_type,
        Some(MatchType::Presence(()))
    );
    assert_eq!(
        (m.source_ips[0].address.as_slice(), m.source_ips[0].length),
        (&[10, 0, 0, 0][..], 8)
    );
    assert_eq!(m.destination_ports, [80, 8080]);
    assert_eq!(m.not_destination_ports, [9999]);
    assert_eq!(m.service_accounts[0].service_account, "web");
}

#[test]
fn hand_built_zds_decodes() {
    // WorkloadRequest.add = 1 { uid = 1, workload_info = 2 { name 1, namespace 2, sa 3 } }
    let info = [ld(1, b"web-0"), ld(2, b"default"), ld(3, b"web")].concat();
    let bytes = ld(1, &[ld(1, b"uid-1"), ld(2, &info)].concat());
    let request = WorkloadRequest::decode(bytes.as_slice()).expect("decodes");
    let Some(workload_request::Payload::Add(add)) = request.payload else {
        panic!("not an add");
    };
    assert_eq!(add.uid, "uid-1");
    assert_eq!(add.workload_info.expect("info").service_account, "web");
    // DelWorkload.uid is field 2 (field 1 is reserved).
    let del = WorkloadRequest::decode(ld(2, &ld(2, b"uid-1")).as_slice()).expect("decodes");
    assert_eq!(
        del.payload,
        Some(workload_request::Payload::Del(DelWorkload {
            uid: "uid-1".into()
        }))
    );
    assert_eq!(
        ZdsHello::decode(vi(1, 1).as_slice())
            .expect("hello")
            .version(),
        Version::V1
    );
    let ack = WorkloadResponse::decode(ld(1, &ld(1, b"boom")).as_slice()).expect("ack");
    assert_eq!(
        ack.payload,
        Some(workload_response::Payload::Ack(Ack {
            error: "boom".into()
        }))
    );
}

#[test]
fn wrong_wire_types_are_errors_not_panics() {
    // uid (field 20) sent as a varint instead of a string.
    let bad = ld(1, &vi(20, 5));
    assert!(decode_address("x", &address_any(bad)).is_err());
    // Truncated length prefix.
    assert!(decode_address("x", &address_any(vec![0x0a, 0x05, 0xa2])).is_err());
}
