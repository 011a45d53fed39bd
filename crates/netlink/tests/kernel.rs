//! The transport against the kernel, in a throwaway namespace (needs root).

use ambit_netlink::{
    Messages, NETLINK_ROUTE, NLM_F_ACK, NLM_F_DUMP, NLM_F_REQUEST, Socket, header,
};
use ambit_netns::NetNs;

const RTM_NEWLINK: u16 = 16;
const RTM_GETLINK: u16 = 18;
const RTM_DELLINK: u16 = 17;
const IFINFOMSG_LEN: usize = 16;
const ENODEV: i32 = 19;

/// A link request: `struct ifinfomsg` with `ifi_index` set, no attributes.
fn link_msg(ty: u16, flags: u16, index: i32) -> Vec<u8> {
    let mut m = header(ty, flags, IFINFOMSG_LEN);
    let mut ifinfo = [0u8; IFINFOMSG_LEN];
    ifinfo[4..8].copy_from_slice(&index.to_ne_bytes());
    m.extend_from_slice(&ifinfo);
    m
}

#[test]
fn dumps_acks_and_nacks_in_a_fresh_namespace() {
    let ns = NetNs::create_anonymous().expect("a namespace");
    let mut sock = Socket::open(Some(&ns), NETLINK_ROUTE).expect("socket");
    assert_eq!(sock.ns(), ns.label());

    // `ip link show`: a new namespace has exactly `lo`.
    let links = sock
        .dump(link_msg(RTM_GETLINK, NLM_F_REQUEST | NLM_F_DUMP, 0))
        .expect("transport")
        .expect("the kernel answers a dump");
    assert_eq!(links.len(), 1, "only lo");
    let lo = Messages::new(&links[0])
        .next()
        .expect("one")
        .expect("valid");
    assert_eq!(lo.ty, RTM_NEWLINK);

    // Deleting an interface that does not exist: one nack per message, in
    // order, with the errno; the socket stays usable.
    let mut msgs: Vec<Vec<u8>> = (1000..1003)
        .map(|i| link_msg(RTM_DELLINK, NLM_F_REQUEST | NLM_F_ACK, i))
        .collect();
    let answers = sock.transact(&mut msgs).expect("transport");
    assert_eq!(answers.len(), 3);
    for a in answers {
        assert_eq!(a.expect_err("no such link").errno, ENODEV);
    }
    let nack = sock
        .request(link_msg(RTM_DELLINK, NLM_F_REQUEST | NLM_F_ACK, 4242))
        .expect("transport")
        .expect_err("no such link");
    assert_eq!(nack.to_io().raw_os_error(), Some(ENODEV));
}
