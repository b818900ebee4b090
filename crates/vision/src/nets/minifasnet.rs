//! MiniFASNetV2 and MiniFASNetV1SE, the passive anti-spoofing networks of minivision-ai's
//! Silent-Face-Anti-Spoofing (reference implementation: `src/model_lib/MiniFASNet.py` at commit
//! b6d5f04; weights `2.7_80x80_MiniFASNetV2.pth` and `4_0_0_80x80_MiniFASNetV1SE.pth`).
//!
//! Both are pruned MobileFaceNets on an 80x80 BGR crop of raw 0..255 values (no normalisation):
//! conv 3x3/2, depthwise 3x3, then inverted-bottleneck stages (1x1 expand + BN + PReLU, depthwise
//! 3x3 + BN + PReLU, 1x1 project + BN) with residual stages of 4, 6 and 2 blocks between strided
//! blocks, a 1x1 conv to 512, a 5x5 depthwise "global" conv, linear 512->128, BatchNorm1d and
//! linear 128->3. V1SE adds a squeeze-excitation module to the last block of each residual stage.
//! Channel widths differ per layer (pruning) and are read from the weight shapes.
//!
//! Every BatchNorm is folded into the convolution or linear layer before it at load time. On the
//! 80x80 input the maps are 40x40 down to 5x5 and a layer is tiny, so per-op overhead (a fresh
//! tensor, dispatch, a thread fork per layer) cost more than the arithmetic: each bottleneck runs
//! as one fused op and the head (1x1 conv, global depthwise conv, both linear layers) as another
//! (`crate::ops::FusedBottleneck`, `crate::ops::FusedHead`); only the stem runs as separate ops.
//!
//! # Output classes
//! Softmax over the three logits; the probability of class 1 ([`REAL_CLASS`]) is the liveness
//! score (upstream `test.py` calls argmax 1 "Real Face"); the reference ensemble averages the two
//! networks' softmax outputs. See [`LivenessClass`] for what is known about classes 0 and 2.

use std::collections::HashMap;

use candle_core::{DType, Device, Module, Result, Tensor, bail};
use candle_nn::VarBuilder;
use faceproof_imaging::Cancellation;

use crate::VisionError;
use crate::ops::{
    BottleneckWeights, FusedBottleneck, FusedHead, HeadWeights, SqueezeExcitationWeights,
    conv2d_bias_prelu, depthwise_conv2d, depthwise_conv2d_prelu, pointwise_conv2d,
};

/// Side of the square input crop, in pixels.
pub const INPUT_SIZE: usize = 80;
/// Number of output classes.
pub const NUM_CLASSES: usize = 3;
/// Index of the "real face" class among the logits.
pub const REAL_CLASS: usize = 1;

/// PyTorch's default BatchNorm epsilon (the upstream model uses the default).
const BATCH_NORM_EPS: f64 = 1e-5;

/// Which of the two upstream networks.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum MiniFasNetVariant {
    /// `2.7_80x80_MiniFASNetV2.pth`: crop 2.7x the face box.
    V2,
    /// `4_0_0_80x80_MiniFASNetV1SE.pth`: crop 4.0x the face box, squeeze-excitation blocks.
    V1Se,
}

impl MiniFasNetVariant {
    /// Both variants, in the order the reference ensemble lists them.
    pub const ALL: [Self; 2] = [Self::V2, Self::V1Se];

    /// How much larger than the face box the crop fed to this network is (the number that starts
    /// the upstream file name).
    pub const fn crop_scale(self) -> f64 {
        match self {
            Self::V2 => 2.7,
            Self::V1Se => 4.0,
        }
    }

    /// Whether the last block of each residual stage carries a squeeze-excitation module.
    pub const fn has_squeeze_excitation(self) -> bool {
        matches!(self, Self::V1Se)
    }
}

