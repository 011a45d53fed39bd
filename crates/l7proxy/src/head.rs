//! The upstream request head: origin-form with `host` for HTTP/1.1,
//! absolute-form (`:scheme`, `:authority`) for HTTP/2, hop-by-hop headers
//! removed.

use http::{HeaderMap, HeaderName, HeaderValue, Uri, header, request::Parts, uri};

use crate::upstream::Upstream;

/// Headers that apply to one hop only (RFC 9110 §7.6.1).
static HOP_BY_HOP: [HeaderName; 7] = [
    header::CONNECTION,
    HeaderName::from_static("keep-alive"),
    HeaderName::from_static("proxy-connection"),
    header::TRANSFER_ENCODING,
    header::UPGRADE,
    header::TE,
    header::TRAILER,
];

/// Removes the hop-by-hop headers.
pub(crate) fn strip_hop_by_hop(headers: &mut HeaderMap) {
    for h in &HOP_BY_HOP {
        headers.remove(h);
    }
}

/// Makes `parts` an upstream request head for `version`; `authority` is
/// the request's authority when it has no `host` header. HTTP/2 keeps
/// `te: trailers` (gRPC needs it; it is the only `te` HTTP/2 allows).
pub(crate) fn prepare(parts: &mut Parts, authority: &str, version: Upstream) {
    let trailers = parts
        .headers
        .get(header::TE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| {
            v.split(',')
                .any(|t| t.trim().eq_ignore_ascii_case("trailers"))
        });
    strip_hop_by_hop(&mut parts.headers);
    let path = parts
        .uri
        .path_and_query()
        .cloned()
        .unwrap_or_else(|| uri::PathAndQuery::from_static("/"));
    match version {
        Upstream::Http1 => {
            if !parts.headers.contains_key(header::HOST)
                && let Ok(v) = HeaderValue::from_str(authority)
            {
                parts.headers.insert(header::HOST, v);
            }
            if parts.uri.scheme().is_some() || parts.uri.authority().is_some() {
                // Absolute form (HTTP/2, or an HTTP/1 proxy request): keep
                // the path and query only (shared bytes, nothing parsed
                // again).
                let mut origin = uri::Parts::default();
                origin.path_and_query = Some(path);
                if let Ok(uri) = Uri::from_parts(origin) {
                    parts.uri = uri;
                }
            }
            parts.version = http::Version::HTTP_11;
        }
        Upstream::Http2 => {
            // `:authority` from `host` (which a rewrite may have set).
            let host = parts.headers.remove(header::HOST);
            let authority = host
                .as_ref()
                .and_then(|h| h.to_str().ok())
                .unwrap_or(authority);
            let mut abs = uri::Parts::default();
            abs.scheme = Some(uri::Scheme::HTTP);
            abs.authority = authority.parse().ok();
            abs.path_and_query = Some(path);
            if let Ok(uri) = Uri::from_parts(abs) {
                parts.uri = uri;
            }
            parts.version = http::Version::HTTP_2;
            if trailers {
                parts
                    .headers
                    .insert(header::TE, HeaderValue::from_static("trailers"));
            }
        }
    }
}

/// `authority` with `-shadow` appended to its host (Envoy's mirror
/// naming): `reviews:9080` → `reviews-shadow:9080`.
pub(crate) fn shadow_authority(authority: &str) -> String {
    let (host, port) = match authority.rsplit_once(':') {
        Some((h, p))
            if p.bytes().all(|b| b.is_ascii_digit()) && (!h.contains(':') || h.ends_with(']')) =>
        {
            (h, Some(p))
        }
        _ => (authority, None),
    };
    match port {
        Some(p) => format!("{host}-shadow:{p}"),
        None => format!("{host}-shadow"),
    }
}

/// Points a prepared head at the shadow authority.
pub(crate) fn shadow(parts: &mut Parts) {
    if let Some(h) = parts
        .headers
        .get(header::HOST)
        .and_then(|h| h.to_str().ok())
        && let Ok(v) = HeaderValue::from_str(&shadow_authority(h))
    {
        parts.headers.insert(header::HOST, v);
    }
    if let Some(a) = parts.uri.authority() {
        let mut p = parts.uri.clone().into_parts();
        p.authority = shadow_authority(a.as_str()).parse().ok();
        if let Ok(uri) = Uri::from_parts(p) {
            parts.uri = uri;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parts(uri: &str, headers: &[(&str, &str)]) -> Parts {
        let mut b = http::Request::builder().uri(uri);
        for (k, v) in headers {
            b = b.header(*k, *v);
        }
        b.body(())
            .map(|r| r.into_parts().0)
            .unwrap_or_else(|_| http::Request::new(()).into_parts().0)
    }

    #[test]
    fn heads_for_each_version() {
        let mut p = parts(
            "http://a:80/x?q",
            &[("te", "trailers"), ("connection", "x")],
        );
        prepare(&mut p, "a:80", Upstream::Http1);
        assert_eq!(p.uri.to_string(), "/x?q");
        assert_eq!(
            p.headers.get("host").map(|v| v.as_bytes()),
            Some(&b"a:80"[..])
        );
        assert!(p.headers.get("te").is_none() && p.headers.get("connection").is_none());

        let mut p = parts("/x?q", &[("host", "b:9080"), ("te", "trailers")]);
        prepare(&mut p, "ignored:1", Upstream::Http2);
        assert_eq!(p.uri.to_string(), "http://b:9080/x?q");
        assert!(p.headers.get("host").is_none());
        assert_eq!(
            p.headers.get("te").map(|v| v.as_bytes()),
            Some(&b"trailers"[..])
        );
        assert_eq!(p.version, http::Version::HTTP_2);

        shadow(&mut p);
        assert_eq!(p.uri.to_string(), "http://b-shadow:9080/x?q");
        let mut p = parts("/", &[("host", "reviews")]);
        shadow(&mut p);
        assert_eq!(
            p.headers.get("host").map(|v| v.as_bytes()),
            Some(&b"reviews-shadow"[..])
        );
    }

    #[test]
    fn shadow_names() {
        assert_eq!(shadow_authority("reviews:9080"), "reviews-shadow:9080");
        assert_eq!(shadow_authority("reviews"), "reviews-shadow");
        assert_eq!(shadow_authority("[::1]:80"), "[::1]-shadow:80");
    }
}
