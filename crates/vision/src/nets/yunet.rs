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
//! Convolutions with a 1x1 kernel run as one matrix product; depthwise ones through
//! [`crate::ops::depthwise_conv2d`].

use candle_core::{DType, Device, Module, Tensor};
use candle_nn::VarBuilder;

use crate::VisionError;
use crate::ops::depthwise_conv2d;

/// The detector's output strides, in the order of the heads.
pub const STRIDES: [usize; 3] = [8, 16, 32];

/// A 1x1 convolution with bias, run as a matrix product over the pixels.
#[derive(Debug, Clone)]
pub(crate) struct Pointwise {
    /// `[out, in]`.
    weight: Tensor,
    /// `[out, 1]`, broadcast over the pixels.
    bias: Tensor,
}

impl Pointwise {
    /// Loads `weight` `[out, in, 1, 1]` and `bias` `[out]` from `vb`.
    pub(crate) fn load(
        vb: VarBuilder<'_>,
        inputs: usize,
        outputs: usize,
    ) -> candle_core::Result<Self> {
        let weight = vb.get((outputs, inputs, 1, 1), "weight")?;
        let bias = vb.get(outputs, "bias")?;
        Self::from_parts(weight, bias)
    }

    /// From a `[out, in, 1, 1]` (or `[out, in]`) weight and `[out]` bias.
    pub(crate) fn from_parts(weight: Tensor, bias: Tensor) -> candle_core::Result<Self> {
        let outputs = weight.dim(0)?;
        let inputs = weight.elem_count() / outputs.max(1);
        Ok(Self {
            weight: weight.reshape((outputs, inputs))?.contiguous()?,
            bias: bias.reshape((outputs, 1))?,
        })
    }
}

impl Module for Pointwise {
    fn forward(&self, x: &Tensor) -> candle_core::Result<Tensor> {
        let (n, c, h, w) = x.dims4()?;
        let x = x.reshape((n, c, h * w))?;
        let outputs = self.weight.dim(0)?;
        let y = self.weight.broadcast_left(n)?.matmul(&x)?;
        y.broadcast_add(&self.bias)?.reshape((n, outputs, h, w))
    }
}

/// A 3x3 depthwise convolution (stride 1, padding 1) with bias.
#[derive(Debug, Clone)]
struct Depthwise3x3 {
    weight: Tensor,
    bias: Tensor,
}

impl Depthwise3x3 {
    fn load(vb: VarBuilder<'_>, channels: usize) -> candle_core::Result<Self> {
        Ok(Self {
            weight: vb.get((channels, 1, 3, 3), "weight")?,
            bias: vb.get(channels, "bias")?,
        })
    }
}

impl Module for Depthwise3x3 {
    fn forward(&self, x: &Tensor) -> candle_core::Result<Tensor> {
        depthwise_conv2d(x, &self.weight, Some(&self.bias), 1, 1)
    }
}

/// YuNet's building block: a pointwise convolution, then a depthwise 3x3, then ReLU (except in
/// the heads).
#[derive(Debug, Clone)]
struct DepthwisePointwiseUnit {
    pointwise: Pointwise,
    depthwise: Depthwise3x3,
    relu: bool,
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
        Ok(Self {
            pointwise: Pointwise::load(vb.pp(format!("conv{first}")), inputs, outputs)?,
            depthwise: Depthwise3x3::load(vb.pp(format!("conv{}", first + 1)), outputs)?,
            relu,
        })
    }
}

impl Module for DepthwisePointwiseUnit {
    fn forward(&self, x: &Tensor) -> candle_core::Result<Tensor> {
        let y = self.depthwise.forward(&self.pointwise.forward(x)?)?;
        if self.relu { y.relu() } else { Ok(y) }
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
    stem_weight: Tensor,
    stem_bias: Tensor,
    /// Backbone units, with a max-pool before units 1, 5, 7 and 9 (see [`Self::POOL_BEFORE`]).
    backbone: Vec<DepthwisePointwiseUnit>,
    /// Neck units for strides 32, 16, 8.
    neck: [DepthwisePointwiseUnit; 3],
    /// Heads `[cls, bbox, obj, kps]`, each for strides 8, 16, 32.
    heads: [[DepthwisePointwiseUnit; 3]; 4],
}

impl YuNet {
    /// Backbone unit indices preceded by a 2x2 max-pool.
    const POOL_BEFORE: [usize; 4] = [1, 5, 7, 9];

