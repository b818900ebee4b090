//! The gateway's integration tests: the real gRPC and REST front ends against in-process fake
//! matcher and liveness servers with scripted answers (faceproof-testkit's `fake_backend`).

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::HashMap;
use std::time::{Duration, Instant};

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;
use clap::Parser as _;
use faceproof_gateway::{Application, GatewayCli};
use faceproof_proto::common::v1::FaceIssueReason;
use faceproof_proto::gateway::v1 as pb;
use faceproof_proto::gateway::v1::face_verification_client::FaceVerificationClient;
use faceproof_signing::{PublicKeySet, VerifyError};
use faceproof_testkit::fake_backend::{
    API_KEY, COMPARE_PATH, FakeLiveness, FakeMatcher, GatewaySetup, Jwt, LivenessScript,
    MatcherScript, SECRET, TestGateway, authorize, compare_request, face, gallery_image,
    hs256_token, is_rfc3339_millis_utc, probe, reason, reflected_services, retry_delay, serve,
    sign_token, violation_fields, within,
};
use faceproof_testkit::net::RefusingAddress;
use serde_json::{Value, json};
use tokio::net::TcpListener;
use tonic::{Code, Request, Status};
use tonic_types::{ErrorDetails, StatusExt};

fn with_thresholds(compare: Option<f64>, liveness: Option<f64>) -> pb::CompareWithLivenessRequest {
    pb::CompareWithLivenessRequest {
        compare_min_score: compare,
        liveness_min_score: liveness,
        ..compare_request()
    }
}

/// The error of a compare, which must come back long before the 30 s the slow fakes take.
async fn quick_error(app: &TestGateway, request: pb::CompareWithLivenessRequest) -> Status {
    let started = Instant::now();
    let status = app.compare(request).await.unwrap_err();
    assert!(
        started.elapsed() < Duration::from_secs(3),
        "{:?}",
        started.elapsed()
    );
    status
}

// ---------------------------------------------------------------- success and records

