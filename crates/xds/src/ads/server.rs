//! The delta ADS server.

use std::{
    collections::{HashMap, HashSet},
    future::Future,
    pin::Pin,
    sync::{Arc, Mutex, MutexGuard},
};

use futures_util::Stream;
use tokio::{
    net::TcpListener,
    sync::{mpsc, watch},
};
use tonic::{Request, Response, Status, Streaming, transport::server::TcpIncoming};
use tracing::{debug, info, warn};

use super::{AdsError, Store};
use crate::proto::discovery::{
    DeltaDiscoveryRequest, DeltaDiscoveryResponse, DiscoveryRequest, DiscoveryResponse, Resource,
    aggregated_discovery_service_server::{
        AggregatedDiscoveryService, AggregatedDiscoveryServiceServer,
    },
};

/// A NACK the server received.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Nack {
    /// The client's node id.
    pub node_id: String,
    /// The type URL rejected.
    pub type_url: String,
    /// The nonce of the rejected response.
    pub nonce: String,
    /// `error_detail.message`.
    pub error: String,
}

/// A stream that opened a type with `initial_resource_versions`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Resume {
    /// The client's node id.
    pub node_id: String,
    /// The type URL.
    pub type_url: String,
    /// The versions the client said it holds.
    pub initial_resource_versions: HashMap<String, String>,
}

/// The headers a stream opened with.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StreamHeaders {
    /// `authorization` (e.g. `Bearer <jwt>`).
    pub authorization: Option<String>,
    /// `clusterid`.
    pub cluster_id: Option<String>,
}

/// Counters and records of what a server saw, for tests and debugging.
#[derive(Debug, Clone, Default)]
#[non_exhaustive]
pub struct ServerStats {
    /// Streams opened.
    pub streams: u64,
    /// The headers of each stream, oldest first.
    pub stream_headers: Vec<StreamHeaders>,
    /// Responses sent.
    pub responses: u64,
    /// Resources sent (added or updated).
    pub resources_sent: u64,
    /// Removals sent.
    pub removals_sent: u64,
    /// ACKs received.
    pub acks: u64,
    /// NACKs received, oldest first.
    pub nacks: Vec<Nack>,
    /// Types opened with known versions, oldest first.
    pub resumes: Vec<Resume>,
}

/// A delta ADS server over a [`Store`]: every change to the store is
/// pushed to the streams subscribed to it.
#[derive(Debug, Clone)]
pub struct AdsServer {
    store: Store,
    stats: Arc<Mutex<ServerStats>>,
    /// Flipped to `true` when the server shuts down; each stream watches it
    /// and ends, so graceful shutdown does not wait on endless streams.
    closing: watch::Sender<bool>,
}

impl AdsServer {
    /// A server for `store`.
    pub fn new(store: Store) -> Self {
        Self {
            store,
            stats: Arc::default(),
            closing: watch::channel(false).0,
        }
    }

    /// The store served.
    pub fn store(&self) -> &Store {
        &self.store
    }

    /// A snapshot of the counters.
    pub fn stats(&self) -> ServerStats {
        self.lock_stats().clone()
    }

    fn lock_stats(&self) -> MutexGuard<'_, ServerStats> {
        self.stats.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The tonic service, to mount on a server of one's own. Its streams
    /// end when [`close_streams`](Self::close_streams) is called.
    pub fn into_service(self) -> AggregatedDiscoveryServiceServer<Self> {
        AggregatedDiscoveryServiceServer::new(self)
            .max_decoding_message_size(256 << 20)
            .max_encoding_message_size(usize::MAX)
    }

    /// Ends every open stream (clients will reconnect).
    pub fn close_streams(&self) {
        self.closing.send_replace(true);
    }

    /// Serves plaintext gRPC on `listener` until `shutdown` completes, then
    /// ends the open streams and returns.
    pub async fn serve(
        self,
        listener: TcpListener,
        shutdown: impl Future<Output = ()> + Send,
    ) -> Result<(), AdsError> {
        let local = listener.local_addr().ok();
        info!(?local, "xds server listening");
        let closer = self.clone();
        tonic::transport::Server::builder()
            .add_service(self.into_service())
            .serve_with_incoming_shutdown(TcpIncoming::from(listener), async move {
                shutdown.await;
                closer.close_streams();
            })
            .await
            .map_err(|source| AdsError::Serve { source })
    }
}

