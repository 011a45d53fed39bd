//! ZDS messages as bytes plus descriptors, and the validation rules:
//! an add carries exactly one netns fd; nothing else carries any.
//!
//! Descriptors passed in are owned: whatever is rejected is closed when
//! the error is returned, so a bad message never leaks an fd.

use std::os::fd::OwnedFd;

use prost::Message;

use super::ZdsError;
use crate::proto::istio::workload::zds::{
    Ack, AddWorkload, DelWorkload, KeepWorkload, SnapshotSent, Version, WorkloadInfo,
    WorkloadRequest, WorkloadResponse, ZdsHello, workload_request::Payload,
    workload_response::Payload as ResponsePayload,
};

/// A validated request from the node agent.
#[derive(Debug)]
pub enum ZdsMessage {
    /// Start serving a pod; `netns` is its network namespace.
    Add {
        /// The pod's uid.
        uid: String,
        /// Its name, namespace and service account, when sent.
        info: Option<WorkloadInfo>,
        /// The pod's network namespace (from `SCM_RIGHTS`).
        netns: OwnedFd,
    },
    /// Snapshot entry: keep serving an already-known pod.
    Keep {
        /// The pod's uid.
        uid: String,
    },
    /// Stop serving a pod.
    Del {
        /// The pod's uid.
        uid: String,
    },
    /// The snapshot is complete; pods not in it can be dropped.
    SnapshotSent,
}

impl ZdsMessage {
    /// A short description for logs and errors, e.g. `add uid-1`.
    pub fn describe(&self) -> String {
        match self {
            Self::Add { uid, .. } => format!("add {uid}"),
            Self::Keep { uid } => format!("keep {uid}"),
            Self::Del { uid } => format!("del {uid}"),
            Self::SnapshotSent => "snapshot-sent".to_owned(),
        }
    }
}

/// Describes a request for errors, e.g. `add uid-1`.
pub fn describe_request(request: &WorkloadRequest) -> String {
    match &request.payload {
        Some(Payload::Add(a)) => format!("add {}", a.uid),
        Some(Payload::Keep(k)) => format!("keep {}", k.uid),
        Some(Payload::Del(d)) => format!("del {}", d.uid),
        Some(Payload::SnapshotSent(_)) => "snapshot-sent".to_owned(),
        None => "empty request".to_owned(),
    }
}

/// Decodes and validates a request packet and the fds that came with it.
/// On error every fd is closed.
pub fn decode_request(bytes: &[u8], mut fds: Vec<OwnedFd>) -> Result<ZdsMessage, ZdsError> {
    let request = WorkloadRequest::decode(bytes).map_err(|source| ZdsError::Decode {
        what: "workload request",
        source,
    })?;
    let fd_count = fds.len();
    let no_fds = |what: String| {
        if fd_count == 0 {
            Ok(())
        } else {
            Err(ZdsError::invalid(format!(
                "{what} must not carry file descriptors (got {fd_count})"
            )))
        }
    };
    match request.payload {
        Some(Payload::Add(AddWorkload { uid, workload_info })) => {
            if uid.is_empty() {
                return Err(ZdsError::invalid("add without a uid"));
            }
            match fds.pop() {
                Some(netns) if fds.is_empty() => Ok(ZdsMessage::Add {
                    uid,
                    info: workload_info,
                    netns,
                }),
                _ => Err(ZdsError::invalid(format!(
                    "add {uid}: expected exactly one netns file descriptor, got {fd_count}"
                ))),
            }
        }
        Some(Payload::Keep(KeepWorkload { uid })) => {
            no_fds(format!("keep {uid}"))?;
            if uid.is_empty() {
                return Err(ZdsError::invalid("keep without a uid"));
            }
            Ok(ZdsMessage::Keep { uid })
        }
        Some(Payload::Del(DelWorkload { uid })) => {
            no_fds(format!("del {uid}"))?;
            if uid.is_empty() {
                return Err(ZdsError::invalid("del without a uid"));
            }
            Ok(ZdsMessage::Del { uid })
        }
        Some(Payload::SnapshotSent(SnapshotSent {})) => {
            no_fds("snapshot-sent".to_owned())?;
            Ok(ZdsMessage::SnapshotSent)
        }
        None => Err(ZdsError::invalid(
            "request without a payload (unknown or empty message)",
        )),
    }
}

/// Encodes a request (the fds travel beside it).
pub fn encode_request(request: &WorkloadRequest) -> Vec<u8> {
    request.encode_to_vec()
}

/// The request for an add.
pub fn add_request(uid: &str, info: Option<WorkloadInfo>) -> WorkloadRequest {
    WorkloadRequest {
        payload: Some(Payload::Add(AddWorkload {
            uid: uid.to_owned(),
            workload_info: info,
        })),
    }
}

/// The request for a keep.
pub fn keep_request(uid: &str) -> WorkloadRequest {
    WorkloadRequest {
        payload: Some(Payload::Keep(KeepWorkload {
            uid: uid.to_owned(),
        })),
    }
}

/// The request for a delete.
pub fn del_request(uid: &str) -> WorkloadRequest {
    WorkloadRequest {
        payload: Some(Payload::Del(DelWorkload {
            uid: uid.to_owned(),
        })),
    }
}