/// The three output classes, in logit order.
///
/// Silent-Face's training data is private (folders named `0`, `1`, `2`). What is known:
/// - class 1 is "real": upstream `test.py` reports argmax 1 as "Real Face", anything else as fake
///   (certain);
/// - the maintainer (zhuyingSeu) answered in upstream issues #2 and #46 that the classes are
///   "real, 2D fake, 3D fake", without saying which index is which (#46 lists them as
///   "2D Fake, Real and 3D Fake"); other users guess "print and electronic" (#93);
/// - measured here on the upstream repository's own samples: a printed photo and a tablet replay
///   both put almost all spoof mass on class 2 (print: V2 0.96 / V1SE 0.49 on class 2, against
///   0.03 / 0.08 on class 0; screen: 0.9995 / 0.993 on class 2).
///
/// So the 0/2 split does not separate print from screen attacks on the evidence available; the
/// names below stay neutral. Use `1 - real` as the spoof probability.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum LivenessClass {
    /// Class 0: a presentation attack of a kind the upstream samples rarely trigger.
    SpoofClass0 = 0,
    /// Class 1: a live face.
    Real = 1,
    /// Class 2: a presentation attack; both print and screen samples land here.
    SpoofClass2 = 2,
}

/// Softmax probabilities of one crop, one field per [`LivenessClass`].
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct LivenessProbabilities {
    pub spoof_class_0: f32,
    pub real: f32,
    pub spoof_class_2: f32,
}

impl LivenessProbabilities {
    /// Softmax of one row of logits (numerically stable: the maximum is subtracted first).
    pub fn from_logits(logits: [f32; NUM_CLASSES]) -> Self {
        let max = logits.iter().copied().fold(f32::NEG_INFINITY, f32::max);
        let exp = logits.map(|l| (l - max).exp());
        let sum: f32 = exp.iter().sum();
        Self {
            spoof_class_0: exp[0] / sum,
            real: exp[1] / sum,
            spoof_class_2: exp[2] / sum,
        }
    }

    /// Probability that the crop shows a presentation attack of any kind.
    pub fn spoof(self) -> f32 {
        self.spoof_class_0 + self.spoof_class_2
    }

    /// Probabilities in class order.
    pub fn to_array(self) -> [f32; NUM_CLASSES] {
        [self.spoof_class_0, self.real, self.spoof_class_2]
    }

    /// The element-wise mean of several models' probabilities (the upstream ensemble averages the
    /// softmax outputs). `None` for an empty slice.
    pub fn mean(all: &[Self]) -> Option<Self> {
        if all.is_empty() {
            return None;
        }
        let n = all.len() as f32;
        Some(Self {
            spoof_class_0: all.iter().map(|p| p.spoof_class_0).sum::<f32>() / n,
            real: all.iter().map(|p| p.real).sum::<f32>() / n,
            spoof_class_2: all.iter().map(|p| p.spoof_class_2).sum::<f32>() / n,
        })
    }

    /// The mean of several models' probabilities, each weighted by its `weight` (the weights need
    /// not sum to 1). `None` for an empty slice or weights that are not positive and finite.
    pub fn weighted_mean(all: &[(Self, f32)]) -> Option<Self> {
        if all
            .iter()
            .any(|(_, weight)| !(weight.is_finite() && *weight > 0.0))
        {
            return None;
        }
        let total: f32 = all.iter().map(|(_, weight)| weight).sum();
        if all.is_empty() || total <= 0.0 {
            return None;
        }
        let weighted = |class: fn(&Self) -> f32| {
            all.iter().map(|(p, weight)| class(p) * weight).sum::<f32>() / total
        };
        Some(Self {
            spoof_class_0: weighted(|p| p.spoof_class_0),
            real: weighted(|p| p.real),
            spoof_class_2: weighted(|p| p.spoof_class_2),
        })
    }
}

/// Softmax of `[N, 3]` logits, one [`LivenessProbabilities`] per row.
pub fn softmax_probabilities(logits: &Tensor) -> Result<Vec<LivenessProbabilities>> {
    let rows = logits.to_dtype(DType::F32)?.to_vec2::<f32>()?;
    rows.into_iter()
        .map(|row| match <[f32; NUM_CLASSES]>::try_from(row) {
            Ok(row) => Ok(LivenessProbabilities::from_logits(row)),
            Err(row) => bail!("expected {NUM_CLASSES} logits per row, got {}", row.len()),
        })
        .collect()
}

/// One anti-spoofing network with its BatchNorms folded.
#[derive(Debug, Clone)]
pub struct MiniFasNet {
    variant: MiniFasNetVariant,
    conv1: FoldedConv,
    conv2_dw: FoldedConv,
    /// `conv_23`, `conv_3.*`, `conv_34`, `conv_4.*`, `conv_45`, `conv_5.*` in order, each one
    /// fused op (on these tiny maps per-op overhead, not arithmetic, dominated the unfused run).
    blocks: Vec<FusedBottleneck>,
    /// `conv_6_sep`, `conv_6_dw`, `linear` + `bn` and `prob` as one op.
    head: FusedHead,
}

