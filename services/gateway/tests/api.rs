//! The gateway's integration tests: the real gRPC and REST front ends against in-process fake
//! matcher and liveness servers with scripted answers.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::HashMap;
use std::future::Future;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;
use clap::Parser as _;
use faceproof_gateway::auth::hash_api_key;
use faceproof_gateway::{Application, GatewayCli};
use faceproof_proto::common::v1::{BoundingBox, Face, FaceIssue, FaceIssueReason, Point};
use faceproof_proto::gateway::v1 as pb;
use faceproof_proto::gateway::v1::face_verification_client::FaceVerificationClient;
use faceproof_proto::liveness::v1 as liveness_pb;
use faceproof_proto::liveness::v1::liveness_server::{Liveness, LivenessServer};
use faceproof_proto::matcher::v1 as matcher_pb;
use faceproof_proto::matcher::v1::matcher_server::{Matcher, MatcherServer};
use faceproof_signing::{PublicKeySet, Signer, VerifyError};
use serde_json::{Value, json};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;
use tokio_stream::wrappers::TcpListenerStream;
use tonic::metadata::MetadataValue;
use tonic::transport::Channel;
use tonic::{Code, Request, Response, Status};
use tonic_types::{ErrorDetails, StatusExt};

const WAIT: Duration = Duration::from_secs(15);
const SECRET: &str = "test-secret-that-is-long-enough-for-hs256!";
const API_KEY: &str = "fp_test_api_key";

/// Fails the test instead of hanging when a network await does not finish.
async fn within<T>(future: impl Future<Output = T>) -> T {
    tokio::time::timeout(WAIT, future)
        .await
        .expect("timed out waiting for the network")
}

fn fixture(name: &str) -> Vec<u8> {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../../tests/fixtures")
        .join(name);
    std::fs::read(&path).unwrap_or_else(|error| panic!("{}: {error}", path.display()))
}

fn probe() -> Vec<u8> {
    fixture("obama_2012_official_portrait.jpg")
}

fn gallery_image() -> Vec<u8> {
    fixture("obama_2009_congress.jpg")
}

fn face() -> Face {
    Face {
        r#box: Some(BoundingBox {
            x: 120.5,
            y: 80.25,
            width: 210.0,
            height: 260.0,
        }),
        landmarks: (0..5)
            .map(|i| Point {
                x: 150.0 + 10.0 * i as f32,
                y: 170.5,
            })
            .collect(),
        detection_score: 0.97,
    }
}

// ---------------------------------------------------------------- fakes

#[derive(Clone)]
enum MatcherScript {
    Score(f64),
    Fail(Status),
    Slow(Duration),
}

#[derive(Clone)]
struct FakeMatcher {
    script: Arc<Mutex<MatcherScript>>,
    calls: Arc<AtomicUsize>,
}

#[tonic::async_trait]
impl Matcher for FakeMatcher {
    async fn compare(
        &self,
        request: Request<matcher_pb::CompareRequest>,
    ) -> Result<Response<matcher_pb::CompareResponse>, Status> {
        self.calls.fetch_add(1, Ordering::SeqCst);
        let script = self.script.lock().unwrap().clone();
        let score = match script {
            MatcherScript::Score(score) => score,
            MatcherScript::Fail(status) => return Err(status),
            MatcherScript::Slow(delay) => {
                // The only sleep: this fake simulates a slow model.
                tokio::time::sleep(delay).await;
                0.9
            }
        };
        let request = request.into_inner();
        let gallery = (0..request.gallery.len())
            .map(|index| matcher_pb::GalleryItemResult {
                index: index as u32,
                outcome: Some(matcher_pb::gallery_item_result::Outcome::Match(
                    matcher_pb::Match {
                        face: Some(face()),
                        similarity: 0.5,
                        score: if index == 0 { score } else { score / 2.0 },
                        near_identical: false,
                    },
                )),
            })
            .collect();
        Ok(Response::new(matcher_pb::CompareResponse {
            probe_face: Some(face()),
            gallery,
            best_index: 0,
            best_score: score,
            calibration: "test".into(),
        }))
    }
}