/// The end-of-snapshot request.
pub fn snapshot_sent_request() -> WorkloadRequest {
    WorkloadRequest {
        payload: Some(Payload::SnapshotSent(SnapshotSent {})),
    }
}

/// Encodes an ack: `None` is success.
pub fn encode_ack(error: Option<&str>) -> Vec<u8> {
    WorkloadResponse {
        payload: Some(ResponsePayload::Ack(Ack {
            error: error.unwrap_or_default().to_owned(),
        })),
    }
    .encode_to_vec()
}

/// Decodes a response packet into its ack. Responses never carry fds;
/// pass any that came with the packet and they are closed.
pub fn decode_ack(bytes: &[u8], fds: Vec<OwnedFd>) -> Result<Ack, ZdsError> {
    if !fds.is_empty() {
        return Err(ZdsError::invalid(format!(
            "a response must not carry file descriptors (got {})",
            fds.len()
        )));
    }
    let response = WorkloadResponse::decode(bytes).map_err(|source| ZdsError::Decode {
        what: "workload response",
        source,
    })?;
    match response.payload {
        Some(ResponsePayload::Ack(ack)) => Ok(ack),
        None => Err(ZdsError::invalid("response without an ack")),
    }
}

/// Encodes ztunnel's hello.
pub fn encode_hello(version: Version) -> Vec<u8> {
    ZdsHello {
        version: version as i32,
    }
    .encode_to_vec()
}

/// Decodes ztunnel's hello; only [`Version::V1`] is accepted.
pub fn decode_hello(bytes: &[u8], fds: Vec<OwnedFd>) -> Result<Version, ZdsError> {
    if !fds.is_empty() {
        return Err(ZdsError::invalid(format!(
            "the hello must not carry file descriptors (got {})",
            fds.len()
        )));
    }
    let hello = ZdsHello::decode(bytes).map_err(|source| ZdsError::Decode {
        what: "hello",
        source,
    })?;
    match Version::try_from(hello.version) {
        Ok(Version::V1) => Ok(Version::V1),
        _ => Err(ZdsError::invalid(format!(
            "unsupported zds version {}",
            hello.version
        ))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fd() -> OwnedFd {
        std::fs::File::open("/dev/null").expect("open").into()
    }

    #[test]
    fn add_needs_exactly_one_fd() {
        let bytes = encode_request(&add_request("u1", None));
        let err = decode_request(&bytes, vec![]).expect_err("no fd");
        assert!(err.to_string().contains("exactly one"), "{err}");
        let err = decode_request(&bytes, vec![fd(), fd()]).expect_err("two fds");
        assert!(err.to_string().contains("got 2"), "{err}");
        assert!(matches!(
            decode_request(&bytes, vec![fd()]),
            Ok(ZdsMessage::Add { uid, .. }) if uid == "u1"
        ));
    }

    #[test]
    fn others_must_not_carry_fds() {
        for request in [
            keep_request("u1"),
            del_request("u1"),
            snapshot_sent_request(),
        ] {
            let bytes = encode_request(&request);
            let err = decode_request(&bytes, vec![fd()]).expect_err("fd");
            assert!(err.to_string().contains("must not carry"), "{err}");
            decode_request(&bytes, vec![]).expect("valid without fd");
        }
    }

    #[test]
    fn garbage_and_truncation_are_errors() {
        let bytes = encode_request(&add_request("a-long-uid", None));
        for cut in 1..bytes.len() {
            assert!(decode_request(&bytes[..cut], vec![]).is_err(), "cut {cut}");
        }
        assert!(decode_request(&[0xff, 0xff, 0xff], vec![]).is_err());
        assert!(decode_request(&[], vec![]).is_err());
        assert!(decode_hello(&[0x08, 0x00], vec![]).is_err());
        assert_eq!(
            decode_hello(&encode_hello(Version::V1), vec![]).expect("hello"),
            Version::V1
        );
        assert!(decode_ack(&[0x0a], vec![]).is_err());
        assert_eq!(
            decode_ack(&encode_ack(Some("boom")), vec![])
                .expect("ack")
                .error,
            "boom"
        );
    }

    #[test]
    fn wire_bytes_by_hand() {
        // DelWorkload.uid is field 2 inside WorkloadRequest.del (field 2).
        let bytes = [0x12, 0x03, 0x12, 0x01, b'x'];
        assert!(matches!(
            decode_request(&bytes, vec![]),
            Ok(ZdsMessage::Del { uid }) if uid == "x"
        ));
        // keep is field 5: tag 0x2a.
        let bytes = [0x2a, 0x03, 0x0a, 0x01, b'k'];
        assert!(matches!(
            decode_request(&bytes, vec![]),
            Ok(ZdsMessage::Keep { uid }) if uid == "k"
        ));
        // SnapshotSent is field 3: tag 0x1a, empty body.
        assert!(matches!(
            decode_request(&[0x1a, 0x00], vec![]),
            Ok(ZdsMessage::SnapshotSent)
        ));
        assert_eq!(encode_hello(Version::V1), [0x08, 0x01]);
        assert_eq!(encode_ack(None), [0x0a, 0x00]);
    }
}