impl MiniFasNet {
    /// Builds the network from weights named as in the upstream state dict without the
    /// `module.` prefix (`conv1.conv.weight`, `conv_3.model.0.conv.bn.running_mean`, ...).
    pub fn load(vb: VarBuilder<'_>, variant: MiniFasNetVariant) -> Result<Self> {
        let se = variant.has_squeeze_excitation();
        let mut blocks = Vec::new();
        for (name, blocks_in_stage) in [("conv_3", 4), ("conv_4", 6), ("conv_5", 2)] {
            let strided = match name {
                "conv_3" => "conv_23",
                "conv_4" => "conv_34",
                _ => "conv_45",
            };
            blocks.push(load_bottleneck(vb.pp(strided), 2, false, false)?);
            let stage = vb.pp(name).pp("model");
            for i in 0..blocks_in_stage {
                let last = i + 1 == blocks_in_stage;
                blocks.push(load_bottleneck(stage.pp(i), 1, true, se && last)?);
            }
        }
        let linear = vb.pp("linear").get_unchecked("weight")?;
        let (embedding, embedding_bias) = fold_batch_norm(&vb.pp("bn"), &linear)?;
        let classifier = vb.pp("prob").get_unchecked("weight")?;
        if classifier.dims() != [NUM_CLASSES, embedding.dim(0)?] {
            bail!(
                "prob.weight has shape {:?}, expected [{NUM_CLASSES}, {}]",
                classifier.dims(),
                embedding.dim(0)?
            );
        }
        let conv_6_sep = FoldedConv::load(vb.pp("conv_6_sep"), ConvKind::Pointwise, 1, 0, true)?;
        let conv_6_dw = FoldedConv::load(vb.pp("conv_6_dw"), ConvKind::Depthwise, 1, 0, false)?;
        let head = FusedHead::new(&HeadWeights {
            pointwise: &conv_6_sep.weight,
            pointwise_bias: &conv_6_sep.bias,
            pointwise_alpha: conv_6_sep.prelu_slope(&vb.pp("conv_6_sep"))?,
            global_depthwise: &conv_6_dw.weight,
            global_depthwise_bias: &conv_6_dw.bias,
            embedding: &embedding,
            embedding_bias: &embedding_bias,
            classifier: &classifier,
        })?;
        Ok(Self {
            variant,
            conv1: FoldedConv::load(vb.pp("conv1"), ConvKind::Full, 2, 1, true)?,
            conv2_dw: FoldedConv::load(vb.pp("conv2_dw"), ConvKind::Depthwise, 1, 1, true)?,
            blocks,
            head,
        })
    }

    /// Loads the network from a converted safetensors file (the bytes of
    /// `models/store/minifasnet_v2.safetensors` or `minifasnet_v1se.safetensors`).
    pub fn from_safetensors(
        bytes: &[u8],
        variant: MiniFasNetVariant,
        device: &Device,
    ) -> Result<Self> {
        let tensors: HashMap<String, Tensor> =
            candle_core::safetensors::load_buffer(bytes, device)?;
        Self::load(
            VarBuilder::from_tensors(tensors, DType::F32, device),
            variant,
        )
    }

    /// Which network this is.
    pub fn variant(&self) -> MiniFasNetVariant {
        self.variant
    }

    /// Logits `[N, 3]` for crops `[N, 3, 80, 80]`: BGR planes of raw 0..255 values.
    pub fn forward(&self, crops: &Tensor) -> Result<Tensor> {
        self.forward_cancellable(crops, &Cancellation::never())
            .map_err(|error| match error {
                VisionError::Tensor(error) => error,
                other => candle_core::Error::Msg(other.to_string()),
            })
    }