#[derive(Clone)]
enum LivenessScript {
    Score(f64),
    Issue,
    Slow(Duration),
}

#[derive(Clone)]
struct FakeLiveness {
    script: Arc<Mutex<LivenessScript>>,
    calls: Arc<AtomicUsize>,
    last: Arc<Mutex<Option<liveness_pb::CheckRequest>>>,
}

#[tonic::async_trait]
impl Liveness for FakeLiveness {
    async fn check(
        &self,
        request: Request<liveness_pb::CheckRequest>,
    ) -> Result<Response<liveness_pb::CheckResponse>, Status> {
        self.calls.fetch_add(1, Ordering::SeqCst);
        *self.last.lock().unwrap() = Some(request.into_inner());
        let script = self.script.lock().unwrap().clone();
        let outcome = match script {
            LivenessScript::Score(score) => {
                liveness_pb::check_response::Outcome::Score(liveness_pb::LivenessScore {
                    liveness_score: score,
                    attack: Some(liveness_pb::AttackEvidence {
                        print_probability: (1.0 - score) * 0.75,
                        screen_probability: (1.0 - score) * 0.25,
                    }),
                    models: Vec::new(),
                })
            }
            LivenessScript::Issue => liveness_pb::check_response::Outcome::Issue(FaceIssue {
                reason: FaceIssueReason::FaceTooSmall.into(),
                field: "probe".into(),
                detail: "face is 31 px wide, minimum is 48".into(),
            }),
            LivenessScript::Slow(delay) => {
                tokio::time::sleep(delay).await;
                return Err(Status::internal("too late"));
            }
        };
        Ok(Response::new(liveness_pb::CheckResponse {
            outcome: Some(outcome),
            face: Some(face()),
        }))
    }
}

async fn serve_fake<S>(service: S) -> String
where
    S: tower::Service<
            http::Request<tonic::body::Body>,
            Response = http::Response<tonic::body::Body>,
            Error = std::convert::Infallible,
        > + tonic::server::NamedService
        + Clone
        + Send
        + Sync
        + 'static,
    S::Future: Send + 'static,
{
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let address = listener.local_addr().unwrap();
    tokio::spawn(
        tonic::transport::Server::builder()
            .add_service(service)
            .serve_with_incoming(TcpListenerStream::new(listener)),
    );
    format!("http://{address}")
}

/// A URL where nothing listens: a port that was just bound and released.
async fn dead_url() -> String {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let address = listener.local_addr().unwrap();
    drop(listener);
    format!("http://{address}")
}

// ---------------------------------------------------------------- the app

enum JwtSetup {
    Hs256,
    EdDsa { public_pem: String },
}

struct Options {
    jwt: JwtSetup,
    matcher_url: Option<String>,
    liveness_url: Option<String>,
    args: Vec<String>,
}

impl Default for Options {
    fn default() -> Self {
        Self {
            jwt: JwtSetup::Hs256,
            matcher_url: None,
            liveness_url: None,
            args: Vec::new(),
        }
    }
}

struct TestApp {
    grpc_url: String,
    http_addr: SocketAddr,
    matcher: FakeMatcher,
    liveness: FakeLiveness,
    _dir: tempfile::TempDir,
}

