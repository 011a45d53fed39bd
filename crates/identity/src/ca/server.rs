//! An `IstioCertificateService` server backed by a [`LocalCa`]: the CA of
//! a local mesh, and the counterpart the client is tested against.

use std::{future::Future, sync::Arc, time::Duration};

use tokio::net::TcpListener;
use tonic::{Request, Response, Status, metadata::MetadataMap, transport::Server};

use super::{
    LocalCa, MAX_LEAF_TTL,
    authn::Authn,
    istio::IMPERSONATED_IDENTITY,
    proto::{
        IstioCertificateRequest, IstioCertificateResponse,
        istio_certificate_service_server::{
            IstioCertificateService, IstioCertificateServiceServer,
        },
    },
};
use crate::{cert::CertError, identity::Identity};

/// The validity granted when a request asks for none (24 h, as Istio).
pub const DEFAULT_TTL: Duration = Duration::from_secs(24 * 3600);

/// What an [`Authorizer`] is asked to decide.
#[derive(Debug)]
#[non_exhaustive]
pub struct SignRequest<'a> {
    /// The identity the certificate would carry (the CSR's SPIFFE id).
    pub identity: &'a Identity,
    /// Whether the caller asked on another's behalf (`ImpersonatedIdentity`).
    pub impersonated: bool,
    /// The request headers (`authorization`, `clusterid`, ...).
    pub metadata: &'a MetadataMap,
}

/// Decides whether a caller may obtain a certificate; `Err` carries the
/// reason returned to the caller.
pub type Authorizer = Arc<dyn Fn(&SignRequest<'_>) -> Result<(), String> + Send + Sync>;

/// Signs CSRs for identities in the CA's trust domain, subject to the
/// caller's authentication ([`Authn`]; none by default: every caller may
/// ask for any identity) and an optional [`Authorizer`].
#[derive(Clone)]
pub struct CaServer {
    ca: Arc<LocalCa>,
    authn: Authn,
    authorizer: Option<Authorizer>,
}

impl std::fmt::Debug for CaServer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CaServer")
            .field("ca", &self.ca)
            .field("authn", &self.authn)
            .field("authorizer", &self.authorizer.is_some())
            .finish()
    }
}

impl CaServer {
    /// A server for `ca` that admits every caller.
    pub fn new(ca: Arc<LocalCa>) -> Self {
        Self {
            ca,
            authn: Authn::none(),
            authorizer: None,
        }
    }

    /// Authenticates each caller with `authn` (`Unauthenticated` if that
    /// fails) and lets it obtain certificates only as
    /// [`Authn::authorize_certificate`] allows (`PermissionDenied`).
    pub fn with_authn(mut self, authn: Authn) -> Self {
        self.authn = authn;
        self
    }

    /// Adds a check of each caller (on top of the trust-domain check).
    pub fn with_authorizer(mut self, authorizer: Authorizer) -> Self {
        self.authorizer = Some(authorizer);
        self
    }

    /// The tonic service, to mount on a server of the caller's own.
    pub fn into_service(self) -> IstioCertificateServiceServer<Self> {
        IstioCertificateServiceServer::new(self)
    }

    /// Serves plaintext gRPC on `listener` until `shutdown` completes.
    pub async fn serve(
        self,
        listener: TcpListener,
        shutdown: impl Future<Output = ()> + Send,
    ) -> Result<(), tonic::transport::Error> {
        Server::builder()
            .add_service(self.into_service())
            .serve_with_incoming_shutdown(
                tonic::transport::server::TcpIncoming::from(listener),
                shutdown,
            )
            .await
    }

    fn sign(&self, request: &Request<IstioCertificateRequest>) -> Result<Vec<String>, Status> {
        let peer_certs = request.peer_certs();
        let caller = self
            .authn
            .authenticate(request.metadata(), peer_certs.as_deref().map(Vec::as_slice))?;
        let message = request.get_ref();
        let impersonated = match message
            .metadata
            .as_ref()
            .and_then(|m| m.fields.get(IMPERSONATED_IDENTITY))
            .and_then(|v| v.kind.as_ref())
        {
            None => None,
            Some(prost_types::value::Kind::StringValue(s)) => {
                Some(s.parse::<Identity>().map_err(|e| {
                    Status::invalid_argument(format!("invalid {IMPERSONATED_IDENTITY}: {e}"))
                })?)
            }
            Some(_) => {
                return Err(Status::invalid_argument(format!(
                    "{IMPERSONATED_IDENTITY} must be a string"
                )));
            }
        };
        let ttl = u64::try_from(message.validity_duration)
            .ok()
            .filter(|s| *s > 0)
            .map_or(DEFAULT_TTL, Duration::from_secs)
            .min(MAX_LEAF_TTL);
        let chain = self
            .ca
            .sign_csr(&message.csr, ttl, |identity| {
                let refuse = |reason: String| CertError::Unauthorized {
                    identity: identity.clone(),
                    reason,
                };
                if let Some(asked) = &impersonated
                    && asked != identity
                {
                    return Err(refuse(format!(
                        "the csr is for {identity} but {IMPERSONATED_IDENTITY} is {asked}"
                    )));
                }
                self.authn
                    .authorize_certificate(caller.as_ref(), identity, impersonated.is_some())
                    .map_err(refuse)?;
                match &self.authorizer {
                    Some(authorize) => authorize(&SignRequest {
                        identity,
                        impersonated: impersonated.is_some(),
                        metadata: request.metadata(),
                    })
                    .map_err(refuse),
                    None => Ok(()),
                }
            })
            .map_err(status_of)?;
        Ok(chain
            .iter()
            .map(|c| crate::cert::to_pem("CERTIFICATE", c))
            .collect())
    }
}

fn status_of(err: CertError) -> Status {
    match err {
        CertError::Unauthorized { .. } | CertError::WrongTrustDomain { .. } => {
            Status::permission_denied(err.to_string())
        }
        CertError::Parse { .. }
        | CertError::NoSpiffeId { .. }
        | CertError::BadSpiffeId { .. }
        | CertError::CsrNames { .. }
        | CertError::Validity { .. } => Status::invalid_argument(err.to_string()),
        other => {
            tracing::error!(error = %other, "failed to sign a certificate");
            Status::internal("failed to sign the certificate")
        }
    }
}

#[tonic::async_trait]
impl IstioCertificateService for CaServer {
    async fn create_certificate(
        &self,
        request: Request<IstioCertificateRequest>,
    ) -> Result<Response<IstioCertificateResponse>, Status> {
        let cert_chain = self.sign(&request)?;
        Ok(Response::new(IstioCertificateResponse { cert_chain }))
    }
}
