//! The vision core of faceproof: hand-written candle implementations of the face detector (YuNet),
//! the face embedder (SFace) and the anti-spoofing networks (MiniFASNetV2, MiniFASNetV1SE), the
//! fast kernels they need, the face pipeline steps built on them (subject selection, alignment,
//! liveness crops) and the whole pipelines the services, `faceproof eval` and `faceproof bench`
//! share ([`pipeline`]). No async code and no gRPC serving here: the pipelines only speak the
//! wire's common face messages and name their stages as the metrics do.

pub mod error;
pub mod face;
pub mod nets;
pub mod ops;
pub mod pipeline;

pub use error::VisionError;
