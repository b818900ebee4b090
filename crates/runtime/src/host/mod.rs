//! The model-service host: what the matcher and the liveness service share from the command line
//! to the drained exit. A service implements [`ModelService`] (its name, addresses, engine,
//! warm-up and gRPC handler) and flattens [`ModelServiceArgs`] into its configuration; the host
//! does the rest:
//! - [`Application`] binds nothing itself (the caller hands in a bound listener, so tests use
//!   `127.0.0.1:0`); `run_until_stopped` warms the engine up on the inference pool, reports
//!   SERVING and serves until the shutdown future resolves, then drains;
//! - [`serve`] validates, loads the models off the async workers, binds the gRPC and metrics
//!   listeners and runs the application, without touching process-wide telemetry (for hosts that
//!   run several services in one process);
//! - [`run`] is the whole process: telemetry, [`serve`] until SIGTERM or ctrl-c, spans flushed;
//! - [`main`] is a service binary's `main`.

use std::fmt;
use std::future::Future;
use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use faceproof_models::{ModelName, ModelStore};
use faceproof_telemetry::Metrics;
use tokio::net::TcpListener;

use crate::HostError;
use crate::deadline::Deadline;
use crate::health::ServiceHealth;
use crate::inference::Inference;
use crate::pool::{InferencePool, PoolStats};
use crate::serve::{ObservedRouter, observed_server, reflection_service, serve_until_shutdown};
use crate::telemetry::MetricsServer;

mod args;
mod request;

pub use args::{
    DEFAULT_MAX_IMAGE_BYTES, DEFAULT_MAX_IMAGE_PIXELS, DEFAULT_MIN_FACE_PX, DEFAULT_MODEL_DIR,
    HARD_MAX_IMAGE_BYTES, MAX_MIN_FACE_PX, ModelServiceArgs,
};
pub use request::search_mode;

/// Warm-up runs whole model passes on a cold process; give it generous room.
const WARM_UP_BUDGET: Duration = Duration::from_secs(600);

/// One model service as the host runs it, implemented by a unit type per service. What differs
/// between services is here; everything else is the host's.
pub trait ModelService:
    fmt::Debug + Clone + Copy + PartialEq + Eq + Default + Send + Sync + 'static
{
    /// Short name, e.g. `matcher`: inference threads (`matcher-infer-0`), logs, error context.
    const NAME: &'static str;
    /// OpenTelemetry `service.name`, e.g. `faceproof-matcher`.
    const TELEMETRY_SERVICE_NAME: &'static str;
    /// The gRPC service whose health is reported, e.g. `faceproof.matcher.v1.Matcher`.
    const GRPC_SERVICE_NAME: &'static str;
    /// Encoded descriptor set served by reflection (`grpc.health.v1` is always added).
    const FILE_DESCRIPTOR_SET: &'static [u8];
    /// Environment variable of `--listen`, e.g. `FACEPROOF_MATCHER_LISTEN`.
    const LISTEN_ENV: &'static str;
    /// Default of `--listen`, `HOST:PORT`.
    const DEFAULT_LISTEN: &'static str;
    /// Default of `--metrics-addr`, `HOST:PORT` or `off`.
    const DEFAULT_METRICS_ADDR: &'static str;
    /// The models the engine loads, published as `faceproof_model_info`.
    const MODELS: &'static [ModelName];

    /// The service's whole configuration, [`ModelServiceArgs`] flattened into it.
    type Config: clap::Parser + fmt::Debug + Send + Sync + 'static;
    /// What answers requests, e.g. `dyn MatchEngine`; runs on the inference threads.
    type Engine: ?Sized + Send + Sync + 'static;
    /// The gRPC handler, ready to add to the router (size limits applied).
    type Handler: Send + 'static;

    /// The shared settings inside the configuration.
    fn host_args(config: &Self::Config) -> &ModelServiceArgs<Self>;

    /// Checks the whole configuration (the host's settings included); the message names the
    /// offending flag.
    fn validate(config: &Self::Config) -> Result<(), HostError>;

    /// Reads and verifies the weights and builds the engine, recording its stage timings into
    /// `metrics`. Slow (seconds): the host calls it on a blocking thread.
    fn load_engine(config: &Self::Config, metrics: Metrics)
    -> Result<Arc<Self::Engine>, HostError>;

    /// Runs the whole pipeline once so the first request is not slow; SERVING only after it.
    fn warm_up(engine: &Self::Engine) -> Result<(), HostError>;

    /// The gRPC handler over the shared request plumbing.
    fn handler(
        config: &Self::Config,
        inference: Inference<Self::Engine>,
    ) -> Result<Self::Handler, HostError>;

    /// Adds the handler to a router that already serves health and reflection.
    fn route(router: ObservedRouter, handler: Self::Handler) -> ObservedRouter;
}

