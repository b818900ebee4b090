//! faceproof gateway: the public face verification API.
//!
//! gRPC (`faceproof.gateway.v1.FaceVerification`, health, reflection) and the REST drop-in of the
//! reference API, in front of the matcher and liveness services: authentication, per-client rate
//! limits, validation, deadlines, orchestration, records and signed results. It holds no model.

#![cfg_attr(test, allow(clippy::unwrap_used))]

pub mod auth;
pub mod config;
pub mod dev;
pub mod error;
pub mod grpc;
pub mod rate_limit;
pub mod rest;
pub mod service;
pub mod validation;

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use faceproof_proto::gateway::v1::face_verification_server::FaceVerificationServer;
use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio_stream::wrappers::TcpListenerStream;

pub use config::{Config, GatewayCli, Tool};
pub use service::Gateway;

use crate::auth::{Authenticator, GrpcAuthLayer};
use crate::error::Backend;
use crate::service::{Deadlines, Endpoints};

/// Errors that stop the gateway from starting or serving.
#[derive(Debug, thiserror::Error)]
pub enum GatewayError {
    #[error("configuration: {0}")]
    Config(String),
    #[error("cannot read a listener address: {0}")]
    Listener(#[source] std::io::Error),
    #[error("the {server} server failed: {detail}")]
    Serve {
        server: &'static str,
        detail: String,
    },
}

/// A gateway bound to its listeners, ready to serve.
pub struct Application {
    grpc_listener: TcpListener,
    http_listener: TcpListener,
    grpc_addr: SocketAddr,
    http_addr: SocketAddr,
    gateway: Arc<Gateway>,
    auth: Arc<Authenticator>,
    shutdown_grace: Duration,
}

impl Application {
    /// Validates the configuration, loads keys and credentials, and takes the given listeners
    /// (tests pass `127.0.0.1:0`).
    pub fn build(
        config: Config,
        grpc_listener: TcpListener,
        http_listener: TcpListener,
    ) -> Result<Self, GatewayError> {
        config.validate()?;
        let dev = dev::prepare(&config)?;
        let auth = Arc::new(Authenticator::from_config(
            &config,
            dev.jwt_secret.as_deref(),
        )?);
        let signer = match (&config.signing_key_file, dev.signer) {
            (Some(path), _) => dev::load_signer(path)?,
            (None, Some(signer)) => signer,
            (None, None) => {
                return Err(GatewayError::Config(
                    "no --signing-key-file configured".into(),
                ));
            }
        };
        let gateway = Gateway {
            limits: config.limits(),
            deadlines: Deadlines {
                fast: config.deadline_fast(),
                accurate: config.deadline_accurate(),
            },
            rate_limiter: rate_limit::RateLimiter::new(
                config.rate_limit_per_second,
                config.rate_limit_burst,
            ),
            matchers: Endpoints::new(
                Backend::Matcher,
                &config.matcher_urls,
                config.backend_connect_timeout(),
            )?,
            liveness: Endpoints::new(
                Backend::Liveness,
                &config.liveness_urls,
                config.backend_connect_timeout(),
            )?,
            signer,
        };
        let grpc_addr = grpc_listener.local_addr().map_err(GatewayError::Listener)?;
        let http_addr = http_listener.local_addr().map_err(GatewayError::Listener)?;
        tracing::info!(
            %grpc_addr,
            %http_addr,
            jwt_algorithm = ?auth.jwt_algorithm(),
            api_keys = auth.api_key_count(),
            signing_key_id = gateway.signer.key_id(),
            "gateway configured"
        );
        Ok(Self {
            grpc_listener,
            http_listener,
            grpc_addr,
            http_addr,
            gateway: Arc::new(gateway),
            auth,
            shutdown_grace: config.shutdown_grace(),
        })
    }

    pub fn grpc_addr(&self) -> SocketAddr {
        self.grpc_addr
    }

    pub fn http_addr(&self) -> SocketAddr {
        self.http_addr
    }

