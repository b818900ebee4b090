//! The signed records (issues 10 and 12) over REST against fake model services: image digests,
//! the always-present liveness record, `comparison.result.passed`, per-item similarity, the
//! probe-copy flag; and every answer checked against the served OpenAPI document.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::future::Future;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;
use clap::Parser as _;
use faceproof_gateway::GatewayCli;
use faceproof_gateway::{Application, auth::hash_api_key};
use faceproof_proto::common::v1::{BoundingBox, Face, Point};
use faceproof_proto::liveness::v1 as liveness_pb;
use faceproof_proto::liveness::v1::liveness_server::{Liveness, LivenessServer};
use faceproof_proto::matcher::v1 as matcher_pb;
use faceproof_proto::matcher::v1::matcher_server::{Matcher, MatcherServer};
use faceproof_signing::{PublicKeySet, Signer};
use serde_json::{Value, json};
use sha2::{Digest as _, Sha256};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;
use tokio_stream::wrappers::TcpListenerStream;
use tonic::{Request, Response, Status};

const WAIT: Duration = Duration::from_secs(15);
const API_KEY: &str = "fp_records_api_key";

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

fn sha256(bytes: &[u8]) -> String {
    hex::encode(Sha256::digest(bytes))
}

fn face() -> Face {
    Face {
        r#box: Some(BoundingBox {
            x: 10.0,
            y: 20.0,
            width: 100.0,
            height: 120.0,
        }),
        landmarks: vec![Point { x: 50.0, y: 60.0 }; 5],
        detection_score: 0.97,
    }
}

// ---------------------------------------------------------------- fakes

/// What the fake matcher answers for every gallery item.
#[derive(Clone, Copy)]
struct MatcherScript {
    score: f64,
    similarity: f64,
    near_identical: bool,
}

#[derive(Clone)]
struct FakeMatcher {
    script: Arc<Mutex<MatcherScript>>,
}

#[tonic::async_trait]
impl Matcher for FakeMatcher {
    async fn compare(
        &self,
        request: Request<matcher_pb::CompareRequest>,
    ) -> Result<Response<matcher_pb::CompareResponse>, Status> {
        let script = *self.script.lock().unwrap();
        let gallery = (0..request.into_inner().gallery.len())
            .map(|index| matcher_pb::GalleryItemResult {
                index: index as u32,
                outcome: Some(matcher_pb::gallery_item_result::Outcome::Match(
                    matcher_pb::Match {
                        face: Some(face()),
                        similarity: script.similarity,
                        score: script.score,
                        near_identical: script.near_identical,
                    },
                )),
            })
            .collect();
        Ok(Response::new(matcher_pb::CompareResponse {
            probe_face: Some(face()),
            gallery,
            best_index: 0,
            best_score: script.score,
            calibration: "test".into(),
        }))
    }
}

#[derive(Clone, Default)]
struct FakeLiveness {
    calls: Arc<AtomicUsize>,
}

