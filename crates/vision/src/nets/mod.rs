//! The networks, each written by hand over the converted safetensors weights.

pub mod minifasnet;
pub mod sface;
pub mod yunet;
