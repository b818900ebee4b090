//! Kernels that candle lacks or runs too slowly for these networks.
//!
//! - [`depthwise_conv2d`] / [`depthwise_conv2d_prelu`]: depthwise convolution (candle's grouped
//!   convolution runs one tiny convolution per channel: 100x slower on SFace's layers).
//! - [`pointwise_conv2d`]: 1x1 convolution as one matrix product with the bias and PReLU applied
//!   in place; [`conv2d_bias_prelu`] for dense convolutions; [`bias_prelu`] on its own.
//! - [`FusedBottleneck`] / [`FusedHead`]: MiniFASNet's inverted bottlenecks and head, one op each.
//! - [`depthwise_pointwise_unit`]: YuNet's 1x1 + 3x3 depthwise unit fused over row bands.

/// Defines `$select() -> $kernel`, which picks `$entry` when the running CPU has AVX2 and FMA
/// (decided at run time: the build targets baseline x86-64), else `$generic::<false>`, the
/// portable copy. `$entry` is a safe function that runs `$generic::<true>` compiled with AVX2 and
/// FMA enabled (through `$compiled`, its `#[target_feature]` copy, where `mul_add` lowers to
/// `vfmadd` and the loops vectorise to 256 bits); its own check keeps every other call path from
/// reaching the compiled copy on a CPU without them.
macro_rules! avx2_fma_copy {
    (
        $select:ident -> $kernel:ty,
        $entry:ident,
        $compiled:ident,
        $generic:ident,
        ($($arg:ident: $ty:ty),* $(,)?)
    ) => {
        fn $select() -> $kernel {
            #[cfg(target_arch = "x86_64")]
            {
                if super::avx2_fma_available() {
                    return $entry;
                }
            }
            $generic::<false>
        }

        #[cfg(target_arch = "x86_64")]
        fn $entry($($arg: $ty),*) {
            assert!(
                super::cpu_has_avx2_fma(),
                "AVX2+FMA kernel on a CPU without them"
            );
            // SAFETY: the assert above confirmed AVX2 and FMA on the running CPU, the only
            // requirement of the `#[target_feature]` copy (itself safe, bounds-checked code).
            #[allow(unsafe_code)]
            unsafe {
                $compiled($($arg),*)
            }
        }

        #[cfg(target_arch = "x86_64")]
        #[target_feature(enable = "avx2,fma")]
        fn $compiled($($arg: $ty),*) {
            $generic::<true>($($arg),*);
        }
    };
}

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

/// The values of a custom op's f32 argument `what` (contiguous, as the kernels read it).
fn input_slice<'a>(
    storage: &'a candle_core::CpuStorage,
    layout: &candle_core::Layout,
    op: &str,
    what: &str,
) -> candle_core::Result<&'a [f32]> {
    let candle_core::CpuStorage::F32(x) = storage else {
        candle_core::bail!("{op}: {what} must be f32")
    };
    let Some((start, end)) = layout.contiguous_offsets() else {
        candle_core::bail!("{op}: {what} must be contiguous")
    };
    Ok(&x[start..end])
}

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