/// A service binary's `main`: one candle thread by default (before any thread exists: candle's
/// default elementwise pool spins against ours), the flags, then [`run`] on a multi-threaded
/// runtime.
pub fn main<S: ModelService>() -> anyhow::Result<()> {
    crate::exec_with_one_candle_thread_by_default();
    let config = <S::Config as clap::Parser>::parse();
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?
        .block_on(run::<S>(config))
}

/// The service process: telemetry (logs, traces) for the process, then [`serve`] until SIGTERM
/// or ctrl-c, then the last spans are flushed. Call it once per process.
pub async fn run<S: ModelService>(config: S::Config) -> anyhow::Result<()> {
    let telemetry = S::host_args(&config)
        .serving
        .telemetry
        .telemetry_config(S::TELEMETRY_SERVICE_NAME)?;
    crate::run_process(telemetry, |shutdown| serve::<S>(config, shutdown)).await
}

/// Validates, loads the models, binds the gRPC and metrics listeners and serves until
/// `shutdown` resolves. Installs no subscriber: the host process owns telemetry.
pub async fn serve<S: ModelService>(
    config: S::Config,
    shutdown: impl Future<Output = ()> + Send,
) -> anyhow::Result<()> {
    S::validate(&config)?;
    let metrics = Metrics::new();
    // Reading and verifying the weights takes seconds: keep it off the async workers.
    let (loaded, config) = tokio::task::spawn_blocking({
        let metrics = metrics.clone();
        move || {
            let loaded = S::load_engine(&config, metrics);
            (loaded, config)
        }
    })
    .await
    .with_context(|| format!("loading the {} models panicked", S::NAME))?;
    let engine = loaded.with_context(|| format!("loading the {} models", S::NAME))?;
    let args = S::host_args(&config);
    publish_model_info(&metrics, &args.model_dir, S::MODELS);
    let listener = TcpListener::bind(args.listen)
        .await
        .with_context(|| format!("binding {}", args.listen))?;
    let metrics_server = MetricsServer::bind(args.metrics_addr, metrics.clone()).await?;
    let app = Application::<S>::build_with_metrics(config, listener, engine, metrics)?;
    let served = app.run_until_stopped(shutdown).await;
    if let Some(metrics_server) = metrics_server {
        metrics_server.stop().await;
    }
    Ok(served?)
}

/// Publishes `faceproof_model_info` for the loaded models: their name and the pinned sha256 of
/// the converted file (what `read_verified` checked the loaded bytes against).
pub fn publish_model_info(metrics: &Metrics, model_dir: &Path, models: &[ModelName]) {
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

/// A model service ready to serve on a bound listener.
pub struct Application<S: ModelService> {
    listener: TcpListener,
    local_addr: SocketAddr,
    engine: Arc<S::Engine>,
    pool: Arc<InferencePool>,
    handler: S::Handler,
    shutdown_grace: Duration,
    metrics: Metrics,
}

impl<S: ModelService> fmt::Debug for Application<S> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Application")
            .field("service", &S::NAME)
            .field("local_addr", &self.local_addr)
            .finish_non_exhaustive()
    }
}

impl<S: ModelService> Application<S> {
    /// Validates the configuration, starts the inference pool and builds the handler; serving
    /// starts with [`Self::run_until_stopped`]. Metrics go to a registry of its own
    /// ([`Self::metrics`]).
    pub fn build(
        config: S::Config,
        listener: TcpListener,
        engine: Arc<S::Engine>,
    ) -> Result<Self, HostError> {
        Self::build_with_metrics(config, listener, engine, Metrics::new())
    }

