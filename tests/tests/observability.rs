//! Observability across the three services: one W3C trace from the gateway through the matcher
//! and the liveness service, and the Prometheus metrics each of them serves.
//!
//! The services are the real applications talking real gRPC on `127.0.0.1:0`; the model
//! engines are fakes behind the engine traits (no weights needed) that time their stages
//! exactly as the vision engines do, through `faceproof_runtime::time_stage`.
//!
//! This binary installs the process-wide subscriber once (in the trace test): every span of
//! every test here goes to that test's in-process OTLP collector, so the trace test selects its
//! spans by trace id.
#![allow(clippy::unwrap_used)]

use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use clap::Parser as _;
use faceproof_gateway::GatewayCli;
use faceproof_imaging::Cancellation;
use faceproof_liveness::{CheckJob, LivenessConfig, LivenessEngine, LivenessVerdict};
use faceproof_matcher::{ImageRole, MatchEngine, MatcherConfig, SubjectEmbedding, SubjectResult};
use faceproof_proto::common::v1::{BoundingBox, Face};
use faceproof_proto::gateway::v1 as pb;
use faceproof_proto::gateway::v1::face_verification_client::FaceVerificationClient;
use faceproof_runtime::{MetricsServer, time_stage};
use faceproof_signing::Signer;
use faceproof_telemetry::testing::{CollectedSpan, OtlpCollector, SpanKind};
use faceproof_telemetry::{Metrics, Stage, TelemetryConfig};
use faceproof_tests::{authorized, connect, fixture, wait_until_serving};
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

/// Every network await of this file is bounded by this: a hang must fail the test.
const TIMEOUT: Duration = Duration::from_secs(60);

const GATEWAY_SERVICE: &str = "faceproof.gateway.v1.FaceVerification";
const MATCHER_SERVICE: &str = "faceproof.matcher.v1.Matcher";
const LIVENESS_SERVICE: &str = "faceproof.liveness.v1.Liveness";

fn face() -> Face {
    Face {
        r#box: Some(BoundingBox {
            x: 40.0,
            y: 30.0,
            width: 80.0,
            height: 100.0,
        }),
        landmarks: Vec::new(),
        detection_score: 0.97,
    }
}

/// Same bytes as the probe: cosine 0.9 (a match); anything else: cosine -0.1.
struct FakeMatcher {
    metrics: Metrics,
}

impl MatchEngine for FakeMatcher {
    fn embed_subject(
        &self,
        image: &[u8],
        _mode: faceproof_proto::common::v1::SearchMode,
        role: ImageRole,
        cancel: &Cancellation,
    ) -> SubjectResult {
        let metrics = Some(&self.metrics);
        time_stage(metrics, Stage::Decode, || ());
        time_stage(metrics, Stage::Detect, || ());
        time_stage(metrics, Stage::Align, || ());
        cancel.check()?;
        // The probe is the unit x axis. Biden is the impostor (cosine -0.1); any other gallery
        // image matches (0.9, below the copy threshold).
        let biden = fixture("biden_2010_blue_room.jpg").unwrap_or_default();
        let cosine: f32 = match role {
            ImageRole::Probe => 1.0,
            ImageRole::Gallery if image == biden.as_slice() => -0.1,
            ImageRole::Gallery => 0.9,
        };
        let embedding = time_stage(metrics, Stage::Embed, || {
            vec![cosine, (1.0 - cosine * cosine).sqrt()]
        });
        Ok(Ok(SubjectEmbedding {
            face: face(),
            embedding,
        }))
    }

    fn warm_up(&self) -> Result<(), faceproof_matcher::EngineError> {
        Ok(())
    }
}

/// Always live (0.97), after the stages the vision engine times for a hinted face.
struct FakeLiveness {
    metrics: Metrics,
}

impl LivenessEngine for FakeLiveness {
    fn check(
        &self,
        job: CheckJob,
        _cancel: &Cancellation,
    ) -> Result<LivenessVerdict, faceproof_liveness::EngineError> {
        let metrics = Some(&self.metrics);
        time_stage(metrics, Stage::Decode, || ());
        time_stage(metrics, Stage::Antispoof, || ());
        Ok(LivenessVerdict {
            face: job.face_hint.unwrap_or_else(face),
            liveness_score: 0.97,
            attack: None,
            models: Vec::new(),
        })
    }

