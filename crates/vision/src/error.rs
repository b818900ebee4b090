//! The vision crate's single error type.

/// Why a vision step (loading a network, running it, detecting or aligning a face, a whole
/// pipeline, reading the calibration table) failed.
#[derive(Debug, thiserror::Error)]
pub enum VisionError {
    /// A tensor operation failed (shape mismatch, missing weight, bad weights file).
    #[error("tensor operation failed: {0}")]
    Tensor(#[from] candle_core::Error),
    /// The weights file does not match what the network expects.
    #[error("weights do not fit the {network} network: {reason}")]
    Weights {
        network: &'static str,
        reason: String,
    },
    /// An input that the caller must fix (wrong size, empty image, empty batch).
    #[error("invalid input: {0}")]
    InvalidInput(String),
    /// The request's deadline passed or its caller went away (checked between layers).
    #[error(transparent)]
    Cancelled(#[from] faceproof_imaging::Cancelled),
    /// An image operation from faceproof-imaging failed.
    #[error("image operation failed: {0}")]
    Imaging(String),
    /// A pipeline step failed in a way no input explains (a model fault or a bug).
    #[error("{0}")]
    Internal(String),
    /// The cosine -> score table is malformed.
    #[error("invalid calibration table: {0}")]
    Calibration(String),
}

impl VisionError {
    /// The stop this failure is, when the work was cancelled (the deadline passed or the caller
    /// went away) rather than failed.
    pub fn cancellation(&self) -> Option<faceproof_imaging::Cancelled> {
        match self {
            Self::Cancelled(cancelled) => Some(*cancelled),
            _ => None,
        }
    }
}
