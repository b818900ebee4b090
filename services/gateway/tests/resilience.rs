//! The gateway when its model services misbehave or a client asks too much: fake matchers that
//! die mid-call, drop every connection, answer `inference_queue_full` or report NOT_SERVING;
//! the per-client in-flight limit; readiness (grpc.health, `/readyz`) following the model
//! services; a malformed protobuf body sent raw over HTTP/2; what reflection lists.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::future::Future;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicU8, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use clap::Parser as _;
use faceproof_gateway::auth::hash_api_key;
use faceproof_gateway::{Application, GatewayCli};
use faceproof_proto::common::v1::{BoundingBox, Face};
use faceproof_proto::gateway::v1 as pb;
use faceproof_proto::gateway::v1::face_verification_client::FaceVerificationClient;
use faceproof_proto::liveness::v1 as liveness_pb;
use faceproof_proto::liveness::v1::liveness_server::{Liveness, LivenessServer};
use faceproof_proto::matcher::v1 as matcher_pb;
use faceproof_proto::matcher::v1::matcher_server::{Matcher, MatcherServer, SERVICE_NAME};
use faceproof_signing::Signer;
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::net::TcpListener;
use tokio_stream::wrappers::TcpListenerStream;
use tonic::metadata::MetadataValue;
use tonic::transport::Channel;
use tonic::{Code, Request, Response, Status};
use tonic_health::ServingStatus;
use tonic_health::pb::health_check_response::ServingStatus as Reported;
use tonic_health::pb::health_client::HealthClient;
use tonic_health::server::HealthReporter;
use tonic_types::StatusExt as _;

const WAIT: Duration = Duration::from_secs(15);
/// Far above what any test waits: an answer well before it was not a deadline wait.
const DEADLINE_MS: u64 = 30_000;
const KEY_A: &str = "fp_resilience_client_a";
const KEY_B: &str = "fp_resilience_client_b";
const PUBLIC_SERVICE: &str = "faceproof.gateway.v1.FaceVerification";

async fn within<T>(future: impl Future<Output = T>) -> T {
    tokio::time::timeout(WAIT, future)
        .await
        .expect("timed out waiting for the network")
}

fn face() -> Face {
    Face {
        r#box: Some(BoundingBox {
            x: 10.0,
            y: 10.0,
            width: 100.0,
            height: 120.0,
        }),
        landmarks: Vec::new(),
        detection_score: 0.99,
    }
}

// ---------------------------------------------------------------- fake model services

/// What the fake matcher does with a request.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
#[repr(u8)]
enum Mode {
    Answer = 0,
    /// Takes the request and never answers (work in progress when it dies or the caller goes).
    Hold = 1,
    /// RESOURCE_EXHAUSTED `inference_queue_full`, as the model services' runtime sends it.
    QueueFull = 2,
    /// RESOURCE_EXHAUSTED without any details.
    BareOverload = 3,
}

#[derive(Clone, Default)]
struct FakeMatcher {
    mode: Arc<AtomicU8>,
    entered: Arc<AtomicUsize>,
}

impl FakeMatcher {
    fn set(&self, mode: Mode) {
        self.mode.store(mode as u8, Ordering::SeqCst);
    }

    fn entered(&self) -> usize {
        self.entered.load(Ordering::SeqCst)
    }
}

#[tonic::async_trait]
impl Matcher for FakeMatcher {
    async fn compare(
        &self,
        request: Request<matcher_pb::CompareRequest>,
    ) -> Result<Response<matcher_pb::CompareResponse>, Status> {
        self.entered.fetch_add(1, Ordering::SeqCst);
        match self.mode.load(Ordering::SeqCst) {
            1 => std::future::pending::<()>().await,
            2 => return Err(faceproof_runtime::ServiceError::overloaded(32).into()),
            3 => return Err(Status::resource_exhausted("busy")),
            _ => {}
        }
        let gallery = (0..request.into_inner().gallery.len())
            .map(|index| matcher_pb::GalleryItemResult {
                index: index as u32,
                outcome: Some(matcher_pb::gallery_item_result::Outcome::Match(
                    matcher_pb::Match {
                        face: Some(face()),
                        similarity: 0.5,
                        score: 0.9,
                        near_identical: false,
                    },
                )),
            })
            .collect();
        Ok(Response::new(matcher_pb::CompareResponse {
            probe_face: Some(face()),
            gallery,
            best_index: 0,
            best_score: 0.9,
            calibration: "test".into(),
        }))
    }
}

