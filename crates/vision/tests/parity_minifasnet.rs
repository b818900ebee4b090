//! MiniFASNetV2 / MiniFASNetV1SE and the liveness crop against the reference pipeline's golden
//! values (`tests/golden/`: onnxruntime / OpenCV running the same upstream weights).
//!
//! Needs the converted weights in the model store; a missing file fails the test with the command
//! that creates it.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::{Path, PathBuf};

use candle_core::{Device, Tensor};
use faceproof_imaging::{DecodeOptions, RgbImage, decode};
use faceproof_models::{ModelName, ModelStore};
use faceproof_vision::face::liveness_crop::{
    crop_to_tensor, crop_training_box, liveness_crop, yunet_box_to_training_geometry,
};
use faceproof_vision::nets::minifasnet::{
    MiniFasNet, MiniFasNetVariant, REAL_CLASS, softmax_probabilities,
};

const IMAGES: [&str; 4] = [
    "astronaut",
    "biden_2010_blue_room",
    "obama_2009_congress",
    "obama_2012_official_portrait",
];

fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

fn golden_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/golden")
}

fn model_name(variant: MiniFasNetVariant) -> ModelName {
    match variant {
        MiniFasNetVariant::V2 => ModelName::MiniFasNetV2,
        MiniFasNetVariant::V1Se => ModelName::MiniFasNetV1Se,
    }
}

/// Short key of the variant in the golden files.
fn golden_key(variant: MiniFasNetVariant) -> &'static str {
    match variant {
        MiniFasNetVariant::V2 => "v2",
        MiniFasNetVariant::V1Se => "v1se",
    }
}

fn load_net(variant: MiniFasNetVariant) -> MiniFasNet {
    let store = ModelStore::discover().expect("model store");
    let bytes = store
        .read_verified(model_name(variant))
        .unwrap_or_else(|error| {
            panic!(
                "converted weights unavailable ({error}); run \
             `cargo run -p faceproof-cli -- models fetch --from ../shared/models` first"
            )
        });
    MiniFasNet::from_safetensors(&bytes, variant, &Device::Cpu).expect("weights load")
}

fn golden_io() -> Vec<(String, Tensor)> {
    Tensor::read_npz(golden_dir().join("net_io.npz")).expect("net_io.npz")
}

fn golden_tensor(all: &[(String, Tensor)], key: &str) -> Tensor {
    all.iter()
        .find(|(name, _)| name == key)
        .map(|(_, t)| t.clone())
        .unwrap_or_else(|| panic!("{key} missing from net_io.npz"))
}

fn result_json(image: &str) -> serde_json::Value {
    let text = std::fs::read_to_string(golden_dir().join(image).join("result.json")).unwrap();
    serde_json::from_str(&text).unwrap()
}

fn fixture(image: &str) -> RgbImage {
    let dir = repo_root().join("tests/fixtures");
    let path = ["png", "jpg"]
        .iter()
        .map(|ext| dir.join(format!("{image}.{ext}")))
        .find(|p| p.is_file())
        .unwrap_or_else(|| panic!("fixture {image} missing"));
    decode(&std::fs::read(path).unwrap(), &DecodeOptions::default())
        .unwrap()
        .image
}

fn golden_png(path: &Path) -> RgbImage {
    decode(&std::fs::read(path).unwrap(), &DecodeOptions::default())
        .unwrap()
        .image
}

fn to_vec(t: &Tensor) -> Vec<f32> {
    t.flatten_all().unwrap().to_vec1::<f32>().unwrap()
}

#[test]
fn logits_match_the_reference_within_1e_3_relative() {
    let golden = golden_io();
    for variant in MiniFasNetVariant::ALL {
        let net = load_net(variant);
        let key = golden_key(variant);
        for image in IMAGES {
            let input = golden_tensor(&golden, &format!("{image}/{key}_in"));
            let expected = to_vec(&golden_tensor(&golden, &format!("{image}/{key}_out")));
            let actual = to_vec(&net.forward(&input).unwrap());
            let scale = expected.iter().fold(0f32, |m, v| m.max(v.abs()));
            let max_diff = actual
                .iter()
                .zip(&expected)
                .fold(0f32, |m, (a, e)| m.max((a - e).abs()));
            println!(
                "{key} {image}: max |diff| {max_diff:.2e}, relative {:.2e}",
                max_diff / scale
            );
            assert!(
                max_diff <= 1e-3 * scale,
                "{key} {image}: {actual:?} vs {expected:?}"
            );
        }
    }
}

