//! faceproof gateway: the public face verification API.
//!
//! gRPC (`faceproof.gateway.v1.FaceVerification`, health, reflection) and the REST drop-in of the
//! reference API, in front of the matcher and liveness services: authentication, per-client rate
//! and in-flight limits, validation, deadlines, orchestration, records and signed results. It
//! holds no model. grpc.health and `GET /readyz` say whether it can serve (a healthy replica of
//! each model service); `GET /healthz` only that the process answers.
//!
//! Modules depend one way, each only on those listed before it: `error`, `in_flight`,
//! `rate_limit`, `openapi` (no module) <- `config` <- `auth`, `balancer`, `validation`, `dev` <-
//! `service` <- `grpc`, `rest`, `readiness` <- this file, which assembles them. Serving uses
//! `faceproof_runtime`'s plumbing: the observed gRPC server, health, drain and timeout parser.

#![cfg_attr(test, allow(clippy::unwrap_used))]

pub mod auth;
pub mod balancer;
pub mod config;
pub mod dev;
pub mod error;
pub mod grpc;
pub mod in_flight;
pub mod openapi;
pub mod rate_limit;
pub mod readiness;
pub mod rest;
pub mod service;
pub mod validation;

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use faceproof_proto::gateway::v1::face_verification_server::{
    FaceVerificationServer, SERVICE_NAME as PUBLIC_SERVICE_NAME,
};
use faceproof_runtime::{MetricsServer, ServiceHealth, observed_server, serve_until_shutdown};
use faceproof_telemetry::{Metrics, accept_http_without_nagle};
use tokio::net::TcpListener;
use tokio::sync::watch;
use tonic::service::Routes;

pub use config::{Config, DEFAULT_METRICS_ADDR, GatewayCli, IntoValidConfig, Tool, ValidConfig};
pub use error::GatewayError;
pub use service::Gateway;

use crate::auth::{Authenticator, GrpcAuthLayer};
use crate::balancer::{DnsResolver, PoolSettings, ReplicaPool, Resolver};
use crate::error::Backend;
use crate::in_flight::InFlightLimiter;
use crate::readiness::Readiness;
use crate::service::Deadlines;

/// The longest the gateway waits at start for its first look at the model services (DNS and a
/// health check of every replica) before it serves, so its first health answer is already true.
const FIRST_PROBE_TIMEOUT: Duration = Duration::from_secs(3);

/// OpenTelemetry `service.name` of the gateway.
pub const TELEMETRY_SERVICE_NAME: &str = "faceproof-gateway";

/// The gateway process: telemetry (logs, traces) for the process, then [`serve`] until SIGTERM
/// or ctrl-c, then the last spans are flushed. Call it once per process.
pub async fn run(config: Config) -> anyhow::Result<()> {
    let telemetry = config.telemetry.telemetry_config(TELEMETRY_SERVICE_NAME)?;
    faceproof_runtime::run_process(telemetry, |shutdown| serve(config, shutdown)).await
}

