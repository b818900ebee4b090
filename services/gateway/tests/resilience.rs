//! The gateway when its model services misbehave or a client asks too much: fake matchers that
//! die mid-call, drop every connection, answer `inference_queue_full` or report NOT_SERVING;
//! the per-client in-flight limit; readiness (grpc.health, `/readyz`) following the model
//! services; a malformed protobuf body sent raw over HTTP/2; what reflection lists.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use faceproof_proto::gateway::v1::face_verification_client::FaceVerificationClient;
use faceproof_testkit::fake_backend::{
    COMPARE_PATH, GatewaySetup, HttpAnswer, Jwt, MatcherReplica, MatcherScript, WAIT, authorize,
    compare_request, fixture, http, reason, reflected_services, reflected_services_v1alpha,
    retry_delay, wait_until, within,
};
use faceproof_testkit::net::closes_every_connection;
use tonic::transport::Channel;
use tonic::{Code, Request, Status};
use tonic_health::pb::health_check_response::ServingStatus as Reported;
use tonic_health::pb::health_client::HealthClient;

/// Far above what any test waits: an answer well before it was not a deadline wait.
const DEADLINE_MS: u64 = 30_000;
const KEY_A: &str = "fp_resilience_client_a";
const KEY_B: &str = "fp_resilience_client_b";
const PUBLIC_SERVICE: &str = "faceproof.gateway.v1.FaceVerification";

/// What the model services' runtime answers when its inference queue is full.
fn queue_full() -> MatcherScript {
    MatcherScript::Fail(faceproof_runtime::ServiceError::overloaded(32).into())
}

// ---------------------------------------------------------------- the gateway

/// The gateway (API keys of clients a and b, no rate limit, backends probed every 50 ms) and
/// one gRPC connection to it.
struct TestGateway {
    grpc: Channel,
    http_addr: SocketAddr,
    _gateway: faceproof_testkit::fake_backend::TestGateway,
}

async fn spawn_gateway(matcher: SocketAddr, max_in_flight: usize) -> TestGateway {
    let gateway = GatewaySetup {
        matcher_url: Some(format!("http://{matcher}")),
        jwt: Jwt::None,
        api_keys: vec![
            ("client-a".into(), KEY_A.into()),
            ("client-b".into(), KEY_B.into()),
        ],
        args: vec![
            "--rate-limit-per-second=0".to_owned(),
            "--backend-refresh-ms=50".to_owned(),
            "--backend-connect-timeout-ms=300".to_owned(),
            format!("--deadline-fast-ms={DEADLINE_MS}"),
            format!("--deadline-accurate-ms={DEADLINE_MS}"),
            format!("--max-in-flight-per-client={max_in_flight}"),
            "--metrics-addr=off".to_owned(),
        ],
        ..GatewaySetup::default()
    }
    .start()
    .await;
    TestGateway {
        grpc: gateway.channel().await,
        http_addr: gateway.http_addr,
        _gateway: gateway,
    }
}

impl TestGateway {
    /// One gRPC compare as the client holding `key`, with an optional grpc-timeout.
    async fn compare_as(&self, key: &str, timeout: Option<Duration>) -> Result<(), Status> {
        let mut call = Request::new(compare_request());
        authorize(&mut call, key);
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
        COMPARE_PATH,
        Some(key),
        &rest_body(),
    )
    .await
}