#[test]
fn live_probabilities_match_result_json() {
    let golden = golden_io();
    let nets = MiniFasNetVariant::ALL.map(load_net);
    for image in IMAGES {
        let json = result_json(image);
        let mut per_model = Vec::new();
        for net in &nets {
            let key = golden_key(net.variant());
            let input = golden_tensor(&golden, &format!("{image}/{key}_in"));
            let probabilities = softmax_probabilities(&net.forward(&input).unwrap()).unwrap();
            let live = probabilities[0].to_array()[REAL_CLASS];
            let expected = json["liveness_live_prob"][key].as_f64().unwrap() as f32;
            println!("{key} {image}: live {live:.6} (reference {expected:.6})");
            assert!((live - expected).abs() < 1e-4, "{key} {image}");
            per_model.push(probabilities[0]);
        }
        let ensemble =
            faceproof_vision::nets::minifasnet::LivenessProbabilities::mean(&per_model).unwrap();
        let expected = json["liveness_live_prob"]["ens"].as_f64().unwrap() as f32;
        assert!((ensemble.real - expected).abs() < 1e-4, "ensemble {image}");
    }
}

#[test]
fn a_batch_gives_the_same_logits_as_single_crops() {
    let golden = golden_io();
    let net = load_net(MiniFasNetVariant::V1Se);
    let inputs: Vec<Tensor> = IMAGES
        .iter()
        .map(|image| golden_tensor(&golden, &format!("{image}/v1se_in")))
        .collect();
    let batch = net.forward(&Tensor::cat(&inputs, 0).unwrap()).unwrap();
    assert_eq!(batch.dims(), [IMAGES.len(), 3]);
    for (i, input) in inputs.iter().enumerate() {
        let single = to_vec(&net.forward(input).unwrap());
        let row = to_vec(&batch.get(i).unwrap());
        for (a, b) in single.iter().zip(&row) {
            assert!((a - b).abs() < 1e-4, "row {i}: {single:?} vs {row:?}");
        }
    }
}

#[test]
fn crops_from_the_raw_box_match_the_reference() {
    let golden = golden_io();
    for image in IMAGES {
        let json = result_json(image);
        let raw_box: Vec<f32> = json["silentface_int_box"]
            .as_array()
            .unwrap()
            .iter()
            .map(|v| v.as_f64().unwrap() as f32)
            .collect();
        let raw_box: [f32; 4] = raw_box.try_into().unwrap();
        let picture = fixture(image);
        for variant in MiniFasNetVariant::ALL {
            let key = golden_key(variant);
            let crop = crop_training_box(&picture, raw_box, variant.crop_scale()).unwrap();
            let reference = golden_png(&golden_dir().join(image).join(format!("crop_{key}80.png")));
            assert_eq!(reference.dimensions(), crop.dimensions());
            let png_diff = crop
                .as_raw()
                .iter()
                .zip(reference.as_raw())
                .map(|(&a, &b)| f64::from(a.abs_diff(b)))
                .sum::<f64>()
                / crop.as_raw().len() as f64;
            // The exact tensor the reference fed to the network.
            let ours = to_vec(&crop_to_tensor(&crop, &Device::Cpu).unwrap());
            let theirs = to_vec(&golden_tensor(&golden, &format!("{image}/{key}_in")));
            let input_diff = ours
                .iter()
                .zip(&theirs)
                .map(|(a, b)| f64::from((a - b).abs()))
                .sum::<f64>()
                / ours.len() as f64;
            println!(
                "{key} {image}: mean |diff| vs crop png {png_diff:.3}, vs network input {input_diff:.3}"
            );
            assert!(png_diff < 1.0, "{key} {image}: crop differs by {png_diff}");
            assert!(
                input_diff < 1.0,
                "{key} {image}: input differs by {input_diff}"
            );
        }
    }
}

#[test]
fn mapped_crops_run_end_to_end() {
    let nets = MiniFasNetVariant::ALL.map(load_net);
    for image in IMAGES {
        let json = result_json(image);
        let chosen = json["chosen"]["box"].as_array().unwrap();
        let yunet_box: Vec<f32> = chosen.iter().map(|v| v.as_f64().unwrap() as f32).collect();
        let yunet_box: [f32; 4] = yunet_box.try_into().unwrap();
        let picture = fixture(image);
        let mut per_model = Vec::new();
        for net in &nets {
            let crop = liveness_crop(&picture, yunet_box, net.variant(), &Device::Cpu).unwrap();
            let logits = net.forward(&crop.unsqueeze(0).unwrap()).unwrap();
            per_model.push(softmax_probabilities(&logits).unwrap()[0]);
        }
        let ensemble =
            faceproof_vision::nets::minifasnet::LivenessProbabilities::mean(&per_model).unwrap();
        println!(
            "{image}: mapped box {:?}, live v2 {:.4} v1se {:.4} ensemble {:.4}",
            yunet_box_to_training_geometry(yunet_box),
            per_model[0].real,
            per_model[1].real,
            ensemble.real
        );
        // Every fixture is a genuine photograph of a live person.
        assert!(ensemble.real > 0.5, "{image}: {ensemble:?}");
    }
}
