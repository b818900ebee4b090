//! Conversion of an importer's input into safetensors bytes.
//!
//! The bytes must be identical on every run so the manifest can pin their checksum:
//! `safetensors::serialize` orders tensors by dtype then name and writes no free-form metadata, and
//! tensors are turned into little-endian bytes here (not through candle's `View`, which panics on
//! some dtypes).

use std::borrow::Cow;
use std::collections::BTreeSet;

use candle_core::{DType, Tensor};
use safetensors::{Dtype, View};

use crate::error::ModelError;
use crate::import::{import_onnx, import_pth};
use crate::manifest::ModelFormat;

/// Turns an importer's input into named tensors. The fetch step calls it; tests substitute their own.
pub trait Importer {
    /// Imports one model file of `format`.
    fn import(
        &self,
        format: ModelFormat,
        bytes: &[u8],
    ) -> Result<Vec<(String, Tensor)>, ModelError>;
}

/// The real importers: ONNX initializers and legacy PyTorch state dicts.
#[derive(Debug, Clone, Copy, Default)]
pub struct UpstreamImporter;

impl Importer for UpstreamImporter {
    fn import(
        &self,
        format: ModelFormat,
        bytes: &[u8],
    ) -> Result<Vec<(String, Tensor)>, ModelError> {
        Ok(match format {
            ModelFormat::Onnx => import_onnx(bytes)?,
            ModelFormat::Pth => import_pth(bytes)?,
        })
    }
}

/// One tensor already turned into safetensors' representation.
struct RawTensor {
    dtype: Dtype,
    shape: Vec<usize>,
    data: Vec<u8>,
}

impl View for &RawTensor {
    fn dtype(&self) -> Dtype {
        self.dtype
    }

    fn shape(&self) -> &[usize] {
        &self.shape
    }

    fn data(&self) -> Cow<'_, [u8]> {
        Cow::Borrowed(&self.data)
    }

    fn data_len(&self) -> usize {
        self.data.len()
    }
}

fn le_bytes<T, const N: usize>(values: Vec<T>, to_le: fn(T) -> [u8; N]) -> Vec<u8> {
    values.into_iter().flat_map(to_le).collect()
}

fn raw_tensor(name: &str, tensor: &Tensor) -> Result<RawTensor, ModelError> {
    let unsupported = |reason: String| ModelError::TensorUnsupported {
        name: name.to_string(),
        reason,
    };
    let flat = tensor
        .flatten_all()
        .map_err(|error| unsupported(error.to_string()))?;
    let read = |error: candle_core::Error| unsupported(error.to_string());
    let (dtype, data) = match tensor.dtype() {
        DType::U8 => (Dtype::U8, flat.to_vec1::<u8>().map_err(read)?),
        DType::U32 => (
            Dtype::U32,
            le_bytes(flat.to_vec1::<u32>().map_err(read)?, u32::to_le_bytes),
        ),
        DType::I16 => (
            Dtype::I16,
            le_bytes(flat.to_vec1::<i16>().map_err(read)?, i16::to_le_bytes),
        ),
        DType::I32 => (
            Dtype::I32,
            le_bytes(flat.to_vec1::<i32>().map_err(read)?, i32::to_le_bytes),
        ),
        DType::I64 => (
            Dtype::I64,
            le_bytes(flat.to_vec1::<i64>().map_err(read)?, i64::to_le_bytes),
        ),
        DType::F32 => (
            Dtype::F32,
            le_bytes(flat.to_vec1::<f32>().map_err(read)?, f32::to_le_bytes),
        ),
        DType::F64 => (
            Dtype::F64,
            le_bytes(flat.to_vec1::<f64>().map_err(read)?, f64::to_le_bytes),
        ),
        other => {
            return Err(unsupported(format!(
                "dtype {other:?} is not written by faceproof"
            )));
        }
    };
    Ok(RawTensor {
        dtype,
        shape: tensor.dims().to_vec(),
        data,
    })
}

/// Serialises named tensors as safetensors, deterministically; refuses duplicate names.
pub fn to_safetensors(tensors: &[(String, Tensor)]) -> Result<Vec<u8>, ModelError> {
    let mut names = BTreeSet::new();
    let mut raw = Vec::with_capacity(tensors.len());
    for (name, tensor) in tensors {
        if !names.insert(name.as_str()) {
            return Err(ModelError::DuplicateTensor { name: name.clone() });
        }
        raw.push((name.as_str(), raw_tensor(name, tensor)?));
    }
    Ok(safetensors::serialize(
        raw.iter().map(|(name, tensor)| (*name, tensor)),
        None,
    )?)
}

#[cfg(test)]
mod tests {
    use candle_core::Device;

    use super::*;

    fn sample() -> Vec<(String, Tensor)> {
        let device = Device::Cpu;
        vec![
            (
                "conv.weight".to_string(),
                Tensor::arange(0f32, 24., &device)
                    .unwrap()
                    .reshape((2, 3, 2, 2))
                    .unwrap(),
            ),
            (
                "bn.num_batches".to_string(),
                Tensor::new(&[7i64], &device).unwrap(),
            ),
            (
                "conv.bias".to_string(),
                Tensor::new(&[0.5f32, -1.25], &device).unwrap(),
            ),
            (
                "q.weight".to_string(),
                Tensor::new(&[1u8, 2, 255], &device).unwrap(),
            ),
        ]
    }

    #[test]
    fn serialisation_is_independent_of_order_and_run() {
        let tensors = sample();
        let first = to_safetensors(&tensors).unwrap();
        let mut reversed = tensors.clone();
        reversed.reverse();
        assert_eq!(to_safetensors(&reversed).unwrap(), first);
        assert_eq!(to_safetensors(&tensors).unwrap(), first);
    }

    #[test]
    fn serialised_tensors_load_back_with_candle() {
        let tensors = sample();
        let bytes = to_safetensors(&tensors).unwrap();
        let loaded = candle_core::safetensors::load_buffer(&bytes, &Device::Cpu).unwrap();
        assert_eq!(loaded.len(), tensors.len());
        for (name, tensor) in &tensors {
            let back = &loaded[name];
            assert_eq!(back.dtype(), tensor.dtype());
            assert_eq!(back.dims(), tensor.dims());
            let diff = back
                .to_dtype(DType::F64)
                .unwrap()
                .sub(&tensor.to_dtype(DType::F64).unwrap())
                .unwrap()
                .abs()
                .unwrap()
                .flatten_all()
                .unwrap()
                .max(0)
                .unwrap()
                .to_scalar::<f64>()
                .unwrap();
            assert_eq!(diff, 0.0, "{name}");
        }
    }

    #[test]
    fn strided_tensors_are_written_in_logical_order() {
        let device = Device::Cpu;
        let base = Tensor::arange(0f32, 6., &device)
            .unwrap()
            .reshape((2, 3))
            .unwrap();
        let transposed = base.t().unwrap();
        let bytes = to_safetensors(&[("t".to_string(), transposed.clone())]).unwrap();
        let loaded = candle_core::safetensors::load_buffer(&bytes, &device).unwrap();
        assert_eq!(
            loaded["t"].to_vec2::<f32>().unwrap(),
            transposed.to_vec2::<f32>().unwrap()
        );
    }

    #[test]
    fn duplicate_names_are_refused() {
        let mut tensors = sample();
        tensors.push(tensors[0].clone());
        let error = to_safetensors(&tensors).unwrap_err();
        assert!(matches!(error, ModelError::DuplicateTensor { name } if name == "conv.weight"));
    }
}
