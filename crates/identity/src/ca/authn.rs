//! Who is calling the control plane: the authentication choices istiod
//! offers, for the xDS stream and the CA alike.
//!
//! - [`Authn::none`]: every caller is admitted (a local or development
//!   control plane; istiod with `XDS_AUTH=false` for xDS).
//! - Bearer tokens ([`Authn::tokens`]): the `authorization: Bearer <token>`
//!   header a proxy sends from its token file must be one of a fixed
//!   [`TokenSet`], each token bound to a namespace and service account. It
//!   stands in for istiod's Kubernetes JWT review where there is no
//!   Kubernetes API to ask.
//! - Client certificates ([`Authn::client_certs`]): a caller presenting a
//!   certificate issued by the mesh CA (verified by the TLS layer) is its
//!   SPIFFE identity, as istiod's `ClientCertAuthenticator` accepts for
//!   certificate renewals.
//!
//! Both methods can be enabled together; a client certificate is tried
//! first, then the token, as istiod tries its authenticators in turn.
//!
//! For the CA, the authenticated caller may obtain a certificate for its
//! own identity only, unless its service account is a trusted node account
//! (istiod's `CA_TRUSTED_NODE_ACCOUNTS`, default `istio-system/ztunnel`):
//! those may ask on behalf of others with `ImpersonatedIdentity`. istiod
//! further requires a pod of that identity on the node proxy's node; a
//! control plane without a pod inventory cannot check that, so here a
//! trusted node account may impersonate any identity of the trust domain.

use std::{collections::HashMap, fmt, path::Path, str::FromStr, sync::Arc};

use rustls::pki_types::CertificateDer;
use tonic::{
    Request, Status, metadata::MetadataMap, service::Interceptor,
    service::interceptor::InterceptedService,
};

use crate::{cert::identity_of, identity::Identity};

/// The node accounts istiod's charts trust by default.
pub const DEFAULT_NODE_ACCOUNTS: &[&str] = &["istio-system/ztunnel"];

/// A Kubernetes service account: `namespace/name`.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ServiceAccount {
    /// The namespace.
    pub namespace: String,
    /// The service account's name.
    pub name: String,
}

impl ServiceAccount {
    /// `namespace/name`.
    pub fn new(namespace: impl Into<String>, name: impl Into<String>) -> Self {
        Self {
            namespace: namespace.into(),
            name: name.into(),
        }
    }

    /// Whether `identity` is this service account (in any trust domain).
    pub fn is(&self, identity: &Identity) -> bool {
        identity.namespace() == self.namespace && identity.service_account() == self.name
    }
}

impl fmt::Display for ServiceAccount {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.namespace, self.name)
    }
}

impl FromStr for ServiceAccount {
    type Err = AuthnError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let bad = || AuthnError::BadServiceAccount {
            value: s.chars().take(96).collect(),
        };
        let (ns, sa) = s.split_once('/').ok_or_else(bad)?;
        let ok = |p: &str| !p.is_empty() && !p.contains(['/', ' ', '\t']);
        if !ok(ns) || !ok(sa) {
            return Err(bad());
        }
        Ok(Self::new(ns, sa))
    }
}

impl From<&Identity> for ServiceAccount {
    fn from(identity: &Identity) -> Self {
        Self::new(identity.namespace(), identity.service_account())
    }
}

/// Errors building an [`Authn`] (token files, service-account names).
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum AuthnError {
    /// A service account is not `namespace/name`.
    #[error("{value:?} is not a service account (namespace/name)")]
    BadServiceAccount {
        /// The offending value (bounded).
        value: String,
    },
    /// A token file could not be read.
    #[error("failed to read the token file {}", path.display())]
    Read {
        /// The file.
        path: std::path::PathBuf,
        /// The underlying error.
        #[source]
        source: std::io::Error,
    },
    /// A line of a token file is malformed.
    #[error("{what} line {line}: {reason}")]
    BadLine {
        /// The file or a description.
        what: String,
        /// 1-based line number.
        line: usize,
        /// What is wrong.
        reason: String,
    },
}

/// A fixed set of bearer tokens, each bound to a service account.
#[derive(Clone, Default, PartialEq, Eq)]
pub struct TokenSet {
    tokens: HashMap<String, ServiceAccount>,
}

