//! The delta ADS client.

use std::{
    collections::{HashMap, hash_map::RandomState},
    fmt,
    future::Future,
    hash::{BuildHasher, Hasher},
    marker::PhantomData,
    path::PathBuf,
    time::{Duration, Instant},
};

use prost::Message;
use tokio::sync::{mpsc, watch};
use tonic::{
    metadata::MetadataValue,
    transport::{Channel, Endpoint},
};
use tracing::{debug, info, warn};

use super::{AdsError, NodeIdentity};
use crate::{
    proto::{
        discovery::{
            DeltaDiscoveryRequest, DeltaDiscoveryResponse, Resource,
            aggregated_discovery_service_client::AggregatedDiscoveryServiceClient,
        },
        rpc,
    },
    resource::{DecodeError, decode_any},
};

/// gRPC `INVALID_ARGUMENT`, the code a NACK's `error_detail` carries.
const INVALID_ARGUMENT: i32 = 3;

/// The error a [`Handler`] rejects an update with; its text is sent to
/// the control plane in the NACK.
pub type HandlerError = Box<dyn std::error::Error + Send + Sync>;

/// One decoded resource of a delta response.
#[derive(Debug, Clone, PartialEq)]
pub struct XdsResource<T> {
    /// The resource name (for addresses, the workload uid or
    /// `namespace/hostname` of a service).
    pub name: String,
    /// The version the server gave it.
    pub version: String,
    /// The decoded body.
    pub resource: T,
}

/// Receives the resources of one type URL.
///
/// `apply` sees every delta response for its type, with the resources
/// already decoded. Returning an error NACKs the response with the error's
/// text; the client then keeps the versions it had, so a handler should
/// apply a response all-or-nothing. Called on the client's task: keep it
/// short and non-blocking.
pub trait Handler<T>: Send + 'static {
    /// Applies added or updated resources and removed names.
    fn apply(
        &mut self,
        updated: Vec<XdsResource<T>>,
        removed: Vec<String>,
    ) -> Result<(), HandlerError>;
}

impl<T, F> Handler<T> for F
where
    F: FnMut(Vec<XdsResource<T>>, Vec<String>) -> Result<(), HandlerError> + Send + 'static,
{
    fn apply(
        &mut self,
        updated: Vec<XdsResource<T>>,
        removed: Vec<String>,
    ) -> Result<(), HandlerError> {
        self(updated, removed)
    }
}

/// What to ask for of a type.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Subscription {
    /// Everything the server has (an empty initial subscribe list, as
    /// ztunnel sends).
    Wildcard,
    /// Only these names.
    Names(Vec<String>),
}

/// Reconnect delays: exponential from `initial` to `max`, each one
/// jittered down to between half and all of its value. A stream that
/// delivered a response resets the delay.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Backoff {
    /// The first delay.
    pub initial: Duration,
    /// The largest delay.
    pub max: Duration,
}

impl Default for Backoff {
    fn default() -> Self {
        Self {
            initial: Duration::from_millis(100),
            max: Duration::from_secs(15),
        }
    }
}

impl Backoff {
    fn jittered(delay: Duration) -> Duration {
        let mut hasher = RandomState::new().build_hasher();
        hasher.write_u128(Instant::now().elapsed().as_nanos());
        let fraction = 0.5 + (hasher.finish() % 1_000) as f64 / 2_000.0;
        delay.mul_f64(fraction)
    }
}

