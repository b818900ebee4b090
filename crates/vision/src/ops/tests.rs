//! Checks of the kernels against naive reference implementations.

#![allow(clippy::unwrap_used)]

use std::cell::Cell;
#[cfg(target_arch = "x86_64")]
use std::sync::RwLockWriteGuard;
#[cfg(target_arch = "x86_64")]
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{PoisonError, RwLock, RwLockReadGuard};

use candle_core::{Device, Tensor};

use super::*;

/// Whether the portable kernels are being forced (see [`PortableKernels`]).
#[cfg(target_arch = "x86_64")]
static PORTABLE_KERNELS_FORCED: AtomicBool = AtomicBool::new(false);

/// Held for reading by every kernel test, for writing by the one that forces the portable
/// kernels: the flag is process-wide, so no other kernel test runs while it is set (each would
/// otherwise silently test the portable copies instead of the AVX2 ones).
static KERNEL_MODE: RwLock<()> = RwLock::new(());

/// True while a test forces the portable kernels.
#[cfg(target_arch = "x86_64")]
pub(super) fn portable_kernels_forced() -> bool {
    PORTABLE_KERNELS_FORCED.load(Ordering::Relaxed)
}

thread_local! {
    /// Set on the thread of the test that holds [`KERNEL_MODE`] for writing: the tests it calls
    /// in turn must not wait for a read lock it is itself holding.
    static HOLDS_KERNEL_MODE: Cell<bool> = const { Cell::new(false) };
}

/// Taken first by every kernel test: the kernels the CPU selects (`None` inside the test that
/// forces the portable ones, which calls the others).
fn native_kernels() -> Option<RwLockReadGuard<'static, ()>> {
    (!HOLDS_KERNEL_MODE.get()).then(|| KERNEL_MODE.read().unwrap_or_else(PoisonError::into_inner))
}