async fn spawn_app(options: Options) -> TestApp {
    let matcher = FakeMatcher {
        script: Arc::new(Mutex::new(MatcherScript::Score(0.9))),
        calls: Arc::default(),
    };
    let liveness = FakeLiveness {
        script: Arc::new(Mutex::new(LivenessScript::Score(0.97))),
        calls: Arc::default(),
        last: Arc::default(),
    };
    let matcher_url = match options.matcher_url {
        Some(url) => url,
        None => serve_fake(MatcherServer::new(matcher.clone())).await,
    };
    let liveness_url = match options.liveness_url {
        Some(url) => url,
        None => serve_fake(LivenessServer::new(liveness.clone())).await,
    };
    let dir = tempfile::tempdir().unwrap();
    let path = |name: &str| dir.path().join(name).display().to_string();
    std::fs::write(
        path("api-keys"),
        format!("keyclient {}\n", hash_api_key(API_KEY)),
    )
    .unwrap();
    let signer = Signer::generate();
    std::fs::write(path("signing.pem"), signer.to_pkcs8_pem().unwrap()).unwrap();
    let mut args: Vec<String> = vec![
        "faceproof-gateway".into(),
        "--matcher-url".into(),
        matcher_url,
        "--liveness-url".into(),
        liveness_url,
        "--api-keys-file".into(),
        path("api-keys"),
        "--signing-key-file".into(),
        path("signing.pem"),
        "--rate-limit-per-second".into(),
        "1000".into(),
        "--rate-limit-burst".into(),
        "1000".into(),
        "--data-dir".into(),
        path("data"),
    ];
    match options.jwt {
        JwtSetup::Hs256 => {
            std::fs::write(path("secret"), format!("{SECRET}\n")).unwrap();
            args.extend([
                "--jwt-algorithm".into(),
                "HS256".into(),
                "--jwt-secret-file".into(),
                path("secret"),
            ]);
        }
        JwtSetup::EdDsa { public_pem } => {
            std::fs::write(path("jwt.pub.pem"), public_pem).unwrap();
            args.extend([
                "--jwt-algorithm".into(),
                "EdDSA".into(),
                "--jwt-public-key-file".into(),
                path("jwt.pub.pem"),
            ]);
        }
    }
    args.extend(options.args);
    let config = GatewayCli::try_parse_from(args).unwrap().config;
    let grpc_listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let http_listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let application = Application::build(config, grpc_listener, http_listener).unwrap();
    let grpc_url = format!("http://{}", application.grpc_addr());
    let http_addr = application.http_addr();
    tokio::spawn(application.run_until_stopped(std::future::pending()));
    TestApp {
        grpc_url,
        http_addr,
        matcher,
        liveness,
        _dir: dir,
    }
}

impl TestApp {
    async fn client(&self) -> FaceVerificationClient<Channel> {
        within(FaceVerificationClient::connect(self.grpc_url.clone()))
            .await
            .unwrap()
    }

    async fn compare_as(
        &self,
        token: Option<&str>,
        request: pb::CompareWithLivenessRequest,
    ) -> Result<pb::CompareWithLivenessResponse, Status> {
        let mut request = Request::new(request);
        if let Some(token) = token {
            request.metadata_mut().insert(
                "authorization",
                MetadataValue::try_from(format!("Bearer {token}")).unwrap(),
            );
        }
        within(self.client().await.compare_with_liveness(request))
            .await
            .map(Response::into_inner)
    }

    async fn compare(
        &self,
        request: pb::CompareWithLivenessRequest,
    ) -> Result<pb::CompareWithLivenessResponse, Status> {
        self.compare_as(Some(&hs256_token("acme", 3600)), request)
            .await
    }

    async fn keys(&self) -> PublicKeySet {
        let keys = within(
            self.client()
                .await
                .get_signing_keys(pb::GetSigningKeysRequest {}),
        )
        .await
        .unwrap()
        .into_inner();
        PublicKeySet::from_proto(&keys).unwrap()
    }

    fn set_matcher(&self, script: MatcherScript) {
        *self.matcher.script.lock().unwrap() = script;
    }

    fn set_liveness(&self, script: LivenessScript) {
        *self.liveness.script.lock().unwrap() = script;
    }

    fn liveness_calls(&self) -> usize {
        self.liveness.calls.load(Ordering::SeqCst)
    }
}

fn request() -> pb::CompareWithLivenessRequest {
    pb::CompareWithLivenessRequest {
        os: "IOS".into(),
        probe: probe().into(),
        gallery: vec![gallery_image().into()],
        search_mode: "FAST".into(),
        compare_min_score: None,
        liveness_min_score: None,
    }
}

fn with_thresholds(compare: Option<f64>, liveness: Option<f64>) -> pb::CompareWithLivenessRequest {
    pb::CompareWithLivenessRequest {
        compare_min_score: compare,
        liveness_min_score: liveness,
        ..request()
    }
}

