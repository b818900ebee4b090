//! End-to-end tests of the whole faceproof system.
//!
//! [`spawn_stack`] boots the matcher and the liveness service with the real models and the
//! gateway in front of them, in this process, each on its own `127.0.0.1:0` listener, talking
//! real gRPC (zero2prod's `spawn_app`, for three services). The gateway authenticates with an
//! HS256 secret generated here and signs with an Ed25519 key generated here; [`Stack::token`]
//! is a JWT for [`Stack::client_id`]. Everything stops on [`Stack::shutdown`] or on drop.

use std::future::Future;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use anyhow::{Context, anyhow, bail};

pub mod hostile;
use clap::Parser as _;
use faceproof_gateway::GatewayCli;
use faceproof_liveness::LivenessConfig;
use faceproof_liveness::vision::{LivenessSettings, VisionLivenessEngine};
use faceproof_matcher::MatcherConfig;
use faceproof_matcher::vision::VisionMatchEngine;
use faceproof_models::{ModelName, ModelStore};
use faceproof_proto::gateway::v1 as pb;
use faceproof_proto::gateway::v1::face_verification_client::FaceVerificationClient;
use faceproof_signing::{PublicKeySet, Signer};
use rand_core::RngCore as _;
use tokio::net::TcpListener;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;
use tonic::transport::Channel;
use tonic_health::pb::HealthCheckRequest;
use tonic_health::pb::health_check_response::ServingStatus;
use tonic_health::pb::health_client::HealthClient;

/// The limit on every network await of the harness: debug builds on a loaded 2-core machine are
/// slow, but a hang must still fail.
pub const NETWORK_WAIT: Duration = Duration::from_secs(120);

/// How the stack is configured. `Default` gives generous deadlines (debug builds are slow) and
/// no rate limit to speak of.
#[derive(Debug, Clone)]
pub struct StackOptions {
    /// The gateway's overall deadline of a FAST request.
    pub deadline_fast: Duration,
    /// The gateway's overall deadline of an ACCURATE request.
    pub deadline_accurate: Duration,
    /// Extra gateway flags (e.g. `--max-image-bytes 1000`), applied after the harness's own, so
    /// they win.
    pub gateway_args: Vec<String>,
    /// The matcher's settings (`listen` and `model_dir` are ignored: the harness binds and
    /// discovers the model store).
    pub matcher: MatcherConfig,
    /// The liveness service's settings (`listen` and `model_dir` are ignored, as above).
    pub liveness: LivenessConfig,
    /// The `sub` of [`Stack::token`].
    pub client_id: String,
    /// How long [`Stack::token`] is valid.
    pub token_lifetime: Duration,
}

impl Default for StackOptions {
    fn default() -> Self {
        let mut matcher = MatcherConfig::default();
        matcher.host.serving.shutdown_grace_ms = 2_000;
        let mut liveness = LivenessConfig::default();
        liveness.host.serving.shutdown_grace_ms = 2_000;
        Self {
            deadline_fast: Duration::from_secs(60),
            deadline_accurate: Duration::from_secs(60),
            gateway_args: Vec::new(),
            matcher,
            liveness,
            client_id: "e2e-client".to_owned(),
            token_lifetime: Duration::from_secs(3600),
        }
    }
}

/// A running matcher + liveness + gateway. Dropping it stops all three (without waiting).
pub struct Stack {
    /// `http://127.0.0.1:port` of the gateway's gRPC API.
    pub gateway_grpc_url: String,
    /// `http://127.0.0.1:port` of the gateway's REST API.
    pub gateway_http_url: String,
    pub gateway_http_addr: SocketAddr,
    pub matcher_url: String,
    pub liveness_url: String,
    /// A valid HS256 JWT for [`Self::client_id`].
    pub token: String,
    pub client_id: String,
    /// The HS256 secret the gateway accepts, to mint other tokens ([`Self::mint_token`]).
    pub jwt_secret: String,
    /// The public key of the Ed25519 key the gateway signs with.
    pub public_keys: PublicKeySet,
    /// The signing key's id.
    pub signing_key_id: String,
    gateway: Service,
    matcher: Service,
    liveness: Service,
    _dir: tempfile::TempDir,
}

/// One service task and the switch that stops it.
struct Service {
    name: &'static str,
    stop: Option<oneshot::Sender<()>>,
    task: Option<JoinHandle<anyhow::Result<()>>>,
}