    /// As [`Self::build`], recording gRPC calls and the inference queue into `metrics` (share it
    /// with the engine so its stage timings land in the same registry).
    pub fn build_with_metrics(
        config: S::Config,
        listener: TcpListener,
        engine: Arc<S::Engine>,
        metrics: Metrics,
    ) -> Result<Self, HostError> {
        S::validate(&config)?;
        let local_addr = listener.local_addr().map_err(HostError::Listener)?;
        let serving = &S::host_args(&config).serving;
        let pool = Arc::new(InferencePool::with_metrics(
            S::NAME,
            serving.pool_config(),
            metrics.clone(),
        )?);
        let inference = Inference::new(
            Arc::clone(&engine),
            Arc::clone(&pool),
            serving.deadline_policy(),
        );
        let shutdown_grace = serving.shutdown_grace();
        let handler = S::handler(&config, inference)?;
        Ok(Self {
            listener,
            local_addr,
            engine,
            pool,
            handler,
            shutdown_grace,
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
    pub async fn run_until_stopped<F>(self, shutdown: F) -> Result<(), HostError>
    where
        F: Future<Output = ()> + Send,
    {
        let (health, health_server) = ServiceHealth::new(S::GRPC_SERVICE_NAME).await;
        let reflection = reflection_service(&[S::FILE_DESCRIPTOR_SET])?;
        let router = observed_server(&self.metrics)
            .add_service(health_server)
            .add_service(reflection);
        let router = S::route(router, self.handler);

        tracing::info!(addr = %self.local_addr, "{} listening", S::NAME);
        let serve = serve_until_shutdown(
            router,
            self.listener,
            health.clone(),
            shutdown,
            self.shutdown_grace,
        );
        tokio::pin!(serve);

        let engine = Arc::clone(&self.engine);
        let warm_up = self.pool.run(Deadline::after(WARM_UP_BUDGET), move |_| {
            S::warm_up(&engine)
        });
        tokio::select! {
            // Shutdown came before warm-up finished.
            result = &mut serve => return result.map_err(HostError::from),
            warmed = warm_up => match warmed {
                Ok(Ok(())) => health.set_serving().await,
                Ok(Err(error)) => return Err(error),
                Err(error) => return Err(HostError::WarmUp(error.to_string())),
            },
        }
        serve.await.map_err(HostError::from)
    }
}

#[cfg(test)]
mod tests {
    use clap::CommandFactory as _;
    use tonic_health::pb::HealthCheckRequest;
    use tonic_health::pb::health_check_response::ServingStatus;
    use tonic_health::pb::health_client::HealthClient;

    use super::*;

    /// A model service with no gRPC API of its own: health and reflection only.
    #[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
    struct Probe;

    #[derive(Debug, clap::Parser)]
    struct ProbeConfig {
        #[command(flatten)]
        host: ModelServiceArgs<Probe>,
    }

    /// Warms up, or fails to.
    struct ProbeEngine {
        warm_up_fails: bool,
    }

    impl ModelService for Probe {
        const NAME: &'static str = "probe";
        const TELEMETRY_SERVICE_NAME: &'static str = "faceproof-probe";
        const GRPC_SERVICE_NAME: &'static str = "faceproof.probe.v1.Probe";
        const FILE_DESCRIPTOR_SET: &'static [u8] = tonic_health::pb::FILE_DESCRIPTOR_SET;
        const LISTEN_ENV: &'static str = "FACEPROOF_PROBE_LISTEN";
        const DEFAULT_LISTEN: &'static str = "0.0.0.0:50099";
        const DEFAULT_METRICS_ADDR: &'static str = "0.0.0.0:9499";
        const MODELS: &'static [ModelName] = &[];

        type Config = ProbeConfig;
        type Engine = ProbeEngine;
        type Handler = ();

        fn host_args(config: &ProbeConfig) -> &ModelServiceArgs<Self> {
            &config.host
        }

        fn validate(config: &ProbeConfig) -> Result<(), HostError> {
            config.host.validate()
        }

        fn load_engine(_: &ProbeConfig, _: Metrics) -> Result<Arc<ProbeEngine>, HostError> {
            Ok(Arc::new(ProbeEngine {
                warm_up_fails: false,
            }))
        }

        fn warm_up(engine: &ProbeEngine) -> Result<(), HostError> {
            if engine.warm_up_fails {
                return Err(HostError::WarmUp("scripted".into()));
            }
            Ok(())
        }

        fn handler(_: &ProbeConfig, _: Inference<ProbeEngine>) -> Result<(), HostError> {
            Ok(())
        }

        fn route(router: ObservedRouter, (): ()) -> ObservedRouter {
            router
        }
    }

    fn config() -> ProbeConfig {
        let mut host = ModelServiceArgs::default();
        host.serving.shutdown_grace_ms = 1_000;
        ProbeConfig { host }
    }

    #[test]
    fn the_addresses_take_the_services_variable_and_defaults() {
        let command = ProbeConfig::command();
        let arg = |id: &str| {
            let arg = command
                .get_arguments()
                .find(|arg| arg.get_id() == id)
                .unwrap();
            (
                arg.get_env().unwrap().to_string_lossy().into_owned(),
                arg.get_default_values()[0].to_string_lossy().into_owned(),
            )
        };
        assert_eq!(
            arg("listen"),
            ("FACEPROOF_PROBE_LISTEN".into(), "0.0.0.0:50099".into())
        );
        assert_eq!(
            arg("metrics_addr"),
            ("FACEPROOF_METRICS_ADDR".into(), "0.0.0.0:9499".into())
        );
        assert_eq!(
            config().host.listen,
            SocketAddr::from(([0, 0, 0, 0], 50099))
        );
        assert!(config().host.validate().is_ok());
    }

    #[test]
    fn rejects_out_of_range_settings() {
        let changed = |change: fn(&mut ModelServiceArgs<Probe>)| {
            let mut args = ModelServiceArgs::<Probe>::default();
            change(&mut args);
            args
        };
        let bad = [
            changed(|args| args.max_image_bytes = 0),
            changed(|args| args.max_image_bytes = HARD_MAX_IMAGE_BYTES + 1),
            changed(|args| args.max_image_pixels = 0),
            changed(|args| args.min_face_px = 0),
            changed(|args| args.min_face_px = MAX_MIN_FACE_PX + 1),
            changed(|args| args.image_bounds.max_image_side = 0),
            changed(|args| args.serving.queue_capacity = 0),
        ];
        for args in bad {
            assert!(
                matches!(args.validate(), Err(HostError::Config(_))),
                "{args:?}"
            );
        }
    }

    async fn start(
        warm_up_fails: bool,
    ) -> (
        SocketAddr,
        tokio::task::JoinHandle<Result<(), HostError>>,
        tokio::sync::oneshot::Sender<()>,
    ) {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let engine = Arc::new(ProbeEngine { warm_up_fails });
        let app = Application::<Probe>::build(config(), listener, engine).unwrap();
        let addr = app.local_addr();
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let server = tokio::spawn(app.run_until_stopped(async {
            let _ = stopped.await;
        }));
        (addr, server, stop)
    }

    #[tokio::test]
    async fn serving_after_warm_up_and_not_serving_once_stopping() {
        let (addr, server, stop) = start(false).await;
        let channel = tonic::transport::Endpoint::from_shared(format!("http://{addr}"))
            .unwrap()
            .connect()
            .await
            .unwrap();
        let mut health = HealthClient::new(channel);
        let mut updates = health
            .watch(HealthCheckRequest {
                service: Probe::GRPC_SERVICE_NAME.into(),
            })
            .await
            .unwrap()
            .into_inner();
        while updates.message().await.unwrap().unwrap().status() != ServingStatus::Serving {}
        stop.send(()).unwrap();
        assert_eq!(
            updates.message().await.unwrap().unwrap().status(),
            ServingStatus::NotServing
        );
        drop(updates);
        server.await.unwrap().unwrap();
    }

    #[tokio::test]
    async fn a_failed_warm_up_stops_the_service_with_its_error() {
        let (_, server, _stop) = start(true).await;
        let error = server.await.unwrap().unwrap_err();
        assert!(matches!(error, HostError::WarmUp(_)), "{error}");
    }

    #[test]
    fn model_info_is_published_for_pinned_models_only() {
        let metrics = Metrics::new();
        publish_model_info(&metrics, Path::new("nowhere"), &[ModelName::YuNet]);
        let text = metrics.encode().unwrap();
        assert!(
            text.contains("faceproof_model_info{model=\"yunet\""),
            "{text}"
        );
    }
}
