//! Face pipeline steps between the networks: subject selection, alignment, liveness crops.

pub mod align;
pub mod detect;
pub mod liveness_crop;
pub mod subject;

pub use detect::{DetectedFace, DetectorConfig, FaceDetector};