impl Service {
    fn spawn<F>(name: &'static str, run: impl FnOnce(oneshot::Receiver<()>) -> F) -> Self
    where
        F: Future<Output = anyhow::Result<()>> + Send + 'static,
    {
        let (stop, stopped) = oneshot::channel();
        Self {
            name,
            stop: Some(stop),
            task: Some(tokio::spawn(run(stopped))),
        }
    }

    /// Signals shutdown and waits for the service to drain and exit.
    async fn stop(&mut self) -> anyhow::Result<()> {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        let Some(task) = self.task.take() else {
            return Ok(());
        };
        tokio::time::timeout(NETWORK_WAIT, task)
            .await
            .map_err(|_| anyhow!("{} did not stop within {NETWORK_WAIT:?}", self.name))?
            .with_context(|| format!("{} task panicked", self.name))?
            .with_context(|| format!("{} ended with an error", self.name))
    }
}

impl Drop for Service {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
    }
}

/// Resolves when the stop switch is used or dropped.
async fn stopped(receiver: oneshot::Receiver<()>) {
    let _ = receiver.await;
}

/// The real engines, loaded once per test binary (loading and verifying weights is the slow
/// part; the engines themselves are stateless and shared).
pub struct Engines {
    pub matcher: Arc<VisionMatchEngine>,
    pub liveness: Arc<VisionLivenessEngine>,
}

/// The engines over the discovered model store (`FACEPROOF_MODEL_DIR` or `models/store` of this
/// checkout), built with the settings of the default configurations.
pub fn engines() -> anyhow::Result<&'static Engines> {
    static ENGINES: OnceLock<Engines> = OnceLock::new();
    if let Some(engines) = ENGINES.get() {
        return Ok(engines);
    }
    let store = ModelStore::discover().context(
        "no model store: run `cargo run -p faceproof-cli -- models fetch --from ../shared/models`",
    )?;
    let read = |name| {
        store
            .read_verified(name)
            .with_context(|| format!("reading {name:?} from {}", store.dir().display()))
    };
    let matcher_config = MatcherConfig::default();
    let matcher = VisionMatchEngine::from_weights(
        &read(ModelName::YuNet)?,
        &read(ModelName::SFace)?,
        faceproof_matcher::vision::settings_from_config(&matcher_config),
    )?;
    let liveness = VisionLivenessEngine::from_weights(
        &read(ModelName::YuNet)?,
        &read(ModelName::MiniFasNetV2)?,
        &read(ModelName::MiniFasNetV1Se)?,
        LivenessSettings::default(),
    )?;
    // A concurrent first call may have won the race; either value is equivalent.
    let _ = ENGINES.set(Engines {
        matcher: Arc::new(matcher),
        liveness: Arc::new(liveness),
    });
    ENGINES
        .get()
        .ok_or_else(|| anyhow!("engine cache is empty after being set"))
}

/// One comparison and its liveness check run on the engines directly, as the stack chains them
/// (FAST, an iOS client, the matcher's probe face as the liveness hint), and when each ended.
pub struct InProcess {
    pub compared: faceproof_matcher::CompareOutcome,
    pub checked: faceproof_liveness::LivenessVerdict,
    /// From the start to the end of the comparison.
    pub compared_after: Duration,
    /// From the start to the end of the liveness check.
    pub checked_after: Duration,
}

/// Runs [`InProcess`] (blocking: call it off the async runtime).
pub fn run_in_process(
    engines: &Engines,
    probe: Vec<u8>,
    gallery: Vec<u8>,
) -> anyhow::Result<InProcess> {
    use faceproof_liveness::{CheckJob, LivenessEngine as _};
    use faceproof_matcher::CompareJob;
    use faceproof_proto::common::v1::SearchMode;
    let deadline = || {
        faceproof_imaging::Cancellation::with_deadline(
            std::time::Instant::now() + Duration::from_secs(120),
        )
    };
    let started = std::time::Instant::now();
    let compared = engines.matcher.compare(
        CompareJob {
            probe: probe.clone(),
            gallery: vec![gallery],
            mode: SearchMode::Fast,
        },
        &deadline(),
    )?;
    let compared_after = started.elapsed();
    let checked = engines.liveness.check(
        CheckJob {
            image: probe,
            mode: SearchMode::Fast,
            face_hint: Some(compared.probe_face.clone()),
            os: "IOS".into(),
        },
        &deadline(),
    )?;
    Ok(InProcess {
        compared,
        checked,
        compared_after,
        checked_after: started.elapsed(),
    })
}

