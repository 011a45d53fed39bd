//! SPIFFE workload identities as Istio uses them:
//! `spiffe://<trust-domain>/ns/<namespace>/sa/<service-account>`.
//!
//! Parsing is strict and total: any byte string either parses or yields an
//! [`IdentityError`]; it never panics (the `spiffe_id` fuzz target checks
//! this). The accepted grammar is the SPIFFE one narrowed to Istio's shape:
//!
//! - the scheme is exactly `spiffe://` (lowercase);
//! - the trust domain is 1..=255 bytes of `[a-z0-9._-]`;
//! - the path has exactly four segments, `ns`, `<namespace>`, `sa`,
//!   `<service-account>`, each 1..=253 bytes of `[A-Za-z0-9._-]`, and not
//!   `.` or `..`;
//! - no query, fragment, port, user info, percent-encoding or trailing `/`;
//! - the whole id is at most [`MAX_ID_LEN`] bytes.

use std::{fmt, str::FromStr, sync::Arc};

/// The URI scheme prefix of every SPIFFE id.
pub const SPIFFE_PREFIX: &str = "spiffe://";
/// The longest SPIFFE id accepted, in bytes (the SPIFFE spec's URI limit).
pub const MAX_ID_LEN: usize = 2048;
/// The longest trust domain accepted, in bytes (the SPIFFE spec's limit).
pub const MAX_TRUST_DOMAIN_LEN: usize = 255;
/// The longest namespace or service-account segment accepted, in bytes
/// (a Kubernetes DNS subdomain name).
pub const MAX_SEGMENT_LEN: usize = 253;
/// The longest id that can be valid: the prefix, the longest trust domain,
/// and two longest segments with their `/ns/` and `/sa/`.
const LONGEST_VALID_ID: usize =
    SPIFFE_PREFIX.len() + MAX_TRUST_DOMAIN_LEN + 2 * ("/ns/".len() + MAX_SEGMENT_LEN);
/// Istio's default trust domain.
pub const DEFAULT_TRUST_DOMAIN: &str = "cluster.local";

/// A workload identity: `spiffe://<trust-domain>/ns/<namespace>/sa/<service-account>`.
///
/// Cheap to clone (one shared allocation); ordered, hashed and compared by
/// its text, which is canonical because parsing accepts one spelling only.
#[derive(Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Identity {
    /// The full id text, `spiffe://td/ns/ns/sa/sa`.
    text: Arc<str>,
    /// Byte ranges of the three parts inside `text`.
    td_end: usize,
    ns: (usize, usize),
    sa_start: usize,
}

/// Why a string is not a valid SPIFFE workload identity.
///
/// Messages quote a bounded, escaped prefix of the input so hostile input
/// cannot flood logs.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum IdentityError {
    /// The input is not UTF-8.
    #[error("spiffe id is not valid utf-8")]
    NotUtf8,
    /// The input is longer than [`MAX_ID_LEN`].
    #[error("spiffe id is {len} bytes long, the limit is {MAX_ID_LEN}")]
    TooLong {
        /// The input's length in bytes.
        len: usize,
    },
    /// The input does not start with `spiffe://`.
    #[error("spiffe id {input:?} does not start with \"spiffe://\"")]
    BadScheme {
        /// A bounded prefix of the input.
        input: String,
    },
    /// The trust domain is empty, too long, or has a forbidden character.
    #[error("spiffe id {input:?} has an invalid trust domain: {reason}")]
    BadTrustDomain {
        /// A bounded prefix of the input.
        input: String,
        /// What is wrong with it.
        reason: &'static str,
    },
    /// The path is not exactly `/ns/<namespace>/sa/<service-account>`.
    #[error("spiffe id {input:?} does not have the path /ns/<namespace>/sa/<service-account>")]
    BadPath {
        /// A bounded prefix of the input.
        input: String,
    },
    /// A namespace or service-account segment is empty, too long, `.`/`..`,
    /// or has a forbidden character.
    #[error("spiffe id {input:?} has an invalid {part}: {reason}")]
    BadSegment {
        /// A bounded prefix of the input.
        input: String,
        /// `namespace` or `service account`.
        part: &'static str,
        /// What is wrong with it.
        reason: &'static str,
    },
}

