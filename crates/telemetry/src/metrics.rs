//! Prometheus metrics: one registry per process, OpenMetrics text on `GET /metrics`.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::serve::ListenerExt as _;
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::{Metric, Registry};

use crate::TelemetryError;

/// Content type of the OpenMetrics text format that `prometheus-client` writes.
pub const OPENMETRICS_CONTENT_TYPE: &str =
    "application/openmetrics-text; version=1.0.0; charset=utf-8";

/// A stage of the face pipeline, timed separately.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Stage {
    Decode,
    Detect,
    Align,
    Embed,
    Antispoof,
}

impl Stage {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Decode => "decode",
            Self::Detect => "detect",
            Self::Align => "align",
            Self::Embed => "embed",
            Self::Antispoof => "antispoof",
        }
    }
}

/// How a comparison ended, counted without any score.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum CompareOutcome {
    /// Score at or above the caller's `compare_min_score`.
    Match,
    /// Score below `compare_min_score`.
    NoMatch,
    /// The caller gave no threshold: a score was returned without a decision.
    Unthresholded,
    /// No usable face in the probe or gallery.
    FaceIssue,
}

impl CompareOutcome {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Match => "match",
            Self::NoMatch => "no_match",
            Self::Unthresholded => "unthresholded",
            Self::FaceIssue => "face_issue",
        }
    }
}

/// How a liveness check ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum LivenessOutcome {
    Passed,
    Failed,
    /// Not run because the comparison score was below `compare_min_score`.
    Skipped,
}

