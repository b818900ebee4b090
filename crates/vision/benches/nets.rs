//! Timings and profiling loops for the networks alone (no service, no decode), run with
//! `cargo bench -p faceproof-vision --bench nets -- <command> [args]` (`help` lists them).
//!
//! The machine this runs on is shared and noisy, so comparisons are interleaved: every round
//! times each variant back to back and the report gives the spread of the per-round ratios.
//! `detect`, `sface` and `minifasnet` just loop, for `valgrind --tool=callgrind`, which counts
//! instructions repeatably whatever the load.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::{Path, PathBuf};
use std::time::Instant;

use candle_core::{Device, Tensor};
use faceproof_imaging::{DecodeOptions, RgbImage, decode, resize_bilinear};
use faceproof_vision::face::align::align_face;
use faceproof_vision::face::subject::choose_subject;
use faceproof_vision::face::{DetectorConfig, FaceDetector};
use faceproof_vision::nets::minifasnet::{MiniFasNet, MiniFasNetVariant};
use faceproof_vision::nets::sface::{SFace, faces_to_batch, mirror_face};
use faceproof_vision::nets::yunet::YuNet;

fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

fn store_file(name: &str) -> Vec<u8> {
    let path = workspace_root().join("models/store").join(name);
    std::fs::read(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

fn fixture() -> RgbImage {
    let bytes =
        std::fs::read(workspace_root().join("tests/fixtures/obama_2012_official_portrait.jpg"))
            .unwrap();
    decode(&bytes, &DecodeOptions::default()).unwrap().image
}

fn detector(side: u32) -> FaceDetector {
    let net = YuNet::from_safetensors(&store_file("yunet.safetensors"), &Device::Cpu).unwrap();
    let config = DetectorConfig {
        max_input_side: side,
        ..DetectorConfig::default()
    };
    FaceDetector::new(net, config, Device::Cpu).unwrap()
}

fn sface() -> SFace {
    SFace::from_safetensors(&store_file("sface.safetensors"), &Device::Cpu).unwrap()
}

/// The fixture's subject, aligned to 112x112.
fn aligned_face() -> RgbImage {
    let picture = fixture();
    let faces = detector(640).detect(&picture).unwrap();
    let subject = choose_subject(&faces, picture.width(), picture.height()).unwrap();
    align_face(&picture, &faces[subject].landmarks).unwrap()
}

fn millis(run: &mut dyn FnMut(), reps: usize) -> f64 {
    let start = Instant::now();
    for _ in 0..reps {
        run();
    }
    start.elapsed().as_secs_f64() * 1000.0 / reps as f64
}

fn quantiles(mut values: Vec<f64>) -> (f64, f64, f64, f64) {
    values.sort_by(f64::total_cmp);
    let at = |q: f64| values[((values.len() - 1) as f64 * q).round() as usize];
    (at(0.0), at(0.25), at(0.5), at(1.0))
}

/// Times `a` and `b` in `rounds` interleaved rounds of `reps` runs each (the order alternates
/// per round) and prints their medians and the spread of the per-round ratio b / a.
fn compare(
    name_a: &str,
    a: &mut dyn FnMut(),
    name_b: &str,
    b: &mut dyn FnMut(),
    rounds: usize,
    reps: usize,
) {
    a();
    b();
    let (mut times_a, mut times_b, mut ratios) = (Vec::new(), Vec::new(), Vec::new());
    for round in 0..rounds {
        let (ta, tb) = if round % 2 == 0 {
            let ta = millis(a, reps);
            (ta, millis(b, reps))
        } else {
            let tb = millis(b, reps);
            (millis(a, reps), tb)
        };
        times_a.push(ta);
        times_b.push(tb);
        ratios.push(tb / ta);
    }
    let (_, _, median_a, _) = quantiles(times_a);
    let (_, _, median_b, _) = quantiles(times_b);
    let (min, q1, median, max) = quantiles(ratios.clone());
    let q3 = {
        let mut r = ratios;
        r.sort_by(f64::total_cmp);
        r[((r.len() - 1) as f64 * 0.75).round() as usize]
    };
    println!(
        "{name_a}: median {median_a:.2} ms; {name_b}: median {median_b:.2} ms; ratio {name_b} / \
         {name_a} over {rounds} rounds of {reps}: median {median:.3}, quartiles {q1:.3}..{q3:.3}, \
         range {min:.3}..{max:.3}"
    );
}

fn main() {
    let args: Vec<String> = std::env::args()
        .skip(1)
        .filter(|a| a != "--bench")
        .collect();
    let number = |i: usize, default: usize| -> usize {
        args.get(i).and_then(|s| s.parse().ok()).unwrap_or(default)
    };
    match args.first().map(String::as_str) {
        Some("sface-pair") => {
            let net = sface();
            let face = aligned_face();
            let mirrored = mirror_face(&face);
            let single_a = faces_to_batch(std::slice::from_ref(&face), &Device::Cpu).unwrap();
            let single_b = faces_to_batch(std::slice::from_ref(&mirrored), &Device::Cpu).unwrap();
            let pair = faces_to_batch(&[face, mirrored], &Device::Cpu).unwrap();
            compare(
                "single x2",
                &mut || {
                    net.embed(&single_a).unwrap();
                    net.embed(&single_b).unwrap();
                },
                "batch of 2",
                &mut || {
                    net.embed(&pair).unwrap();
                },
                number(1, 20),
                number(2, 5),
            );
        }
        Some("detect") => {
            let side = number(1, 640) as u32;
            let detector = detector(side);
            let square = resize_bilinear(&fixture(), side, side);
            for _ in 0..number(2, 10) {
                detector.detect(&square).unwrap();
            }
        }
        Some("sface") => {
            let net = sface();
            let batch = faces_to_batch(&[aligned_face()], &Device::Cpu).unwrap();
            for _ in 0..number(1, 10) {
                net.embed(&batch).unwrap();
            }
        }
        Some("minifasnet") => {
            let net = MiniFasNet::from_safetensors(
                &store_file("minifasnet_v2.safetensors"),
                MiniFasNetVariant::V2,
                &Device::Cpu,
            )
            .unwrap();
            let crop = Tensor::rand(0f32, 255f32, (1, 3, 80, 80), &Device::Cpu).unwrap();
            for _ in 0..number(1, 10) {
                net.forward(&crop).unwrap();
            }
        }
        _ => println!(
            "commands: sface-pair [rounds=20] [reps=5] | detect [side=640] [runs=10] | \
             sface [runs=10] | minifasnet [runs=10]"
        ),
    }
}
