//! The gateway under test, in-process, in front of scripted model services.
//!
//! - [`FakeMatcher`] and [`FakeLiveness`]: matcher and liveness services whose answers a test
//!   sets ([`MatcherScript`], [`LivenessScript`]) and which count and keep what they were sent;
//!   [`serve`] puts one on `127.0.0.1:0`; [`MatcherReplica`] runs a fake matcher with
//!   grpc.health.v1 in its own runtime, so that it can be stopped or killed as a process would be.
//! - [`GatewaySetup`] / [`TestGateway`]: the real gateway, configured through its command-line
//!   flags (as an operator would), with API keys, a signing key and a JWT set-up in a temporary
//!   directory, on `127.0.0.1:0` for gRPC and REST.
//! - What the tests then need to talk to it: tokens ([`hs256_token`], [`sign_token`]), a raw
//!   HTTP/1.1 exchange ([`exchange`], [`http`]), the request fixtures ([`compare_request`],
//!   [`fixture`]) and the rich-error accessors ([`reason`], [`violation_fields`],
//!   [`retry_delay`]).
//!
//! Every network wait goes through [`within`], so a broken test fails after [`WAIT`] instead of
//! hanging.

use std::collections::HashMap;
use std::future::Future;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use clap::Parser as _;
use faceproof_gateway::auth::hash_api_key;
use faceproof_gateway::balancer::StaticResolver;
use faceproof_gateway::{Application, GatewayCli};
use faceproof_proto::common::v1::{BoundingBox, Face, FaceIssue, FaceIssueReason, Point};
use faceproof_proto::gateway::v1 as pb;
use faceproof_proto::gateway::v1::face_verification_client::FaceVerificationClient;
use faceproof_proto::liveness::v1 as liveness_pb;
use faceproof_proto::liveness::v1::liveness_server::{Liveness, LivenessServer};
use faceproof_proto::matcher::v1 as matcher_pb;
use faceproof_proto::matcher::v1::matcher_server::{Matcher, MatcherServer, SERVICE_NAME};
use faceproof_signing::{PublicKeySet, Signer};
use faceproof_telemetry::Metrics;
use serde_json::Value;
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::net::TcpListener;
use tokio::sync::oneshot;
use tokio_stream::wrappers::TcpListenerStream;
use tonic::metadata::MetadataValue;
use tonic::transport::Channel;
use tonic::{Request, Response, Status};
use tonic_health::ServingStatus;
use tonic_health::server::HealthReporter;
use tonic_types::StatusExt as _;

/// How long any network step of a test may take before the test fails.
pub const WAIT: Duration = Duration::from_secs(15);
/// The HS256 secret of the default [`Jwt::Hs256`] set-up.
pub const SECRET: &str = "test-secret-that-is-long-enough-for-hs256!";
/// The API key of the default client, `keyclient`.
pub const API_KEY: &str = "fp_test_api_key";
/// The REST route of the compare call.
pub const COMPARE_PATH: &str = "/v2/face-recognition/compare-with-liveness";

/// Fails the test instead of hanging when a network await does not finish.
pub async fn within<T>(future: impl Future<Output = T>) -> T {
    tokio::time::timeout(WAIT, future)
        .await
        .expect("timed out waiting for the network")
}

/// Polls `condition` until it holds, failing the test after [`WAIT`].
pub async fn wait_until(what: &str, mut condition: impl FnMut() -> bool) {
    let started = tokio::time::Instant::now();
    while !condition() {
        assert!(started.elapsed() < WAIT, "timed out waiting until {what}");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

/// Locks a fake's shared state; a test that panicked while holding it still leaves it usable.
fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(PoisonError::into_inner)
}

// ---------------------------------------------------------------- fixtures

/// A photo from `tests/fixtures`.
pub fn fixture(name: &str) -> Vec<u8> {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../../tests/fixtures")
        .join(name);
    std::fs::read(&path).unwrap_or_else(|error| panic!("{}: {error}", path.display()))
}

/// The probe of [`compare_request`]: Obama's 2012 official portrait.
pub fn probe() -> Vec<u8> {
    fixture("obama_2012_official_portrait.jpg")
}

/// The gallery photo of [`compare_request`]: Obama in 2009, another photo of the same person.
pub fn gallery_image() -> Vec<u8> {
    fixture("obama_2009_congress.jpg")
}

/// A valid FAST compare of [`probe`] against [`gallery_image`] from an iOS client, without
/// thresholds.
pub fn compare_request() -> pb::CompareWithLivenessRequest {
    pb::CompareWithLivenessRequest {
        os: "IOS".into(),
        probe: probe().into(),
        gallery: vec![gallery_image().into()],
        search_mode: "FAST".into(),
        compare_min_score: None,
        liveness_min_score: None,
    }
}

/// The face every fake finds (fractional box, five landmarks: what the gateway passes on must
/// survive unchanged).
pub fn face() -> Face {
    Face {
        r#box: Some(BoundingBox {
            x: 120.5,
            y: 80.25,
            width: 210.0,
            height: 260.0,
        }),
        landmarks: (0..5)
            .map(|i| Point {
                x: 150.0 + 10.0 * i as f32,
                y: 170.5,
            })
            .collect(),
        detection_score: 0.97,
    }
}