#[tonic::async_trait]
impl Liveness for FakeLiveness {
    async fn check(
        &self,
        _request: Request<liveness_pb::CheckRequest>,
    ) -> Result<Response<liveness_pb::CheckResponse>, Status> {
        self.calls.fetch_add(1, Ordering::SeqCst);
        Ok(Response::new(liveness_pb::CheckResponse {
            outcome: Some(liveness_pb::check_response::Outcome::Score(
                liveness_pb::LivenessScore {
                    liveness_score: 0.97,
                    attack: None,
                    models: Vec::new(),
                },
            )),
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

struct TestApp {
    http_addr: SocketAddr,
    matcher: FakeMatcher,
    liveness: FakeLiveness,
    _dir: tempfile::TempDir,
}

async fn spawn_app() -> TestApp {
    let matcher = FakeMatcher {
        script: Arc::new(Mutex::new(MatcherScript {
            score: 0.9,
            similarity: 0.55,
            near_identical: false,
        })),
    };
    let liveness = FakeLiveness::default();
    let matcher_url = serve_fake(MatcherServer::new(matcher.clone())).await;
    let liveness_url = serve_fake(LivenessServer::new(liveness.clone())).await;
    let dir = tempfile::tempdir().unwrap();
    let path = |name: &str| dir.path().join(name).display().to_string();
    std::fs::write(
        path("api-keys"),
        format!("recordsclient {}\n", hash_api_key(API_KEY)),
    )
    .unwrap();
    std::fs::write(
        path("signing.pem"),
        Signer::generate().to_pkcs8_pem().unwrap(),
    )
    .unwrap();
    std::fs::write(
        path("secret"),
        "records-secret-that-is-long-enough-for-hs256\n",
    )
    .unwrap();
    let args: Vec<String> = vec![
        "faceproof-gateway".into(),
        "--matcher-url".into(),
        matcher_url,
        "--liveness-url".into(),
        liveness_url,
        "--api-keys-file".into(),
        path("api-keys"),
        "--signing-key-file".into(),
        path("signing.pem"),
        "--jwt-algorithm".into(),
        "HS256".into(),
        "--jwt-secret-file".into(),
        path("secret"),
        "--rate-limit-per-second".into(),
        "1000".into(),
        "--rate-limit-burst".into(),
        "1000".into(),
        "--data-dir".into(),
        path("data"),
    ];
    let config = GatewayCli::try_parse_from(args).unwrap().config;
    let grpc_listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let http_listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let application = Application::build(config, grpc_listener, http_listener).unwrap();
    let http_addr = application.http_addr();
    tokio::spawn(application.run_until_stopped(std::future::pending()));
    TestApp {
        http_addr,
        matcher,
        liveness,
        _dir: dir,
    }
}

struct HttpAnswer {
    status: u16,
    body: Value,
}

/// A minimal HTTP/1.1 exchange (`Connection: close`).
async fn http(addr: SocketAddr, method: &str, path: &str, token: bool, body: &[u8]) -> HttpAnswer {
    let stream = within(tokio::net::TcpStream::connect(addr)).await.unwrap();
    let (mut reader, mut writer) = stream.into_split();
    let mut head = format!(
        "{method} {path} HTTP/1.1\r\nhost: {addr}\r\nconnection: close\r\ncontent-type: application/json\r\ncontent-length: {}\r\n",
        body.len()
    );
    if token {
        head.push_str(&format!("authorization: Bearer {API_KEY}\r\n"));
    }
    head.push_str("\r\n");
    let body = body.to_vec();
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
    HttpAnswer {
        status: headers.split(' ').nth(1).unwrap().parse().unwrap(),
        body: serde_json::from_str(body).unwrap_or(Value::String(body.to_owned())),
    }
}

impl TestApp {
    fn set_matcher(&self, score: f64, similarity: f64, near_identical: bool) {
        *self.matcher.script.lock().unwrap() = MatcherScript {
            score,
            similarity,
            near_identical,
        };
    }

    async fn compare(&self, body: &Value) -> HttpAnswer {
        let path = "/v2/face-recognition/compare-with-liveness";
        http(
            self.http_addr,
            "POST",
            path,
            true,
            body.to_string().as_bytes(),
        )
        .await
    }

    async fn openapi(&self) -> Value {
        let answer = http(self.http_addr, "GET", "/openapi.json", false, b"").await;
        assert_eq!(answer.status, 200);
        answer.body
    }

    async fn keys(&self) -> PublicKeySet {
        let answer = http(self.http_addr, "GET", "/v2/signing-keys", false, b"").await;
        PublicKeySet::from_keys_json(&answer.body.to_string()).unwrap()
    }

    /// Checks a compare answer against the document: its status is listed and the body matches
    /// that response's schema.
    async fn assert_conforms(&self, answer: &HttpAnswer) {
        let document = self.openapi().await;
        let responses =
            &document["paths"]["/v2/face-recognition/compare-with-liveness"]["post"]["responses"];
        let listed = &responses[answer.status.to_string()];
        assert!(
            listed.is_object(),
            "status {} is not documented",
            answer.status
        );
        let schema = &listed["content"]["application/json"]["schema"];
        let problems = check(&document, schema, &answer.body, "$");
        assert!(problems.is_empty(), "{problems:#?}\n{:#}", answer.body);
    }
}

fn body(probe: &[u8], gallery: &[Vec<u8>], compare_min_score: Option<f64>) -> Value {
    let mut body = json!({
        "os": "IOS",
        "probe": STANDARD.encode(probe),
        "gallery": gallery.iter().map(|image| STANDARD.encode(image)).collect::<Vec<_>>(),
        "search_mode": "FAST",
    });
    if let Some(threshold) = compare_min_score {
        body["compare_min_score"] = json!(threshold);
    }
    body
}

// ---------------------------------------------------------------- the schema checker

/// The JSON Schema subset the document uses: `$ref`, `type`, `required`, `properties`,
/// `additionalProperties` (false or a schema), `items`, `minItems`, `enum`, `minimum`, `maximum`
/// and the one `pattern` (64 lowercase hex digits). Returns every mismatch with its JSON path.
fn check(document: &Value, schema: &Value, value: &Value, path: &str) -> Vec<String> {
    if let Some(reference) = schema.get("$ref").and_then(Value::as_str) {
        let pointer = reference.trim_start_matches('#');
        let target = document
            .pointer(pointer)
            .unwrap_or_else(|| panic!("dangling $ref {reference}"));
        return check(document, target, value, path);
    }
    let mut problems = Vec::new();
    for keyword in schema.as_object().unwrap().keys() {
        assert!(
            [
                "type",
                "required",
                "properties",
                "additionalProperties",
                "items",
                "minItems",
                "enum",
                "minimum",
                "maximum",
                "pattern",
                "description",
                "format",
            ]
            .contains(&keyword.as_str()),
            "the checker does not know the keyword {keyword}"
        );
    }
    if let Some(expected) = schema.get("type").and_then(Value::as_str) {
        let actual = match value {
            Value::Null => "null",
            Value::Bool(_) => "boolean",
            Value::Number(number) if number.is_i64() || number.is_u64() => "integer",
            Value::Number(_) => "number",
            Value::String(_) => "string",
            Value::Array(_) => "array",
            Value::Object(_) => "object",
        };
        if actual != expected && !(expected == "number" && actual == "integer") {
            problems.push(format!("{path}: {actual}, expected {expected}"));
            return problems;
        }
    }
    if let Some(allowed) = schema.get("enum").and_then(Value::as_array)
        && !allowed.contains(value)
    {
        problems.push(format!("{path}: {value} is not one of {allowed:?}"));
    }
    if let Some(number) = value.as_f64() {
        if let Some(minimum) = schema.get("minimum").and_then(Value::as_f64)
            && number < minimum
        {
            problems.push(format!("{path}: {number} < {minimum}"));
        }
        if let Some(maximum) = schema.get("maximum").and_then(Value::as_f64)
            && number > maximum
        {
            problems.push(format!("{path}: {number} > {maximum}"));
        }
    }
    if let Some(pattern) = schema.get("pattern").and_then(Value::as_str) {
        assert_eq!(pattern, "^[0-9a-f]{64}$", "the checker knows one pattern");
        let text = value.as_str().unwrap_or_default();
        if text.len() != 64
            || !text
                .bytes()
                .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
        {
            problems.push(format!("{path}: {value} is not 64 lowercase hex digits"));
        }
    }
    if let Some(items) = value.as_array() {
        if let Some(minimum) = schema.get("minItems").and_then(Value::as_u64)
            && (items.len() as u64) < minimum
        {
            problems.push(format!("{path}: fewer than {minimum} items"));
        }
        if let Some(item_schema) = schema.get("items") {
            for (index, item) in items.iter().enumerate() {
                problems.extend(check(
                    document,
                    item_schema,
                    item,
                    &format!("{path}[{index}]"),
                ));
            }
        }
    }
    if let Some(members) = value.as_object() {
        for required in schema
            .get("required")
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
        {
            let name = required.as_str().unwrap();
            if !members.contains_key(name) {
                problems.push(format!("{path}: `{name}` is missing"));
            }
        }
        let properties = schema.get("properties").and_then(Value::as_object);
        for (name, member) in members {
            let member_path = format!("{path}.{name}");
            match (
                properties.and_then(|p| p.get(name)),
                schema.get("additionalProperties"),
            ) {
                (Some(member_schema), _) => {
                    problems.extend(check(document, member_schema, member, &member_path));
                }
                (None, Some(Value::Bool(false))) => {
                    problems.push(format!("{member_path}: not in the document"));
                }
                (None, Some(extra)) if extra.is_object() => {
                    problems.extend(check(document, extra, member, &member_path));
                }
                _ => {}
            }
        }
    }
    problems
}

// ---------------------------------------------------------------- tests

#[tokio::test]
async fn a_match_carries_digests_similarity_and_passed_and_conforms() {
    let app = spawn_app().await;
    let (probe, gallery) = (probe(), vec![gallery_image()]);
    let answer = app.compare(&body(&probe, &gallery, Some(0.8))).await;
    assert_eq!(answer.status, 200, "{}", answer.body);
    app.assert_conforms(&answer).await;
    let result = &answer.body["data"]["comparison"]["result"];
    assert_eq!(result["passed"], true);
    assert_eq!(result["min_score"], 0.8);
    assert_eq!(result["probe_sha256"], sha256(&probe));
    assert_eq!(result["probe_is_gallery_copy"], false);
    let item = &result["gallery"][0];
    assert_eq!(item["sha256"], sha256(&gallery[0]));
    assert_eq!(
        (item["similarity"].as_f64(), item["score"].as_f64()),
        (Some(0.55), Some(0.9))
    );
    assert_eq!(item["probe_copy"], false);
    let liveness = &answer.body["data"]["liveness"];
    assert_eq!(liveness["status"], "success");
    assert_eq!(liveness["result"]["passed"], true);

    // The digests are signed and bind the photos.
    let text = answer.body.to_string();
    let keys = app.keys().await;
    faceproof_signing::verify_response_text(&text, &keys).unwrap();
    let envelope = faceproof_signing::parse_response_text(&text).unwrap();
    assert_eq!(
        faceproof_signing::check_image_digests(
            &envelope,
            Some(probe.as_slice()),
            Some(gallery.as_slice())
        )
        .unwrap(),
        2
    );
    assert!(
        faceproof_signing::check_image_digests(&envelope, Some(gallery[0].as_slice()), None)
            .is_err()
    );
}

#[tokio::test]
async fn skipped_liveness_is_a_full_record_and_conforms() {
    let app = spawn_app().await;
    app.set_matcher(0.7, 0.3, false);
    let answer = app
        .compare(&body(&probe(), &[gallery_image()], Some(0.8)))
        .await;
    assert_eq!(answer.status, 200, "{}", answer.body);
    app.assert_conforms(&answer).await;
    let data = &answer.body["data"];
    assert_eq!(data["comparison"]["result"]["passed"], false);
    assert!(data.get("liveness_skipped").is_none());
    let liveness = &data["liveness"];
    assert_eq!(liveness["status"], "skipped");
    assert_eq!(liveness["type"], "liveness");
    assert_eq!(liveness["os"], "IOS");
    let result = &liveness["result"];
    assert_eq!(result["passed"], false);
    assert!(result.get("liveness_score").is_none(), "{result}");
    assert_eq!(result["reason"], "comparison_below_threshold");
    assert_eq!(result["comparison_score"], 0.7);
    assert_eq!(app.liveness.calls.load(Ordering::SeqCst), 0);
    faceproof_signing::verify_response_text(&answer.body.to_string(), &app.keys().await).unwrap();
}

#[tokio::test]
async fn without_a_threshold_passed_is_judged_at_the_lowest_one() {
    let app = spawn_app().await;
    for (score, passed) in [(0.6699, false), (0.67, true)] {
        app.set_matcher(score, 0.4, false);
        let answer = app.compare(&body(&probe(), &[gallery_image()], None)).await;
        assert_eq!(answer.status, 200, "{}", answer.body);
        let result = &answer.body["data"]["comparison"]["result"];
        assert_eq!(
            (result["passed"].as_bool(), result["min_score"].as_f64()),
            (Some(passed), Some(0.67))
        );
        // Without a threshold liveness always runs.
        assert_eq!(answer.body["data"]["liveness"]["status"], "success");
    }
}

#[tokio::test]
async fn a_probe_sent_again_as_a_gallery_image_fails_liveness_as_a_copy() {
    let app = spawn_app().await;
    let probe = probe();
    let answer = app
        .compare(&body(&probe, &[gallery_image(), probe.clone()], Some(0.8)))
        .await;
    assert_eq!(answer.status, 200, "{}", answer.body);
    app.assert_conforms(&answer).await;
    let result = &answer.body["data"]["comparison"]["result"];
    assert_eq!(result["probe_is_gallery_copy"], true);
    assert_eq!(result["gallery"][0]["probe_copy"], false);
    assert_eq!(result["gallery"][1]["probe_copy"], true);
    assert_eq!(result["gallery"][1]["sha256"], result["probe_sha256"]);
    let liveness = &answer.body["data"]["liveness"];
    assert_eq!(liveness["status"], "failed");
    assert_eq!(liveness["result"]["passed"], false);
    assert_eq!(liveness["result"]["reason"], "probe_is_gallery_copy");
    assert!(liveness["result"].get("liveness_score").is_none());
    assert_eq!(
        app.liveness.calls.load(Ordering::SeqCst),
        0,
        "not run on a copy"
    );
}

#[tokio::test]
async fn a_near_identical_embedding_is_a_copy_too() {
    let app = spawn_app().await;
    app.set_matcher(1.0, 0.995, true);
    let answer = app
        .compare(&body(&probe(), &[gallery_image()], Some(0.8)))
        .await;
    assert_eq!(answer.status, 200, "{}", answer.body);
    let data = &answer.body["data"];
    assert_eq!(
        data["comparison"]["result"]["gallery"][0]["probe_copy"],
        true
    );
    assert_eq!(
        data["liveness"]["result"]["reason"],
        "probe_is_gallery_copy"
    );
}

#[tokio::test]
async fn errors_and_the_keys_conform_to_the_document() {
    let app = spawn_app().await;
    let document = app.openapi().await;
    assert_eq!(document["openapi"], "3.1.0");
    assert!(document["paths"]["/v2/face-recognition/compare-with-liveness"]["post"].is_object());

    // No token.
    let path = "/v2/face-recognition/compare-with-liveness";
    let unauthenticated = http(app.http_addr, "POST", path, false, b"{}").await;
    assert_eq!(unauthenticated.status, 401);
    app.assert_conforms(&unauthenticated).await;
    // A value out of range.
    let mut out_of_range = body(&probe(), &[gallery_image()], None);
    out_of_range["compare_min_score"] = json!(2.0);
    let refused = app.compare(&out_of_range).await;
    assert_eq!(refused.status, 409, "{}", refused.body);
    app.assert_conforms(&refused).await;
    // Not an image.
    let not_an_image = app
        .compare(&body(b"plain text", &[gallery_image()], None))
        .await;
    assert!(not_an_image.status >= 400, "{}", not_an_image.body);
    app.assert_conforms(&not_an_image).await;

    let keys = http(app.http_addr, "GET", "/v2/signing-keys", false, b"").await;
    let schema = &document["paths"]["/v2/signing-keys"]["get"]["responses"]["200"]["content"]["application/json"]
        ["schema"];
    assert_eq!(
        check(&document, schema, &keys.body, "$"),
        Vec::<String>::new()
    );
}

#[test]
fn the_checker_finds_what_does_not_conform() {
    let document = faceproof_gateway::openapi::document();
    let schema = json!({"$ref": "#/components/schemas/GalleryItem"});
    let good = json!({"index": 0, "score": 0.5, "sha256": "a".repeat(64), "probe_copy": false});
    assert!(check(&document, &schema, &good, "$").is_empty());
    let bad = json!({"index": -1, "score": 2, "sha256": "XY", "extra": 1});
    let problems = check(&document, &schema, &bad, "$");
    assert_eq!(problems.len(), 5, "{problems:#?}");
}