#[derive(Clone, Default)]
struct FakeLiveness;

#[tonic::async_trait]
impl Liveness for FakeLiveness {
    async fn check(
        &self,
        _request: Request<liveness_pb::CheckRequest>,
    ) -> Result<Response<liveness_pb::CheckResponse>, Status> {
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

/// A fake matcher with grpc.health.v1 in its own runtime, so that it can die abruptly (every
/// task and socket at once, as a killed process).
struct MatcherProcess {
    address: SocketAddr,
    matcher: FakeMatcher,
    health: HealthReporter,
    runtime: Option<tokio::runtime::Runtime>,
}

impl MatcherProcess {
    async fn start() -> Self {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        listener.set_nonblocking(true).unwrap();
        let address = listener.local_addr().unwrap();
        let matcher = FakeMatcher::default();
        let (health, health_service) = tonic_health::server::health_reporter();
        health
            .set_service_status(SERVICE_NAME, ServingStatus::Serving)
            .await;
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .enable_all()
            .build()
            .unwrap();
        let service = MatcherServer::new(matcher.clone());
        runtime.spawn(async move {
            let listener = TcpListener::from_std(listener).unwrap();
            let _ = tonic::transport::Server::builder()
                .add_service(health_service)
                .add_service(service)
                .serve_with_incoming(TcpListenerStream::new(listener))
                .await;
        });
        Self {
            address,
            matcher,
            health,
            runtime: Some(runtime),
        }
    }

    async fn set_serving(&self, serving: bool) {
        let status = if serving {
            ServingStatus::Serving
        } else {
            ServingStatus::NotServing
        };
        self.health.set_service_status(SERVICE_NAME, status).await;
    }

    fn kill(&mut self) {
        if let Some(runtime) = self.runtime.take() {
            runtime.shutdown_background();
        }
    }
}

impl Drop for MatcherProcess {
    fn drop(&mut self) {
        self.kill();
    }
}

/// A "model service" that accepts TCP connections and closes each at once.
async fn connection_dropper() -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let address = listener.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((socket, _)) = listener.accept().await {
            drop(socket);
        }
    });
    address
}

// ---------------------------------------------------------------- the gateway

struct TestGateway {
    grpc: Channel,
    grpc_addr: SocketAddr,
    http_addr: SocketAddr,
    _dir: tempfile::TempDir,
}

fn fixture(name: &str) -> Vec<u8> {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../../tests/fixtures")
        .join(name);
    std::fs::read(&path).unwrap_or_else(|error| panic!("{}: {error}", path.display()))
}

async fn spawn_gateway(matcher: SocketAddr, max_in_flight: usize) -> TestGateway {
    let liveness_listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let liveness_address = liveness_listener.local_addr().unwrap();
    tokio::spawn(
        tonic::transport::Server::builder()
            .add_service(LivenessServer::new(FakeLiveness))
            .serve_with_incoming(TcpListenerStream::new(liveness_listener)),
    );
    let dir = tempfile::tempdir().unwrap();
    let path = |name: &str| dir.path().join(name).display().to_string();
    std::fs::write(
        path("api-keys"),
        format!(
            "client-a {}\nclient-b {}\n",
            hash_api_key(KEY_A),
            hash_api_key(KEY_B)
        ),
    )
    .unwrap();
    std::fs::write(
        path("signing.pem"),
        Signer::generate().to_pkcs8_pem().unwrap(),
    )
    .unwrap();
    let args = [
        "faceproof-gateway".to_owned(),
        format!("--matcher-url=http://{matcher}"),
        format!("--liveness-url=http://{liveness_address}"),
        format!("--api-keys-file={}", path("api-keys")),
        format!("--signing-key-file={}", path("signing.pem")),
        "--rate-limit-per-second=0".to_owned(),
        "--backend-refresh-ms=50".to_owned(),
        "--backend-connect-timeout-ms=300".to_owned(),
        format!("--deadline-fast-ms={DEADLINE_MS}"),
        format!("--deadline-accurate-ms={DEADLINE_MS}"),
        format!("--max-in-flight-per-client={max_in_flight}"),
        format!("--data-dir={}", path("data")),
        "--metrics-addr=off".to_owned(),
    ];
    let config = GatewayCli::try_parse_from(args).unwrap().config;
    let grpc_listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let http_listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let application = Application::build(config, grpc_listener, http_listener).unwrap();
    let (grpc_addr, http_addr) = (application.grpc_addr(), application.http_addr());
    tokio::spawn(application.run_until_stopped(std::future::pending()));
    let grpc = within(
        Channel::from_shared(format!("http://{grpc_addr}"))
            .unwrap()
            .connect(),
    )
    .await
    .unwrap();
    TestGateway {
        grpc,
        grpc_addr,
        http_addr,
        _dir: dir,
    }
}