/// While alive, the kernel dispatch picks the portable copies, the ones a CPU without AVX2+FMA
/// runs (this machine's CI has both, so nothing else would run them).
#[cfg(target_arch = "x86_64")]
struct PortableKernels(#[allow(dead_code)] RwLockWriteGuard<'static, ()>);

#[cfg(target_arch = "x86_64")]
impl PortableKernels {
    fn force() -> Self {
        let exclusive = KERNEL_MODE.write().unwrap_or_else(PoisonError::into_inner);
        HOLDS_KERNEL_MODE.set(true);
        PORTABLE_KERNELS_FORCED.store(true, Ordering::Relaxed);
        Self(exclusive)
    }
}

#[cfg(target_arch = "x86_64")]
impl Drop for PortableKernels {
    fn drop(&mut self) {
        PORTABLE_KERNELS_FORCED.store(false, Ordering::Relaxed);
        HOLDS_KERNEL_MODE.set(false);
    }
}

/// Every vectorised kernel's portable copy against the same references as its AVX2+FMA copy.
#[cfg(target_arch = "x86_64")]
#[test]
fn portable_kernels_match_the_references() {
    let _portable = PortableKernels::force();
    assert!(!avx2_fma_available());
    depthwise_matches_reference_over_many_shapes();
    depthwise_prelu_matches_reference();
    yunet_kernels::unit_matches_candle_on_many_shapes_and_thread_counts();
    yunet_kernels::pooled_unit_matches_candle_max_pool_then_unit();
    yunet_kernels::merged_unit_matches_candle_upsample_add_then_unit();
    yunet_kernels::stem_unit_matches_candle_conv2d_then_unit();
    minifasnet_kernels::matmul_matches_reference_on_odd_sizes_and_split_tiles();
    minifasnet_kernels::fused_bottleneck_matches_candle_ops();
    minifasnet_kernels::fused_head_matches_candle_ops();
}

/// Small deterministic generator (xorshift) so failures reproduce without a rand dependency.
struct Xorshift(u64);

impl Xorshift {
    fn values(&mut self, n: usize) -> Vec<f32> {
        (0..n)
            .map(|_| {
                self.0 ^= self.0 << 13;
                self.0 ^= self.0 >> 7;
                self.0 ^= self.0 << 17;
                // Uniform in [-1, 1).
                (self.0 >> 40) as f32 / (1u64 << 23) as f32 - 1.0
            })
            .collect()
    }

    fn tensor(&mut self, dims: &[usize]) -> Tensor {
        let n = dims.iter().product();
        Tensor::from_vec(self.values(n), dims, &Device::Cpu).unwrap()
    }
}

/// Direct definition of the depthwise convolution, one output at a time.
fn reference_depthwise(
    x: &Tensor,
    w: &Tensor,
    bias: Option<&Tensor>,
    alpha: Option<&Tensor>,
    stride: usize,
    pad: usize,
) -> Tensor {
    let (n, c, h, wd) = x.dims4().unwrap();
    let (_, _, kh, kw) = w.dims4().unwrap();
    let xv = x.flatten_all().unwrap().to_vec1::<f32>().unwrap();
    let wv = w.flatten_all().unwrap().to_vec1::<f32>().unwrap();
    let bv = bias.map(|b| b.flatten_all().unwrap().to_vec1::<f32>().unwrap());
    let av = alpha.map(|a| a.flatten_all().unwrap().to_vec1::<f32>().unwrap());
    let oh = (h + 2 * pad - kh) / stride + 1;
    let ow = (wd + 2 * pad - kw) / stride + 1;
    let mut out = vec![0f32; n * c * oh * ow];
    for b in 0..n {
        for ch in 0..c {
            for oy in 0..oh {
                for ox in 0..ow {
                    let mut s = 0f64;
                    for ky in 0..kh {
                        for kx in 0..kw {
                            let iy = (oy * stride + ky) as isize - pad as isize;
                            let ix = (ox * stride + kx) as isize - pad as isize;
                            if iy < 0 || ix < 0 || iy >= h as isize || ix >= wd as isize {
                                continue;
                            }
                            let xi = ((b * c + ch) * h + iy as usize) * wd + ix as usize;
                            s += f64::from(xv[xi]) * f64::from(wv[(ch * kh + ky) * kw + kx]);
                        }
                    }
                    let mut v = s as f32 + bv.as_ref().map_or(0.0, |b| b[ch]);
                    if let Some(a) = av.as_ref().filter(|_| v < 0.0) {
                        v *= a[ch];
                    }
                    out[((b * c + ch) * oh + oy) * ow + ox] = v;
                }
            }
        }
    }
    Tensor::from_vec(out, (n, c, oh, ow), &Device::Cpu).unwrap()
}

/// Largest magnitude of any element.
fn max_abs(t: &Tensor) -> f32 {
    t.abs()
        .unwrap()
        .flatten_all()
        .unwrap()
        .max(0)
        .unwrap()
        .to_scalar::<f32>()
        .unwrap()
}

fn max_abs_diff(a: &Tensor, b: &Tensor) -> f32 {
    assert_eq!(a.dims(), b.dims());
    max_abs(&(a - b).unwrap())
}

#[test]
fn depthwise_matches_reference_over_many_shapes() {
    let _kernels = native_kernels();
    let mut rng = Xorshift(0x9e37_79b9_7f4a_7c15);
    let mut cases = 0;
    for &(kh, kw) in &[
        (3, 3),
        (5, 5),
        (1, 1),
        (2, 2),
        (7, 7),
        (3, 5),
        (5, 3),
        (4, 1),
    ] {
        for stride in 1..=3 {
            for pad in 0..=2 {
                for &(n, c, h, w) in &[(1, 3, 7, 9), (2, 5, 12, 11), (1, 2, 16, 16), (1, 1, 5, 5)] {
                    if h + 2 * pad < kh || w + 2 * pad < kw {
                        continue;
                    }
                    let x = rng.tensor(&[n, c, h, w]);
                    let weight = rng.tensor(&[c, 1, kh, kw]);
                    let bias = rng.tensor(&[c]);
                    let expected = reference_depthwise(&x, &weight, Some(&bias), None, stride, pad);
                    let got = depthwise_conv2d(&x, &weight, Some(&bias), stride, pad).unwrap();
                    let diff = max_abs_diff(&got, &expected);
                    assert!(
                        diff < 1e-5,
                        "k={kh}x{kw} s={stride} p={pad} x={:?}: diff {diff}",
                        x.dims()
                    );
                    cases += 1;
                }
            }
        }
    }
    assert!(cases > 200, "only {cases} cases ran");
}

#[test]
fn depthwise_matches_reference_on_random_geometry() {
    let _kernels = native_kernels();
    // Odd corners: large padding, stride above the kernel size, single rows and columns.
    let mut rng = Xorshift(0x5eed);
    let mut pick = |n: usize| (rng.values(1)[0].abs() * n as f32) as usize % n;
    let mut cases = 0;
    while cases < 300 {
        let (h, w) = (1 + pick(12), 1 + pick(12));
        let (kh, kw) = (1 + pick(6), 1 + pick(6));
        let (stride, pad) = (1 + pick(4), pick(4));
        if h + 2 * pad < kh || w + 2 * pad < kw {
            continue;
        }
        let c = 1 + pick(3);
        let mut data = Xorshift(cases as u64 + 1);
        let x = data.tensor(&[1, c, h, w]);
        let weight = data.tensor(&[c, 1, kh, kw]);
        let expected = reference_depthwise(&x, &weight, None, None, stride, pad);
        let got = depthwise_conv2d(&x, &weight, None, stride, pad).unwrap();
        let diff = max_abs_diff(&got, &expected);
        assert!(
            diff < 1e-5,
            "{h}x{w} k={kh}x{kw} s={stride} p={pad}: diff {diff}"
        );
        cases += 1;
    }
}

#[test]
fn depthwise_matches_reference_on_network_shapes_in_parallel() {
    let _kernels = native_kernels();
    // Large enough to take the multi-threaded path and several accumulator blocks per plane.
    let mut rng = Xorshift(42);
    for &(c, h, w, k, stride, pad) in &[
        (64, 56, 56, 3, 1, 1),
        (64, 56, 56, 3, 2, 1),
        (16, 160, 120, 3, 1, 1),
        (32, 20, 20, 5, 1, 0),
        (128, 5, 5, 5, 1, 0),
    ] {
        let x = rng.tensor(&[1, c, h, w]);
        let weight = rng.tensor(&[c, 1, k, k]);
        let expected = reference_depthwise(&x, &weight, None, None, stride, pad);
        let got = depthwise_conv2d(&x, &weight, None, stride, pad).unwrap();
        let diff = max_abs_diff(&got, &expected);
        assert!(diff < 1e-5, "c={c} {h}x{w} k={k} s={stride}: diff {diff}");
    }
}

#[test]
fn depthwise_agrees_with_candle_grouped_conv() {
    let _kernels = native_kernels();
    let mut rng = Xorshift(7);
    let x = rng.tensor(&[2, 8, 14, 14]);
    let weight = rng.tensor(&[8, 1, 3, 3]);
    for stride in 1..=2 {
        let expected = x.conv2d(&weight, 1, stride, 1, 8).unwrap();
        let got = depthwise_conv2d(&x, &weight, None, stride, 1).unwrap();
        assert!(max_abs_diff(&got, &expected) < 1e-5);
    }
}

#[test]
fn depthwise_accepts_non_contiguous_input() {
    let _kernels = native_kernels();
    let mut rng = Xorshift(3);
    // NHWC storage viewed as NCHW: strided, not contiguous.
    let nhwc = rng.tensor(&[2, 9, 10, 6]);
    let x = nhwc.permute((0, 3, 1, 2)).unwrap();
    assert!(!x.is_contiguous());
    let weight = rng.tensor(&[6, 1, 3, 3]);
    let bias = rng.tensor(&[6]);
    let expected = reference_depthwise(&x.contiguous().unwrap(), &weight, Some(&bias), None, 2, 1);
    let got = depthwise_conv2d(&x, &weight, Some(&bias), 2, 1).unwrap();
    assert!(max_abs_diff(&got, &expected) < 1e-5);
    // A narrowed (offset) view too.
    let narrowed = rng.tensor(&[1, 10, 8, 8]).narrow(1, 3, 4).unwrap();
    let weight = rng.tensor(&[4, 1, 3, 3]);
    let expected = reference_depthwise(&narrowed.contiguous().unwrap(), &weight, None, None, 1, 1);
    let got = depthwise_conv2d(&narrowed, &weight, None, 1, 1).unwrap();
    assert!(max_abs_diff(&got, &expected) < 1e-5);
}

#[test]
fn depthwise_prelu_matches_reference() {
    let _kernels = native_kernels();
    let mut rng = Xorshift(11);
    for &(stride, pad, k) in &[(1, 1, 3), (2, 1, 3), (1, 0, 5), (1, 2, 5)] {
        let x = rng.tensor(&[1, 12, 15, 13]);
        let weight = rng.tensor(&[12, 1, k, k]);
        let bias = rng.tensor(&[12]);
        let alpha = rng.tensor(&[12]);
        let expected = reference_depthwise(&x, &weight, Some(&bias), Some(&alpha), stride, pad);
        let got = depthwise_conv2d_prelu(&x, &weight, Some(&bias), &alpha, stride, pad).unwrap();
        assert!(max_abs_diff(&got, &expected) < 1e-5);
    }
}

#[test]
fn depthwise_accepts_broadcastable_per_channel_shapes() {
    let _kernels = native_kernels();
    let mut rng = Xorshift(5);
    let x = rng.tensor(&[1, 4, 6, 6]);
    let weight = rng.tensor(&[4, 1, 3, 3]);
    let bias = rng.tensor(&[1, 4, 1, 1]);
    let expected = reference_depthwise(&x, &weight, Some(&bias), None, 1, 1);
    let got = depthwise_conv2d(&x, &weight, Some(&bias), 1, 1).unwrap();
    assert!(max_abs_diff(&got, &expected) < 1e-5);
}

#[test]
fn depthwise_rejects_bad_shapes_with_errors() {
    let _kernels = native_kernels();
    let mut rng = Xorshift(9);
    let x = rng.tensor(&[1, 4, 6, 6]);
    let w = rng.tensor(&[4, 1, 3, 3]);
    let bad: Vec<(&str, candle_core::Result<Tensor>)> = vec![
        (
            "rank 3 input",
            depthwise_conv2d(&rng.tensor(&[4, 6, 6]), &w, None, 1, 1),
        ),
        (
            "channel mismatch",
            depthwise_conv2d(&x, &rng.tensor(&[3, 1, 3, 3]), None, 1, 1),
        ),
        (
            "grouped weight",
            depthwise_conv2d(&x, &rng.tensor(&[4, 2, 3, 3]), None, 1, 1),
        ),
        (
            "rank 2 weight",
            depthwise_conv2d(&x, &rng.tensor(&[4, 9]), None, 1, 1),
        ),
        ("stride 0", depthwise_conv2d(&x, &w, None, 0, 1)),
        (
            "kernel too big",
            depthwise_conv2d(&x, &rng.tensor(&[4, 1, 9, 9]), None, 1, 1),
        ),
        (
            "empty kernel",
            depthwise_conv2d(&x, &rng.tensor(&[4, 1, 0, 3]), None, 1, 1),
        ),
        (
            "bias length",
            depthwise_conv2d(&x, &w, Some(&rng.tensor(&[5])), 1, 1),
        ),
        (
            "bias 2-D",
            depthwise_conv2d(&x, &w, Some(&rng.tensor(&[2, 2])), 1, 1),
        ),
        (
            "f64 input",
            depthwise_conv2d(
                &x.to_dtype(candle_core::DType::F64).unwrap(),
                &w,
                None,
                1,
                1,
            ),
        ),
        (
            "f64 weight",
            depthwise_conv2d(
                &x,
                &w.to_dtype(candle_core::DType::F64).unwrap(),
                None,
                1,
                1,
            ),
        ),
        (
            "alpha length",
            depthwise_conv2d_prelu(&x, &w, None, &rng.tensor(&[3]), 1, 1),
        ),
    ];
    for (what, result) in bad {
        assert!(result.is_err(), "{what} was accepted");
    }
}

#[test]
fn depthwise_handles_empty_batch_and_single_pixel() {
    let _kernels = native_kernels();
    let mut rng = Xorshift(1);
    let w = rng.tensor(&[3, 1, 3, 3]);
    let empty = Tensor::zeros((0, 3, 5, 5), candle_core::DType::F32, &Device::Cpu).unwrap();
    let got = depthwise_conv2d(&empty, &w, None, 1, 1).unwrap();
    assert_eq!(got.dims(), &[0, 3, 5, 5]);
    let pixel = rng.tensor(&[1, 3, 1, 1]);
    let expected = reference_depthwise(&pixel, &w, None, None, 1, 1);
    let got = depthwise_conv2d(&pixel, &w, None, 1, 1).unwrap();
    assert!(max_abs_diff(&got, &expected) < 1e-6);
}

/// Per-channel bias and PReLU the slow, obvious way with candle's broadcasting ops.
fn reference_bias_prelu(y: &Tensor, bias: Option<&Tensor>, alpha: Option<&Tensor>) -> Tensor {
    let c = y.dim(1).unwrap();
    let mut shape = vec![1; y.rank()];
    shape[1] = c;
    let y = match bias {
        Some(b) => y
            .broadcast_add(&b.reshape(shape.as_slice()).unwrap())
            .unwrap(),
        None => y.clone(),
    };
    match alpha {
        Some(a) => {
            let a = a.reshape(shape.as_slice()).unwrap();
            (y.relu().unwrap() + y.minimum(0f32).unwrap().broadcast_mul(&a).unwrap()).unwrap()
        }
        None => y,
    }
}

#[test]
fn pointwise_matches_candle_conv2d_with_bias_and_prelu() {
    let _kernels = native_kernels();
    let mut rng = Xorshift(21);
    // Includes a product large enough for the parallel epilogue.
    for &(n, ci, co, h, w) in &[(1, 16, 32, 9, 7), (2, 8, 4, 5, 5), (1, 64, 128, 28, 28)] {
        let x = rng.tensor(&[n, ci, h, w]);
        let weight = rng.tensor(&[co, ci, 1, 1]);
        let bias = rng.tensor(&[co]);
        let alpha = rng.tensor(&[co]);
        let conv = x.conv2d(&weight, 0, 1, 1, 1).unwrap();
        for (b, a) in [
            (None, None),
            (Some(&bias), None),
            (Some(&bias), Some(&alpha)),
            (None, Some(&alpha)),
        ] {
            let expected = reference_bias_prelu(&conv, b, a);
            let got = pointwise_conv2d(&x, &weight, b, a).unwrap();
            assert!(
                max_abs_diff(&got, &expected) < 1e-4,
                "n={n} ci={ci} co={co}"
            );
        }
        // A 2-D weight and a non-contiguous input give the same result.
        let x_strided = x
            .permute((0, 1, 3, 2))
            .unwrap()
            .contiguous()
            .unwrap()
            .permute((0, 1, 3, 2))
            .unwrap();
        assert!(!x_strided.is_contiguous());
        let got = pointwise_conv2d(
            &x_strided,
            &weight.reshape((co, ci)).unwrap(),
            Some(&bias),
            Some(&alpha),
        )
        .unwrap();
        let expected = reference_bias_prelu(&conv, Some(&bias), Some(&alpha));
        assert!(max_abs_diff(&got, &expected) < 1e-4);
    }
}

#[test]
fn bias_prelu_leaves_its_input_untouched() {
    let _kernels = native_kernels();
    let mut rng = Xorshift(8);
    let x = rng.tensor(&[2, 6, 4, 3]);
    let before = x.flatten_all().unwrap().to_vec1::<f32>().unwrap();
    let bias = rng.tensor(&[6]);
    let alpha = rng.tensor(&[6]);
    let got = bias_prelu(&x, Some(&bias), Some(&alpha)).unwrap();
    let expected = reference_bias_prelu(&x, Some(&bias), Some(&alpha));
    assert!(max_abs_diff(&got, &expected) < 1e-6);
    assert_eq!(x.flatten_all().unwrap().to_vec1::<f32>().unwrap(), before);
    // Rank 2 ([N, C]) works too, e.g. after a linear layer.
    let v = rng.tensor(&[3, 6]);
    let got = bias_prelu(&v, Some(&bias), Some(&alpha)).unwrap();
    assert!(max_abs_diff(&got, &reference_bias_prelu(&v, Some(&bias), Some(&alpha))) < 1e-6);
}

#[test]
fn conv2d_bias_prelu_matches_reference() {
    let _kernels = native_kernels();
    let mut rng = Xorshift(13);
    let x = rng.tensor(&[1, 3, 17, 15]);
    let weight = rng.tensor(&[8, 3, 3, 3]);
    let bias = rng.tensor(&[8]);
    let alpha = rng.tensor(&[8]);
    for stride in 1..=2 {
        let conv = x.conv2d(&weight, 1, stride, 1, 1).unwrap();
        let expected = reference_bias_prelu(&conv, Some(&bias), Some(&alpha));
        let got = conv2d_bias_prelu(&x, &weight, Some(&bias), Some(&alpha), stride, 1).unwrap();
        assert!(max_abs_diff(&got, &expected) < 1e-4);
    }
}

#[test]
fn pointwise_and_epilogue_reject_bad_shapes() {
    let _kernels = native_kernels();
    let mut rng = Xorshift(17);
    let x = rng.tensor(&[1, 4, 3, 3]);
    let w = rng.tensor(&[6, 4, 1, 1]);
    assert!(pointwise_conv2d(&x, &rng.tensor(&[6, 5, 1, 1]), None, None).is_err());
    assert!(pointwise_conv2d(&x, &rng.tensor(&[6, 4, 3, 3]), None, None).is_err());
    assert!(pointwise_conv2d(&rng.tensor(&[4, 3, 3]), &w, None, None).is_err());
    assert!(pointwise_conv2d(&x, &w, Some(&rng.tensor(&[4])), None).is_err());
    assert!(pointwise_conv2d(&x, &w, None, Some(&rng.tensor(&[2, 3]))).is_err());
    assert!(bias_prelu(&rng.tensor(&[4]), None, None).is_err());
    assert!(bias_prelu(&x, Some(&rng.tensor(&[5])), None).is_err());
    let x64 = x.to_dtype(candle_core::DType::F64).unwrap();
    assert!(bias_prelu(&x64, None, None).is_err());
    assert!(pointwise_conv2d(&x64, &w, None, None).is_err());
}

/// The fused YuNet unit ([`depthwise_pointwise_unit`]) against candle's own operations.
mod yunet_kernels {
    use super::*;

    /// Random weights of a unit, as tensors and as the fused op's [`UnitWeights`].
    struct RandomUnit {
        pointwise: Tensor,
        pointwise_bias: Tensor,
        depthwise: Tensor,
        depthwise_bias: Tensor,
        relu: bool,
        weights: UnitWeights,
    }

    impl RandomUnit {
        fn new(rng: &mut Xorshift, inputs: usize, outputs: usize, relu: bool) -> Self {
            let pointwise = rng.tensor(&[outputs, inputs, 1, 1]);
            let pointwise_bias = rng.tensor(&[outputs]);
            let depthwise = rng.tensor(&[outputs, 1, 3, 3]);
            let depthwise_bias = rng.tensor(&[outputs]);
            let weights = UnitWeights::new(
                &pointwise,
                &pointwise_bias,
                &depthwise,
                &depthwise_bias,
                relu,
            )
            .unwrap();
            Self {
                pointwise,
                pointwise_bias,
                depthwise,
                depthwise_bias,
                relu,
                weights,
            }
        }

        /// candle's 1x1 `conv2d` + bias, then the direct depthwise definition (+ ReLU).
        fn reference(&self, x: &Tensor) -> Tensor {
            let outputs = self.pointwise.dim(0).unwrap();
            let y = x
                .conv2d(&self.pointwise, 0, 1, 1, 1)
                .unwrap()
                .broadcast_add(&self.pointwise_bias.reshape((1, outputs, 1, 1)).unwrap())
                .unwrap();
            let z =
                reference_depthwise(&y, &self.depthwise, Some(&self.depthwise_bias), None, 1, 1);
            if self.relu { z.relu().unwrap() } else { z }
        }
    }

    /// Largest difference relative to the reference's largest magnitude (at least 1).
    fn relative_diff(got: &Tensor, expected: &Tensor) -> f32 {
        max_abs_diff(got, expected) / max_abs(expected).max(1.0)
    }

    /// (batch, inputs, outputs, height, width): odd sizes, single rows and columns, channel
    /// counts that are not multiples of the kernel's blocks, maps wide enough to give one-row
    /// blocks, and tall enough for several blocks and bands.
    const SHAPES: [(usize, usize, usize, usize, usize); 10] = [
        (1, 3, 5, 7, 9),
        (2, 16, 16, 13, 17),
        (1, 64, 64, 20, 20),
        (1, 16, 32, 1, 1),
        (1, 8, 4, 1, 21),
        (1, 4, 8, 19, 1),
        (1, 16, 64, 45, 37),
        (1, 8, 64, 7, 400),
        (1, 64, 16, 40, 40),
        (2, 1, 1, 2, 2),
    ];

    fn on_threads(threads: usize, f: impl FnOnce() + Send) {
        rayon::ThreadPoolBuilder::new()
            .num_threads(threads)
            .build()
            .unwrap()
            .install(f);
    }

    #[test]
    pub(super) fn unit_matches_candle_on_many_shapes_and_thread_counts() {
        let _kernels = native_kernels();
        let mut rng = Xorshift(0x5eed_0001);
        for threads in [1, 2, 3] {
            on_threads(threads, || {
                for (i, &(n, c_in, c_out, h, w)) in SHAPES.iter().enumerate() {
                    let unit = RandomUnit::new(&mut rng, c_in, c_out, i % 2 == 0);
                    let x = rng.tensor(&[n, c_in, h, w]);
                    let got =
                        depthwise_pointwise_unit(&x, &unit.weights, UnitInput::Plain).unwrap();
                    let diff = relative_diff(&got, &unit.reference(&x));
                    assert!(diff < 1e-5, "{threads} threads, {:?}: {diff}", SHAPES[i]);
                }
            });
        }
    }

    #[test]
    pub(super) fn pooled_unit_matches_candle_max_pool_then_unit() {
        let _kernels = native_kernels();
        let mut rng = Xorshift(0x5eed_0002);
        for threads in [1, 2] {
            on_threads(threads, || {
                for &(n, c_in, c_out, h, w) in &SHAPES {
                    let unit = RandomUnit::new(&mut rng, c_in, c_out, true);
                    // Odd source sizes: the trailing row and column are dropped.
                    for (src_h, src_w) in [(2 * h, 2 * w), (2 * h + 1, 2 * w + 1)] {
                        let x = rng.tensor(&[n, c_in, src_h, src_w]);
                        let got = depthwise_pointwise_unit(&x, &unit.weights, UnitInput::MaxPool2)
                            .unwrap();
                        let expected = unit.reference(&x.max_pool2d(2).unwrap());
                        let diff = relative_diff(&got, &expected);
                        assert!(
                            diff < 1e-5,
                            "{:?} from {src_h}x{src_w}: {diff}",
                            (n, c_in, h, w)
                        );
                    }
                }
            });
        }
    }

    #[test]
    pub(super) fn merged_unit_matches_candle_upsample_add_then_unit() {
        let _kernels = native_kernels();
        let mut rng = Xorshift(0x5eed_0003);
        for threads in [1, 2] {
            on_threads(threads, || {
                for &(n, c_in, c_out, h, w) in &SHAPES {
                    let unit = RandomUnit::new(&mut rng, c_in, c_out, false);
                    let coarse = rng.tensor(&[n, c_in, h, w]);
                    let fine = rng.tensor(&[n, c_in, 2 * h, 2 * w]);
                    let got = upsample_add_depthwise_pointwise_unit(&coarse, &fine, &unit.weights)
                        .unwrap();
                    let merged =
                        (coarse.upsample_nearest2d(2 * h, 2 * w).unwrap() + &fine).unwrap();
                    let diff = relative_diff(&got, &unit.reference(&merged));
                    assert!(diff < 1e-5, "{:?}: {diff}", (n, c_in, h, w));
                }
            });
        }
    }

    #[test]
    pub(super) fn stem_unit_matches_candle_conv2d_then_unit() {
        let _kernels = native_kernels();
        let mut rng = Xorshift(0x5eed_0007);
        for threads in [1, 2] {
            on_threads(threads, || {
                // Even and odd input sizes (stride 2, padding 1: the output is the half rounded
                // up); YuNet's 3 -> 16 channels, and 1 -> 5 for a partial last output block.
                for (n, src_h, src_w, inputs, outputs) in [
                    (1, 64, 64, 3, 16),
                    (2, 9, 13, 3, 16),
                    (1, 1, 1, 3, 16),
                    (1, 2, 31, 3, 16),
                    (1, 33, 2, 3, 16),
                    (1, 17, 23, 1, 5),
                    (2, 6, 40, 1, 5),
                ] {
                    let weight = rng.tensor(&[outputs, inputs, 3, 3]);
                    let bias = rng.tensor(&[outputs]);
                    let stem = StemWeights::new(&weight, &bias).unwrap();
                    let unit = RandomUnit::new(&mut rng, outputs, 8, true);
                    let x = rng.tensor(&[n, inputs, src_h, src_w]);
                    let got = stem_depthwise_pointwise_unit(&x, &stem, &unit.weights).unwrap();
                    let stemmed = x
                        .conv2d(&weight, 1, 2, 1, 1)
                        .unwrap()
                        .broadcast_add(&bias.reshape((1, outputs, 1, 1)).unwrap())
                        .unwrap()
                        .relu()
                        .unwrap();
                    let diff = relative_diff(&got, &unit.reference(&stemmed));
                    assert!(
                        diff < 1e-5,
                        "{:?}: {diff}",
                        (n, src_h, src_w, inputs, outputs)
                    );
                }
            });
        }
        let stem = StemWeights::new(&rng.tensor(&[16, 3, 3, 3]), &rng.tensor(&[16])).unwrap();
        let unit = RandomUnit::new(&mut rng, 8, 8, true);
        // The stem's outputs must be the unit's inputs, and the input must have the stem's channels.
        assert!(
            stem_depthwise_pointwise_unit(&rng.tensor(&[1, 3, 8, 8]), &stem, &unit.weights)
                .is_err()
        );
        let unit = RandomUnit::new(&mut rng, 16, 8, true);
        assert!(
            stem_depthwise_pointwise_unit(&rng.tensor(&[1, 4, 8, 8]), &stem, &unit.weights)
                .is_err()
        );
        assert!(StemWeights::new(&rng.tensor(&[16, 3, 5, 5]), &rng.tensor(&[16])).is_err());
    }

    #[test]
    fn stacked_units_equal_the_concatenation_of_their_outputs() {
        let _kernels = native_kernels();
        let mut rng = Xorshift(0x5eed_0004);
        let units: Vec<RandomUnit> = [1, 4, 1, 10]
            .iter()
            .map(|&outputs| RandomUnit::new(&mut rng, 8, outputs, false))
            .collect();
        let parts: Vec<UnitWeights> = units.iter().map(|u| u.weights.clone()).collect();
        let stacked = UnitWeights::stack(&parts).unwrap();
        assert_eq!((stacked.inputs(), stacked.outputs()), (8, 16));
        let x = rng.tensor(&[1, 8, 11, 12]);
        let got = depthwise_pointwise_unit(&x, &stacked, UnitInput::Plain).unwrap();
        let separate: Vec<Tensor> = units.iter().map(|u| u.reference(&x)).collect();
        let expected = Tensor::cat(&separate, 1).unwrap();
        assert!(relative_diff(&got, &expected) < 1e-5);
    }

    #[test]
    fn unit_accepts_non_contiguous_input() {
        let _kernels = native_kernels();
        let mut rng = Xorshift(0x5eed_0005);
        let unit = RandomUnit::new(&mut rng, 6, 8, true);
        let x = rng.tensor(&[1, 6, 9, 10]).transpose(2, 3).unwrap();
        let got = depthwise_pointwise_unit(&x, &unit.weights, UnitInput::Plain).unwrap();
        assert!(relative_diff(&got, &unit.reference(&x.contiguous().unwrap())) < 1e-5);
    }

    #[test]
    fn unit_rejects_bad_shapes_with_errors() {
        let _kernels = native_kernels();
        let mut rng = Xorshift(0x5eed_0006);
        let unit = RandomUnit::new(&mut rng, 4, 8, true);
        let w = &unit.weights;
        // Wrong channel count, wrong rank, wrong dtype.
        assert!(depthwise_pointwise_unit(&rng.tensor(&[1, 5, 4, 4]), w, UnitInput::Plain).is_err());
        assert!(depthwise_pointwise_unit(&rng.tensor(&[4, 4, 4]), w, UnitInput::Plain).is_err());
        let x64 = rng
            .tensor(&[1, 4, 4, 4])
            .to_dtype(candle_core::DType::F64)
            .unwrap();
        assert!(depthwise_pointwise_unit(&x64, w, UnitInput::Plain).is_err());
        // A coarse map that does not upsample to the fine one.
        let fine = rng.tensor(&[1, 4, 8, 8]);
        assert!(
            upsample_add_depthwise_pointwise_unit(&rng.tensor(&[1, 4, 3, 4]), &fine, w).is_err()
        );
        assert!(
            upsample_add_depthwise_pointwise_unit(
                &rng.tensor(&[1, 4, 4, 4]),
                &rng.tensor(&[1, 4, 9, 8]),
                w
            )
            .is_err()
        );
        // Empty maps give empty outputs, not panics.
        let empty =
            depthwise_pointwise_unit(&rng.tensor(&[1, 4, 0, 5]), w, UnitInput::Plain).unwrap();
        assert_eq!(empty.dims(), &[1, 8, 0, 5]);
        let pooled =
            depthwise_pointwise_unit(&rng.tensor(&[1, 4, 1, 1]), w, UnitInput::MaxPool2).unwrap();
        assert_eq!(pooled.dims(), &[1, 8, 0, 0]);
        // Weights of the wrong shapes.
        let bad_depthwise = rng.tensor(&[8, 1, 5, 5]);
        assert!(
            UnitWeights::new(
                &unit.pointwise,
                &unit.pointwise_bias,
                &bad_depthwise,
                &unit.depthwise_bias,
                true
            )
            .is_err()
        );
        let bad_bias = rng.tensor(&[7]);
        assert!(
            UnitWeights::new(
                &unit.pointwise,
                &bad_bias,
                &unit.depthwise,
                &unit.depthwise_bias,
                true
            )
            .is_err()
        );
        let other = RandomUnit::new(&mut rng, 5, 8, true);
        assert!(UnitWeights::stack(&[unit.weights.clone(), other.weights]).is_err());
        assert!(UnitWeights::stack(&[]).is_err());
    }
}

mod minifasnet_kernels {
    use super::super::gemm::{Epilogue, PackedMatrix, TILE_ROWS, matmul_into};
    use super::*;

    /// `prelu(a x b + bias) + residual` in f64, one output at a time.
    #[allow(clippy::too_many_arguments)]
    fn reference_matmul(
        a: &[f32],
        rows: usize,
        depth: usize,
        b: &[f32],
        b_stride: usize,
        cols: usize,
        bias: &[f32],
        alpha: Option<&[f32]>,
        residual: Option<&[f32]>,
    ) -> Vec<f32> {
        let mut out = vec![0.0; rows * cols];
        for r in 0..rows {
            for c in 0..cols {
                let s: f64 = (0..depth)
                    .map(|k| f64::from(a[r * depth + k]) * f64::from(b[k * b_stride + c]))
                    .sum();
                let mut v = s as f32 + bias[r];
                if let Some(alpha) = alpha.filter(|_| v < 0.0) {
                    v *= alpha[r];
                }
                out[r * cols + c] = v + residual.map_or(0.0, |res| res[r * cols + c]);
            }
        }
        out
    }

    #[test]
    pub(super) fn matmul_matches_reference_on_odd_sizes_and_split_tiles() {
        let _kernels = native_kernels();
        let mut rng = Xorshift(0xfa5);
        for &rows in &[1, 5, 6, 7, 13, 26, 103] {
            for &depth in &[1, 3, 13, 64] {
                for &cols in &[1, 15, 16, 17, 25, 100] {
                    for variant in 0..3 {
                        let a = rng.values(rows * depth);
                        let b_stride = cols + variant; // exercises a stride wider than the row
                        let b = rng.values(depth * b_stride);
                        let bias = rng.values(rows);
                        let alpha = rng.values(rows);
                        let residual = rng.values(rows * cols);
                        let alpha = (variant != 0).then_some(alpha.as_slice());
                        let residual = (variant == 2).then_some(residual.as_slice());
                        let expected = reference_matmul(
                            &a, rows, depth, &b, b_stride, cols, &bias, alpha, residual,
                        );
                        let packed = PackedMatrix::new(&a, rows, depth).unwrap();
                        let tiles = packed.tile_count();
                        assert_eq!(tiles, rows.div_ceil(TILE_ROWS));
                        // Two halves with their own output slices, as the fused ops split them.
                        let mid = tiles / 2;
                        let split_row = packed.tile_start_row(mid);
                        let mut out = vec![f32::NAN; rows * cols];
                        let (o0, o1) = out.split_at_mut(split_row * cols);
                        let residual_parts = residual.map(|r| r.split_at(split_row * cols));
                        for (range, o, res) in [
                            (0..mid, o0, residual_parts.map(|p| p.0)),
                            (mid..tiles, o1, residual_parts.map(|p| p.1)),
                        ] {
                            let epilogue = Epilogue {
                                bias: &bias,
                                alpha,
                                residual: res,
                            };
                            matmul_into(&packed, range, &b, b_stride, cols, o, cols, epilogue);
                        }
                        for (i, (g, e)) in out.iter().zip(&expected).enumerate() {
                            assert!(
                                (g - e).abs() < 1e-4 * (1.0 + e.abs()),
                                "{rows}x{depth}x{cols} variant {variant} at {i}: {g} vs {e}"
                            );
                        }
                    }
                }
            }
        }
        assert!(PackedMatrix::new(&[1.0; 5], 2, 3).is_none());
    }

    /// Random weights of one bottleneck as tensors.
    struct RandomBottleneck {
        expand: Tensor,
        expand_bias: Tensor,
        expand_alpha: Tensor,
        depthwise: Tensor,
        depthwise_bias: Tensor,
        depthwise_alpha: Tensor,
        project: Tensor,
        project_bias: Tensor,
        se: Option<[Tensor; 4]>,
        stride: usize,
        residual: bool,
    }

    impl RandomBottleneck {
        #[allow(clippy::too_many_arguments)]
        fn new(
            rng: &mut Xorshift,
            channels: usize,
            expanded: usize,
            out: usize,
            kernel: usize,
            stride: usize,
            se: bool,
            residual: bool,
        ) -> Self {
            let hidden = (out / 4).max(1);
            Self {
                expand: rng.tensor(&[expanded, channels, 1, 1]),
                expand_bias: rng.tensor(&[expanded]),
                expand_alpha: rng.tensor(&[expanded]),
                depthwise: rng.tensor(&[expanded, 1, kernel, kernel]),
                depthwise_bias: rng.tensor(&[expanded]),
                depthwise_alpha: rng.tensor(&[expanded]),
                project: rng.tensor(&[out, expanded]),
                project_bias: rng.tensor(&[out]),
                se: se.then(|| {
                    [
                        rng.tensor(&[hidden, out]),
                        rng.tensor(&[hidden]),
                        rng.tensor(&[out, hidden]),
                        rng.tensor(&[out]),
                    ]
                }),
                stride,
                residual,
            }
        }

        fn weights(&self) -> BottleneckWeights<'_> {
            BottleneckWeights {
                expand: &self.expand,
                expand_bias: &self.expand_bias,
                expand_alpha: &self.expand_alpha,
                depthwise: &self.depthwise,
                depthwise_bias: &self.depthwise_bias,
                depthwise_alpha: &self.depthwise_alpha,
                stride: self.stride,
                project: &self.project,
                project_bias: &self.project_bias,
                squeeze_excitation: self.se.as_ref().map(|[r, rb, e, eb]| {
                    SqueezeExcitationWeights {
                        reduce: r,
                        reduce_bias: rb,
                        expand: e,
                        expand_bias: eb,
                    }
                }),
                residual: self.residual,
            }
        }

        /// The block with candle's own convolutions and broadcasting ops.
        fn reference(&self, x: &Tensor) -> Tensor {
            let y = x.conv2d(&self.expand, 0, 1, 1, 1).unwrap();
            let y = reference_bias_prelu(&y, Some(&self.expand_bias), Some(&self.expand_alpha));
            let groups = self.depthwise.dim(0).unwrap();
            let pad = self.depthwise.dim(2).unwrap() / 2;
            let y = y
                .conv2d(&self.depthwise, pad, self.stride, 1, groups)
                .unwrap();
            let y =
                reference_bias_prelu(&y, Some(&self.depthwise_bias), Some(&self.depthwise_alpha));
            let (o, e) = self.project.dims2().unwrap();
            let y = y
                .conv2d(&self.project.reshape((o, e, 1, 1)).unwrap(), 0, 1, 1, 1)
                .unwrap();
            let mut y = reference_bias_prelu(&y, Some(&self.project_bias), None);
            if let Some([r, rb, e, eb]) = &self.se {
                let pooled = y.mean_keepdim(3).unwrap().mean_keepdim(2).unwrap();
                let pooled = pooled.flatten_from(1).unwrap();
                let hidden = pooled
                    .matmul(&r.t().unwrap())
                    .unwrap()
                    .broadcast_add(rb)
                    .unwrap()
                    .relu()
                    .unwrap();
                let gate = candle_nn::ops::sigmoid(
                    &hidden
                        .matmul(&e.t().unwrap())
                        .unwrap()
                        .broadcast_add(eb)
                        .unwrap(),
                )
                .unwrap();
                let (n, c) = gate.dims2().unwrap();
                y = y
                    .broadcast_mul(&gate.reshape((n, c, 1, 1)).unwrap())
                    .unwrap();
            }
            if self.residual { (y + x).unwrap() } else { y }
        }
    }

    #[test]
    pub(super) fn fused_bottleneck_matches_candle_ops() {
        let _kernels = native_kernels();
        let mut rng = Xorshift(0xb0771e);
        // (channels, expanded, out, kernel, stride, se, residual, n, h, w)
        let cases = [
            (8, 13, 8, 3, 1, false, true, 1, 7, 7),
            (8, 13, 8, 3, 1, true, true, 2, 5, 9),
            (5, 7, 11, 3, 2, false, false, 1, 9, 6),
            (6, 9, 6, 3, 2, true, false, 2, 8, 8),
            (3, 4, 3, 5, 1, false, true, 1, 6, 5),
            (4, 6, 4, 3, 1, false, true, 1, 1, 1),
            // Large enough for the two-way split (run on a two-thread pool below).
            (64, 103, 64, 3, 1, true, true, 1, 20, 20),
            (32, 103, 64, 3, 2, false, false, 1, 40, 40),
        ];
        let pool = rayon::ThreadPoolBuilder::new()
            .num_threads(2)
            .build()
            .unwrap();
        for (c, e, o, k, s, se, residual, n, h, w) in cases {
            let block = RandomBottleneck::new(&mut rng, c, e, o, k, s, se, residual);
            let fused = FusedBottleneck::new(&block.weights()).unwrap();
            let x = rng.tensor(&[n, c, h, w]);
            let expected = block.reference(&x);
            for threads in [1, 2] {
                let got = if threads == 1 {
                    fused.forward(&x).unwrap()
                } else {
                    pool.install(|| fused.forward(&x).unwrap())
                };
                let diff = max_abs_diff(&got, &expected);
                let scale = expected.abs().unwrap().max_all().unwrap();
                let scale = scale.to_scalar::<f32>().unwrap().max(1.0);
                assert!(
                    diff < 1e-5 * scale,
                    "c={c} e={e} o={o} k={k} s={s} se={se} x={:?} threads={threads}: diff {diff}",
                    x.dims()
                );
            }
        }
    }

    #[test]
    fn fused_bottleneck_rejects_bad_shapes() {
        let _kernels = native_kernels();
        let mut rng = Xorshift(7);
        let block = RandomBottleneck::new(&mut rng, 8, 12, 8, 3, 1, true, true);
        let fused = FusedBottleneck::new(&block.weights()).unwrap();
        // Wrong channel count, rank, dtype.
        assert!(fused.forward(&rng.tensor(&[1, 7, 5, 5])).is_err());
        assert!(fused.forward(&rng.tensor(&[8, 5, 5])).is_err());
        let x64 = rng
            .tensor(&[1, 8, 5, 5])
            .to_dtype(candle_core::DType::F64)
            .unwrap();
        assert!(fused.forward(&x64).is_err());
        // Empty maps give empty outputs.
        let empty = fused.forward(&rng.tensor(&[0, 8, 5, 5])).unwrap();
        assert_eq!(empty.dims(), &[0, 8, 5, 5]);
        // Inconsistent weights.
        let mut bad = block.weights();
        let wrong = rng.tensor(&[12, 1, 3, 5]);
        bad.depthwise = &wrong;
        assert!(FusedBottleneck::new(&bad).is_err());
        let mut bad = block.weights();
        let wrong = rng.tensor(&[8, 11]);
        bad.project = &wrong;
        assert!(FusedBottleneck::new(&bad).is_err());
        let mut bad = block.weights();
        bad.stride = 2;
        assert!(
            FusedBottleneck::new(&bad).is_err(),
            "residual with stride 2"
        );
        let mut bad = block.weights();
        let wrong = rng.tensor(&[11]);
        bad.expand_alpha = &wrong;
        assert!(FusedBottleneck::new(&bad).is_err());
    }

    struct RandomHead {
        pointwise: Tensor,
        pointwise_bias: Tensor,
        pointwise_alpha: Tensor,
        global_depthwise: Tensor,
        global_depthwise_bias: Tensor,
        embedding: Tensor,
        embedding_bias: Tensor,
        classifier: Tensor,
    }

    impl RandomHead {
        fn new(rng: &mut Xorshift, c: usize, f: usize, k: usize, d: usize, classes: usize) -> Self {
            Self {
                pointwise: rng.tensor(&[f, c]),
                pointwise_bias: rng.tensor(&[f]),
                pointwise_alpha: rng.tensor(&[f]),
                global_depthwise: rng.tensor(&[f, 1, k, k]),
                global_depthwise_bias: rng.tensor(&[f]),
                embedding: rng.tensor(&[d, f]),
                embedding_bias: rng.tensor(&[d]),
                classifier: rng.tensor(&[classes, d]),
            }
        }

        fn weights(&self) -> HeadWeights<'_> {
            HeadWeights {
                pointwise: &self.pointwise,
                pointwise_bias: &self.pointwise_bias,
                pointwise_alpha: &self.pointwise_alpha,
                global_depthwise: &self.global_depthwise,
                global_depthwise_bias: &self.global_depthwise_bias,
                embedding: &self.embedding,
                embedding_bias: &self.embedding_bias,
                classifier: &self.classifier,
            }
        }

        fn reference(&self, x: &Tensor) -> Tensor {
            let (f, c) = self.pointwise.dims2().unwrap();
            let y = x
                .conv2d(&self.pointwise.reshape((f, c, 1, 1)).unwrap(), 0, 1, 1, 1)
                .unwrap();
            let y =
                reference_bias_prelu(&y, Some(&self.pointwise_bias), Some(&self.pointwise_alpha));
            let y = y.conv2d(&self.global_depthwise, 0, 1, 1, f).unwrap();
            let y = reference_bias_prelu(&y, Some(&self.global_depthwise_bias), None);
            let n = y.dim(0).unwrap();
            let y = y.reshape((n, f)).unwrap();
            y.matmul(&self.embedding.t().unwrap())
                .unwrap()
                .broadcast_add(&self.embedding_bias)
                .unwrap()
                .matmul(&self.classifier.t().unwrap())
                .unwrap()
        }
    }

    #[test]
    pub(super) fn fused_head_matches_candle_ops() {
        let _kernels = native_kernels();
        let mut rng = Xorshift(0x4ead);
        let pool = rayon::ThreadPoolBuilder::new()
            .num_threads(2)
            .build()
            .unwrap();
        // (channels, features, side, embedding, classes, batch); the last splits over threads.
        for (c, f, k, d, classes, n) in [
            (5, 7, 3, 4, 3, 1),
            (8, 13, 1, 5, 2, 3),
            (128, 512, 5, 128, 3, 2),
        ] {
            let head = RandomHead::new(&mut rng, c, f, k, d, classes);
            let fused = FusedHead::new(&head.weights()).unwrap();
            let x = rng.tensor(&[n, c, k, k]);
            let expected = head.reference(&x);
            for got in [
                fused.forward(&x).unwrap(),
                pool.install(|| fused.forward(&x).unwrap()),
            ] {
                let diff = max_abs_diff(&got, &expected);
                let scale = expected.abs().unwrap().max_all().unwrap();
                let scale = scale.to_scalar::<f32>().unwrap().max(1.0);
                assert!(diff < 1e-4 * scale, "c={c} f={f} k={k}: diff {diff}");
            }
        }
        let head = RandomHead::new(&mut rng, 8, 16, 5, 4, 3);
        let fused = FusedHead::new(&head.weights()).unwrap();
        assert!(fused.forward(&rng.tensor(&[1, 8, 4, 4])).is_err());
        assert!(fused.forward(&rng.tensor(&[1, 9, 5, 5])).is_err());
        let mut bad = head.weights();
        let wrong = rng.tensor(&[3, 5]);
        bad.classifier = &wrong;
        assert!(FusedHead::new(&bad).is_err());
    }
}
