//! YuNet (2023mar), the face detector with 5 landmarks of libfacedetection (Wu et al., "YuNet: A
//! Tiny Millisecond-level Face Detector", 2023), as released in the OpenCV Zoo
//! (`face_detection_yunet_2023mar_int8bq.onnx`, weights folded to fp32 by the importer).
//!
//! Architecture, read from the ONNX graph (weights `conv<k>` in graph order, see
//! `faceproof_models::import::onnx`):
//! - backbone: `conv0` 3x3 stride 2 + ReLU, then "depthwise-pointwise units" (1x1 conv, then 3x3
//!   depthwise conv + ReLU) `conv1/2`; max-pool; `conv3..6`; `conv7..10`; max-pool; `conv11..14`
//!   (stride 8); max-pool; `conv15..18` (stride 16); max-pool; `conv19..22` (stride 32);
//! - neck (top-down FPN): `conv23/24` on stride 32; 2x nearest upsample + stride 16 then
//!   `conv25/26`; 2x upsample + stride 8 then `conv27/28`;
//! - heads per level (stride 8, 16, 32), each a unit without ReLU: cls `conv29..34`, bbox
//!   `conv35..40`, obj `conv41..46`, kps `conv47..52`.
//!
//! Speed: the layers are thin (16-64 channels) on large maps, so the op-by-op version spent its
//! time writing and re-reading full maps. Each unit runs as one fused op over row bands
//! ([`crate::ops::depthwise_pointwise_unit`]): the 1x1 output stays in cache, the max-pools,
//! the FPN's upsample + add and the stem are read through by the unit that consumes them and
//! never stored. The four heads of a level read the same feature map, so their weights are
//! stacked at load time and each level runs one 64 -> 16 unit instead of four thin ones.

use candle_core::{DType, Device, Module, Tensor};
use candle_nn::VarBuilder;
use faceproof_imaging::Cancellation;

use crate::VisionError;
use crate::ops::{
    StemWeights, UnitInput, UnitWeights, depthwise_pointwise_unit, pointwise_conv2d,
    stem_depthwise_pointwise_unit, upsample_add_depthwise_pointwise_unit,
};

/// The detector's output strides, in the order of the heads.
pub const STRIDES: [usize; 3] = [8, 16, 32];

/// Output channels of the cls, bbox, obj and kps heads, in the order they are stacked.
const HEAD_OUTPUTS: [usize; 4] = [1, 4, 1, 10];

/// A 1x1 convolution with bias and an optional per-channel PReLU, run as one matrix product
/// with the epilogue applied in place (no im2col copy, no broadcast passes).
#[derive(Debug, Clone)]
pub(crate) struct Pointwise {
    /// `[out, in]`, contiguous.
    weight: Tensor,
    /// `[out]`.
    bias: Tensor,
    /// `[out]` PReLU slopes, or `None` for a linear output.
    slope: Option<Tensor>,
}

impl Pointwise {
    /// From a `[out, in, 1, 1]` (or `[out, in]`) weight, `[out]` bias and optional `[out]` slopes.
    pub(crate) fn from_parts(
        weight: Tensor,
        bias: Tensor,
        slope: Option<Tensor>,
    ) -> candle_core::Result<Self> {
        let outputs = weight.dim(0)?;
        let inputs = weight.elem_count() / outputs.max(1);
        Ok(Self {
            weight: weight.reshape((outputs, inputs))?.contiguous()?,
            bias: bias.flatten_all()?,
            slope: slope.map(|s| s.flatten_all()).transpose()?,
        })
    }
}

impl Module for Pointwise {
    fn forward(&self, x: &Tensor) -> candle_core::Result<Tensor> {
        pointwise_conv2d(x, &self.weight, Some(&self.bias), self.slope.as_ref())
    }
}

/// YuNet's building block: a pointwise convolution, then a depthwise 3x3, then ReLU (except in
/// the heads), run as one fused op ([`depthwise_pointwise_unit`]).
#[derive(Debug, Clone)]
struct DepthwisePointwiseUnit {
    weights: UnitWeights,
}

impl DepthwisePointwiseUnit {
    /// Loads the unit whose pointwise convolution is `conv<first>` and depthwise `conv<first+1>`.
    fn load(
        vb: &VarBuilder<'_>,
        first: usize,
        inputs: usize,
        outputs: usize,
        relu: bool,
    ) -> candle_core::Result<Self> {
        let pointwise = vb.pp(format!("conv{first}"));
        let depthwise = vb.pp(format!("conv{}", first + 1));
        let weights = UnitWeights::new(
            &pointwise.get((outputs, inputs, 1, 1), "weight")?,
            &pointwise.get(outputs, "bias")?,
            &depthwise.get((outputs, 1, 3, 3), "weight")?,
            &depthwise.get(outputs, "bias")?,
            relu,
        )?;
        Ok(Self { weights })
    }

