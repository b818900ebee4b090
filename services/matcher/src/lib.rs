//! faceproof matcher service: "is it the same person?" Validates compare requests, runs a
//! [`MatchEngine`] (detect, align, embed, cosine) on dedicated inference threads and maps cosines
//! to calibrated 0..1 scores.

#![cfg_attr(test, allow(clippy::unwrap_used))]

pub mod app;
pub mod calibration;
pub mod config;
pub mod copy;
pub mod engine;
pub mod service;
pub mod vision;

pub use app::{Application, TELEMETRY_SERVICE_NAME, run, serve};
pub use calibration::Calibration;
pub use config::MatcherConfig;
pub use engine::{
    CompareJob, CompareOutcome, EngineError, FaceRejection, GalleryMatch, MatchEngine,
};

/// Failures while starting or running the matcher (request failures are `ServiceError`s).
#[derive(Debug, thiserror::Error)]
pub enum MatcherError {
    #[error("invalid configuration: {0}")]
    Config(String),
    #[error("invalid calibration table: {0}")]
    Calibration(String),
    #[error("cannot read the listener address: {0}")]
    Listener(#[source] std::io::Error),
    #[error("engine warm-up failed: {0}")]
    WarmUp(String),
    #[error("cannot load the models: {0}")]
    ModelLoad(String),
    #[error(transparent)]
    Runtime(#[from] faceproof_runtime::RuntimeError),
}
