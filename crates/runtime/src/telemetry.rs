//! Telemetry settings every service shares (flags and environment variables) and the `/metrics`
//! endpoint's lifecycle. The subscriber, spans and metrics themselves are faceproof-telemetry's.

use std::fmt;
use std::net::SocketAddr;
use std::str::FromStr;
use std::time::{Duration, Instant};

use faceproof_telemetry::{LogFormat, Metrics, Stage, TelemetryConfig, TelemetryError};
use tokio::net::TcpListener;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

use crate::RuntimeError;

/// How long a stopping metrics server may take to close its connections.
const METRICS_STOP_TIMEOUT: Duration = Duration::from_secs(5);

/// Runs one face pipeline stage inside its own span (a child of the request's span, which the
/// inference pool enters) and records its duration in `faceproof_inference_stage_seconds`.
pub fn time_stage<T>(metrics: Option<&Metrics>, stage: Stage, work: impl FnOnce() -> T) -> T {
    let span = tracing::info_span!(
        "inference.stage",
        otel.name = stage.as_str(),
        stage = stage.as_str()
    );
    let _entered = span.enter();
    let started = Instant::now();
    let output = work();
    if let Some(metrics) = metrics {
        metrics.record_stage(stage, started.elapsed());
    }
    output
}

/// Logs and traces: the flags behind [`faceproof_telemetry::init`].
#[derive(Debug, Clone, PartialEq, Eq, clap::Args)]
pub struct TelemetryArgs {
    /// Log line format: `human` (text) or `json` (one object per line).
    #[arg(long, env = "FACEPROOF_LOG_FORMAT", default_value = "human", value_parser = parse_log_format)]
    pub log_format: LogFormat,

    /// Log filter in the `RUST_LOG` syntax, e.g. `info,faceproof_matcher=debug`.
    #[arg(long, env = "RUST_LOG", default_value = TelemetryConfig::DEFAULT_LOG_FILTER)]
    pub log_filter: String,

    /// OTLP/gRPC collector that receives the traces, e.g. `http://otel-collector:4317`; unset or
    /// empty exports nothing (trace context is still propagated).
    #[arg(long, env = "OTEL_EXPORTER_OTLP_ENDPOINT")]
    pub otlp_endpoint: Option<String>,
}

fn parse_log_format(value: &str) -> Result<LogFormat, String> {
    value
        .parse()
        .map_err(|error: TelemetryError| error.to_string())
}

impl Default for TelemetryArgs {
    fn default() -> Self {
        Self {
            log_format: LogFormat::Human,
            log_filter: TelemetryConfig::DEFAULT_LOG_FILTER.to_owned(),
            otlp_endpoint: None,
        }
    }
}

impl TelemetryArgs {
    /// The settings for [`faceproof_telemetry::init`], validated; an empty endpoint means none.
    pub fn telemetry_config(&self, service_name: &str) -> Result<TelemetryConfig, RuntimeError> {
        let mut config = TelemetryConfig::new(service_name);
        config.log_format = self.log_format;
        if !self.log_filter.trim().is_empty() {
            config.log_filter.clone_from(&self.log_filter);
        }
        config.otlp_endpoint = self
            .otlp_endpoint
            .as_deref()
            .map(str::trim)
            .filter(|endpoint| !endpoint.is_empty())
            .map(str::to_owned);
        config.validate()?;
        Ok(config)
    }
}

/// Where `GET /metrics` is served, or nowhere (`off`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MetricsAddr(pub Option<SocketAddr>);

impl MetricsAddr {
    /// No metrics endpoint.
    pub const DISABLED: Self = Self(None);

    pub fn addr(self) -> Option<SocketAddr> {
        self.0
    }
}

impl FromStr for MetricsAddr {
    type Err = String;

    /// `HOST:PORT`, or `off` / `none` / `disabled` / empty for no endpoint.
    fn from_str(value: &str) -> Result<Self, Self::Err> {
        let value = value.trim();
        match value.to_ascii_lowercase().as_str() {
            "" | "off" | "none" | "disabled" => Ok(Self::DISABLED),
            _ => value.parse().map(|addr| Self(Some(addr))).map_err(|_| {
                format!("expected HOST:PORT (e.g. 0.0.0.0:9464) or `off`, got {value:?}")
            }),
        }
    }
}

impl fmt::Display for MetricsAddr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.0 {
            Some(addr) => write!(f, "{addr}"),
            None => f.write_str("off"),
        }
    }
}

/// A running `GET /metrics` endpoint; [`Self::stop`] ends it (dropping it stops it too).
#[derive(Debug)]
pub struct MetricsServer {
    local_addr: SocketAddr,
    stop: Option<oneshot::Sender<()>>,
    task: Option<JoinHandle<Result<(), TelemetryError>>>,
}