    fn warm_up(&self) -> Result<(), faceproof_liveness::EngineError> {
        Ok(())
    }
}

/// One running application and the switch that stops it.
struct Running {
    stop: Option<oneshot::Sender<()>>,
    task: JoinHandle<anyhow::Result<()>>,
    metrics_server: MetricsServer,
}

impl Running {
    async fn stop(mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        tokio::time::timeout(TIMEOUT, self.task)
            .await
            .expect("service stops in time")
            .expect("service task did not panic")
            .expect("service ended cleanly");
        self.metrics_server.stop().await;
    }
}

fn spawn<F>(metrics: &Metrics, metrics_listener: TcpListener, run: F) -> Running
where
    F: FnOnce(oneshot::Receiver<()>) -> JoinHandle<anyhow::Result<()>>,
{
    let (stop, stopped) = oneshot::channel();
    Running {
        stop: Some(stop),
        task: run(stopped),
        metrics_server: MetricsServer::spawn(metrics_listener, metrics.clone()).unwrap(),
    }
}

/// Gateway + matcher + liveness, each with its own registry served on its own `/metrics`.
struct Stack {
    gateway_url: String,
    token: String,
    gateway: Running,
    matcher: Running,
    liveness: Running,
    _dir: tempfile::TempDir,
}

async fn bind() -> TcpListener {
    TcpListener::bind("127.0.0.1:0").await.unwrap()
}

async fn spawn_stack() -> Stack {
    let matcher_metrics = Metrics::new();
    let mut matcher_config = MatcherConfig::default();
    matcher_config.host.serving.shutdown_grace_ms = 2_000;
    let matcher_app = faceproof_matcher::Application::build_with_metrics(
        matcher_config,
        bind().await,
        Arc::new(FakeMatcher {
            metrics: matcher_metrics.clone(),
        }),
        matcher_metrics.clone(),
    )
    .unwrap();
    let matcher_url = format!("http://{}", matcher_app.local_addr());
    let matcher = spawn(&matcher_metrics, bind().await, |stopped| {
        tokio::spawn(async move {
            Ok(matcher_app
                .run_until_stopped(async {
                    let _ = stopped.await;
                })
                .await?)
        })
    });

    let liveness_metrics = Metrics::new();
    let mut liveness_config = LivenessConfig::default();
    liveness_config.host.serving.shutdown_grace_ms = 2_000;
    let liveness_app = faceproof_liveness::Application::build_with_metrics(
        liveness_config,
        bind().await,
        Arc::new(FakeLiveness {
            metrics: liveness_metrics.clone(),
        }),
        liveness_metrics.clone(),
    )
    .unwrap();
    let liveness_url = format!("http://{}", liveness_app.local_addr());
    let liveness = spawn(&liveness_metrics, bind().await, |stopped| {
        tokio::spawn(async move {
            Ok(liveness_app
                .run_until_stopped(async {
                    let _ = stopped.await;
                })
                .await?)
        })
    });

    let dir = tempfile::tempdir().unwrap();
    let secret = "an-hs256-secret-of-more-than-32-bytes-for-tests";
    let secret_file = write(dir.path(), "jwt-secret", secret);
    let signer = Signer::generate();
    let signing_key_file = write(dir.path(), "signing.pem", &signer.to_pkcs8_pem().unwrap());
    let data_dir = dir.path().join("data").display().to_string();
    let config = GatewayCli::try_parse_from([
        "faceproof-gateway",
        "--matcher-url",
        &matcher_url,
        "--liveness-url",
        &liveness_url,
        "--jwt-algorithm",
        "HS256",
        "--jwt-secret-file",
        &secret_file,
        "--signing-key-file",
        &signing_key_file,
        "--deadline-fast-ms",
        "60000",
        "--rate-limit-per-second",
        "1000",
        "--shutdown-grace-ms",
        "2000",
        "--data-dir",
        &data_dir,
    ])
    .unwrap()
    .config;
    let gateway_metrics = Metrics::new();
    let gateway_app = faceproof_gateway::Application::build_with_metrics(
        config,
        bind().await,
        bind().await,
        gateway_metrics.clone(),
    )
    .unwrap();
    let gateway_url = format!("http://{}", gateway_app.grpc_addr());
    let gateway = spawn(&gateway_metrics, bind().await, |stopped| {
        tokio::spawn(async move {
            Ok(gateway_app
                .run_until_stopped(async {
                    let _ = stopped.await;
                })
                .await?)
        })
    });

    wait_until_serving(&matcher_url).await.unwrap();
    wait_until_serving(&liveness_url).await.unwrap();
    // Ready once it has seen both model services healthy.
    wait_until_serving(&gateway_url).await.unwrap();
    Stack {
        gateway_url,
        token: mint_token(secret),
        gateway,
        matcher,
        liveness,
        _dir: dir,
    }
}