#[derive(serde::Serialize)]
struct Claims<'a> {
    sub: &'a str,
    exp: i64,
}

fn expiry(offset_s: i64) -> i64 {
    chrono::Utc::now().timestamp() + offset_s
}

fn hs256_token(sub: &str, expires_in_s: i64) -> String {
    sign_token(
        jsonwebtoken::Algorithm::HS256,
        SECRET.as_bytes(),
        sub,
        expires_in_s,
    )
}

fn sign_token(
    algorithm: jsonwebtoken::Algorithm,
    secret: &[u8],
    sub: &str,
    expires_in_s: i64,
) -> String {
    jsonwebtoken::encode(
        &jsonwebtoken::Header::new(algorithm),
        &Claims {
            sub,
            exp: expiry(expires_in_s),
        },
        &jsonwebtoken::EncodingKey::from_secret(secret),
    )
    .unwrap()
}

fn reason(status: &Status) -> String {
    status
        .get_error_details()
        .error_info()
        .map(|info| info.reason.clone())
        .unwrap_or_default()
}

fn violation_fields(status: &Status) -> Vec<String> {
    status
        .get_error_details()
        .bad_request()
        .map(|bad| {
            bad.field_violations
                .iter()
                .map(|v| v.field.clone())
                .collect()
        })
        .unwrap_or_default()
}

fn is_rfc3339_millis_utc(text: &str) -> bool {
    text.len() == 24
        && text.ends_with('Z')
        && text.as_bytes()[10] == b'T'
        && text.as_bytes()[19] == b'.'
        && chrono::DateTime::parse_from_rfc3339(text).is_ok()
}

// ---------------------------------------------------------------- success and records

#[tokio::test]
async fn a_match_returns_signed_reference_records() {
    let app = spawn_app(Options::default()).await;
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
    let sent = app.liveness.last.lock().unwrap().clone().unwrap();
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
    let app = spawn_app(Options::default()).await;
    app.set_matcher(MatcherScript::Score(0.8125));
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
    let app = spawn_app(Options::default()).await;
    app.set_matcher(MatcherScript::Score(0.8));

    // At the threshold: liveness runs.
    let at = app.compare(with_thresholds(Some(0.8), None)).await.unwrap();
    assert_eq!(at.data.unwrap().liveness.unwrap().status, "success");
    assert_eq!(app.liveness_calls(), 1);

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
    assert_eq!(app.liveness_calls(), 1, "no liveness call when skipped");

    // Score just above the threshold: runs.
    let above = app
        .compare(with_thresholds(Some(0.7999999), None))
        .await
        .unwrap();
    assert_eq!(above.data.unwrap().liveness.unwrap().status, "success");
    assert_eq!(app.liveness_calls(), 2);

    // Without a threshold liveness always runs, even for a poor match.
    app.set_matcher(MatcherScript::Score(0.05));
    let none = app.compare(request()).await.unwrap();
    let data = none.data.unwrap();
    assert_eq!(data.liveness.unwrap().status, "success");
    assert_eq!(
        data.comparison.unwrap().result.unwrap().false_accept_rate,
        None
    );
    assert_eq!(app.liveness_calls(), 3);
}

#[tokio::test]
async fn liveness_passes_strictly_above_its_min_score() {
    let app = spawn_app(Options::default()).await;
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
    app.set_liveness(LivenessScript::Score(0.6));
    assert!(
        !passed(app.compare(request()).await.unwrap()),
        "0.6 is not above the default 0.6"
    );
    assert!(passed(
        app.compare(with_thresholds(None, Some(0.59)))
            .await
            .unwrap()
    ));
    app.set_liveness(LivenessScript::Score(0.75));
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
    let app = spawn_app(Options::default()).await;
    app.set_liveness(LivenessScript::Issue);
    let response = app.compare(request()).await.unwrap();
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
    let app = spawn_app(Options::default()).await;
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
        ..request()
    };
    let status = app.compare(empty_gallery).await.unwrap_err();
    assert_eq!(violation_fields(&status), ["gallery"]);
    assert_eq!(
        app.matcher.calls.load(Ordering::SeqCst),
        0,
        "invalid requests never reach the matcher"
    );
}

