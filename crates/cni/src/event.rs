//! Pod events from the plugin to the node agent, and the plugin's side of
//! the transport: one HTTP/1.1 `POST` on the unix socket
//! `<run_dir>/pluginevent.sock` (`/cmdadd`, `/cmddel`), as Istio's plugin
//! does. The plugin is a short-lived process, so this client is plain
//! blocking std code with timeouts; the agent's server is in [`crate::agent`].

use std::io::{Read, Write};
use std::net::IpAddr;
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::{Deserialize, Serialize};

/// Path of the add event.
pub const ADD_PATH: &str = "/cmdadd";
/// Path of the delete event.
pub const DEL_PATH: &str = "/cmddel";

/// What the plugin tells the agent about one pod sandbox.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PodEvent {
    /// The sandbox's network namespace (`CNI_NETNS`; empty on some DELs).
    #[serde(default)]
    pub netns: String,
    /// `CNI_CONTAINERID`.
    pub container_id: String,
    /// `CNI_IFNAME`.
    #[serde(default)]
    pub ifname: String,
    /// `K8S_POD_NAME`.
    pub pod_name: String,
    /// `K8S_POD_NAMESPACE`.
    pub pod_namespace: String,
    /// `K8S_POD_UID`, when the runtime sent it.
    #[serde(default)]
    pub pod_uid: Option<String>,
    /// The pod's addresses from `prevResult`.
    #[serde(default)]
    pub ips: Vec<IpAddr>,
    /// The identity of `netns`, filled in by the agent when it takes the
    /// event (the plugin leaves it empty) and kept in the sandbox record,
    /// so a restarted agent can tell the same sandbox from a new one at
    /// the same path.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub netns_id: Option<crate::pod::NetnsId>,
}

/// What the agent says about an ADD it took (the body of its 200 answer).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AddAnswer {
    /// The pod is enrolled: its traffic is captured.
    Enrolled,
    /// The agent's pod source says the pod is not in the mesh.
    NotAmbient,
    /// The agent's pod source does not know the pod (yet).
    Unknown,
    /// The pod is ambient but cannot be enrolled yet (no address or netns).
    NotReady,
    /// A DEL was taken.
    Removed,
}

impl AddAnswer {
    /// The body text.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Enrolled => "enrolled",
            Self::NotAmbient => "not-ambient",
            Self::Unknown => "unknown",
            Self::NotReady => "not-ready",
            Self::Removed => "removed",
        }
    }

    /// Parses a body text; `None` for anything else.
    pub fn parse(body: &str) -> Option<Self> {
        [
            Self::Enrolled,
            Self::NotAmbient,
            Self::Unknown,
            Self::NotReady,
            Self::Removed,
        ]
        .into_iter()
        .find(|a| a.as_str() == body.trim())
    }
}

/// Which event.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EventKind {
    /// A sandbox was attached (`/cmdadd`).
    Add,
    /// A sandbox was detached (`/cmddel`).
    Del,
}

impl EventKind {
    /// The HTTP path.
    pub fn path(self) -> &'static str {
        match self {
            Self::Add => ADD_PATH,
            Self::Del => DEL_PATH,
        }
    }
}

/// Why delivering an event failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum PostError {
    /// Nothing is listening (agent not started, or restarting).
    #[error("connecting to the node agent at {path}: {source}")]
    Unreachable {
        /// The socket path.
        path: PathBuf,
        /// The OS error.
        #[source]
        source: std::io::Error,
    },
    /// The connection broke or timed out mid-request.
    #[error("talking to the node agent at {path}: {source}")]
    Io {
        /// The socket path.
        path: PathBuf,
        /// The OS error.
        #[source]
        source: std::io::Error,
    },
    /// The answer was not HTTP.
    #[error("the node agent sent a malformed answer: {0}")]
    Malformed(String),
    /// The agent answered with a non-200 status.
    #[error("the node agent refused the event ({status}): {body}")]
    Refused {
        /// The HTTP status.
        status: u16,
        /// The body (the agent's error).
        body: String,
    },
}

/// Where events go. The plugin uses [`UnixHttpSink`]; tests substitute
/// their own.
pub trait EventSink {
    /// Delivers one event to the agent of `run_dir`; `Ok` (with the
    /// answer's body) only on a 200 answer.
    fn post(&self, run_dir: &Path, kind: EventKind, event: &PodEvent) -> Result<String, PostError>;
}

/// Bytes reserved for the agent's answer (head and short body).
const ANSWER_CAPACITY: usize = 1024;

/// Posts events to `<run_dir>/pluginevent.sock`.
#[derive(Debug, Clone)]
pub struct UnixHttpSink {
    /// Connect, write and read timeout.
    pub timeout: Duration,
}

impl Default for UnixHttpSink {
    fn default() -> Self {
        Self {
            timeout: Duration::from_secs(30),
        }
    }
}