impl Identity {
    /// Builds an identity from its three parts, validating each.
    pub fn new(
        trust_domain: &str,
        namespace: &str,
        service_account: &str,
    ) -> Result<Self, IdentityError> {
        // Proxies build peers' identities per connection, so the text is
        // assembled on the stack and the identity's one allocation is its
        // own. Anything longer than the longest valid id takes the plain
        // path, which yields the same error as parsing it would.
        let parts = [
            SPIFFE_PREFIX,
            trust_domain,
            "/ns/",
            namespace,
            "/sa/",
            service_account,
        ];
        let len: usize = parts.iter().map(|p| p.len()).sum();
        if len > LONGEST_VALID_ID {
            return parts.concat().parse();
        }
        let mut buf = [0u8; LONGEST_VALID_ID];
        let mut at = 0;
        for p in parts {
            buf[at..at + p.len()].copy_from_slice(p.as_bytes());
            at += p.len();
        }
        std::str::from_utf8(&buf[..at])
            .map_err(|_| IdentityError::NotUtf8)?
            .parse()
    }

    /// Parses an identity from arbitrary bytes (for example a certificate
    /// SAN or fuzzer input). Never panics.
    pub fn from_bytes(bytes: &[u8]) -> Result<Self, IdentityError> {
        if bytes.len() > MAX_ID_LEN {
            return Err(IdentityError::TooLong { len: bytes.len() });
        }
        let s = std::str::from_utf8(bytes).map_err(|_| IdentityError::NotUtf8)?;
        s.parse()
    }

    /// The trust domain, e.g. `cluster.local`.
    pub fn trust_domain(&self) -> &str {
        &self.text[SPIFFE_PREFIX.len()..self.td_end]
    }

    /// The Kubernetes namespace.
    pub fn namespace(&self) -> &str {
        &self.text[self.ns.0..self.ns.1]
    }

    /// The Kubernetes service account.
    pub fn service_account(&self) -> &str {
        &self.text[self.sa_start..]
    }

    /// The full id, `spiffe://<td>/ns/<ns>/sa/<sa>`.
    pub fn as_str(&self) -> &str {
        &self.text
    }

    /// Whether this identity belongs to `trust_domain`.
    pub fn in_trust_domain(&self, trust_domain: &str) -> bool {
        self.trust_domain() == trust_domain
    }
}

/// A bounded, printable rendition of hostile input for error messages.
fn excerpt(s: &str) -> String {
    const MAX: usize = 96;
    let mut out: String = s.chars().take(MAX).collect();
    if s.chars().nth(MAX).is_some() {
        out.push('…');
    }
    out
}

fn check_trust_domain(td: &str, input: &str) -> Result<(), IdentityError> {
    let bad = |reason| IdentityError::BadTrustDomain {
        input: excerpt(input),
        reason,
    };
    if td.is_empty() {
        return Err(bad("it is empty"));
    }
    if td.len() > MAX_TRUST_DOMAIN_LEN {
        return Err(bad("it is longer than 255 bytes"));
    }
    if !td
        .bytes()
        .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || matches!(b, b'.' | b'-' | b'_'))
    {
        return Err(bad("only a-z, 0-9, '.', '-' and '_' are allowed"));
    }
    Ok(())
}

fn check_segment(seg: &str, part: &'static str, input: &str) -> Result<(), IdentityError> {
    let bad = |reason| IdentityError::BadSegment {
        input: excerpt(input),
        part,
        reason,
    };
    if seg.is_empty() {
        return Err(bad("it is empty"));
    }
    if seg.len() > MAX_SEGMENT_LEN {
        return Err(bad("it is longer than 253 bytes"));
    }
    if seg == "." || seg == ".." {
        return Err(bad("'.' and '..' are not allowed"));
    }
    if !seg
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'-' | b'_'))
    {
        return Err(bad("only A-Z, a-z, 0-9, '.', '-' and '_' are allowed"));
    }
    Ok(())
}

