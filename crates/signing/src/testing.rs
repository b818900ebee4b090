//! A realistic compare-with-liveness response for tests that sign, save or verify one (this
//! crate's, the CLI's `faceproof verify` tests): built with the `testing` feature.

use faceproof_proto::common::v1::{BoundingBox, Face, Point};
use faceproof_proto::gateway::v1 as pb;
use sha2::{Digest as _, Sha256};

use crate::{Signer, response_to_json};

/// The probe photo whose SHA-256 the sample response records.
pub const SAMPLE_PROBE: &[u8] = b"probe image bytes";
/// The one gallery photo whose SHA-256 the sample response records.
pub const SAMPLE_GALLERY: &[u8] = b"gallery image bytes";
/// The `signature.dateTime` of [`signed_sample_text`].
pub const SAMPLE_SIGNED_AT: &str = "2026-11-28 06:41:02 UTC";

/// An unsigned response: a passed comparison (score 0.8123) of [`SAMPLE_PROBE`] with
/// [`SAMPLE_GALLERY`] and a passed liveness check (0.97).
pub fn sample_response() -> pb::CompareWithLivenessResponse {
    let face = Face {
        r#box: Some(BoundingBox {
            x: 10.5,
            y: 20.25,
            width: 100.0,
            height: 120.0,
        }),
        landmarks: vec![Point { x: 0.1, y: 0.2 }; 5],
        detection_score: 0.93,
    };
    pb::CompareWithLivenessResponse {
        id: "d6b1f7a0-0000-4000-8000-000000000001".into(),
        data: Some(pb::ResponseData {
            comparison: Some(pb::ComparisonRecord {
                id: "c1".into(),
                client: "acme".into(),
                r#type: "compareLive".into(),
                search_mode: "FAST".into(),
                status: "success".into(),
                result: Some(pb::ComparisonResult {
                    score: 0.8123,
                    false_accept_rate: Some(1e-4),
                    best_gallery_index: 0,
                    probe_face: Some(face.clone()),
                    gallery: vec![pb::GalleryItem {
                        index: 0,
                        score: 0.8123,
                        face: Some(face),
                        issue: None,
                        similarity: Some(0.61),
                        sha256: hex::encode(Sha256::digest(SAMPLE_GALLERY)),
                        probe_copy: false,
                    }],
                    passed: true,
                    min_score: 0.8,
                    probe_sha256: hex::encode(Sha256::digest(SAMPLE_PROBE)),
                    probe_is_gallery_copy: false,
                }),
                compared_at: "2026-11-28T06:41:02.123Z".into(),
                created_at: "2026-11-28T06:41:02.001Z".into(),
                updated_at: "2026-11-28T06:41:02.300Z".into(),
            }),
            liveness: Some(pb::LivenessRecord {
                id: "l1".into(),
                client: "acme".into(),
                r#type: "liveness".into(),
                status: "success".into(),
                search_mode: "FAST".into(),
                os: "IOS".into(),
                liveness_min_score: 0.6,
                result: Some(pb::LivenessResult {
                    liveness_score: Some(0.97),
                    passed: true,
                    min_score: 0.6,
                    attack: Some(pb::AttackEvidence {
                        print_probability: 0.02,
                        screen_probability: 0.01,
                    }),
                    issue: None,
                    reason: String::new(),
                    comparison_score: None,
                }),
                created_at: "2026-11-28T06:41:02.124Z".into(),
                updated_at: "2026-11-28T06:41:02.299Z".into(),
            }),
        }),
        signature: None,
    }
}

/// [`sample_response`] signed by `signer` at [`SAMPLE_SIGNED_AT`], as the pretty-printed JSON a
/// caller saves.
pub fn signed_sample_text(signer: &Signer) -> String {
    let mut response = sample_response();
    signer
        .sign(&mut response, SAMPLE_SIGNED_AT.into())
        .expect("the sample response signs");
    let json = response_to_json(&response).expect("the sample response has a JSON form");
    serde_json::to_string_pretty(&json).expect("JSON values print")
}
