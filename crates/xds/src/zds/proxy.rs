//! ztunnel's end: connect, say hello, receive validated requests, ack.

use std::{future::Future, path::Path};

use tracing::{debug, info, warn};

use super::{
    MAX_PACKET, ZdsError,
    codec::{self, ZdsMessage},
    socket::SeqPacket,
};
use crate::{ads::HandlerError, proto::istio::workload::zds::Version};

/// Handles ztunnel's side of the requests.
pub trait ZdsHandler: Send {
    /// Acts on one valid request; an error is sent back as `Ack.error`.
    fn handle(
        &mut self,
        message: ZdsMessage,
    ) -> impl Future<Output = Result<(), HandlerError>> + Send;
}

/// ztunnel's connection to the node agent.
#[derive(Debug)]
pub struct ZdsClient {
    socket: SeqPacket,
}

impl ZdsClient {
    /// Connects to the agent at `path` and sends the hello (version 1).
    pub async fn connect(path: impl AsRef<Path>) -> Result<Self, ZdsError> {
        let path = path.as_ref();
        let socket = SeqPacket::connect(path)
            .await
            .map_err(|e| ZdsError::io(format!("connecting to {}", path.display()), e))?;
        socket
            .send(&codec::encode_hello(Version::V1), &[])
            .await
            .map_err(|e| ZdsError::io("sending the hello", e))?;
        info!(path = %path.display(), "connected to the node agent over zds");
        Ok(Self { socket })
    }

    /// Receives the next request. `Ok(None)`: the agent closed the
    /// connection. `Ok(Some(Err(_)))`: a packet that breaks the protocol
    /// (its descriptors already closed) — answer it with
    /// [`ack`](Self::ack) carrying the error. `Err(_)`: the socket failed.
    pub async fn recv(&mut self) -> Result<Option<Result<ZdsMessage, ZdsError>>, ZdsError> {
        let mut buf = vec![0; MAX_PACKET];
        let packet = self
            .socket
            .recv(&mut buf)
            .await
            .map_err(|e| ZdsError::io("receiving", e))?;
        if packet.truncated {
            drop(packet.fds);
            return Ok(Some(Err(ZdsError::Truncated { max: MAX_PACKET })));
        }
        if packet.len == 0 && packet.fds.is_empty() {
            return Ok(None);
        }
        Ok(Some(codec::decode_request(&buf[..packet.len], packet.fds)))
    }

    /// Acks the last request: `None` for success, or the error text.
    pub async fn ack(&mut self, error: Option<&str>) -> Result<(), ZdsError> {
        self.socket
            .send(&codec::encode_ack(error), &[])
            .await
            .map_err(|e| ZdsError::io("sending an ack", e))
    }

    /// Serves requests until the agent closes the connection: each valid
    /// one goes to `handler`, each invalid one is rejected; every request
    /// is acked.
    pub async fn run<H: ZdsHandler>(mut self, handler: &mut H) -> Result<(), ZdsError> {
        while let Some(request) = self.recv().await? {
            match request {
                Ok(message) => {
                    let description = message.describe();
                    match handler.handle(message).await {
                        Ok(()) => {
                            debug!(request = %description, "zds request handled");
                            self.ack(None).await?;
                        }
                        Err(error) => {
                            warn!(request = %description, %error, "zds request failed");
                            self.ack(Some(&error.to_string())).await?;
                        }
                    }
                }
                Err(error) => {
                    warn!(%error, "zds request rejected");
                    self.ack(Some(&error.to_string())).await?;
                }
            }
        }
        info!("the node agent closed the zds connection");
        Ok(())
    }
}
