//! Protocol detection from a stream's first bytes, and a stream that
//! replays them.

/// The HTTP/2 client connection preface.
pub const H2_PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";

const METHODS: &[&[u8]] = &[
    b"GET ",
    b"POST ",
    b"PUT ",
    b"DELETE ",
    b"HEAD ",
    b"OPTIONS ",
    b"PATCH ",
    b"TRACE ",
    b"CONNECT ",
];

/// What the first bytes say.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Sniffed {
    /// An HTTP/1 request line or the HTTP/2 preface.
    Http,
    /// Something else.
    Tcp,
    /// Too few bytes to tell.
    NeedMore,
}

/// Classifies the first bytes of a client's stream.
pub fn sniff(first: &[u8]) -> Sniffed {
    let mut need_more = false;
    for c in METHODS.iter().copied().chain([H2_PREFACE]) {
        if first.starts_with(c) {
            return Sniffed::Http;
        }
        if c.starts_with(first) {
            need_more = true;
        }
    }
    if need_more {
        Sniffed::NeedMore
    } else {
        Sniffed::Tcp
    }
}

/// The stream type that replays sniffed bytes (shared with the HBONE client).
pub use ambit_hbone::Rewind;

#[cfg(test)]
mod tests {
    use bytes::Bytes;
    use tokio::io::AsyncReadExt;

    use super::*;

    #[test]
    fn sniff_table() {
        for (bytes, want) in [
            (&b"GET / HTTP/1.1\r\n"[..], Sniffed::Http),
            (b"DELETE /x", Sniffed::Http),
            (b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n", Sniffed::Http),
            (b"PRI * HT", Sniffed::NeedMore),
            (b"GE", Sniffed::NeedMore),
            (b"", Sniffed::NeedMore),
            (b"GETX", Sniffed::Tcp),
            (b"\x16\x03\x01", Sniffed::Tcp),
            (b"hello", Sniffed::Tcp),
        ] {
            assert_eq!(sniff(bytes), want, "{bytes:?}");
        }
    }

    #[tokio::test]
    async fn rewind_replays_prefix() {
        let (mut a, b) = tokio::io::duplex(64);
        tokio::io::AsyncWriteExt::write_all(&mut a, b" world")
            .await
            .expect("write");
        drop(a);
        let mut r = Rewind::new(Bytes::from_static(b"hello"), b);
        let mut s = String::new();
        r.read_to_string(&mut s).await.expect("read");
        assert_eq!(s, "hello world");
    }
}
