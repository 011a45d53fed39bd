//! Sending one CONNECT on a pooled connection: the request, early data,
//! bytes that come while the answer is awaited, and the answer.

use std::fmt::Write as _;
use std::future::Future;
use std::pin::Pin;
use std::task::Poll;

use bytes::Bytes;
use h2::client::SendRequest;
use http::{Method, Request, StatusCode, Uri};

use crate::{Authority, ClientError, ConnectHeaders};

/// The caller's source of the tunnel's first bytes while the answer is
/// awaited; taken (set to `None`) once it has yielded.
pub(super) type First<'a> = Option<Pin<&'a mut (dyn Future<Output = Bytes> + Send + 'a)>>;

pub(super) enum SendError {
    /// The connection takes no new streams (GOAWAY, closed).
    Refused(h2::Error),
    Other(h2::Error),
    Status(StatusCode),
}

pub(super) fn build_request(
    authority: &Authority,
    headers: &ConnectHeaders,
    extra: &http::HeaderMap,
) -> Result<Request<()>, ClientError> {
    // Room for any `[v6]:port` or a usual host name, so the text is not
    // grown piece by piece as it is written; trimmed to a boxed slice, the
    // URI takes it as is (a `String` with spare room would cost the URI's
    // bytes another allocation).
    let mut text = String::with_capacity(64);
    // Writing into a String cannot fail.
    let _ = write!(text, "{authority}");
    let uri = Uri::from_maybe_shared(Bytes::from(text.into_boxed_str().into_boxed_bytes()))
        .map_err(|e| ClientError::Request(e.into()))?;
    let mut request = Request::builder()
        .method(Method::CONNECT)
        .uri(uri)
        .version(http::Version::HTTP_2)
        .body(())
        .map_err(ClientError::Request)?;
    let map = request.headers_mut();
    for (name, value) in extra {
        map.append(name, value.clone());
    }
    headers.write_to(map);
    Ok(request)
}

/// Why tunnel bytes could not be queued on a CONNECT's stream. The
/// connection task runs beside this one: a server that refused the CONNECT
/// at once may have had its answer read, and the stream closed, before the
/// bytes were queued (h2 then says the stream is inactive). The answer is
/// what the caller needs (a `401` is not a broken connection; a refused
/// stream may be retried), so it is awaited; the stream has ended, so it
/// comes at once. `sent_data`: tunnel bytes were queued before these.
async fn answer_to_failed_send(
    response: h2::client::ResponseFuture,
    e: h2::Error,
    sent_data: bool,
) -> SendError {
    if e.is_go_away() || e.is_io() {
        return SendError::Refused(e);
    }
    match response.await {
        Ok(r) if r.status() != StatusCode::OK => SendError::Status(r.status()),
        Ok(_) => SendError::Other(e),
        Err(e) => answer_error(e, sent_data),
    }
}

/// A CONNECT's answer that is an error. A stream refused by GOAWAY (id
/// above last-stream-id) or `REFUSED_STREAM` was never processed: safe to
/// retry. So is a CONNECT whose connection died before the answer (a peer
/// that went away, an upgrade) when no byte of the tunnel was sent: the
/// server drops what it started. Once tunnel bytes were sent, the server
/// may have delivered them.
fn answer_error(e: h2::Error, sent_data: bool) -> SendError {
    let unseen = e.reason() == Some(h2::Reason::REFUSED_STREAM) || e.is_go_away();
    if unseen || (e.is_io() && !sent_data) {
        SendError::Refused(e)
    } else {
        SendError::Other(e)
    }
}

/// What came first while the answer was awaited.
enum Next {
    Answer(Result<http::Response<h2::RecvStream>, h2::Error>),
    Bytes(Bytes),
}

/// Sends the CONNECT, then `early` right behind its HEADERS, then what
/// `first` yields before the answer comes (kept in `got`), and awaits the
/// answer.
pub(super) async fn send_connect(
    send_request: SendRequest<Bytes>,
    request: Request<()>,
    early: &Bytes,
    first: &mut First<'_>,
    got: &mut Bytes,
) -> Result<(h2::SendStream<Bytes>, h2::RecvStream), SendError> {
    let refused = |e: h2::Error| {
        if e.is_go_away() || e.is_io() {
            SendError::Refused(e)
        } else {
            SendError::Other(e)
        }
    };
    let mut send_request = send_request.ready().await.map_err(refused)?;
    let (mut response, mut send) = send_request.send_request(request, false).map_err(refused)?;
    if !early.is_empty() {
        // Queued behind the HEADERS before the connection task runs, so
        // both usually leave in one write. Beyond the stream's window h2
        // holds the rest until the peer opens it.
        if let Err(e) = send.send_data(early.clone(), false) {
            return Err(answer_to_failed_send(response, e, false).await);
        }
    }
    let answer = loop {
        let next = std::future::poll_fn(|cx| {
            if let Poll::Ready(r) = Pin::new(&mut response).poll(cx) {
                return Poll::Ready(Next::Answer(r));
            }
            if let Some(f) = first.as_mut()
                && let Poll::Ready(b) = f.as_mut().poll(cx)
            {
                return Poll::Ready(Next::Bytes(b));
            }
            Poll::Pending
        })
        .await;
        match next {
            Next::Answer(r) => break r,
            Next::Bytes(b) => {
                *first = None;
                if !b.is_empty() {
                    if let Err(e) = send.send_data(b.clone(), false) {
                        return Err(answer_to_failed_send(response, e, !early.is_empty()).await);
                    }
                    *got = b;
                }
            }
        }
    };
    let sent_data = !early.is_empty() || !got.is_empty();
    let response = answer.map_err(|e| answer_error(e, sent_data))?;
    if response.status() != StatusCode::OK {
        return Err(SendError::Status(response.status()));
    }
    Ok((send, response.into_body()))
}
