//! The one rustls crypto provider this crate compiles in.
//!
//! Features `ring` (default) and `aws-lc-rs` pick it; with both enabled,
//! aws-lc-rs wins. Configs are always built with
//! `builder_with_provider(provider())`, never the process default, so two
//! compiled-in providers cannot make a builder panic.

use std::sync::Arc;

use rustls::crypto::CryptoProvider;

#[cfg(feature = "aws-lc-rs")]
use rustls::crypto::aws_lc_rs as imp;
#[cfg(all(feature = "ring", not(feature = "aws-lc-rs")))]
use rustls::crypto::ring as imp;

#[cfg(not(any(feature = "ring", feature = "aws-lc-rs")))]
compile_error!("ambit-identity needs a crypto provider: enable feature `ring` or `aws-lc-rs`");

/// The name of the compiled-in provider: `"ring"` or `"aws-lc-rs"`.
#[cfg(feature = "aws-lc-rs")]
pub const PROVIDER_NAME: &str = "aws-lc-rs";
/// The name of the compiled-in provider: `"ring"` or `"aws-lc-rs"`.
#[cfg(all(feature = "ring", not(feature = "aws-lc-rs")))]
pub const PROVIDER_NAME: &str = "ring";

/// The crypto provider with the mesh's cipher suites: TLS 1.3
/// AES-256-GCM-SHA384 then AES-128-GCM-SHA256, as ztunnel offers them.
pub fn provider() -> Arc<CryptoProvider> {
    let mut p = imp::default_provider();
    p.cipher_suites = vec![
        imp::cipher_suite::TLS13_AES_256_GCM_SHA384,
        imp::cipher_suite::TLS13_AES_128_GCM_SHA256,
    ];
    Arc::new(p)
}
