//! The contract between the gRPC service and the model code: the service validates, schedules
//! and maps errors; an engine turns image bytes into faces and cosine similarities. Engines run
//! on the inference pool's threads, never on the async runtime.

use faceproof_imaging::{Cancellation, Cancelled};
use faceproof_proto::common::v1::SearchMode;
use faceproof_runtime::DeadlineExceeded;
use faceproof_vision::VisionError;
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

/// Face comparison, run inside the inference pool.
pub trait MatchEngine: Send + Sync + 'static {
    /// Compares the probe's subject face with every gallery image. Implementations call
    /// `cancel.check()?` inside their long stages (decode, inference) so abandoned work stops
    /// within milliseconds of the deadline or of the caller going away.
    fn compare(
        &self,
        job: CompareJob,
        cancel: &Cancellation,
    ) -> Result<CompareOutcome, EngineError>;

    /// Runs the whole pipeline once so the first real request is not slow; the service reports
    /// SERVING only after this succeeds.
    fn warm_up(&self) -> Result<(), EngineError>;
}