// ---------------------------------------------------------------- fake matcher

/// What the fake matcher does with the next requests.
#[derive(Clone, Debug)]
pub enum MatcherScript {
    /// Every gallery item is a match: the first scores `score` (the best), later ones half of it.
    Answer {
        score: f64,
        similarity: f64,
        near_identical: bool,
    },
    /// Fails with this status.
    Fail(Status),
    /// Waits this long (a slow model), then answers [`MatcherScript::default`].
    Slow(Duration),
    /// Takes the request and never answers (work in flight when a replica dies or the caller
    /// goes); counted by [`FakeMatcher::held`].
    Hold,
}

impl MatcherScript {
    /// A match scoring `score`, with the default similarity.
    pub fn score(score: f64) -> Self {
        Self::Answer {
            score,
            similarity: 0.55,
            near_identical: false,
        }
    }
}

impl Default for MatcherScript {
    /// A match scoring 0.9 (similarity 0.55).
    fn default() -> Self {
        Self::score(0.9)
    }
}

/// A scripted matcher. Clones share the script, the counters and the last request.
#[derive(Clone, Default)]
pub struct FakeMatcher {
    script: Arc<Mutex<MatcherScript>>,
    calls: Arc<AtomicUsize>,
    held: Arc<AtomicUsize>,
    answered: Arc<AtomicUsize>,
    last: Arc<Mutex<Option<matcher_pb::CompareRequest>>>,
}

impl FakeMatcher {
    pub fn set(&self, script: MatcherScript) {
        *lock(&self.script) = script;
    }

    /// Requests received (answered, failed or held).
    pub fn calls(&self) -> usize {
        self.calls.load(Ordering::SeqCst)
    }

    /// Requests taken and never answered under [`MatcherScript::Hold`].
    pub fn held(&self) -> usize {
        self.held.load(Ordering::SeqCst)
    }

    /// Requests not held: answered or failed (counted as they are taken on).
    pub fn answered(&self) -> usize {
        self.answered.load(Ordering::SeqCst)
    }

    /// The counter behind [`Self::calls`], for a task that outlives a borrow of the fake.
    pub fn calls_counter(&self) -> Arc<AtomicUsize> {
        Arc::clone(&self.calls)
    }

    /// The counter behind [`Self::held`].
    pub fn held_counter(&self) -> Arc<AtomicUsize> {
        Arc::clone(&self.held)
    }

    /// The last request received.
    pub fn last_request(&self) -> Option<matcher_pb::CompareRequest> {
        lock(&self.last).clone()
    }

    /// The gRPC service, to serve with [`serve`] or next to other services.
    pub fn server(&self) -> MatcherServer<Self> {
        MatcherServer::new(self.clone())
    }
}

fn matcher_answer(
    gallery_len: usize,
    score: f64,
    similarity: f64,
    near_identical: bool,
) -> matcher_pb::CompareResponse {
    let gallery = (0..gallery_len)
        .map(|index| matcher_pb::GalleryItemResult {
            index: index as u32,
            outcome: Some(matcher_pb::gallery_item_result::Outcome::Match(
                matcher_pb::Match {
                    face: Some(face()),
                    similarity,
                    score: if index == 0 { score } else { score / 2.0 },
                    near_identical,
                },
            )),
        })
        .collect();
    matcher_pb::CompareResponse {
        probe_face: Some(face()),
        gallery,
        best_index: 0,
        best_score: score,
        calibration: "test".into(),
    }
}

