//! SFace (2021dec), the face embedder of OpenCV's face recognition module (Zhong et al., "SFace:
//! Sigmoid-Constrained Hypersphere Loss for Robust Face Recognition", 2021), as released in the
//! OpenCV Zoo (`face_recognition_sface_2021dec_int8bq.onnx`, weights folded to fp32 by the
//! importer).
//!
//! A MobileNet: input normalisation `(x - 127.5) / 128` (`sub0`, `mul0`), `conv0` 3x3 + BN +
//! PReLU, then 13 pairs of depthwise 3x3 (`conv<2k-1>`, stride 2 for k = 2, 4, 6, 12) and
//! pointwise 1x1 (`conv<2k>`), each followed by BN and per-channel PReLU
//! (`batchnormalization<i>`, `prelu<i>` share the convolution's index), giving 7x7x1024; then BN
//! (`batchnormalization27`), flatten, a fully connected layer to 128 (`gemm0`) and BN
//! (`batchnormalization28`). Every BatchNorm is folded at load: into the preceding convolution,
//! and both tail ones into the fully connected layer, so the tail is one matrix product.
//!
//! Speed: each convolution runs with its bias and PReLU fused into the pass that writes its
//! output ([`crate::ops`]): the depthwise kernel applies them per row, the 1x1 convolutions are
//! one matrix product finished in place, so no layer makes extra broadcast passes or temporaries.

use candle_core::{D, DType, Device, Module, Tensor};
use candle_nn::VarBuilder;
use faceproof_imaging::{Cancellation, ChannelOrder, RgbImage, to_planar_f32};

use crate::VisionError;
use crate::nets::yunet::Pointwise;
use crate::ops::{conv2d_bias_prelu, depthwise_conv2d_prelu};

/// Side of the aligned face SFace takes.
pub const SFACE_INPUT_SIDE: u32 = 112;
/// Length of the embedding.
pub const SFACE_EMBEDDING_DIM: usize = 128;

/// Per-output-channel factors `(scale, shift)` of an inference BatchNorm: `y = x * scale + shift`.
fn batchnorm_factors(
    vb: &VarBuilder<'_>,
    index: usize,
    channels: usize,
) -> candle_core::Result<(Tensor, Tensor)> {
    let vb = vb.pp(format!("batchnormalization{index}"));
    let gamma = vb.get(channels, "weight")?;
    let beta = vb.get(channels, "bias")?;
    let mean = vb.get(channels, "running_mean")?;
    let var = vb.get(channels, "running_var")?;
    let eps = vb.get(1, "eps")?;
    let scale = gamma.broadcast_div(&var.broadcast_add(&eps)?.sqrt()?)?;
    let shift = (beta - mean.mul(&scale)?)?;
    Ok((scale, shift))
}

/// A convolution without bias followed by BatchNorm, folded into one convolution with bias.
fn folded_conv(
    vb: &VarBuilder<'_>,
    index: usize,
    shape: (usize, usize, usize, usize),
) -> candle_core::Result<(Tensor, Tensor)> {
    let weight = vb.get(shape, &format!("conv{index}.weight"))?;
    let (scale, shift) = batchnorm_factors(vb, index, shape.0)?;
    let weight = weight.broadcast_mul(&scale.reshape((shape.0, 1, 1, 1))?)?;
    Ok((weight, shift))
}

/// Per-channel PReLU slopes `[C]` of `prelu<index>`.
fn prelu_slope(vb: &VarBuilder<'_>, index: usize, channels: usize) -> candle_core::Result<Tensor> {
    vb.get((channels, 1, 1), &format!("prelu{index}.slope"))?
        .flatten_all()
}

/// Depthwise 3x3 (+BN) + PReLU, then pointwise 1x1 (+BN) + PReLU.
#[derive(Debug, Clone)]
struct SeparableBlock {
    depthwise_weight: Tensor,
    depthwise_bias: Tensor,
    depthwise_slope: Tensor,
    stride: usize,
    pointwise: Pointwise,
}

