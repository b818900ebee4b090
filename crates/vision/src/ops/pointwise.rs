//! 1x1 convolutions as plain matrix products, and the per-channel bias + PReLU epilogue.
//!
//! candle's `conv2d` with a 1x1 kernel gathers the input element by element into a fresh
//! `[C_in, H*W]` buffer and scatters the product back before the separate bias add; an NCHW
//! tensor already *is* that matrix, so `[C_out, C_in] x [C_in, H*W]` needs no copy. The bias and
//! PReLU then run in place over the fresh product in one pass (candle's `PReLU` module makes five
//! passes and four temporaries).

use candle_core::{CpuStorage, DType, InplaceOp1, Layout, Result, Tensor, bail};
use rayon::prelude::*;

/// Below this many elements the epilogue stays on the calling thread.
const PARALLEL_MIN_ELEMENTS: usize = 1 << 16;

/// Per-channel `[C]` values as a vector, checking the count.
fn per_channel(t: Option<&Tensor>, channels: usize, what: &str) -> Result<Option<Vec<f32>>> {
    let Some(t) = t else { return Ok(None) };
    let non_unit_dims = t.dims().iter().filter(|&&d| d != 1).count();
    if t.elem_count() != channels || non_unit_dims > 1 {
        bail!(
            "{what} must hold one value per channel ({channels}), got shape {:?}",
            t.dims()
        )
    }
    if t.dtype() != DType::F32 {
        bail!("{what} must be f32, got {:?}", t.dtype())
    }
    t.flatten_all()?.to_vec1::<f32>().map(Some)
}

/// `x = prelu(x + bias)` per channel of an NCHW (or `[N, C, ...]`) tensor, in place.
struct BiasPreluInPlace {
    bias: Option<Vec<f32>>,
    alpha: Option<Vec<f32>>,
}

impl InplaceOp1 for BiasPreluInPlace {
    fn name(&self) -> &'static str {
        "bias-prelu"
    }

    fn cpu_fwd(&self, storage: &mut CpuStorage, layout: &Layout) -> Result<()> {
        let CpuStorage::F32(data) = storage else {
            bail!("bias_prelu: input must be f32")
        };
        let Some((start, end)) = layout.contiguous_offsets() else {
            bail!("bias_prelu: input must be contiguous")
        };
        let dims = layout.dims();
        if dims.len() < 2 {
            bail!("bias_prelu: input must be [N, C, ...], got {dims:?}")
        }
        let channels = dims[1];
        let plane: usize = dims[2..].iter().product();
        let data = &mut data[start..end];
        if plane == 0 || data.is_empty() {
            return Ok(());
        }
        let job = |(index, plane): (usize, &mut [f32])| {
            let channel = index % channels;
            let bias = self.bias.as_ref().map_or(0.0, |b| b[channel]);
            match &self.alpha {
                Some(alpha) => {
                    let alpha = alpha[channel];
                    for v in plane {
                        let biased = *v + bias;
                        *v = if biased >= 0.0 {
                            biased
                        } else {
                            biased * alpha
                        };
                    }
                }
                None => plane.iter_mut().for_each(|v| *v += bias),
            }
        };
        if data.len() < PARALLEL_MIN_ELEMENTS || rayon::current_num_threads() < 2 {
            data.chunks_mut(plane).enumerate().for_each(job);
        } else {
            let min_planes = (PARALLEL_MIN_ELEMENTS / 4 / plane).max(1);
            data.par_chunks_mut(plane)
                .enumerate()
                .with_min_len(min_planes)
                .for_each(job);
        }
        Ok(())
    }
}

/// Applies the epilogue in place to a tensor this module just created (so no one else sees the
/// mutation).
fn bias_prelu_owned(fresh: &Tensor, bias: Option<&Tensor>, alpha: Option<&Tensor>) -> Result<()> {
    if bias.is_none() && alpha.is_none() {
        return Ok(());
    }
    let channels = fresh.dim(1)?;
    let op = BiasPreluInPlace {
        bias: per_channel(bias, channels, "bias")?,
        alpha: per_channel(alpha, channels, "PReLU slope")?,
    };
    fresh.inplace_op1(&op)
}

