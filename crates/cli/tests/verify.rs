//! `faceproof verify` on a signed response: photos checked against the signed digests, a mismatch
//! named, and a duplicated key refused.

use std::path::Path;
use std::process::{Command, Output};

use faceproof_proto::gateway::v1 as pb;
use faceproof_signing::{Signer, response_to_json};
use sha2::{Digest as _, Sha256};

const PROBE: &[u8] = b"the probe's bytes";
const GALLERY: &[u8] = b"the gallery image's bytes";

fn sha256(bytes: &[u8]) -> String {
    hex::encode(Sha256::digest(bytes))
}

/// A signed response and its keys JSON, written into `dir`.
fn signed_files(dir: &Path) {
    let signer = Signer::generate();
    let mut response = pb::CompareWithLivenessResponse {
        id: "r1".into(),
        data: Some(pb::ResponseData {
            comparison: Some(pb::ComparisonRecord {
                id: "c1".into(),
                client: "acme".into(),
                r#type: "compareLive".into(),
                search_mode: "FAST".into(),
                status: "success".into(),
                result: Some(pb::ComparisonResult {
                    score: 0.9,
                    passed: true,
                    min_score: 0.8,
                    probe_sha256: sha256(PROBE),
                    gallery: vec![pb::GalleryItem {
                        index: 0,
                        score: 0.9,
                        similarity: Some(0.6),
                        sha256: sha256(GALLERY),
                        ..Default::default()
                    }],
                    ..Default::default()
                }),
                ..Default::default()
            }),
            liveness: Some(pb::LivenessRecord {
                id: "l1".into(),
                r#type: "liveness".into(),
                status: "success".into(),
                result: Some(pb::LivenessResult {
                    liveness_score: Some(0.97),
                    passed: true,
                    min_score: 0.6,
                    ..Default::default()
                }),
                ..Default::default()
            }),
        }),
        signature: None,
    };
    signer
        .sign(&mut response, "2026-12-06 06:00:00 UTC".into())
        .expect("sign");
    let json = response_to_json(&response).expect("json");
    std::fs::write(
        dir.join("result.json"),
        serde_json::to_string_pretty(&json).expect("text"),
    )
    .expect("write");
    let keys = faceproof_signing::signing_keys_to_json(&pb::GetSigningKeysResponse {
        keys: vec![signer.public_key()],
    });
    std::fs::write(dir.join("keys.json"), keys.to_string()).expect("write");
    std::fs::write(dir.join("probe.jpg"), PROBE).expect("write");
    std::fs::write(dir.join("gallery.jpg"), GALLERY).expect("write");
}

fn verify(dir: &Path, extra: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_faceproof"))
        .current_dir(dir)
        .args(["verify", "result.json", "--keys-json", "keys.json"])
        .args(extra)
        .output()
        .expect("run faceproof")
}

fn text(output: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    )
}

#[test]
fn matching_photos_pass_and_no_photos_are_said_to_be_unchecked() {
    let dir = tempfile::tempdir().expect("temp dir");
    signed_files(dir.path());
    let unchecked = verify(dir.path(), &[]);
    assert!(unchecked.status.success(), "{}", text(&unchecked));
    assert!(
        text(&unchecked).contains("photos not checked"),
        "{}",
        text(&unchecked)
    );
    let checked = verify(
        dir.path(),
        &["--probe", "probe.jpg", "--gallery", "gallery.jpg"],
    );
    assert!(checked.status.success(), "{}", text(&checked));
    assert!(text(&checked).contains("(2 checked)"), "{}", text(&checked));
}

#[test]
fn another_photo_is_named_with_both_digests() {
    let dir = tempfile::tempdir().expect("temp dir");
    signed_files(dir.path());
    // The gallery image given as the probe.
    let swapped = verify(dir.path(), &["--probe", "gallery.jpg"]);
    assert!(!swapped.status.success());
    let message = text(&swapped);
    assert!(message.contains("photos do NOT match: probe"), "{message}");
    assert!(
        message.contains(&sha256(PROBE)) && message.contains(&sha256(GALLERY)),
        "{message}"
    );
}

#[test]
fn a_duplicated_key_is_refused_naming_it() {
    let dir = tempfile::tempdir().expect("temp dir");
    signed_files(dir.path());
    let path = dir.path().join("result.json");
    let original = std::fs::read_to_string(&path).expect("read");
    let forged = original.replacen("\"score\": 0.9", "\"score\": 0.01, \"score\": 0.9", 1);
    assert_ne!(forged, original);
    std::fs::write(&path, forged).expect("write");
    let output = verify(dir.path(), &[]);
    assert!(!output.status.success());
    assert!(
        text(&output).contains("duplicate key `score`"),
        "{}",
        text(&output)
    );
}
