//! The contract between the gRPC service and the model code: the service validates, schedules
//! and maps errors; an engine turns each image's bytes into its subject's face and embedding,
//! compared by cosine. Engines run on the inference pool's threads, never on the async runtime:
//! the service runs the probe and each gallery image as its own job, so idle workers share one
//! request.

use faceproof_imaging::{Cancellation, Cancelled};
use faceproof_proto::common::v1::SearchMode;
use faceproof_runtime::DeadlineExceeded;
use faceproof_vision::VisionError;
/// The side of a comparison an image is on, and its subject ready to compare.
pub use faceproof_vision::pipeline::matching::{ImageRole, SubjectEmbedding};
/// Why an image has no usable face, one gallery image's similarity and the whole answer: the
/// match pipeline's own types.
pub use faceproof_vision::pipeline::{CompareOutcome, FaceRejection, GalleryMatch};

/// A validated comparison request, owned so it can move to a worker thread.
#[derive(Debug, Clone)]
pub struct CompareJob {
    pub probe: Vec<u8>,
    pub gallery: Vec<Vec<u8>>,
    pub mode: SearchMode,
}

/// Failures that end a comparison. Gallery-item problems are not errors: they are entries of
/// [`CompareOutcome::gallery`].
#[derive(Debug, thiserror::Error)]
pub enum EngineError {
    /// The probe has no usable face (or cannot be decoded): INVALID_ARGUMENT on `probe`.
    #[error("probe rejected: {} ({})", .0.reason.code(), .0.detail)]
    Probe(FaceRejection),
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

/// One image's part of a comparison: its subject, or why it has none.
pub type SubjectResult = Result<Result<SubjectEmbedding, FaceRejection>, EngineError>;

/// Face comparison, run inside the inference pool.
pub trait MatchEngine: Send + Sync + 'static {
    /// One image of a comparison: decode, detect, choose the subject (a probe with a rival
    /// face is refused), gate, align, embed. Implementations call `cancel.check()?` inside
    /// their long stages (decode, inference) so abandoned work stops within milliseconds of the
    /// deadline, of the caller going away or of another image of the request failing.
    fn embed_subject(
        &self,
        image: &[u8],
        mode: SearchMode,
        role: ImageRole,
        cancel: &Cancellation,
    ) -> SubjectResult;

    /// Runs the whole pipeline once so the first real request is not slow; the service reports
    /// SERVING only after this succeeds.
    fn warm_up(&self) -> Result<(), EngineError>;
}