impl fmt::Debug for TokenSet {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // The tokens are secrets: show whom they authenticate, not them.
        let mut accounts: Vec<String> = self.tokens.values().map(ToString::to_string).collect();
        accounts.sort();
        f.debug_struct("TokenSet")
            .field("accounts", &accounts)
            .finish()
    }
}

impl TokenSet {
    /// An empty set.
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds `token`, authenticating as `account` (replacing an earlier
    /// binding of the same token).
    pub fn insert(&mut self, token: impl Into<String>, account: ServiceAccount) {
        self.tokens.insert(token.into(), account);
    }

    /// Builder form of [`insert`](Self::insert).
    pub fn with(mut self, token: impl Into<String>, account: ServiceAccount) -> Self {
        self.insert(token, account);
        self
    }

    /// The number of tokens.
    pub fn len(&self) -> usize {
        self.tokens.len()
    }

    /// Whether the set is empty.
    pub fn is_empty(&self) -> bool {
        self.tokens.is_empty()
    }

    /// Parses a token file: one `<namespace>/<service-account> <token>` per
    /// line; blank lines and lines starting with `#` are skipped. `what`
    /// names the source in errors.
    pub fn parse(text: &str, what: &str) -> Result<Self, AuthnError> {
        let mut set = Self::new();
        for (i, line) in text.lines().enumerate() {
            let line = line.trim();
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            let bad = |reason: String| AuthnError::BadLine {
                what: what.to_owned(),
                line: i + 1,
                reason,
            };
            let mut parts = line.split_whitespace();
            let (Some(account), Some(token), None) = (parts.next(), parts.next(), parts.next())
            else {
                return Err(bad(
                    "expected `<namespace>/<service-account> <token>`".into()
                ));
            };
            let account = account
                .parse()
                .map_err(|e: AuthnError| bad(e.to_string()))?;
            set.insert(token, account);
        }
        Ok(set)
    }

    /// Reads and parses a token file (see [`parse`](Self::parse)).
    pub fn from_file(path: &Path) -> Result<Self, AuthnError> {
        let text = std::fs::read_to_string(path).map_err(|source| AuthnError::Read {
            path: path.to_owned(),
            source,
        })?;
        Self::parse(&text, &path.display().to_string())
    }

    /// The account `token` authenticates, comparing against every token in
    /// constant time per token.
    fn lookup(&self, token: &str) -> Option<&ServiceAccount> {
        let mut found = None;
        for (known, account) in &self.tokens {
            if constant_time_eq(known.as_bytes(), token.as_bytes()) {
                found = Some(account);
            }
        }
        found
    }
}

fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    if a.len() != b.len() {
        return false;
    }
    a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// How a [`Caller`] proved who it is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum AuthSource {
    /// A bearer token of the [`TokenSet`].
    Token,
    /// A client certificate issued by the mesh CA.
    ClientCert,
}

/// An authenticated caller, as [`Authn::authenticate`] found it. The
/// [`Authn::interceptor`] puts it in the request's extensions.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Caller {
    /// The service account the caller authenticated as.
    pub account: ServiceAccount,
    /// How.
    pub source: AuthSource,
}

/// The authentication a control plane applies to its callers; see the
/// [module documentation](self). The default admits every caller.
#[derive(Debug, Clone)]
pub struct Authn {
    tokens: Option<Arc<TokenSet>>,
    client_certs: bool,
    node_accounts: Vec<ServiceAccount>,
}

impl Default for Authn {
    fn default() -> Self {
        Self::none()
    }
}

impl Authn {
    /// No authentication: every caller is admitted and may ask for any
    /// identity of the trust domain.
    pub fn none() -> Self {
        Self {
            tokens: None,
            client_certs: false,
            node_accounts: default_node_accounts(),
        }
    }

    /// Callers must send a bearer token of `tokens`.
    pub fn tokens(tokens: TokenSet) -> Self {
        Self::none().with_tokens(tokens)
    }

    /// Callers must present a client certificate of the mesh CA (the TLS
    /// server must ask for it: see
    /// [`grpc::server_config`](crate::grpc::server_config)).
    pub fn client_certs() -> Self {
        Self::none().with_client_certs()
    }

    /// Also accepts bearer tokens of `tokens`.
    pub fn with_tokens(mut self, tokens: TokenSet) -> Self {
        self.tokens = Some(Arc::new(tokens));
        self
    }

    /// Also accepts client certificates of the mesh CA.
    pub fn with_client_certs(mut self) -> Self {
        self.client_certs = true;
        self
    }

