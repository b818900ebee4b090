//! The contract between the gRPC service and the anti-spoofing model code. Engines run on the
//! inference pool's threads, never on the async runtime.

use faceproof_imaging::{Cancellation, Cancelled};
use faceproof_proto::common::v1::{Face, FaceIssueReason, SearchMode};
use faceproof_runtime::DeadlineExceeded;

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

/// One network's verdict, e.g. `MiniFASNetV2@2.7`.
#[derive(Debug, Clone, PartialEq)]
pub struct ModelVerdict {
    pub model: String,
    /// Probability of the "real" class, 0..1.
    pub liveness_score: f64,
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

/// Why an image cannot be scored, e.g. `FaceTooSmall` with "face is 31 px wide, minimum 48".
#[derive(Debug, Clone, PartialEq)]
pub struct FaceRejection {
    pub reason: FaceIssueReason,
    pub detail: String,
    /// The face concerned, when one was found (e.g. the subject that is too close to the border).
    pub face: Option<Face>,
}

impl FaceRejection {
    pub fn new(reason: FaceIssueReason, detail: impl Into<String>) -> Self {
        Self {
            reason,
            detail: detail.into(),
            face: None,
        }
    }

    /// Whether the image itself is unusable (undecodable, too large, unsupported format) as
    /// opposed to a capture-quality gate on its face.
    pub fn is_image_level(&self) -> bool {
        matches!(
            self.reason,
            FaceIssueReason::ImageUndecodable
                | FaceIssueReason::ImageTooLarge
                | FaceIssueReason::UnsupportedFormat
                | FaceIssueReason::ImageTruncated
                | FaceIssueReason::ImageBadAspectRatio
                | FaceIssueReason::Unspecified
        )
    }
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

/// Passive anti-spoofing, run inside the inference pool.
pub trait LivenessEngine: Send + Sync + 'static {
    /// Scores the subject face of the frame (or the hinted face). Implementations call
    /// `cancel.check()?` inside their long stages (decode, inference) so abandoned work stops
    /// within milliseconds of the deadline or of the caller going away.
    fn check(&self, job: CheckJob, cancel: &Cancellation) -> Result<LivenessVerdict, EngineError>;

    /// Runs the whole pipeline once; the service reports SERVING only after this succeeds.
    fn warm_up(&self) -> Result<(), EngineError>;
}