#[tokio::test]
async fn size_count_and_pixel_limits_are_enforced() {
    let probe_len = probe().len();
    let app = spawn_app(Options {
        args: vec![
            "--max-gallery".into(),
            "2".into(),
            "--max-image-bytes".into(),
            (probe_len + 10).to_string(),
            "--max-image-pixels".into(),
            "100000".into(),
        ],
        ..Options::default()
    })
    .await;
    let too_many = pb::CompareWithLivenessRequest {
        gallery: vec![gallery_image().into(); 3],
        ..request()
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
        ..request()
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
    let app = spawn_app(Options {
        args: vec![
            "--max-image-bytes".into(),
            "1000".into(),
            "--max-gallery".into(),
            "1".into(),
        ],
        ..Options::default()
    })
    .await;
    let status = app.compare(request()).await.unwrap_err();
    assert_eq!(status.code(), Code::ResourceExhausted, "{status:?}");
    assert_eq!(reason(&status), "message_too_large");
    assert!(status.message().contains("67536"), "{}", status.message());
}

// ---------------------------------------------------------------- authentication

#[tokio::test]
async fn valid_hs256_tokens_and_api_keys_are_accepted() {
    let app = spawn_app(Options::default()).await;
    let response = app
        .compare_as(Some(&hs256_token("client-42", 60)), request())
        .await
        .unwrap();
    assert_eq!(
        response.data.unwrap().comparison.unwrap().client,
        "client-42"
    );
    let response = app.compare_as(Some(API_KEY), request()).await.unwrap();
    assert_eq!(
        response.data.unwrap().comparison.unwrap().client,
        "keyclient"
    );
}

#[tokio::test]
async fn bad_credentials_are_refused_with_a_reason() {
    let app = spawn_app(Options::default()).await;
    let none_header = URL_SAFE_NO_PAD.encode(br#"{"alg":"none","typ":"JWT"}"#);
    let claims = URL_SAFE_NO_PAD.encode(format!(r#"{{"sub":"acme","exp":{}}}"#, expiry(3600)));
    let alg_none = format!("{none_header}.{claims}.");
    let cases: Vec<(Option<String>, &str)> = vec![
        (None, "missing_token"),
        (Some(hs256_token("acme", -3600)), "token_expired"),
        (
            Some(sign_token(
                jsonwebtoken::Algorithm::HS384,
                SECRET.as_bytes(),
                "acme",
                60,
            )),
            "algorithm_not_allowed",
        ),
        (Some(alg_none), "algorithm_not_allowed"),
        (
            Some(sign_token(
                jsonwebtoken::Algorithm::HS256,
                b"another-secret-that-is-long-enough!!",
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
            .compare_as(token.as_deref(), request())
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
    assert_eq!(app.matcher.calls.load(Ordering::SeqCst), 0);
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
    let app = spawn_app(Options {
        jwt: JwtSetup::EdDsa { public_pem },
        ..Options::default()
    })
    .await;
    let token = jsonwebtoken::encode(
        &jsonwebtoken::Header::new(jsonwebtoken::Algorithm::EdDSA),
        &Claims {
            sub: "ed-client",
            exp: expiry(60),
        },
        &jsonwebtoken::EncodingKey::from_ed_pem(private_pem.as_bytes()).unwrap(),
    )
    .unwrap();
    let response = app.compare_as(Some(&token), request()).await.unwrap();
    assert_eq!(
        response.data.unwrap().comparison.unwrap().client,
        "ed-client"
    );
    // An HS256 token is refused by a gateway pinned to EdDSA (no algorithm confusion).
    let status = app
        .compare_as(Some(&hs256_token("acme", 60)), request())
        .await
        .unwrap_err();
    assert_eq!(reason(&status), "algorithm_not_allowed");
}

#[tokio::test]
async fn health_reflection_and_keys_need_no_token() {
    let app = spawn_app(Options::default()).await;
    let channel = within(
        Channel::from_shared(app.grpc_url.clone())
            .unwrap()
            .connect(),
    )
    .await
    .unwrap();
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

    use tonic_reflection::pb::v1::server_reflection_client::ServerReflectionClient;
    use tonic_reflection::pb::v1::server_reflection_request::MessageRequest;
    use tonic_reflection::pb::v1::server_reflection_response::MessageResponse;
    let mut reflection = ServerReflectionClient::new(channel_for(&app).await);
    let list = tonic_reflection::pb::v1::ServerReflectionRequest {
        host: String::new(),
        message_request: Some(MessageRequest::ListServices(String::new())),
    };
    let mut answers = within(reflection.server_reflection_info(tokio_stream::iter([list])))
        .await
        .unwrap()
        .into_inner();
    let answer = within(answers.message()).await.unwrap().unwrap();
    let Some(MessageResponse::ListServicesResponse(services)) = answer.message_response else {
        panic!("expected a service list");
    };
    let names: Vec<String> = services
        .service
        .into_iter()
        .map(|service| service.name)
        .collect();
    assert!(
        names
            .iter()
            .any(|name| name == "faceproof.gateway.v1.FaceVerification"),
        "{names:?}"
    );
}

async fn channel_for(app: &TestApp) -> Channel {
    within(
        Channel::from_shared(app.grpc_url.clone())
            .unwrap()
            .connect(),
    )
    .await
    .unwrap()
}

// ---------------------------------------------------------------- backends

#[tokio::test]
async fn matcher_invalid_argument_passes_through_with_its_details() {
    let app = spawn_app(Options::default()).await;
    let mut details = ErrorDetails::with_bad_request_violation("gallery[0]", "no face detected");
    details.set_error_info("no_face_detected", "faceproof.matcher", HashMap::new());
    app.set_matcher(MatcherScript::Fail(Status::with_error_details(
        Code::InvalidArgument,
        "no usable face in gallery[0]",
        details,
    )));
    let status = app.compare(request()).await.unwrap_err();
    assert_eq!(status.code(), Code::InvalidArgument);
    assert_eq!(status.message(), "no usable face in gallery[0]");
    assert_eq!(reason(&status), "no_face_detected");
    assert_eq!(violation_fields(&status), ["gallery[0]"]);
    assert_eq!(app.liveness_calls(), 0);

    app.set_matcher(MatcherScript::Fail(Status::resource_exhausted(
        "inference queue is full",
    )));
    let status = app.compare(request()).await.unwrap_err();
    assert_eq!(status.code(), Code::ResourceExhausted);
    assert_eq!(status.message(), "inference queue is full");
}

#[tokio::test]
async fn a_slow_matcher_gives_deadline_exceeded_quickly() {
    let app = spawn_app(Options {
        args: vec!["--deadline-fast-ms".into(), "300".into()],
        ..Options::default()
    })
    .await;
    app.set_matcher(MatcherScript::Slow(Duration::from_secs(30)));
    let started = Instant::now();
    let status = app.compare(request()).await.unwrap_err();
    assert!(
        started.elapsed() < Duration::from_secs(3),
        "{:?}",
        started.elapsed()
    );
    assert_eq!(status.code(), Code::DeadlineExceeded);
    assert_eq!(reason(&status), "matcher_deadline_exceeded");
    assert!(status.message().contains("matcher"), "{}", status.message());
}

#[tokio::test]
async fn a_slow_liveness_gives_deadline_exceeded_naming_it() {
    let app = spawn_app(Options {
        args: vec!["--deadline-accurate-ms".into(), "400".into()],
        ..Options::default()
    })
    .await;
    app.set_liveness(LivenessScript::Slow(Duration::from_secs(30)));
    let started = Instant::now();
    let accurate = pb::CompareWithLivenessRequest {
        search_mode: "ACCURATE".into(),
        ..request()
    };
    let status = app.compare(accurate).await.unwrap_err();
    assert!(
        started.elapsed() < Duration::from_secs(3),
        "{:?}",
        started.elapsed()
    );
    assert_eq!(status.code(), Code::DeadlineExceeded);
    assert_eq!(reason(&status), "liveness_deadline_exceeded");
}

#[tokio::test]
async fn a_down_backend_gives_unavailable_naming_it() {
    let app = spawn_app(Options {
        matcher_url: Some(dead_url().await),
        ..Options::default()
    })
    .await;
    let started = Instant::now();
    let status = app.compare(request()).await.unwrap_err();
    assert!(
        started.elapsed() < Duration::from_secs(3),
        "{:?}",
        started.elapsed()
    );
    assert_eq!(status.code(), Code::Unavailable, "{status:?}");
    assert_eq!(reason(&status), "matcher_unavailable");
    let info = status.get_error_details().error_info().cloned().unwrap();
    assert_eq!(
        info.metadata.get("service").map(String::as_str),
        Some("matcher")
    );

    let app = spawn_app(Options {
        liveness_url: Some(dead_url().await),
        ..Options::default()
    })
    .await;
    let status = app.compare(request()).await.unwrap_err();
    assert_eq!(status.code(), Code::Unavailable);
    assert_eq!(reason(&status), "liveness_unavailable");
}

#[tokio::test]
async fn the_rate_limit_answers_resource_exhausted_with_retry_info() {
    let app = spawn_app(Options {
        args: vec![
            "--rate-limit-per-second".into(),
            "0.01".into(),
            "--rate-limit-burst".into(),
            "2".into(),
        ],
        ..Options::default()
    })
    .await;
    app.compare(request()).await.unwrap();
    app.compare(request()).await.unwrap();
    let status = app.compare(request()).await.unwrap_err();
    assert_eq!(status.code(), Code::ResourceExhausted);
    assert_eq!(reason(&status), "rate_limited");
    let delay = status
        .get_error_details()
        .retry_info()
        .and_then(|info| info.retry_delay)
        .unwrap();
    assert!(
        delay > Duration::from_secs(10) && delay <= Duration::from_secs(100),
        "{delay:?}"
    );
    // Another client has its own bucket.
    app.compare_as(Some(&hs256_token("other", 60)), request())
        .await
        .unwrap();
}

// ---------------------------------------------------------------- REST

struct HttpAnswer {
    status: u16,
    headers: String,
    body: Value,
}

/// A minimal HTTP/1.1 exchange (`Connection: close`), enough for the REST tests.
async fn http(
    addr: SocketAddr,
    method: &str,
    path: &str,
    token: Option<&str>,
    body: &[u8],
) -> HttpAnswer {
    let stream = within(tokio::net::TcpStream::connect(addr)).await.unwrap();
    let (mut reader, mut writer) = stream.into_split();
    let mut head = format!(
        "{method} {path} HTTP/1.1\r\nhost: {addr}\r\nconnection: close\r\ncontent-type: application/json\r\ncontent-length: {}\r\n",
        body.len()
    );
    if let Some(token) = token {
        head.push_str(&format!("authorization: Bearer {token}\r\n"));
    }
    head.push_str("\r\n");
    let body = body.to_vec();
    // The server may answer (413) before reading everything: write concurrently. The task hands
    // the write half back so it is not shut down (a half-close makes the server hang up).
    let writing = tokio::spawn(async move {
        let _ = writer.write_all(head.as_bytes()).await;
        let _ = writer.write_all(&body).await;
        writer
    });
    let mut raw = Vec::new();
    within(reader.read_to_end(&mut raw)).await.unwrap();
    writing.abort();
    let text = String::from_utf8_lossy(&raw).to_string();
    let (headers, body) = text
        .split_once("\r\n\r\n")
        .unwrap_or_else(|| panic!("not an HTTP answer: {text:?}"));
    let status = headers.split(' ').nth(1).unwrap().parse().unwrap();
    HttpAnswer {
        status,
        headers: headers.to_ascii_lowercase(),
        body: serde_json::from_str(body).unwrap_or(Value::String(body.to_owned())),
    }
}

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
    let app = spawn_app(Options::default()).await;
    let token = hs256_token("rest-client", 60);
    let answer = http(
        app.http_addr,
        "POST",
        "/v2/face-recognition/compare-with-liveness",
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

    let keys = http(app.http_addr, "GET", "/v2/signing-keys", None, b"").await;
    assert_eq!(keys.status, 200);
    let keys = PublicKeySet::from_keys_json(&keys.body.to_string()).unwrap();
    faceproof_signing::verify_response_text(&body.to_string(), &keys).unwrap();
}

#[tokio::test]
async fn rest_errors_use_the_reference_statuses() {
    let app = spawn_app(Options {
        args: vec![
            "--max-image-bytes".into(),
            "400000".into(),
            "--max-gallery".into(),
            "1".into(),
        ],
        ..Options::default()
    })
    .await;
    let path = "/v2/face-recognition/compare-with-liveness";
    let body = rest_body().to_string();
    let token = hs256_token("acme", 60);

    let missing = http(app.http_addr, "POST", path, None, body.as_bytes()).await;
    assert_eq!(missing.status, 401);
    assert_eq!(missing.body["status"], 401);
    assert_eq!(missing.body["reason"], "missing_token");
    assert_eq!(missing.body["code"], "UNAUTHORIZED");
    assert!(missing.body["message"].is_string());
    let expired = http(
        app.http_addr,
        "POST",
        path,
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
    let answer = http(
        app.http_addr,
        "POST",
        path,
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
    let answer = http(
        app.http_addr,
        "POST",
        path,
        Some(&token),
        undecodable.to_string().as_bytes(),
    )
    .await;
    assert_eq!(answer.status, 412, "{}", answer.body);
    assert_eq!(answer.body["code"], "ERROR");
    assert_eq!(answer.body["violations"][0]["field"], "gallery[0]");

    let answer = http(app.http_addr, "POST", path, Some(&token), b"{\"os\": ").await;
    assert_eq!(answer.status, 400);
    assert_eq!(answer.body["reason"], "malformed_request");

    let huge = vec![b'x'; 2_000_000];
    let answer = http(app.http_addr, "POST", path, Some(&token), &huge).await;
    assert_eq!(answer.status, 413, "{}", answer.body);
    assert_eq!(answer.body["status"], 413);

    app.set_matcher(MatcherScript::Fail(Status::unavailable(
        "connection refused",
    )));
    let answer = http(app.http_addr, "POST", path, Some(&token), body.as_bytes()).await;
    assert_eq!(
        (answer.status, answer.body["reason"].as_str()),
        (503, Some("matcher_unavailable"))
    );
}

#[tokio::test]
async fn rest_rate_limit_is_429_with_retry_after() {
    let app = spawn_app(Options {
        args: vec![
            "--rate-limit-per-second".into(),
            "0.5".into(),
            "--rate-limit-burst".into(),
            "1".into(),
        ],
        ..Options::default()
    })
    .await;
    let token = hs256_token("acme", 60);
    let path = "/v2/face-recognition/compare-with-liveness";
    let body = rest_body().to_string();
    assert_eq!(
        http(app.http_addr, "POST", path, Some(&token), body.as_bytes())
            .await
            .status,
        200
    );
    let limited = http(app.http_addr, "POST", path, Some(&token), body.as_bytes()).await;
    assert_eq!(limited.status, 429);
    assert_eq!(limited.body["reason"], "rate_limited");
    assert!(
        limited.headers.contains("retry-after: 2"),
        "{}",
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
    let matcher = FakeMatcher {
        script: Arc::new(Mutex::new(MatcherScript::Score(0.9))),
        calls: Arc::default(),
    };
    let liveness = FakeLiveness {
        script: Arc::new(Mutex::new(LivenessScript::Score(0.9))),
        calls: Arc::default(),
        last: Arc::default(),
    };
    let matcher_url = serve_fake(MatcherServer::new(matcher)).await;
    let liveness_url = serve_fake(LivenessServer::new(liveness)).await;
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
        let mut call = Request::new(request());
        call.metadata_mut().insert(
            "authorization",
            MetadataValue::try_from(format!("Bearer {}", token.trim())).unwrap(),
        );
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