type ResponseStream = Pin<Box<dyn Stream<Item = Result<DeltaDiscoveryResponse, Status>> + Send>>;
type SotwStream = Pin<Box<dyn Stream<Item = Result<DiscoveryResponse, Status>> + Send>>;

#[tonic::async_trait]
impl AggregatedDiscoveryService for AdsServer {
    type StreamAggregatedResourcesStream = SotwStream;
    type DeltaAggregatedResourcesStream = ResponseStream;

    async fn stream_aggregated_resources(
        &self,
        _request: Request<Streaming<DiscoveryRequest>>,
    ) -> Result<Response<Self::StreamAggregatedResourcesStream>, Status> {
        Err(Status::unimplemented(
            "only delta xds (DeltaAggregatedResources) is served",
        ))
    }

    async fn delta_aggregated_resources(
        &self,
        request: Request<Streaming<DeltaDiscoveryRequest>>,
    ) -> Result<Response<Self::DeltaAggregatedResourcesStream>, Status> {
        let header = |name: &str| {
            request
                .metadata()
                .get(name)
                .and_then(|v| v.to_str().ok())
                .map(str::to_owned)
        };
        let headers = StreamHeaders {
            authorization: header("authorization"),
            cluster_id: header("clusterid"),
        };
        {
            let mut stats = self.lock_stats();
            stats.streams += 1;
            stats.stream_headers.push(headers);
        }
        let inbound = request.into_inner();
        // Responses for this stream; the sender lives in the stream task.
        let (tx, rx) = mpsc::channel(16);
        let conn = Conn {
            server: self.clone(),
            node_id: String::new(),
            subs: HashMap::new(),
            nonce: 0,
        };
        tokio::spawn(conn.run(inbound, tx));
        let outbound = futures_util::stream::unfold(rx, |mut rx| async move {
            rx.recv().await.map(|item| (item, rx))
        });
        Ok(Response::new(Box::pin(outbound)))
    }
}

/// What one stream subscribed to of one type.
#[derive(Debug, Default)]
struct Sub {
    wildcard: bool,
    names: HashSet<String>,
    /// Name → version the client holds as far as the server knows (sent,
    /// or declared in `initial_resource_versions`).
    sent: HashMap<String, String>,
}

impl Sub {
    fn wants(&self, name: &str) -> bool {
        self.wildcard || self.names.contains(name)
    }
}

/// One stream's state; lives in its task.
struct Conn {
    server: AdsServer,
    node_id: String,
    subs: HashMap<String, Sub>,
    nonce: u64,
}

type Tx = mpsc::Sender<Result<DeltaDiscoveryResponse, Status>>;

impl Conn {
    async fn run(mut self, mut inbound: Streaming<DeltaDiscoveryRequest>, tx: Tx) {
        let mut changes = self.server.store.changes();
        let mut closing = self.server.closing.subscribe();
        loop {
            tokio::select! {
                () = async { let _ = closing.wait_for(|c| *c).await; } => break,
                request = inbound.message() => match request {
                    Ok(Some(request)) => {
                        if self.on_request(request, &tx).await.is_err() {
                            break;
                        }
                    }
                    Ok(None) => break,
                    Err(status) => {
                        debug!(node = %self.node_id, %status, "xds stream ended");
                        break;
                    }
                },
                changed = changes.changed() => {
                    if changed.is_err() {
                        break;
                    }
                    let types: Vec<String> = self.subs.keys().cloned().collect();
                    for type_url in types {
                        if self.push(&type_url, false, &tx).await.is_err() {
                            return;
                        }
                    }
                }
            }
        }
        debug!(node = %self.node_id, "xds stream closed");
    }