#[tokio::test]
async fn a_match_returns_signed_reference_records() {
    let app = TestGateway::start().await;
    let started = chrono::Utc::now();
    let response = app.compare(with_thresholds(Some(0.8), None)).await.unwrap();

    let data = response.data.clone().unwrap();
    let comparison = data.comparison.unwrap();
    assert_eq!(comparison.client, "acme");
    assert_eq!(comparison.r#type, "compareLive");
    assert_eq!(comparison.status, "success");
    assert_eq!(comparison.search_mode, "FAST");
    for time in [
        &comparison.compared_at,
        &comparison.created_at,
        &comparison.updated_at,
    ] {
        assert!(is_rfc3339_millis_utc(time), "{time}");
    }
    assert!(
        chrono::DateTime::parse_from_rfc3339(&comparison.created_at).unwrap()
            >= started - chrono::Duration::milliseconds(1)
    );
    let result = comparison.result.unwrap();
    assert_eq!(result.score, 0.9);
    assert!((result.false_accept_rate.unwrap() - 1e-4).abs() < 1e-12);
    assert_eq!(result.gallery.len(), 1);
    assert_eq!(result.probe_face, Some(face()));

    let liveness = data.liveness.unwrap();
    assert_eq!(
        (liveness.r#type.as_str(), liveness.status.as_str()),
        ("liveness", "success")
    );
    assert_eq!(
        (liveness.os.as_str(), liveness.client.as_str()),
        ("IOS", "acme")
    );
    assert_eq!(
        liveness.liveness_min_score, 0.6,
        "default liveness threshold"
    );
    let liveness_result = liveness.result.unwrap();
    assert!(liveness_result.passed);
    assert_eq!(liveness_result.liveness_score, Some(0.97));
    assert!(liveness_result.attack.is_some());
    assert_ne!(liveness.id, comparison.id);
    assert_ne!(response.id, comparison.id);

    // The liveness service got the probe and the matcher's face as its hint.
    let sent = app.liveness.last_request().unwrap();
    assert_eq!(sent.image, probe());
    assert_eq!(sent.face_hint, Some(face()));
    assert_eq!(sent.os, "IOS");

    let signature = response.signature.clone().unwrap();
    assert_eq!(signature.algorithm, "Ed25519");
    assert_eq!(signature.canonicalization, "jcs-rfc8785");
    assert!(signature.message.contains(&signature.key_id));
    let keys = app.keys().await;
    let envelope = faceproof_signing::response_to_json(&response).unwrap();
    let verified = faceproof_signing::verify_response_json(&envelope, &keys).unwrap();
    assert_eq!(verified.key_id, signature.key_id);
    assert_eq!(verified.response_id, response.id);
}

#[tokio::test]
async fn a_tampered_score_fails_verification_naming_the_part() {
    let app = TestGateway::start().await;
    app.matcher.set(MatcherScript::score(0.8125));
    let response = app.compare(with_thresholds(Some(0.7), None)).await.unwrap();
    let keys = app.keys().await;
    let text =
        serde_json::to_string_pretty(&faceproof_signing::response_to_json(&response).unwrap())
            .unwrap();
    faceproof_signing::verify_response_text(&text, &keys).unwrap();
    // Flip one byte of the comparison score.
    let tampered = text.replacen("\"score\": 0.8125", "\"score\": 0.8126", 1);
    assert_ne!(tampered, text);
    match faceproof_signing::verify_response_text(&tampered, &keys) {
        Err(VerifyError::Tampered { parts }) => assert_eq!(parts, ["data.comparison"]),
        other => panic!("expected tampering to be named, got {other:?}"),
    }
}

// ---------------------------------------------------------------- the skip rule

#[tokio::test]
async fn liveness_is_skipped_only_below_compare_min_score() {
    let app = TestGateway::start().await;
    app.matcher.set(MatcherScript::score(0.8));

    // At the threshold: liveness runs.
    let at = app.compare(with_thresholds(Some(0.8), None)).await.unwrap();
    assert_eq!(at.data.unwrap().liveness.unwrap().status, "success");
    assert_eq!(app.liveness.calls(), 1);

    // Score just below the threshold: skipped, and why.
    let below = app
        .compare(with_thresholds(Some(0.8000001), None))
        .await
        .unwrap();
    let data = below.data.unwrap();
    let skipped = data.liveness.unwrap();
    assert_eq!(skipped.status, "skipped");
    let skipped = skipped.result.unwrap();
    assert_eq!(skipped.reason, "comparison_below_threshold");
    assert_eq!(skipped.comparison_score, Some(0.8));
    assert_eq!(skipped.liveness_score, None);
    assert!(!skipped.passed);
    assert_eq!(app.liveness.calls(), 1, "no liveness call when skipped");

    // Score just above the threshold: runs.
    let above = app
        .compare(with_thresholds(Some(0.7999999), None))
        .await
        .unwrap();
    assert_eq!(above.data.unwrap().liveness.unwrap().status, "success");
    assert_eq!(app.liveness.calls(), 2);

    // Without a threshold liveness always runs, even for a poor match.
    app.matcher.set(MatcherScript::score(0.05));
    let none = app.compare(compare_request()).await.unwrap();
    let data = none.data.unwrap();
    assert_eq!(data.liveness.unwrap().status, "success");
    assert_eq!(
        data.comparison.unwrap().result.unwrap().false_accept_rate,
        None
    );
    assert_eq!(app.liveness.calls(), 3);
}

#[tokio::test]
async fn liveness_passes_strictly_above_its_min_score() {
    let app = TestGateway::start().await;
    let passed = |response: pb::CompareWithLivenessResponse| {
        response
            .data
            .unwrap()
            .liveness
            .unwrap()
            .result
            .unwrap()
            .passed
    };
    app.liveness.set(LivenessScript::Score(0.6));
    assert!(
        !passed(app.compare(compare_request()).await.unwrap()),
        "0.6 is not above the default 0.6"
    );
    assert!(passed(
        app.compare(with_thresholds(None, Some(0.59)))
            .await
            .unwrap()
    ));
    app.liveness.set(LivenessScript::Score(0.75));
    assert!(!passed(
        app.compare(with_thresholds(None, Some(0.75)))
            .await
            .unwrap()
    ));
    assert!(passed(
        app.compare(with_thresholds(None, Some(0.7499)))
            .await
            .unwrap()
    ));
}

#[tokio::test]
async fn a_liveness_issue_fails_the_liveness_record() {
    let app = TestGateway::start().await;
    app.liveness.set(LivenessScript::Issue);
    let response = app.compare(compare_request()).await.unwrap();
    let liveness = response.data.unwrap().liveness.unwrap();
    assert_eq!(liveness.status, "failed");
    let result = liveness.result.unwrap();
    assert!(!result.passed);
    assert_eq!(
        result.issue.unwrap().reason,
        i32::from(FaceIssueReason::FaceTooSmall)
    );
}

// ---------------------------------------------------------------- validation

#[tokio::test]
async fn validation_reports_every_violation_together() {
    let app = TestGateway::start().await;
    let bad = pb::CompareWithLivenessRequest {
        os: "WINDOWS".into(),
        probe: Default::default(),
        gallery: vec![
            b"GIF89a not supported".to_vec().into(),
            b"\xFF\xD8\xFF broken jpeg".to_vec().into(),
        ],
        search_mode: "SLOW".into(),
        compare_min_score: Some(0.5),
        liveness_min_score: Some(f64::NAN),
    };
    let status = app.compare(bad).await.unwrap_err();
    assert_eq!(status.code(), Code::InvalidArgument);
    assert_eq!(reason(&status), "invalid_request");
    assert_eq!(
        violation_fields(&status),
        [
            "os",
            "search_mode",
            "compare_min_score",
            "liveness_min_score",
            "probe",
            "gallery[0]",
            "gallery[1]"
        ]
    );
    let empty_gallery = pb::CompareWithLivenessRequest {
        gallery: Vec::new(),
        ..compare_request()
    };
    let status = app.compare(empty_gallery).await.unwrap_err();
    assert_eq!(violation_fields(&status), ["gallery"]);
    assert_eq!(
        app.matcher.calls(),
        0,
        "invalid requests never reach the matcher"
    );
}

#[tokio::test]
async fn size_count_and_pixel_limits_are_enforced() {
    let probe_len = probe().len();
    let app = GatewaySetup {
        args: vec![
            "--max-gallery".into(),
            "2".into(),
            "--max-image-bytes".into(),
            (probe_len + 10).to_string(),
            "--max-image-pixels".into(),
            "100000".into(),
        ],
        ..GatewaySetup::default()
    }
    .start()
    .await;
    let too_many = pb::CompareWithLivenessRequest {
        gallery: vec![gallery_image().into(); 3],
        ..compare_request()
    };
    let status = app.compare(too_many).await.unwrap_err();
    let details = status.get_error_details();
    let violations = &details.bad_request().unwrap().field_violations;
    // The gallery is too long, and each image is above the pixel limit.
    assert_eq!(violations[1].field, "gallery");
    assert_eq!(violations[1].reason, "too_many_images");
    assert!(
        violations
            .iter()
            .any(|v| v.field == "probe" && v.reason == "image_too_large")
    );
    let big = pb::CompareWithLivenessRequest {
        gallery: vec![vec![0xFF; probe_len + 11].into()],
        ..compare_request()
    };
    let status = app.compare(big).await.unwrap_err();
    let details = status.get_error_details();
    let violation = details
        .bad_request()
        .unwrap()
        .field_violations
        .iter()
        .find(|v| v.field == "gallery[0]")
        .cloned()
        .unwrap();
    assert_eq!(violation.reason, "image_too_large");
}

#[tokio::test]
async fn an_oversized_message_is_resource_exhausted_naming_the_limit() {
    let app = GatewaySetup::with_args(&["--max-image-bytes", "1000", "--max-gallery", "1"])
        .start()
        .await;
    let status = app.compare(compare_request()).await.unwrap_err();
    assert_eq!(status.code(), Code::ResourceExhausted, "{status:?}");
    assert_eq!(reason(&status), "message_too_large");
    assert!(status.message().contains("67536"), "{}", status.message());
}

// ---------------------------------------------------------------- authentication

#[tokio::test]
async fn valid_hs256_tokens_and_api_keys_are_accepted() {
    let app = TestGateway::start().await;
    let response = app
        .compare_as(Some(&hs256_token("client-42", 60)), compare_request())
        .await
        .unwrap();
    assert_eq!(
        response.data.unwrap().comparison.unwrap().client,
        "client-42"
    );
    let response = app
        .compare_as(Some(API_KEY), compare_request())
        .await
        .unwrap();
    assert_eq!(
        response.data.unwrap().comparison.unwrap().client,
        "keyclient"
    );
}

#[tokio::test]
async fn bad_credentials_are_refused_with_a_reason() {
    let app = TestGateway::start().await;
    let none_header = URL_SAFE_NO_PAD.encode(br#"{"alg":"none","typ":"JWT"}"#);
    let claims = URL_SAFE_NO_PAD.encode(format!(
        r#"{{"sub":"acme","exp":{}}}"#,
        chrono::Utc::now().timestamp() + 3600
    ));
    let alg_none = format!("{none_header}.{claims}.");
    let cases: Vec<(Option<String>, &str)> = vec![
        (None, "missing_token"),
        (Some(hs256_token("acme", -3600)), "token_expired"),
        (
            Some(sign_token(
                jsonwebtoken::Algorithm::HS384,
                &jsonwebtoken::EncodingKey::from_secret(SECRET.as_bytes()),
                "acme",
                60,
            )),
            "algorithm_not_allowed",
        ),
        (Some(alg_none), "algorithm_not_allowed"),
        (
            Some(sign_token(
                jsonwebtoken::Algorithm::HS256,
                &jsonwebtoken::EncodingKey::from_secret(b"another-secret-that-is-long-enough!!"),
                "acme",
                60,
            )),
            "invalid_signature",
        ),
        (Some("fp_not_a_registered_key".into()), "unknown_api_key"),
        (Some("not.a.jwt".into()), "malformed_token"),
    ];
    for (token, expected) in cases {
        let status = app
            .compare_as(token.as_deref(), compare_request())
            .await
            .unwrap_err();
        assert_eq!(status.code(), Code::Unauthenticated, "{expected}");
        assert_eq!(reason(&status), expected);
        if let Some(token) = &token {
            assert!(
                !status.message().contains(token.as_str()),
                "the token is never echoed"
            );
        }
    }
    assert_eq!(app.matcher.calls(), 0);
}

use base64::engine::general_purpose::URL_SAFE_NO_PAD;

#[tokio::test]
async fn eddsa_tokens_are_accepted_when_pinned() {
    use ed25519_dalek::pkcs8::spki::der::pem::LineEnding;
    use ed25519_dalek::pkcs8::{EncodePrivateKey, EncodePublicKey};
    let key = ed25519_dalek::SigningKey::generate(&mut rand_core::OsRng);
    let private_pem = key.to_pkcs8_pem(LineEnding::LF).unwrap();
    let public_pem = key
        .verifying_key()
        .to_public_key_pem(LineEnding::LF)
        .unwrap();
    let app = GatewaySetup {
        jwt: Jwt::EdDsa { public_pem },
        ..GatewaySetup::default()
    }
    .start()
    .await;
    let token = sign_token(
        jsonwebtoken::Algorithm::EdDSA,
        &jsonwebtoken::EncodingKey::from_ed_pem(private_pem.as_bytes()).unwrap(),
        "ed-client",
        60,
    );
    let response = app
        .compare_as(Some(&token), compare_request())
        .await
        .unwrap();
    assert_eq!(
        response.data.unwrap().comparison.unwrap().client,
        "ed-client"
    );
    // An HS256 token is refused by a gateway pinned to EdDSA (no algorithm confusion).
    let status = app
        .compare_as(Some(&hs256_token("acme", 60)), compare_request())
        .await
        .unwrap_err();
    assert_eq!(reason(&status), "algorithm_not_allowed");
}

#[tokio::test]
async fn health_reflection_and_keys_need_no_token() {
    let app = TestGateway::start().await;
    let channel = app.channel().await;
    let mut health = tonic_health::pb::health_client::HealthClient::new(channel);
    let answer = within(health.check(tonic_health::pb::HealthCheckRequest {
        service: "faceproof.gateway.v1.FaceVerification".into(),
    }))
    .await
    .unwrap()
    .into_inner();
    assert_eq!(
        answer.status,
        i32::from(tonic_health::pb::health_check_response::ServingStatus::Serving)
    );
    assert!(!app.keys().await.is_empty());

    let names = reflected_services(app.channel().await).await;
    assert!(
        names
            .iter()
            .any(|name| name == "faceproof.gateway.v1.FaceVerification"),
        "{names:?}"
    );
}

// ---------------------------------------------------------------- backends

#[tokio::test]
async fn matcher_invalid_argument_passes_through_with_its_details() {
    let app = TestGateway::start().await;
    let mut details = ErrorDetails::with_bad_request_violation("gallery[0]", "no face detected");
    details.set_error_info("no_face_detected", "faceproof.matcher", HashMap::new());
    app.matcher
        .set(MatcherScript::Fail(Status::with_error_details(
            Code::InvalidArgument,
            "no usable face in gallery[0]",
            details,
        )));
    let status = app.compare(compare_request()).await.unwrap_err();
    assert_eq!(status.code(), Code::InvalidArgument);
    assert_eq!(status.message(), "no usable face in gallery[0]");
    assert_eq!(reason(&status), "no_face_detected");
    assert_eq!(violation_fields(&status), ["gallery[0]"]);
    assert_eq!(app.liveness.calls(), 0);

    app.matcher
        .set(MatcherScript::Fail(Status::resource_exhausted(
            "inference queue is full",
        )));
    let status = app.compare(compare_request()).await.unwrap_err();
    assert_eq!(status.code(), Code::ResourceExhausted);
    assert_eq!(status.message(), "inference queue is full");
}

#[tokio::test]
async fn a_slow_matcher_gives_deadline_exceeded_quickly() {
    let app = GatewaySetup::with_args(&["--deadline-fast-ms", "300"])
        .start()
        .await;
    app.matcher
        .set(MatcherScript::Slow(Duration::from_secs(30)));
    let status = quick_error(&app, compare_request()).await;
    assert_eq!(status.code(), Code::DeadlineExceeded);
    assert_eq!(reason(&status), "matcher_deadline_exceeded");
    assert!(status.message().contains("matcher"), "{}", status.message());
}

#[tokio::test]
async fn a_slow_liveness_gives_deadline_exceeded_naming_it() {
    let app = GatewaySetup::with_args(&["--deadline-accurate-ms", "400"])
        .start()
        .await;
    app.liveness
        .set(LivenessScript::Slow(Duration::from_secs(30)));
    let accurate = pb::CompareWithLivenessRequest {
        search_mode: "ACCURATE".into(),
        ..compare_request()
    };
    let status = quick_error(&app, accurate).await;
    assert_eq!(status.code(), Code::DeadlineExceeded);
    assert_eq!(reason(&status), "liveness_deadline_exceeded");
}

#[tokio::test]
async fn a_down_backend_gives_unavailable_naming_it() {
    let refusing = RefusingAddress::new().unwrap();
    let app = GatewaySetup {
        matcher_url: Some(refusing.url()),
        ..GatewaySetup::default()
    }
    .start()
    .await;
    let status = quick_error(&app, compare_request()).await;
    assert_eq!(status.code(), Code::Unavailable, "{status:?}");
    assert_eq!(reason(&status), "matcher_unavailable");
    let info = status.get_error_details().error_info().cloned().unwrap();
    assert_eq!(
        info.metadata.get("service").map(String::as_str),
        Some("matcher")
    );

    let app = GatewaySetup {
        liveness_url: Some(refusing.url()),
        ..GatewaySetup::default()
    }
    .start()
    .await;
    let status = app.compare(compare_request()).await.unwrap_err();
    assert_eq!(status.code(), Code::Unavailable);
    assert_eq!(reason(&status), "liveness_unavailable");
}

#[tokio::test]
async fn the_rate_limit_answers_resource_exhausted_with_retry_info() {
    let app =
        GatewaySetup::with_args(&["--rate-limit-per-second", "0.01", "--rate-limit-burst", "2"])
            .start()
            .await;
    app.compare(compare_request()).await.unwrap();
    app.compare(compare_request()).await.unwrap();
    let status = app.compare(compare_request()).await.unwrap_err();
    assert_eq!(status.code(), Code::ResourceExhausted);
    assert_eq!(reason(&status), "rate_limited");
    let delay = retry_delay(&status).unwrap();
    assert!(
        delay > Duration::from_secs(10) && delay <= Duration::from_secs(100),
        "{delay:?}"
    );
    // Another client has its own bucket.
    app.compare_as(Some(&hs256_token("other", 60)), compare_request())
        .await
        .unwrap();
}

// ---------------------------------------------------------------- REST

fn rest_body() -> Value {
    json!({
        "os": "ANDROID",
        "probe": STANDARD.encode(probe()),
        "gallery": [format!("data:image/jpeg;base64,{}", STANDARD.encode(gallery_image()))],
        "search_mode": "ACCURATE",
        "compare_min_score": 0.8,
    })
}

#[tokio::test]
async fn rest_success_is_the_reference_envelope_and_verifies() {
    let app = TestGateway::start().await;
    let token = hs256_token("rest-client", 60);
    let answer = app
        .http(
            "POST",
            COMPARE_PATH,
            Some(&token),
            rest_body().to_string().as_bytes(),
        )
        .await;
    assert_eq!(answer.status, 200, "{}", answer.body);
    let body = &answer.body;
    let comparison = &body["data"]["comparison"];
    assert_eq!(comparison["client"], "rest-client");
    assert_eq!(comparison["type"], "compareLive");
    assert_eq!(comparison["search_mode"], "ACCURATE");
    assert_eq!(comparison["status"], "success");
    assert_eq!(comparison["result"]["score"], 0.9);
    assert!(
        comparison["comparedAt"]
            .as_str()
            .is_some_and(is_rfc3339_millis_utc)
    );
    assert!(comparison["createdAt"].is_string() && comparison["updatedAt"].is_string());
    let liveness = &body["data"]["liveness"];
    assert_eq!(liveness["type"], "liveness");
    assert_eq!(liveness["os"], "ANDROID");
    assert_eq!(liveness["liveness_min_score"], 0.6);
    assert_eq!(liveness["result"]["passed"], true);
    assert_eq!(liveness["result"]["min_score"], 0.6);
    assert_eq!(liveness["result"]["liveness_score"], 0.97);
    assert!(body["signature"]["dateTime"].is_string() && body["signature"]["message"].is_string());

    let keys = app.http("GET", "/v2/signing-keys", None, b"").await;
    assert_eq!(keys.status, 200);
    let keys = PublicKeySet::from_keys_json(&keys.body.to_string()).unwrap();
    faceproof_signing::verify_response_text(&body.to_string(), &keys).unwrap();
}

#[tokio::test]
async fn rest_errors_use_the_reference_statuses() {
    let app = GatewaySetup::with_args(&["--max-image-bytes", "400000", "--max-gallery", "1"])
        .start()
        .await;
    let body = rest_body().to_string();
    let token = hs256_token("acme", 60);

    let missing = app.http("POST", COMPARE_PATH, None, body.as_bytes()).await;
    assert_eq!(missing.status, 401);
    assert_eq!(missing.body["status"], 401);
    assert_eq!(missing.body["reason"], "missing_token");
    assert_eq!(missing.body["code"], "UNAUTHORIZED");
    assert!(missing.body["message"].is_string());
    let expired = app
        .http(
            "POST",
            COMPARE_PATH,
            Some(&hs256_token("acme", -3600)),
            body.as_bytes(),
        )
        .await;
    // The reference answers an expired token with 403 FORBIDDEN.
    assert_eq!(
        (
            expired.status,
            expired.body["reason"].as_str(),
            expired.body["code"].as_str()
        ),
        (403, Some("token_expired"), Some("FORBIDDEN"))
    );

    let mut invalid = rest_body();
    invalid["os"] = json!("WINDOWS");
    invalid["liveness_min_score"] = json!(3);
    let answer = app
        .http(
            "POST",
            COMPARE_PATH,
            Some(&token),
            invalid.to_string().as_bytes(),
        )
        .await;
    assert_eq!(answer.status, 409, "{}", answer.body);
    assert_eq!(answer.body["status"], 409);
    assert_eq!(answer.body["code"], "InvalidParameter");
    let fields: Vec<&str> = answer.body["violations"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v["field"].as_str().unwrap())
        .collect();
    assert_eq!(fields, ["os", "liveness_min_score"]);

    let mut undecodable = rest_body();
    undecodable["gallery"] = json!(["%%% not base64 %%%"]);
    let answer = app
        .http(
            "POST",
            COMPARE_PATH,
            Some(&token),
            undecodable.to_string().as_bytes(),
        )
        .await;
    assert_eq!(answer.status, 412, "{}", answer.body);
    assert_eq!(answer.body["code"], "ERROR");
    assert_eq!(answer.body["violations"][0]["field"], "gallery[0]");

    let answer = app
        .http("POST", COMPARE_PATH, Some(&token), b"{\"os\": ")
        .await;
    assert_eq!(answer.status, 400);
    assert_eq!(answer.body["reason"], "malformed_request");

    let huge = vec![b'x'; 2_000_000];
    let answer = app.http("POST", COMPARE_PATH, Some(&token), &huge).await;
    assert_eq!(answer.status, 413, "{}", answer.body);
    assert_eq!(answer.body["status"], 413);

    app.matcher.set(MatcherScript::Fail(Status::unavailable(
        "connection refused",
    )));
    let answer = app
        .http("POST", COMPARE_PATH, Some(&token), body.as_bytes())
        .await;
    assert_eq!(
        (answer.status, answer.body["reason"].as_str()),
        (503, Some("matcher_unavailable"))
    );
}

#[tokio::test]
async fn rest_rate_limit_is_429_with_retry_after() {
    let app =
        GatewaySetup::with_args(&["--rate-limit-per-second", "0.5", "--rate-limit-burst", "1"])
            .start()
            .await;
    let token = hs256_token("acme", 60);
    let body = rest_body().to_string();
    assert_eq!(
        app.http("POST", COMPARE_PATH, Some(&token), body.as_bytes())
            .await
            .status,
        200
    );
    let limited = app
        .http("POST", COMPARE_PATH, Some(&token), body.as_bytes())
        .await;
    assert_eq!(limited.status, 429);
    assert_eq!(limited.body["reason"], "rate_limited");
    assert!(
        limited.header("retry-after") == Some("2"),
        "{:?}",
        limited.headers
    );
}

// ---------------------------------------------------------------- start and stop

#[tokio::test]
async fn the_gateway_refuses_to_start_without_credentials() {
    let args = [
        "faceproof-gateway",
        "--signing-key-file",
        "/nonexistent.pem",
    ];
    let config = GatewayCli::try_parse_from(args).unwrap().config;
    let grpc = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let http = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let error = Application::build(config, grpc, http).err().unwrap();
    assert!(error.to_string().contains("--insecure-dev"), "{error}");
}

#[tokio::test]
async fn insecure_dev_generates_then_reuses_its_token_and_key() {
    let dir = tempfile::tempdir().unwrap();
    let matcher_url = serve(FakeMatcher::default().server()).await;
    let liveness_url = serve(FakeLiveness::default().server()).await;
    let data_dir = dir.path().join("data").display().to_string();
    let mut key_ids = Vec::new();
    for _ in 0..2 {
        let config = GatewayCli::try_parse_from([
            "faceproof-gateway",
            "--insecure-dev",
            "--data-dir",
            &data_dir,
            "--matcher-url",
            &matcher_url,
            "--liveness-url",
            &liveness_url,
        ])
        .unwrap()
        .config;
        let grpc = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let http = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let application = Application::build(config, grpc, http).unwrap();
        let url = format!("http://{}", application.grpc_addr());
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let running = tokio::spawn(application.run_until_stopped(async move {
            let _ = stopped.await;
        }));
        let token = std::fs::read_to_string(dir.path().join("data/dev-token")).unwrap();
        let mut client = within(FaceVerificationClient::connect(url)).await.unwrap();
        let mut call = Request::new(compare_request());
        authorize(&mut call, token.trim());
        let response = within(client.compare_with_liveness(call))
            .await
            .unwrap()
            .into_inner();
        assert_eq!(response.data.unwrap().comparison.unwrap().client, "dev");
        key_ids.push(response.signature.unwrap().key_id);
        drop(client);
        stop.send(()).unwrap();
        within(running).await.unwrap().unwrap();
    }
    assert_eq!(
        key_ids[0], key_ids[1],
        "the dev signing key is reused across restarts"
    );
}