impl LivenessOutcome {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Passed => "passed",
            Self::Failed => "failed",
            Self::Skipped => "skipped",
        }
    }
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct GrpcCallLabels {
    grpc_service: String,
    grpc_method: String,
    grpc_code: u16,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct GrpcMethodLabels {
    grpc_service: String,
    grpc_method: String,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct HttpRequestLabels {
    route: &'static str,
    method: String,
    status: u16,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct HttpRouteLabels {
    route: &'static str,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct StageLabels {
    stage: &'static str,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct OutcomeLabels {
    outcome: &'static str,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct BackendReplicaLabels {
    backend: &'static str,
    health: &'static str,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ModelLabels {
    model: String,
    sha256: String,
}

type HistogramFamily<L> = Family<L, Histogram, fn() -> Histogram>;

/// 1 ms .. ~16 s: a gRPC call spans fast rejections to slow ACCURATE requests.
fn request_histogram() -> Histogram {
    Histogram::new(exponential_buckets(0.001, 2.0, 15))
}

/// 0.25 ms .. ~4 s: stages range from alignment (sub-millisecond) to detection on big images.
fn stage_histogram() -> Histogram {
    Histogram::new(exponential_buckets(0.000_25, 2.0, 15))
}

/// Characters of the model's sha256 kept in the info label: enough to tell builds apart.
const SHA256_PREFIX_LEN: usize = 12;

struct Instruments {
    registry: Registry,
    grpc_handled: Family<GrpcCallLabels, Counter>,
    grpc_handling_seconds: HistogramFamily<GrpcMethodLabels>,
    http_handled: Family<HttpRequestLabels, Counter>,
    http_handling_seconds: HistogramFamily<HttpRouteLabels>,
    stage_seconds: HistogramFamily<StageLabels>,
    queue_depth: Gauge,
    queue_rejected: Counter,
    compare_outcomes: Family<OutcomeLabels, Counter>,
    liveness_outcomes: Family<OutcomeLabels, Counter>,
    model_info: Family<ModelLabels, Gauge>,
    backend_replicas: Family<BackendReplicaLabels, Gauge>,
}

/// Builds the registry: each metric is registered under `faceproof_<name>` and its handle kept to
/// record into.
struct Registrar(Registry);

impl Registrar {
    fn add<M: Metric + Clone>(&mut self, name: &str, help: &str, metric: M) -> M {
        self.0.register(name, help, metric.clone());
        metric
    }
}

/// The process's metrics; cheap to clone and share between the gRPC layer, the inference
/// worker and the `/metrics` endpoint. All names carry the `faceproof_` prefix.
#[derive(Clone)]
pub struct Metrics {
    inner: Arc<Instruments>,
}

impl std::fmt::Debug for Metrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Metrics").finish_non_exhaustive()
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    pub fn new() -> Self {
        let mut metrics = Registrar(Registry::with_prefix("faceproof"));
        let instruments = Instruments {
            grpc_handled: metrics.add(
                "grpc_server_handled",
                "gRPC calls completed, by service, method and status code",
                Family::default(),
            ),
            grpc_handling_seconds: metrics.add(
                "grpc_server_handling_seconds",
                "gRPC call latency from request headers to final status",
                Family::new_with_constructor(request_histogram),
            ),
            http_handled: metrics.add(
                "http_server_handled",
                "REST requests completed, by route (the path template, `other` for unknown paths), \
                 method and HTTP status",
                Family::default(),
            ),
            http_handling_seconds: metrics.add(
                "http_server_handling_seconds",
                "REST request latency from request headers to response headers",
                Family::new_with_constructor(request_histogram),
            ),
            stage_seconds: metrics.add(
                "inference_stage_seconds",
                "Time spent in each face pipeline stage",
                Family::new_with_constructor(stage_histogram),
            ),
            queue_depth: metrics.add(
                "inference_queue_depth",
                "Requests waiting for an inference thread",
                Gauge::default(),
            ),
            queue_rejected: metrics.add(
                "inference_queue_rejected",
                "Requests refused with RESOURCE_EXHAUSTED because the inference queue was full",
                Counter::default(),
            ),
            compare_outcomes: metrics.add(
                "compare_decisions",
                "Comparison outcomes against the caller's compare_min_score",
                Family::default(),
            ),
            liveness_outcomes: metrics.add(
                "liveness_decisions",
                "Liveness outcomes: passed, failed, or skipped below compare_min_score",
                Family::default(),
            ),
            model_info: metrics.add(
                "model_info",
                "Loaded models (value 1) with their sha256 prefix",
                Family::default(),
            ),
            backend_replicas: metrics.add(
                "backend_replicas",
                "Known replicas of each model service the gateway balances over, by health",
                Family::default(),
            ),
            registry: metrics.0,
        };
        Self {
            inner: Arc::new(instruments),
        }
    }

    /// Records one completed gRPC call ([`crate::GrpcServerLayer`] does this for servers).
    pub fn record_grpc_call(
        &self,
        service: &str,
        method: &str,
        code: tonic::Code,
        elapsed: Duration,
    ) {
        let method_labels = GrpcMethodLabels {
            grpc_service: service.to_owned(),
            grpc_method: method.to_owned(),
        };
        self.inner
            .grpc_handling_seconds
            .get_or_create(&method_labels)
            .observe(elapsed.as_secs_f64());
        self.inner
            .grpc_handled
            .get_or_create(&GrpcCallLabels {
                grpc_service: method_labels.grpc_service,
                grpc_method: method_labels.grpc_method,
                grpc_code: code as u16,
            })
            .inc();
    }

    /// Records one answered REST request; `route` is a fixed path template (bounded label set).
    pub fn record_http_request(
        &self,
        route: &'static str,
        method: &http::Method,
        status: u16,
        elapsed: Duration,
    ) {
        self.inner
            .http_handling_seconds
            .get_or_create(&HttpRouteLabels { route })
            .observe(elapsed.as_secs_f64());
        // Standard methods by name; anything else as one label value (bounded cardinality).
        let method = match *method {
            http::Method::GET
            | http::Method::POST
            | http::Method::PUT
            | http::Method::DELETE
            | http::Method::PATCH
            | http::Method::HEAD
            | http::Method::OPTIONS => method.as_str().to_owned(),
            _ => "other".to_owned(),
        };
        self.inner
            .http_handled
            .get_or_create(&HttpRequestLabels {
                route,
                method,
                status,
            })
            .inc();
    }

    /// Records the time one pipeline stage took for one image.
    pub fn record_stage(&self, stage: Stage, elapsed: Duration) {
        self.inner
            .stage_seconds
            .get_or_create(&StageLabels {
                stage: stage.as_str(),
            })
            .observe(elapsed.as_secs_f64());
    }

    /// Sets the number of requests waiting in the inference queue.
    pub fn set_queue_depth(&self, depth: usize) {
        self.inner
            .queue_depth
            .set(i64::try_from(depth).unwrap_or(i64::MAX));
    }

    /// Counts a request refused because the inference queue was full.
    pub fn record_queue_rejection(&self) {
        self.inner.queue_rejected.inc();
    }

    pub fn record_compare(&self, outcome: CompareOutcome) {
        self.inner
            .compare_outcomes
            .get_or_create(&OutcomeLabels {
                outcome: outcome.as_str(),
            })
            .inc();
    }

    pub fn record_liveness(&self, outcome: LivenessOutcome) {
        self.inner
            .liveness_outcomes
            .get_or_create(&OutcomeLabels {
                outcome: outcome.as_str(),
            })
            .inc();
    }

    /// Publishes a loaded model's name and the first characters of its sha256 (hex).
    pub fn set_model_info(&self, model: &str, sha256_hex: &str) {
        let sha256: String = sha256_hex.chars().take(SHA256_PREFIX_LEN).collect();
        self.inner
            .model_info
            .get_or_create(&ModelLabels {
                model: model.to_owned(),
                sha256,
            })
            .set(1);
    }

    /// Publishes how many replicas of a model service (`backend`) are healthy and unhealthy.
    pub fn set_backend_replicas(&self, backend: &'static str, healthy: usize, unhealthy: usize) {
        for (health, count) in [("healthy", healthy), ("unhealthy", unhealthy)] {
            self.inner
                .backend_replicas
                .get_or_create(&BackendReplicaLabels { backend, health })
                .set(i64::try_from(count).unwrap_or(i64::MAX));
        }
    }

    /// The registry in the OpenMetrics text format.
    pub fn encode(&self) -> Result<String, TelemetryError> {
        let mut text = String::new();
        prometheus_client::encoding::text::encode(&mut text, &self.inner.registry)?;
        Ok(text)
    }
}

/// The connections an axum server accepts on `listener`, with Nagle's algorithm off: axum
/// leaves it on, and an answer's small writes would then wait for the peer's delayed ACK (the
/// gRPC side of the same fix is `faceproof_runtime::accept_without_nagle`).
pub fn accept_http_without_nagle(
    listener: tokio::net::TcpListener,
) -> impl axum::serve::Listener<Io = tokio::net::TcpStream, Addr = std::net::SocketAddr> {
    listener.tap_io(|connection| {
        if let Err(error) = connection.set_nodelay(true) {
            tracing::debug!(%error, "cannot turn Nagle off on an HTTP connection");
        }
    })
}

/// Serves `GET /metrics` on `listener` until `shutdown` resolves.
pub async fn serve_metrics(
    listener: tokio::net::TcpListener,
    metrics: Metrics,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<(), TelemetryError> {
    let router = axum::Router::new()
        .route("/metrics", axum::routing::get(scrape))
        .with_state(metrics);
    axum::serve(accept_http_without_nagle(listener), router)
        .with_graceful_shutdown(shutdown)
        .await
        .map_err(TelemetryError::MetricsServer)
}

async fn scrape(State(metrics): State<Metrics>) -> Response {
    match metrics.encode() {
        Ok(text) => ([(header::CONTENT_TYPE, OPENMETRICS_CONTENT_TYPE)], text).into_response(),
        Err(error) => {
            tracing::error!(%error, "metrics encoding failed");
            StatusCode::INTERNAL_SERVER_ERROR.into_response()
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn encodes_every_family_with_its_labels() {
        let metrics = Metrics::new();
        metrics.record_stage(Stage::Detect, Duration::from_millis(3));
        metrics.record_stage(Stage::Antispoof, Duration::from_millis(7));
        metrics.set_queue_depth(4);
        metrics.record_queue_rejection();
        metrics.record_compare(CompareOutcome::NoMatch);
        metrics.record_liveness(LivenessOutcome::Skipped);
        metrics.set_model_info(
            "sface",
            "0ba9fbfa01b5270c96627c4ef784da859931e02f04419c829e83484087c34e79",
        );
        metrics.set_backend_replicas("matcher", 2, 1);
        let text = metrics.encode().unwrap();
        for expected in [
            "faceproof_inference_stage_seconds_count{stage=\"detect\"} 1",
            "faceproof_inference_stage_seconds_bucket{le=\"0.004\",stage=\"detect\"} 1",
            "faceproof_inference_stage_seconds_count{stage=\"antispoof\"} 1",
            "faceproof_inference_queue_depth 4",
            "faceproof_inference_queue_rejected_total 1",
            "faceproof_compare_decisions_total{outcome=\"no_match\"} 1",
            "faceproof_liveness_decisions_total{outcome=\"skipped\"} 1",
            "faceproof_model_info{model=\"sface\",sha256=\"0ba9fbfa01b5\"} 1",
            "faceproof_backend_replicas{backend=\"matcher\",health=\"healthy\"} 2",
            "faceproof_backend_replicas{backend=\"matcher\",health=\"unhealthy\"} 1",
        ] {
            assert!(text.contains(expected), "missing {expected:?} in\n{text}");
        }
        assert!(text.ends_with("# EOF\n"));
    }
}
