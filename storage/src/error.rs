use std::io;
use std::path::PathBuf;

/// Errors of the storage layer.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// Bytes on disk failed a checksum, a magic number, a version or a bounds check.
    #[error("corruption in {path}: {detail}")]
    Corruption { path: PathBuf, detail: String },

    /// The operating system refused an IO operation.
    #[error("io error on {path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: io::Error,
    },

    /// The sled record store failed.
    #[error("record store: {0}")]
    Sled(#[from] sled::Error),

    /// An encoded value could not be decoded (after its checksum passed).
    #[error("decode {what}: {detail}")]
    Decode { what: &'static str, detail: String },

    /// The caller asked for something that cannot be done with this input.
    #[error("invalid input: {0}")]
    InvalidInput(String),
}

pub type Result<T> = std::result::Result<T, Error>;

impl Error {
    pub(crate) fn io(path: impl Into<PathBuf>, source: io::Error) -> Self {
        Error::Io {
            path: path.into(),
            source,
        }
    }

    pub(crate) fn corruption(path: impl Into<PathBuf>, detail: impl Into<String>) -> Self {
        Error::Corruption {
            path: path.into(),
            detail: detail.into(),
        }
    }

    /// Whether retrying the same operation may succeed. Corruption never heals by itself.
    pub fn is_retryable(&self) -> bool {
        match self {
            Error::Io { source, .. } => matches!(
                source.kind(),
                io::ErrorKind::Interrupted | io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
            ),
            Error::Corruption { .. } | Error::Sled(_) | Error::Decode { .. } | Error::InvalidInput(_) => false,
        }
    }
}

impl From<Error> for io::Error {
    fn from(err: Error) -> io::Error {
        match err {
            Error::Io { source, .. } => source,
            Error::Corruption { .. } | Error::Decode { .. } => {
                io::Error::new(io::ErrorKind::InvalidData, err.to_string())
            }
            Error::InvalidInput(_) => io::Error::new(io::ErrorKind::InvalidInput, err.to_string()),
            Error::Sled(_) => io::Error::other(err.to_string()),
        }
    }
}