impl SeparableBlock {
    /// Block `k` (0-based): depthwise `conv<2k+1>`, pointwise `conv<2k+2>`.
    fn load(
        vb: &VarBuilder<'_>,
        k: usize,
        inputs: usize,
        outputs: usize,
        stride: usize,
    ) -> candle_core::Result<Self> {
        let dw = 2 * k + 1;
        let pw = dw + 1;
        let (depthwise_weight, depthwise_bias) = folded_conv(vb, dw, (inputs, 1, 3, 3))?;
        let (pointwise_weight, pointwise_bias) = folded_conv(vb, pw, (outputs, inputs, 1, 1))?;
        Ok(Self {
            depthwise_weight,
            depthwise_bias,
            depthwise_slope: prelu_slope(vb, dw, inputs)?,
            stride,
            pointwise: Pointwise::from_parts(
                pointwise_weight,
                pointwise_bias,
                Some(prelu_slope(vb, pw, outputs)?),
            )?,
        })
    }
}

impl Module for SeparableBlock {
    fn forward(&self, x: &Tensor) -> candle_core::Result<Tensor> {
        let x = depthwise_conv2d_prelu(
            x,
            &self.depthwise_weight,
            Some(&self.depthwise_bias),
            &self.depthwise_slope,
            self.stride,
            1,
        )?;
        self.pointwise.forward(&x)
    }
}

/// The SFace network.
#[derive(Debug, Clone)]
pub struct SFace {
    input_shift: f32,
    input_scale: f32,
    stem_weight: Tensor,
    stem_bias: Tensor,
    stem_slope: Tensor,
    blocks: Vec<SeparableBlock>,
    /// `[7 * 7 * 1024, 128]`, both tail BatchNorms folded in.
    fc_weight_t: Tensor,
    /// `[128]`.
    fc_bias: Tensor,
}

impl SFace {
    /// Loads the network from weights named as the ONNX importer names them.
    pub fn load(vb: VarBuilder<'_>) -> Result<Self, VisionError> {
        let scalar =
            |name: &str| -> Result<f32, VisionError> { Ok(vb.get(1, name)?.to_vec1::<f32>()?[0]) };
        let input_shift = scalar("sub0.input1")?;
        let input_scale = scalar("mul0.input1")?;

        let (stem_weight, stem_bias) = folded_conv(&vb, 0, (32, 3, 3, 3))?;
        let stem_slope = prelu_slope(&vb, 0, 32)?;

        // (input channels, output channels, depthwise stride) of blocks 1..=13.
        let plan: [(usize, usize, usize); 13] = [
            (32, 64, 1),
            (64, 128, 2),
            (128, 128, 1),
            (128, 256, 2),
            (256, 256, 1),
            (256, 512, 2),
            (512, 512, 1),
            (512, 512, 1),
            (512, 512, 1),
            (512, 512, 1),
            (512, 512, 1),
            (512, 1024, 2),
            (1024, 1024, 1),
        ];
        let mut blocks = Vec::with_capacity(plan.len());
        for (k, &(inputs, outputs, stride)) in plan.iter().enumerate() {
            blocks.push(SeparableBlock::load(&vb, k, inputs, outputs, stride)?);
        }

        // Tail: bn27 (per channel over 7x7) -> flatten -> gemm0 -> bn28, as one linear layer.
        let channels = 1024;
        let cells = 49;
        let features = channels * cells;
        let (bn_scale, bn_shift) = batchnorm_factors(&vb, 27, channels)?;
        let per_feature = |t: &Tensor| -> candle_core::Result<Tensor> {
            t.reshape((channels, 1))?
                .broadcast_as((channels, cells))?
                .reshape(features)
        };
        let (in_scale, in_shift) = (per_feature(&bn_scale)?, per_feature(&bn_shift)?);
        let weight = vb.get((SFACE_EMBEDDING_DIM, features), "gemm0.weight")?;
        let bias = vb.get(SFACE_EMBEDDING_DIM, "gemm0.bias")?;
        // W (s * z + t) + b = (W * s) z + (W t + b)
        let bias = (weight
            .matmul(&in_shift.reshape((features, 1))?)?
            .flatten_all()?
            + bias)?;
        let weight = weight.broadcast_mul(&in_scale.reshape((1, features))?)?;
        let (out_scale, out_shift) = batchnorm_factors(&vb, 28, SFACE_EMBEDDING_DIM)?;
        let weight = weight.broadcast_mul(&out_scale.reshape((SFACE_EMBEDDING_DIM, 1))?)?;
        let fc_bias = (bias.mul(&out_scale)? + out_shift)?;
        let fc_weight_t = weight.t()?.contiguous()?;

        Ok(Self {
            input_shift,
            input_scale,
            stem_weight,
            stem_bias,
            stem_slope,
            blocks,
            fc_weight_t,
            fc_bias,
        })
    }

