//! HBONE: TCP tunnelled through HTTP/2 CONNECT over mutual TLS, as Istio's
//! ambient mode speaks it between ztunnels, waypoints and gateways.
//!
//! `ambit-hbone` owns the tunnel and nothing of the mesh around it: it
//! knows SPIFFE identities (through `ambit-identity`'s rustls configs) but
//! not workloads, services or policy, so any Rust program can use it.
//!
//! - [`headers`]: codecs for `:authority`, `forwarded`, `baggage` and
//!   `traceparent` — pure functions, table-tested and fuzzed.
//! - [`Server`]: TLS, HTTP/2, CONNECT validation (400), and a [`Handler`]
//!   that decides 200 / 401 / 503 per stream; `run(listener, shutdown)`
//!   with graceful drain.
//! - [`Client`]: CONNECT streams over a pool keyed by source identity,
//!   destination identities and address; stream limits, idle eviction,
//!   GOAWAY, PING keepalive; double HBONE.
//! - [`HboneStream`]: one CONNECT stream as `AsyncRead + AsyncWrite`, with
//!   HTTP/2 flow control done right.
//! - [`copy_bidirectional`]: moves bytes both ways with half-close and
//!   reset propagation and adaptive buffers, as whole chunks through
//!   [`ChunkIo`], so HBONE streams' bytes pass without copies.
//!
//! Wire facts (settings, keepalive, status codes) follow ztunnel; see the
//! crate README.
#![forbid(unsafe_code)]

mod client;
mod config;
mod copy;
pub mod headers;
mod origin;
mod rewind;
mod server;
mod stream;
mod transport;

pub use self::{
    client::{
        BoxError, Client, ClientError, ConnectRequest, InnerConnect, PoolKey, StaticTls,
        TlsProvider,
    },
    config::{ClientConfig, H2Settings, ServerConfig},
    copy::{
        Abort, ChunkIo, CopyError, CopyStats, GROW_AFTER, INITIAL_BUFFER, MAX_BUFFER, Side,
        copy_bidirectional,
    },
    headers::{
        Authority, AuthorityOptions, Baggage, ConnectHeaders, Forwarded, HeaderError, TraceParent,
    },
    origin::{Dialer, Origin},
    rewind::Rewind,
    server::{
        BoxFuture, Decision, Handler, HandlerFn, InboundRequest, Rejection, Server, ServerError,
        StreamTask, handler_fn,
    },
    stream::HboneStream,
    transport::Transport,
};
