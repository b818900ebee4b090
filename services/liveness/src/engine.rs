//! The contract between the gRPC service and the anti-spoofing model code. Engines run on the
//! inference pool's threads, never on the async runtime.

use faceproof_imaging::{Cancellation, Cancelled};
use faceproof_proto::common::v1::{Face, SearchMode};
use faceproof_runtime::DeadlineExceeded;
use faceproof_vision::VisionError;
/// Why an image cannot be scored (with the face concerned, when one was found) and each
/// network's verdict: the pipeline's own types.
pub use faceproof_vision::pipeline::{FaceRejection, ModelVerdict};

/// A validated liveness request, owned so it can move to a worker thread.
#[derive(Debug, Clone)]
pub struct CheckJob {
    /// The full frame (the crops reach 4x the face size: never a pre-cropped face).
    pub image: Vec<u8>,
    pub mode: SearchMode,
    /// The matcher's face in the same image: when present the engine need not detect again.
    pub face_hint: Option<Face>,
    /// DESKTOP, IOS or ANDROID, as the caller said.
    pub os: String,
}

/// The scores for the face that was checked.
#[derive(Debug, Clone, PartialEq)]
pub struct LivenessVerdict {
    /// The face that was scored (the hint, or the detected subject).
    pub face: Face,
    /// Probability of the "real" class averaged over the models, 0..1.
    pub liveness_score: f64,
    /// How the spoof probability splits between attack types, when the models can tell.
    pub attack: Option<AttackSplit>,
    pub models: Vec<ModelVerdict>,
}

/// Print vs screen share of the spoof probability.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct AttackSplit {
    pub print_probability: f64,
    pub screen_probability: f64,
}

/// Failures that end a liveness check.
#[derive(Debug, thiserror::Error)]
pub enum EngineError {
    /// The image cannot be scored. Image-level reasons become INVALID_ARGUMENT on `image`;
    /// capture-quality gates become the response's `issue` outcome.
    #[error("image rejected: {} ({})", .0.reason.code(), .0.detail)]
    Rejected(FaceRejection),
    #[error(transparent)]
    DeadlineExceeded(#[from] DeadlineExceeded),
    /// Stopped inside a stage: the deadline passed or the caller went away (the service tells
    /// which from its [`Cancellation`]).
    #[error(transparent)]
    Cancelled(#[from] Cancelled),
    /// A model or bug failure; logged, answered INTERNAL.
    #[error("engine failure: {0}")]
    Internal(String),
}

/// The pipeline's failures: a stop stays a stop, anything else is answered INTERNAL.
impl From<VisionError> for EngineError {
    fn from(error: VisionError) -> Self {
        let cancelled = error.cancellation();
        cancelled.map_or_else(|| Self::Internal(error.to_string()), Self::Cancelled)
    }
}

/// Passive anti-spoofing, run inside the inference pool.
pub trait LivenessEngine: Send + Sync + 'static {
    /// Scores the subject face of the frame (or the hinted face). Implementations call
    /// `cancel.check()?` inside their long stages (decode, inference) so abandoned work stops
    /// within milliseconds of the deadline or of the caller going away.
    fn check(&self, job: CheckJob, cancel: &Cancellation) -> Result<LivenessVerdict, EngineError>;

    /// Runs the whole pipeline once; the service reports SERVING only after this succeeds.
    fn warm_up(&self) -> Result<(), EngineError>;
}
