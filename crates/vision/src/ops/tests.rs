//! Checks of the kernels against naive reference implementations.

#![allow(clippy::unwrap_used)]

use candle_core::{Device, Tensor};

use super::*;

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

fn max_abs_diff(a: &Tensor, b: &Tensor) -> f32 {
    assert_eq!(a.dims(), b.dims());
    (a - b)
        .unwrap()
        .abs()
        .unwrap()
        .flatten_all()
        .unwrap()
        .max(0)
        .unwrap()
        .to_scalar::<f32>()
        .unwrap()
}

#[test]
fn depthwise_matches_reference_over_many_shapes() {
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

/// Median wall time of `f` in milliseconds, after one warm-up call.
fn median_ms(mut f: impl FnMut(), runs: usize) -> f64 {
    use std::time::Instant;
    f();
    let mut times: Vec<f64> = (0..runs)
        .map(|_| {
            let start = Instant::now();
            f();
            start.elapsed().as_secs_f64() * 1e3
        })
        .collect();
    times.sort_by(f64::total_cmp);
    times[runs / 2]
}

/// Timing of the depthwise kernel against candle's grouped convolution on the networks' layer
/// shapes, on 1 and 2 threads. Not a check: run on demand with
/// `cargo test --release -p faceproof-vision --lib ops::tests::time_ -- --ignored --nocapture`.
#[test]
#[ignore = "timing, run on demand"]
fn time_depthwise_against_candle_grouped_conv() {
    let mut rng = Xorshift(1);
    let layers: Vec<_> = DEPTHWISE_LAYERS
        .iter()
        .map(|&(net, count, c, h, w, k, s, p)| {
            let x = rng.tensor(&[1, c, h, w]);
            let weight = rng.tensor(&[c, 1, k, k]);
            let bias = rng.tensor(&[c]);
            (net, count, x, weight, bias, s, p)
        })
        .collect();
    for threads in [1, 2] {
        let pool = rayon::ThreadPoolBuilder::new()
            .num_threads(threads)
            .build()
            .unwrap();
        println!("\n{threads} thread(s), median ms per call");
        println!(
            "{:<36} {:>5} {:>10} {:>10} {:>8}",
            "layer", "count", "candle", "ops", "speedup"
        );
        let mut totals: Vec<(&str, f64, f64)> = Vec::new();
        for (net, count, x, weight, bias, s, p) in &layers {
            let (c, k) = (weight.dim(0).unwrap(), weight.dim(2).unwrap());
            let runs = (4_000_000 / x.elem_count()).clamp(5, 300);
            let (candle, ours) = pool.install(|| {
                let candle = median_ms(
                    || {
                        let y = x.conv2d(weight, *p, *s, 1, c).unwrap();
                        y.broadcast_add(&bias.reshape((1, c, 1, 1)).unwrap())
                            .unwrap();
                    },
                    runs.min(15),
                );
                let ours = median_ms(
                    || {
                        depthwise_conv2d(x, weight, Some(bias), *s, *p).unwrap();
                    },
                    runs,
                );
                (candle, ours)
            });
            let label = format!(
                "{net} {c}x{}x{} k{k} s{s}",
                x.dim(2).unwrap(),
                x.dim(3).unwrap()
            );
            println!(
                "{label:<36} {count:>5} {candle:>10.3} {ours:>10.3} {:>8.1}",
                candle / ours
            );
            match totals.iter_mut().find(|t| t.0 == *net) {
                Some(t) => {
                    t.1 += candle * *count as f64;
                    t.2 += ours * *count as f64;
                }
                None => totals.push((net, candle * *count as f64, ours * *count as f64)),
            }
        }
        for (net, candle, ours) in totals {
            println!(
                "{:<36} {:>5} {candle:>10.3} {ours:>10.3} {:>8.1}",
                format!("{net} all depthwise layers"),
                "",
                candle / ours
            );
        }
    }
}

/// (network, layers of this shape, channels, input height, input width, kernel, stride, padding)
/// of the depthwise layers, read from the upstream ONNX graphs (SFace at 112x112, YuNet at
/// 640x640) and MiniFASNetV2's weights (80x80 input).
type DepthwiseLayer = (
    &'static str,
    usize,
    usize,
    usize,
    usize,
    usize,
    usize,
    usize,
);
const DEPTHWISE_LAYERS: &[DepthwiseLayer] = &[
    ("sface", 1, 32, 112, 112, 3, 1, 1),
    ("sface", 1, 64, 112, 112, 3, 2, 1),
    ("sface", 1, 128, 56, 56, 3, 1, 1),
    ("sface", 1, 128, 56, 56, 3, 2, 1),
    ("sface", 1, 256, 28, 28, 3, 1, 1),
    ("sface", 1, 256, 28, 28, 3, 2, 1),
    ("sface", 5, 512, 14, 14, 3, 1, 1),
    ("sface", 1, 512, 14, 14, 3, 2, 1),
    ("sface", 1, 1024, 7, 7, 3, 1, 1),
    ("yunet640", 1, 16, 320, 320, 3, 1, 1),
    ("yunet640", 1, 16, 160, 160, 3, 1, 1),
    ("yunet640", 2, 32, 160, 160, 3, 1, 1),
    ("yunet640", 1, 64, 160, 160, 3, 1, 1),
    ("yunet640", 3, 64, 80, 80, 3, 1, 1),
    ("yunet640", 3, 64, 40, 40, 3, 1, 1),
    ("yunet640", 3, 64, 20, 20, 3, 1, 1),
    ("minifasv2", 1, 32, 40, 40, 3, 1, 1),
    ("minifasv2", 1, 103, 40, 40, 3, 2, 1),
    ("minifasv2", 4, 64, 20, 20, 3, 1, 1),
    ("minifasv2", 1, 231, 20, 20, 3, 2, 1),
    ("minifasv2", 6, 128, 10, 10, 3, 1, 1),
    ("minifasv2", 1, 256, 10, 10, 3, 2, 1),
    ("minifasv2", 2, 128, 5, 5, 3, 1, 1),
    ("minifasv2", 1, 512, 5, 5, 5, 1, 0),
];

/// Timing of SFace's per-block work, the unfused candle way (as first written: depthwise + bias,
/// candle PReLU, 1x1 `conv2d` + bias, candle PReLU) against the fused ops. Run on demand with
/// `cargo test --release -p faceproof-vision --lib ops::tests::time_ -- --ignored --nocapture`.
#[test]
#[ignore = "timing, run on demand"]
fn time_sface_blocks_unfused_against_fused() {
    // (layers of this shape, input channels, output channels, input side, depthwise stride)
    const BLOCKS: &[(usize, usize, usize, usize, usize)] = &[
        (1, 32, 64, 112, 1),
        (1, 64, 128, 112, 2),
        (1, 128, 128, 56, 1),
        (1, 128, 256, 56, 2),
        (1, 256, 256, 28, 1),
        (1, 256, 512, 28, 2),
        (5, 512, 512, 14, 1),
        (1, 512, 1024, 14, 2),
        (1, 1024, 1024, 7, 1),
    ];
    let prelu = |x: &Tensor, a: &Tensor| -> Tensor {
        let a = a.reshape((1, a.elem_count(), 1, 1)).unwrap();
        (x.relu().unwrap() + x.minimum(0f32).unwrap().broadcast_mul(&a).unwrap()).unwrap()
    };
    let mut rng = Xorshift(2);
    for threads in [1, 2] {
        let pool = rayon::ThreadPoolBuilder::new()
            .num_threads(threads)
            .build()
            .unwrap();
        println!("\n{threads} thread(s), median ms per block (depthwise + PReLU + 1x1 + PReLU)");
        println!(
            "{:<26} {:>5} {:>9} {:>9} {:>9} {:>9} {:>9}",
            "block", "count", "unfused", "fused", "1x1 conv", "1x1 ops", "matmul"
        );
        let mut totals = [0.0f64; 5];
        for &(count, ci, co, side, stride) in BLOCKS {
            let x = rng.tensor(&[1, ci, side, side]);
            let dw = rng.tensor(&[ci, 1, 3, 3]);
            let dw_bias = rng.tensor(&[ci]);
            let dw_alpha = rng.tensor(&[ci]);
            let pw = rng.tensor(&[co, ci, 1, 1]);
            let pw2d = pw.reshape((co, ci)).unwrap();
            let pw_bias = rng.tensor(&[co]);
            let pw_alpha = rng.tensor(&[co]);
            let mid = depthwise_conv2d(&x, &dw, None, stride, 1).unwrap();
            let out_side = mid.dim(2).unwrap();
            let runs = 30;
            let row = pool.install(|| {
                [
                    median_ms(
                        || {
                            let y = depthwise_conv2d(&x, &dw, Some(&dw_bias), stride, 1).unwrap();
                            let y = prelu(&y, &dw_alpha);
                            let y = y.conv2d(&pw, 0, 1, 1, 1).unwrap();
                            let y = y
                                .broadcast_add(&pw_bias.reshape((1, co, 1, 1)).unwrap())
                                .unwrap();
                            prelu(&y, &pw_alpha);
                        },
                        runs,
                    ),
                    median_ms(
                        || {
                            let y = depthwise_conv2d_prelu(
                                &x,
                                &dw,
                                Some(&dw_bias),
                                &dw_alpha,
                                stride,
                                1,
                            )
                            .unwrap();
                            pointwise_conv2d(&y, &pw, Some(&pw_bias), Some(&pw_alpha)).unwrap();
                        },
                        runs,
                    ),
                    median_ms(
                        || {
                            mid.conv2d(&pw, 0, 1, 1, 1).unwrap();
                        },
                        runs,
                    ),
                    median_ms(
                        || {
                            pointwise_conv2d(&mid, &pw, None, None).unwrap();
                        },
                        runs,
                    ),
                    median_ms(
                        || {
                            pw2d.matmul(&mid.reshape((ci, out_side * out_side)).unwrap())
                                .unwrap();
                        },
                        runs,
                    ),
                ]
            });
            for (t, r) in totals.iter_mut().zip(row) {
                *t += r * count as f64;
            }
            let label = format!("{ci}->{co} {side}x{side} s{stride}");
            println!(
                "{label:<26} {count:>5} {:>9.3} {:>9.3} {:>9.3} {:>9.3} {:>9.3}",
                row[0], row[1], row[2], row[3], row[4]
            );
        }
        println!(
            "{:<26} {:>5} {:>9.3} {:>9.3} {:>9.3} {:>9.3} {:>9.3}",
            "all 13 blocks", "", totals[0], totals[1], totals[2], totals[3], totals[4]
        );
    }
}

/// Timing of candle's per-channel elementwise ops against [`bias_prelu`] on one SFace-sized
/// activation. Run on demand (see above).
#[test]
#[ignore = "timing, run on demand"]
fn time_candle_elementwise_against_bias_prelu() {
    let mut rng = Xorshift(4);
    let (c, side) = (64, 112);
    let x = rng.tensor(&[1, c, side, side]);
    let b4 = rng.tensor(&[1, c, 1, 1]);
    let b1 = rng.tensor(&[c]);
    let b2 = b1.reshape((c, 1)).unwrap();
    let x3 = x.reshape((c, side * side)).unwrap();
    let runs = 20;
    let rows: Vec<(&str, f64)> = vec![
        (
            "broadcast_add [1,C,1,1]",
            median_ms(|| drop(x.broadcast_add(&b4).unwrap()), runs),
        ),
        (
            "broadcast_add [C,1] on [C,HW]",
            median_ms(|| drop(x3.broadcast_add(&b2).unwrap()), runs),
        ),
        (
            "broadcast_mul [1,C,1,1]",
            median_ms(|| drop(x.broadcast_mul(&b4).unwrap()), runs),
        ),
        ("relu", median_ms(|| drop(x.relu().unwrap()), runs)),
        (
            "minimum(0)",
            median_ms(|| drop(x.minimum(0f32).unwrap()), runs),
        ),
        (
            "add same shape",
            median_ms(|| drop((&x + &x).unwrap()), runs),
        ),
        (
            "affine",
            median_ms(|| drop(x.affine(2.0, 1.0).unwrap()), runs),
        ),
        (
            "candle prelu (relu + min * slope)",
            median_ms(
                || {
                    drop(
                        (x.relu().unwrap() + x.minimum(0f32).unwrap().broadcast_mul(&b4).unwrap())
                            .unwrap(),
                    )
                },
                runs,
            ),
        ),
        (
            "ops::bias_prelu",
            median_ms(|| drop(bias_prelu(&x, Some(&b1), Some(&b1)).unwrap()), runs),
        ),
        (
            "max_pool2d 2x2",
            median_ms(|| drop(x.max_pool2d(2).unwrap()), runs),
        ),
        (
            "upsample_nearest2d x2",
            median_ms(
                || {
                    drop(
                        x.max_pool2d(2)
                            .unwrap()
                            .upsample_nearest2d(side, side)
                            .unwrap(),
                    )
                },
                runs,
            ),
        ),
    ];
    println!(
        "\n{} thread(s), 1x{c}x{side}x{side} f32, median ms",
        rayon::current_num_threads()
    );
    for (name, ms) in rows {
        println!("{name:<36} {ms:>8.3}");
    }
}