fn request() -> pb::CompareWithLivenessRequest {
    pb::CompareWithLivenessRequest {
        os: "IOS".into(),
        probe: fixture("obama_2012_official_portrait.jpg").into(),
        gallery: vec![fixture("obama_2009_congress.jpg").into()],
        search_mode: "FAST".into(),
        compare_min_score: None,
        liveness_min_score: None,
    }
}

fn reason(status: &Status) -> String {
    status
        .get_error_details()
        .error_info()
        .map(|info| info.reason.clone())
        .unwrap_or_default()
}

fn retry_delay(status: &Status) -> Option<Duration> {
    status
        .get_error_details()
        .retry_info()
        .and_then(|info| info.retry_delay)
}

impl TestGateway {
    /// One gRPC compare as the client holding `key`, with an optional grpc-timeout.
    async fn compare_as(&self, key: &str, timeout: Option<Duration>) -> Result<(), Status> {
        let mut call = Request::new(request());
        call.metadata_mut().insert(
            "authorization",
            MetadataValue::try_from(format!("Bearer {key}")).unwrap(),
        );
        if let Some(timeout) = timeout {
            call.set_timeout(timeout);
        }
        FaceVerificationClient::new(self.grpc.clone())
            .compare_with_liveness(call)
            .await
            .map(|_| ())
    }

    async fn compare(&self) -> Result<(), Status> {
        within(self.compare_as(KEY_A, None)).await
    }

    async fn health(&self, service: &str) -> Reported {
        let answer = within(HealthClient::new(self.grpc.clone()).check(
            tonic_health::pb::HealthCheckRequest {
                service: service.to_owned(),
            },
        ))
        .await
        .unwrap()
        .into_inner();
        answer.status()
    }

