//! Service plumbing shared by faceproof's services: the inference pool that keeps model work off
//! the async runtime, request deadlines, the error-to-status mapping, health, reflection, graceful
//! shutdown, the process lifecycle ([`run_process`]) and the telemetry settings and metrics
//! endpoint shared by all three services (the telemetry itself lives in faceproof-telemetry).
//!
//! With the `model-service` feature, [`host`] is the whole model-service host: the settings every
//! model service shares, the [`host::ModelService`] trait the matcher and the liveness service
//! implement, and the one generic application that loads, warms up, serves and drains them.
//! No model code lives here.

#![cfg_attr(test, allow(clippy::unwrap_used))]

pub mod args;
pub mod candle_threads;
pub mod deadline;
pub mod error;
pub mod health;
#[cfg(any(feature = "model-service", test))]
pub mod host;
pub mod inference;
pub mod malformed;
pub mod pool;
pub mod process;
pub mod serve;
pub mod telemetry;

pub use args::{ImageBoundsArgs, ServingArgs};
pub use candle_threads::exec_with_one_candle_thread_by_default;
pub use deadline::{Deadline, DeadlineExceeded, DeadlinePolicy, parse_grpc_timeout};
pub use error::{ERROR_DOMAIN, ErrorCode, ServiceError, check_image_bytes};
pub use health::ServiceHealth;
pub use inference::{Inference, respond};
pub use malformed::{MALFORMED_REQUEST, MalformedRequestLayer, malformed_request_status};
pub use pool::{InferencePool, PoolConfig, PoolStats};
pub use process::run_process;
pub use serve::{
    ObservedLayers, ObservedRouter, accept_without_nagle, observed_server, reflection_service,
    serve_until_shutdown, shutdown_signal,
};
pub use telemetry::{MetricsAddr, MetricsServer, TelemetryArgs, time_stage};

/// Everything that can go wrong in the runtime plumbing.
#[derive(Debug, thiserror::Error)]
pub enum RuntimeError {
    /// The inference queue holds as many jobs as it may: the caller should back off.
    #[error("inference queue is full ({capacity} jobs waiting)")]
    QueueFull { capacity: usize },
    /// The request's deadline passed before its result was ready.
    #[error("deadline exceeded")]
    DeadlineExceeded,
    /// The job panicked; the worker thread survived and the panic message was logged.
    #[error("inference job panicked: {0}")]
    JobPanicked(String),
    /// The pool was shut down (or its workers are gone) before the job produced a result.
    #[error("inference pool is shut down")]
    PoolClosed,
    #[error("invalid inference pool configuration: {0}")]
    InvalidPoolConfig(String),
    #[error("failed to spawn inference worker thread: {0}")]
    SpawnWorker(#[source] std::io::Error),
    #[error("invalid grpc-timeout header {value:?}: {why}")]
    InvalidGrpcTimeout { value: String, why: &'static str },
    #[error("failed to build the reflection service: {0}")]
    Reflection(String),
    #[error("failed to read the listener address: {0}")]
    Listener(#[source] std::io::Error),
    #[error("gRPC transport failed: {0}")]
    Transport(#[from] tonic::transport::Error),
    #[error(transparent)]
    Telemetry(#[from] faceproof_telemetry::TelemetryError),
    #[error("cannot listen for metrics on {addr}: {source}")]
    MetricsListener {
        addr: std::net::SocketAddr,
        #[source]
        source: std::io::Error,
    },
}

/// Why a model service could not start, or stopped serving with an error (request failures are
/// [`ServiceError`]s). One family for every model service; what is a service's own (the
/// matcher's calibration table) travels in [`HostError::Service`].
#[derive(Debug, thiserror::Error)]
pub enum HostError {
    #[error("invalid configuration: {0}")]
    Config(String),
    #[error("cannot load the models: {0}")]
    ModelLoad(String),
    #[error("cannot read the listener address: {0}")]
    Listener(#[source] std::io::Error),
    #[error("engine warm-up failed: {0}")]
    WarmUp(String),
    /// A start-up failure of the service's own.
    #[error(transparent)]
    Service(Box<dyn std::error::Error + Send + Sync>),
    #[error(transparent)]
    Runtime(#[from] RuntimeError),
}
