//! The matcher or the liveness service started in this process on `127.0.0.1:0`, exactly as the
//! runtime host runs it (health, reflection, inference pool, drain), with the real models
//! (loaded once per test process) or with an engine the test gives (a scripted fake), plus
//! connected clients. [`RunningService`] waits for SERVING, and on drop tells the service to stop.
//! [`gate`] is the lever scripted engines and their tests share: a job that blocks until the
//! test releases it.

use std::future::Future;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, OnceLock, PoisonError, mpsc};
use std::time::Duration;

use anyhow::Context as _;
use faceproof_liveness::{Liveness, LivenessConfig, LivenessEngine};
use faceproof_matcher::{MatchEngine, Matcher, MatcherConfig};
use faceproof_models::ModelStore;
use faceproof_proto::common::v1::{BoundingBox, Face};
use faceproof_proto::liveness::v1::liveness_client::LivenessClient;
use faceproof_proto::matcher::v1::matcher_client::MatcherClient;
use faceproof_runtime::host::{Application, ModelService};
use faceproof_runtime::{HostError, PoolStats};
use faceproof_telemetry::Metrics;
use tokio::sync::{mpsc as async_mpsc, oneshot};
use tokio::task::JoinHandle;
use tokio_stream::StreamExt as _;
use tonic::Status;
use tonic::transport::Channel;
use tonic_health::pb::HealthCheckRequest;
use tonic_health::pb::health_check_response::ServingStatus;
use tonic_health::pb::health_client::HealthClient;
use tonic_types::StatusExt as _;

/// Upper bound on any single network step of a test: a hang fails the test instead of stalling
/// CI.
pub const STEP: Duration = Duration::from_secs(10);

/// `future`, or a panic naming the timeout once it has taken longer than [`STEP`].
pub async fn within<T>(future: impl Future<Output = T>) -> T {
    tokio::time::timeout(STEP, future)
        .await
        .expect("a test step timed out")
}

/// The message of a unary call's answer, within [`STEP`].
pub async fn call<T>(
    answer: impl Future<Output = Result<tonic::Response<T>, Status>>,
) -> Result<T, Status> {
    within(answer).await.map(tonic::Response::into_inner)
}

/// The `ErrorInfo.reason` of an error status and its `(field, reason)` violations; panics
/// unless the status carries faceproof's error details.
pub fn error_details(status: &Status) -> (String, Vec<(String, String)>) {
    let details = status.get_error_details();
    let info = details
        .error_info()
        .expect("the status carries an ErrorInfo");
    assert_eq!(info.domain, faceproof_runtime::ERROR_DOMAIN);
    (info.reason.clone(), crate::fake_backend::violations(status))
}

/// A path in this checkout, e.g. `models/store`.
pub fn repo_path(relative: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../..")
        .join(relative)
}

/// The bytes of a committed test image in `tests/fixtures`; panics if it is missing.
pub fn fixture(name: &str) -> Vec<u8> {
    let path = repo_path("tests/fixtures").join(name);
    std::fs::read(&path).unwrap_or_else(|error| panic!("reading {}: {error}", path.display()))
}

/// The face a scripted engine answers with: a 50x60 box at (`x`, 10), no landmarks.
pub fn scripted_face(x: f32) -> Face {
    Face {
        r#box: Some(BoundingBox {
            x,
            y: 10.0,
            width: 50.0,
            height: 60.0,
        }),
        landmarks: Vec::new(),
        detection_score: 0.95,
    }
}

/// A model service the kit can start: its gRPC client and its real engine.
pub trait TestService: ModelService {
    type Client: Clone;

    fn client(channel: Channel) -> Self::Client;

    /// The engine over the real models (the model store `ModelStore::discover` finds), built
    /// with the default settings once per test process and shared.
    fn real_engine() -> anyhow::Result<Arc<Self::Engine>>;
}

impl TestService for Matcher {
    type Client = MatcherClient<Channel>;

    fn client(channel: Channel) -> Self::Client {
        MatcherClient::new(channel)
    }

    fn real_engine() -> anyhow::Result<Arc<dyn MatchEngine>> {
        static ENGINE: OnceLock<Arc<dyn MatchEngine>> = OnceLock::new();
        cached_real_engine::<Self>(&ENGINE, MatcherConfig::default(), |config, dir| {
            config.host.model_dir = dir;
        })
    }
}

