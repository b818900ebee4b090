//! Cosine similarity -> calibrated 0..1 score: the table lives in faceproof-vision
//! ([`faceproof_vision::pipeline::calibration`]) beside the match pipeline whose cosines it maps,
//! so `faceproof eval` measures the very table the matcher scores with.

use faceproof_runtime::HostError;
use faceproof_vision::VisionError;

pub use faceproof_vision::pipeline::Calibration;

use crate::MatcherError;

/// A malformed table stops the start with `invalid calibration table`; the other vision failures
/// at start are model-loading failures.
pub(crate) fn start_error(error: VisionError) -> HostError {
    match error {
        VisionError::Calibration(detail) => MatcherError::Calibration(detail).into(),
        other => HostError::ModelLoad(other.to_string()),
    }
}