    /// Loads the network from weights named as the ONNX importer names them.
    pub fn load(vb: VarBuilder<'_>) -> Result<Self, VisionError> {
        let stem_weight = vb.get((16, 3, 3, 3), "conv0.weight")?;
        let stem_bias = vb.get(16, "conv0.bias")?;
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
        let head_outputs = [1, 4, 1, 10];
        let mut heads = Vec::with_capacity(4);
        for (h, &outputs) in head_outputs.iter().enumerate() {
            let first = 29 + 6 * h;
            heads.push([
                DepthwisePointwiseUnit::load(&vb, first, 64, outputs, false)?,
                DepthwisePointwiseUnit::load(&vb, first + 2, 64, outputs, false)?,
                DepthwisePointwiseUnit::load(&vb, first + 4, 64, outputs, false)?,
            ]);
        }
        let heads: [[DepthwisePointwiseUnit; 3]; 4] =
            heads.try_into().map_err(|_| VisionError::Weights {
                network: "YuNet",
                reason: "expected four heads".into(),
            })?;
        Ok(Self {
            stem_weight,
            stem_bias,
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
        let (_, channels, height, width) = input.dims4()?;
        if channels != 3 || height == 0 || width == 0 || height % 32 != 0 || width % 32 != 0 {
            return Err(VisionError::InvalidInput(format!(
                "YuNet takes [N, 3, H, W] with H and W positive multiples of 32, got {:?}",
                input.dims()
            )));
        }
        let x = input
            .conv2d(&self.stem_weight, 1, 2, 1, 1)?
            .broadcast_add(&self.stem_bias.reshape((1, 16, 1, 1))?)?
            .relu()?;
        let mut x = x;
        let mut features = Vec::with_capacity(3);
        for (i, unit) in self.backbone.iter().enumerate() {
            if Self::POOL_BEFORE.contains(&i) {
                x = x.max_pool2d(2)?;
            }
            x = unit.forward(&x)?;
            // Units 6, 8 and 10 end the stride 8, 16 and 32 stages.
            if matches!(i, 6 | 8 | 10) {
                features.push(x.clone());
            }
        }
        let [stride8, stride16, stride32] = <[Tensor; 3]>::try_from(features)
            .map_err(|_| VisionError::InvalidInput("backbone stages".into()))?;
        let p32 = self.neck[0].forward(&stride32)?;
        let p16 = self.neck[1].forward(&(upsample2(&p32)? + stride16)?)?;
        let p8 = self.neck[2].forward(&(upsample2(&p16)? + stride8)?)?;
        let levels = [p8, p16, p32];

        let run = |head: usize, sigmoid: bool| -> candle_core::Result<[Tensor; 3]> {
            let mut outs = Vec::with_capacity(3);
            for (level, feature) in levels.iter().enumerate() {
                let y = self.heads[head][level].forward(feature)?;
                let (n, c, h, w) = y.dims4()?;
                let y = y.permute((0, 2, 3, 1))?.reshape((n, h * w, c))?;
                outs.push(if sigmoid {
                    candle_nn::ops::sigmoid(&y)?
                } else {
                    y
                });
            }
            let [a, b, c] = <[Tensor; 3]>::try_from(outs)
                .map_err(|_| candle_core::Error::Msg("three levels".into()))?;
            Ok([a, b, c])
        };
        Ok(YuNetHeads {
            cls: run(0, true)?,
            bbox: run(1, false)?,
            obj: run(2, true)?,
            kps: run(3, false)?,
        })
    }
}

/// 2x nearest-neighbour upsampling (ONNX Resize, mode nearest, asymmetric, floor).
fn upsample2(x: &Tensor) -> candle_core::Result<Tensor> {
    let (_, _, h, w) = x.dims4()?;
    x.upsample_nearest2d(2 * h, 2 * w)
}
