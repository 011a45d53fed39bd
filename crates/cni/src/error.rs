//! The library's error type.

use std::path::PathBuf;

/// Errors of the agent, its pod sources, data planes and installer.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// A file or socket operation failed.
    #[error("{context}")]
    Io {
        /// What was being done.
        context: String,
        /// The OS error.
        #[source]
        source: std::io::Error,
    },
    /// A pod record file is not a valid record.
    #[error("pod record {path}: {reason}")]
    Record {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        reason: String,
    },
    /// A CNI configuration file is not what it should be.
    #[error("cni config {path}: {reason}")]
    Config {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        reason: String,
    },
    /// A setting is invalid.
    #[error("invalid {what}: {reason}")]
    Invalid {
        /// The setting.
        what: String,
        /// Why.
        reason: String,
    },
    /// Programming capture rules, sets or routes failed.
    #[error("{context}")]
    Redirect {
        /// What was being done.
        context: String,
        /// The cause.
        #[source]
        source: Box<ambit_redirect::Error>,
    },
    /// Programming the tunnel links failed.
    #[error("{context}")]
    Tunnel {
        /// What was being done.
        context: String,
        /// The cause.
        #[source]
        source: Box<ambit_tunnel::Error>,
    },
    /// Opening or entering a network namespace failed.
    #[error("{context}")]
    Netns {
        /// What was being done.
        context: String,
        /// The cause.
        #[source]
        source: Box<ambit_netns::Error>,
    },
    /// The ZDS exchange with ztunnel failed.
    #[cfg(feature = "inpod")]
    #[error("{context}")]
    Zds {
        /// What was being done.
        context: String,
        /// The cause.
        #[source]
        source: Box<ambit_xds::ZdsError>,
    },
    /// The agent stopped.
    #[error("the node agent is shutting down")]
    Stopped,
}

impl Error {
    pub(crate) fn io(context: impl Into<String>, source: std::io::Error) -> Self {
        Self::Io {
            context: context.into(),
            source,
        }
    }

    pub(crate) fn invalid(what: impl Into<String>, reason: impl Into<String>) -> Self {
        Self::Invalid {
            what: what.into(),
            reason: reason.into(),
        }
    }
}

/// Adds context to the errors of the crates this one builds on.
pub(crate) trait Context<T> {
    /// Wraps the error with what was being done.
    fn context(self, what: impl FnOnce() -> String) -> Result<T, Error>;
}

impl<T> Context<T> for Result<T, ambit_redirect::Error> {
    fn context(self, what: impl FnOnce() -> String) -> Result<T, Error> {
        self.map_err(|source| Error::Redirect {
            context: what(),
            source: Box::new(source),
        })
    }
}

impl<T> Context<T> for Result<T, ambit_tunnel::Error> {
    fn context(self, what: impl FnOnce() -> String) -> Result<T, Error> {
        self.map_err(|source| Error::Tunnel {
            context: what(),
            source: Box::new(source),
        })
    }
}

impl<T> Context<T> for Result<T, ambit_netns::Error> {
    fn context(self, what: impl FnOnce() -> String) -> Result<T, Error> {
        self.map_err(|source| Error::Netns {
            context: what(),
            source: Box::new(source),
        })
    }
}

#[cfg(feature = "inpod")]
impl<T> Context<T> for Result<T, ambit_xds::ZdsError> {
    fn context(self, what: impl FnOnce() -> String) -> Result<T, Error> {
        self.map_err(|source| Error::Zds {
            context: what(),
            source: Box::new(source),
        })
    }
}