impl Stack {
    /// One FAST CompareWithLiveness call with a `compare_min_score` of 0.8.
    async fn compare(&self, probe: &[u8], gallery: &[u8]) -> pb::CompareWithLivenessResponse {
        let mut client = FaceVerificationClient::new(connect(&self.gateway_url).await.unwrap())
            .max_encoding_message_size(usize::MAX)
            .max_decoding_message_size(64 << 20);
        let request = pb::CompareWithLivenessRequest {
            os: "DESKTOP".into(),
            probe: probe.to_vec().into(),
            gallery: vec![gallery.to_vec().into()],
            search_mode: "FAST".into(),
            compare_min_score: Some(0.8),
            liveness_min_score: None,
        };
        tokio::time::timeout(
            TIMEOUT,
            client.compare_with_liveness(authorized(request, &self.token)),
        )
        .await
        .expect("answer in time")
        .expect("CompareWithLiveness succeeds")
        .into_inner()
    }

    async fn shutdown(self) {
        self.gateway.stop().await;
        self.matcher.stop().await;
        self.liveness.stop().await;
    }
}

fn write(dir: &Path, name: &str, contents: &str) -> String {
    let path = dir.join(name);
    std::fs::write(&path, contents).unwrap();
    path.display().to_string()
}

fn mint_token(secret: &str) -> String {
    #[derive(serde::Serialize)]
    struct Claims {
        sub: &'static str,
        exp: i64,
    }
    jsonwebtoken::encode(
        &jsonwebtoken::Header::new(jsonwebtoken::Algorithm::HS256),
        &Claims {
            sub: "observability-client",
            exp: chrono::Utc::now().timestamp() + 3600,
        },
        &jsonwebtoken::EncodingKey::from_secret(secret.as_bytes()),
    )
    .unwrap()
}

/// `GET /metrics` over plain HTTP/1.1; the body of a 200 answer.
async fn scrape(address: SocketAddr) -> String {
    let fetch = async {
        let mut stream = TcpStream::connect(address).await?;
        stream
            .write_all(b"GET /metrics HTTP/1.1\r\nHost: metrics\r\nConnection: close\r\n\r\n")
            .await?;
        let mut response = String::new();
        stream.read_to_string(&mut response).await?;
        anyhow::Ok(response)
    };
    let response = tokio::time::timeout(TIMEOUT, fetch)
        .await
        .expect("scrape in time")
        .unwrap();
    let (head, body) = response
        .split_once("\r\n\r\n")
        .context("an HTTP answer")
        .unwrap();
    assert!(head.starts_with("HTTP/1.1 200"), "{head}");
    body.to_owned()
}