    /// Loads the network from a safetensors buffer (as written by `faceproof models fetch`).
    pub fn from_safetensors(bytes: &[u8], device: &Device) -> Result<Self, VisionError> {
        let tensors = candle_core::safetensors::load_buffer(bytes, device)?;
        Self::load(VarBuilder::from_tensors(tensors, DType::F32, device))
    }

    /// Embeds a batch of aligned faces, `[N, 3, 112, 112]` RGB 0..255, into `[N, 128]` raw
    /// (not normalised) embeddings.
    pub fn embed(&self, faces: &Tensor) -> Result<Tensor, VisionError> {
        self.embed_cancellable(faces, &Cancellation::never())
    }

    /// [`Self::embed`], stopping with [`VisionError::Cancelled`] between blocks once `cancel`
    /// fires.
    pub fn embed_cancellable(
        &self,
        faces: &Tensor,
        cancel: &Cancellation,
    ) -> Result<Tensor, VisionError> {
        let side = SFACE_INPUT_SIDE as usize;
        let dims = faces.dims();
        if dims.len() != 4 || dims[0] == 0 || dims[1..] != [3, side, side] {
            return Err(VisionError::InvalidInput(format!(
                "SFace takes [N, 3, 112, 112] with N >= 1, got {dims:?}"
            )));
        }
        let x = faces.affine(
            f64::from(self.input_scale),
            -f64::from(self.input_shift * self.input_scale),
        )?;
        let mut x = conv2d_bias_prelu(
            &x,
            &self.stem_weight,
            Some(&self.stem_bias),
            Some(&self.stem_slope),
            1,
            1,
        )?;
        for block in &self.blocks {
            cancel.check()?;
            x = block.forward(&x)?;
        }
        let x = x.flatten_from(1)?;
        let y = x.matmul(&self.fc_weight_t)?.broadcast_add(&self.fc_bias)?;
        Ok(y)
    }

    /// Embeds aligned 112x112 faces in one forward pass (a batch of `faces.len()`): one raw
    /// embedding per face, in order. Each equals the embedding of that face alone to float
    /// rounding (the kernels sum every image in the same order whatever the batch).
    pub fn embed_faces(
        &self,
        faces: &[RgbImage],
        cancel: &Cancellation,
    ) -> Result<Vec<Vec<f32>>, VisionError> {
        let batch = faces_to_batch(faces, self.fc_bias.device())?;
        Ok(self.embed_cancellable(&batch, cancel)?.to_vec2::<f32>()?)
    }

    /// Flip fusion (ACCURATE): every face and its mirror image embedded in one forward pass of
    /// `2 * faces.len()`, each pair fused by [`fuse_flip`]; one embedding per face, in order.
    pub fn embed_flip_fused(
        &self,
        faces: &[RgbImage],
        cancel: &Cancellation,
    ) -> Result<Vec<Vec<f32>>, VisionError> {
        let mut batch = faces.to_vec();
        batch.extend(faces.iter().map(mirror_face));
        let rows = self.embed_faces(&batch, cancel)?;
        let (plain, mirrored) = rows.split_at(faces.len());
        Ok(plain
            .iter()
            .zip(mirrored)
            .map(|(a, b)| fuse_flip(a, b))
            .collect())
    }
}

