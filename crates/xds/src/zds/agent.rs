//! The node agent's end: listen, accept ztunnel, send requests, await acks.

use std::{
    fs,
    io::ErrorKind,
    os::{fd::BorrowedFd, unix::fs::FileTypeExt},
    path::{Path, PathBuf},
};

use tracing::{debug, info};

use super::{
    ACK_TIMEOUT, MAX_PACKET, ZdsError,
    codec::{self, describe_request},
    socket::{SeqPacket, SeqPacketListener},
};
use crate::proto::istio::workload::zds::{Version, WorkloadInfo, WorkloadRequest};

/// The agent's listening socket. Removes its socket file when dropped.
#[derive(Debug)]
pub struct ZdsListener {
    listener: SeqPacketListener,
    path: PathBuf,
}

impl ZdsListener {
    /// Binds `path`, replacing a stale socket file left there (but not any
    /// other kind of file) and creating missing parent directories.
    pub fn bind(path: impl AsRef<Path>) -> Result<Self, ZdsError> {
        let path = path.as_ref().to_owned();
        let path_err = |reason: String| ZdsError::Path {
            path: path.clone(),
            reason,
        };
        match fs::symlink_metadata(&path) {
            Ok(meta) if meta.file_type().is_socket() => fs::remove_file(&path)
                .map_err(|e| path_err(format!("removing the stale socket: {e}")))?,
            Ok(_) => return Err(path_err("exists and is not a socket".into())),
            Err(e) if e.kind() == ErrorKind::NotFound => {}
            Err(e) => return Err(path_err(e.to_string())),
        }
        if let Some(parent) = path.parent().filter(|p| !p.as_os_str().is_empty()) {
            fs::create_dir_all(parent).map_err(|e| path_err(format!("creating parent: {e}")))?;
        }
        let listener = SeqPacketListener::bind(&path)
            .map_err(|e| ZdsError::io(format!("binding {}", path.display()), e))?;
        info!(path = %path.display(), "zds listening");
        Ok(Self { listener, path })
    }

    /// The socket path.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Accepts the next ztunnel and reads its hello.
    pub async fn accept(&self) -> Result<ZdsConnection, ZdsError> {
        let socket = self
            .listener
            .accept()
            .await
            .map_err(|e| ZdsError::io("accepting", e))?;
        let mut conn = ZdsConnection {
            socket,
            version: Version::NotUsed,
        };
        let packet = conn.recv_packet_within("the hello").await?;
        conn.version = codec::decode_hello(&packet.0, packet.1)?;
        info!(version = ?conn.version, "ztunnel connected over zds");
        Ok(conn)
    }
}

impl Drop for ZdsListener {
    fn drop(&mut self) {
        let _ = fs::remove_file(&self.path);
    }
}

/// One snapshot entry.
#[derive(Debug)]
pub enum SnapshotItem<'fd> {
    /// A pod ztunnel may not know yet, with its netns.
    Add {
        /// The pod's uid.
        uid: String,
        /// Name, namespace, service account.
        info: Option<WorkloadInfo>,
        /// The pod's network namespace.
        netns: BorrowedFd<'fd>,
    },
    /// A pod ztunnel already has.
    Keep {
        /// The pod's uid.
        uid: String,
    },
}

/// A connected ztunnel, seen from the agent. Requests go one at a time:
/// each call returns once ztunnel has acked it.
#[derive(Debug)]
pub struct ZdsConnection {
    socket: SeqPacket,
    version: Version,
}

impl ZdsConnection {
    /// The protocol version from ztunnel's hello.
    pub fn version(&self) -> Version {
        self.version
    }

    /// Adds a pod, passing its netns descriptor.
    pub async fn add(
        &mut self,
        uid: &str,
        info: Option<WorkloadInfo>,
        netns: BorrowedFd<'_>,
    ) -> Result<(), ZdsError> {
        self.request(&codec::add_request(uid, info), &[netns]).await
    }

    /// Keeps a known pod (snapshot only).
    pub async fn keep(&mut self, uid: &str) -> Result<(), ZdsError> {
        self.request(&codec::keep_request(uid), &[]).await
    }

    /// Deletes a pod.
    pub async fn del(&mut self, uid: &str) -> Result<(), ZdsError> {
        self.request(&codec::del_request(uid), &[]).await
    }

    /// Ends the snapshot.
    pub async fn snapshot_sent(&mut self) -> Result<(), ZdsError> {
        self.request(&codec::snapshot_sent_request(), &[]).await
    }

    /// Sends a whole snapshot: every item (each acked), then
    /// `SnapshotSent`. Stops at the first rejection.
    pub async fn send_snapshot<'fd>(
        &mut self,
        items: impl IntoIterator<Item = SnapshotItem<'fd>>,
    ) -> Result<(), ZdsError> {
        for item in items {
            match item {
                SnapshotItem::Add { uid, info, netns } => self.add(&uid, info, netns).await?,
                SnapshotItem::Keep { uid } => self.keep(&uid).await?,
            }
        }
        self.snapshot_sent().await
    }

    /// Sends any request with any descriptors and waits for its ack; an
    /// ack with an error becomes [`ZdsError::Rejected`].
    pub async fn request(
        &mut self,
        request: &WorkloadRequest,
        fds: &[BorrowedFd<'_>],
    ) -> Result<(), ZdsError> {
        let description = describe_request(request);
        self.send_raw(&codec::encode_request(request), fds, &description)
            .await
    }

    /// Sends raw bytes as one packet (for tests of malformed input) and
    /// waits for the ack; `description` names it in errors.
    pub async fn send_raw(
        &mut self,
        bytes: &[u8],
        fds: &[BorrowedFd<'_>],
        description: &str,
    ) -> Result<(), ZdsError> {
        debug!(request = description, fds = fds.len(), "zds send");
        self.socket
            .send(bytes, fds)
            .await
            .map_err(|e| ZdsError::io(format!("sending {description}"), e))?;
        let (bytes, fds) = self
            .recv_packet_within(&format!("the ack of {description}"))
            .await?;
        let ack = codec::decode_ack(&bytes, fds)?;
        if ack.error.is_empty() {
            Ok(())
        } else {
            Err(ZdsError::Rejected {
                request: description.to_owned(),
                error: ack.error,
            })
        }
    }

    /// [`Self::recv_packet`] within [`ACK_TIMEOUT`].
    async fn recv_packet_within(
        &mut self,
        what: &str,
    ) -> Result<(Vec<u8>, Vec<std::os::fd::OwnedFd>), ZdsError> {
        tokio::time::timeout(ACK_TIMEOUT, self.recv_packet())
            .await
            .map_err(|_| ZdsError::Timeout {
                what: what.to_owned(),
                after: ACK_TIMEOUT,
            })?
    }

    async fn recv_packet(&mut self) -> Result<(Vec<u8>, Vec<std::os::fd::OwnedFd>), ZdsError> {
        let mut buf = vec![0; MAX_PACKET];
        let packet = self
            .socket
            .recv(&mut buf)
            .await
            .map_err(|e| ZdsError::io("receiving", e))?;
        if packet.truncated {
            return Err(ZdsError::Truncated { max: MAX_PACKET });
        }
        if packet.len == 0 && packet.fds.is_empty() {
            return Err(ZdsError::Closed);
        }
        buf.truncate(packet.len);
        Ok((buf, packet.fds))
    }
}
