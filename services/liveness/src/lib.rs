//! faceproof liveness service: "is the probe a live person?" Validates check requests and runs a
//! [`LivenessEngine`] (detect or use the matcher's face hint, context crops, MiniFASNet,
//! softmax) on dedicated inference threads, on the full frame. Loading, warm-up, health, serving
//! and draining are the runtime host's ([`faceproof_runtime::host`]); [`Liveness`] is the
//! liveness service's part.

#![cfg_attr(test, allow(clippy::unwrap_used))]

pub mod app;
pub mod config;
pub mod engine;
pub mod service;
pub mod vision;

pub use app::{Application, Liveness, TELEMETRY_SERVICE_NAME, run, serve};
pub use config::LivenessConfig;
pub use engine::{
    AttackSplit, CheckJob, EngineError, FaceRejection, LivenessEngine, LivenessVerdict,
    ModelVerdict,
};
pub use faceproof_runtime::HostError;
