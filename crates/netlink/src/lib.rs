//! A small synchronous netlink transport shared by Ambit's kernel crates.
//!
//! `ambit-netlink` owns the part of talking netlink that does not depend on
//! the protocol spoken: a [`Socket`] opened inside an
//! [`ambit_netns::NetNs`] (or the caller's namespace), sequence numbers,
//! requests batched many per `sendmsg` with one ack per message
//! ([`Socket::transact`]), dumps ([`Socket::dump`]), nfnetlink batches
//! ([`Socket::send_batch`]), and the kernel's `NLMSG_ERROR` answers with
//! their extended-ack text ([`Nack`]). It deals in whole messages as bytes:
//! the codecs that build and parse payloads — rtnetlink through
//! netlink-packet-route in `ambit-redirect` and `ambit-tunnel`, ipset and
//! nftables in `ambit-redirect` — live with their users.
//!
//! The framing ([`header`], [`Messages`], [`RawMsg::ack`],
//! [`dump_datagram`]) is pure, so it is tested and fuzzed without a socket.
//! Transport failures are an [`Error`]; a kernel refusal is not an error of
//! the transport but the per-message [`Nack`], because whether it matters
//! (`EEXIST` on an idempotent add, say) is the caller's decision.
//!
//! ```no_run
//! use ambit_netlink::{NETLINK_ROUTE, NLM_F_DUMP, NLM_F_REQUEST, Socket, header};
//! # fn main() -> Result<(), Box<dyn std::error::Error>> {
//! const RTM_GETLINK: u16 = 18;
//! let ns = ambit_netns::NetNs::named("demo")?;
//! let mut sock = Socket::open(Some(&ns), NETLINK_ROUTE)?;
//! // `ip link show`: a dump request with an empty `struct ifinfomsg`.
//! let mut msg = header(RTM_GETLINK, NLM_F_REQUEST | NLM_F_DUMP, 16);
//! msg.extend_from_slice(&[0; 16]);
//! let links = sock.dump(msg)??;
//! println!("{} links in {}", links.len(), sock.ns());
//! # Ok(()) }
//! ```
#![deny(unsafe_code)]

mod error;
mod message;
mod socket;

pub use netlink_sys::protocols::{NETLINK_NETFILTER, NETLINK_ROUTE};

pub use self::{
    error::{Error, Nack, Result},
    message::{
        DumpProgress, Messages, NLM_F_ACK, NLM_F_ACK_TLVS, NLM_F_CAPPED, NLM_F_DUMP, NLM_F_MULTI,
        NLM_F_REQUEST, NLMSG_DONE, NLMSG_ERROR, NLMSG_HDRLEN, NLMSGERR_ATTR_MSG, RawMsg, align4,
        dump_datagram, header, set_seq,
    },
    socket::Socket,
};
