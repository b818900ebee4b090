//! Cosine similarity -> calibrated 0..1 score: the table lives in faceproof-vision
//! ([`faceproof_vision::pipeline::calibration`]) beside the match pipeline whose cosines it maps,
//! so `faceproof eval` measures the very table the matcher scores with.

pub use faceproof_vision::pipeline::Calibration;