impl TestService for Liveness {
    type Client = LivenessClient<Channel>;

    fn client(channel: Channel) -> Self::Client {
        LivenessClient::new(channel)
    }

    fn real_engine() -> anyhow::Result<Arc<dyn LivenessEngine>> {
        static ENGINE: OnceLock<Arc<dyn LivenessEngine>> = OnceLock::new();
        cached_real_engine::<Self>(&ENGINE, LivenessConfig::default(), |config, dir| {
            config.host.model_dir = dir;
        })
    }
}

/// The engine in `cache`, or loaded by the service itself from the discovered model store.
fn cached_real_engine<S: ModelService>(
    cache: &OnceLock<Arc<S::Engine>>,
    mut config: S::Config,
    set_model_dir: impl FnOnce(&mut S::Config, PathBuf),
) -> anyhow::Result<Arc<S::Engine>> {
    if let Some(engine) = cache.get() {
        return Ok(Arc::clone(engine));
    }
    let store = ModelStore::discover().context(
        "no model store: run `cargo run -p faceproof-cli -- models fetch --from ../shared/models`",
    )?;
    set_model_dir(&mut config, store.dir().to_owned());
    let engine = S::load_engine(&config, Metrics::new())
        .with_context(|| format!("loading the {} models", S::NAME))?;
    // A concurrent first call may have won the race; either engine is equivalent.
    Ok(Arc::clone(cache.get_or_init(|| engine)))
}

/// A model service serving on `127.0.0.1:<port>` in this process. Dropping it sends the
/// shutdown signal (the service drains in the background); [`Self::stopped`] waits for the end.
pub struct RunningService<S: TestService> {
    addr: SocketAddr,
    channel: Channel,
    client: S::Client,
    health: HealthClient<Channel>,
    pool_stats: Arc<PoolStats>,
    metrics: Metrics,
    stop: Option<oneshot::Sender<()>>,
    server: Option<JoinHandle<Result<(), HostError>>>,
}

impl<S: TestService> RunningService<S> {
    /// Starts the service with `engine` and returns once it reports SERVING.
    pub async fn start(config: S::Config, engine: Arc<S::Engine>) -> anyhow::Result<Self> {
        Self::launch(config, engine, true).await
    }

    /// Starts the service with `engine`; returns once it reports SERVING when
    /// `wait_for_serving`, else as soon as a client is connected ([`Self::start_warming`]).
    pub async fn launch(
        config: S::Config,
        engine: Arc<S::Engine>,
        wait_for_serving: bool,
    ) -> anyhow::Result<Self> {
        let mut service = Self::start_warming(config, engine).await?;
        if wait_for_serving {
            service.wait_for_status(ServingStatus::Serving).await;
        }
        Ok(service)
    }

    /// Starts the service with the real models and returns once it reports SERVING.
    pub async fn start_with_real_models(config: S::Config) -> anyhow::Result<Self> {
        // Loading reads and verifies the weights: keep it off the async workers.
        let engine = tokio::task::spawn_blocking(S::real_engine)
            .await
            .context("loading the real engine panicked")??;
        Self::start(config, engine).await
    }

    /// Starts the service with `engine` and returns as soon as a client is connected, while
    /// the engine may still be warming up (NOT_SERVING).
    pub async fn start_warming(config: S::Config, engine: Arc<S::Engine>) -> anyhow::Result<Self> {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
        let app = Application::<S>::build(config, listener, engine)?;
        let addr = app.local_addr();
        let pool_stats = app.pool_stats();
        let metrics = app.metrics().clone();
        let (stop, stopped) = oneshot::channel::<()>();
        let server = tokio::spawn(app.run_until_stopped(async {
            // A dropped sender means stop too.
            let _ = stopped.await;
        }));
        let channel = within(Channel::from_shared(format!("http://{addr}"))?.connect()).await?;
        Ok(Self {
            addr,
            client: S::client(channel.clone()),
            health: HealthClient::new(channel.clone()),
            channel,
            pool_stats,
            metrics,
            stop: Some(stop),
            server: Some(server),
        })
    }

    /// The address the service listens on.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// A connection to the service, for any other client (reflection, raw HTTP/2 calls).
    pub fn channel(&self) -> Channel {
        self.channel.clone()
    }

