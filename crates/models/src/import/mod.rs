//! Importers from upstream model formats to named candle tensors (then written as safetensors).

pub mod onnx;
pub mod pth;

pub use onnx::{OnnxImportError, import_onnx};
pub use pth::{PthImportError, import_pth};
