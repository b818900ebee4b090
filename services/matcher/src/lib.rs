//! faceproof matcher service: "is it the same person?" Validates compare requests, runs a
//! [`MatchEngine`] (detect, align, embed, cosine) on dedicated inference threads and maps cosines
//! to calibrated 0..1 scores. Loading, warm-up, health, serving and draining are the runtime
//! host's ([`faceproof_runtime::host`]); [`Matcher`] is the matcher's part.

#![cfg_attr(test, allow(clippy::unwrap_used))]

pub mod app;
pub mod calibration;
pub mod config;
pub mod copy;
pub mod engine;
pub mod service;
pub mod vision;

pub use app::{Application, Matcher, TELEMETRY_SERVICE_NAME, run, serve};
pub use calibration::Calibration;
pub use config::MatcherConfig;
pub use engine::{
    CompareJob, CompareOutcome, EngineError, FaceRejection, GalleryMatch, ImageRole, MatchEngine,
    SubjectEmbedding, SubjectResult,
};
pub use faceproof_runtime::HostError;