    /// [`Self::forward`], stopping with [`VisionError::Cancelled`] between blocks once `cancel`
    /// fires.
    pub fn forward_cancellable(
        &self,
        crops: &Tensor,
        cancel: &Cancellation,
    ) -> std::result::Result<Tensor, VisionError> {
        match crops.dims() {
            &[_, 3, INPUT_SIZE, INPUT_SIZE] if crops.dtype() == DType::F32 => {}
            dims => {
                return Err(VisionError::InvalidInput(format!(
                    "MiniFASNet expects f32 [N, 3, {INPUT_SIZE}, {INPUT_SIZE}] input, got {:?} {dims:?}",
                    crops.dtype()
                )));
            }
        }
        let mut x = self.conv1.forward(crops)?;
        x = self.conv2_dw.forward(&x)?;
        for block in &self.blocks {
            cancel.check()?;
            x = block.forward(&x)?;
        }
        cancel.check()?;
        // Dropout (before `prob`) is the identity at inference.
        Ok(self.head.forward(&x)?)
    }
}

impl Module for MiniFasNet {
    fn forward(&self, xs: &Tensor) -> Result<Tensor> {
        MiniFasNet::forward(self, xs)
    }
}

/// How a [`FoldedConv`] convolves.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum ConvKind {
    /// Dense convolution (groups = 1) of any kernel size.
    Full,
    /// One filter per channel (groups = channels).
    Depthwise,
    /// 1x1 dense convolution, run as a matrix product.
    Pointwise,
}

/// Upstream `Conv_block` (conv + BN + PReLU) or `Linear_block` (conv + BN) with the BN folded
/// into the convolution's weight and a bias.
#[derive(Debug, Clone)]
struct FoldedConv {
    kind: ConvKind,
    /// `[O, I, kh, kw]` (`[O, 1, kh, kw]` depthwise); `[O, I]` for pointwise.
    weight: Tensor,
    bias: Tensor,
    prelu: Option<Tensor>,
    stride: usize,
    padding: usize,
}

impl FoldedConv {
    fn load(
        vb: VarBuilder<'_>,
        kind: ConvKind,
        stride: usize,
        padding: usize,
        with_prelu: bool,
    ) -> Result<Self> {
        let raw = vb.pp("conv").get_unchecked("weight")?;
        let (weight, bias) = fold_batch_norm(&vb.pp("bn"), &raw)?;
        let (out_channels, in_per_group, kh, kw) = weight.dims4()?;
        let weight = match kind {
            ConvKind::Pointwise if (kh, kw) == (1, 1) => {
                weight.reshape((out_channels, in_per_group))?
            }
            ConvKind::Pointwise => bail!("{}: pointwise conv with a {kh}x{kw} kernel", vb.prefix()),
            ConvKind::Depthwise if in_per_group != 1 => {
                bail!(
                    "{}: depthwise weight must be [C, 1, kh, kw], got {:?}",
                    vb.prefix(),
                    weight.dims()
                )
            }
            _ => weight,
        };
        let prelu = if with_prelu {
            Some(vb.pp("prelu").get(out_channels, "weight")?)
        } else {
            None
        };
        Ok(Self {
            kind,
            weight,
            bias,
            prelu,
            stride,
            padding,
        })
    }

    /// The PReLU slope of a block loaded with one (`vb` names the block in the error).
    fn prelu_slope(&self, vb: &VarBuilder<'_>) -> Result<&Tensor> {
        match &self.prelu {
            Some(alpha) => Ok(alpha),
            None => bail!("{}: expected a PReLU", vb.prefix()),
        }
    }
}

impl Module for FoldedConv {
    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        match self.kind {
            ConvKind::Depthwise => match &self.prelu {
                Some(alpha) => depthwise_conv2d_prelu(
                    x,
                    &self.weight,
                    Some(&self.bias),
                    alpha,
                    self.stride,
                    self.padding,
                ),
                None => {
                    depthwise_conv2d(x, &self.weight, Some(&self.bias), self.stride, self.padding)
                }
            },
            // Both finish with the bias + PReLU applied in place on the fresh output (one pass,
            // no temporaries); the 1x1 case also skips im2col (an NCHW map is already the matrix).
            ConvKind::Full => conv2d_bias_prelu(
                x,
                &self.weight,
                Some(&self.bias),
                self.prelu.as_ref(),
                self.stride,
                self.padding,
            ),
            ConvKind::Pointwise => {
                pointwise_conv2d(x, &self.weight, Some(&self.bias), self.prelu.as_ref())
            }
        }
    }
}

