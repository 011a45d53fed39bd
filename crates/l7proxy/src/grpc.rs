//! gRPC awareness: recognising gRPC requests, reading `grpc-status` from a
//! response's headers (trailers-only) or trailers, and Envoy's mapping of
//! an HTTP status the waypoint answers itself to a gRPC status.

use std::pin::Pin;
use std::task::{Context, Poll, ready};

use bytes::Bytes;
use http::{HeaderMap, HeaderValue, Request, header};
use hyper::body::{Body as HttpBody, Frame, SizeHint};

use crate::proxy::{Body, BoxError};

/// Whether `req` is gRPC: `content-type` `application/grpc`, optionally
/// followed by `+codec` or parameters (gRPC-Web is not gRPC here).
pub(crate) fn is_grpc<B>(req: &Request<B>) -> bool {
    req.headers()
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|ct| {
            let rest = match ct.get(..16) {
                Some(p) if p.eq_ignore_ascii_case("application/grpc") => &ct[16..],
                _ => return false,
            };
            rest.is_empty() || rest.starts_with('+') || rest.starts_with(';')
        })
}

/// The `grpc-status` in `headers`, if any and numeric.
pub(crate) fn status_in(headers: &HeaderMap) -> Option<u16> {
    headers
        .get("grpc-status")
        .and_then(|v| v.to_str().ok())
        .and_then(|s| s.trim().parse().ok())
}

/// The gRPC status for an HTTP status (Envoy's
/// `Grpc::Utility::httpToGrpcStatus`): 400 INTERNAL, 401 UNAUTHENTICATED,
/// 403 PERMISSION_DENIED, 404 UNIMPLEMENTED, 429/502/503/504 UNAVAILABLE,
/// anything else UNKNOWN.
pub fn http_to_grpc_status(http: u16) -> u16 {
    match http {
        400 => 13,
        401 => 16,
        403 => 7,
        404 => 12,
        429 | 502 | 503 | 504 => 14,
        _ => 2,
    }
}

/// Marks the waypoint's own answers (not an upstream's), with their text.
#[derive(Debug, Clone, Copy)]
pub(crate) struct LocalReply(pub(crate) &'static str);

/// Adds `grpc-status` (from the HTTP status) and `grpc-message` to a local
/// answer to a gRPC request, and returns the status.
pub(crate) fn annotate_local(headers: &mut HeaderMap, http: u16, message: &str) -> u16 {
    let status = http_to_grpc_status(http);
    headers.insert("grpc-status", HeaderValue::from(status));
    if let Ok(v) = HeaderValue::from_str(message.trim()) {
        headers.insert("grpc-message", v);
    }
    status
}

/// A response body that reports the `grpc-status` of its trailers (or
/// `None`) once, when it ends, fails or is dropped.
pub(crate) struct Observed<F: FnOnce(Option<u16>)> {
    inner: Body,
    status: Option<u16>,
    done: Option<F>,
}

impl<F: FnOnce(Option<u16>)> Observed<F> {
    /// Wraps `inner`; `done` gets the status.
    pub(crate) fn new(inner: Body, done: F) -> Self {
        Self {
            inner,
            status: None,
            done: Some(done),
        }
    }

    fn finish(&mut self) {
        if let Some(done) = self.done.take() {
            done(self.status);
        }
    }
}

impl<F: FnOnce(Option<u16>)> Drop for Observed<F> {
    fn drop(&mut self) {
        self.finish();
    }
}

impl<F: FnOnce(Option<u16>) + Unpin> HttpBody for Observed<F> {
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
                if let Some(t) = f.trailers_ref()
                    && let Some(s) = status_in(t)
                {
                    this.status = Some(s);
                }
                if this.inner.is_end_stream() {
                    this.finish();
                }
            }
            Some(Err(_)) | None => this.finish(),
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

#[cfg(test)]
mod tests {
    use super::*;
    use http_body_util::BodyExt;

    #[test]
    fn grpc_detection_and_mapping() {
        let req = |ct: &str| {
            Request::builder()
                .header(header::CONTENT_TYPE, ct)
                .body(())
                .unwrap_or_default()
        };
        assert!(is_grpc(&req("application/grpc")));
        assert!(is_grpc(&req("application/grpc+proto")));
        assert!(is_grpc(&req("Application/GRPC;charset=utf-8")));
        assert!(!is_grpc(&req("application/grpc-web")));
        assert!(!is_grpc(&req("application/json")));
        assert!(!is_grpc(&Request::new(())));
        for (http, grpc) in [
            (400, 13),
            (401, 16),
            (403, 7),
            (404, 12),
            (429, 14),
            (502, 14),
            (503, 14),
            (504, 14),
            (500, 2),
            (418, 2),
        ] {
            assert_eq!(http_to_grpc_status(http), grpc, "{http}");
        }
    }

    #[tokio::test]
    async fn observed_reports_trailer_status_once() {
        let (tx, rx) = std::sync::mpsc::channel();
        let mut trailers = HeaderMap::new();
        trailers.insert("grpc-status", HeaderValue::from_static("5"));
        let frames = Frames(
            [
                Frame::data(Bytes::from_static(b"x")),
                Frame::trailers(trailers),
            ]
            .into(),
        );
        let inner: Body = frames.boxed_unsync();
        let body = Observed::new(inner, move |s| {
            let _ = tx.send(s);
        });
        let got = body.collect().await.map(|c| c.trailers().cloned());
        assert!(matches!(got, Ok(Some(_))));
        assert_eq!(rx.try_recv().ok(), Some(Some(5)));
        assert!(rx.try_recv().is_err(), "reported twice");
        // Dropped unread: reported with no status.
        let (tx, rx) = std::sync::mpsc::channel();
        let inner: Body = http_body_util::Full::new(Bytes::from_static(b"y"))
            .map_err(|e| match e {})
            .boxed_unsync();
        drop(Observed::new(inner, move |s| {
            let _ = tx.send(s);
        }));
        assert_eq!(rx.try_recv().ok(), Some(None));
    }

    /// A body yielding `frames` in order.
    struct Frames(std::collections::VecDeque<Frame<Bytes>>);

    impl HttpBody for Frames {
        type Data = Bytes;
        type Error = BoxError;

        fn poll_frame(
            mut self: Pin<&mut Self>,
            _cx: &mut Context<'_>,
        ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
            Poll::Ready(self.0.pop_front().map(Ok))
        }

        fn is_end_stream(&self) -> bool {
            self.0.is_empty()
        }
    }
}
