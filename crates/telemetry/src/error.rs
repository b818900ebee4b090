use std::io;

/// Everything that can go wrong while setting up or serving telemetry.
#[derive(Debug, thiserror::Error)]
pub enum TelemetryError {
    /// `FACEPROOF_LOG_FORMAT` (or the service's flag) is neither `json` nor `human`.
    #[error("unknown log format {0:?}: expected \"json\" or \"human\"")]
    UnknownLogFormat(String),
    /// The `RUST_LOG`-style filter does not parse.
    #[error("invalid log filter {filter:?}: {source}")]
    InvalidLogFilter {
        filter: String,
        #[source]
        source: tracing_subscriber::filter::ParseError,
    },
    /// The service name is empty; it becomes `service.name` and must identify the process.
    #[error("service name must not be empty")]
    EmptyServiceName,
    /// The OTLP endpoint is not an `http://` or `https://` URL.
    #[error("invalid OTLP endpoint {0:?}: expected an http:// or https:// URL")]
    InvalidOtlpEndpoint(String),
    /// The OTLP exporter is built on the tokio runtime (its gRPC channel spawns a task).
    #[error("telemetry with an OTLP endpoint must be initialised inside a tokio runtime")]
    NoTokioRuntime,
    /// The OTLP exporter could not be built.
    #[error("building the OTLP span exporter: {0}")]
    Exporter(#[from] opentelemetry_otlp::ExporterBuildError),
    /// Flushing or shutting down the tracer provider failed (spans may be lost).
    #[error("shutting down the tracer provider: {0}")]
    Shutdown(#[from] opentelemetry_sdk::error::OTelSdkError),
    /// A global subscriber was already installed in this process.
    #[error("a global tracing subscriber is already installed: {0}")]
    AlreadyInitialised(#[from] tracing_subscriber::util::TryInitError),
    /// Encoding the metrics in the text exposition format failed.
    #[error("encoding metrics: {0}")]
    MetricsEncoding(#[from] std::fmt::Error),
    /// The metrics HTTP server failed.
    #[error("serving metrics: {0}")]
    MetricsServer(#[source] io::Error),
    /// The test collector's gRPC server failed.
    #[error("test collector: {0}")]
    Collector(String),
    /// Waiting for exported spans took longer than allowed.
    #[error("timed out after {0:?} waiting for exported spans")]
    CollectorTimeout(std::time::Duration),
}