/// Settings of an [`AdsClient`].
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct AdsConfig {
    /// `https://host:port`, or `http://host:port` for a plaintext control
    /// plane (local use).
    pub address: String,
    /// Who this proxy is.
    pub node: NodeIdentity,
    /// A file holding the bearer token, read again for every connection.
    pub token_path: Option<PathBuf>,
    /// A fixed bearer token (istio/ztunnel's `AUTH_TOKEN` when it is not a
    /// file); used when `token_path` is unset.
    pub static_token: Option<String>,
    /// Extra request headers on every stream (istio/ztunnel's
    /// `XDS_HEADER_<NAME>`), checked when the client is built.
    pub headers: Vec<(String, String)>,
    /// Sent as the `clusterid` header when set.
    pub cluster_id: Option<String>,
    /// PEM roots the control plane's certificate must chain to; required
    /// for `https://`.
    pub root_certs_pem: Option<String>,
    /// The name to verify the server certificate against (default: the
    /// address's host).
    pub tls_server_name: Option<String>,
    /// Reconnect delays.
    pub backoff: Backoff,
    /// Time allowed to establish a connection.
    pub connect_timeout: Duration,
    /// Largest response accepted (a full push of a large mesh is one
    /// message). Default 256 MiB.
    pub max_message_size: usize,
}

impl AdsConfig {
    /// A configuration with defaults for everything but the address and node.
    pub fn new(address: impl Into<String>, node: NodeIdentity) -> Self {
        Self {
            address: address.into(),
            node,
            token_path: None,
            static_token: None,
            headers: Vec::new(),
            cluster_id: None,
            root_certs_pem: None,
            tls_server_name: None,
            backoff: Backoff::default(),
            connect_timeout: Duration::from_secs(10),
            max_message_size: 256 << 20,
        }
    }
}

/// A type-erased handler that decodes, then calls a typed [`Handler`].
trait ErasedHandler: Send {
    fn apply(&mut self, resources: Vec<Resource>, removed: Vec<String>) -> Result<(), String>;
}

struct Typed<T, H> {
    handler: H,
    _type: PhantomData<fn() -> T>,
}

impl<T, H> ErasedHandler for Typed<T, H>
where
    T: Message + prost::Name + Default,
    H: Handler<T>,
{
    fn apply(&mut self, resources: Vec<Resource>, removed: Vec<String>) -> Result<(), String> {
        let mut decoded = Vec::with_capacity(resources.len());
        for r in resources {
            let Some(any) = r.resource.as_ref() else {
                return Err(DecodeError::Missing { name: r.name }.to_string());
            };
            let resource = decode_any::<T>(&r.name, any).map_err(|e| error_chain(&e))?;
            decoded.push(XdsResource {
                name: r.name,
                version: r.version,
                resource,
            });
        }
        self.handler
            .apply(decoded, removed)
            .map_err(|e| error_chain(e.as_ref()))
    }
}

/// Adds TLS with the configured roots to an `https://` endpoint.
#[cfg(any(feature = "aws-lc-rs", feature = "ring"))]
fn with_tls(endpoint: Endpoint, config: &AdsConfig) -> Result<Endpoint, AdsError> {
    use tonic::transport::{Certificate, ClientTlsConfig};
    let bad = |reason: String| AdsError::Config { reason };
    let roots = config.root_certs_pem.as_deref().ok_or_else(|| {
        bad("an https xds address needs root certificates (root_certs_pem)".into())
    })?;
    let mut tls = ClientTlsConfig::new().ca_certificate(Certificate::from_pem(roots));
    if let Some(name) = &config.tls_server_name {
        tls = tls.domain_name(name.clone());
    }
    endpoint
        .tls_config(tls)
        .map_err(|e| bad(format!("bad xds tls settings: {e}")))
}

/// Built without a TLS provider: `https://` cannot work.
#[cfg(not(any(feature = "aws-lc-rs", feature = "ring")))]
fn with_tls(_endpoint: Endpoint, _config: &AdsConfig) -> Result<Endpoint, AdsError> {
    Err(AdsError::Config {
        reason: "built without tls (enable the aws-lc-rs or ring feature) but the xds address is https://".into(),
    })
}

