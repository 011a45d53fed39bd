//! The agent's front: the plugin-event socket (one short HTTP/1 exchange
//! per CNI ADD or DEL) and the loop that polls the pod source and resyncs
//! with the kernel, each step run off the async workers.
//!
//! Plugin events are served on a thread of their own (`plugin-events`,
//! a single-threaded runtime) that handles each event in place: an ADD's
//! answer is written by the thread that read the request, with no hand-off
//! to another thread and back. Blocking that thread is its purpose; the
//! agent's lock serializes the events' kernel work anyway. Events whose
//! requests arrive together are queued first and handled with one
//! reconcile ([`Agent::enqueue`], [`Agent::finish`]).

use std::convert::Infallible;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::{Request, Response, StatusCode};
use tracing::{debug, info, warn};

use super::Agent;
use crate::error::Error;
use crate::event::{ADD_PATH, DEL_PATH, EventKind, PodEvent};

/// Plugin connections served at once (each is one short request).
const PLUGIN_CONNECTIONS: usize = 256;

/// The thread plugin events are served and handled on: a single-threaded
/// runtime that [`serve_on`] runs on a thread of its own.
///
/// Tasks that belong beside the events can be spawned on it before it
/// runs ([`EventThread::handle`]); the in-pod data plane's ZDS loop is one,
/// so that handing it a pod wakes no other thread. Such tasks run while
/// the events are served and are dropped when serving ends.
pub struct EventThread {
    rt: Option<tokio::runtime::Runtime>,
    handle: tokio::runtime::Handle,
}

impl EventThread {
    /// Builds the runtime (the thread starts in [`serve_on`]).
    pub fn new() -> Result<Self, Error> {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .map_err(|e| Error::io("starting the plugin-event runtime", e))?;
        Ok(EventThread {
            handle: rt.handle().clone(),
            rt: Some(rt),
        })
    }

    /// A handle to spawn tasks on (or enter, to register sockets with).
    pub fn handle(&self) -> tokio::runtime::Handle {
        self.handle.clone()
    }
}

impl std::fmt::Debug for EventThread {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EventThread").finish_non_exhaustive()
    }
}

impl Drop for EventThread {
    /// A runtime that never ran on its thread is shut down without
    /// blocking, so that dropping it inside async code is safe.
    fn drop(&mut self) {
        if let Some(rt) = self.rt.take() {
            rt.shutdown_background();
        }
    }
}

/// Serves plugin events on `<run_dir>/pluginevent.sock`, polls the pod
/// source every `poll`, reconciles with the kernel every `resync`, until
/// `shutdown` completes. The socket file is removed on return.
///
/// The events are served on a new [`EventThread`]; [`serve_on`] takes one
/// that already has tasks.
pub async fn serve(
    agent: Arc<Agent>,
    socket: PathBuf,
    poll: Duration,
    resync: Duration,
    shutdown: impl std::future::Future<Output = ()>,
) -> Result<(), Error> {
    serve_on(EventThread::new()?, agent, socket, poll, resync, shutdown).await
}

