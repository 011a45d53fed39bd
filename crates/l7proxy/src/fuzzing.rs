//! Entry points for the fuzz targets in `fuzz/`: the lean HTTP/1.1
//! codecs without sockets. Not part of the crate's API.

use http::{Method, Request};

/// What the upstream client makes of `data` as the whole answer to a
/// `GET` (a `HEAD` when `head`): `Ok(None)` when incomplete, else the
/// status, the decoded body and whether the connection would be reused;
/// `Err` with the reason it was refused.
pub fn http1_response(data: &[u8], head: bool) -> Result<Option<(u16, Vec<u8>, bool)>, String> {
    let method = if head { Method::HEAD } else { Method::GET };
    crate::h1::decode_whole(data, &method)
}

/// What the downstream loop makes of `data`: the request it serves itself,
/// how many bytes its head took and the length of the body it reads next,
/// or `Err` (hyper's to serve) with whether the bytes were left untouched
/// for hyper.
pub fn http1_request(data: &[u8]) -> Result<(Request<()>, usize, usize), bool> {
    crate::h1srv::parse_whole(data)
}