/// Boots matcher, liveness and gateway and returns once both model services report SERVING.
pub async fn spawn_stack(options: StackOptions) -> anyhow::Result<Stack> {
    // Loading reads and verifies the weights: keep it off the async runtime.
    let engines = tokio::task::spawn_blocking(engines)
        .await
        .context("loading the engines panicked")??;

    let matcher_listener = TcpListener::bind("127.0.0.1:0").await?;
    let matcher_app = faceproof_matcher::Application::build(
        options.matcher.clone(),
        matcher_listener,
        Arc::clone(&engines.matcher) as _,
    )?;
    let matcher_url = format!("http://{}", matcher_app.local_addr());
    let matcher = Service::spawn("matcher", |receiver| async move {
        Ok(matcher_app.run_until_stopped(stopped(receiver)).await?)
    });

    let liveness_listener = TcpListener::bind("127.0.0.1:0").await?;
    let liveness_app = faceproof_liveness::Application::build(
        options.liveness.clone(),
        liveness_listener,
        Arc::clone(&engines.liveness) as _,
    )?;
    let liveness_url = format!("http://{}", liveness_app.local_addr());
    let liveness = Service::spawn("liveness", |receiver| async move {
        Ok(liveness_app.run_until_stopped(stopped(receiver)).await?)
    });

    let dir = tempfile::tempdir()?;
    let jwt_secret = random_secret();
    let secret_file = write(dir.path(), "jwt-secret", &jwt_secret)?;
    let signer = Signer::generate();
    let signing_key_file = write(dir.path(), "signing.pem", &signer.to_pkcs8_pem()?)?;
    let public_keys = PublicKeySet::from_proto(&pb::GetSigningKeysResponse {
        keys: vec![signer.public_key()],
    })?;
    let mut args: Vec<String> = vec![
        "faceproof-gateway".into(),
        "--matcher-url".into(),
        matcher_url.clone(),
        "--liveness-url".into(),
        liveness_url.clone(),
        "--jwt-algorithm".into(),
        "HS256".into(),
        "--jwt-secret-file".into(),
        secret_file,
        "--signing-key-file".into(),
        signing_key_file,
        "--deadline-fast-ms".into(),
        millis(options.deadline_fast),
        "--deadline-accurate-ms".into(),
        millis(options.deadline_accurate),
        "--rate-limit-per-second".into(),
        "1000".into(),
        "--rate-limit-burst".into(),
        "1000".into(),
        "--shutdown-grace-ms".into(),
        "2000".into(),
        "--data-dir".into(),
        dir.path().join("data").display().to_string(),
    ];
    args.extend(options.gateway_args.iter().cloned());
    let config = GatewayCli::try_parse_from(args)?.config;
    let grpc_listener = TcpListener::bind("127.0.0.1:0").await?;
    let http_listener = TcpListener::bind("127.0.0.1:0").await?;
    let gateway_app = faceproof_gateway::Application::build(config, grpc_listener, http_listener)?;
    let gateway_grpc_url = format!("http://{}", gateway_app.grpc_addr());
    let gateway_http_addr = gateway_app.http_addr();
    let gateway = Service::spawn("gateway", |receiver| async move {
        Ok(gateway_app.run_until_stopped(stopped(receiver)).await?)
    });

    let token = mint_hs256(&jwt_secret, &options.client_id, options.token_lifetime)?;
    let stack = Stack {
        gateway_grpc_url,
        gateway_http_url: format!("http://{gateway_http_addr}"),
        gateway_http_addr,
        matcher_url,
        liveness_url,
        token,
        client_id: options.client_id,
        jwt_secret,
        public_keys,
        signing_key_id: signer.key_id().to_owned(),
        gateway,
        matcher,
        liveness,
        _dir: dir,
    };
    // The model services warm up before they report SERVING; requests before that would race it.
    wait_until_serving(&stack.matcher_url)
        .await
        .context("matcher")?;
    wait_until_serving(&stack.liveness_url)
        .await
        .context("liveness")?;
    // The gateway is ready once it has seen both model services healthy (its grpc.health).
    wait_until_serving(&stack.gateway_grpc_url)
        .await
        .context("gateway")?;
    Ok(stack)
}

impl Stack {
    /// A gRPC client of the gateway (a fresh connection).
    pub async fn client(&self) -> anyhow::Result<FaceVerificationClient<Channel>> {
        Ok(
            FaceVerificationClient::new(connect(&self.gateway_grpc_url).await?)
                .max_decoding_message_size(64 << 20)
                .max_encoding_message_size(usize::MAX),
        )
    }

    /// A request carrying [`Self::token`].
    pub fn authorized<T>(&self, message: T) -> tonic::Request<T> {
        authorized(message, &self.token)
    }

    /// One CompareWithLiveness call as [`Self::client_id`], within [`NETWORK_WAIT`].
    pub async fn compare(
        &self,
        request: pb::CompareWithLivenessRequest,
    ) -> anyhow::Result<Result<pb::CompareWithLivenessResponse, tonic::Status>> {
        let mut client = self.client().await?;
        let answer = tokio::time::timeout(
            NETWORK_WAIT,
            client.compare_with_liveness(self.authorized(request)),
        )
        .await
        .map_err(|_| anyhow!("CompareWithLiveness took over {NETWORK_WAIT:?}"))?;
        Ok(answer.map(tonic::Response::into_inner))
    }

