//! Decodes every file named on the command line (directories are walked) with the default
//! limits, as the matcher does (`min_long_side` 1600) and at full resolution, and prints the
//! outcome and the time; the `image` crate's plain decode is timed alongside for comparison.
//!
//! `cargo run --release -p faceproof-imaging --example decode_files -- DIR_OR_FILE...`

use std::path::{Path, PathBuf};
use std::time::Instant;

use faceproof_imaging::{DecodeOptions, decode};

fn collect(path: &Path, out: &mut Vec<PathBuf>) {
    if path.is_dir() {
        let Ok(entries) = std::fs::read_dir(path) else {
            return;
        };
        let mut entries: Vec<_> = entries.flatten().map(|e| e.path()).collect();
        entries.sort();
        for entry in entries {
            collect(&entry, out);
        }
    } else if let Some(ext) = path.extension().and_then(|e| e.to_str())
        && matches!(
            ext.to_ascii_lowercase().as_str(),
            "jpg" | "jpeg" | "png" | "webp"
        )
    {
        out.push(path.to_owned());
    }
}

fn main() {
    let mut files = Vec::new();
    for arg in std::env::args().skip(1) {
        collect(Path::new(&arg), &mut files);
    }
    let verbose = std::env::var_os("VERBOSE").is_some();
    let (mut ok, mut failed) = (0usize, 0usize);
    let (mut new_ms, mut plain_ms) = (0.0f64, 0.0f64);
    for file in &files {
        let Ok(bytes) = std::fs::read(file) else {
            continue;
        };
        let matcher = DecodeOptions {
            min_long_side: Some(1600),
            ..DecodeOptions::default()
        };
        let started = Instant::now();
        let reduced = decode(&bytes, &matcher);
        let full = decode(&bytes, &DecodeOptions::default());
        let elapsed = started.elapsed().as_secs_f64() * 1e3;
        let started = Instant::now();
        let plain = image::load_from_memory(&bytes).map(|i| i.into_rgb8());
        let plain_elapsed = started.elapsed().as_secs_f64() * 1e3;
        match (&reduced, &full) {
            (Ok(r), Ok(f)) => {
                ok += 1;
                new_ms += elapsed;
                plain_ms += plain_elapsed;
                if verbose {
                    println!(
                        "ok   {} {:?} reduced {:?} ({:.1} ms for both; image crate {:.1} ms{})",
                        file.display(),
                        f.image.dimensions(),
                        r.image.dimensions(),
                        elapsed,
                        plain_elapsed,
                        if plain.is_ok() { "" } else { ", it FAILED" }
                    );
                }
            }
            (r, f) => {
                failed += 1;
                println!(
                    "FAIL {}: reduced {:?} full {:?} (image crate: {})",
                    file.display(),
                    r.as_ref().err(),
                    f.as_ref().err(),
                    if plain.is_ok() { "ok" } else { "fails too" }
                );
            }
        }
    }
    println!(
        "{ok} decoded, {failed} refused; ours (reduced + full) {new_ms:.0} ms, image crate full {plain_ms:.0} ms"
    );
}