/// Upstream `Depth_Wise` / `Depth_Wise_SE`: 1x1 expand, depthwise 3x3 (carrying the stride),
/// 1x1 project, then optionally squeeze-excitation (upstream applies it only on the residual
/// path, before the add: `Depth_Wise_SE.forward`) and the residual add; loaded as one fused op.
fn load_bottleneck(
    vb: VarBuilder<'_>,
    stride: usize,
    residual: bool,
    se: bool,
) -> Result<FusedBottleneck> {
    let expand = FoldedConv::load(vb.pp("conv"), ConvKind::Pointwise, 1, 0, true)?;
    let depthwise = FoldedConv::load(vb.pp("conv_dw"), ConvKind::Depthwise, stride, 1, true)?;
    let project = FoldedConv::load(vb.pp("project"), ConvKind::Pointwise, 1, 0, false)?;
    let squeeze_excitation = if se {
        Some(SqueezeExcitation::load(vb.pp("se_module"))?)
    } else {
        None
    };
    FusedBottleneck::new(&BottleneckWeights {
        expand: &expand.weight,
        expand_bias: &expand.bias,
        expand_alpha: expand.prelu_slope(&vb.pp("conv"))?,
        depthwise: &depthwise.weight,
        depthwise_bias: &depthwise.bias,
        depthwise_alpha: depthwise.prelu_slope(&vb.pp("conv_dw"))?,
        stride,
        project: &project.weight,
        project_bias: &project.bias,
        squeeze_excitation: squeeze_excitation
            .as_ref()
            .map(|se| SqueezeExcitationWeights {
                reduce: &se.reduce,
                reduce_bias: &se.reduce_bias,
                expand: &se.expand,
                expand_bias: &se.expand_bias,
            }),
        residual,
    })
}

/// Upstream `SEModule`: global average pool, 1x1 conv to C/4 + BN + ReLU, 1x1 conv to C + BN,
/// sigmoid, channel-wise multiply; the BNs folded, the 1x1 convs kept as `[out, in]` matrices.
#[derive(Debug, Clone)]
struct SqueezeExcitation {
    reduce: Tensor,
    reduce_bias: Tensor,
    expand: Tensor,
    expand_bias: Tensor,
}

impl SqueezeExcitation {
    fn load(vb: VarBuilder<'_>) -> Result<Self> {
        let pointwise = |name: &str, bn: &str| -> Result<(Tensor, Tensor)> {
            let raw = vb.pp(name).get_unchecked("weight")?;
            let (weight, bias) = fold_batch_norm(&vb.pp(bn), &raw)?;
            let (out_channels, in_channels, kh, kw) = weight.dims4()?;
            if (kh, kw) != (1, 1) {
                bail!(
                    "{}.{name}: expected a 1x1 kernel, got {kh}x{kw}",
                    vb.prefix()
                );
            }
            Ok((weight.reshape((out_channels, in_channels))?, bias))
        };
        let (reduce, reduce_bias) = pointwise("fc1", "bn1")?;
        let (expand, expand_bias) = pointwise("fc2", "bn2")?;
        Ok(Self {
            reduce,
            reduce_bias,
            expand,
            expand_bias,
        })
    }
}

