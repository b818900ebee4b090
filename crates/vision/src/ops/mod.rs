//! Kernels that candle lacks or runs too slowly for these networks.
//!
//! - [`depthwise_conv2d`] / [`depthwise_conv2d_prelu`]: depthwise convolution (candle's grouped
//!   convolution runs one tiny convolution per channel: 100x slower on SFace's layers).
//! - [`pointwise_conv2d`]: 1x1 convolution as one matrix product with the bias and PReLU applied
//!   in place; [`conv2d_bias_prelu`] for dense convolutions; [`bias_prelu`] on its own.
//! - [`FusedBottleneck`] / [`FusedHead`]: MiniFASNet's inverted bottlenecks and head, one op each.
//! - [`depthwise_pointwise_unit`]: YuNet's 1x1 + 3x3 depthwise unit fused over row bands.

mod block;
mod depthwise;
mod gemm;
mod pointwise;
mod unit;

pub use block::{
    BottleneckWeights, FusedBottleneck, FusedHead, HeadWeights, SqueezeExcitationWeights,
};
pub use depthwise::{depthwise_conv2d, depthwise_conv2d_prelu};
pub use pointwise::{bias_prelu, conv2d_bias_prelu, pointwise_conv2d};
pub use unit::{
    StemWeights, UnitInput, UnitWeights, depthwise_pointwise_unit, stem_depthwise_pointwise_unit,
    upsample_add_depthwise_pointwise_unit,
};

/// Whether the kernels should take their AVX2+FMA copies: the CPU has them (and, in tests, the
/// portable copies are not being forced).
#[cfg(target_arch = "x86_64")]
fn avx2_fma_available() -> bool {
    #[cfg(test)]
    if tests::portable_kernels_forced() {
        return false;
    }
    cpu_has_avx2_fma()
}

/// Whether the running CPU has AVX2 and FMA, the features every vectorised kernel here is
/// compiled for (detection is cached by std: an atomic load per call). The safe entries into the
/// `#[target_feature]` copies check it again, so that no call path can reach them without it.
#[cfg(target_arch = "x86_64")]
fn cpu_has_avx2_fma() -> bool {
    std::is_x86_feature_detected!("avx2") && std::is_x86_feature_detected!("fma")
}

#[cfg(test)]
mod tests;