#[tonic::async_trait]
impl Matcher for FakeMatcher {
    async fn compare(
        &self,
        request: Request<matcher_pb::CompareRequest>,
    ) -> Result<Response<matcher_pb::CompareResponse>, Status> {
        self.calls.fetch_add(1, Ordering::SeqCst);
        let request = request.into_inner();
        let gallery_len = request.gallery.len();
        *lock(&self.last) = Some(request);
        let script = lock(&self.script).clone();
        if !matches!(script, MatcherScript::Hold) {
            self.answered.fetch_add(1, Ordering::SeqCst);
        }
        let (score, similarity, near_identical) = match script {
            MatcherScript::Answer {
                score,
                similarity,
                near_identical,
            } => (score, similarity, near_identical),
            MatcherScript::Fail(status) => return Err(status),
            MatcherScript::Slow(delay) => {
                // The only sleep of the fakes: a slow model.
                tokio::time::sleep(delay).await;
                (0.9, 0.55, false)
            }
            MatcherScript::Hold => {
                self.held.fetch_add(1, Ordering::SeqCst);
                std::future::pending::<()>().await;
                unreachable!("a pending future never completes")
            }
        };
        Ok(Response::new(matcher_answer(
            gallery_len,
            score,
            similarity,
            near_identical,
        )))
    }
}

// ---------------------------------------------------------------- fake liveness

/// What the fake liveness service answers.
#[derive(Clone, Debug)]
pub enum LivenessScript {
    /// This liveness score, with print/screen attack evidence that sums to `1 - score`.
    Score(f64),
    /// A face issue (`FACE_TOO_SMALL` on `probe`) instead of a score.
    Issue,
    /// Waits this long, then fails INTERNAL (it only ever answers too late).
    Slow(Duration),
}

impl Default for LivenessScript {
    /// A live face scoring 0.97.
    fn default() -> Self {
        Self::Score(0.97)
    }
}

/// A scripted liveness service. Clones share the script, the counter and the last request.
#[derive(Clone, Default)]
pub struct FakeLiveness {
    script: Arc<Mutex<LivenessScript>>,
    calls: Arc<AtomicUsize>,
    last: Arc<Mutex<Option<liveness_pb::CheckRequest>>>,
}

impl FakeLiveness {
    pub fn set(&self, script: LivenessScript) {
        *lock(&self.script) = script;
    }

    pub fn calls(&self) -> usize {
        self.calls.load(Ordering::SeqCst)
    }

    pub fn last_request(&self) -> Option<liveness_pb::CheckRequest> {
        lock(&self.last).clone()
    }

    pub fn server(&self) -> LivenessServer<Self> {
        LivenessServer::new(self.clone())
    }
}

#[tonic::async_trait]
impl Liveness for FakeLiveness {
    async fn check(
        &self,
        request: Request<liveness_pb::CheckRequest>,
    ) -> Result<Response<liveness_pb::CheckResponse>, Status> {
        self.calls.fetch_add(1, Ordering::SeqCst);
        *lock(&self.last) = Some(request.into_inner());
        let script = lock(&self.script).clone();
        let outcome = match script {
            LivenessScript::Score(score) => {
                liveness_pb::check_response::Outcome::Score(liveness_pb::LivenessScore {
                    liveness_score: score,
                    attack: Some(liveness_pb::AttackEvidence {
                        print_probability: (1.0 - score) * 0.75,
                        screen_probability: (1.0 - score) * 0.25,
                    }),
                    models: Vec::new(),
                })
            }
            LivenessScript::Issue => liveness_pb::check_response::Outcome::Issue(FaceIssue {
                reason: FaceIssueReason::FaceTooSmall.into(),
                field: "probe".into(),
                detail: "face is 31 px wide, minimum is 48".into(),
            }),
            LivenessScript::Slow(delay) => {
                tokio::time::sleep(delay).await;
                return Err(Status::internal("too late"));
            }
        };
        Ok(Response::new(liveness_pb::CheckResponse {
            outcome: Some(outcome),
            face: Some(face()),
        }))
    }
}

// ---------------------------------------------------------------- serving the fakes

