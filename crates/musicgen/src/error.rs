use std::path::PathBuf;

/// Every failure of the engine. Messages name the bad value and what to do about it.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A request parameter is out of range; `field` names it so callers can point at it.
    #[error("invalid {field}: {message}")]
    InvalidRequest { field: &'static str, message: String },

    /// The checkpoint directory lacks a file we need.
    #[error("missing file {path}: {hint}")]
    MissingFile { path: PathBuf, hint: String },

    /// A checkpoint file exists but cannot be used (corrupt, wrong shape, unknown format).
    #[error("bad checkpoint {path}: {message}")]
    BadCheckpoint { path: PathBuf, message: String },

    /// The configuration names an architecture or option this engine does not implement.
    #[error("unsupported model: {0}")]
    Unsupported(String),

    /// Downloading from the Hugging Face hub failed (offline, unreachable, gated, unknown id).
    #[error("cannot get model {model}: {message}")]
    Download { model: String, message: String },

    /// The requested device cannot be used by this build or machine.
    #[error("device {device}: {message}")]
    Device { device: String, message: String },

    /// The caller's cancellation token was set; generation stopped between two steps.
    #[error("generation cancelled")]
    Cancelled,

    #[error("tokenizer: {0}")]
    Tokenizer(String),

    /// An input audio file cannot be used (missing, empty, not audio, corrupt, too long).
    #[error("{}: {message}", path.display())]
    BadAudio { path: PathBuf, message: String },

    #[error("audio output: {0}")]
    Audio(String),

    #[error(transparent)]
    Tensor(#[from] candle_core::Error),

    #[error(transparent)]
    Io(#[from] std::io::Error),
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

impl Error {
    pub(crate) fn invalid(field: &'static str, message: impl Into<String>) -> Self {
        Error::InvalidRequest { field, message: message.into() }
    }
}