/// Validates, binds the gRPC, REST and metrics listeners and serves until `shutdown` resolves,
/// then drains. Installs no subscriber: the host process owns telemetry.
pub async fn serve(
    config: Config,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> anyhow::Result<()> {
    // Checked before anything is bound: a bad configuration opens no port.
    let config = config.into_valid()?;
    let grpc_listener = bind(config.config().grpc_addr).await?;
    let http_listener = bind(config.config().http_addr).await?;
    let metrics = Metrics::new();
    let metrics_server = MetricsServer::bind(config.config().metrics_addr, metrics.clone()).await?;
    let application = Application::build_with_resolver(
        config,
        grpc_listener,
        http_listener,
        metrics,
        Arc::new(DnsResolver),
    )?;
    tracing::info!(
        grpc = %application.grpc_addr(),
        http = %application.http_addr(),
        "gateway listening"
    );
    let served = application.run_until_stopped(shutdown).await;
    if let Some(metrics_server) = metrics_server {
        metrics_server.stop().await;
    }
    Ok(served?)
}

async fn bind(address: SocketAddr) -> anyhow::Result<TcpListener> {
    TcpListener::bind(address)
        .await
        .with_context(|| format!("cannot listen on {address}"))
}

/// A gateway bound to its listeners, ready to serve.
#[derive(Debug)]
pub struct Application {
    grpc_listener: TcpListener,
    http_listener: TcpListener,
    grpc_addr: SocketAddr,
    http_addr: SocketAddr,
    gateway: Arc<Gateway>,
    auth: Arc<Authenticator>,
    rest_settings: rest::RestSettings,
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
        Self::build_with_metrics(config, grpc_listener, http_listener, Metrics::new())
    }

    /// As [`Self::build`], recording gRPC calls and decisions into `metrics` (serve it with
    /// `faceproof_telemetry::serve_metrics`).
    pub fn build_with_metrics(
        config: Config,
        grpc_listener: TcpListener,
        http_listener: TcpListener,
        metrics: Metrics,
    ) -> Result<Self, GatewayError> {
        Self::build_with_resolver(
            config,
            grpc_listener,
            http_listener,
            metrics,
            Arc::new(DnsResolver),
        )
    }

    /// As [`Self::build_with_metrics`], resolving the model services' host names with `resolver`
    /// instead of DNS.
    /// A [`Config`] is checked and parsed here, a [`ValidConfig`] was already.
    pub fn build_with_resolver(
        config: impl IntoValidConfig,
        grpc_listener: TcpListener,
        http_listener: TcpListener,
        metrics: Metrics,
        resolver: Arc<dyn Resolver>,
    ) -> Result<Self, GatewayError> {
        let valid = config.into_valid()?;
        let config = valid.config();
        let dev = dev::prepare(config)?;
        let auth = Arc::new(Authenticator::from_config(
            config,
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
        let pool_settings = PoolSettings {
            connect_timeout: config.backend_connect_timeout(),
            refresh_interval: config.backend_refresh(),
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
            in_flight: InFlightLimiter::new(config.max_in_flight_per_client),
            matchers: ReplicaPool::new(
                Backend::Matcher,
                valid.backend_urls(Backend::Matcher),
                pool_settings,
                Arc::clone(&resolver),
                metrics.clone(),
            )?,
            liveness: ReplicaPool::new(
                Backend::Liveness,
                valid.backend_urls(Backend::Liveness),
                pool_settings,
                resolver,
                metrics.clone(),
            )?,
            signer,
            metrics,
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
            rest_settings: rest::RestSettings {
                cors_allowed_origins: config.cors_allowed_origins.clone(),
            },
            shutdown_grace: config.shutdown_grace(),
        })
    }

    /// The registry this gateway records into, for a `/metrics` endpoint.
    pub fn metrics(&self) -> &Metrics {
        &self.gateway.metrics
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
    /// and gives in-flight requests the configured grace period to finish. Meanwhile the model
    /// services' replicas are re-resolved and health checked in the background.
    pub async fn run_until_stopped(
        self,
        shutdown: impl Future<Output = ()> + Send + 'static,
    ) -> Result<(), GatewayError> {
        // The listeners are bound already: early callers wait in the backlog meanwhile.
        let first_look = async {
            tokio::join!(
                self.gateway.matchers.refresh(),
                self.gateway.liveness.refresh()
            )
        };
        if tokio::time::timeout(FIRST_PROBE_TIMEOUT, first_look)
            .await
            .is_err()
        {
            tracing::warn!("the model services did not answer at start: not ready yet");
        }
        let _refreshers = [
            self.gateway.matchers.spawn_refresher(),
            self.gateway.liveness.spawn_refresher(),
        ];
        let (health, health_service) = ServiceHealth::new(PUBLIC_SERVICE_NAME).await;
        let readiness = Readiness::follow(&self.gateway, health.clone()).await;
        let (reflection_v1, reflection_v1alpha) = reflection_services()?;
        let max_message = self.gateway.limits.max_message_bytes();
        let api = FaceVerificationServer::new(grpc::GrpcApi::new(Arc::clone(&self.gateway)))
            .max_decoding_message_size(max_message);
        // Authentication wraps every route, unknown paths included, inside the shared
        // observation and malformed-request layers, so refused calls are traced and counted too.
        let routes = Routes::new(health_service)
            .add_service(reflection_v1)
            .add_service(reflection_v1alpha)
            .add_service(api)
            .into_axum_router()
            .layer(GrpcAuthLayer::new(Arc::clone(&self.auth), max_message));
        let grpc_router = observed_server(&self.gateway.metrics).add_routes(routes.into());

        // One stop signal for both servers; the gRPC drain is the shared one, bounded by the
        // grace period, and the REST drain gets the same grace alongside it.
        let (stop_sender, stop_receiver) = watch::channel(false);
        let stopped = |mut receiver: watch::Receiver<bool>| async move {
            // An error means the sender is gone, which also means stop.
            let _ = receiver.wait_for(|stop| *stop).await;
        };
        let grace = self.shutdown_grace;
        let mut grpc_task = tokio::spawn(serve_until_shutdown(
            grpc_router,
            self.grpc_listener,
            health,
            stopped(stop_receiver.clone()),
            grace,
        ));
        let router = rest::router(
            Arc::clone(&self.gateway),
            Arc::clone(&self.auth),
            self.rest_settings.clone(),
        )
        .merge(readiness::router(
            Arc::clone(&self.gateway),
            readiness.subscribe(),
        ));
        let http_server = axum::serve(accept_http_without_nagle(self.http_listener), router)
            .with_graceful_shutdown(stopped(stop_receiver));
        let mut http_task = tokio::spawn(async move { http_server.await });

        tokio::select! {
            () = shutdown => {}
            finished = &mut grpc_task => return Err(server_failure("grpc", finished.map(|r| r.map_err(|e| e.to_string())))),
            finished = &mut http_task => return Err(server_failure("http", finished.map(|r| r.map_err(|e| e.to_string())))),
        }
        tracing::info!(
            grace_ms = grace.as_millis() as u64,
            "shutting down, draining"
        );
        readiness.shut_down();
        let _ = stop_sender.send(true);
        let (grpc, http) = tokio::join!(grpc_task, tokio::time::timeout(grace, &mut http_task));
        if let Ok(Err(error)) = grpc {
            tracing::warn!(%error, "grpc server ended with an error");
        }
        match http {
            Ok(Ok(Err(error))) => tracing::warn!(%error, "http server ended with an error"),
            Ok(_) => {}
            Err(_) => {
                tracing::warn!("http drain did not finish within the grace period, aborting");
                http_task.abort();
            }
        }
        tracing::info!("stopped");
        Ok(())
    }
}

/// gRPC reflection, v1 and v1alpha (older grpcurl builds speak only v1alpha), listing only the
/// public services: the descriptor set also holds the internal Matcher and Liveness, which the
/// gateway does not serve.
#[allow(clippy::type_complexity)]
fn reflection_services() -> Result<
    (
        tonic_reflection::server::v1::ServerReflectionServer<
            impl tonic_reflection::server::v1::ServerReflection,
        >,
        tonic_reflection::server::v1alpha::ServerReflectionServer<
            impl tonic_reflection::server::v1alpha::ServerReflection,
        >,
    ),
    GatewayError,
> {
    let builder = || {
        tonic_reflection::server::Builder::configure()
            .register_encoded_file_descriptor_set(faceproof_proto::FILE_DESCRIPTOR_SET)
            .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
            .with_service_name(PUBLIC_SERVICE_NAME)
            .with_service_name("grpc.health.v1.Health")
    };
    let failed = |error: tonic_reflection::server::Error| GatewayError::Serve {
        server: "grpc",
        detail: format!("reflection: {error}"),
    };
    let v1 = builder()
        .with_service_name("grpc.reflection.v1.ServerReflection")
        .build_v1()
        .map_err(failed)?;
    let v1alpha = builder()
        .with_service_name("grpc.reflection.v1alpha.ServerReflection")
        .build_v1alpha()
        .map_err(failed)?;
    Ok((v1, v1alpha))
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