    /// Waits until `/readyz` answers `status` and both grpc.health names report `serving`.
    async fn wait_for_readiness(&self, ready: bool) {
        let (code, serving) = if ready {
            (200, Reported::Serving)
        } else {
            (503, Reported::NotServing)
        };
        let started = Instant::now();
        loop {
            let readyz = http(self.http_addr, "GET", "/readyz", None, b"").await;
            if readyz.status == code
                && self.health("").await == serving
                && self.health(PUBLIC_SERVICE).await == serving
            {
                return;
            }
            assert!(
                started.elapsed() < WAIT,
                "readiness did not become {ready}: /readyz {} {}",
                readyz.status,
                readyz.body
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

struct HttpAnswer {
    status: u16,
    headers: String,
    body: String,
}

/// A minimal HTTP/1.1 exchange (`Connection: close`).
async fn http(
    addr: SocketAddr,
    method: &str,
    path: &str,
    key: Option<&str>,
    body: &[u8],
) -> HttpAnswer {
    let mut stream = within(tokio::net::TcpStream::connect(addr)).await.unwrap();
    let mut head = format!(
        "{method} {path} HTTP/1.1\r\nhost: {addr}\r\nconnection: close\r\ncontent-type: application/json\r\ncontent-length: {}\r\n",
        body.len()
    );
    if let Some(key) = key {
        head.push_str(&format!("authorization: Bearer {key}\r\n"));
    }
    head.push_str("\r\n");
    let mut raw = head.into_bytes();
    raw.extend_from_slice(body);
    within(stream.write_all(&raw)).await.unwrap();
    let mut answer = Vec::new();
    within(stream.read_to_end(&mut answer)).await.unwrap();
    let text = String::from_utf8_lossy(&answer).to_string();
    let (headers, body) = text
        .split_once("\r\n\r\n")
        .unwrap_or_else(|| panic!("not an HTTP answer: {text:?}"));
    HttpAnswer {
        status: headers.split(' ').nth(1).unwrap().parse().unwrap(),
        headers: headers.to_ascii_lowercase(),
        body: body.to_owned(),
    }
}

fn rest_body() -> Vec<u8> {
    use base64::Engine as _;
    let encode = |bytes: Vec<u8>| base64::engine::general_purpose::STANDARD.encode(bytes);
    serde_json::json!({
        "os": "ANDROID",
        "probe": encode(fixture("obama_2012_official_portrait.jpg")),
        "gallery": [encode(fixture("obama_2009_congress.jpg"))],
        "search_mode": "FAST",
    })
    .to_string()
    .into_bytes()
}

async fn rest_compare(gateway: &TestGateway, key: &str) -> HttpAnswer {
    http(
        gateway.http_addr,
        "POST",
        "/v2/face-recognition/compare-with-liveness",
        Some(key),
        &rest_body(),
    )
    .await
}

async fn wait_until(what: &str, mut condition: impl FnMut() -> bool) {
    let started = Instant::now();
    while !condition() {
        assert!(started.elapsed() < WAIT, "timed out waiting until {what}");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

// ---------------------------------------------------------------- codes

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_matcher_dying_mid_call_is_unavailable_not_internal() {
    let mut matcher = MatcherProcess::start().await;
    let gateway = Arc::new(spawn_gateway(matcher.address, 0).await);
    gateway.compare().await.expect("a healthy stack answers");
    matcher.matcher.set(Mode::Hold);
    let entered = matcher.matcher.entered();
    let call = tokio::spawn({
        let gateway = Arc::clone(&gateway);
        async move {
            let started = Instant::now();
            (gateway.compare().await, started.elapsed())
        }
    });
    let counter = Arc::clone(&matcher.matcher.entered);
    wait_until("the request reached the matcher", || {
        counter.load(Ordering::SeqCst) > entered
    })
    .await;
    matcher.kill();
    let (answer, took) = within(call).await.unwrap();
    let status = answer.unwrap_err();
    assert_eq!(status.code(), Code::Unavailable, "{status:?}");
    assert_eq!(reason(&status), "matcher_unavailable");
    assert!(took < Duration::from_secs(10), "took {took:?}");

    // With the only replica gone, the next requests fail at once, over gRPC and REST.
    let started = Instant::now();
    let status = gateway.compare().await.unwrap_err();
    assert_eq!(status.code(), Code::Unavailable, "{status:?}");
    assert!(started.elapsed() < Duration::from_secs(2));
    let answer = rest_compare(&gateway, KEY_A).await;
    assert_eq!(answer.status, 503, "{}", answer.body);
    assert!(
        answer.body.contains("matcher_unavailable"),
        "{}",
        answer.body
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_matcher_dropping_every_connection_is_unavailable_at_once() {
    let gateway = spawn_gateway(connection_dropper().await, 0).await;
    gateway.wait_for_readiness(false).await;
    let started = Instant::now();
    let status = gateway.compare().await.unwrap_err();
    assert_eq!(status.code(), Code::Unavailable, "{status:?}");
    assert_eq!(reason(&status), "matcher_unavailable");
    assert!(started.elapsed() < Duration::from_secs(2));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn overload_answers_carry_retry_info_and_retry_after() {
    let matcher = MatcherProcess::start().await;
    let gateway = spawn_gateway(matcher.address, 0).await;
    matcher.matcher.set(Mode::QueueFull);
    let status = gateway.compare().await.unwrap_err();
    assert_eq!(status.code(), Code::ResourceExhausted);
    assert_eq!(reason(&status), "inference_queue_full");
    assert_eq!(retry_delay(&status), Some(Duration::from_secs(1)));
    let answer = rest_compare(&gateway, KEY_A).await;
    assert_eq!(answer.status, 503, "{}", answer.body);
    assert!(
        answer.headers.contains("retry-after: 1"),
        "{}",
        answer.headers
    );
    assert!(
        answer.body.contains("inference_queue_full"),
        "{}",
        answer.body
    );

    // A backend that sends no RetryInfo: the gateway adds its own.
    matcher.matcher.set(Mode::BareOverload);
    let status = gateway.compare().await.unwrap_err();
    assert_eq!(status.code(), Code::ResourceExhausted);
    assert!(retry_delay(&status).is_some(), "{status:?}");

    matcher.matcher.set(Mode::Answer);
    gateway
        .compare()
        .await
        .expect("served once the queue drains");
}

// ---------------------------------------------------------------- fairness

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_over_its_in_flight_limit_is_refused_at_once_and_others_are_not() {
    let matcher = MatcherProcess::start().await;
    let gateway = Arc::new(spawn_gateway(matcher.address, 2).await);
    matcher.matcher.set(Mode::Hold);
    let held: Vec<_> = (0..2)
        .map(|_| {
            let gateway = Arc::clone(&gateway);
            tokio::spawn(async move { gateway.compare_as(KEY_A, None).await })
        })
        .collect();
    let counter = Arc::clone(&matcher.matcher.entered);
    wait_until("both requests are in the matcher", || {
        counter.load(Ordering::SeqCst) >= 2
    })
    .await;

    let started = Instant::now();
    let status = gateway.compare().await.unwrap_err();
    assert!(started.elapsed() < Duration::from_secs(2));
    assert_eq!(status.code(), Code::ResourceExhausted, "{status:?}");
    assert_eq!(reason(&status), "too_many_in_flight");
    assert!(retry_delay(&status).is_some());
    let answer = rest_compare(&gateway, KEY_A).await;
    assert_eq!(answer.status, 429, "{}", answer.body);
    assert!(
        answer.headers.contains("retry-after: 1"),
        "{}",
        answer.headers
    );
    assert!(
        answer.body.contains("too_many_in_flight"),
        "{}",
        answer.body
    );

    // Another client is not held back by the first one's requests.
    let other = {
        let gateway = Arc::clone(&gateway);
        tokio::spawn(async move { gateway.compare_as(KEY_B, None).await })
    };
    wait_until("the other client's request is in the matcher", || {
        counter.load(Ordering::SeqCst) >= 3
    })
    .await;

    // A caller that goes away gives its slot back: the next request is let through (and ends
    // at its own short deadline, the matcher still holding everything).
    for call in &held {
        call.abort();
    }
    let started = Instant::now();
    loop {
        let status = gateway
            .compare_as(KEY_A, Some(Duration::from_millis(300)))
            .await
            .unwrap_err();
        // Let through: the gateway's DEADLINE_EXCEEDED, or the client's own timer first.
        if matches!(status.code(), Code::DeadlineExceeded | Code::Cancelled) {
            break;
        }
        assert_eq!(reason(&status), "too_many_in_flight", "{status:?}");
        assert!(started.elapsed() < WAIT, "the slots never came back");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    other.abort();
}

// ---------------------------------------------------------------- readiness

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn readiness_follows_the_matcher_and_requests_fail_fast_meanwhile() {
    let mut matcher = MatcherProcess::start().await;
    let gateway = spawn_gateway(matcher.address, 0).await;
    gateway.wait_for_readiness(true).await;
    let readyz = http(gateway.http_addr, "GET", "/readyz", None, b"").await;
    assert!(readyz.body.contains("\"ready\""), "{}", readyz.body);

    matcher.set_serving(false).await;
    gateway.wait_for_readiness(false).await;
    let healthz = http(gateway.http_addr, "GET", "/healthz", None, b"").await;
    assert_eq!(healthz.status, 200, "the process check stays up");
    let started = Instant::now();
    let status = gateway.compare().await.unwrap_err();
    assert_eq!(status.code(), Code::Unavailable, "{status:?}");
    assert_eq!(reason(&status), "matcher_unavailable");
    assert!(started.elapsed() < Duration::from_secs(2));

    matcher.set_serving(true).await;
    gateway.wait_for_readiness(true).await;
    gateway.compare().await.expect("served again");

    // Gone entirely (killed): not ready; no wait for a deadline.
    matcher.kill();
    gateway.wait_for_readiness(false).await;
    let readyz = http(gateway.http_addr, "GET", "/readyz", None, b"").await;
    assert!(readyz.body.contains("not_ready"), "{}", readyz.body);
}

// ---------------------------------------------------------------- malformed requests

/// A gRPC request whose message is `message`, sent as raw HTTP/2 through a tonic channel.
async fn raw_grpc(channel: Channel, path: &str, key: &str, message: &[u8]) -> Status {
    use tower::ServiceExt as _;
    let mut frame = vec![0u8];
    frame.extend_from_slice(&(message.len() as u32).to_be_bytes());
    frame.extend_from_slice(message);
    let body = String::from_utf8(frame).expect("the test frames are ASCII");
    let request = http::Request::builder()
        .method("POST")
        .uri(format!("http://localhost{path}"))
        .header("content-type", "application/grpc")
        .header("te", "trailers")
        .header("authorization", format!("Bearer {key}"))
        .body(tonic::body::Body::new(body))
        .unwrap();
    let response = within(channel.oneshot(request)).await.unwrap();
    Status::from_header_map(response.headers()).expect("a trailers-only error answer")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_malformed_protobuf_is_invalid_argument_with_error_info() {
    let matcher = MatcherProcess::start().await;
    let gateway = spawn_gateway(matcher.address, 0).await;
    // Field 1 with wire type 7, which does not exist.
    for message in [&b"\x0f\x07"[..], b"\x0a\x7f"] {
        let status = raw_grpc(
            gateway.grpc.clone(),
            "/faceproof.gateway.v1.FaceVerification/CompareWithLiveness",
            KEY_A,
            message,
        )
        .await;
        assert_eq!(status.code(), Code::InvalidArgument, "{status:?}");
        assert_eq!(reason(&status), "malformed_request");
    }
    assert_eq!(matcher.matcher.entered(), 0, "nothing reached the matcher");
}

// ---------------------------------------------------------------- reflection

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reflection_lists_only_the_public_services_over_v1_and_v1alpha() {
    let matcher = MatcherProcess::start().await;
    let gateway = spawn_gateway(matcher.address, 0).await;
    let expected = [
        "faceproof.gateway.v1.FaceVerification",
        "grpc.health.v1.Health",
    ];

    use tonic_reflection::pb::v1;
    let list = v1::ServerReflectionRequest {
        host: String::new(),
        message_request: Some(v1::server_reflection_request::MessageRequest::ListServices(
            String::new(),
        )),
    };
    let mut answers = within(
        v1::server_reflection_client::ServerReflectionClient::new(gateway.grpc.clone())
            .server_reflection_info(tokio_stream::iter([list])),
    )
    .await
    .unwrap()
    .into_inner();
    let answer = within(answers.message()).await.unwrap().unwrap();
    let Some(v1::server_reflection_response::MessageResponse::ListServicesResponse(services)) =
        answer.message_response
    else {
        panic!("expected a service list");
    };
    let names: Vec<String> = services.service.into_iter().map(|s| s.name).collect();
    for name in expected {
        assert!(names.iter().any(|listed| listed == name), "{names:?}");
    }
    assert!(
        !names
            .iter()
            .any(|name| name.contains("matcher") || name.contains("liveness")),
        "{names:?}"
    );

    use tonic_reflection::pb::v1alpha;
    let list = v1alpha::ServerReflectionRequest {
        host: String::new(),
        message_request: Some(
            v1alpha::server_reflection_request::MessageRequest::ListServices(String::new()),
        ),
    };
    let channel = within(
        Channel::from_shared(format!("http://{}", gateway.grpc_addr))
            .unwrap()
            .connect(),
    )
    .await
    .unwrap();
    let mut answers = within(
        v1alpha::server_reflection_client::ServerReflectionClient::new(channel)
            .server_reflection_info(tokio_stream::iter([list])),
    )
    .await
    .unwrap()
    .into_inner();
    let answer = within(answers.message()).await.unwrap().unwrap();
    let Some(v1alpha::server_reflection_response::MessageResponse::ListServicesResponse(services)) =
        answer.message_response
    else {
        panic!("expected a service list");
    };
    let names: Vec<String> = services.service.into_iter().map(|s| s.name).collect();
    for name in expected {
        assert!(names.iter().any(|listed| listed == name), "{names:?}");
    }
    assert!(
        !names
            .iter()
            .any(|name| name.contains("matcher") || name.contains("liveness")),
        "{names:?}"
    );
}