/// Serves one gRPC service on `127.0.0.1:0` for as long as the test's runtime runs; returns its
/// URL.
pub async fn serve<S>(service: S) -> String
where
    S: tower::Service<
            http::Request<tonic::body::Body>,
            Response = http::Response<tonic::body::Body>,
            Error = std::convert::Infallible,
        > + tonic::server::NamedService
        + Clone
        + Send
        + Sync
        + 'static,
    S::Future: Send + 'static,
{
    let listener = TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind 127.0.0.1:0");
    let address = listener.local_addr().expect("a bound listener's address");
    tokio::spawn(
        tonic::transport::Server::builder()
            .add_service(service)
            .serve_with_incoming(TcpListenerStream::new(listener)),
    );
    format!("http://{address}")
}

/// A fake matcher with grpc.health.v1, in its own runtime so that it can stop gracefully or die
/// abruptly (every task and socket at once, as a killed process or pod).
pub struct MatcherReplica {
    pub address: SocketAddr,
    pub matcher: FakeMatcher,
    health: HealthReporter,
    stop: Option<oneshot::Sender<()>>,
    stopped: Option<oneshot::Receiver<()>>,
    runtime: Option<tokio::runtime::Runtime>,
}

impl MatcherReplica {
    /// Starts on `address` (port 0 for any), reporting SERVING.
    pub async fn start(address: SocketAddr) -> Self {
        let listener = std::net::TcpListener::bind(address)
            .unwrap_or_else(|error| panic!("cannot bind {address}: {error}"));
        listener
            .set_nonblocking(true)
            .expect("a non-blocking listener");
        let address = listener.local_addr().expect("a bound listener's address");
        let matcher = FakeMatcher::default();
        let (health, health_service) = tonic_health::server::health_reporter();
        health
            .set_service_status(SERVICE_NAME, ServingStatus::Serving)
            .await;
        let (stop, stop_signal) = oneshot::channel::<()>();
        let (stopped_sender, stopped) = oneshot::channel();
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .enable_all()
            .build()
            .expect("a runtime for the replica");
        let service = matcher.server();
        runtime.spawn(async move {
            let listener = TcpListener::from_std(listener).expect("a tokio listener");
            let _ = tonic::transport::Server::builder()
                .add_service(health_service)
                .add_service(service)
                .serve_with_incoming_shutdown(TcpListenerStream::new(listener), async {
                    let _ = stop_signal.await;
                })
                .await;
            let _ = stopped_sender.send(());
        });
        Self {
            address,
            matcher,
            health,
            stop: Some(stop),
            stopped: Some(stopped),
            runtime: Some(runtime),
        }
    }

    /// Starts on a fresh port of 127.0.0.1.
    pub async fn start_anywhere() -> Self {
        Self::start(SocketAddr::from(([127, 0, 0, 1], 0))).await
    }

    /// What grpc.health.v1 reports for the matcher service.
    pub async fn set_serving(&self, serving: bool) {
        let status = if serving {
            ServingStatus::Serving
        } else {
            ServingStatus::NotServing
        };
        self.health.set_service_status(SERVICE_NAME, status).await;
    }

    /// Stops accepting and finishes what is in flight, without reporting NOT_SERVING first: the
    /// gateway learns it only from the connection (GOAWAY, then refused connections).
    pub async fn stop_gracefully(&mut self) {
        let _ = self.stop.take().expect("running").send(());
        within(self.stopped.take().expect("running"))
            .await
            .expect("the server task ended");
    }

    /// As a killed process: every task and socket of the replica goes at once.
    pub fn kill(&mut self) {
        if let Some(runtime) = self.runtime.take() {
            runtime.shutdown_background();
        }
    }
}

impl Drop for MatcherReplica {
    fn drop(&mut self) {
        self.kill();
    }
}

// ---------------------------------------------------------------- the gateway

/// How the gateway checks JWTs.
#[derive(Clone, Debug, Default)]
pub enum Jwt {
    /// No JWT set-up: API keys only.
    None,
    /// HS256 with [`SECRET`].
    #[default]
    Hs256,
    /// EdDSA pinned to this public key (PEM).
    EdDsa { public_pem: String },
}