/// Reads the bearer token afresh (the kubelet rotates it). An owned path,
/// so the client's future stays `Send` without its handlers being `Sync`.
async fn read_token(path: Option<PathBuf>) -> Result<Option<String>, AdsError> {
    let Some(path) = path else {
        return Ok(None);
    };
    match tokio::fs::read_to_string(&path).await {
        Ok(token) => Ok(Some(token.trim().to_owned())),
        Err(source) => Err(AdsError::Token { path, source }),
    }
}

fn error_chain(err: &(dyn std::error::Error + 'static)) -> String {
    let mut text = err.to_string();
    let mut source = err.source();
    while let Some(s) = source {
        text.push_str(": ");
        text.push_str(&s.to_string());
        source = s.source();
    }
    text
}

/// One subscribed type: its handler and what the client holds of it.
struct Watch {
    type_url: String,
    subscription: Subscription,
    handler: Box<dyn ErasedHandler>,
    /// Name → version of every resource accepted so far; sent as
    /// `initial_resource_versions` on reconnect. Lives as long as the client.
    versions: HashMap<String, String>,
    /// Whether a response of this type has been ACKed once (ever).
    acked: bool,
}

/// Builds an [`AdsClient`]; add one [`watch`](Self::watch) per type URL.
pub struct AdsClientBuilder {
    config: AdsConfig,
    watches: Vec<Watch>,
}

impl fmt::Debug for AdsClientBuilder {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("AdsClientBuilder")
            .field("config", &self.config)
            .field(
                "types",
                &self.watches.iter().map(|w| &w.type_url).collect::<Vec<_>>(),
            )
            .finish()
    }
}

impl AdsClientBuilder {
    /// Subscribes to `T`'s type URL (`T::type_url()`, e.g.
    /// [`ADDRESS_TYPE_URL`](crate::ADDRESS_TYPE_URL) for
    /// [`Address`](crate::proto::istio::workload::Address)) and sends its
    /// resources to `handler`. A second watch of the same type replaces
    /// the first.
    pub fn watch<T, H>(mut self, subscription: Subscription, handler: H) -> Self
    where
        T: Message + prost::Name + Default + 'static,
        H: Handler<T>,
    {
        let type_url = T::type_url();
        self.watches.retain(|w| w.type_url != type_url);
        self.watches.push(Watch {
            type_url,
            subscription,
            handler: Box::new(Typed {
                handler,
                _type: PhantomData,
            }),
            versions: HashMap::new(),
            acked: false,
        });
        self
    }

    /// Checks the configuration and prepares the client (no connection
    /// yet).
    pub fn build(self) -> Result<AdsClient, AdsError> {
        let mut config = self.config;
        // Istio's charts give `host:port`; like ztunnel, take that as TLS.
        if !config.address.contains("://") {
            config.address = format!("https://{}", config.address);
        }
        let bad = |reason: String| AdsError::Config { reason };
        if self.watches.is_empty() {
            return Err(bad("no type urls to watch".into()));
        }
        let mut endpoint = Endpoint::from_shared(config.address.clone())
            .map_err(|e| bad(format!("bad xds address {:?}: {e}", config.address)))?
            .connect_timeout(config.connect_timeout)
            .http2_keep_alive_interval(Duration::from_secs(30))
            .keep_alive_timeout(Duration::from_secs(10));
        if config.address.starts_with("https://") {
            endpoint = with_tls(endpoint, &config)?;
        } else if !config.address.starts_with("http://") {
            return Err(bad(format!(
                "xds address {:?} must start with https:// or http://",
                config.address
            )));
        }
        let (ready, _) = watch::channel(false);
        Ok(AdsClient {
            config,
            endpoint,
            watches: self.watches,
            ready,
        })
    }
}

/// A delta ADS client: one stream carrying every watched type, re-opened
/// with backoff whenever it ends.
pub struct AdsClient {
    config: AdsConfig,
    endpoint: Endpoint,
    watches: Vec<Watch>,
    /// `true` once every type has been ACKed once; stays `true` across
    /// reconnects.
    ready: watch::Sender<bool>,
}