fn assert_has(text: &str, expected: &str) {
    assert!(text.contains(expected), "missing {expected:?} in\n{text}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_endpoints_show_requests_stages_queue_and_decisions() {
    let stack = spawn_stack().await;
    let obama = fixture("obama_2009_congress.jpg").unwrap();
    let biden = fixture("biden_2010_blue_room.jpg").unwrap();

    let portrait = fixture("obama_2012_official_portrait.jpg").unwrap();
    let matched = stack.compare(&portrait, &obama).await;
    let data = matched.data.unwrap();
    assert!(data.liveness.is_some(), "a match runs the liveness check");
    let skipped = stack.compare(&obama, &biden).await;
    assert!(
        skipped.data.unwrap().liveness.unwrap().status == "skipped",
        "no match skips it"
    );

    let gateway = scrape(stack.gateway.metrics_server.local_addr()).await;
    let gateway_call =
        format!("grpc_service=\"{GATEWAY_SERVICE}\",grpc_method=\"CompareWithLiveness\"");
    assert_has(
        &gateway,
        &format!("faceproof_grpc_server_handled_total{{{gateway_call},grpc_code=\"0\"}} 2"),
    );
    assert_has(
        &gateway,
        &format!("faceproof_grpc_server_handling_seconds_count{{{gateway_call}}} 2"),
    );
    for decision in [
        "faceproof_compare_decisions_total{outcome=\"match\"} 1",
        "faceproof_compare_decisions_total{outcome=\"no_match\"} 1",
        "faceproof_liveness_decisions_total{outcome=\"passed\"} 1",
        "faceproof_liveness_decisions_total{outcome=\"skipped\"} 1",
    ] {
        assert_has(&gateway, decision);
    }

    let matcher = scrape(stack.matcher.metrics_server.local_addr()).await;
    assert_has(
        &matcher,
        &format!(
            "faceproof_grpc_server_handled_total{{grpc_service=\"{MATCHER_SERVICE}\",grpc_method=\"Compare\",grpc_code=\"0\"}} 2"
        ),
    );
    for stage in [
        "faceproof_inference_stage_seconds_count{stage=\"decode\"} 4",
        "faceproof_inference_stage_seconds_count{stage=\"detect\"} 4",
        "faceproof_inference_stage_seconds_count{stage=\"align\"} 4",
        "faceproof_inference_stage_seconds_count{stage=\"embed\"} 4",
        "# TYPE faceproof_inference_stage_seconds histogram",
        "faceproof_inference_queue_depth 0",
        "faceproof_inference_queue_rejected_total 0",
    ] {
        assert_has(&matcher, stage);
    }
    assert!(
        !matcher.contains("faceproof_compare_decisions_total{"),
        "decisions are the gateway's"
    );

    let liveness = scrape(stack.liveness.metrics_server.local_addr()).await;
    assert_has(
        &liveness,
        &format!(
            "faceproof_grpc_server_handled_total{{grpc_service=\"{LIVENESS_SERVICE}\",grpc_method=\"Check\",grpc_code=\"0\"}} 1"
        ),
    );
    assert_has(
        &liveness,
        "faceproof_inference_stage_seconds_count{stage=\"antispoof\"} 1",
    );

    stack.shutdown().await;
}

/// The spans of `trace_id` with the given kind whose `rpc.service` is `service`.
fn spans_of<'a>(
    spans: &'a [CollectedSpan],
    trace_id: &str,
    kind: SpanKind,
    service: &str,
) -> Vec<&'a CollectedSpan> {
    spans
        .iter()
        .filter(|span| {
            span.trace_id == trace_id
                && span.kind == kind
                && span.attribute("rpc.service") == Some(service)
        })
        .collect()
}

