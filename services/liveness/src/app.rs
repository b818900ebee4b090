//! Assembling and running the liveness service: `Application::build` binds nothing itself (the caller
//! hands in a bound listener, so tests use 127.0.0.1:0), `run_until_stopped` warms the engine up,
//! reports SERVING and serves until the shutdown future resolves. [`run`] is the whole process
//! (what `main` and `faceproof serve` call); [`serve`] is the same without the process-wide
//! telemetry set-up, for hosts that run several services in one process.

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use faceproof_models::{ModelName, ModelStore};
use faceproof_proto::liveness::v1::liveness_server::{LivenessServer, SERVICE_NAME};
use faceproof_runtime::{
    Deadline, InferencePool, MetricsServer, PoolStats, ServiceHealth, observed_server,
    reflection_service, serve_until_shutdown,
};
use faceproof_telemetry::Metrics;
use tokio::net::TcpListener;

use crate::LivenessError;
use crate::config::LivenessConfig;
use crate::engine::LivenessEngine;
use crate::service::{LivenessService, RequestLimits};

/// OpenTelemetry `service.name` of the liveness service.
pub const TELEMETRY_SERVICE_NAME: &str = "faceproof-liveness";

/// The liveness process: telemetry (logs, traces) for the process, then [`serve`] until SIGTERM
/// or ctrl-c, then the last spans are flushed. Call it once per process.
pub async fn run(config: LivenessConfig) -> anyhow::Result<()> {
    let telemetry = config
        .serving
        .telemetry
        .telemetry_config(TELEMETRY_SERVICE_NAME)?;
    let guard = faceproof_telemetry::init(&telemetry).context("initialising telemetry")?;
    let served = serve(config, faceproof_runtime::shutdown_signal()).await;
    if let Err(error) = guard.shutdown().await {
        tracing::warn!(%error, "flushing the last spans failed");
    }
    served
}

/// Validates, loads the models, binds the gRPC and metrics listeners and serves until
/// `shutdown` resolves. Installs no subscriber: the host process owns telemetry.
pub async fn serve(
    config: LivenessConfig,
    shutdown: impl Future<Output = ()> + Send,
) -> anyhow::Result<()> {
    config.validate()?;
    let metrics = Metrics::new();
    // Reading and verifying the weights takes seconds: keep it off the async workers.
    let (loaded, config) = tokio::task::spawn_blocking(move || {
        let loaded = crate::vision::load_engine(&config);
        (loaded, config)
    })
    .await
    .context("loading the liveness models panicked")?;
    let engine = loaded.context("loading the liveness models")?;
    publish_model_info(
        &metrics,
        &config.model_dir,
        &[
            ModelName::YuNet,
            ModelName::MiniFasNetV2,
            ModelName::MiniFasNetV1Se,
        ],
    );
    let engine = engine.with_metrics(metrics.clone());
    let listener = TcpListener::bind(config.listen)
        .await
        .with_context(|| format!("binding {}", config.listen))?;
    let metrics_server = MetricsServer::bind(config.metrics_addr, metrics.clone()).await?;
    let app = Application::build_with_metrics(config, listener, Arc::new(engine), metrics)?;
    let served = app.run_until_stopped(shutdown).await;
    if let Some(metrics_server) = metrics_server {
        metrics_server.stop().await;
    }
    Ok(served?)
}

/// Publishes `faceproof_model_info` for the loaded models: their name and the pinned sha256 of
/// the converted file (what `read_verified` checked the loaded bytes against).
fn publish_model_info(metrics: &Metrics, model_dir: &std::path::Path, models: &[ModelName]) {
    match ModelStore::at(model_dir) {
        Ok(store) => {
            for &name in models {
                if let Some(digest) = store.manifest().model(name).converted_sha256 {
                    metrics.set_model_info(name.as_str(), &digest.to_string());
                }
            }
        }
        Err(error) => tracing::warn!(%error, "no model manifest for the model info metric"),
    }
}