impl fmt::Debug for AdsClient {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("AdsClient")
            .field("config", &self.config)
            .field(
                "types",
                &self.watches.iter().map(|w| &w.type_url).collect::<Vec<_>>(),
            )
            .field("ready", &*self.ready.borrow())
            .finish()
    }
}

/// How a stream ended without an error of its own.
struct StreamEnd {
    /// Whether any response arrived (resets the backoff).
    progressed: bool,
}

impl AdsClient {
    /// Starts building a client.
    pub fn builder(config: AdsConfig) -> AdsClientBuilder {
        AdsClientBuilder {
            config,
            watches: Vec::new(),
        }
    }

    /// A readiness signal: becomes `true` once every watched type has been
    /// ACKed once. Wait with `ready.wait_for(|r| *r).await`.
    pub fn ready(&self) -> watch::Receiver<bool> {
        self.ready.subscribe()
    }

    /// Runs until `shutdown` completes: connects, streams, and reconnects
    /// with jittered exponential backoff, resuming with the versions held.
    pub async fn run(mut self, shutdown: impl Future<Output = ()>) {
        tokio::pin!(shutdown);
        let backoff = self.config.backoff;
        let mut delay = backoff.initial;
        loop {
            let outcome = tokio::select! {
                outcome = self.stream_once() => outcome,
                () = &mut shutdown => return,
            };
            match outcome {
                Ok(end) => {
                    super::client_stats().terminated(super::Termination::Complete);
                    info!(address = %self.config.address, "xds stream closed by the server");
                    if end.progressed {
                        delay = backoff.initial;
                    }
                }
                Err((error, progressed)) => {
                    let why = if matches!(error, AdsError::Connect { .. }) {
                        super::Termination::ConnectionError
                    } else {
                        super::Termination::Error
                    };
                    super::client_stats().terminated(why);
                    warn!(error = %error_chain(&error), "xds stream failed");
                    if progressed {
                        delay = backoff.initial;
                    }
                }
            }
            let sleep = Backoff::jittered(delay);
            debug!(?sleep, "xds reconnect backoff");
            delay = (delay * 2).min(backoff.max);
            tokio::select! {
                () = tokio::time::sleep(sleep) => {}
                () = &mut shutdown => return,
            }
        }
    }

    fn initial_requests(&self) -> Vec<DeltaDiscoveryRequest> {
        self.watches
            .iter()
            .enumerate()
            .map(|(i, w)| DeltaDiscoveryRequest {
                node: (i == 0).then(|| self.config.node.to_node()),
                type_url: w.type_url.clone(),
                resource_names_subscribe: match &w.subscription {
                    Subscription::Wildcard => Vec::new(),
                    Subscription::Names(names) => names.clone(),
                },
                initial_resource_versions: w.versions.clone(),
                ..Default::default()
            })
            .collect()
    }

