//! The feed's one error type.

use std::io;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A received packet or message is not valid; it is dropped and counted.
    #[error("malformed feed packet: {0}")]
    Malformed(String),
    /// Bad feed configuration: the node refuses to start with it.
    #[error("invalid feed configuration: {0}")]
    InvalidConfig(String),
    #[error("feed I/O: {0}")]
    Io(#[from] io::Error),
}

impl Error {
    pub(crate) fn malformed(detail: impl Into<String>) -> Error {
        Error::Malformed(detail.into())
    }

    pub(crate) fn config(detail: impl Into<String>) -> Error {
        Error::InvalidConfig(detail.into())
    }

    /// Whether trying again may succeed (a send that failed for buffer
    /// space); bad packets and bad configuration stay bad.
    pub fn is_retryable(&self) -> bool {
        matches!(self, Error::Io(err) if matches!(err.kind(), io::ErrorKind::WouldBlock | io::ErrorKind::Interrupted)
            || err.raw_os_error() == Some(libc::ENOBUFS))
    }
}
