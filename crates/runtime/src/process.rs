//! The lifecycle of a service process, the same for the gateway and the model services:
//! telemetry (logs, traces) first, then the service until SIGTERM or ctrl-c, then the last spans
//! flushed.

use std::future::Future;
use std::pin::Pin;

use anyhow::Context as _;
use faceproof_telemetry::TelemetryConfig;

use crate::serve::shutdown_signal;

/// Resolves on SIGTERM or ctrl-c: what a process hands its service as the shutdown future.
pub type ShutdownSignal = Pin<Box<dyn Future<Output = ()> + Send + 'static>>;

/// Runs one service as the whole process: installs telemetry from `telemetry` (build it with
/// [`crate::TelemetryArgs::telemetry_config`]), runs `serve` with the SIGTERM/ctrl-c future
/// until it returns, then flushes the last spans (a failed flush is logged, never an error).
/// Call it once per process.
pub async fn run_process<F, Fut>(telemetry: TelemetryConfig, serve: F) -> anyhow::Result<()>
where
    F: FnOnce(ShutdownSignal) -> Fut,
    Fut: Future<Output = anyhow::Result<()>>,
{
    let guard = faceproof_telemetry::init(&telemetry).context("initialising telemetry")?;
    let served = serve(Box::pin(shutdown_signal())).await;
    if let Err(error) = guard.shutdown().await {
        tracing::warn!(%error, "flushing the last spans failed");
    }
    served
}