/// What a test's gateway looks like. The default: fake matcher and liveness, HS256 JWTs with
/// [`SECRET`], one API key ([`API_KEY`], client `keyclient`), a rate limit (1000/s, burst
/// 1000) that no test meets by accident.
pub struct GatewaySetup {
    /// The matcher URL; `None`: a [`FakeMatcher`] served on 127.0.0.1:0.
    pub matcher_url: Option<String>,
    /// The liveness URL; `None`: a [`FakeLiveness`] served on 127.0.0.1:0.
    pub liveness_url: Option<String>,
    pub jwt: Jwt,
    /// `(client, key)` lines of the API-keys file.
    pub api_keys: Vec<(String, String)>,
    /// More gateway flags. A flag named here replaces the default with the same name (both
    /// `--flag value` and `--flag=value` work).
    pub args: Vec<String>,
    /// Resolves the backends' host names instead of DNS.
    pub resolver: Option<StaticResolver>,
}

impl Default for GatewaySetup {
    fn default() -> Self {
        Self {
            matcher_url: None,
            liveness_url: None,
            jwt: Jwt::Hs256,
            api_keys: vec![("keyclient".into(), API_KEY.into())],
            args: Vec::new(),
            resolver: None,
        }
    }
}

impl GatewaySetup {
    /// The default set-up with these extra flags.
    pub fn with_args<S: ToString>(args: &[S]) -> Self {
        Self {
            args: args.iter().map(ToString::to_string).collect(),
            ..Self::default()
        }
    }

    /// Starts the gateway (and the fakes it needs) in this runtime.
    pub async fn start(self) -> TestGateway {
        let matcher = FakeMatcher::default();
        let liveness = FakeLiveness::default();
        let matcher_url = match self.matcher_url {
            Some(url) => url,
            None => serve(matcher.server()).await,
        };
        let liveness_url = match self.liveness_url {
            Some(url) => url,
            None => serve(liveness.server()).await,
        };
        let dir = tempfile::tempdir().expect("a temporary directory");
        let path = |name: &str| dir.path().join(name).display().to_string();
        let write = |name: &str, contents: &[u8]| {
            std::fs::write(path(name), contents)
                .unwrap_or_else(|error| panic!("{}: {error}", path(name)));
        };
        let keys: String = self
            .api_keys
            .iter()
            .map(|(client, key)| format!("{client} {}\n", hash_api_key(key)))
            .collect();
        write("api-keys", keys.as_bytes());
        let signer = Signer::generate();
        write(
            "signing.pem",
            signer.to_pkcs8_pem().expect("a PEM key").as_bytes(),
        );
        let mut defaults = vec![
            format!("--matcher-url={matcher_url}"),
            format!("--liveness-url={liveness_url}"),
            format!("--api-keys-file={}", path("api-keys")),
            format!("--signing-key-file={}", path("signing.pem")),
            "--rate-limit-per-second=1000".to_owned(),
            "--rate-limit-burst=1000".to_owned(),
            format!("--data-dir={}", path("data")),
        ];
        match &self.jwt {
            Jwt::None => {}
            Jwt::Hs256 => {
                write("secret", format!("{SECRET}\n").as_bytes());
                defaults.extend([
                    "--jwt-algorithm=HS256".to_owned(),
                    format!("--jwt-secret-file={}", path("secret")),
                ]);
            }
            Jwt::EdDsa { public_pem } => {
                write("jwt.pub.pem", public_pem.as_bytes());
                defaults.extend([
                    "--jwt-algorithm=EdDSA".to_owned(),
                    format!("--jwt-public-key-file={}", path("jwt.pub.pem")),
                ]);
            }
        }
        let args = merge_flags(defaults, self.args);
        let config =
            GatewayCli::try_parse_from(std::iter::once("faceproof-gateway".to_owned()).chain(args))
                .unwrap_or_else(|error| panic!("the test's gateway flags: {error}"))
                .config;
        let grpc_listener = TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind 127.0.0.1:0");
        let http_listener = TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind 127.0.0.1:0");
        let metrics = Metrics::new();
        let application = match self.resolver {
            Some(resolver) => Application::build_with_resolver(
                config,
                grpc_listener,
                http_listener,
                metrics.clone(),
                Arc::new(resolver),
            ),
            None => Application::build_with_metrics(
                config,
                grpc_listener,
                http_listener,
                metrics.clone(),
            ),
        }
        .unwrap_or_else(|error| panic!("the gateway builds: {error}"));
        let (grpc_addr, http_addr) = (application.grpc_addr(), application.http_addr());
        tokio::spawn(application.run_until_stopped(std::future::pending()));
        TestGateway {
            grpc_url: format!("http://{grpc_addr}"),
            grpc_addr,
            http_addr,
            metrics,
            matcher,
            liveness,
            signer,
            _dir: dir,
        }
    }
}

