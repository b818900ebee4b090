//! Parity with OpenCV: `INTER_AREA` / `INTER_LINEAR` resizes and `warpAffine` on noise images
//! (references made by `tests/data/make_reference.py`), and the face alignment of the golden
//! fixtures (`crates/vision/tests/golden`).
#![cfg_attr(test, allow(clippy::unwrap_used))]

use std::path::{Path, PathBuf};

use faceproof_imaging::{
    ARCFACE_TEMPLATE_112, DecodeOptions, RgbImage, decode, estimate_similarity, resize_area,
    resize_bilinear, warp_affine_bilinear,
};

fn crate_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn load(path: &Path) -> RgbImage {
    let bytes = std::fs::read(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    decode(&bytes, &DecodeOptions::default()).unwrap().image
}

fn data(name: &str) -> RgbImage {
    load(&crate_dir().join("tests/data").join(name))
}

/// (maximum absolute difference, number of differing channel values, mean absolute difference)
fn compare(got: &RgbImage, want: &RgbImage) -> (u8, usize, f64) {
    assert_eq!(got.dimensions(), want.dimensions());
    let diffs: Vec<u8> = got
        .as_raw()
        .iter()
        .zip(want.as_raw())
        .map(|(a, b)| a.abs_diff(*b))
        .collect();
    let max = diffs.iter().copied().max().unwrap_or(0);
    let differing = diffs.iter().filter(|d| **d != 0).count();
    let mean = diffs.iter().map(|d| f64::from(*d)).sum::<f64>() / diffs.len().max(1) as f64;
    (max, differing, mean)
}

#[test]
fn area_downscale_matches_opencv() {
    let cases = [
        ("noise_97x61.png", 40, 25),
        ("noise_97x61.png", 13, 7),
        ("noise_97x61.png", 96, 60),
        ("noise_97x61.png", 50, 61),
        ("noise_96x64.png", 48, 32),
        ("noise_96x64.png", 32, 16),
        ("noise_96x64.png", 24, 16),
        ("noise_96x64.png", 12, 8),
    ];
    for (source, width, height) in cases {
        let src = data(source);
        let stem = source.trim_end_matches(".png").trim_start_matches("noise_");
        let want = data(&format!("area_{stem}_to_{width}x{height}.png"));
        let (max, differing, mean) = compare(&resize_area(&src, width, height), &want);
        println!(
            "area {stem} -> {width}x{height}: max {max}, differing {differing}, mean {mean:.4}"
        );
        assert!(max <= 1 && mean < 0.01, "area {stem} -> {width}x{height}");
    }
}

#[test]
fn linear_resize_matches_opencv() {
    let src = data("noise_97x61.png");
    for (width, height) in [(150, 100), (97, 130), (40, 25)] {
        let want = data(&format!("linear_97x61_to_{width}x{height}.png"));
        let (max, differing, mean) = compare(&resize_bilinear(&src, width, height), &want);
        println!(
            "linear 97x61 -> {width}x{height}: max {max}, differing {differing}, mean {mean:.4}"
        );
        assert!(max <= 1 && mean < 0.02, "linear -> {width}x{height}");
        if width >= 97 && height >= 61 {
            // Enlarging through resize_area takes the same bilinear path.
            assert_eq!(
                resize_area(&src, width, height),
                resize_bilinear(&src, width, height)
            );
        }
    }
}

#[test]
fn warp_affine_matches_opencv() {
    let src = data("noise_97x61.png");
    let cases: [(&str, [[f32; 3]; 2], u32); 2] = [
        (
            "warp_97x61_to_64x64.png",
            [
                [0.847_002_2, 0.061_921_3, -20.5],
                [-0.061_921_3, 0.847_002_2, 7.25],
            ],
            64,
        ),
        (
            "warp_97x61_to_112x112_up.png",
            [[1.7, -0.4, 3.3], [0.35, 1.6, -12.0]],
            112,
        ),
    ];
    for (name, matrix, size) in cases {
        let (max, differing, mean) =
            compare(&warp_affine_bilinear(&src, matrix, size, size), &data(name));
        println!("warp {name}: max {max}, differing {differing}, mean {mean:.4}");
        assert!(max <= 1 && mean < 0.01, "{name}");
    }
}

#[test]
fn degenerate_resizes_do_not_panic() {
    let src = data("noise_97x61.png");
    assert_eq!(resize_area(&src, 0, 10).dimensions(), (0, 10));
    assert_eq!(resize_area(&src, 1, 1).dimensions(), (1, 1));
    assert_eq!(resize_area(&src, 97, 1).dimensions(), (97, 1));
    assert_eq!(resize_area(&src, 97, 61), src);
    assert_eq!(resize_area(&RgbImage::new(0, 0), 5, 5), RgbImage::new(5, 5));
    assert_eq!(resize_bilinear(&src, 1, 200).dimensions(), (1, 200));
    // Mixed: narrower but taller goes through the bilinear path.
    assert_eq!(resize_area(&src, 20, 100).dimensions(), (20, 100));
}

struct Golden {
    name: &'static str,
    fixture: &'static str,
}

const GOLDEN: [Golden; 4] = [
    Golden {
        name: "astronaut",
        fixture: "astronaut.png",
    },
    Golden {
        name: "biden_2010_blue_room",
        fixture: "biden_2010_blue_room.jpg",
    },
    Golden {
        name: "obama_2009_congress",
        fixture: "obama_2009_congress.jpg",
    },
    Golden {
        name: "obama_2012_official_portrait",
        fixture: "obama_2012_official_portrait.jpg",
    },
];

fn workspace_dir() -> PathBuf {
    crate_dir().join("../..")
}

/// The chosen face's landmarks and the reference alignment matrix from `result.json`, read with
/// a tiny purpose-built scan so this crate needs no JSON dependency.
fn golden_alignment(name: &str) -> ([[f32; 2]; 5], [[f64; 3]; 2]) {
    let path = workspace_dir()
        .join("crates/vision/tests/golden")
        .join(name)
        .join("result.json");
    let text = std::fs::read_to_string(&path).unwrap();
    let numbers_after = |key: &str, count: usize| -> Vec<f64> {
        let start = text
            .find(key)
            .unwrap_or_else(|| panic!("{key} in {}", path.display()));
        let rest = &text[start + key.len()..];
        rest.split(|c: char| {
            !(c.is_ascii_digit() || c == '.' || c == '-' || c == 'e' || c == 'E' || c == '+')
        })
        .filter(|s| !s.is_empty() && s.parse::<f64>().is_ok())
        .take(count)
        .map(|s| s.parse().unwrap())
        .collect()
    };
    let chosen = text.find("\"chosen\"").unwrap();
    let kps_start = chosen + text[chosen..].find("\"kps\"").unwrap();
    let kps_text = &text[kps_start..];
    let kps: Vec<f64> = kps_text[5..]
        .split(|c: char| !(c.is_ascii_digit() || c == '.' || c == '-' || c == 'e'))
        .filter(|s| !s.is_empty() && s.parse::<f64>().is_ok())
        .take(10)
        .map(|s| s.parse().unwrap())
        .collect();
    let m = numbers_after("\"M_arcface_2x3\"", 6);
    let landmarks = [0, 1, 2, 3, 4].map(|i| [kps[2 * i] as f32, kps[2 * i + 1] as f32]);
    (landmarks, [[m[0], m[1], m[2]], [m[3], m[4], m[5]]])
}

#[test]
fn similarity_matches_reference_alignment_matrices() {
    for golden in &GOLDEN {
        let (landmarks, reference) = golden_alignment(golden.name);
        let m = estimate_similarity(&landmarks, &ARCFACE_TEMPLATE_112).unwrap();
        let mut worst = 0f64;
        for (row, want) in m.iter().zip(reference) {
            for (got, want) in row.iter().zip(want) {
                // Relative for the translation column, which is in the hundreds.
                let error = (f64::from(*got) - want).abs() / want.abs().max(1.0);
                worst = worst.max(error);
            }
        }
        println!("{}: worst matrix error {worst:.2e}", golden.name);
        assert!(worst < 1e-4, "{}: {m:?} vs {reference:?}", golden.name);
    }
}

#[test]
fn face_alignment_matches_reference_crops() {
    for golden in &GOLDEN {
        let (_, reference) = golden_alignment(golden.name);
        let matrix = reference.map(|row| row.map(|v| v as f32));
        let source = load(&workspace_dir().join("tests/fixtures").join(golden.fixture));
        let aligned = warp_affine_bilinear(&source, matrix, 112, 112);
        // The reference crop was written from OpenCV's BGR array, so the PNG holds RGB.
        let want = load(
            &workspace_dir()
                .join("crates/vision/tests/golden")
                .join(golden.name)
                .join("aligned112.png"),
        );
        let (max, differing, mean) = compare(&aligned, &want);
        println!(
            "{}: aligned112 max {max}, differing {differing}, mean {mean:.4}",
            golden.name
        );
        // PNG sources are bit-exact; JPEG sources differ by the decoder (libjpeg-turbo there).
        assert!(mean < 1.0, "{}: mean abs difference {mean}", golden.name);
        if golden.fixture.ends_with(".png") {
            assert!(max <= 1, "{}: max {max}", golden.name);
        }
    }
}
