//! Generated types for `istio.v1.auth` (see `proto/istio_ca.proto`).
#![allow(missing_docs, unreachable_pub, clippy::all, clippy::pedantic)]

tonic::include_proto!("istio.v1.auth");