/// The flag name of `--name=value` or `--name`.
fn flag_name(arg: &str) -> Option<&str> {
    arg.starts_with("--")
        .then(|| arg.split_once('=').map_or(arg, |(name, _)| name))
}

/// `defaults` (all `--name=value`) without those `extra` names again, then `extra`.
fn merge_flags(defaults: Vec<String>, extra: Vec<String>) -> Vec<String> {
    let overridden: Vec<&str> = extra.iter().filter_map(|arg| flag_name(arg)).collect();
    let kept: Vec<String> = defaults
        .into_iter()
        .filter(|arg| flag_name(arg).is_none_or(|name| !overridden.contains(&name)))
        .collect();
    kept.into_iter().chain(extra).collect()
}

/// A running gateway and its fake backends (those it started itself).
pub struct TestGateway {
    pub grpc_url: String,
    pub grpc_addr: SocketAddr,
    pub http_addr: SocketAddr,
    /// What the gateway records (its /metrics).
    pub metrics: Metrics,
    /// The fake matcher (idle when the set-up named another matcher URL).
    pub matcher: FakeMatcher,
    /// The fake liveness service (idle when the set-up named another liveness URL).
    pub liveness: FakeLiveness,
    /// The gateway's signing key.
    pub signer: Signer,
    _dir: tempfile::TempDir,
}

impl TestGateway {
    /// The default set-up: [`GatewaySetup::default`].
    pub async fn start() -> Self {
        GatewaySetup::default().start().await
    }

    /// A new gRPC connection to the gateway.
    pub async fn channel(&self) -> Channel {
        within(
            Channel::from_shared(self.grpc_url.clone())
                .expect("a valid URL")
                .connect(),
        )
        .await
        .expect("the gateway accepts a connection")
    }

    /// A client on a new connection.
    pub async fn client(&self) -> FaceVerificationClient<Channel> {
        FaceVerificationClient::new(self.channel().await)
    }

    /// One gRPC compare, sending `Bearer <credential>` when there is one.
    pub async fn compare_as(
        &self,
        credential: Option<&str>,
        request: pb::CompareWithLivenessRequest,
    ) -> Result<pb::CompareWithLivenessResponse, Status> {
        let mut request = Request::new(request);
        if let Some(credential) = credential {
            authorize(&mut request, credential);
        }
        within(self.client().await.compare_with_liveness(request))
            .await
            .map(Response::into_inner)
    }

    /// One gRPC compare as client `acme` with an HS256 token.
    pub async fn compare(
        &self,
        request: pb::CompareWithLivenessRequest,
    ) -> Result<pb::CompareWithLivenessResponse, Status> {
        self.compare_as(Some(&hs256_token("acme", 3600)), request)
            .await
    }

    /// The signing keys the gateway publishes over gRPC.
    pub async fn keys(&self) -> PublicKeySet {
        let keys = within(
            self.client()
                .await
                .get_signing_keys(pb::GetSigningKeysRequest {}),
        )
        .await
        .expect("the keys are public")
        .into_inner();
        PublicKeySet::from_proto(&keys).expect("a valid key set")
    }

    /// One REST call: `method path`, with `Bearer <credential>` when there is one and a JSON
    /// `body`.
    pub async fn http(
        &self,
        method: &str,
        path: &str,
        credential: Option<&str>,
        body: &[u8],
    ) -> HttpAnswer {
        http(self.http_addr, method, path, credential, body).await
    }
}

/// Adds `authorization: Bearer <credential>` to a gRPC request.
pub fn authorize<T>(request: &mut Request<T>, credential: &str) {
    request.metadata_mut().insert(
        "authorization",
        MetadataValue::try_from(format!("Bearer {credential}")).expect("an ASCII credential"),
    );
}

// ---------------------------------------------------------------- reflection