    /// A client of the service's own API.
    pub fn client(&self) -> S::Client {
        self.client.clone()
    }

    /// A `grpc.health.v1` client.
    pub fn health(&self) -> HealthClient<Channel> {
        self.health.clone()
    }

    /// The inference queue's counters.
    pub fn pool_stats(&self) -> &Arc<PoolStats> {
        &self.pool_stats
    }

    /// The registry the service records into.
    pub fn metrics(&self) -> &Metrics {
        &self.metrics
    }

    /// The health of `service` (`""` for the whole server) right now.
    pub async fn health_status(&self, service: &str) -> ServingStatus {
        within(self.health().check(HealthCheckRequest {
            service: service.to_owned(),
        }))
        .await
        .expect("health check")
        .into_inner()
        .status()
    }

    /// Returns once the service's own health reports `wanted`.
    pub async fn wait_for_status(&mut self, wanted: ServingStatus) {
        let mut updates = within(self.health.watch(HealthCheckRequest {
            service: S::GRPC_SERVICE_NAME.to_owned(),
        }))
        .await
        .expect("health watch")
        .into_inner();
        loop {
            let update = within(updates.next())
                .await
                .expect("the health watch ended")
                .expect("health update");
            if update.status() == wanted {
                return;
            }
        }
    }

    /// Sends the shutdown signal: the service reports NOT_SERVING and drains.
    pub fn stop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
    }

    /// Stops the service and waits (at most [`STEP`]) until it has drained and returned.
    pub async fn stopped(mut self) -> Result<(), HostError> {
        self.stop();
        let server = self.server.take().expect("the server task is awaited once");
        within(server).await.expect("the server task panicked")
    }
}

impl<S: TestService> Drop for RunningService<S> {
    fn drop(&mut self) {
        self.stop();
    }
}

/// A model service over a scripted engine the test keeps a handle on (to count its calls), with
/// the lever of the engine's [`Gate`].
pub struct Scripted<S: TestService, E> {
    pub service: RunningService<S>,
    pub engine: Arc<E>,
    pub lever: GateLever,
}

impl<S: TestService, E> Scripted<S, E> {
    pub fn new(service: RunningService<S>, engine: Arc<E>, lever: GateLever) -> Self {
        Self {
            service,
            engine,
            lever,
        }
    }

    /// Spawns `request` (one the engine holds at its gate) and returns once the engine holds
    /// it: the worker it runs on is busy until [`GateLever::release`].
    pub async fn hold_worker<T: Send + 'static>(
        &mut self,
        request: impl Future<Output = T> + Send + 'static,
    ) -> JoinHandle<T> {
        let in_flight = tokio::spawn(request);
        self.lever.started().await;
        in_flight
    }
}

/// A gate for a scripted engine (the engine's side) and its lever (the test's side).
pub fn gate() -> (Gate, GateLever) {
    let (started_tx, started) = async_mpsc::unbounded_channel();
    let (release, release_rx) = mpsc::channel();
    (
        Gate {
            started: started_tx,
            release: Mutex::new(release_rx),
        },
        GateLever { started, release },
    )
}

/// Held by a scripted engine: a job (or the warm-up) waits here until the test releases it.
#[derive(Debug)]
pub struct Gate {
    started: async_mpsc::UnboundedSender<()>,
    release: Mutex<mpsc::Receiver<()>>,
}

impl Gate {
    /// Tells the test a job started, then waits for its release.
    pub fn hold(&self) {
        let _ = self.started.send(());
        self.wait_for_release();
    }

    /// Waits for one release, or until the test has dropped its lever.
    pub fn wait_for_release(&self) {
        let _ = self
            .release
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .recv();
    }
}

/// Held by the test: sees held jobs start and releases them, one per [`Self::release`].
#[derive(Debug)]
pub struct GateLever {
    started: async_mpsc::UnboundedReceiver<()>,
    release: mpsc::Sender<()>,
}

impl GateLever {
    /// Returns once a job has reached [`Gate::hold`].
    pub async fn started(&mut self) {
        within(self.started.recv())
            .await
            .expect("the engine is gone");
    }

    /// Lets one held job (or the held warm-up) go on.
    pub fn release(&self) {
        self.release.send(()).expect("the engine is gone");
    }
}