impl FromStr for Identity {
    type Err = IdentityError;

    fn from_str(input: &str) -> Result<Self, Self::Err> {
        if input.len() > MAX_ID_LEN {
            return Err(IdentityError::TooLong { len: input.len() });
        }
        let rest = input
            .strip_prefix(SPIFFE_PREFIX)
            .ok_or_else(|| IdentityError::BadScheme {
                input: excerpt(input),
            })?;
        let (td, path) = rest.split_once('/').unwrap_or((rest, ""));
        check_trust_domain(td, input)?;
        let bad_path = || IdentityError::BadPath {
            input: excerpt(input),
        };
        let mut segments = path.split('/');
        let (Some("ns"), Some(ns), Some("sa"), Some(sa), None) = (
            segments.next(),
            segments.next(),
            segments.next(),
            segments.next(),
            segments.next(),
        ) else {
            return Err(bad_path());
        };
        check_segment(ns, "namespace", input)?;
        check_segment(sa, "service account", input)?;

        let td_end = SPIFFE_PREFIX.len() + td.len();
        let ns_start = td_end + "/ns/".len();
        let ns_end = ns_start + ns.len();
        let sa_start = ns_end + "/sa/".len();
        Ok(Identity {
            text: Arc::from(input),
            td_end,
            ns: (ns_start, ns_end),
            sa_start,
        })
    }
}

impl TryFrom<&str> for Identity {
    type Error = IdentityError;

    fn try_from(s: &str) -> Result<Self, Self::Error> {
        s.parse()
    }
}

impl fmt::Display for Identity {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.text)
    }
}

impl fmt::Debug for Identity {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Identity({})", self.text)
    }
}