    /// Stacks units that read the same input (the heads of one level) into one unit whose output
    /// channels are theirs in order: every output channel only depends on its own weights, so the
    /// result is exactly the concatenation of the units' outputs.
    fn stack(units: &[Self]) -> candle_core::Result<Self> {
        let parts: Vec<UnitWeights> = units.iter().map(|u| u.weights.clone()).collect();
        Ok(Self {
            weights: UnitWeights::stack(&parts)?,
        })
    }

    /// The unit on `x` read through a 2x2 max-pool (the pool never materialises).
    fn forward_pooled(&self, x: &Tensor) -> candle_core::Result<Tensor> {
        depthwise_pointwise_unit(x, &self.weights, UnitInput::MaxPool2)
    }

    /// The unit on `relu(stem(x))` (the stem's output never materialises).
    fn forward_after_stem(&self, stem: &StemWeights, x: &Tensor) -> candle_core::Result<Tensor> {
        stem_depthwise_pointwise_unit(x, stem, &self.weights)
    }

    /// The unit on `fine + upsample2(coarse)` (the FPN merge, never materialised).
    fn forward_merged(&self, coarse: &Tensor, fine: &Tensor) -> candle_core::Result<Tensor> {
        upsample_add_depthwise_pointwise_unit(coarse, fine, &self.weights)
    }
}

impl Module for DepthwisePointwiseUnit {
    fn forward(&self, x: &Tensor) -> candle_core::Result<Tensor> {
        depthwise_pointwise_unit(x, &self.weights, UnitInput::Plain)
    }
}

/// The raw outputs of one forward pass, per stride (8, 16, 32), each `[N, H/stride * W/stride, C]`
/// in row-major cell order like the ONNX outputs: `cls` and `obj` already through the sigmoid
/// (C = 1), `bbox` (C = 4: dx, dy, log w, log h in stride units), `kps` (C = 10: 5 points, x then
/// y, in stride units from the cell).
#[derive(Debug, Clone)]
pub struct YuNetHeads {
    pub cls: [Tensor; 3],
    pub obj: [Tensor; 3],
    pub bbox: [Tensor; 3],
    pub kps: [Tensor; 3],
}

/// The YuNet network.
#[derive(Debug, Clone)]
pub struct YuNet {
    /// `conv0` + ReLU, computed inside the first backbone unit.
    stem: StemWeights,
    /// Backbone units, with a max-pool before units 1, 5, 7 and 9 (see [`Self::POOL_BEFORE`]).
    backbone: Vec<DepthwisePointwiseUnit>,
    /// Neck units for strides 32, 16, 8.
    neck: [DepthwisePointwiseUnit; 3],
    /// Per stride 8, 16, 32: the cls, bbox, obj and kps heads stacked into one unit with 16
    /// output channels (see [`HEAD_OUTPUTS`]).
    heads: [DepthwisePointwiseUnit; 3],
}

impl YuNet {
    /// Backbone unit indices preceded by a 2x2 max-pool.
    const POOL_BEFORE: [usize; 4] = [1, 5, 7, 9];

    /// Loads the network from weights named as the ONNX importer names them.
    pub fn load(vb: VarBuilder<'_>) -> Result<Self, VisionError> {
        let stem = StemWeights::new(
            &vb.get((16, 3, 3, 3), "conv0.weight")?,
            &vb.get(16, "conv0.bias")?,
        )?;
        // (inputs, outputs) of the backbone units conv1/2 .. conv21/22.
        let backbone_channels = [
            (16, 16),
            (16, 16),
            (16, 32),
            (32, 32),
            (32, 64),
            (64, 64),
            (64, 64),
            (64, 64),
            (64, 64),
            (64, 64),
            (64, 64),
        ];
        let backbone = backbone_channels
            .iter()
            .enumerate()
            .map(|(i, &(inputs, outputs))| {
                DepthwisePointwiseUnit::load(&vb, 1 + 2 * i, inputs, outputs, true)
            })
            .collect::<candle_core::Result<Vec<_>>>()?;
        let neck = [
            DepthwisePointwiseUnit::load(&vb, 23, 64, 64, true)?,
            DepthwisePointwiseUnit::load(&vb, 25, 64, 64, true)?,
            DepthwisePointwiseUnit::load(&vb, 27, 64, 64, true)?,
        ];
        let mut heads = Vec::with_capacity(STRIDES.len());
        for level in 0..STRIDES.len() {
            let units = HEAD_OUTPUTS
                .iter()
                .enumerate()
                .map(|(head, &outputs)| {
                    DepthwisePointwiseUnit::load(&vb, 29 + 6 * head + 2 * level, 64, outputs, false)
                })
                .collect::<candle_core::Result<Vec<_>>>()?;
            heads.push(DepthwisePointwiseUnit::stack(&units)?);
        }
        let heads: [DepthwisePointwiseUnit; 3] =
            heads.try_into().map_err(|_| VisionError::Weights {
                network: "YuNet",
                reason: "expected three head levels".into(),
            })?;
        Ok(Self {
            stem,
            backbone,
            neck,
            heads,
        })
    }