    /// The gateway's published signing keys (GetSigningKeys, no token).
    pub async fn fetch_signing_keys(&self) -> anyhow::Result<PublicKeySet> {
        let mut client = self.client().await?;
        let keys = tokio::time::timeout(
            NETWORK_WAIT,
            client.get_signing_keys(pb::GetSigningKeysRequest {}),
        )
        .await
        .map_err(|_| anyhow!("GetSigningKeys took over {NETWORK_WAIT:?}"))??
        .into_inner();
        Ok(PublicKeySet::from_proto(&keys)?)
    }

    /// An HS256 JWT for another client id.
    pub fn mint_token(&self, client_id: &str, lifetime: Duration) -> anyhow::Result<String> {
        mint_hs256(&self.jwt_secret, client_id, lifetime)
    }

    /// Stops the liveness service (drained, exited); the rest keeps running.
    pub async fn stop_liveness(&mut self) -> anyhow::Result<()> {
        self.liveness.stop().await
    }

    /// Stops the matcher service; the rest keeps running.
    pub async fn stop_matcher(&mut self) -> anyhow::Result<()> {
        self.matcher.stop().await
    }

    /// Stops the gateway first (no new requests), then the model services, each drained.
    pub async fn shutdown(mut self) -> anyhow::Result<()> {
        self.gateway.stop().await?;
        self.matcher.stop().await?;
        self.liveness.stop().await
    }
}

/// Attaches `authorization: Bearer <token>`.
pub fn authorized<T>(message: T, token: &str) -> tonic::Request<T> {
    let mut request = tonic::Request::new(message);
    if let Ok(value) = format!("Bearer {token}").parse() {
        request.metadata_mut().insert("authorization", value);
    }
    request
}

/// Connects to a gRPC server within [`NETWORK_WAIT`].
pub async fn connect(url: &str) -> anyhow::Result<Channel> {
    let endpoint = Channel::from_shared(url.to_owned())?;
    tokio::time::timeout(NETWORK_WAIT, endpoint.connect())
        .await
        .map_err(|_| anyhow!("connecting to {url} took over {NETWORK_WAIT:?}"))?
        .with_context(|| format!("connecting to {url}"))
}

/// Follows the `grpc.health.v1` Watch stream until the server says SERVING (no polling).
pub async fn wait_until_serving(url: &str) -> anyhow::Result<()> {
    let watch = async {
        let mut health = HealthClient::new(connect(url).await?);
        let mut updates = health
            .watch(HealthCheckRequest {
                service: String::new(),
            })
            .await?
            .into_inner();
        while let Some(update) = updates.message().await? {
            if update.status == ServingStatus::Serving as i32 {
                return Ok(());
            }
        }
        bail!("the health stream of {url} ended before SERVING")
    };
    tokio::time::timeout(NETWORK_WAIT, watch)
        .await
        .map_err(|_| anyhow!("{url} not SERVING within {NETWORK_WAIT:?}"))?
}

#[derive(serde::Serialize)]
struct Claims<'a> {
    sub: &'a str,
    exp: i64,
}

fn mint_hs256(secret: &str, client_id: &str, lifetime: Duration) -> anyhow::Result<String> {
    let lifetime = i64::try_from(lifetime.as_secs())?;
    Ok(jsonwebtoken::encode(
        &jsonwebtoken::Header::new(jsonwebtoken::Algorithm::HS256),
        &Claims {
            sub: client_id,
            exp: chrono::Utc::now().timestamp() + lifetime,
        },
        &jsonwebtoken::EncodingKey::from_secret(secret.as_bytes()),
    )?)
}

/// 32 random bytes as 64 hex characters (the gateway wants at least 32 bytes).
fn random_secret() -> String {
    let mut bytes = [0u8; 32];
    rand_core::OsRng.fill_bytes(&mut bytes);
    bytes.iter().map(|byte| format!("{byte:02x}")).collect()
}

fn write(dir: &Path, name: &str, contents: &str) -> anyhow::Result<String> {
    let path: PathBuf = dir.join(name);
    std::fs::write(&path, contents).with_context(|| format!("writing {}", path.display()))?;
    Ok(path.display().to_string())
}

fn millis(duration: Duration) -> String {
    duration.as_millis().to_string()
}

/// The bytes of a committed fixture photo (`tests/fixtures/NAME`).
pub fn fixture(name: &str) -> anyhow::Result<Vec<u8>> {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("fixtures")
        .join(name);
    std::fs::read(&path).with_context(|| format!("reading {}", path.display()))
}