    /// The service accounts that may ask for certificates on behalf of
    /// others (istiod's `CA_TRUSTED_NODE_ACCOUNTS`); default
    /// [`DEFAULT_NODE_ACCOUNTS`].
    pub fn with_node_accounts(mut self, accounts: Vec<ServiceAccount>) -> Self {
        self.node_accounts = accounts;
        self
    }

    /// Whether every caller is admitted.
    pub fn is_none(&self) -> bool {
        self.tokens.is_none() && !self.client_certs
    }

    /// Whether client certificates are accepted (the TLS server should
    /// then request them).
    pub fn accepts_client_certs(&self) -> bool {
        self.client_certs
    }

    /// Authenticates a request from its headers and the client certificate
    /// chain the TLS layer verified (leaf first). `Ok(None)` when
    /// authentication is off; `Unauthenticated` when no accepted method
    /// succeeds.
    pub fn authenticate(
        &self,
        metadata: &MetadataMap,
        peer_certs: Option<&[CertificateDer<'static>]>,
    ) -> Result<Option<Caller>, Status> {
        if self.is_none() {
            return Ok(None);
        }
        let mut failures = Vec::new();
        if self.client_certs {
            match peer_certs.and_then(|c| c.first()) {
                Some(leaf) => match identity_of(leaf) {
                    Ok(identity) => {
                        return Ok(Some(Caller {
                            account: ServiceAccount::from(&identity),
                            source: AuthSource::ClientCert,
                        }));
                    }
                    Err(e) => failures.push(format!("client certificate: {e}")),
                },
                None => failures.push("no client certificate".to_owned()),
            }
        }
        if let Some(tokens) = &self.tokens {
            match bearer(metadata) {
                Ok(token) => match tokens.lookup(token) {
                    Some(account) => {
                        return Ok(Some(Caller {
                            account: account.clone(),
                            source: AuthSource::Token,
                        }));
                    }
                    None => failures.push("the bearer token is not recognized".to_owned()),
                },
                Err(reason) => failures.push(reason.to_owned()),
            }
        }
        Err(Status::unauthenticated(format!(
            "authentication failed: {}",
            failures.join("; ")
        )))
    }

    /// Whether `caller` may obtain a certificate for `identity`;
    /// `impersonated`: it asked on another's behalf (`ImpersonatedIdentity`).
    /// `Err` is the reason given to the caller.
    pub fn authorize_certificate(
        &self,
        caller: Option<&Caller>,
        identity: &Identity,
        impersonated: bool,
    ) -> Result<(), String> {
        let Some(caller) = caller else {
            return Ok(());
        };
        if caller.account.is(identity) {
            return Ok(());
        }
        if impersonated && self.node_accounts.contains(&caller.account) {
            return Ok(());
        }
        if impersonated {
            Err(format!(
                "caller {} is not a trusted node account and may not impersonate other identities",
                caller.account
            ))
        } else {
            Err(format!(
                "caller authenticated as {} may obtain certificates for itself only",
                caller.account
            ))
        }
    }

    /// A tonic interceptor that authenticates every request and adds the
    /// [`Caller`] to its extensions, refusing with `Unauthenticated`.
    pub fn interceptor(&self) -> AuthnInterceptor {
        AuthnInterceptor {
            authn: self.clone(),
        }
    }

    /// `service` behind [`interceptor`](Self::interceptor), to mount on a
    /// tonic router (e.g. the xDS service).
    pub fn intercept<S>(&self, service: S) -> InterceptedService<S, AuthnInterceptor> {
        InterceptedService::new(service, self.interceptor())
    }
}

fn default_node_accounts() -> Vec<ServiceAccount> {
    DEFAULT_NODE_ACCOUNTS
        .iter()
        .filter_map(|a| a.parse().ok())
        .collect()
}

/// The token of an `authorization: Bearer <token>` header.
fn bearer(metadata: &MetadataMap) -> Result<&str, &'static str> {
    let value = metadata
        .get("authorization")
        .ok_or("no authorization header")?
        .to_str()
        .map_err(|_| "the authorization header is not text")?;
    let (scheme, token) = value
        .split_once(' ')
        .ok_or("the authorization header is not `Bearer <token>`")?;
    let token = token.trim();
    if !scheme.eq_ignore_ascii_case("bearer") || token.is_empty() {
        return Err("the authorization header is not `Bearer <token>`");
    }
    Ok(token)
}