impl EventSink for UnixHttpSink {
    fn post(&self, run_dir: &Path, kind: EventKind, event: &PodEvent) -> Result<String, PostError> {
        let socket: PathBuf = run_dir.join(crate::spec::EVENT_SOCKET);
        let body = serde_json::to_vec(event).map_err(|e| PostError::Malformed(e.to_string()))?;
        let io = |source| PostError::Io {
            path: socket.clone(),
            source,
        };
        let mut s = UnixStream::connect(&socket).map_err(|source| PostError::Unreachable {
            path: socket.clone(),
            source,
        })?;
        s.set_read_timeout(Some(self.timeout)).map_err(io)?;
        s.set_write_timeout(Some(self.timeout)).map_err(io)?;
        // Head and body go out in one write: the agent then wakes once to
        // read the whole request, not once for the head and again for
        // the body.
        let mut request = format!(
            "POST {} HTTP/1.1\r\nHost: istio-cni\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
            kind.path(),
            body.len()
        )
        .into_bytes();
        request.extend_from_slice(&body);
        s.write_all(&request).map_err(io)?;
        // Room for a whole answer, so it is read in one call (and the
        // end in a second), not in small probing reads.
        let mut answer = Vec::with_capacity(ANSWER_CAPACITY);
        s.read_to_end(&mut answer).map_err(io)?;
        let (status, body) = parse_response(&answer)?;
        if status == 200 {
            Ok(body)
        } else {
            Err(PostError::Refused { status, body })
        }
    }
}

/// Splits an HTTP/1.1 response (read to EOF) into status and body.
pub fn parse_response(bytes: &[u8]) -> Result<(u16, String), PostError> {
    let text = String::from_utf8_lossy(bytes);
    let (head, body) = text
        .split_once("\r\n\r\n")
        .ok_or_else(|| PostError::Malformed("no end of headers".into()))?;
    let status_line = head.lines().next().unwrap_or_default();
    let mut parts = status_line.split_whitespace();
    let (Some(version), Some(code)) = (parts.next(), parts.next()) else {
        return Err(PostError::Malformed(format!("status line {status_line:?}")));
    };
    if !version.starts_with("HTTP/1.") {
        return Err(PostError::Malformed(format!("status line {status_line:?}")));
    }
    let status = code
        .parse()
        .map_err(|_| PostError::Malformed(format!("status line {status_line:?}")))?;
    // Chunked bodies carry framing we do not need: the body is only ever a
    // short error text, so keep the lines that are not chunk sizes.
    let chunked = head.lines().any(|l| {
        l.to_ascii_lowercase()
            .starts_with("transfer-encoding: chunked")
    });
    let body = if chunked {
        body.split("\r\n")
            .enumerate()
            .filter(|(i, _)| i % 2 == 1)
            .map(|(_, l)| l)
            .collect::<String>()
    } else {
        body.to_owned()
    };
    Ok((status, body.trim().to_owned()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn responses_parse() {
        assert_eq!(
            parse_response(b"HTTP/1.1 200 OK\r\ncontent-length: 0\r\n\r\n").expect("ok"),
            (200, String::new())
        );
        assert_eq!(
            parse_response(
                b"HTTP/1.1 500 Internal Server Error\r\ntransfer-encoding: chunked\r\n\r\n4\r\nboom\r\n0\r\n\r\n"
            )
            .expect("chunked"),
            (500, "boom".into())
        );
        assert!(parse_response(b"garbage").is_err());
        assert!(parse_response(b"SSH-2.0 x\r\n\r\n").is_err());
    }

    #[test]
    fn answers_round_trip() {
        for a in [
            AddAnswer::Enrolled,
            AddAnswer::NotAmbient,
            AddAnswer::Unknown,
            AddAnswer::NotReady,
            AddAnswer::Removed,
        ] {
            assert_eq!(AddAnswer::parse(a.as_str()), Some(a));
        }
        assert_eq!(AddAnswer::parse("Enrolled(maybe)"), None);
    }

    #[test]
    fn event_json_round_trips() {
        let e = PodEvent {
            netns: "/run/netns/p".into(),
            container_id: "c".into(),
            ifname: "eth0".into(),
            pod_name: "a".into(),
            pod_namespace: "b".into(),
            pod_uid: None,
            ips: vec!["10.0.0.1".parse().expect("ip")],
            netns_id: Some(crate::pod::NetnsId {
                dev: 4,
                ino: 4026532000,
            }),
        };
        let s = serde_json::to_string(&e).expect("json");
        assert_eq!(serde_json::from_str::<PodEvent>(&s).expect("back"), e);
    }

    #[test]
    fn a_missing_socket_is_unreachable() {
        let sink = UnixHttpSink::default();
        let e = PodEvent {
            netns: String::new(),
            container_id: "c".into(),
            ifname: String::new(),
            pod_name: "a".into(),
            pod_namespace: "b".into(),
            pod_uid: None,
            ips: vec![],
            netns_id: None,
        };
        assert!(matches!(
            sink.post(Path::new("/nonexistent-ambit-cni-dir"), EventKind::Add, &e),
            Err(PostError::Unreachable { .. })
        ));
    }
}
