//! Times decoding and resizing on the shared benchmark photos (read at run time, never copied
//! into the repository):
//!
//! `cargo run --release -p faceproof-imaging --example bench_decode -- /work/shared/bench`
#![allow(clippy::unwrap_used)]

use std::path::PathBuf;
use std::time::{Duration, Instant};

use faceproof_imaging::{DecodeOptions, decode, resize_area};

/// Best of `runs` (after one warm-up), in milliseconds: the least disturbed by other processes.
fn best_ms<T>(runs: usize, mut work: impl FnMut() -> T) -> f64 {
    std::hint::black_box(work());
    let mut best = Duration::MAX;
    for _ in 0..runs {
        let started = Instant::now();
        std::hint::black_box(work());
        best = best.min(started.elapsed());
    }
    best.as_secs_f64() * 1e3
}

fn main() {
    let dir = PathBuf::from(
        std::env::args()
            .nth(1)
            .unwrap_or_else(|| "/work/shared/bench".into()),
    );
    let photo = std::fs::read(dir.join("photo_3000x4000.jpg")).unwrap();
    let probe = std::fs::read(dir.join("probe_640x480.jpg")).unwrap();
    let full = DecodeOptions::default();
    let for_detector = DecodeOptions {
        min_long_side: Some(640),
        ..full
    };

    let decoded = decode(&photo, &full).unwrap();
    println!(
        "photo: {}x{} upright, orientation {}",
        decoded.image.width(),
        decoded.image.height(),
        decoded.exif_orientation
    );
    let full_ms = best_ms(5, || decode(&photo, &full).unwrap());
    let scaled = decode(&photo, &for_detector).unwrap();
    let scaled_ms = best_ms(5, || decode(&photo, &for_detector).unwrap());
    println!("decode 12 MP full:                 {full_ms:7.2} ms");
    println!(
        "decode 12 MP, long side >= 640:    {scaled_ms:7.2} ms ({}x{}, scale {})",
        scaled.image.width(),
        scaled.image.height(),
        scaled.scale
    );
    for min_long_side in [1500, 500, 1] {
        let options = DecodeOptions {
            min_long_side: Some(min_long_side),
            ..full
        };
        let scaled = decode(&photo, &options).unwrap();
        let ms = best_ms(5, || decode(&photo, &options).unwrap());
        println!(
            "decode 12 MP, long side >= {min_long_side:4}:   {ms:7.2} ms ({}x{}, scale {})",
            scaled.image.width(),
            scaled.image.height(),
            scaled.scale
        );
    }
    let (w, h) = if decoded.image.width() > decoded.image.height() {
        (640, 480)
    } else {
        (480, 640)
    };
    let resize_full_ms = best_ms(5, || resize_area(&decoded.image, w, h));
    let resize_scaled_ms = best_ms(20, || resize_area(&scaled.image, w, h));
    println!("resize_area full -> {w}x{h}:        {resize_full_ms:7.2} ms");
    println!("resize_area scaled -> {w}x{h}:      {resize_scaled_ms:7.2} ms");
    println!(
        "detector input from 12 MP:         {:7.2} ms (scaled decode + resize)",
        scaled_ms + resize_scaled_ms
    );

    let probe_decoded = decode(&probe, &full).unwrap();
    let probe_ms = best_ms(50, || decode(&probe, &full).unwrap());
    println!(
        "decode probe {}x{}:               {probe_ms:7.2} ms",
        probe_decoded.image.width(),
        probe_decoded.image.height()
    );
    // A 1280x960 frame (2x integer ratio: the fast path).
    let frame = image::imageops::rotate90(&resize_area(&decoded.image, 960, 1280));
    assert_eq!(frame.dimensions(), (1280, 960));
    let landscape_ms = best_ms(50, || resize_area(&frame, 640, 480));
    println!("resize_area 1280x960 -> 640x480:   {landscape_ms:7.2} ms");
}