/// Stacks aligned 112x112 faces into the `[N, 3, 112, 112]` RGB 0..255 batch [`SFace::embed`]
/// takes.
pub fn faces_to_batch(faces: &[RgbImage], device: &Device) -> Result<Tensor, VisionError> {
    if faces.is_empty() {
        return Err(VisionError::InvalidInput("no face to embed".into()));
    }
    let side = SFACE_INPUT_SIDE as usize;
    let mut data = Vec::with_capacity(faces.len() * 3 * side * side);
    for face in faces {
        if face.width() != SFACE_INPUT_SIDE || face.height() != SFACE_INPUT_SIDE {
            return Err(VisionError::InvalidInput(format!(
                "aligned faces must be 112x112, got {}x{}",
                face.width(),
                face.height()
            )));
        }
        data.extend(to_planar_f32(face, ChannelOrder::Rgb));
    }
    Ok(Tensor::from_vec(
        data,
        (faces.len(), 3, side, side),
        device,
    )?)
}

/// The face mirrored left to right: flip fusion embeds a face and its mirror image.
pub fn mirror_face(face: &RgbImage) -> RgbImage {
    let (width, height) = face.dimensions();
    let row_bytes = width as usize * 3;
    let mut pixels = Vec::with_capacity(face.as_raw().len());
    for row in face.as_raw().chunks_exact(row_bytes) {
        for pixel in row.chunks_exact(3).rev() {
            pixels.extend_from_slice(pixel);
        }
    }
    RgbImage::from_raw(width, height, pixels).unwrap_or_else(|| face.clone())
}

/// Sum of the two L2-normalised embeddings of a face and its mirror image (cosine is
/// scale-free, so no renormalisation).
pub fn fuse_flip(a: &[f32], b: &[f32]) -> Vec<f32> {
    let norm = |v: &[f32]| v.iter().map(|x| x * x).sum::<f32>().sqrt().max(1e-12);
    let (na, nb) = (norm(a), norm(b));
    a.iter().zip(b).map(|(x, y)| x / na + y / nb).collect()
}

/// Cosine similarity of two embeddings (0 when either is all zeros or they differ in length).
pub fn cosine_similarity(a: &[f32], b: &[f32]) -> f32 {
    if a.len() != b.len() {
        return 0.0;
    }
    let (mut dot, mut norm_a, mut norm_b) = (0f64, 0f64, 0f64);
    for (&x, &y) in a.iter().zip(b) {
        dot += f64::from(x) * f64::from(y);
        norm_a += f64::from(x) * f64::from(x);
        norm_b += f64::from(y) * f64::from(y);
    }
    let denominator = (norm_a * norm_b).sqrt();
    if denominator > 0.0 {
        (dot / denominator) as f32
    } else {
        0.0
    }
}

/// L2-normalises each row of `[N, D]` embeddings.
pub fn l2_normalize(embeddings: &Tensor) -> Result<Tensor, VisionError> {
    let norm = embeddings.sqr()?.sum_keepdim(D::Minus1)?.sqrt()?;
    Ok(embeddings.broadcast_div(&norm.clamp(1e-12f32, f32::MAX)?)?)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn image(width: u32, height: u32) -> RgbImage {
        let pixels = (0..width * height * 3).map(|i| (i % 251) as u8).collect();
        RgbImage::from_raw(width, height, pixels).expect("sized buffer")
    }

    #[test]
    fn mirror_reverses_each_row_and_is_an_involution() {
        let original = image(3, 2);
        let mirrored = mirror_face(&original);
        assert_eq!(mirrored.as_raw()[0..3], original.as_raw()[6..9]);
        assert_eq!(mirror_face(&mirrored), original);
    }

    #[test]
    fn fusion_of_identical_embeddings_keeps_the_direction() {
        let fused = fuse_flip(&[3.0, 4.0], &[3.0, 4.0]);
        assert!((cosine_similarity(&fused, &[3.0, 4.0]) - 1.0).abs() < 1e-6);
    }
}
