use std::io::IsTerminal;
use std::time::Duration;

use opentelemetry::trace::TracerProvider as _;
use opentelemetry_otlp::WithExportConfig;
use opentelemetry_sdk::Resource;
use opentelemetry_sdk::propagation::TraceContextPropagator;
use opentelemetry_sdk::trace::SdkTracerProvider;
use tracing::Subscriber;
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;
use tracing_subscriber::{EnvFilter, Layer};

use crate::{LogFormat, TelemetryConfig, TelemetryError};

/// How long a synchronous shutdown (in `Drop`) waits for the last spans to be exported.
const DROP_SHUTDOWN_TIMEOUT: Duration = Duration::from_secs(5);

/// Installs the process-wide subscriber and W3C propagator; keep the guard alive until exit.
///
/// Call it inside the tokio runtime (the OTLP channel lives there) and call
/// [`TelemetryGuard::shutdown`] before the runtime exits so the last spans are flushed.
pub fn init(config: &TelemetryConfig) -> Result<TelemetryGuard, TelemetryError> {
    let (subscriber, guard) = build_subscriber(config)?;
    subscriber.try_init()?;
    Ok(guard)
}

/// Builds the subscriber without installing it, for `tracing::subscriber::set_default` in tests
/// (the global subscriber can be set only once per process). Sets the global W3C propagator.
pub fn build_subscriber(
    config: &TelemetryConfig,
) -> Result<(Box<dyn Subscriber + Send + Sync>, TelemetryGuard), TelemetryError> {
    config.validate()?;
    let filter = EnvFilter::try_new(&config.log_filter).map_err(|source| {
        TelemetryError::InvalidLogFilter {
            filter: config.log_filter.clone(),
            source,
        }
    })?;
    // Even without an exporter, propagation keeps incoming trace ids flowing to downstream calls.
    opentelemetry::global::set_text_map_propagator(TraceContextPropagator::new());

    let provider = tracer_provider(config)?;
    let tracer = provider.tracer(config.service_name.clone());

    let log_layer = match config.log_format {
        LogFormat::Json => tracing_subscriber::fmt::layer()
            .json()
            .flatten_event(true)
            .with_current_span(true)
            .with_span_list(false)
            .boxed(),
        LogFormat::Human => tracing_subscriber::fmt::layer()
            .with_ansi(std::io::stdout().is_terminal())
            .boxed(),
    };
    let subscriber = tracing_subscriber::registry()
        .with(filter)
        .with(log_layer)
        .with(tracing_opentelemetry::layer().with_tracer(tracer));
    let guard = TelemetryGuard {
        provider,
        exporting: config.otlp_endpoint.is_some(),
        shut_down: false,
    };
    Ok((Box::new(subscriber), guard))
}

/// Without an endpoint the provider has no processor: spans get ids (for propagation) and are
/// dropped when they end, with no exporter and no background thread.
fn tracer_provider(config: &TelemetryConfig) -> Result<SdkTracerProvider, TelemetryError> {
    let resource = Resource::builder()
        .with_service_name(config.service_name.clone())
        .build();
    let builder = SdkTracerProvider::builder().with_resource(resource);
    let Some(endpoint) = &config.otlp_endpoint else {
        return Ok(builder.build());
    };
    // tonic's lazy channel spawns its worker on the current runtime and would panic without one.
    if tokio::runtime::Handle::try_current().is_err() {
        return Err(TelemetryError::NoTokioRuntime);
    }
    let exporter = opentelemetry_otlp::SpanExporter::builder()
        .with_tonic()
        .with_endpoint(endpoint.clone())
        .build()?;
    Ok(builder.with_batch_exporter(exporter).build())
}

/// Owns the tracer provider; shutting it down flushes the spans still queued.
#[must_use = "dropping the guard shuts down span export"]
pub struct TelemetryGuard {
    provider: SdkTracerProvider,
    exporting: bool,
    shut_down: bool,
}

impl std::fmt::Debug for TelemetryGuard {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TelemetryGuard")
            .field("exporting", &self.exporting)
            .field("shut_down", &self.shut_down)
            .finish()
    }
}

impl TelemetryGuard {
    /// Whether spans are exported over OTLP.
    pub fn is_exporting(&self) -> bool {
        self.exporting
    }

    /// Flushes queued spans and stops the exporter. Await it before the runtime exits: the
    /// blocking flush runs on the blocking pool so the runtime can drive the gRPC export.
    pub async fn shutdown(mut self) -> Result<(), TelemetryError> {
        self.shut_down = true;
        if !self.exporting {
            return Ok(());
        }
        let provider = self.provider.clone();
        match tokio::task::spawn_blocking(move || provider.shutdown()).await {
            Ok(result) => Ok(result?),
            Err(join_error) => Err(TelemetryError::Shutdown(
                opentelemetry_sdk::error::OTelSdkError::InternalFailure(join_error.to_string()),
            )),
        }
    }
}

impl Drop for TelemetryGuard {
    /// Best effort when [`TelemetryGuard::shutdown`] was not awaited: bounded, since on a
    /// single-threaded runtime the export cannot progress while this thread blocks.
    fn drop(&mut self) {
        if self.shut_down || !self.exporting {
            return;
        }
        if let Err(error) = self.provider.shutdown_with_timeout(DROP_SHUTDOWN_TIMEOUT) {
            eprintln!("faceproof-telemetry: span export shutdown failed: {error}");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn invalid_filter_is_a_typed_error() {
        let mut config = TelemetryConfig::new("faceproof-matcher");
        config.log_filter = "info,=[".to_owned();
        assert!(matches!(
            build_subscriber(&config),
            Err(TelemetryError::InvalidLogFilter { .. })
        ));
    }

    #[test]
    fn exporter_outside_a_runtime_is_a_typed_error() {
        let mut config = TelemetryConfig::new("faceproof-matcher");
        config.otlp_endpoint = Some("http://127.0.0.1:4317".to_owned());
        assert!(matches!(
            build_subscriber(&config),
            Err(TelemetryError::NoTokioRuntime)
        ));
    }

    #[test]
    fn without_endpoint_nothing_is_exported() {
        let (_subscriber, guard) = build_subscriber(&TelemetryConfig::new("faceproof-liveness"))
            .expect("subscriber builds");
        assert!(!guard.is_exporting());
    }
}
