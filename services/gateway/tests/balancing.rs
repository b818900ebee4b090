//! The gateway balancing over several replicas of the matcher: in-process fake matchers on
//! loopback addresses that share one port (127.0.0.1, 127.0.0.2, ...: Linux routes all of
//! 127.0.0.0/8), found through a name the test's resolver answers, as a headless Service's name
//! would be in Kubernetes.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use faceproof_gateway::balancer::StaticResolver;
use faceproof_proto::gateway::v1::face_verification_client::FaceVerificationClient;
use faceproof_telemetry::Metrics;
use faceproof_testkit::fake_backend::{
    GatewaySetup, Jwt, MatcherReplica, MatcherScript, WAIT, authorize, compare_request, wait_until,
    within,
};
use tonic::transport::Channel;
use tonic::{Request, Status};

const API_KEY: &str = "fp_balancing_test_key";
/// The name the matcher replicas are found under.
const MATCHERS: &str = "matchers.test";

fn loopback(last: u8) -> IpAddr {
    IpAddr::V4(Ipv4Addr::new(127, 0, 0, last))
}

// ---------------------------------------------------------------- the gateway

struct TestGateway {
    client: FaceVerificationClient<Channel>,
    metrics: Metrics,
    resolver: StaticResolver,
    _gateway: faceproof_testkit::fake_backend::TestGateway,
}

/// A gateway whose matcher URL is `http://matchers.test:<port>`, resolved by `resolver` and
/// health checked every `refresh`; the liveness fake has no health service (it counts as healthy
/// once it answers), at its loopback address.
async fn spawn_gateway(resolver: StaticResolver, port: u16, refresh: Refresh) -> TestGateway {
    let gateway = GatewaySetup {
        matcher_url: Some(format!("http://{MATCHERS}:{port}")),
        jwt: Jwt::None,
        api_keys: vec![("balancing".into(), API_KEY.into())],
        args: vec![
            "--rate-limit-per-second=0".to_owned(),
            format!("--backend-refresh-ms={}", refresh as u64),
        ],
        resolver: Some(resolver.clone()),
        ..GatewaySetup::default()
    }
    .start()
    .await;
    TestGateway {
        client: gateway.client().await,
        metrics: gateway.metrics.clone(),
        resolver,
        _gateway: gateway,
    }
}

impl TestGateway {
    async fn compare(&self) -> Result<(), Status> {
        let mut request = Request::new(compare_request());
        authorize(&mut request, API_KEY);
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

/// Waits until both replicas have answered a few requests.
async fn wait_for_both(replicas: &[MatcherReplica]) {
    wait_until("both replicas answer", || {
        replicas[0].matcher.answered() >= 5 && replicas[1].matcher.answered() >= 5
    })
    .await;
}

/// Once the second replica is gone: the survivor answers 20 more requests, then `traffic`
/// stops, and every request it sent was answered exactly once.
async fn survivor_takes_over(replicas: &[MatcherReplica], traffic: Traffic) {
    let survivor_before = replicas[0].matcher.answered();
    wait_until("the survivor answers more", || {
        replicas[0].matcher.answered() >= survivor_before + 20
    })
    .await;
    let sent = traffic.finish().await;
    assert_eq!(
        sent,
        replicas[0].matcher.answered() + replicas[1].matcher.answered()
    );
}

/// Sends 20 requests and checks that the first replica answered them all and the second none;
/// returns how many the second had answered.
async fn only_the_first_answers(gateway: &Arc<TestGateway>, replicas: &[MatcherReplica]) -> usize {
    let (first, second) = (
        replicas[0].matcher.answered(),
        replicas[1].matcher.answered(),
    );
    gateway.compare_many(20, 4).await;
    assert_eq!(replicas[0].matcher.answered(), first + 20);
    assert_eq!(replicas[1].matcher.answered(), second);
    second
}

// ---------------------------------------------------------------- tests

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn requests_spread_over_every_resolved_replica() {
    let (replicas, gateway) = replicas_behind_a_gateway(2, Refresh::Fast).await;
    gateway.compare_many(40, 4).await;
    let (first, second) = (
        replicas[0].matcher.answered(),
        replicas[1].matcher.answered(),
    );
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
    wait_for_both(&replicas).await;
    replicas[1].stop_gracefully().await;
    survivor_takes_over(&replicas, traffic).await;

    // A request met the stopped replica, took it out of rotation and was answered by the
    // survivor; everything now goes there.
    assert_eq!(gateway.replicas("matcher"), (1, 1));
    only_the_first_answers(&gateway, &replicas).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replica_killed_with_requests_in_flight_loses_none() {
    let (mut replicas, gateway) = replicas_behind_a_gateway(2, Refresh::Never).await;
    let traffic = Traffic::start(&gateway, 4);
    wait_for_both(&replicas).await;
    // The second replica takes requests without answering, then dies with them.
    replicas[1].matcher.set(MatcherScript::Hold);
    let held = replicas[1].matcher.held_counter();
    wait_until("a request is in flight on the doomed replica", || {
        held.load(Ordering::SeqCst) >= 1
    })
    .await;
    replicas[1].kill();
    // Every request was answered once, the held ones by the survivor after the retry.
    survivor_takes_over(&replicas, traffic).await;

    assert_eq!(gateway.replicas("matcher"), (1, 1));
    only_the_first_answers(&gateway, &replicas).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_not_serving_replica_gets_no_requests_until_it_serves_again() {
    let (replicas, gateway) = replicas_behind_a_gateway(2, Refresh::Fast).await;
    replicas[1].set_serving(false).await;
    gateway.wait_for_matchers(1, 1).await;
    let second = only_the_first_answers(&gateway, &replicas).await;

    replicas[1].set_serving(true).await;
    gateway.wait_for_matchers(2, 0).await;
    gateway.compare_many(40, 4).await;
    assert!(
        replicas[1].matcher.answered() > second,
        "{}",
        replicas[1].matcher.answered()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replicas_follow_the_resolved_addresses() {
    let (replicas, gateway) = replicas_behind_a_gateway(1, Refresh::Fast).await;
    let port = replicas[0].address.port();
    gateway.compare_many(5, 1).await;
    assert_eq!(replicas[0].matcher.answered(), 5);

    // A replica that appears in DNS starts taking requests after a refresh.
    let added = MatcherReplica::start(SocketAddr::new(loopback(3), port)).await;
    gateway
        .resolver
        .set(MATCHERS, vec![loopback(1), loopback(3)]);
    let started = tokio::time::Instant::now();
    while added.matcher.answered() == 0 {
        assert!(started.elapsed() < WAIT, "the added replica got no request");
        gateway.compare().await.unwrap();
    }

    // One that leaves DNS is dropped although it still answers.
    gateway.resolver.set(MATCHERS, vec![loopback(3)]);
    gateway.wait_for_matchers(1, 0).await;
    let (first, added_before) = (replicas[0].matcher.answered(), added.matcher.answered());
    gateway.compare_many(10, 2).await;
    assert_eq!(replicas[0].matcher.answered(), first);
    assert_eq!(added.matcher.answered(), added_before + 10);
}
