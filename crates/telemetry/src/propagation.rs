//! W3C trace context (`traceparent`, `tracestate`) over gRPC metadata.
//!
//! Follows opentelemetry-rust's `tracing-grpc` example: the client injects the current `tracing`
//! span's OpenTelemetry context into the outgoing metadata with the global propagator (set to
//! W3C TraceContext by [`crate::init`]); the server extracts it and makes it the parent of the
//! request span. [`crate::GrpcServerLayer`] does the server half for every call; the functions
//! here serve handlers or clients that need it by hand.

use opentelemetry::Context;
use opentelemetry::propagation::{Extractor, Injector};
use tonic::metadata::{KeyRef, MetadataKey, MetadataMap, MetadataValue};
use tracing_opentelemetry::OpenTelemetrySpanExt;

/// Writes propagation fields into outgoing tonic metadata.
pub struct MetadataInjector<'a>(pub &'a mut MetadataMap);

impl Injector for MetadataInjector<'_> {
    fn set(&mut self, key: &str, value: String) {
        // Invalid keys or values cannot be sent; dropping them only loses the trace link.
        if let (Ok(key), Ok(value)) = (
            MetadataKey::from_bytes(key.as_bytes()),
            MetadataValue::try_from(value.as_str()),
        ) {
            self.0.insert(key, value);
        }
    }
}

/// Reads propagation fields from incoming tonic metadata.
pub struct MetadataExtractor<'a>(pub &'a MetadataMap);

impl Extractor for MetadataExtractor<'_> {
    fn get(&self, key: &str) -> Option<&str> {
        self.0.get(key).and_then(|value| value.to_str().ok())
    }

    fn keys(&self) -> Vec<&str> {
        self.0
            .keys()
            .map(|key| match key {
                KeyRef::Ascii(key) => key.as_str(),
                KeyRef::Binary(key) => key.as_str(),
            })
            .collect()
    }
}

/// Reads propagation fields from raw HTTP/2 headers (what a tower layer sees).
pub struct HeaderExtractor<'a>(pub &'a http::HeaderMap);

impl Extractor for HeaderExtractor<'_> {
    fn get(&self, key: &str) -> Option<&str> {
        self.0.get(key).and_then(|value| value.to_str().ok())
    }

    fn keys(&self) -> Vec<&str> {
        self.0.keys().map(http::HeaderName::as_str).collect()
    }
}

/// Injects the current span's trace context into an outgoing request's metadata.
pub fn inject_context<T>(request: &mut tonic::Request<T>) {
    inject_context_into(&tracing::Span::current().context(), request.metadata_mut());
}

/// Injects a given context into metadata, for callers that hold the span explicitly.
pub fn inject_context_into(context: &Context, metadata: &mut MetadataMap) {
    opentelemetry::global::get_text_map_propagator(|propagator| {
        propagator.inject_context(context, &mut MetadataInjector(metadata));
    });
}

/// The caller's trace context from incoming metadata (empty when the caller sent none).
pub fn extract_context(metadata: &MetadataMap) -> Context {
    opentelemetry::global::get_text_map_propagator(|propagator| {
        propagator.extract(&MetadataExtractor(metadata))
    })
}

/// The caller's trace context from raw HTTP headers.
pub fn extract_context_from_headers(headers: &http::HeaderMap) -> Context {
    opentelemetry::global::get_text_map_propagator(|propagator| {
        propagator.extract(&HeaderExtractor(headers))
    })
}

/// Makes the caller's span (from the request metadata) the parent of `span`. Call it right after
/// creating the handler's span, before entering it; a no-op when no telemetry layer is installed.
pub fn set_parent_from_metadata(span: &tracing::Span, metadata: &MetadataMap) {
    // Errors mean "no OpenTelemetry layer" or "span disabled": nothing to link then.
    let _ = span.set_parent(extract_context(metadata));
}

/// As [`set_parent_from_metadata`], from plain HTTP headers (the REST front end).
pub fn set_parent_from_headers(span: &tracing::Span, headers: &http::HeaderMap) {
    let _ = span.set_parent(extract_context_from_headers(headers));
}

/// Client interceptor that injects the current span's trace context into every request.
///
/// `MatcherClient::with_interceptor(channel, TraceContextInterceptor)`; the interceptor runs
/// inside the calling future, so the span current at the call site becomes the server's parent.
#[derive(Debug, Clone, Copy, Default)]
pub struct TraceContextInterceptor;

impl tonic::service::Interceptor for TraceContextInterceptor {
    fn call(
        &mut self,
        mut request: tonic::Request<()>,
    ) -> Result<tonic::Request<()>, tonic::Status> {
        inject_context(&mut request);
        Ok(request)
    }
}

#[cfg(test)]
mod tests {
    use opentelemetry::trace::TraceContextExt;

    use super::*;
    use crate::TelemetryConfig;

    const TRACEPARENT: &str = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";

    #[test]
    fn context_flows_from_incoming_to_outgoing_metadata_without_an_exporter() {
        let (subscriber, _guard) =
            crate::build_subscriber(&TelemetryConfig::new("faceproof-test")).unwrap();
        tracing::subscriber::with_default(subscriber, || {
            let mut incoming = MetadataMap::new();
            incoming.insert("traceparent", TRACEPARENT.parse().unwrap());
            let span = tracing::info_span!("handler");
            set_parent_from_metadata(&span, &incoming);
            let _entered = span.enter();

            let mut outgoing = tonic::Request::new(());
            inject_context(&mut outgoing);
            let sent = outgoing
                .metadata()
                .get("traceparent")
                .and_then(|value| value.to_str().ok())
                .expect("traceparent injected");
            let parts: Vec<&str> = sent.split('-').collect();
            assert_eq!(parts.len(), 4, "{sent}");
            assert_eq!(parts[1], "4bf92f3577b34da6a3ce929d0e0e4736", "same trace");
            assert_ne!(parts[2], "00f067aa0ba902b7", "a new span id for this hop");
            assert_eq!(parts[3], "01", "sampled flag kept");
        });
    }

    #[test]
    fn extractor_ignores_missing_or_garbled_headers() {
        opentelemetry::global::set_text_map_propagator(
            opentelemetry_sdk::propagation::TraceContextPropagator::new(),
        );
        let empty = extract_context(&MetadataMap::new());
        assert!(!empty.span().span_context().is_valid());
        let mut garbled = MetadataMap::new();
        garbled.insert("traceparent", "00-not-a-trace-01".parse().unwrap());
        assert!(!extract_context(&garbled).span().span_context().is_valid());
        let mut headers = http::HeaderMap::new();
        headers.insert("traceparent", TRACEPARENT.parse().unwrap());
        assert!(
            extract_context_from_headers(&headers)
                .span()
                .span_context()
                .is_valid()
        );
    }
}