/// Warm-up runs whole model passes on a cold process; give it generous room.
const WARM_UP_BUDGET: Duration = Duration::from_secs(600);

/// A liveness service ready to serve on a bound listener.
pub struct Application {
    config: LivenessConfig,
    listener: TcpListener,
    local_addr: SocketAddr,
    engine: Arc<dyn LivenessEngine>,
    pool: Arc<InferencePool>,
    metrics: Metrics,
}

impl std::fmt::Debug for Application {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Application")
            .field("local_addr", &self.local_addr)
            .field("config", &self.config)
            .finish_non_exhaustive()
    }
}

impl Application {
    /// Validates the configuration and starts the inference pool; serving starts with
    /// [`Self::run_until_stopped`]. Metrics go to a registry of its own ([`Self::metrics`]).
    pub fn build(
        config: LivenessConfig,
        listener: TcpListener,
        engine: Arc<dyn LivenessEngine>,
    ) -> Result<Self, LivenessError> {
        Self::build_with_metrics(config, listener, engine, Metrics::new())
    }

    /// As [`Self::build`], recording gRPC calls and the inference queue into `metrics` (share it
    /// with the engine so its stage timings land in the same registry).
    pub fn build_with_metrics(
        config: LivenessConfig,
        listener: TcpListener,
        engine: Arc<dyn LivenessEngine>,
        metrics: Metrics,
    ) -> Result<Self, LivenessError> {
        config.validate()?;
        let local_addr = listener.local_addr().map_err(LivenessError::Listener)?;
        let pool = Arc::new(InferencePool::with_metrics(
            "liveness",
            config.serving.pool_config(),
            metrics.clone(),
        )?);
        Ok(Self {
            config,
            listener,
            local_addr,
            engine,
            pool,
            metrics,
        })
    }

    /// The registry this service records into, for a `/metrics` endpoint.
    pub fn metrics(&self) -> &Metrics {
        &self.metrics
    }

    /// The address actually bound (the port the OS chose for `:0`).
    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    /// Queue and rejection counters, for metrics and tests.
    pub fn pool_stats(&self) -> Arc<PoolStats> {
        self.pool.stats()
    }

    /// Serves until `shutdown` resolves, then drains within the configured grace period. Health
    /// is NOT_SERVING until warm-up succeeds; a failed warm-up stops the server with an error.
    pub async fn run_until_stopped<F>(self, shutdown: F) -> Result<(), LivenessError>
    where
        F: Future<Output = ()> + Send,
    {
        let (health, health_server) = ServiceHealth::new(SERVICE_NAME).await;
        let reflection = reflection_service(&[faceproof_proto::FILE_DESCRIPTOR_SET])?;
        let service = LivenessService::new(
            Arc::clone(&self.engine),
            Arc::clone(&self.pool),
            RequestLimits {
                max_image_bytes: self.config.max_image_bytes,
            },
            self.config.serving.deadline_policy(),
        );
        let router = observed_server(&self.metrics)
            .add_service(health_server)
            .add_service(reflection)
            .add_service(
                LivenessServer::new(service)
                    .max_decoding_message_size(self.config.max_message_bytes()),
            );

        tracing::info!(addr = %self.local_addr, "liveness listening");
        let serve = serve_until_shutdown(
            router,
            self.listener,
            health.clone(),
            shutdown,
            self.config.serving.shutdown_grace(),
        );
        tokio::pin!(serve);

        let engine = Arc::clone(&self.engine);
        let warm_up = self
            .pool
            .run(Deadline::after(WARM_UP_BUDGET), move |_| engine.warm_up());
        tokio::select! {
            // Shutdown came before warm-up finished.
            result = &mut serve => return result.map_err(LivenessError::from),
            warmed = warm_up => match warmed {
                Ok(Ok(())) => health.set_serving().await,
                Ok(Err(error)) => return Err(LivenessError::WarmUp(error.to_string())),
                Err(error) => return Err(LivenessError::WarmUp(error.to_string())),
            },
        }
        serve.await.map_err(LivenessError::from)
    }
}
