//! Real gRPC calls through `GrpcServerLayer`, then a real scrape of `GET /metrics`.
#![allow(clippy::unwrap_used)]

use std::time::Duration;

use faceproof_telemetry::{GrpcServerLayer, Metrics, Stage, serve_metrics};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tonic_health::pb::HealthCheckRequest;
use tonic_health::pb::health_client::HealthClient;

const TIMEOUT: Duration = Duration::from_secs(10);

async fn scrape(address: std::net::SocketAddr) -> String {
    let mut stream = TcpStream::connect(address).await.unwrap();
    stream
        .write_all(b"GET /metrics HTTP/1.1\r\nHost: metrics\r\nConnection: close\r\n\r\n")
        .await
        .unwrap();
    let mut response = String::new();
    stream.read_to_string(&mut response).await.unwrap();
    response
}

#[tokio::test]
async fn grpc_calls_show_up_in_the_scrape_with_their_labels() {
    let metrics = Metrics::new();
    let (_reporter, health) = tonic_health::server::health_reporter();
    let grpc_listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let grpc_address = grpc_listener.local_addr().unwrap();
    let (stop_grpc, grpc_stopped) = tokio::sync::oneshot::channel::<()>();
    let grpc_server = tokio::spawn(
        tonic::transport::Server::builder()
            .layer(GrpcServerLayer::new(metrics.clone()))
            .add_service(health)
            .serve_with_incoming_shutdown(
                tokio_stream::wrappers::TcpListenerStream::new(grpc_listener),
                async {
                    let _ = grpc_stopped.await;
                },
            ),
    );

    let calls = async {
        let channel = tonic::transport::Endpoint::from_shared(format!("http://{grpc_address}"))
            .unwrap()
            .connect()
            .await
            .unwrap();
        let mut client = HealthClient::new(channel);
        for _ in 0..2 {
            let request = HealthCheckRequest {
                service: String::new(),
            };
            client.check(request).await.unwrap();
        }
        let missing = HealthCheckRequest {
            service: "faceproof.nothing.v1.Missing".to_owned(),
        };
        let status = client.check(missing).await.unwrap_err();
        assert_eq!(status.code(), tonic::Code::NotFound);
    };
    tokio::time::timeout(TIMEOUT, calls)
        .await
        .expect("calls in time");
    metrics.record_stage(Stage::Embed, Duration::from_millis(12));

    let metrics_listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let metrics_address = metrics_listener.local_addr().unwrap();
    let (stop_metrics, metrics_stopped) = tokio::sync::oneshot::channel::<()>();
    let metrics_server = tokio::spawn(serve_metrics(metrics_listener, metrics.clone(), async {
        let _ = metrics_stopped.await;
    }));
    let response = tokio::time::timeout(TIMEOUT, scrape(metrics_address))
        .await
        .expect("scrape in time");

    let (head, body) = response.split_once("\r\n\r\n").unwrap();
    assert!(head.starts_with("HTTP/1.1 200"), "{head}");
    assert!(
        head.to_ascii_lowercase()
            .contains("content-type: application/openmetrics-text"),
        "{head}"
    );
    let health = "grpc_service=\"grpc.health.v1.Health\",grpc_method=\"Check\"";
    for expected in [
        format!("faceproof_grpc_server_handled_total{{{health},grpc_code=\"0\"}} 2"),
        format!("faceproof_grpc_server_handled_total{{{health},grpc_code=\"5\"}} 1"),
        format!("faceproof_grpc_server_handling_seconds_count{{{health}}} 3"),
        format!("faceproof_grpc_server_handling_seconds_bucket{{le=\"+Inf\",{health}}} 3"),
        "faceproof_inference_stage_seconds_count{stage=\"embed\"} 1".to_owned(),
        "# TYPE faceproof_grpc_server_handling_seconds histogram".to_owned(),
    ] {
        assert!(body.contains(&expected), "missing {expected:?} in\n{body}");
    }

    stop_metrics.send(()).unwrap();
    tokio::time::timeout(TIMEOUT, metrics_server)
        .await
        .expect("metrics server stops in time")
        .unwrap()
        .unwrap();
    stop_grpc.send(()).unwrap();
    tokio::time::timeout(TIMEOUT, grpc_server)
        .await
        .expect("grpc server stops in time")
        .unwrap()
        .unwrap();
}
