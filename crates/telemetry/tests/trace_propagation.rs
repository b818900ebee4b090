//! One test per binary: it installs the process-wide subscriber with `init`.
//!
//! A client span calls a tonic health server wrapped in `GrpcServerLayer`; the spans exported to
//! the in-process collector must form one trace with the server span as the client span's child.
#![allow(clippy::unwrap_used)]

use std::time::Duration;

use faceproof_telemetry::testing::{OtlpCollector, SpanKind};
use faceproof_telemetry::{GrpcServerLayer, Metrics, TelemetryConfig, TraceContextInterceptor};
use tokio::net::TcpListener;
use tonic_health::pb::HealthCheckRequest;
use tonic_health::pb::health_client::HealthClient;
use tracing::Instrument;

const TIMEOUT: Duration = Duration::from_secs(10);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn server_span_is_a_child_of_the_client_span_across_grpc() {
    let collector = OtlpCollector::start(TcpListener::bind("127.0.0.1:0").await.unwrap()).unwrap();
    let mut config = TelemetryConfig::new("faceproof-test");
    config.otlp_endpoint = Some(collector.endpoint().to_owned());
    let guard = faceproof_telemetry::init(&config).unwrap();
    assert!(guard.is_exporting());

    let (_reporter, health) = tonic_health::server::health_reporter();
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let address = listener.local_addr().unwrap();
    let metrics = Metrics::new();
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let server = tokio::spawn(
        tonic::transport::Server::builder()
            .layer(GrpcServerLayer::new(metrics.clone()))
            .add_service(health)
            .serve_with_incoming_shutdown(
                tokio_stream::wrappers::TcpListenerStream::new(listener),
                async {
                    let _ = stopped.await;
                },
            ),
    );

    let channel = tokio::time::timeout(
        TIMEOUT,
        tonic::transport::Endpoint::from_shared(format!("http://{address}"))
            .unwrap()
            .connect(),
    )
    .await
    .expect("connect in time")
    .unwrap();
    let mut client = HealthClient::with_interceptor(channel, TraceContextInterceptor);
    let client_span = tracing::info_span!("health.check", otel.kind = "client");
    let response = tokio::time::timeout(
        TIMEOUT,
        async move {
            client
                .check(HealthCheckRequest {
                    service: String::new(),
                })
                .await
        }
        .instrument(client_span),
    )
    .await
    .expect("health check in time")
    .unwrap();
    assert_eq!(response.into_inner().status, 1, "SERVING");

    stop.send(()).unwrap();
    tokio::time::timeout(TIMEOUT, server)
        .await
        .expect("server stops in time")
        .unwrap()
        .unwrap();
    tokio::time::timeout(TIMEOUT, guard.shutdown())
        .await
        .expect("flush in time")
        .unwrap();

    let spans = collector
        .wait_for(TIMEOUT, |spans| {
            spans.iter().any(|span| span.name == "health.check")
                && spans.iter().any(|span| span.kind == SpanKind::Server)
        })
        .await
        .unwrap();
    let client = spans
        .iter()
        .find(|span| span.name == "health.check")
        .unwrap();
    let server = spans
        .iter()
        .find(|span| span.kind == SpanKind::Server)
        .unwrap();
    assert_eq!(client.kind, SpanKind::Client);
    assert_eq!(server.name, "grpc.health.v1.Health/Check");
    assert_eq!(server.trace_id, client.trace_id, "one trace");
    assert_eq!(
        server.parent_span_id.as_deref(),
        Some(client.span_id.as_str())
    );
    assert_eq!(client.parent_span_id, None, "the client span is the root");
    assert_eq!(server.attribute("rpc.system"), Some("grpc"));
    assert_eq!(
        server.attribute("rpc.service"),
        Some("grpc.health.v1.Health")
    );
    assert_eq!(server.attribute("rpc.method"), Some("Check"));
    assert_eq!(server.attribute("rpc.grpc.status_code"), Some("0"));
    for span in [client, server] {
        assert_eq!(span.service_name, "faceproof-test");
    }

    let text = metrics.encode().unwrap();
    assert!(
        text.contains(
            "faceproof_grpc_server_handled_total{grpc_service=\"grpc.health.v1.Health\",grpc_method=\"Check\",grpc_code=\"0\"} 1"
        ),
        "{text}"
    );
}