    pub fn grpc_port(&self) -> u16 {
        self.grpc_addr.port()
    }

    pub fn http_port(&self) -> u16 {
        self.http_addr.port()
    }

    /// Serves gRPC and REST until `shutdown` resolves, then reports NOT_SERVING, stops accepting
    /// and gives in-flight requests the configured grace period to finish.
    pub async fn run_until_stopped(
        self,
        shutdown: impl Future<Output = ()> + Send + 'static,
    ) -> Result<(), GatewayError> {
        let (health_reporter, health_service) = tonic_health::server::health_reporter();
        health_reporter
            .set_serving::<FaceVerificationServer<grpc::GrpcApi>>()
            .await;
        let reflection = tonic_reflection::server::Builder::configure()
            .register_encoded_file_descriptor_set(faceproof_proto::FILE_DESCRIPTOR_SET)
            .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
            .build_v1()
            .map_err(|error| GatewayError::Serve {
                server: "grpc",
                detail: format!("reflection: {error}"),
            })?;
        let max_message = self.gateway.limits.max_message_bytes();
        let api = FaceVerificationServer::new(grpc::GrpcApi::new(Arc::clone(&self.gateway)))
            .max_decoding_message_size(max_message);

        let (stop_sender, stop_receiver) = watch::channel(false);
        let stopped = |mut receiver: watch::Receiver<bool>| async move {
            // An error means the sender is gone, which also means stop.
            let _ = receiver.wait_for(|stop| *stop).await;
        };
        let grpc_server = tonic::transport::Server::builder()
            .layer(GrpcAuthLayer::new(Arc::clone(&self.auth), max_message))
            .add_service(health_service)
            .add_service(reflection)
            .add_service(api)
            .serve_with_incoming_shutdown(
                TcpListenerStream::new(self.grpc_listener),
                stopped(stop_receiver.clone()),
            );
        let mut grpc_task = tokio::spawn(grpc_server);
        let router = rest::router(Arc::clone(&self.gateway), Arc::clone(&self.auth));
        let http_server =
            axum::serve(self.http_listener, router).with_graceful_shutdown(stopped(stop_receiver));
        let mut http_task = tokio::spawn(async move { http_server.await });

        tokio::select! {
            () = shutdown => {}
            finished = &mut grpc_task => return Err(server_failure("grpc", finished.map(|r| r.map_err(|e| e.to_string())))),
            finished = &mut http_task => return Err(server_failure("http", finished.map(|r| r.map_err(|e| e.to_string())))),
        }
        tracing::info!(
            grace_ms = self.shutdown_grace.as_millis() as u64,
            "shutting down, draining"
        );
        health_reporter
            .set_not_serving::<FaceVerificationServer<grpc::GrpcApi>>()
            .await;
        health_reporter
            .set_service_status("", tonic_health::ServingStatus::NotServing)
            .await;
        let _ = stop_sender.send(true);
        let drain = async {
            let grpc = (&mut grpc_task).await;
            let http = (&mut http_task).await;
            (grpc, http)
        };
        match tokio::time::timeout(self.shutdown_grace, drain).await {
            Ok((grpc, http)) => {
                if let Ok(Err(error)) = grpc {
                    tracing::warn!(%error, "grpc server ended with an error");
                }
                if let Ok(Err(error)) = http {
                    tracing::warn!(%error, "http server ended with an error");
                }
                tracing::info!("stopped");
            }
            Err(_) => {
                tracing::warn!(
                    "drain did not finish within the grace period, aborting in-flight requests"
                );
                grpc_task.abort();
                http_task.abort();
            }
        }
        Ok(())
    }
}

fn server_failure(
    server: &'static str,
    finished: Result<Result<(), String>, tokio::task::JoinError>,
) -> GatewayError {
    let detail = match finished {
        Ok(Ok(())) => "stopped unexpectedly".to_owned(),
        Ok(Err(error)) => error,
        Err(error) => error.to_string(),
    };
    GatewayError::Serve { server, detail }
}