/// Folds an eval-mode BatchNorm (`weight`, `bias`, `running_mean`, `running_var` under `bn`) into
/// the layer before it, whose weight has the output channels first. Returns the folded weight
/// and the bias `beta - mean * gamma / sqrt(var + eps)`; computed in f64.
fn fold_batch_norm(bn: &VarBuilder<'_>, weight: &Tensor) -> Result<(Tensor, Tensor)> {
    let out_channels = weight.dim(0)?;
    let get = |name: &str| -> Result<Tensor> { bn.get(out_channels, name)?.to_dtype(DType::F64) };
    let gamma = get("weight")?;
    let beta = get("bias")?;
    let mean = get("running_mean")?;
    let var = get("running_var")?;
    let scale = (gamma / (var + BATCH_NORM_EPS)?.sqrt()?)?;
    let mut scale_shape = vec![1; weight.rank()];
    scale_shape[0] = out_channels;
    let folded = weight
        .to_dtype(DType::F64)?
        .broadcast_mul(&scale.reshape(scale_shape)?)?
        .to_dtype(DType::F32)?;
    let bias = (beta - (mean * scale)?)?.to_dtype(DType::F32)?;
    Ok((folded, bias))
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn softmax_is_stable_and_ordered() {
        let p = LivenessProbabilities::from_logits([1000.0, 1001.0, 999.0]);
        let sum: f32 = p.to_array().iter().sum();
        assert!((sum - 1.0).abs() < 1e-6);
        assert!(p.real > p.spoof_class_0 && p.spoof_class_0 > p.spoof_class_2);
        let e = 1f32.exp();
        assert!((p.real - e / (1.0 + e + 1.0 / e)).abs() < 1e-6);
        let logits = Tensor::new(&[[0f32, 0.0, 0.0], [0.0, 10.0, 0.0]], &Device::Cpu).unwrap();
        let rows = softmax_probabilities(&logits).unwrap();
        assert!((rows[0].real - 1.0 / 3.0).abs() < 1e-6);
        assert!(rows[1].real > 0.99);
        let mean = LivenessProbabilities::mean(&rows).unwrap();
        assert!((mean.real - (rows[0].real + rows[1].real) / 2.0).abs() < 1e-6);
        assert!(LivenessProbabilities::mean(&[]).is_none());
    }

    #[test]
    fn weighted_mean_weighs_each_model_and_refuses_bad_weights() {
        let live = LivenessProbabilities::from_logits([0.0, 10.0, 0.0]);
        let spoof = LivenessProbabilities::from_logits([10.0, 0.0, 0.0]);
        let mean = LivenessProbabilities::weighted_mean(&[(live, 3.0), (spoof, 1.0)]).unwrap();
        assert!((mean.real - (3.0 * live.real + spoof.real) / 4.0).abs() < 1e-6);
        assert!((mean.to_array().iter().sum::<f32>() - 1.0).abs() < 1e-6);
        let equal = LivenessProbabilities::weighted_mean(&[(live, 1.0), (spoof, 1.0)]).unwrap();
        assert_eq!(equal, LivenessProbabilities::mean(&[live, spoof]).unwrap());
        assert!(LivenessProbabilities::weighted_mean(&[]).is_none());
        assert!(LivenessProbabilities::weighted_mean(&[(live, 0.0)]).is_none());
        assert!(LivenessProbabilities::weighted_mean(&[(live, f32::NAN)]).is_none());
        assert!(LivenessProbabilities::weighted_mean(&[(live, -1.0), (spoof, 2.0)]).is_none());
    }

    #[test]
    fn batch_norm_folding_matches_conv_then_batch_norm() {
        let device = Device::Cpu;
        let weight = Tensor::new(&[[[[2f32]], [[-1.0]]], [[[0.5]], [[3.0]]]], &device).unwrap();
        let mut map = HashMap::new();
        map.insert(
            "weight".to_owned(),
            Tensor::new(&[1.5f32, -0.5], &device).unwrap(),
        );
        map.insert(
            "bias".to_owned(),
            Tensor::new(&[0.25f32, 1.0], &device).unwrap(),
        );
        map.insert(
            "running_mean".to_owned(),
            Tensor::new(&[0.1f32, -2.0], &device).unwrap(),
        );
        map.insert(
            "running_var".to_owned(),
            Tensor::new(&[4.0f32, 0.25], &device).unwrap(),
        );
        let vb = VarBuilder::from_tensors(map, DType::F32, &device);
        let (folded, bias) = fold_batch_norm(&vb, &weight).unwrap();
        let x = Tensor::new(&[[[[3f32]], [[-2.0]]]], &device).unwrap();
        let y = x
            .conv2d(&folded, 0, 1, 1, 1)
            .unwrap()
            .flatten_all()
            .unwrap()
            .add(&bias)
            .unwrap()
            .to_vec1::<f32>()
            .unwrap();
        // conv: [2*3 + -1*-2, 0.5*3 + 3*-2] = [8, -4.5]; then BN by hand.
        let bn = |v: f32, g: f32, b: f32, m: f32, var: f32| (v - m) / (var + 1e-5).sqrt() * g + b;
        let expected = [
            bn(8.0, 1.5, 0.25, 0.1, 4.0),
            bn(-4.5, -0.5, 1.0, -2.0, 0.25),
        ];
        for (a, e) in y.iter().zip(expected) {
            assert!((a - e).abs() < 1e-5, "{a} vs {e}");
        }
    }
}
