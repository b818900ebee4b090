//! Observability for faceproof's three services: logs, traces and metrics.
//!
//! Design, in short:
//! - [`init`] installs one `tracing` subscriber per process: an `EnvFilter` (`RUST_LOG`, default
//!   `info`), human or JSON log lines, and a `tracing-opentelemetry` layer, so ordinary `tracing`
//!   spans *are* the OpenTelemetry spans. Spans are exported over OTLP/gRPC only when an endpoint
//!   is configured; otherwise no exporter and no background thread exist, but span ids are still
//!   minted so W3C trace context flows through the service.
//! - [`propagation`] carries W3C `traceparent` over gRPC metadata: [`TraceContextInterceptor`] on
//!   clients, [`GrpcServerLayer`] (or [`propagation::extract_context`]) on servers.
//! - [`Metrics`] is a Prometheus registry (OpenMetrics text) with the counters and histograms the
//!   services record; [`serve_metrics`] exposes `GET /metrics` on its own port, and
//!   [`GrpcServerLayer`] records every gRPC call's count and latency by method and status.
//! - Configuration comes in as plain values ([`TelemetryConfig`]); services read the environment
//!   in one place (their `clap` config), this crate only via [`TelemetryConfig::from_env`].
//!
//! Privacy rule: spans, span attributes, log fields and metric labels never carry images,
//! embeddings, tokens, API keys or per-person scores. They carry methods, status codes, sizes,
//! stage timings, model names and decisions aggregated as counters. Handlers that add fields to a
//! span must follow the same rule; per-request scores belong in the signed response only.
#![cfg_attr(test, allow(clippy::unwrap_used))]

mod config;
mod error;
mod grpc_layer;
mod metrics;
pub mod propagation;
mod setup;
#[cfg(feature = "testing")]
pub mod testing;

pub use config::{LogFormat, TelemetryConfig};
pub use error::TelemetryError;
pub use grpc_layer::{GrpcServerLayer, GrpcServerService};
pub use metrics::{
    CompareOutcome, LivenessOutcome, Metrics, OPENMETRICS_CONTENT_TYPE, Stage,
    accept_http_without_nagle, serve_metrics,
};
pub use propagation::TraceContextInterceptor;
pub use setup::{TelemetryGuard, build_subscriber, init};