    /// Loads the network from a safetensors buffer (as written by `faceproof models fetch`).
    pub fn from_safetensors(bytes: &[u8], device: &Device) -> Result<Self, VisionError> {
        let tensors = candle_core::safetensors::load_buffer(bytes, device)?;
        Self::load(VarBuilder::from_tensors(tensors, DType::F32, device))
    }

    /// Runs the network on `[N, 3, H, W]` BGR 0..255 input; H and W must be multiples of 32.
    pub fn forward(&self, input: &Tensor) -> Result<YuNetHeads, VisionError> {
        self.forward_cancellable(input, &Cancellation::never())
    }

    /// [`Self::forward`], stopping with [`VisionError::Cancelled`] between backbone units
    /// once `cancel` fires.
    pub fn forward_cancellable(
        &self,
        input: &Tensor,
        cancel: &Cancellation,
    ) -> Result<YuNetHeads, VisionError> {
        let (_, channels, height, width) = input.dims4()?;
        if channels != 3 || height == 0 || width == 0 || height % 32 != 0 || width % 32 != 0 {
            return Err(VisionError::InvalidInput(format!(
                "YuNet takes [N, 3, H, W] with H and W positive multiples of 32, got {:?}",
                input.dims()
            )));
        }
        let mut x = input.clone();
        let mut features = Vec::with_capacity(3);
        for (i, unit) in self.backbone.iter().enumerate() {
            cancel.check()?;
            x = if i == 0 {
                unit.forward_after_stem(&self.stem, &x)?
            } else if Self::POOL_BEFORE.contains(&i) {
                unit.forward_pooled(&x)?
            } else {
                unit.forward(&x)?
            };
            // Units 6, 8 and 10 end the stride 8, 16 and 32 stages.
            if matches!(i, 6 | 8 | 10) {
                features.push(x.clone());
            }
        }
        let [stride8, stride16, stride32] = <[Tensor; 3]>::try_from(features)
            .map_err(|_| VisionError::InvalidInput("backbone stages".into()))?;
        cancel.check()?;
        let p32 = self.neck[0].forward(&stride32)?;
        let p16 = self.neck[1].forward_merged(&p32, &stride16)?;
        let p8 = self.neck[2].forward_merged(&p16, &stride8)?;
        let levels = [p8, p16, p32];

        let mut cls = Vec::with_capacity(3);
        let mut bbox = Vec::with_capacity(3);
        let mut obj = Vec::with_capacity(3);
        let mut kps = Vec::with_capacity(3);
        for (level, feature) in levels.iter().enumerate() {
            let y = self.heads[level].forward(feature)?;
            let (n, c, h, w) = y.dims4()?;
            // One transpose of the 16 stacked channels to `[N, H*W, 16]`, then split per head.
            let y = y.reshape((n, c, h * w))?.transpose(1, 2)?.contiguous()?;
            let head = |first: usize, len: usize| y.narrow(2, first, len)?.contiguous();
            cls.push(candle_nn::ops::sigmoid(&head(0, 1)?)?);
            bbox.push(head(1, 4)?);
            obj.push(candle_nn::ops::sigmoid(&head(5, 1)?)?);
            kps.push(head(6, 10)?);
        }
        let three = |v: Vec<Tensor>| -> Result<[Tensor; 3], VisionError> {
            <[Tensor; 3]>::try_from(v)
                .map_err(|_| VisionError::InvalidInput("three head levels".into()))
        };
        Ok(YuNetHeads {
            cls: three(cls)?,
            bbox: three(bbox)?,
            obj: three(obj)?,
            kps: three(kps)?,
        })
    }
}