    /// One connection and stream; returns when the stream ends.
    async fn stream_once(&mut self) -> Result<StreamEnd, (AdsError, bool)> {
        let address = self.config.address.clone();
        let stream_err = |source: tonic::Status| AdsError::Stream {
            address: address.clone(),
            source: Box::new(source),
        };
        let token = match read_token(self.config.token_path.clone())
            .await
            .map_err(|e| (e, false))?
        {
            Some(t) => Some(t),
            None => self.config.static_token.clone(),
        };
        let channel: Channel = self.endpoint.connect().await.map_err(|source| {
            (
                AdsError::Connect {
                    address: address.clone(),
                    source,
                },
                false,
            )
        })?;
        let mut client = AggregatedDiscoveryServiceClient::new(channel)
            .max_decoding_message_size(self.config.max_message_size)
            .max_encoding_message_size(self.config.max_message_size);

        // Requests flow through this channel; it lives as long as the stream.
        let (tx, rx) = mpsc::unbounded_channel::<DeltaDiscoveryRequest>();
        for request in self.initial_requests() {
            let _ = tx.send(request);
        }
        let outbound = futures_util::stream::unfold(rx, |mut rx| async move {
            rx.recv().await.map(|request| (request, rx))
        });
        let mut request = tonic::Request::new(outbound);
        if let Some(token) = token {
            let value = MetadataValue::try_from(format!("Bearer {token}")).map_err(|_| {
                (
                    AdsError::Config {
                        reason: "the xds token is not a valid header value".into(),
                    },
                    false,
                )
            })?;
            request.metadata_mut().insert("authorization", value);
        }
        if let Some(cluster) = &self.config.cluster_id {
            let value = MetadataValue::try_from(cluster.as_str()).map_err(|_| {
                (
                    AdsError::Config {
                        reason: "the cluster id is not a valid header value".into(),
                    },
                    false,
                )
            })?;
            request.metadata_mut().insert("clusterid", value);
        }
        for (name, value) in &self.config.headers {
            let (Ok(k), Ok(v)) = (
                name.parse::<tonic::metadata::AsciiMetadataKey>(),
                MetadataValue::try_from(value.as_str()),
            ) else {
                return Err((
                    AdsError::Config {
                        reason: format!("xds header {name}: not a valid header"),
                    },
                    false,
                ));
            };
            request.metadata_mut().insert(k, v);
        }
        let mut inbound = client
            .delta_aggregated_resources(request)
            .await
            .map_err(|s| (stream_err(s), false))?
            .into_inner();
        info!(address = %address, types = self.watches.len(), "xds stream open");

        let mut progressed = false;
        loop {
            let response = match inbound.message().await {
                Ok(Some(response)) => response,
                Ok(None) => return Ok(StreamEnd { progressed }),
                Err(status) => return Err((stream_err(status), progressed)),
            };
            progressed = true;
            let size: usize = response
                .resources
                .iter()
                .filter_map(|r| r.resource.as_ref())
                .map(|r| r.value.len())
                .sum();
            super::client_stats().message(&response.type_url, size as u64);
            let reply = self.on_response(response);
            if tx.send(reply).is_err() {
                return Ok(StreamEnd { progressed });
            }
        }
    }

    /// Applies one response and builds its ACK or NACK.
    fn on_response(&mut self, response: DeltaDiscoveryResponse) -> DeltaDiscoveryRequest {
        let DeltaDiscoveryResponse {
            type_url,
            resources,
            removed_resources,
            nonce,
            ..
        } = response;
        let nack = |message: String| DeltaDiscoveryRequest {
            type_url: type_url.clone(),
            response_nonce: nonce.clone(),
            error_detail: Some(rpc::Status {
                code: INVALID_ARGUMENT,
                message,
                details: Vec::new(),
            }),
            ..Default::default()
        };
        let Some(watch) = self.watches.iter_mut().find(|w| w.type_url == type_url) else {
            warn!(%type_url, "xds response for a type not subscribed to");
            return nack(format!("type {type_url} is not subscribed"));
        };
        let accepted: Vec<(String, String)> = resources
            .iter()
            .map(|r| (r.name.clone(), r.version.clone()))
            .collect();
        let (updated, removed) = (accepted.len(), removed_resources.len());
        match watch.handler.apply(resources, removed_resources.clone()) {
            Ok(()) => {
                for name in &removed_resources {
                    watch.versions.remove(name);
                }
                watch.versions.extend(accepted);
                debug!(%type_url, updated, removed, %nonce, "xds ack");
                if !watch.acked {
                    watch.acked = true;
                    if self.watches.iter().all(|w| w.acked) {
                        info!("xds ready: every type acked once");
                        self.ready.send_replace(true);
                    }
                }
                DeltaDiscoveryRequest {
                    type_url,
                    response_nonce: nonce,
                    ..Default::default()
                }
            }
            Err(error) => {
                warn!(%type_url, updated, removed, %nonce, %error, "xds nack");
                nack(error)
            }
        }
    }
}
