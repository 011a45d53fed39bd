//! The chunked transfer coding of response bodies (RFC 9112 §7.1),
//! decoded strictly: CRLF line ends only, sizes that fit 64 bits,
//! extensions ignored, trailers kept.

use bytes::{Buf, Bytes, BytesMut};
use http::{HeaderMap, HeaderName, HeaderValue};

use super::body::Chunk;
use super::{MAX_HEADERS, trim};

/// The longest chunk-size line, extensions included.
const MAX_CHUNK_LINE: usize = 4 * 1024;

/// One step of the chunked decoder.
#[derive(Debug)]
pub(super) enum Step {
    /// More input is needed.
    Need,
    /// Moved on without output.
    Next(Chunk),
    /// Chunk data, then this state.
    Data(Bytes, Chunk),
    /// The end, with the trailer fields if there were any.
    End(Option<HeaderMap>),
}

/// Decodes from `buf` in `state`, consuming what it uses.
pub(super) fn decode_chunk(buf: &mut BytesMut, state: Chunk) -> Result<Step, &'static str> {
    match state {
        Chunk::Size => {
            let Some(eol) = find_crlf(buf, MAX_CHUNK_LINE)? else {
                return Ok(Step::Need);
            };
            let line = &buf[..eol];
            let digits = line
                .iter()
                .position(|b| *b == b';' || *b == b' ' || *b == b'\t')
                .unwrap_or(line.len());
            let (hex, rest) = line.split_at(digits);
            if hex.is_empty() || hex.len() > 16 {
                return Err("invalid chunk size");
            }
            let mut size = 0u64;
            for d in hex {
                let v = match d {
                    b'0'..=b'9' => d - b'0',
                    b'a'..=b'f' => d - b'a' + 10,
                    b'A'..=b'F' => d - b'A' + 10,
                    _ => return Err("invalid chunk size"),
                };
                size = (size << 4) | u64::from(v);
            }
            // Only whitespace may sit between the size and an extension.
            let rest = trim(rest);
            if !rest.is_empty() && rest[0] != b';' {
                return Err("invalid chunk size");
            }
            if rest.iter().any(|b| *b == b'\r' || *b == b'\n' || *b == 0) {
                return Err("invalid chunk extension");
            }
            buf.advance(eol + 2);
            Ok(Step::Next(if size == 0 {
                Chunk::Trailers
            } else {
                Chunk::Data(size)
            }))
        }
        Chunk::Data(left) => {
            if buf.is_empty() {
                return Ok(Step::Need);
            }
            let n = usize::try_from(left).unwrap_or(usize::MAX).min(buf.len());
            let data = buf.split_to(n).freeze();
            let left = left - n as u64;
            Ok(Step::Data(
                data,
                if left == 0 {
                    Chunk::DataEnd
                } else {
                    Chunk::Data(left)
                },
            ))
        }
        Chunk::DataEnd => {
            if buf.len() < 2 {
                return Ok(Step::Need);
            }
            if &buf[..2] != b"\r\n" {
                return Err("chunk data not followed by CRLF");
            }
            buf.advance(2);
            Ok(Step::Next(Chunk::Size))
        }
        Chunk::Trailers => {
            if buf.len() >= 2 && &buf[..2] == b"\r\n" {
                buf.advance(2);
                return Ok(Step::End(None));
            }
            let mut fields = [httparse::EMPTY_HEADER; MAX_HEADERS];
            match httparse::parse_headers(buf, &mut fields) {
                Ok(httparse::Status::Complete((len, fields))) => {
                    let mut map = HeaderMap::with_capacity(fields.len());
                    for f in fields {
                        let name = HeaderName::from_bytes(f.name.as_bytes())
                            .map_err(|_| "invalid trailer name")?;
                        let value = HeaderValue::from_bytes(f.value)
                            .map_err(|_| "invalid trailer value")?;
                        map.append(name, value);
                    }
                    buf.advance(len);
                    Ok(Step::End(Some(map)))
                }
                Ok(httparse::Status::Partial) => Ok(Step::Need),
                Err(_) => Err("malformed trailers"),
            }
        }
    }
}

/// The position of the first CRLF within `max` bytes; a bare LF or CR is
/// an error.
fn find_crlf(buf: &[u8], max: usize) -> Result<Option<usize>, &'static str> {
    for (i, b) in buf.iter().enumerate() {
        if i >= max {
            return Err("chunk line too long");
        }
        match b {
            b'\n' => return Err("bare LF in a chunk line"),
            b'\r' => {
                return match buf.get(i + 1) {
                    Some(b'\n') => Ok(Some(i)),
                    Some(_) => Err("bare CR in a chunk line"),
                    None => Ok(None),
                };
            }
            _ => {}
        }
    }
    if buf.len() >= max {
        return Err("chunk line too long");
    }
    Ok(None)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn decode_all(input: &[u8]) -> Result<(Vec<u8>, Option<HeaderMap>, usize), &'static str> {
        let mut buf = BytesMut::from(input);
        let mut state = Chunk::Size;
        let mut out = Vec::new();
        loop {
            match decode_chunk(&mut buf, state)? {
                Step::Need => return Err("incomplete"),
                Step::Next(s) => state = s,
                Step::Data(d, s) => {
                    out.extend_from_slice(&d);
                    state = s;
                }
                Step::End(t) => return Ok((out, t, buf.len())),
            }
        }
    }

    #[test]
    fn chunked_bodies() {
        let (body, trailers, rest) =
            decode_all(b"5\r\nhello\r\n6;ext=1\r\n world\r\n0\r\n\r\n").expect("decodes");
        assert_eq!(body, b"hello world");
        assert!(trailers.is_none());
        assert_eq!(rest, 0);
        let (body, trailers, rest) =
            decode_all(b"A\r\n0123456789\r\n0\r\ngrpc-status: 0\r\n\r\nNEXT").expect("decodes");
        assert_eq!(body, b"0123456789");
        let t = trailers.expect("trailers");
        assert_eq!(t.get("grpc-status").map(|v| v.as_bytes()), Some(&b"0"[..]));
        assert_eq!(rest, 4, "what follows the body stays in the buffer");
    }

    #[test]
    fn chunked_rejects() {
        for bad in [
            &b"x\r\n"[..],
            b"5\nhello\r\n0\r\n\r\n",
            b"5\r\nhelloXX0\r\n\r\n",
            b"11111111111111111\r\n",
            b"5 x\r\nhello\r\n",
            b"-5\r\n",
            b"5\rhello",
            b"\r\n",
        ] {
            assert!(
                decode_all(bad).is_err_and(|e| e != "incomplete"),
                "{:?} must be refused",
                String::from_utf8_lossy(bad)
            );
        }
        let long = [b'1'; MAX_CHUNK_LINE + 1];
        assert!(decode_all(&long).is_err_and(|e| e == "chunk line too long"));
    }
}