/// `prelu(x + bias)` with per-channel `bias` and PReLU slope `alpha` (each `[C]`, either
/// optional) over an `[N, C, ...]` f32 tensor, in one pass. Use after convolutions that
/// [`pointwise_conv2d`], [`conv2d_bias_prelu`] and the depthwise ops do not cover.
pub fn bias_prelu(x: &Tensor, bias: Option<&Tensor>, alpha: Option<&Tensor>) -> Result<Tensor> {
    if x.dtype() != DType::F32 {
        bail!("bias_prelu: input must be f32, got {:?}", x.dtype())
    }
    if x.rank() < 2 {
        bail!("bias_prelu: input must be [N, C, ...], got {:?}", x.dims())
    }
    // A private copy: the in-place op must not write into storage shared with the caller.
    let out = x.copy()?;
    bias_prelu_owned(&out, bias, alpha)?;
    Ok(out)
}

/// 1x1 convolution (stride 1, no padding) of an NCHW f32 tensor as one matrix product, with the
/// optional per-channel bias (`[C_out]`) and PReLU slope (`[C_out]`) applied in place after it.
///
/// `weight` is `[C_out, C_in, 1, 1]` or `[C_out, C_in]`; keep it contiguous (it is, when loaded
/// from safetensors or folded at load time). For a ReLU pass an `alpha` of zeros (PReLU with
/// slope 0), made once at load time.
pub fn pointwise_conv2d(
    x: &Tensor,
    weight: &Tensor,
    bias: Option<&Tensor>,
    alpha: Option<&Tensor>,
) -> Result<Tensor> {
    let (batch, in_channels, h, w) = x.dims4()?;
    let weight = match *weight.dims() {
        [o, i, 1, 1] | [o, i] if i == in_channels => weight.reshape((o, i))?,
        _ => bail!(
            "pointwise_conv2d: weight must be [C_out, {in_channels}, 1, 1] or [C_out, \
             {in_channels}], got {:?}",
            weight.dims()
        ),
    };
    if x.dtype() != DType::F32 || weight.dtype() != DType::F32 {
        bail!("pointwise_conv2d: f32 tensors expected")
    }
    let out_channels = weight.dim(0)?;
    let x = x.contiguous()?;
    let y = if batch == 1 {
        weight.matmul(&x.reshape((in_channels, h * w))?)?
    } else {
        weight
            .broadcast_left(batch)?
            .matmul(&x.reshape((batch, in_channels, h * w))?)?
    };
    // matmul returns a fresh contiguous tensor: safe to finish in place.
    let y = y.reshape((batch, out_channels, h, w))?;
    bias_prelu_owned(&y, bias, alpha)?;
    Ok(y)
}

/// Dense convolution (groups 1) with the per-channel bias + PReLU epilogue: for the dense stem
/// convolutions. Few input channels (the RGB stems) run through the direct kernel in
/// `depthwise.rs` (candle's im2col is slow there); wider inputs use candle's `conv2d`.
pub fn conv2d_bias_prelu(
    x: &Tensor,
    weight: &Tensor,
    bias: Option<&Tensor>,
    alpha: Option<&Tensor>,
    stride: usize,
    padding: usize,
) -> Result<Tensor> {
    /// Up to this many input channels the direct kernel beats im2col + matrix product.
    const DIRECT_MAX_IN_CHANNELS: usize = 4;
    if weight.rank() == 4 && x.rank() == 4 && weight.dim(1)? <= DIRECT_MAX_IN_CHANNELS {
        return super::depthwise::dense_conv2d_few_channels(
            x, weight, bias, alpha, stride, padding,
        );
    }
    let y = x.conv2d(weight, padding, stride, 1, 1)?;
    bias_prelu_owned(&y, bias, alpha)?;
    Ok(y)
}
