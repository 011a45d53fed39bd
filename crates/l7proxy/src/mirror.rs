//! Request mirroring (Istio `mirror`, Gateway API `RequestMirror`): a copy
//! of the request, its authority's host suffixed `-shadow`, sent to each
//! mirror destination in its own task. The answer is read and dropped; a
//! mirror never delays or fails the request. Bodies are copied up to
//! `WaypointConfig::max_mirror_body`: a body of known length is copied
//! from the buffer (or the mirror skipped when it is larger); a body of
//! unknown length (chunked, HTTP/2 without `content-length`, e.g. gRPC) is
//! teed frame by frame as the request streams it upstream, and a mirror
//! whose copy grows past the cap is cut off (its stream fails) and counted
//! as skipped.

use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::task::{Context, Poll, ready};
use std::time::Duration;

use bytes::Bytes;
use http::request::Parts;
use http_body_util::BodyExt;
use hyper::body::{Body as HttpBody, Frame, SizeHint};
use tokio::sync::mpsc;

use crate::config::{Backend, LoadBalancer, Route};
use crate::head;
use crate::proxy::{Body, BoxError, Conn, Waypoint};
use crate::route;
use crate::upstream::{UpBody, Upstream};

/// How long a mirror may take when the route sets no timeout.
const MIRROR_TIMEOUT: Duration = Duration::from_secs(15);

/// How the request's body reaches the mirrors.
#[derive(Debug, Clone, Copy)]
pub(crate) enum MirrorBody<'a> {
    /// Buffered whole, within the cap.
    Buffered(&'a Bytes),
    /// Of unknown length, streamed upstream: teed.
    Streamed,
    /// Known to be larger than the cap.
    TooLarge,
}

impl Waypoint {
    /// Starts the mirrors of `route` that fire for this request. `head` is
    /// the upstream head (after the route's edits). For a streamed body,
    /// returns the taps the request's body must be wrapped with
    /// ([`Taps::wrap`]).
    pub(crate) fn mirror(
        &self,
        conn: &Arc<Conn>,
        route: &Route,
        head: &Parts,
        body: MirrorBody<'_>,
        version: Upstream,
        policy: LoadBalancer,
    ) -> Option<Taps> {
        let metrics = &self.inner.metrics;
        let mut taps: Option<Taps> = None;
        for m in &route.mirrors {
            if !route::fires(m.percentage, fastrand::f64() * 100.0) {
                continue;
            }
            let (copy, overflow) = match body {
                MirrorBody::Buffered(b) => (UpBody::Whole(b.clone()), None),
                MirrorBody::Streamed => {
                    let t = taps.get_or_insert_with(|| Taps {
                        senders: Vec::new(),
                        overflow: Arc::new(AtomicBool::new(false)),
                        cap: self.inner.cfg.max_mirror_body,
                        seen: 0,
                        done: false,
                    });
                    let (tx, rx) = mpsc::unbounded_channel();
                    t.senders.push(tx);
                    (
                        UpBody::Streamed(Tapped(rx).boxed_unsync()),
                        Some(Arc::clone(&t.overflow)),
                    )
                }
                MirrorBody::TooLarge => {
                    metrics.mirror("skipped_body");
                    continue;
                }
            };
            let mut head = head.clone();
            head::shadow(&mut head);
            let backend = Backend {
                host: m.host.clone(),
                port: m.port,
                subset: m.subset.clone(),
                weight: 1,
            };
            let this = self.clone();
            let conn = Arc::clone(conn);
            let limit = route.timeout.unwrap_or(MIRROR_TIMEOUT);
            tokio::spawn(async move {
                let outcome = tokio::time::timeout(
                    limit,
                    this.mirror_one(&conn, &backend, head, copy, version, policy),
                )
                .await
                .unwrap_or("failed");
                let outcome = match overflow {
                    Some(o) if o.load(Ordering::Relaxed) => "skipped_body",
                    _ => outcome,
                };
                this.inner.metrics.mirror(outcome);
            });
        }
        taps
    }

    /// Sends one mirror request; its outcome label.
    async fn mirror_one(
        &self,
        conn: &Conn,
        backend: &Backend,
        head: Parts,
        body: UpBody,
        version: Upstream,
        policy: LoadBalancer,
    ) -> &'static str {
        let routes = self.routes();
        let Some(c) = self.pick(conn, &routes, backend, &[], policy) else {
            tracing::debug!(?backend, "mirror: no healthy endpoint");
            return "no_endpoint";
        };
        match self
            .send(
                &c.endpoint,
                &c.key,
                c.pool,
                conn.client,
                head,
                body,
                version,
            )
            .await
        {
            Ok(resp) => {
                // Read to the end so an HTTP/1.1 connection can be reused.
                let _ = resp.into_body().collect().await;
                "sent"
            }
            Err(outcome) => {
                tracing::debug!(?outcome, endpoint = %c.key, "mirror request failed");
                "failed"
            }
        }
    }
}

