//! faceproof liveness service: "is the probe a live person?" Validates check requests and runs a
//! [`LivenessEngine`] (detect or use the matcher's face hint, context crops, MiniFASNet,
//! softmax) on dedicated inference threads, on the full frame.

#![cfg_attr(test, allow(clippy::unwrap_used))]

pub mod app;
pub mod config;
pub mod engine;
pub mod service;
pub mod vision;

pub use app::{Application, TELEMETRY_SERVICE_NAME, run, serve};
pub use config::LivenessConfig;
pub use engine::{
    AttackSplit, CheckJob, EngineError, FaceRejection, LivenessEngine, LivenessVerdict,
    ModelVerdict,
};

/// Failures while starting or running the liveness service (request failures are
/// `ServiceError`s).
#[derive(Debug, thiserror::Error)]
pub enum LivenessError {
    #[error("invalid configuration: {0}")]
    Config(String),
    #[error("cannot read the listener address: {0}")]
    Listener(#[source] std::io::Error),
    #[error("engine warm-up failed: {0}")]
    WarmUp(String),
    #[error("cannot load the models: {0}")]
    ModelLoad(String),
    #[error(transparent)]
    Runtime(#[from] faceproof_runtime::RuntimeError),
}
