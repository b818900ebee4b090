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
//! Speed: 1x1 convolutions run as one matrix product with the bias added in place
//! ([`crate::ops::pointwise_conv2d`]); depthwise ones through the vectorised kernel with the bias
//! and ReLU applied as the output is written ([`crate::ops::depthwise_conv2d_prelu`] with slope 0);
//! the four heads of a level read the same feature map, so their weights are stacked at load time
//! and each level runs one 64 -> 16 unit instead of four thin ones.

use candle_core::{DType, Device, Module, Tensor};
use candle_nn::VarBuilder;

use crate::VisionError;
use crate::ops::{conv2d_bias_prelu, depthwise_conv2d, depthwise_conv2d_prelu, pointwise_conv2d};

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
    /// Loads `weight` `[out, in, 1, 1]` and `bias` `[out]` from `vb` (linear output).
    pub(crate) fn load(
        vb: VarBuilder<'_>,
        inputs: usize,
        outputs: usize,
    ) -> candle_core::Result<Self> {
        let weight = vb.get((outputs, inputs, 1, 1), "weight")?;
        let bias = vb.get(outputs, "bias")?;
        Self::from_parts(weight, bias, None)
    }

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

/// A 3x3 depthwise convolution (stride 1, padding 1) with bias and optional ReLU, fused into the
/// depthwise kernel's output pass.
#[derive(Debug, Clone)]
struct Depthwise3x3 {
    weight: Tensor,
    bias: Tensor,
    /// Zero slopes (PReLU with slope 0 is ReLU) when the unit ends in a ReLU.
    relu_slope: Option<Tensor>,
}

impl Depthwise3x3 {
    fn load(vb: VarBuilder<'_>, channels: usize, relu: bool) -> candle_core::Result<Self> {
        let weight = vb.get((channels, 1, 3, 3), "weight")?;
        let relu_slope = if relu {
            Some(Tensor::zeros(channels, DType::F32, weight.device())?)
        } else {
            None
        };
        Ok(Self {
            weight,
            bias: vb.get(channels, "bias")?,
            relu_slope,
        })
    }
}

impl Module for Depthwise3x3 {
    fn forward(&self, x: &Tensor) -> candle_core::Result<Tensor> {
        match &self.relu_slope {
            Some(slope) => depthwise_conv2d_prelu(x, &self.weight, Some(&self.bias), slope, 1, 1),
            None => depthwise_conv2d(x, &self.weight, Some(&self.bias), 1, 1),
        }
    }
}

/// YuNet's building block: a pointwise convolution, then a depthwise 3x3, then ReLU (except in
/// the heads).
#[derive(Debug, Clone)]
struct DepthwisePointwiseUnit {
    pointwise: Pointwise,
    depthwise: Depthwise3x3,
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
            depthwise: Depthwise3x3::load(vb.pp(format!("conv{}", first + 1)), outputs, relu)?,
        })
    }

    /// Stacks units that read the same input (the heads of one level) into one unit whose output
    /// channels are theirs in order: every output channel only depends on its own weights, so the
    /// result is exactly the concatenation of the units' outputs.
    fn stack(units: &[Self]) -> candle_core::Result<Self> {
        let cat = |f: &dyn Fn(&Self) -> Tensor| -> candle_core::Result<Tensor> {
            let parts: Vec<Tensor> = units.iter().map(f).collect();
            Tensor::cat(&parts, 0)?.contiguous()
        };
        Ok(Self {
            pointwise: Pointwise {
                weight: cat(&|u| u.pointwise.weight.clone())?,
                bias: cat(&|u| u.pointwise.bias.clone())?,
                slope: None,
            },
            depthwise: Depthwise3x3 {
                weight: cat(&|u| u.depthwise.weight.clone())?,
                bias: cat(&|u| u.depthwise.bias.clone())?,
                relu_slope: None,
            },
        })
    }
}

impl Module for DepthwisePointwiseUnit {
    fn forward(&self, x: &Tensor) -> candle_core::Result<Tensor> {
        self.depthwise.forward(&self.pointwise.forward(x)?)
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
    /// Zero slopes: the stem's ReLU as the fused epilogue of its convolution.
    stem_relu_slope: Tensor,
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
        let stem_relu_slope = Tensor::zeros(16, DType::F32, stem_weight.device())?;
        Ok(Self {
            stem_weight,
            stem_bias,
            stem_relu_slope,
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
        let mut x = conv2d_bias_prelu(
            input,
            &self.stem_weight,
            Some(&self.stem_bias),
            Some(&self.stem_relu_slope),
            2,
            1,
        )?;
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

/// 2x nearest-neighbour upsampling (ONNX Resize, mode nearest, asymmetric, floor).
fn upsample2(x: &Tensor) -> candle_core::Result<Tensor> {
    let (_, _, h, w) = x.dims4()?;
    x.upsample_nearest2d(2 * h, 2 * w)
}
