//! The gateway balancing over several replicas of the matcher: in-process fake matchers on
//! loopback addresses that share one port (127.0.0.1, 127.0.0.2, ...: Linux routes all of
//! 127.0.0.0/8), found through a name the test's resolver answers, as a headless Service's name
//! would be in Kubernetes.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::future::Future;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::Duration;

use clap::Parser as _;
use faceproof_gateway::auth::hash_api_key;
use faceproof_gateway::balancer::StaticResolver;
use faceproof_gateway::{Application, GatewayCli};
use faceproof_proto::common::v1::{BoundingBox, Face};
use faceproof_proto::gateway::v1 as pb;
use faceproof_proto::gateway::v1::face_verification_client::FaceVerificationClient;
use faceproof_proto::liveness::v1 as liveness_pb;
use faceproof_proto::liveness::v1::liveness_server::{Liveness, LivenessServer};
use faceproof_proto::matcher::v1 as matcher_pb;
use faceproof_proto::matcher::v1::matcher_server::{Matcher, MatcherServer, SERVICE_NAME};
use faceproof_signing::Signer;
use faceproof_telemetry::Metrics;
use tokio::net::TcpListener;
use tokio::sync::oneshot;
use tokio_stream::wrappers::TcpListenerStream;
use tonic::metadata::MetadataValue;
use tonic::transport::Channel;
use tonic::{Request, Response, Status};
use tonic_health::ServingStatus;
use tonic_health::server::HealthReporter;

const WAIT: Duration = Duration::from_secs(15);
const API_KEY: &str = "fp_balancing_test_key";
/// The name the matcher replicas are found under.
const MATCHERS: &str = "matchers.test";

/// Fails the test instead of hanging when a network await does not finish.
async fn within<T>(future: impl Future<Output = T>) -> T {
    tokio::time::timeout(WAIT, future)
        .await
        .expect("timed out waiting for the network")
}

/// Polls `condition` until it holds, failing the test after [`WAIT`].
async fn wait_until(what: &str, mut condition: impl FnMut() -> bool) {
    let started = tokio::time::Instant::now();
    while !condition() {
        assert!(started.elapsed() < WAIT, "timed out waiting until {what}");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

fn loopback(last: u8) -> IpAddr {
    IpAddr::V4(Ipv4Addr::new(127, 0, 0, last))
}

fn face() -> Face {
    Face {
        r#box: Some(BoundingBox {
            x: 10.0,
            y: 10.0,
            width: 100.0,
            height: 120.0,
        }),
        landmarks: Vec::new(),
        detection_score: 0.99,
    }
}

// ---------------------------------------------------------------- fake matcher replicas

#[derive(Clone, Default)]
struct CountingMatcher {
    calls: Arc<AtomicUsize>,
    /// When set, requests are taken but never answered: a request in flight when the replica
    /// dies.
    hold: Arc<AtomicBool>,
    held: Arc<AtomicUsize>,
}

#[tonic::async_trait]
impl Matcher for CountingMatcher {
    async fn compare(
        &self,
        request: Request<matcher_pb::CompareRequest>,
    ) -> Result<Response<matcher_pb::CompareResponse>, Status> {
        if self.hold.load(Ordering::SeqCst) {
            self.held.fetch_add(1, Ordering::SeqCst);
            std::future::pending::<()>().await;
        }
        self.calls.fetch_add(1, Ordering::SeqCst);
        let gallery = (0..request.into_inner().gallery.len())
            .map(|index| matcher_pb::GalleryItemResult {
                index: index as u32,
                outcome: Some(matcher_pb::gallery_item_result::Outcome::Match(
                    matcher_pb::Match {
                        face: Some(face()),
                        similarity: 0.5,
                        score: 0.9,
                        near_identical: false,
                    },
                )),
            })
            .collect();
        Ok(Response::new(matcher_pb::CompareResponse {
            probe_face: Some(face()),
            gallery,
            best_index: 0,
            best_score: 0.9,
            calibration: "test".into(),
        }))
    }
}

/// One matcher replica with grpc.health.v1, in its own runtime so that it can also die
/// abruptly (every socket closed at once, as when a pod is killed).
struct MatcherReplica {
    address: SocketAddr,
    matcher: CountingMatcher,
    health: HealthReporter,
    stop: Option<oneshot::Sender<()>>,
    stopped: Option<oneshot::Receiver<()>>,
    runtime: Option<tokio::runtime::Runtime>,
}

