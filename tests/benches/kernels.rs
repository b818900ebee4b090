//! Timings of faceproof-vision's kernels and networks, against candle's own operations where
//! there is one to compare with (moved here from ignored tests of crates/vision: a timing is
//! measured on demand, never asserted). Random inputs; the networks load their converted weights
//! from the model store (`FACEPROOF_MODEL_DIR` or `models/store`).
//!
//! `cargo bench -p faceproof-tests --bench kernels [-- NAME]`, NAME a part of a section's name
//! (`depthwise`, `sface_blocks`, `elementwise`, `networks`, `minifasnet`); all sections without
//! one. Their correctness is checked by the parity tests of crates/vision, not here.

#![allow(clippy::unwrap_used)]

use std::time::Instant;

use candle_core::{Device, Tensor};
use faceproof_models::{ModelName, ModelStore};
use faceproof_vision::nets::minifasnet::{MiniFasNet, MiniFasNetVariant};
use faceproof_vision::nets::sface::SFace;
use faceproof_vision::nets::yunet::YuNet;
use faceproof_vision::ops::{
    bias_prelu, depthwise_conv2d, depthwise_conv2d_prelu, pointwise_conv2d,
};

const SECTIONS: &[(&str, fn())] = &[
    ("depthwise against candle's grouped conv", depthwise),
    ("sface_blocks unfused against fused", sface_blocks),
    ("elementwise: candle against bias_prelu", elementwise),
    ("networks: YuNet and SFace", networks),
    ("minifasnet networks", minifasnet),
];

fn main() {
    // `cargo bench` passes `--bench`; anything else names the sections to run.
    let wanted: Vec<String> = std::env::args()
        .skip(1)
        .filter(|arg| !arg.starts_with("--"))
        .collect();
    for (name, run) in SECTIONS {
        if wanted.is_empty() || wanted.iter().any(|part| name.contains(part.as_str())) {
            println!("\n== {name}");
            run();
        }
    }
}

/// Median milliseconds of `runs` calls after one untimed call.
fn median_ms(mut f: impl FnMut(), runs: usize) -> f64 {
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

/// Deterministic pseudo-random tensors, uniform in [-1, 1).
struct Xorshift(u64);

impl Xorshift {
    fn tensor(&mut self, dims: &[usize]) -> Tensor {
        let n = dims.iter().product();
        let values: Vec<f32> = (0..n)
            .map(|_| {
                self.0 ^= self.0 << 13;
                self.0 ^= self.0 >> 7;
                self.0 ^= self.0 << 17;
                (self.0 >> 40) as f32 / (1u64 << 23) as f32 - 1.0
            })
            .collect();
        Tensor::from_vec(values, dims, &Device::Cpu).unwrap()
    }
}

/// The converted weights of `name`, checked against the store's manifest.
fn weights(name: ModelName) -> Vec<u8> {
    let store = ModelStore::discover()
        .expect("no model store: run `faceproof models fetch --from ../shared/models` first");
    store.read_verified(name).unwrap()
}

/// The depthwise kernel against candle's grouped convolution on the networks' layer shapes, on
/// 1 and 2 threads.
fn depthwise() {
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

/// SFace's per-block work the unfused candle way (depthwise + bias, candle PReLU, 1x1 `conv2d` +
/// bias, candle PReLU) against the fused ops.
fn sface_blocks() {
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

/// candle's per-channel elementwise ops against [`bias_prelu`] on one SFace-sized activation.
fn elementwise() {
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

/// The detection and embedding networks alone; run with `RAYON_NUM_THREADS=1` and `=2` (and
/// the matching candle thread count) to compare with the reference timings in models/SOURCES.md.
fn networks() {
    let yunet = YuNet::from_safetensors(&weights(ModelName::YuNet), &Device::Cpu).unwrap();
    let sface = SFace::from_safetensors(&weights(ModelName::SFace), &Device::Cpu).unwrap();
    for side in [320usize, 640] {
        let input = Tensor::rand(0f32, 255f32, (1, 3, side, side), &Device::Cpu).unwrap();
        let ms = median_ms(
            || {
                yunet.forward(&input).unwrap();
            },
            20,
        );
        println!("yunet {side}x{side}: {ms:.2} ms");
    }
    for n in [1usize, 2] {
        let input = Tensor::rand(0f32, 255f32, (n, 3, 112, 112), &Device::Cpu).unwrap();
        let ms = median_ms(
            || {
                sface.embed(&input).unwrap();
            },
            20,
        );
        println!("sface batch {n}: {ms:.2} ms");
    }
}

/// Both MiniFASNet networks on one 80x80 crop and on a batch of two, on 1 and 2 threads.
fn minifasnet() {
    let mut rng = Xorshift(3);
    let one = (rng.tensor(&[1, 3, 80, 80]) * 127.0).unwrap();
    let two = Tensor::cat(&[&one, &one], 0).unwrap();
    for (name, variant) in [
        (ModelName::MiniFasNetV2, MiniFasNetVariant::V2),
        (ModelName::MiniFasNetV1Se, MiniFasNetVariant::V1Se),
    ] {
        let net = MiniFasNet::from_safetensors(&weights(name), variant, &Device::Cpu).unwrap();
        for threads in [1, 2] {
            let pool = rayon::ThreadPoolBuilder::new()
                .num_threads(threads)
                .build()
                .unwrap();
            for (label, input) in [("batch 1", &one), ("batch 2", &two)] {
                let ms = pool.install(|| {
                    median_ms(
                        || {
                            net.forward(input).unwrap().to_vec2::<f32>().unwrap();
                        },
                        200,
                    )
                });
                println!("{variant:?} {label} threads={threads}: median {ms:.3} ms");
            }
        }
    }
}