    async fn on_request(&mut self, request: DeltaDiscoveryRequest, tx: &Tx) -> Result<(), ()> {
        if let Some(node) = &request.node
            && self.node_id.is_empty()
        {
            self.node_id = node.id.clone();
            info!(node = %self.node_id, "xds client connected");
        }
        let type_url = request.type_url;
        if !request.response_nonce.is_empty() {
            let mut stats = self.server.lock_stats();
            match request.error_detail {
                Some(status) => {
                    warn!(node = %self.node_id, %type_url, nonce = %request.response_nonce,
                        error = %status.message, "xds nack");
                    stats.nacks.push(Nack {
                        node_id: self.node_id.clone(),
                        type_url: type_url.clone(),
                        nonce: request.response_nonce.clone(),
                        error: status.message,
                    });
                }
                None => stats.acks += 1,
            }
        }
        let is_new = !self.subs.contains_key(&type_url);
        let sub = self.subs.entry(type_url.clone()).or_default();
        if is_new {
            sub.wildcard = request.resource_names_subscribe.is_empty()
                || request.resource_names_subscribe.iter().any(|n| n == "*");
            sub.names = request
                .resource_names_subscribe
                .into_iter()
                .filter(|n| n != "*")
                .collect();
            if !request.initial_resource_versions.is_empty() {
                self.server.lock_stats().resumes.push(Resume {
                    node_id: self.node_id.clone(),
                    type_url: type_url.clone(),
                    initial_resource_versions: request.initial_resource_versions.clone(),
                });
            }
            sub.sent = request.initial_resource_versions;
            return self.push(&type_url, true, tx).await;
        }
        let changed = !request.resource_names_subscribe.is_empty()
            || !request.resource_names_unsubscribe.is_empty();
        for name in request.resource_names_subscribe {
            if name == "*" {
                sub.wildcard = true;
            } else {
                sub.names.insert(name);
            }
        }
        for name in request.resource_names_unsubscribe {
            if name == "*" {
                sub.wildcard = false;
            } else {
                sub.names.remove(&name);
            }
        }
        if changed {
            // Forget what is no longer wanted so a re-subscribe resends it.
            sub.sent
                .retain(|name, _| sub.wildcard || sub.names.contains(name));
            return self.push(&type_url, false, tx).await;
        }
        Ok(())
    }

    /// Sends what the client lacks of `type_url`; with `always`, sends even
    /// an empty response (the first answer of a type, so clients can ACK
    /// and become ready).
    async fn push(&mut self, type_url: &str, always: bool, tx: &Tx) -> Result<(), ()> {
        let Some(sub) = self.subs.get_mut(type_url) else {
            return Ok(());
        };
        let mut resources = Vec::new();
        let mut removed = Vec::new();
        {
            let state = self.server.store.lock();
            let entries = state.types.get(type_url);
            let mut offer = |name: &String, entry: &super::store::Entry| {
                if sub.sent.get(name) != Some(&entry.version) {
                    resources.push(Resource {
                        name: name.clone(),
                        version: entry.version.clone(),
                        resource: Some(entry.resource.clone()),
                        ..Default::default()
                    });
                }
            };
            if let Some(entries) = entries {
                if sub.wildcard {
                    for (name, entry) in entries {
                        offer(name, entry);
                    }
                } else {
                    for name in &sub.names {
                        if let Some(entry) = entries.get(name) {
                            offer(name, entry);
                        }
                    }
                }
            }
            for name in sub.sent.keys() {
                let present = entries.is_some_and(|e| e.contains_key(name));
                if !present || !sub.wants(name) {
                    removed.push(name.clone());
                }
            }
        }
        for name in &removed {
            sub.sent.remove(name);
        }
        for r in &resources {
            sub.sent.insert(r.name.clone(), r.version.clone());
        }
        if resources.is_empty() && removed.is_empty() && !always {
            return Ok(());
        }
        self.nonce += 1;
        {
            let mut stats = self.server.lock_stats();
            stats.responses += 1;
            stats.resources_sent += resources.len() as u64;
            stats.removals_sent += removed.len() as u64;
        }
        debug!(node = %self.node_id, %type_url, resources = resources.len(),
            removed = removed.len(), nonce = self.nonce, "xds push");
        let response = DeltaDiscoveryResponse {
            type_url: type_url.to_owned(),
            resources,
            removed_resources: removed,
            nonce: self.nonce.to_string(),
            system_version_info: self.nonce.to_string(),
            ..Default::default()
        };
        tx.send(Ok(response)).await.map_err(|_| ())
    }
}