/// Whether `ancestor_id` is on the parent chain of `span` within `spans`.
fn descends_from(spans: &[CollectedSpan], span: &CollectedSpan, ancestor_id: &str) -> bool {
    let mut current = span.parent_span_id.clone();
    for _ in 0..spans.len() {
        let Some(parent_id) = current else {
            return false;
        };
        if parent_id == ancestor_id {
            return true;
        }
        current = spans
            .iter()
            .find(|candidate| candidate.span_id == parent_id)
            .and_then(|parent| parent.parent_span_id.clone());
    }
    false
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_trace_spans_gateway_matcher_and_liveness() {
    let collector = OtlpCollector::start(bind().await).unwrap();
    let mut config = TelemetryConfig::new("faceproof-observability-test");
    config.otlp_endpoint = Some(collector.endpoint().to_owned());
    config.log_filter = "info".to_owned();
    let guard = faceproof_telemetry::init(&config).unwrap();
    assert!(guard.is_exporting());

    let stack = spawn_stack().await;
    // Two different photos: identical bytes would be a gallery copy, refused without a liveness call.
    let probe = fixture("obama_2012_official_portrait.jpg").unwrap();
    let gallery = fixture("obama_2009_congress.jpg").unwrap();
    let answer = stack.compare(&probe, &gallery).await;
    let liveness = answer.data.unwrap().liveness.unwrap();
    assert_eq!(liveness.status, "success", "{liveness:?}");
    stack.shutdown().await;
    tokio::time::timeout(TIMEOUT, guard.shutdown())
        .await
        .expect("flush in time")
        .unwrap();

    let is_gateway_call = |span: &CollectedSpan| {
        span.kind == SpanKind::Server
            && span.name == format!("{GATEWAY_SERVICE}/CompareWithLiveness")
    };
    let spans = collector
        .wait_for(TIMEOUT, |spans| {
            spans
                .iter()
                .filter(|span| is_gateway_call(span))
                .any(|gateway| {
                    [MATCHER_SERVICE, LIVENESS_SERVICE].iter().all(|service| {
                        !spans_of(spans, &gateway.trace_id, SpanKind::Server, service).is_empty()
                    })
                })
        })
        .await
        .unwrap();

    // The metrics test of this binary may run at the same time: pick this request's trace.
    let gateway = spans
        .iter()
        .filter(|span| is_gateway_call(span))
        .find(|gateway| {
            !spans_of(
                &spans,
                &gateway.trace_id,
                SpanKind::Server,
                LIVENESS_SERVICE,
            )
            .is_empty()
        })
        .expect("a gateway call traced through both backends");
    let trace_id = gateway.trace_id.as_str();
    assert_eq!(gateway.parent_span_id, None, "the caller sent no context");
    assert_eq!(gateway.attribute("rpc.grpc.status_code"), Some("0"));

    for (service, method) in [(MATCHER_SERVICE, "Compare"), (LIVENESS_SERVICE, "Check")] {
        let servers = spans_of(&spans, trace_id, SpanKind::Server, service);
        assert_eq!(servers.len(), 1, "{service}: {servers:#?}");
        let server = servers[0];
        assert_eq!(server.name, format!("{service}/{method}"));
        let clients = spans_of(&spans, trace_id, SpanKind::Client, service);
        assert_eq!(clients.len(), 1, "{service}: {clients:#?}");
        let client = clients[0];
        assert_eq!(
            server.parent_span_id.as_deref(),
            Some(client.span_id.as_str()),
            "{service}'s server span is the child of the gateway's client span"
        );
        assert!(
            descends_from(&spans, client, &gateway.span_id),
            "the gateway's {service} call is part of its request"
        );
    }

    // Stage spans run on the inference threads under the backends' request spans.
    let matcher_server = spans_of(&spans, trace_id, SpanKind::Server, MATCHER_SERVICE)[0];
    let liveness_server = spans_of(&spans, trace_id, SpanKind::Server, LIVENESS_SERVICE)[0];
    let stage = |name: &str, under: &CollectedSpan| {
        spans.iter().any(|span| {
            span.trace_id == trace_id
                && span.name == name
                && descends_from(&spans, span, &under.span_id)
        })
    };
    for name in ["decode", "detect", "align", "embed"] {
        assert!(stage(name, matcher_server), "matcher stage {name}");
    }
    assert!(stage("antispoof", liveness_server), "liveness stage");

    // The request span carries mode, size and decisions, and nothing personal.
    let request = spans
        .iter()
        .find(|span| span.trace_id == trace_id && span.name == "gateway.compare_with_liveness")
        .expect("the gateway's request span");
    assert_eq!(request.attribute("search_mode"), Some("FAST"));
    assert_eq!(request.attribute("gallery_size"), Some("1"));
    assert_eq!(request.attribute("compare_outcome"), Some("match"));
    assert_eq!(request.attribute("liveness_outcome"), Some("passed"));
    for span in spans.iter().filter(|span| span.trace_id == trace_id) {
        for (key, value) in &span.attributes {
            let key = key.to_ascii_lowercase();
            for forbidden in ["score", "token", "embedding", "image", "authorization"] {
                assert!(!key.contains(forbidden), "{} carries {key}", span.name);
            }
            assert!(
                !value.contains(&stack_token_prefix()),
                "{} leaks a token",
                span.name
            );
        }
    }
}

/// The start of every HS256 JWT header this file mints (`{"typ":"JWT","alg":"HS256"}`
/// base64url-encoded starts with `eyJ`).
fn stack_token_prefix() -> String {
    "eyJ".to_owned()
}