// ---------------------------------------------------------------- codes

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_matcher_dying_mid_call_is_unavailable_not_internal() {
    let mut matcher = MatcherReplica::start_anywhere().await;
    let gateway = Arc::new(spawn_gateway(matcher.address, 0).await);
    gateway.compare().await.expect("a healthy stack answers");
    matcher.matcher.set(MatcherScript::Hold);
    let entered = matcher.matcher.calls();
    let call = tokio::spawn({
        let gateway = Arc::clone(&gateway);
        async move {
            let started = Instant::now();
            (gateway.compare().await, started.elapsed())
        }
    });
    let counter = matcher.matcher.calls_counter();
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
        answer.text.contains("matcher_unavailable"),
        "{}",
        answer.body
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_matcher_dropping_every_connection_is_unavailable_at_once() {
    let gateway = spawn_gateway(closes_every_connection().await.unwrap(), 0).await;
    gateway.wait_for_readiness(false).await;
    let started = Instant::now();
    let status = gateway.compare().await.unwrap_err();
    assert_eq!(status.code(), Code::Unavailable, "{status:?}");
    assert_eq!(reason(&status), "matcher_unavailable");
    assert!(started.elapsed() < Duration::from_secs(2));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn overload_answers_carry_retry_info_and_retry_after() {
    let matcher = MatcherReplica::start_anywhere().await;
    let gateway = spawn_gateway(matcher.address, 0).await;
    matcher.matcher.set(queue_full());
    let status = gateway.compare().await.unwrap_err();
    assert_eq!(status.code(), Code::ResourceExhausted);
    assert_eq!(reason(&status), "inference_queue_full");
    assert_eq!(retry_delay(&status), Some(Duration::from_secs(1)));
    let answer = rest_compare(&gateway, KEY_A).await;
    assert_eq!(answer.status, 503, "{}", answer.body);
    assert!(
        answer.header("retry-after") == Some("1"),
        "{:?}",
        answer.headers
    );
    assert!(
        answer.text.contains("inference_queue_full"),
        "{}",
        answer.body
    );

    // A backend that sends no RetryInfo: the gateway adds its own.
    matcher
        .matcher
        .set(MatcherScript::Fail(Status::resource_exhausted("busy")));
    let status = gateway.compare().await.unwrap_err();
    assert_eq!(status.code(), Code::ResourceExhausted);
    assert!(retry_delay(&status).is_some(), "{status:?}");

    matcher.matcher.set(MatcherScript::default());
    gateway
        .compare()
        .await
        .expect("served once the queue drains");
}

// ---------------------------------------------------------------- fairness

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_over_its_in_flight_limit_is_refused_at_once_and_others_are_not() {
    let matcher = MatcherReplica::start_anywhere().await;
    let gateway = Arc::new(spawn_gateway(matcher.address, 2).await);
    matcher.matcher.set(MatcherScript::Hold);
    let held: Vec<_> = (0..2)
        .map(|_| {
            let gateway = Arc::clone(&gateway);
            tokio::spawn(async move { gateway.compare_as(KEY_A, None).await })
        })
        .collect();
    let counter = matcher.matcher.calls_counter();
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
        answer.header("retry-after") == Some("1"),
        "{:?}",
        answer.headers
    );
    assert!(
        answer.text.contains("too_many_in_flight"),
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
    let mut matcher = MatcherReplica::start_anywhere().await;
    let gateway = spawn_gateway(matcher.address, 0).await;
    gateway.wait_for_readiness(true).await;
    let readyz = http(gateway.http_addr, "GET", "/readyz", None, b"").await;
    assert!(readyz.text.contains("\"ready\""), "{}", readyz.body);

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
    assert!(readyz.text.contains("not_ready"), "{}", readyz.body);
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
    let matcher = MatcherReplica::start_anywhere().await;
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
    assert_eq!(matcher.matcher.calls(), 0, "nothing reached the matcher");
}

// ---------------------------------------------------------------- reflection

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reflection_lists_only_the_public_services_over_v1_and_v1alpha() {
    let matcher = MatcherReplica::start_anywhere().await;
    let gateway = spawn_gateway(matcher.address, 0).await;
    let expected = [
        "faceproof.gateway.v1.FaceVerification",
        "grpc.health.v1.Health",
    ];

    for names in [
        reflected_services(gateway.grpc.clone()).await,
        reflected_services_v1alpha(gateway.grpc.clone()).await,
    ] {
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
}
