//! `faceproof health`: one `grpc.health.v1.Health/Check` call against a running service. Exits 0
//! when the service answers SERVING and 1 otherwise, with one line saying why; container
//! healthchecks (docker-compose) and `faceproof up` use it.

use std::process::ExitCode;
use std::time::Duration;

use anyhow::Context as _;
use tonic_health::pb::HealthCheckRequest;
use tonic_health::pb::health_check_response::ServingStatus;
use tonic_health::pb::health_client::HealthClient;

#[derive(Debug, clap::Args)]
pub struct Args {
    /// The service's gRPC address, e.g. `http://127.0.0.1:50052` (`host:port` means http).
    #[arg(long)]
    addr: String,
    /// The service name to ask about; empty asks about the whole server.
    #[arg(long, default_value = "")]
    service: String,
    /// Give up after this many milliseconds (connecting and the call together).
    #[arg(long, default_value_t = 2000)]
    timeout_ms: u64,
}

/// Why a health check did not report SERVING.
#[derive(Debug, thiserror::Error)]
pub enum HealthError {
    #[error("bad address {addr:?}: {detail}")]
    BadAddress { addr: String, detail: String },
    #[error("no answer within {0:?}")]
    Timeout(Duration),
    #[error("cannot connect: {0}")]
    Connect(String),
    #[error("health check failed: {code:?}: {message}")]
    Call { code: tonic::Code, message: String },
}

/// `host:port` becomes `http://host:port`; URLs are kept as they are.
pub fn normalize_addr(addr: &str) -> String {
    let addr = addr.trim();
    if addr.contains("://") {
        addr.to_owned()
    } else {
        format!("http://{addr}")
    }
}

/// Asks `addr` for the status of `service` and returns it; connecting and the call together are
/// bounded by `timeout`, so a hung server is an error, not a hang.
pub async fn check(
    addr: &str,
    service: &str,
    timeout: Duration,
) -> Result<ServingStatus, HealthError> {
    let url = normalize_addr(addr);
    let endpoint = tonic::transport::Endpoint::from_shared(url.clone())
        .map_err(|error| HealthError::BadAddress {
            addr: addr.to_owned(),
            detail: error.to_string(),
        })?
        .connect_timeout(timeout)
        .timeout(timeout);
    let call = async {
        let channel = endpoint
            .connect()
            .await
            .map_err(|error| HealthError::Connect(error_chain(&error)))?;
        let response = HealthClient::new(channel)
            .check(HealthCheckRequest {
                service: service.to_owned(),
            })
            .await
            .map_err(|status| HealthError::Call {
                code: status.code(),
                message: status.message().to_owned(),
            })?;
        Ok(response.into_inner().status())
    };
    tokio::time::timeout(timeout, call)
        .await
        .map_err(|_| HealthError::Timeout(timeout))?
}

/// The error and its sources on one line (tonic's transport errors hide the cause in `source`).
fn error_chain(error: &dyn std::error::Error) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        text.push_str(": ");
        text.push_str(&cause.to_string());
        source = cause.source();
    }
    text
}

pub fn run(args: Args) -> anyhow::Result<ExitCode> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("cannot start the async runtime")?;
    let timeout = Duration::from_millis(args.timeout_ms.max(1));
    let subject = if args.service.is_empty() {
        normalize_addr(&args.addr)
    } else {
        format!("{} ({})", normalize_addr(&args.addr), args.service)
    };
    match runtime.block_on(check(&args.addr, &args.service, timeout)) {
        Ok(ServingStatus::Serving) => {
            outln!("SERVING: {subject}");
            Ok(ExitCode::SUCCESS)
        }
        Ok(status) => {
            outln!("{}: {subject}", status.as_str_name());
            Ok(ExitCode::FAILURE)
        }
        Err(error) => {
            outln!("UNHEALTHY: {subject}: {error}");
            Ok(ExitCode::FAILURE)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bare_host_port_means_http() {
        assert_eq!(normalize_addr("127.0.0.1:50052"), "http://127.0.0.1:50052");
        assert_eq!(
            normalize_addr(" http://matcher:50052 "),
            "http://matcher:50052"
        );
    }

    async fn serve_health(
        status: ServingStatus,
    ) -> (std::net::SocketAddr, tokio::sync::oneshot::Sender<()>) {
        let (reporter, service) = tonic_health::server::health_reporter();
        let status = match status {
            ServingStatus::Serving => tonic_health::ServingStatus::Serving,
            _ => tonic_health::ServingStatus::NotServing,
        };
        reporter.set_service_status("", status).await;
        reporter.set_service_status("demo.v1.Demo", status).await;
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        tokio::spawn(
            tonic::transport::Server::builder()
                .add_service(service)
                .serve_with_incoming_shutdown(
                    tokio_stream::wrappers::TcpListenerStream::new(listener),
                    async {
                        let _ = stopped.await;
                    },
                ),
        );
        (addr, stop)
    }

    #[tokio::test]
    async fn reports_serving_and_not_serving() {
        let timeout = Duration::from_secs(5);
        let (addr, _stop) = serve_health(ServingStatus::Serving).await;
        let status = check(&addr.to_string(), "", timeout).await.unwrap();
        assert_eq!(status, ServingStatus::Serving);
        let status = check(&addr.to_string(), "demo.v1.Demo", timeout)
            .await
            .unwrap();
        assert_eq!(status, ServingStatus::Serving);

        let (addr, _stop) = serve_health(ServingStatus::NotServing).await;
        let status = check(&format!("http://{addr}"), "", timeout).await.unwrap();
        assert_eq!(status, ServingStatus::NotServing);
    }

    #[tokio::test]
    async fn unknown_service_is_an_error() {
        let (addr, _stop) = serve_health(ServingStatus::Serving).await;
        let error = check(&addr.to_string(), "nope.v1.Nope", Duration::from_secs(5))
            .await
            .unwrap_err();
        assert!(
            matches!(
                error,
                HealthError::Call {
                    code: tonic::Code::NotFound,
                    ..
                }
            ),
            "{error}"
        );
    }

    #[tokio::test]
    async fn closed_port_is_an_error_not_a_hang() {
        // Bound but never listening: the port stays ours (no other process can take it) and
        // every connection to it is refused.
        let socket = tokio::net::TcpSocket::new_v4().unwrap();
        socket.bind("127.0.0.1:0".parse().unwrap()).unwrap();
        let addr = socket.local_addr().unwrap();
        let error = check(&addr.to_string(), "", Duration::from_secs(5))
            .await
            .unwrap_err();
        assert!(matches!(error, HealthError::Connect(_)), "{error}");
    }

    #[test]
    fn bad_address_is_a_typed_error() {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        let error = runtime
            .block_on(check("http://exa mple:1", "", Duration::from_secs(1)))
            .unwrap_err();
        assert!(matches!(error, HealthError::BadAddress { .. }), "{error}");
    }
}
