//! The vision crate's single error type.

/// Why a vision step (loading a network, running it, detecting or aligning a face) failed.
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
}
