//! The vision core of faceproof: hand-written candle implementations of the face detector (YuNet),
//! the face embedder (SFace) and the anti-spoofing networks (MiniFASNetV2, MiniFASNetV1SE), the
//! fast kernels they need, and the face pipeline steps built on them (subject selection, alignment,
//! liveness crops). No async runtime and no gRPC here.

pub mod error;
pub mod face;
pub mod nets;
pub mod ops;

pub use error::VisionError;
