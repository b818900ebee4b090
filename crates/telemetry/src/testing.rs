//! An in-process OTLP/gRPC trace collector for tests (feature `testing`).
//!
//! Point [`crate::TelemetryConfig::otlp_endpoint`] at [`OtlpCollector::endpoint`], run the
//! scenario, shut the [`crate::TelemetryGuard`] down (it flushes), then
//! [`OtlpCollector::wait_for`] the spans you expect.

use std::time::Duration;

use opentelemetry_proto::tonic::collector::trace::v1::trace_service_server::{
    TraceService, TraceServiceServer,
};
use opentelemetry_proto::tonic::collector::trace::v1::{
    ExportTraceServiceRequest, ExportTraceServiceResponse,
};
use opentelemetry_proto::tonic::common::v1::{AnyValue, KeyValue, any_value};
pub use opentelemetry_proto::tonic::trace::v1::span::SpanKind;
use tokio::sync::{oneshot, watch};

use crate::TelemetryError;

/// One received span, flattened for assertions; ids are lowercase hex.
#[derive(Debug, Clone, PartialEq)]
pub struct CollectedSpan {
    /// The `service.name` of the resource that exported it.
    pub service_name: String,
    pub name: String,
    pub kind: SpanKind,
    pub trace_id: String,
    pub span_id: String,
    /// `None` for a root span.
    pub parent_span_id: Option<String>,
    /// Attribute values rendered as strings (`true`, `42`, text).
    pub attributes: Vec<(String, String)>,
}

impl CollectedSpan {
    pub fn attribute(&self, key: &str) -> Option<&str> {
        self.attributes
            .iter()
            .find(|(name, _)| name == key)
            .map(|(_, value)| value.as_str())
    }
}

/// A running collector; stops when dropped.
#[derive(Debug)]
pub struct OtlpCollector {
    endpoint: String,
    spans: watch::Receiver<Vec<CollectedSpan>>,
    stop: Option<oneshot::Sender<()>>,
}

struct Receiver {
    spans: watch::Sender<Vec<CollectedSpan>>,
}

#[tonic::async_trait]
impl TraceService for Receiver {
    async fn export(
        &self,
        request: tonic::Request<ExportTraceServiceRequest>,
    ) -> Result<tonic::Response<ExportTraceServiceResponse>, tonic::Status> {
        let received = flatten(request.into_inner());
        self.spans.send_modify(|spans| spans.extend(received));
        Ok(tonic::Response::new(ExportTraceServiceResponse {
            partial_success: None,
        }))
    }
}

impl OtlpCollector {
    /// Serves OTLP traces on `listener` (bind `127.0.0.1:0`); call inside a tokio runtime.
    pub fn start(listener: tokio::net::TcpListener) -> Result<Self, TelemetryError> {
        let address = listener
            .local_addr()
            .map_err(|error| TelemetryError::Collector(error.to_string()))?;
        let (sender, spans) = watch::channel(Vec::new());
        let (stop, stopped) = oneshot::channel::<()>();
        let incoming = tokio_stream::wrappers::TcpListenerStream::new(listener);
        tokio::spawn(async move {
            let served = tonic::transport::Server::builder()
                .add_service(TraceServiceServer::new(Receiver { spans: sender }))
                .serve_with_incoming_shutdown(incoming, async {
                    // A dropped sender means the collector was dropped: stop as well.
                    let _ = stopped.await;
                })
                .await;
            if let Err(error) = served {
                eprintln!("test OTLP collector stopped: {error}");
            }
        });
        Ok(Self {
            endpoint: format!("http://{address}"),
            spans,
            stop: Some(stop),
        })
    }

    /// `http://127.0.0.1:PORT`, for `OTEL_EXPORTER_OTLP_ENDPOINT` or the config.
    pub fn endpoint(&self) -> &str {
        &self.endpoint
    }

    /// Every span received so far.
    pub fn spans(&self) -> Vec<CollectedSpan> {
        self.spans.borrow().clone()
    }

    /// Waits until the received spans satisfy `done`, then returns them all.
    pub async fn wait_for(
        &self,
        timeout: Duration,
        mut done: impl FnMut(&[CollectedSpan]) -> bool,
    ) -> Result<Vec<CollectedSpan>, TelemetryError> {
        let mut spans = self.spans.clone();
        match tokio::time::timeout(timeout, spans.wait_for(|received| done(received))).await {
            Ok(Ok(received)) => Ok(received.clone()),
            Ok(Err(_closed)) => Err(TelemetryError::Collector("collector stopped".to_owned())),
            Err(_elapsed) => Err(TelemetryError::CollectorTimeout(timeout)),
        }
    }
}

impl Drop for OtlpCollector {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
    }
}

fn flatten(request: ExportTraceServiceRequest) -> Vec<CollectedSpan> {
    let mut flat = Vec::new();
    for resource_spans in request.resource_spans {
        let service_name = resource_spans
            .resource
            .iter()
            .flat_map(|resource| &resource.attributes)
            .find(|attribute| attribute.key == "service.name")
            .map(|attribute| render(attribute.value.as_ref()))
            .unwrap_or_default();
        for span in resource_spans
            .scope_spans
            .into_iter()
            .flat_map(|scope| scope.spans)
        {
            flat.push(CollectedSpan {
                service_name: service_name.clone(),
                name: span.name,
                kind: SpanKind::try_from(span.kind).unwrap_or(SpanKind::Unspecified),
                trace_id: to_hex(&span.trace_id),
                span_id: to_hex(&span.span_id),
                parent_span_id: (!span.parent_span_id.is_empty())
                    .then(|| to_hex(&span.parent_span_id)),
                attributes: span.attributes.iter().map(key_value).collect(),
            });
        }
    }
    flat
}

fn key_value(attribute: &KeyValue) -> (String, String) {
    (attribute.key.clone(), render(attribute.value.as_ref()))
}

fn render(value: Option<&AnyValue>) -> String {
    match value.and_then(|value| value.value.as_ref()) {
        Some(any_value::Value::StringValue(text)) => text.clone(),
        Some(any_value::Value::BoolValue(flag)) => flag.to_string(),
        Some(any_value::Value::IntValue(number)) => number.to_string(),
        Some(any_value::Value::DoubleValue(number)) => number.to_string(),
        Some(other) => format!("{other:?}"),
        None => String::new(),
    }
}

fn to_hex(bytes: &[u8]) -> String {
    bytes.iter().map(|byte| format!("{byte:02x}")).collect()
}