/// Lists the services of a gRPC reflection endpoint: `v1` and `v1alpha` are the same messages
/// in two packages.
macro_rules! list_services {
    ($version:ident, $channel:expr) => {{
        use reflection::server_reflection_request::MessageRequest;
        use reflection::server_reflection_response::MessageResponse;
        use tonic_reflection::pb::$version as reflection;
        let list = reflection::ServerReflectionRequest {
            host: String::new(),
            message_request: Some(MessageRequest::ListServices(String::new())),
        };
        let mut answers = within(
            reflection::server_reflection_client::ServerReflectionClient::new($channel)
                .server_reflection_info(tokio_stream::iter([list])),
        )
        .await
        .expect("reflection answers")
        .into_inner();
        let answer = within(answers.message())
            .await
            .expect("a reflection message")
            .expect("one answer");
        let Some(MessageResponse::ListServicesResponse(services)) = answer.message_response else {
            panic!("expected a service list, got {:?}", answer.message_response);
        };
        services
            .service
            .into_iter()
            .map(|service| service.name)
            .collect()
    }};
}

/// The services that gRPC reflection (`grpc.reflection.v1`) lists on `channel`.
pub async fn reflected_services(channel: Channel) -> Vec<String> {
    list_services!(v1, channel)
}

/// The services that the older `grpc.reflection.v1alpha` lists on `channel`.
pub async fn reflected_services_v1alpha(channel: Channel) -> Vec<String> {
    list_services!(v1alpha, channel)
}

// ---------------------------------------------------------------- tokens

#[derive(serde::Serialize)]
struct Claims<'a> {
    sub: &'a str,
    exp: i64,
}

/// An HS256 token for `sub` signed with [`SECRET`], expiring in `expires_in_s` seconds (negative:
/// already expired).
pub fn hs256_token(sub: &str, expires_in_s: i64) -> String {
    sign_token(
        jsonwebtoken::Algorithm::HS256,
        &jsonwebtoken::EncodingKey::from_secret(SECRET.as_bytes()),
        sub,
        expires_in_s,
    )
}

/// A token for `sub` with `algorithm` and `key`, expiring in `expires_in_s` seconds.
pub fn sign_token(
    algorithm: jsonwebtoken::Algorithm,
    key: &jsonwebtoken::EncodingKey,
    sub: &str,
    expires_in_s: i64,
) -> String {
    jsonwebtoken::encode(
        &jsonwebtoken::Header::new(algorithm),
        &Claims {
            sub,
            exp: chrono::Utc::now().timestamp() + expires_in_s,
        },
        key,
    )
    .expect("a token")
}

// ---------------------------------------------------------------- rich errors

/// The `ErrorInfo` reason of a status ("" without one).
pub fn reason(status: &Status) -> String {
    status
        .get_error_details()
        .error_info()
        .map(|info| info.reason.clone())
        .unwrap_or_default()
}

/// The `(field, reason)` of a status's `BadRequest` violations, in order.
pub fn violations(status: &Status) -> Vec<(String, String)> {
    status
        .get_error_details()
        .bad_request()
        .map(|bad| {
            bad.field_violations
                .iter()
                .map(|violation| (violation.field.clone(), violation.reason.clone()))
                .collect()
        })
        .unwrap_or_default()
}

/// The fields of a status's `BadRequest` violations, in order.
pub fn violation_fields(status: &Status) -> Vec<String> {
    violations(status)
        .into_iter()
        .map(|(field, _)| field)
        .collect()
}

/// The `RetryInfo` delay of a status.
pub fn retry_delay(status: &Status) -> Option<Duration> {
    status
        .get_error_details()
        .retry_info()
        .and_then(|info| info.retry_delay)
}

/// Whether `text` is a record time as the reference writes them: RFC 3339 in UTC with
/// milliseconds (`2026-01-02T03:04:05.678Z`).
pub fn is_rfc3339_millis_utc(text: &str) -> bool {
    text.len() == 24
        && text.ends_with('Z')
        && text.as_bytes()[10] == b'T'
        && text.as_bytes()[19] == b'.'
        && chrono::DateTime::parse_from_rfc3339(text).is_ok()
}

// ---------------------------------------------------------------- raw HTTP/1.1

