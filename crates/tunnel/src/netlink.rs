//! A small synchronous rtnetlink client: one request, then its ACK or dump.
//!
//! The socket is created inside the target namespace (on a thread that
//! [`NetNs::run`] moved there); a netlink socket talks to the namespace it
//! was created in for its whole life, so it is then used from the caller's
//! thread.

use std::io;

use ambit_netns::NetNs;
use netlink_packet_core::{NLM_F_MULTIPART, NetlinkMessage, NetlinkPayload};
use netlink_packet_route::RouteNetlinkMessage;
use netlink_sys::{Socket, SocketAddr, protocols::NETLINK_ROUTE};

use crate::codec::netlink_request;
use crate::error::{Error, Result};

/// What a request is about, for error messages.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Ctx<'a> {
    /// The link name, or `*`.
    pub(crate) link: &'a str,
    /// The operation, e.g. `creating link`.
    pub(crate) op: &'a str,
}

/// An rtnetlink socket bound inside one network namespace.
pub(crate) struct RtSocket {
    sock: Socket,
    ns: String,
    seq: u32,
}

impl RtSocket {
    /// Opens a `NETLINK_ROUTE` socket inside `ns`.
    pub(crate) fn open(ns: &NetNs, link: &str) -> Result<Self> {
        let label = ns.label().to_owned();
        let made = ns
            .run(|| -> io::Result<Socket> {
                let mut sock = Socket::new(NETLINK_ROUTE)?;
                sock.bind_auto()?;
                sock.connect(&SocketAddr::new(0, 0))?;
                // Best effort: only makes the kernel's error text available.
                let _ = sock.set_ext_ack(true);
                Ok(sock)
            })
            .map_err(|source| Error::Netns {
                link: link.to_owned(),
                op: "opening a netlink socket",
                source,
            })?;
        let sock = made.map_err(|source| Error::Netlink {
            link: link.to_owned(),
            ns: label.clone(),
            op: "opening a netlink socket for".into(),
            source,
        })?;
        Ok(Self {
            sock,
            ns: label,
            seq: 0,
        })
    }

    /// The namespace label, for errors.
    pub(crate) fn ns(&self) -> &str {
        &self.ns
    }

    /// Sends one request and collects the replies: for an acknowledged
    /// request, nothing (an ACK); for a dump, every message up to `DONE`.
    /// A kernel NACK becomes an [`Error::Netlink`] carrying the errno.
    pub(crate) fn request(
        &mut self,
        msg: RouteNetlinkMessage,
        flags: u16,
        ctx: Ctx<'_>,
    ) -> Result<Vec<RouteNetlinkMessage>> {
        self.seq = self.seq.wrapping_add(1);
        let seq = self.seq;
        let mut nl = netlink_request(msg, flags);
        nl.header.sequence_number = seq;
        let mut buf = vec![0u8; nl.buffer_len()];
        nl.serialize(&mut buf);
        self.sock
            .send(&buf, 0)
            .map_err(|source| self.io_err(ctx, source))?;

        let mut out = Vec::new();
        loop {
            let (data, _) = self
                .sock
                .recv_from_full()
                .map_err(|source| self.io_err(ctx, source))?;
            let mut off = 0;
            while off < data.len() {
                let rest = &data[off..];
                let msg = NetlinkMessage::<RouteNetlinkMessage>::deserialize(rest)
                    .map_err(|e| self.decode_err(ctx, e.to_string()))?;
                let len = msg.header.length as usize;
                if len == 0 {
                    return Err(self.decode_err(ctx, "zero-length message".into()));
                }
                off += (len + 3) & !3;
                if msg.header.sequence_number != seq {
                    // A reply to an earlier request we gave up on.
                    continue;
                }
                let multipart = msg.header.flags & NLM_F_MULTIPART != 0;
                match msg.payload {
                    NetlinkPayload::Error(e) => {
                        return match e.code {
                            None => Ok(out),
                            Some(_) => Err(self.io_err(ctx, e.to_io())),
                        };
                    }
                    NetlinkPayload::Done(_) => return Ok(out),
                    NetlinkPayload::InnerMessage(m) => {
                        out.push(m);
                        if !multipart {
                            return Ok(out);
                        }
                    }
                    _ => {}
                }
            }
        }
    }

    fn io_err(&self, ctx: Ctx<'_>, source: io::Error) -> Error {
        Error::Netlink {
            link: ctx.link.to_owned(),
            ns: self.ns.clone(),
            op: ctx.op.to_owned(),
            source,
        }
    }

    fn decode_err(&self, ctx: Ctx<'_>, reason: String) -> Error {
        Error::Decode {
            link: ctx.link.to_owned(),
            ns: self.ns.clone(),
            op: ctx.op.to_owned(),
            reason,
        }
    }
}