/// The mirrors' ends of a streamed request body. Until the body ends
/// cleanly, dropping them fails the mirrors' bodies (a truncated copy is
/// never sent as a complete one).
pub(crate) struct Taps {
    senders: Vec<mpsc::UnboundedSender<Result<Frame<Bytes>, BoxError>>>,
    overflow: Arc<AtomicBool>,
    cap: usize,
    seen: usize,
    done: bool,
}

impl Taps {
    /// The request body, copying each frame to the mirrors.
    pub(crate) fn wrap(self, body: Body) -> Body {
        Tee {
            inner: body,
            taps: self,
        }
        .boxed_unsync()
    }

    fn copy(&mut self, frame: &Frame<Bytes>) {
        if self.senders.is_empty() {
            return;
        }
        self.seen = self
            .seen
            .saturating_add(frame.data_ref().map_or(0, Bytes::len));
        if self.seen > self.cap {
            self.overflow.store(true, Ordering::Relaxed);
            self.fail("request body larger than max_mirror_body");
            return;
        }
        for tx in &self.senders {
            let copy = if let Some(d) = frame.data_ref() {
                Frame::data(d.clone())
            } else if let Some(t) = frame.trailers_ref() {
                Frame::trailers(t.clone())
            } else {
                continue;
            };
            let _ = tx.send(Ok(copy));
        }
    }

    /// Ends the copies cleanly.
    fn finish(&mut self) {
        self.done = true;
        self.senders.clear();
    }

    /// Fails the copies.
    fn fail(&mut self, why: &'static str) {
        for tx in self.senders.drain(..) {
            let _ = tx.send(Err(why.into()));
        }
    }
}

impl Drop for Taps {
    fn drop(&mut self) {
        if !self.done {
            self.fail("request body not read to its end");
        }
    }
}

/// The request body, teed to the mirrors.
struct Tee {
    inner: Body,
    taps: Taps,
}

impl HttpBody for Tee {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let this = self.get_mut();
        let frame = ready!(Pin::new(&mut this.inner).poll_frame(cx));
        match &frame {
            Some(Ok(f)) => {
                this.taps.copy(f);
                if this.inner.is_end_stream() {
                    this.taps.finish();
                }
            }
            Some(Err(_)) => this.taps.fail("request body failed"),
            None => this.taps.finish(),
        }
        Poll::Ready(frame)
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

/// A mirror's copy of a streamed body.
struct Tapped(mpsc::UnboundedReceiver<Result<Frame<Bytes>, BoxError>>);

impl HttpBody for Tapped {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        self.0.poll_recv(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn taps(n: usize, cap: usize) -> (Taps, Vec<Tapped>) {
        let mut t = Taps {
            senders: Vec::new(),
            overflow: Arc::new(AtomicBool::new(false)),
            cap,
            seen: 0,
            done: false,
        };
        let mut rx = Vec::new();
        for _ in 0..n {
            let (tx, r) = mpsc::unbounded_channel();
            t.senders.push(tx);
            rx.push(Tapped(r));
        }
        (t, rx)
    }

    /// A body of `chunks` with no length known in advance.
    fn body(chunks: &[&'static [u8]]) -> Body {
        let (tx, rx) = mpsc::unbounded_channel();
        for c in chunks {
            let _ = tx.send(Ok(Frame::data(Bytes::from_static(c))));
        }
        Tapped(rx).boxed_unsync()
    }

    async fn read(b: impl HttpBody<Data = Bytes, Error = BoxError>) -> Option<Bytes> {
        b.collect().await.ok().map(|c| c.to_bytes())
    }

    #[tokio::test]
    async fn tee_copies_within_the_cap_and_cuts_past_it() {
        let (t, copies) = taps(2, 10);
        let main = t.wrap(body(&[b"abc", b"def"]));
        assert_eq!(read(main).await.as_deref(), Some(&b"abcdef"[..]));
        for c in copies {
            assert_eq!(read(c).await.as_deref(), Some(&b"abcdef"[..]));
        }
        // Past the cap: the request's body is whole, the copy fails.
        let (t, copies) = taps(1, 4);
        let overflow = Arc::clone(&t.overflow);
        let main = t.wrap(body(&[b"abc", b"def"]));
        assert_eq!(read(main).await.as_deref(), Some(&b"abcdef"[..]));
        for c in copies {
            assert_eq!(read(c).await, None);
        }
        assert!(overflow.load(Ordering::Relaxed));
        // Dropped before the body ended: the copy fails rather than end
        // as a truncated success.
        let (t, copies) = taps(1, 100);
        drop(t);
        for c in copies {
            assert_eq!(read(c).await, None);
        }
    }
}
