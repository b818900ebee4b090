//! `faceproof verify` on a signed response: photos checked against the signed digests, a mismatch
//! named, and a duplicated key refused.

use std::path::Path;
use std::process::{Command, Output};

use faceproof_proto::gateway::v1 as pb;
use faceproof_signing::Signer;
use faceproof_signing::testing::{SAMPLE_GALLERY, SAMPLE_PROBE, signed_sample_text};
use sha2::{Digest as _, Sha256};

fn sha256(bytes: &[u8]) -> String {
    hex::encode(Sha256::digest(bytes))
}

/// A signed response, its keys JSON and the two photos it names, written into `dir`.
fn signed_files(dir: &Path) {
    let signer = Signer::generate();
    std::fs::write(dir.join("result.json"), signed_sample_text(&signer)).expect("write");
    let keys = faceproof_signing::signing_keys_to_json(&pb::GetSigningKeysResponse {
        keys: vec![signer.public_key()],
    });
    std::fs::write(dir.join("keys.json"), keys.to_string()).expect("write");
    std::fs::write(dir.join("probe.jpg"), SAMPLE_PROBE).expect("write");
    std::fs::write(dir.join("gallery.jpg"), SAMPLE_GALLERY).expect("write");
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
        message.contains(&sha256(SAMPLE_PROBE)) && message.contains(&sha256(SAMPLE_GALLERY)),
        "{message}"
    );
}

#[test]
fn a_duplicated_key_is_refused_naming_it() {
    let dir = tempfile::tempdir().expect("temp dir");
    signed_files(dir.path());
    let path = dir.path().join("result.json");
    let original = std::fs::read_to_string(&path).expect("read");
    let forged = original.replacen("\"score\": 0.8123", "\"score\": 0.01, \"score\": 0.8123", 1);
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