/// [`serve`] with the plugin events on `events`, whose tasks run beside
/// them until this returns.
pub async fn serve_on(
    events: EventThread,
    agent: Arc<Agent>,
    socket: PathBuf,
    poll: Duration,
    resync: Duration,
    shutdown: impl std::future::Future<Output = ()>,
) -> Result<(), Error> {
    if let Some(dir) = socket.parent() {
        std::fs::create_dir_all(dir)
            .map_err(|e| Error::io(format!("creating {}", dir.display()), e))?;
    }
    match std::fs::remove_file(&socket) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(Error::io(format!("removing stale {}", socket.display()), e)),
    }
    let listener = std::os::unix::net::UnixListener::bind(&socket)
        .map_err(|e| Error::io(format!("binding {}", socket.display()), e))?;
    let _cleanup = RemoveOnDrop(socket.clone());
    listener
        .set_nonblocking(true)
        .map_err(|e| Error::io(format!("setting {} non-blocking", socket.display()), e))?;
    let listener = {
        let _in = events.handle().enter();
        tokio::net::UnixListener::from_std(listener)
            .map_err(|e| Error::io(format!("registering {}", socket.display()), e))?
    };
    info!(socket = %socket.display(), "listening for plugin events");
    let mut poll_tick = tokio::time::interval(poll);
    let changed = agent.source_changed.clone();
    let source_news = || {
        let changed = changed.clone();
        async move {
            match changed {
                Some(n) => n.notified().await,
                None => std::future::pending().await,
            }
        }
    };
    let mut resync_tick = tokio::time::interval(resync);
    resync_tick.tick().await;
    // Plugin connections: one short HTTP/1 exchange each, from the local
    // plugin binary; the shared accept loop bounds them and backs off when
    // accept fails (out of descriptors, say).
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let (done, plugin_server) = tokio::sync::oneshot::channel::<()>();
    let limits = ambit_server::Limits {
        drain_deadline: Duration::from_secs(1),
        max_connections: PLUGIN_CONNECTIONS,
    };
    let events_thread = {
        let agent = agent.clone();
        std::thread::Builder::new()
            .name("plugin-events".into())
            .spawn(move || {
                // Taken here, so that a thread that fails to start drops
                // `events` (not the runtime itself) in async code.
                let mut events = events;
                let Some(rt) = events.rt.take() else { return };
                rt.block_on(ambit_server::run(
                    listener,
                    async move {
                        let _ = stopped.await;
                    },
                    limits,
                    move |stream, _, _| {
                        let agent = agent.clone();
                        async move {
                            let svc =
                                hyper::service::service_fn(move |req| handle(agent.clone(), req));
                            if let Err(e) = hyper::server::conn::http1::Builder::new()
                                .serve_connection(hyper_util::rt::TokioIo::new(stream), svc)
                                .await
                            {
                                debug!(error = %e, "plugin connection");
                            }
                        }
                    },
                ));
                let _ = done.send(());
            })
            .map_err(|e| Error::io("starting the plugin-event thread", e))?
    };
    let plugin_server = async move {
        let _ = plugin_server.await;
        if events_thread.join().is_err() {
            warn!("the plugin-event thread panicked");
        }
    };
    tokio::pin!(plugin_server);
    tokio::pin!(shutdown);
    loop {
        tokio::select! {
            _ = &mut shutdown => {
                let _ = stop.send(());
                plugin_server.await;
                return Ok(());
            }
            () = &mut plugin_server => return Ok(()),
            _ = poll_tick.tick() => {
                let a = agent.clone();
                if let Err(e) = blocking(move || a.poll_source()).await {
                    warn!(error = %e, "pod source reconcile failed; retrying");
                }
            }
            () = source_news() => {
                let a = agent.clone();
                if let Err(e) = blocking(move || a.poll_source()).await {
                    warn!(error = %e, "pod source reconcile failed; retrying");
                }
            }
            _ = resync_tick.tick() => {
                let a = agent.clone();
                if let Err(e) = blocking(move || a.resync()).await {
                    warn!(error = %e, "kernel resync failed; retrying");
                }
            }
        }
    }
}

struct RemoveOnDrop(PathBuf);

impl Drop for RemoveOnDrop {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> Result<T, Error> + Send + 'static,
) -> Result<T, Error> {
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|_| Error::Stopped)?
}

async fn handle(
    agent: Arc<Agent>,
    req: Request<hyper::body::Incoming>,
) -> Result<Response<Full<Bytes>>, Infallible> {
    let reply = |status: StatusCode, body: String| {
        let mut r = Response::new(Full::new(Bytes::from(body)));
        *r.status_mut() = status;
        Ok(r)
    };
    let kind = match (req.method(), req.uri().path()) {
        (&http::Method::POST, ADD_PATH) => EventKind::Add,
        (&http::Method::POST, DEL_PATH) => EventKind::Del,
        (_, path) => return reply(StatusCode::NOT_FOUND, format!("no handler for {path}")),
    };
    let body = match req.into_body().collect().await {
        Ok(b) => b.to_bytes(),
        Err(e) => return reply(StatusCode::BAD_REQUEST, format!("reading the body: {e}")),
    };
    let event: PodEvent = match serde_json::from_slice(&body) {
        Ok(e) => e,
        Err(e) => return reply(StatusCode::BAD_REQUEST, format!("invalid pod event: {e}")),
    };
    let pod = format!("{}/{}", event.pod_namespace, event.pod_name);
    // Queue the event, let the other connections that are ready queue
    // theirs, then handle them all in place (this thread exists for it).
    let queued = match agent.enqueue(kind, event) {
        Ok(q) => q,
        Err(e) => return reply(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()),
    };
    tokio::task::yield_now().await;
    match agent.finish(queued) {
        Ok(outcome) => {
            debug!(%pod, ?outcome, "plugin event");
            reply(StatusCode::OK, outcome.answer().as_str().to_owned())
        }
        Err(e) => {
            warn!(%pod, error = %e, "plugin event failed");
            reply(StatusCode::INTERNAL_SERVER_ERROR, e.to_string())
        }
    }
}