impl MetricsServer {
    /// Binds `addr` and serves; `Ok(None)` when the endpoint is disabled.
    pub async fn bind(addr: MetricsAddr, metrics: Metrics) -> Result<Option<Self>, RuntimeError> {
        let Some(addr) = addr.addr() else {
            tracing::info!("metrics endpoint disabled");
            return Ok(None);
        };
        let listener = TcpListener::bind(addr)
            .await
            .map_err(|source| RuntimeError::MetricsListener { addr, source })?;
        Self::spawn(listener, metrics).map(Some)
    }

    /// Serves on an already bound listener (tests pass `127.0.0.1:0`).
    pub fn spawn(listener: TcpListener, metrics: Metrics) -> Result<Self, RuntimeError> {
        let local_addr = listener.local_addr().map_err(RuntimeError::Listener)?;
        let (stop, stopped) = oneshot::channel::<()>();
        let task = tokio::spawn(faceproof_telemetry::serve_metrics(
            listener,
            metrics,
            async move {
                // A dropped sender also means stop.
                let _ = stopped.await;
            },
        ));
        tracing::info!(addr = %local_addr, "metrics listening on /metrics");
        Ok(Self {
            local_addr,
            stop: Some(stop),
            task: Some(task),
        })
    }

    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    /// Stops accepting scrapes and waits (bounded) for the server to exit; failures are logged,
    /// since losing the metrics endpoint at exit must not fail the service.
    pub async fn stop(mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        let Some(task) = self.task.take() else {
            return;
        };
        match tokio::time::timeout(METRICS_STOP_TIMEOUT, task).await {
            Ok(Ok(Ok(()))) => {}
            Ok(Ok(Err(error))) => tracing::warn!(%error, "metrics server failed"),
            Ok(Err(error)) => tracing::warn!(%error, "metrics server task failed"),
            Err(_) => tracing::warn!("metrics server did not stop in time"),
        }
    }
}

impl Drop for MetricsServer {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
    }
}

#[cfg(test)]
mod tests {
    use clap::Parser;

    use super::*;

    #[derive(Debug, Parser)]
    struct Cli {
        #[command(flatten)]
        telemetry: TelemetryArgs,
        #[arg(long, default_value = "0.0.0.0:9465")]
        metrics_addr: MetricsAddr,
    }

    #[test]
    fn time_stage_returns_the_result_and_records_the_stage() {
        let metrics = Metrics::new();
        assert_eq!(time_stage(Some(&metrics), Stage::Align, || 7), 7);
        assert_eq!(time_stage(None, Stage::Align, || 8), 8);
        let text = metrics.encode().unwrap();
        assert!(
            text.contains("faceproof_inference_stage_seconds_count{stage=\"align\"} 1"),
            "{text}"
        );
    }

    #[test]
    fn metrics_addr_parses_addresses_and_off() {
        assert_eq!(
            "127.0.0.1:9464".parse::<MetricsAddr>().unwrap(),
            MetricsAddr(Some(SocketAddr::from(([127, 0, 0, 1], 9464))))
        );
        for off in ["off", "OFF", "none", "disabled", ""] {
            assert_eq!(off.parse::<MetricsAddr>().unwrap(), MetricsAddr::DISABLED);
        }
        assert!("localhost".parse::<MetricsAddr>().is_err());
        assert_eq!(MetricsAddr::DISABLED.to_string(), "off");
    }

    #[test]
    fn flags_become_a_validated_telemetry_config() {
        let cli = Cli::try_parse_from([
            "svc",
            "--log-format",
            "json",
            "--log-filter",
            "debug",
            "--otlp-endpoint",
            "http://127.0.0.1:4317",
            "--metrics-addr",
            "off",
        ])
        .unwrap();
        assert_eq!(cli.metrics_addr, MetricsAddr::DISABLED);
        let config = cli.telemetry.telemetry_config("faceproof-test").unwrap();
        assert_eq!(config.log_format, LogFormat::Json);
        assert_eq!(config.log_filter, "debug");
        assert_eq!(
            config.otlp_endpoint.as_deref(),
            Some("http://127.0.0.1:4317")
        );
    }

    #[test]
    fn bad_values_are_refused() {
        assert!(Cli::try_parse_from(["svc", "--log-format", "yaml"]).is_err());
        assert!(Cli::try_parse_from(["svc", "--metrics-addr", "nowhere"]).is_err());
        let args = TelemetryArgs {
            otlp_endpoint: Some("collector:4317".into()),
            ..TelemetryArgs::default()
        };
        assert!(matches!(
            args.telemetry_config("faceproof-test"),
            Err(RuntimeError::Telemetry(
                TelemetryError::InvalidOtlpEndpoint(_)
            ))
        ));
        let empty = TelemetryArgs {
            otlp_endpoint: Some("  ".into()),
            ..TelemetryArgs::default()
        };
        assert_eq!(
            empty
                .telemetry_config("faceproof-test")
                .unwrap()
                .otlp_endpoint,
            None
        );
    }
}