/// See [`Authn::interceptor`].
#[derive(Debug, Clone)]
pub struct AuthnInterceptor {
    authn: Authn,
}

impl Interceptor for AuthnInterceptor {
    fn call(&mut self, mut request: Request<()>) -> Result<Request<()>, Status> {
        let certs = request.peer_certs();
        if let Some(caller) = self
            .authn
            .authenticate(request.metadata(), certs.as_deref().map(Vec::as_slice))?
        {
            request.extensions_mut().insert(caller);
        }
        Ok(request)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sa(s: &str) -> ServiceAccount {
        s.parse().expect("service account")
    }

    fn id(s: &str) -> Identity {
        s.parse().expect("identity")
    }

    fn with_auth(value: &str) -> MetadataMap {
        let mut m = MetadataMap::new();
        m.insert("authorization", value.parse().expect("header"));
        m
    }

    #[test]
    fn token_files_parse_and_refuse_garbage() {
        let set = TokenSet::parse(
            "# comment\n\nistio-system/ztunnel zt-token\n default/web   web-token \n",
            "tokens",
        )
        .expect("parses");
        assert_eq!(set.len(), 2);
        assert_eq!(set.lookup("zt-token"), Some(&sa("istio-system/ztunnel")));
        assert_eq!(set.lookup("zt-toke"), None);
        assert!(!format!("{set:?}").contains("zt-token"), "tokens not shown");
        for bad in [
            "justonefield",
            "ns/sa tok extra",
            "nosa tok",
            "/sa tok",
            "ns/ tok",
        ] {
            let err = TokenSet::parse(bad, "tokens").expect_err(bad);
            assert!(err.to_string().contains("tokens line 1"), "{err}");
        }
    }

    #[test]
    fn none_admits_everyone_for_anything() {
        let authn = Authn::none();
        let caller = authn
            .authenticate(&MetadataMap::new(), None)
            .expect("admitted");
        assert_eq!(caller, None);
        authn
            .authorize_certificate(None, &id("spiffe://cluster.local/ns/a/sa/b"), true)
            .expect("anything");
    }

    #[test]
    fn bearer_tokens_authenticate_and_bind() {
        let authn = Authn::tokens(TokenSet::new().with("t1", sa("default/web")));
        let caller = authn
            .authenticate(&with_auth("Bearer t1"), None)
            .expect("known token")
            .expect("a caller");
        assert_eq!(caller.account, sa("default/web"));
        assert_eq!(caller.source, AuthSource::Token);
        for (headers, want) in [
            (MetadataMap::new(), "no authorization header"),
            (with_auth("Bearer t2"), "not recognized"),
            (with_auth("Basic t1"), "not `Bearer <token>`"),
        ] {
            let status = authn.authenticate(&headers, None).expect_err("refused");
            assert_eq!(status.code(), tonic::Code::Unauthenticated);
            assert!(status.message().contains(want), "{}", status.message());
        }
        let web = id("spiffe://cluster.local/ns/default/sa/web");
        let db = id("spiffe://cluster.local/ns/default/sa/db");
        authn
            .authorize_certificate(Some(&caller), &web, false)
            .expect("own identity");
        let err = authn
            .authorize_certificate(Some(&caller), &db, false)
            .expect_err("other identity");
        assert!(err.contains("for itself only"), "{err}");
        let err = authn
            .authorize_certificate(Some(&caller), &db, true)
            .expect_err("not a node account");
        assert!(err.contains("not a trusted node account"), "{err}");
    }

    #[test]
    fn node_accounts_may_impersonate() {
        let authn = Authn::none().with_node_accounts(vec![sa("kube-system/ztunnel")]);
        let zt = Caller {
            account: sa("kube-system/ztunnel"),
            source: AuthSource::ClientCert,
        };
        let web = id("spiffe://cluster.local/ns/default/sa/web");
        authn
            .authorize_certificate(Some(&zt), &web, true)
            .expect("node proxy impersonates");
        authn
            .authorize_certificate(Some(&zt), &web, false)
            .expect_err("but must say so");
        let default = Authn::none();
        let istio_zt = Caller {
            account: sa("istio-system/ztunnel"),
            source: AuthSource::Token,
        };
        default
            .authorize_certificate(Some(&istio_zt), &web, true)
            .expect("istio-system/ztunnel is trusted by default");
    }
}