impl MatcherReplica {
    async fn start(address: SocketAddr) -> Self {
        let listener = std::net::TcpListener::bind(address)
            .unwrap_or_else(|error| panic!("cannot bind {address}: {error}"));
        listener.set_nonblocking(true).unwrap();
        let address = listener.local_addr().unwrap();
        let matcher = CountingMatcher::default();
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
            .unwrap();
        let service = MatcherServer::new(matcher.clone());
        runtime.spawn(async move {
            let listener = TcpListener::from_std(listener).unwrap();
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

    fn calls(&self) -> usize {
        self.matcher.calls.load(Ordering::SeqCst)
    }

    async fn set_serving(&self, serving: bool) {
        let status = if serving {
            ServingStatus::Serving
        } else {
            ServingStatus::NotServing
        };
        self.health.set_service_status(SERVICE_NAME, status).await;
    }

    /// Stops accepting and finishes what is in flight, without reporting NOT_SERVING first: the
    /// gateway learns it only from the connection (GOAWAY, then refused connections).
    async fn stop_gracefully(&mut self) {
        let _ = self.stop.take().expect("running").send(());
        within(self.stopped.take().expect("running"))
            .await
            .expect("the server task ended");
    }

    /// As a killed pod: every task and socket of the replica goes at once.
    fn kill(&mut self) {
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

#[derive(Clone, Default)]
struct FakeLiveness {
    calls: Arc<AtomicUsize>,
}

#[tonic::async_trait]
impl Liveness for FakeLiveness {
    async fn check(
        &self,
        _request: Request<liveness_pb::CheckRequest>,
    ) -> Result<Response<liveness_pb::CheckResponse>, Status> {
        self.calls.fetch_add(1, Ordering::SeqCst);
        Ok(Response::new(liveness_pb::CheckResponse {
            outcome: Some(liveness_pb::check_response::Outcome::Score(
                liveness_pb::LivenessScore {
                    liveness_score: 0.97,
                    attack: None,
                    models: Vec::new(),
                },
            )),
            face: Some(face()),
        }))
    }
}

// ---------------------------------------------------------------- the gateway

struct TestGateway {
    client: FaceVerificationClient<Channel>,
    metrics: Metrics,
    resolver: StaticResolver,
    request: pb::CompareWithLivenessRequest,
    _dir: tempfile::TempDir,
}

fn fixture(name: &str) -> Vec<u8> {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../../tests/fixtures")
        .join(name);
    std::fs::read(&path).unwrap_or_else(|error| panic!("{}: {error}", path.display()))
}

/// A gateway whose matcher URL is `http://matchers.test:<port>`, resolved by `resolver` and
/// health checked every `refresh`; the liveness fake has no health service (it counts as healthy
/// once it answers), at its loopback address.
async fn spawn_gateway(resolver: StaticResolver, port: u16, refresh: Refresh) -> TestGateway {
    let liveness_listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let liveness_address = liveness_listener.local_addr().unwrap();
    tokio::spawn(
        tonic::transport::Server::builder()
            .add_service(LivenessServer::new(FakeLiveness::default()))
            .serve_with_incoming(TcpListenerStream::new(liveness_listener)),
    );
    let dir = tempfile::tempdir().unwrap();
    let path = |name: &str| dir.path().join(name).display().to_string();
    std::fs::write(
        path("api-keys"),
        format!("balancing {}\n", hash_api_key(API_KEY)),
    )
    .unwrap();
    std::fs::write(
        path("signing.pem"),
        Signer::generate().to_pkcs8_pem().unwrap(),
    )
    .unwrap();
    let args = [
        "faceproof-gateway".to_owned(),
        format!("--matcher-url=http://{MATCHERS}:{port}"),
        format!("--liveness-url=http://{liveness_address}"),
        format!("--api-keys-file={}", path("api-keys")),
        format!("--signing-key-file={}", path("signing.pem")),
        "--rate-limit-per-second=0".to_owned(),
        format!("--backend-refresh-ms={}", refresh as u64),
        format!("--data-dir={}", path("data")),
    ];
    let config = GatewayCli::try_parse_from(args).unwrap().config;
    let grpc_listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let http_listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let metrics = Metrics::new();
    let application = Application::build_with_resolver(
        config,
        grpc_listener,
        http_listener,
        metrics.clone(),
        Arc::new(resolver.clone()),
    )
    .unwrap();
    let grpc_url = format!("http://{}", application.grpc_addr());
    tokio::spawn(application.run_until_stopped(std::future::pending()));
    let client = within(FaceVerificationClient::connect(grpc_url))
        .await
        .unwrap();
    TestGateway {
        client,
        metrics,
        resolver,
        request: pb::CompareWithLivenessRequest {
            os: "IOS".into(),
            probe: fixture("obama_2012_official_portrait.jpg").into(),
            gallery: vec![fixture("obama_2009_congress.jpg").into()],
            search_mode: "FAST".into(),
            compare_min_score: None,
            liveness_min_score: None,
        },
        _dir: dir,
    }
}

impl TestGateway {
    async fn compare(&self) -> Result<(), Status> {
        let mut request = Request::new(self.request.clone());
        request.metadata_mut().insert(
            "authorization",
            MetadataValue::try_from(format!("Bearer {API_KEY}")).unwrap(),
        );
        within(self.client.clone().compare_with_liveness(request))
            .await
            .map(|_| ())
    }

    /// `count` requests, `concurrency` at a time; every one must succeed.
    async fn compare_many(self: &Arc<Self>, count: usize, concurrency: usize) {
        let mut tasks = tokio::task::JoinSet::new();
        for worker in 0..concurrency {
            let gateway = Arc::clone(self);
            let share = count / concurrency + usize::from(worker < count % concurrency);
            tasks.spawn(async move {
                for _ in 0..share {
                    gateway.compare().await?;
                }
                Ok::<(), Status>(())
            });
        }
        while let Some(done) = tasks.join_next().await {
            done.unwrap().expect("every request succeeds");
        }
    }

    /// The `faceproof_backend_replicas` gauge: (healthy, unhealthy) of a backend.
    fn replicas(&self, backend: &str) -> (i64, i64) {
        let text = self.metrics.encode().unwrap();
        let gauge = |health: &str| {
            let prefix =
                format!("faceproof_backend_replicas{{backend=\"{backend}\",health=\"{health}\"}} ");
            text.lines()
                .find_map(|line| line.strip_prefix(prefix.as_str()))
                .map_or(-1, |value| value.trim().parse().unwrap())
        };
        (gauge("healthy"), gauge("unhealthy"))
    }

    async fn wait_for_matchers(&self, healthy: i64, unhealthy: i64) {
        wait_until(
            &format!("{healthy} healthy and {unhealthy} unhealthy matcher replicas"),
            || self.replicas("matcher") == (healthy, unhealthy),
        )
        .await;
    }
}

/// How often the gateway re-resolves and probes.
#[derive(Clone, Copy)]
enum Refresh {
    Fast = 50,
    /// Only the first round, at start, within a test: whatever the gateway learns later comes
    /// from the calls themselves.
    Never = 600_000,
}

/// Replicas on 127.0.0.1, 127.0.0.2, ... sharing one port, and a gateway resolving
/// [`MATCHERS`] to all of them.
async fn replicas_behind_a_gateway(
    count: u8,
    refresh: Refresh,
) -> (Vec<MatcherReplica>, Arc<TestGateway>) {
    let first = MatcherReplica::start(SocketAddr::new(loopback(1), 0)).await;
    let port = first.address.port();
    let mut replicas = vec![first];
    for last in 2..=count {
        replicas.push(MatcherReplica::start(SocketAddr::new(loopback(last), port)).await);
    }
    let resolver = StaticResolver::new();
    resolver.set(
        MATCHERS,
        replicas
            .iter()
            .map(|replica| replica.address.ip())
            .collect(),
    );
    let gateway = Arc::new(spawn_gateway(resolver, port, refresh).await);
    gateway.wait_for_matchers(i64::from(count), 0).await;
    (replicas, gateway)
}

/// Requests sent by `workers` loops until told to stop; every one must succeed.
struct Traffic {
    stop: Arc<AtomicBool>,
    tasks: tokio::task::JoinSet<Result<usize, Status>>,
}

impl Traffic {
    fn start(gateway: &Arc<TestGateway>, workers: usize) -> Self {
        let stop = Arc::new(AtomicBool::new(false));
        let mut tasks = tokio::task::JoinSet::new();
        for _ in 0..workers {
            let gateway = Arc::clone(gateway);
            let stop = Arc::clone(&stop);
            tasks.spawn(async move {
                let mut sent = 0;
                while !stop.load(Ordering::SeqCst) {
                    gateway.compare().await?;
                    sent += 1;
                }
                Ok(sent)
            });
        }
        Self { stop, tasks }
    }

    /// Stops the loops; returns how many requests succeeded, failing on any error.
    async fn finish(mut self) -> usize {
        self.stop.store(true, Ordering::SeqCst);
        let mut total = 0;
        while let Some(done) = within(self.tasks.join_next()).await {
            total += done.unwrap().expect("no request is lost");
        }
        total
    }
}

// ---------------------------------------------------------------- tests

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn requests_spread_over_every_resolved_replica() {
    let (replicas, gateway) = replicas_behind_a_gateway(2, Refresh::Fast).await;
    gateway.compare_many(40, 4).await;
    let (first, second) = (replicas[0].calls(), replicas[1].calls());
    assert_eq!(first + second, 40);
    assert!(first >= 4 && second >= 4, "{first} / {second}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replica_stopping_gracefully_loses_no_request() {
    // No health checks after the start: the requests that meet the stopped replica (its
    // connection going away, then refused) are what takes it out of rotation, and they are
    // retried on the survivor.
    let (mut replicas, gateway) = replicas_behind_a_gateway(2, Refresh::Never).await;
    let traffic = Traffic::start(&gateway, 4);
    wait_until("both replicas answer", || {
        replicas[0].calls() >= 5 && replicas[1].calls() >= 5
    })
    .await;
    replicas[1].stop_gracefully().await;
    let survivor_before = replicas[0].calls();
    wait_until("the survivor answers more", || {
        replicas[0].calls() >= survivor_before + 20
    })
    .await;
    let sent = traffic.finish().await;
    assert_eq!(sent, replicas[0].calls() + replicas[1].calls());

    // A request met the stopped replica, took it out of rotation and was answered by the
    // survivor; everything now goes there.
    assert_eq!(gateway.replicas("matcher"), (1, 1));
    let (first, second) = (replicas[0].calls(), replicas[1].calls());
    gateway.compare_many(20, 4).await;
    assert_eq!(replicas[0].calls(), first + 20);
    assert_eq!(replicas[1].calls(), second);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replica_killed_with_requests_in_flight_loses_none() {
    let (mut replicas, gateway) = replicas_behind_a_gateway(2, Refresh::Never).await;
    let traffic = Traffic::start(&gateway, 4);
    wait_until("both replicas answer", || {
        replicas[0].calls() >= 5 && replicas[1].calls() >= 5
    })
    .await;
    // The second replica takes requests without answering, then dies with them.
    replicas[1].matcher.hold.store(true, Ordering::SeqCst);
    let held = Arc::clone(&replicas[1].matcher.held);
    wait_until("a request is in flight on the doomed replica", || {
        held.load(Ordering::SeqCst) >= 1
    })
    .await;
    replicas[1].kill();
    let survivor_before = replicas[0].calls();
    wait_until("the survivor answers more", || {
        replicas[0].calls() >= survivor_before + 20
    })
    .await;
    let sent = traffic.finish().await;
    // Every request was answered once, the held ones by the survivor after the retry.
    assert_eq!(sent, replicas[0].calls() + replicas[1].calls());

    assert_eq!(gateway.replicas("matcher"), (1, 1));
    let first = replicas[0].calls();
    gateway.compare_many(20, 4).await;
    assert_eq!(replicas[0].calls(), first + 20);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_not_serving_replica_gets_no_requests_until_it_serves_again() {
    let (replicas, gateway) = replicas_behind_a_gateway(2, Refresh::Fast).await;
    replicas[1].set_serving(false).await;
    gateway.wait_for_matchers(1, 1).await;
    let (first, second) = (replicas[0].calls(), replicas[1].calls());
    gateway.compare_many(20, 4).await;
    assert_eq!(replicas[0].calls(), first + 20);
    assert_eq!(replicas[1].calls(), second);

    replicas[1].set_serving(true).await;
    gateway.wait_for_matchers(2, 0).await;
    gateway.compare_many(40, 4).await;
    assert!(replicas[1].calls() > second, "{}", replicas[1].calls());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replicas_follow_the_resolved_addresses() {
    let (replicas, gateway) = replicas_behind_a_gateway(1, Refresh::Fast).await;
    let port = replicas[0].address.port();
    gateway.compare_many(5, 1).await;
    assert_eq!(replicas[0].calls(), 5);

    // A replica that appears in DNS starts taking requests after a refresh.
    let added = MatcherReplica::start(SocketAddr::new(loopback(3), port)).await;
    gateway
        .resolver
        .set(MATCHERS, vec![loopback(1), loopback(3)]);
    let started = tokio::time::Instant::now();
    while added.calls() == 0 {
        assert!(started.elapsed() < WAIT, "the added replica got no request");
        gateway.compare().await.unwrap();
    }

    // One that leaves DNS is dropped although it still answers.
    gateway.resolver.set(MATCHERS, vec![loopback(3)]);
    gateway.wait_for_matchers(1, 0).await;
    let (first, added_before) = (replicas[0].calls(), added.calls());
    gateway.compare_many(10, 2).await;
    assert_eq!(replicas[0].calls(), first);
    assert_eq!(added.calls(), added_before + 10);
}