impl AsRef<str> for Identity {
    fn as_ref(&self) -> &str {
        &self.text
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_and_displays() {
        let id: Identity = "spiffe://cluster.local/ns/default/sa/bookinfo-productpage"
            .parse()
            .expect("valid");
        assert_eq!(id.trust_domain(), "cluster.local");
        assert_eq!(id.namespace(), "default");
        assert_eq!(id.service_account(), "bookinfo-productpage");
        assert_eq!(
            id.to_string(),
            "spiffe://cluster.local/ns/default/sa/bookinfo-productpage"
        );
        assert_eq!(
            Identity::new("cluster.local", "default", "bookinfo-productpage").expect("valid"),
            id
        );
        assert!(id.in_trust_domain("cluster.local"));
        assert!(!id.in_trust_domain("other.local"));
    }

    #[test]
    fn accepts_edge_cases() {
        for ok in [
            "spiffe://a/ns/b/sa/c",
            "spiffe://td_1.example-2/ns/Kube_System/sa/x.y-z",
            "spiffe://x/ns/.../sa/..a",
        ] {
            let id: Identity = ok.parse().unwrap_or_else(|e| panic!("{ok}: {e}"));
            assert_eq!(id.as_str(), ok);
        }
        let long_td = "a".repeat(MAX_TRUST_DOMAIN_LEN);
        let seg = "b".repeat(MAX_SEGMENT_LEN);
        let id = Identity::new(&long_td, &seg, &seg).expect("limits are inclusive");
        assert_eq!(id.service_account(), seg);
    }

    /// `new` assembles its text on the stack up to the longest valid id and
    /// formats anything longer: both give what parsing the text gives.
    #[test]
    fn new_is_parsing_the_joined_parts() {
        let td = "a".repeat(MAX_TRUST_DOMAIN_LEN);
        let seg = "b".repeat(MAX_SEGMENT_LEN);
        let over = "c".repeat(MAX_SEGMENT_LEN + 1);
        let huge = "d".repeat(MAX_ID_LEN);
        for (t, n, a) in [
            ("cluster.local", "default", "sleep"),
            (td.as_str(), seg.as_str(), seg.as_str()),
            (td.as_str(), seg.as_str(), over.as_str()),
            ("td", huge.as_str(), "sa"),
            ("td", "a/b", "sa"),
            ("td", "", "sa"),
            ("TD", "ns", "sa"),
            ("td", "ns", "s\u{e9}"),
        ] {
            let joined = format!("{SPIFFE_PREFIX}{t}/ns/{n}/sa/{a}");
            assert_eq!(
                Identity::new(t, n, a),
                joined.parse::<Identity>(),
                "{:.40}",
                joined
            );
        }
        assert_eq!(
            LONGEST_VALID_ID,
            Identity::new(&td, &seg, &seg)
                .expect("valid")
                .as_str()
                .len()
        );
    }

    /// A table of hostile inputs, each with the error kind it must produce.
    #[test]
    fn rejects_hostile_inputs() {
        let long = "x".repeat(MAX_ID_LEN);
        let long_td = format!("spiffe://{}/ns/a/sa/b", "a".repeat(256));
        let long_seg = format!("spiffe://td/ns/{}/sa/b", "a".repeat(254));
        type Check = fn(&IdentityError) -> bool;
        let cases: &[(&str, Check)] = &[
            ("", |e| matches!(e, IdentityError::BadScheme { .. })),
            ("spiffe:/", |e| matches!(e, IdentityError::BadScheme { .. })),
            ("SPIFFE://td/ns/a/sa/b", |e| {
                matches!(e, IdentityError::BadScheme { .. })
            }),
            ("http://td/ns/a/sa/b", |e| {
                matches!(e, IdentityError::BadScheme { .. })
            }),
            ("spiffe://", |e| {
                matches!(e, IdentityError::BadTrustDomain { .. })
            }),
            ("spiffe:///ns/a/sa/b", |e| {
                matches!(e, IdentityError::BadTrustDomain { .. })
            }),
            ("spiffe://TD/ns/a/sa/b", |e| {
                matches!(e, IdentityError::BadTrustDomain { .. })
            }),
            ("spiffe://td:443/ns/a/sa/b", |e| {
                matches!(e, IdentityError::BadTrustDomain { .. })
            }),
            ("spiffe://u@td/ns/a/sa/b", |e| {
                matches!(e, IdentityError::BadTrustDomain { .. })
            }),
            ("spiffe://t\0d/ns/a/sa/b", |e| {
                matches!(e, IdentityError::BadTrustDomain { .. })
            }),
            (&long_td, |e| {
                matches!(e, IdentityError::BadTrustDomain { .. })
            }),
            ("spiffe://td", |e| {
                matches!(e, IdentityError::BadPath { .. })
            }),
            ("spiffe://td/", |e| {
                matches!(e, IdentityError::BadPath { .. })
            }),
            ("spiffe://td/ns/a", |e| {
                matches!(e, IdentityError::BadPath { .. })
            }),
            ("spiffe://td/ns/a/sa", |e| {
                matches!(e, IdentityError::BadPath { .. })
            }),
            ("spiffe://td/ns/a/sa/b/", |e| {
                matches!(e, IdentityError::BadPath { .. })
            }),
            ("spiffe://td/ns/a/sa/b/c", |e| {
                matches!(e, IdentityError::BadPath { .. })
            }),
            ("spiffe://td//ns/a/sa/b", |e| {
                matches!(e, IdentityError::BadPath { .. })
            }),
            ("spiffe://td/sa/a/ns/b", |e| {
                matches!(e, IdentityError::BadPath { .. })
            }),
            ("spiffe://td/NS/a/sa/b", |e| {
                matches!(e, IdentityError::BadPath { .. })
            }),
            ("spiffe://td/ns//sa/b", |e| {
                matches!(e, IdentityError::BadSegment { .. })
            }),
            ("spiffe://td/ns/a/sa/", |e| {
                matches!(e, IdentityError::BadSegment { .. })
            }),
            ("spiffe://td/ns/../sa/b", |e| {
                matches!(e, IdentityError::BadSegment { .. })
            }),
            ("spiffe://td/ns/./sa/b", |e| {
                matches!(e, IdentityError::BadSegment { .. })
            }),
            ("spiffe://td/ns/a\0/sa/b", |e| {
                matches!(e, IdentityError::BadSegment { .. })
            }),
            ("spiffe://td/ns/a/sa/b?x=1", |e| {
                matches!(e, IdentityError::BadSegment { .. })
            }),
            ("spiffe://td/ns/a/sa/b#f", |e| {
                matches!(e, IdentityError::BadSegment { .. })
            }),
            ("spiffe://td/ns/a%2F/sa/b", |e| {
                matches!(e, IdentityError::BadSegment { .. })
            }),
            ("spiffe://td/ns/ä/sa/b", |e| {
                matches!(e, IdentityError::BadSegment { .. })
            }),
            ("spiffe://td/ns/a b/sa/b", |e| {
                matches!(e, IdentityError::BadSegment { .. })
            }),
            (&long_seg, |e| matches!(e, IdentityError::BadSegment { .. })),
            (&long, |e| matches!(e, IdentityError::BadScheme { .. })),
        ];
        for (input, expected) in cases {
            let err = input
                .parse::<Identity>()
                .expect_err(&format!("{input:?} must be rejected"));
            assert!(expected(&err), "{input:?} gave the wrong error: {err}");
            assert!(err.to_string().len() < 400, "bounded message: {err}");
        }
        let too_long = format!("spiffe://td/ns/a/sa/{}", "b".repeat(MAX_ID_LEN));
        assert!(matches!(
            too_long.parse::<Identity>(),
            Err(IdentityError::TooLong { .. })
        ));
        assert_eq!(
            Identity::from_bytes(b"spiffe://td/ns/\xff/sa/b"),
            Err(IdentityError::NotUtf8)
        );
    }

    /// A deterministic property test: random bytes and random mutations of a
    /// valid id never panic, and whatever parses round-trips through Display
    /// and satisfies the grammar.
    #[test]
    fn arbitrary_bytes_never_panic_and_round_trip() {
        let mut state: u64 = 0x9e37_79b9_7f4a_7c15;
        let mut next = move || {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            state
        };
        let alphabet = b"spife:/nsa.-_\0%?#@ AZaz09\xff\xc3\xa4";
        let base = b"spiffe://cluster.local/ns/default/sa/app".to_vec();
        let mut accepted = 0;
        for round in 0..50_000 {
            let mut bytes = if round % 2 == 0 {
                base.clone()
            } else {
                Vec::new()
            };
            let edits = (next() % 6) as usize + usize::from(round % 2 == 1) * 20;
            for _ in 0..edits {
                let r = next();
                let pos = if bytes.is_empty() {
                    0
                } else {
                    (r as usize >> 8) % (bytes.len() + 1)
                };
                let byte = alphabet[(r as usize >> 32) % alphabet.len()];
                match r % 3 {
                    0 => bytes.insert(pos, byte),
                    1 if pos < bytes.len() => {
                        bytes.remove(pos);
                    }
                    _ if pos < bytes.len() => bytes[pos] = byte,
                    _ => bytes.push(byte),
                }
            }
            if let Ok(id) = Identity::from_bytes(&bytes) {
                accepted += 1;
                assert_eq!(id.as_str().as_bytes(), &bytes[..]);
                let again: Identity = id.to_string().parse().expect("round trip");
                assert_eq!(again, id);
                assert_eq!(
                    Identity::new(id.trust_domain(), id.namespace(), id.service_account()),
                    Ok(id.clone())
                );
                assert!(!id.as_str().contains('\0'));
            }
        }
        assert!(accepted > 100, "mutations should keep some ids valid");
    }
}