/// An HTTP answer: status, headers (names lower-cased), the body as JSON (or as a JSON string
/// when it is not JSON) and as text.
#[derive(Debug)]
pub struct HttpAnswer {
    pub status: u16,
    pub headers: HashMap<String, String>,
    pub body: Value,
    pub text: String,
}

impl HttpAnswer {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).map(String::as_str)
    }

    /// The `(field, reason)` of each entry of the error envelope's `violations`.
    pub fn fields(&self) -> Vec<(String, String)> {
        self.body["violations"]
            .as_array()
            .map(|violations| {
                violations
                    .iter()
                    .map(|v| {
                        let text = |key: &str| v[key].as_str().unwrap_or_default().to_owned();
                        (text("field"), text("reason"))
                    })
                    .collect()
            })
            .unwrap_or_default()
    }
}

/// One HTTP/1.1 exchange over a raw socket (`Connection: close`): `head` is everything after
/// the request line (headers, CRLF-terminated); `body` is written concurrently with reading the
/// answer (the server may answer before reading it all).
pub async fn exchange(
    addr: SocketAddr,
    request_line: &str,
    head: &str,
    body: Vec<u8>,
) -> HttpAnswer {
    let stream = within(tokio::net::TcpStream::connect(addr))
        .await
        .expect("the gateway accepts a connection");
    let (mut reader, mut writer) = stream.into_split();
    let head =
        format!("{request_line} HTTP/1.1\r\nhost: {addr}\r\nconnection: close\r\n{head}\r\n");
    let writing = tokio::spawn(async move {
        let _ = writer.write_all(head.as_bytes()).await;
        let _ = writer.write_all(&body).await;
        writer
    });
    let mut raw = Vec::new();
    within(reader.read_to_end(&mut raw))
        .await
        .expect("an answer");
    writing.abort();
    let text = String::from_utf8_lossy(&raw).to_string();
    let (head, body) = text
        .split_once("\r\n\r\n")
        .unwrap_or_else(|| panic!("not an HTTP answer: {text:?}"));
    let mut lines = head.lines();
    let status_line = lines.next().unwrap_or_default();
    let status = status_line
        .split(' ')
        .nth(1)
        .and_then(|code| code.parse().ok())
        .unwrap_or_else(|| panic!("not an HTTP status line: {status_line:?}"));
    let headers = lines
        .filter_map(|line| line.split_once(':'))
        .map(|(name, value)| (name.trim().to_ascii_lowercase(), value.trim().to_owned()))
        .collect();
    HttpAnswer {
        status,
        headers,
        body: serde_json::from_str(body).unwrap_or(Value::String(body.to_owned())),
        text: body.to_owned(),
    }
}

/// `method path` with a JSON `body` (its length declared), and `Bearer <credential>` when
/// there is one.
pub async fn http(
    addr: SocketAddr,
    method: &str,
    path: &str,
    credential: Option<&str>,
    body: &[u8],
) -> HttpAnswer {
    let mut head = format!(
        "content-type: application/json\r\ncontent-length: {}\r\n",
        body.len()
    );
    if let Some(credential) = credential {
        head.push_str(&format!("authorization: Bearer {credential}\r\n"));
    }
    exchange(addr, &format!("{method} {path}"), &head, body.to_vec()).await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn extra_flags_replace_the_defaults_of_the_same_name() {
        let merged = merge_flags(
            vec![
                "--rate-limit-per-second=1000".into(),
                "--rate-limit-burst=1000".into(),
                "--data-dir=/x".into(),
            ],
            vec![
                "--rate-limit-per-second".into(),
                "0.01".into(),
                "--rate-limit-burst=1".into(),
            ],
        );
        assert_eq!(
            merged,
            [
                "--data-dir=/x",
                "--rate-limit-per-second",
                "0.01",
                "--rate-limit-burst=1"
            ]
        );
    }

    #[test]
    fn the_fake_matcher_ranks_the_first_item_best() {
        let answer = matcher_answer(3, 0.8, 0.5, false);
        assert_eq!(answer.best_score, 0.8);
        let scores: Vec<f64> = answer
            .gallery
            .iter()
            .map(|item| match &item.outcome {
                Some(matcher_pb::gallery_item_result::Outcome::Match(found)) => found.score,
                _ => panic!("a match"),
            })
            .collect();
        assert_eq!(scores, [0.8, 0.4, 0.4]);
    }
}
