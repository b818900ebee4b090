//! Per-request balancing over every replica of a model service.
//!
//! gRPC keeps one long-lived HTTP/2 connection per channel, so a single channel to a Kubernetes
//! headless Service would pin all traffic to whichever pod it first connected to. Instead each
//! configured URL's host is resolved to every address, with one lazily connected channel per
//! address (a *replica*). A background task ([`ReplicaPool::spawn_refresher`]) re-resolves the
//! names and probes every replica with `grpc.health.v1` on a fixed cadence; a request goes to the
//! less loaded (fewest requests in flight) of two healthy replicas picked at random, and a call
//! that fails in the transport (the replica is gone, or died mid-call) is retried once on another
//! replica: the model services' calls are read-only, so sending one again is safe. A transport
//! failure that cannot be retried is UNAVAILABLE (`<service>_unavailable`), which clients retry.
//!
//! A pool is *ready* while at least one replica is healthy ([`ReplicaPool::is_ready`],
//! [`ReplicaPool::watch_ready`]): the gateway's grpc.health and `/readyz` follow it, and a request
//! while no replica is healthy fails at once with UNAVAILABLE instead of waiting out its
//! deadline. While a pool has no healthy replica its probes come every
//! [`UNREADY_PROBE_INTERVAL`] at most, so it is back within about that long after a replica is.

use std::collections::HashMap;
use std::collections::hash_map::RandomState;
use std::fmt;
use std::future::Future;
use std::hash::BuildHasher as _;
use std::io;
use std::net::{IpAddr, SocketAddr};
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use faceproof_telemetry::Metrics;
use tokio::sync::watch;
use tokio::task::{JoinHandle, JoinSet};
use tonic::transport::{Channel, Endpoint};
use tonic::{Code, Status};
use tonic_health::pb::HealthCheckRequest;
use tonic_health::pb::health_check_response::ServingStatus;
use tonic_health::pb::health_client::HealthClient;

use crate::config::{BackendHost, BackendUrl};
use crate::error::{Backend, GatewayError, ServiceError};

/// Calls per request at most: the first try and one retry on another replica.
const MAX_ATTEMPTS: usize = 2;

/// Time a DNS lookup gets before the refresh keeps the last known addresses.
const RESOLVE_TIMEOUT: Duration = Duration::from_secs(5);

/// Pause between refresh rounds while a pool has no healthy replica (none known yet, or all
/// down): requests fail fast meanwhile, so the pool looks again soon.
pub const UNREADY_PROBE_INTERVAL: Duration = Duration::from_millis(500);

/// Time a health check gets once connected (connecting has its own timeout).
const PROBE_ANSWER_TIMEOUT: Duration = Duration::from_millis(500);

/// HTTP/2 pings on every replica connection, idle or not: a connection to a node that vanished
/// without closing it (power loss, a partition) is closed within interval + timeout (15 s)
/// instead of TCP's many minutes, so later calls and probes dial afresh. Calls already on it
/// still end at their deadline; the health probes take such a replica out of rotation sooner.
/// tonic's servers accept pings at this rate.
const KEEPALIVE_INTERVAL: Duration = Duration::from_secs(10);
const KEEPALIVE_TIMEOUT: Duration = Duration::from_secs(5);

/// A boxed future, so [`Resolver`] stays object safe.
pub type ResolveFuture<'a> = Pin<Box<dyn Future<Output = io::Result<Vec<IpAddr>>> + Send + 'a>>;

/// Turns a host name into the addresses of every replica behind it.
pub trait Resolver: Send + Sync + fmt::Debug + 'static {
    /// Every address `host` has now.
    fn resolve<'a>(&'a self, host: &'a str) -> ResolveFuture<'a>;
}

/// The system resolver (`getaddrinfo`, via tokio): a headless Service's name gives every ready
/// pod's address.
#[derive(Debug, Default, Clone, Copy)]
pub struct DnsResolver;

impl Resolver for DnsResolver {
    fn resolve<'a>(&'a self, host: &'a str) -> ResolveFuture<'a> {
        Box::pin(async move {
            // The port is applied by the pool; lookup_host wants one.
            let addresses = tokio::net::lookup_host((host, 0)).await?;
            Ok(addresses.map(|address| address.ip()).collect())
        })
    }
}

/// A resolver answering from a table that can be changed while the gateway runs: for
/// environments without DNS for the model services, and for tests. A name missing from the
/// table fails to resolve.
#[derive(Debug, Default, Clone)]
pub struct StaticResolver {
    table: Arc<Mutex<HashMap<String, Vec<IpAddr>>>>,
}

impl StaticResolver {
    pub fn new() -> Self {
        Self::default()
    }

    /// Sets (replaces) the addresses `host` resolves to.
    pub fn set(&self, host: &str, addresses: Vec<IpAddr>) {
        self.table
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .insert(host.to_owned(), addresses);
    }

    /// Makes `host` fail to resolve.
    pub fn remove(&self, host: &str) {
        self.table
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .remove(host);
    }
}

impl Resolver for StaticResolver {
    fn resolve<'a>(&'a self, host: &'a str) -> ResolveFuture<'a> {
        let found = self
            .table
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .get(host)
            .cloned();
        Box::pin(async move {
            found.ok_or_else(|| {
                io::Error::new(
                    io::ErrorKind::NotFound,
                    format!("{host} is not in the table"),
                )
            })
        })
    }
}

/// One address of a model service, with its own connection.
#[derive(Debug)]
struct Replica {
    address: SocketAddr,
    channel: Channel,
    in_flight: AtomicUsize,
    healthy: AtomicBool,
}

impl Replica {
    /// Lazy: nothing is dialled until the first call, and a dead address fails within
    /// `connect_timeout`.
    fn new(address: SocketAddr, connect_timeout: Duration) -> Result<Self, GatewayError> {
        let channel = Endpoint::from_shared(format!("http://{address}"))
            .map_err(|error| GatewayError::Config(format!("bad address {address}: {error}")))?
            .connect_timeout(connect_timeout)
            .tcp_nodelay(true)
            .http2_keep_alive_interval(KEEPALIVE_INTERVAL)
            .keep_alive_timeout(KEEPALIVE_TIMEOUT)
            .keep_alive_while_idle(true)
            .connect_lazy();
        Ok(Self {
            address,
            channel,
            in_flight: AtomicUsize::new(0),
            healthy: AtomicBool::new(true),
        })
    }

    fn is_healthy(&self) -> bool {
        self.healthy.load(Ordering::Relaxed)
    }

    fn load(&self) -> usize {
        self.in_flight.load(Ordering::Relaxed)
    }

    /// Sets the health; true when it changed.
    fn set_healthy(&self, healthy: bool) -> bool {
        self.healthy.swap(healthy, Ordering::Relaxed) != healthy
    }
}

/// A replica chosen for one call; it counts as in flight until dropped.
#[derive(Debug)]
struct Lease {
    replica: Arc<Replica>,
}

impl Lease {
    fn new(replica: Arc<Replica>) -> Self {
        replica.in_flight.fetch_add(1, Ordering::Relaxed);
        Self { replica }
    }
}

impl Drop for Lease {
    fn drop(&mut self) {
        self.replica.in_flight.fetch_sub(1, Ordering::Relaxed);
    }
}

/// Power of two choices: two distinct candidates drawn with `random`, the one with fewer calls in
/// flight wins (the first drawn on a tie). Spreads load like least-loaded without every request
/// piling onto the same momentarily idle replica.
fn choose_less_loaded(candidates: &[Arc<Replica>], random: u64) -> Option<&Arc<Replica>> {
    let count = candidates.len();
    match count {
        0 => None,
        1 => candidates.first(),
        _ => {
            let count = count as u64;
            let first = (random % count) as usize;
            let offset = 1 + ((random >> 32) % (count - 1)) as usize;
            let second = (first + offset) % candidates.len();
            let (first, second) = (&candidates[first], &candidates[second]);
            Some(if second.load() < first.load() {
                second
            } else {
                first
            })
        }
    }
}

/// True for a failure raised by the client's own transport rather than answered by the model
/// service: connection refused or reset, a stream refused or cut by a server going away (HTTP/2
/// GOAWAY, which tonic reports as INTERNAL), a request hyper had queued on a connection that
/// closed (CANCELLED). tonic keeps the underlying error as the status' source, whereas a status
/// the server sent has none, so application errors (INVALID_ARGUMENT, RESOURCE_EXHAUSTED, ...)
/// never count. Such a call can go to another replica.
fn is_transport_failure(status: &Status) -> bool {
    let Some(source) = std::error::Error::source(status) else {
        return false;
    };
    match status.code() {
        Code::Unavailable | Code::Unknown | Code::Internal => true,
        // tonic's own grpc-timeout expiry is CANCELLED too, and that one is final.
        Code::Cancelled => !std::iter::successors(Some(source), |error| error.source())
            .any(|error| error.is::<tonic::TimeoutExpired>()),
        _ => false,
    }
}

/// Settings shared by every replica of a pool.
#[derive(Debug, Clone, Copy)]
pub struct PoolSettings {
    pub connect_timeout: Duration,
    /// Re-resolution and health check cadence.
    pub refresh_interval: Duration,
}

/// The replicas of one model service, refreshed in the background.
#[derive(Debug, Clone)]
pub struct ReplicaPool {
    inner: Arc<PoolInner>,
}

struct PoolInner {
    service: Backend,
    targets: Vec<BackendUrl>,
    settings: PoolSettings,
    resolver: Arc<dyn Resolver>,
    metrics: Metrics,
    /// The current replicas; replaced whole on refresh so a pick never waits on it.
    replicas: watch::Sender<Arc<Vec<Arc<Replica>>>>,
    /// Per target, the addresses of its last successful resolution.
    last_resolved: Mutex<Vec<Option<Vec<IpAddr>>>>,
    /// True while at least one replica is healthy.
    ready: watch::Sender<bool>,
    /// Wakes the refresher early: a call just found a replica unreachable.
    probe_soon: tokio::sync::Notify,
    random: AtomicU64,
}

/// The service, its URLs and how many replicas they resolve to now (not the replicas).
impl fmt::Debug for PoolInner {
    fn fmt(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
        let urls: Vec<&str> = self
            .targets
            .iter()
            .map(|target| target.url.as_str())
            .collect();
        let replicas = self.replicas.borrow().len();
        write!(
            formatter,
            "{} pool {urls:?}, {replicas} replicas",
            self.service
        )
    }
}

/// Stops the pool's background refresh when dropped.
#[derive(Debug)]
pub struct RefresherHandle(JoinHandle<()>);

impl Drop for RefresherHandle {
    fn drop(&mut self) {
        self.0.abort();
    }
}

impl ReplicaPool {
    /// A pool over the URLs parsed at start ([`crate::config::ValidConfig`]). Addresses given as
    /// IP literals are usable at once; names are resolved by the refresher, so a name DNS does not
    /// know yet does not stop the gateway from starting.
    pub fn new(
        service: Backend,
        urls: &[BackendUrl],
        settings: PoolSettings,
        resolver: Arc<dyn Resolver>,
        metrics: Metrics,
    ) -> Result<Self, GatewayError> {
        let targets = urls.to_vec();
        if targets.is_empty() {
            return Err(GatewayError::Config(format!("no {service} URL configured")));
        }
        let mut replicas: Vec<Arc<Replica>> = Vec::new();
        for target in &targets {
            if let BackendHost::Ip(ip) = target.host {
                let address = SocketAddr::new(ip, target.port);
                if !replicas.iter().any(|replica| replica.address == address) {
                    replicas.push(Arc::new(Replica::new(address, settings.connect_timeout)?));
                }
            }
        }
        let pool = Self {
            inner: Arc::new(PoolInner {
                service,
                last_resolved: Mutex::new(vec![None; targets.len()]),
                targets,
                settings,
                resolver,
                metrics,
                replicas: watch::Sender::new(Arc::new(replicas)),
                ready: watch::Sender::new(false),
                probe_soon: tokio::sync::Notify::new(),
                random: AtomicU64::new(RandomState::new().hash_one(service.name())),
            }),
        };
        pool.publish_health();
        Ok(pool)
    }

    /// Starts re-resolving and health checking every refresh interval, the first round at once;
    /// while no replica is healthy (DNS not ready at start, every replica down) rounds come every
    /// [`UNREADY_PROBE_INTERVAL`] at most, and a call that finds a replica unreachable starts one
    /// at once. Needs a tokio runtime; stops when the handle is dropped.
    pub fn spawn_refresher(&self) -> RefresherHandle {
        let pool = self.clone();
        RefresherHandle(tokio::spawn(async move {
            let interval = pool.inner.settings.refresh_interval;
            loop {
                pool.refresh().await;
                let pause = if pool.is_ready() {
                    interval
                } else {
                    interval.min(UNREADY_PROBE_INTERVAL)
                };
                tokio::select! {
                    () = tokio::time::sleep(pause) => {}
                    () = pool.inner.probe_soon.notified() => {}
                }
            }
        }))
    }

    /// True while at least one replica is healthy: requests can be served.
    pub fn is_ready(&self) -> bool {
        *self.inner.ready.borrow()
    }

    /// Follows [`Self::is_ready`] as it changes.
    pub fn watch_ready(&self) -> watch::Receiver<bool> {
        self.inner.ready.subscribe()
    }

    /// (healthy, known) replica counts, for `/readyz`.
    pub fn replica_counts(&self) -> (usize, usize) {
        let replicas = self.snapshot();
        let healthy = replicas
            .iter()
            .filter(|replica| replica.is_healthy())
            .count();
        (healthy, replicas.len())
    }

    pub fn service(&self) -> Backend {
        self.inner.service
    }

    /// One refresh round: resolves every name (a failure keeps the last known addresses), probes
    /// every replica, then publishes the new set. New replicas are probed before they get
    /// requests; a replica that vanished from DNS is dropped, its in-flight calls still finish.
    pub async fn refresh(&self) {
        let inner = &self.inner;
        let addresses = self.resolve_all().await;
        let current = self.snapshot();
        let mut next = Vec::with_capacity(addresses.len());
        for address in addresses {
            match current.iter().find(|replica| replica.address == address) {
                Some(replica) => next.push(Arc::clone(replica)),
                None => match Replica::new(address, inner.settings.connect_timeout) {
                    Ok(replica) => {
                        tracing::info!(service = %inner.service, %address, "replica added");
                        next.push(Arc::new(replica));
                    }
                    Err(error) => {
                        tracing::warn!(service = %inner.service, %error, "replica skipped")
                    }
                },
            }
        }
        for gone in current
            .iter()
            .filter(|replica| !next.iter().any(|kept| Arc::ptr_eq(kept, replica)))
        {
            tracing::info!(service = %inner.service, address = %gone.address, "replica removed");
        }
        self.probe_all(&next).await;
        inner.replicas.send_replace(Arc::new(next));
        self.publish_health();
    }

    /// Every address of every target, in configuration order, without duplicates.
    async fn resolve_all(&self) -> Vec<SocketAddr> {
        let inner = &self.inner;
        let mut addresses: Vec<SocketAddr> = Vec::new();
        for (position, target) in inner.targets.iter().enumerate() {
            let ips = match &target.host {
                BackendHost::Ip(ip) => vec![*ip],
                BackendHost::Name(name) => {
                    let resolved =
                        tokio::time::timeout(RESOLVE_TIMEOUT, inner.resolver.resolve(name)).await;
                    let mut last = inner
                        .last_resolved
                        .lock()
                        .unwrap_or_else(PoisonError::into_inner);
                    let known = last.get_mut(position);
                    match (resolved, known) {
                        (Ok(Ok(ips)), Some(known)) if !ips.is_empty() => {
                            *known = Some(ips.clone());
                            ips
                        }
                        (resolved, known) => {
                            let error = match resolved {
                                Ok(Ok(_)) => "no address".to_owned(),
                                Ok(Err(error)) => error.to_string(),
                                Err(_) => "timed out".to_owned(),
                            };
                            let kept = known.and_then(|known| known.clone()).unwrap_or_default();
                            tracing::warn!(
                                service = %inner.service,
                                url = %target.url,
                                %error,
                                kept_addresses = kept.len(),
                                "cannot resolve the model service, keeping the last known addresses"
                            );
                            kept
                        }
                    }
                }
            };
            for ip in ips {
                let address = SocketAddr::new(ip, target.port);
                if !addresses.contains(&address) {
                    addresses.push(address);
                }
            }
        }
        addresses
    }

    /// Checks every replica at once with grpc.health.v1 and records the answers.
    async fn probe_all(&self, replicas: &[Arc<Replica>]) {
        let service = self.inner.service;
        let timeout = self.inner.settings.connect_timeout + PROBE_ANSWER_TIMEOUT;
        let mut probes = JoinSet::new();
        for replica in replicas {
            let replica = Arc::clone(replica);
            probes.spawn(async move {
                let verdict = probe(&replica.channel, service, timeout).await;
                let healthy = verdict.is_ok();
                if replica.set_healthy(healthy) {
                    match verdict {
                        Ok(()) => tracing::info!(
                            %service, address = %replica.address, "replica healthy again"
                        ),
                        Err(why) => tracing::warn!(
                            %service, address = %replica.address, %why, "replica out of rotation"
                        ),
                    }
                }
            });
        }
        while probes.join_next().await.is_some() {}
    }

    /// Publishes the healthy and unhealthy replica counts and the readiness.
    fn publish_health(&self) {
        let (healthy, known) = self.replica_counts();
        self.inner.metrics.set_backend_replicas(
            self.inner.service.name(),
            healthy,
            known - healthy,
        );
        let ready = healthy > 0;
        let changed = self.inner.ready.send_if_modified(|current| {
            let changed = *current != ready;
            *current = ready;
            changed
        });
        if changed {
            if ready {
                tracing::info!(service = %self.inner.service, healthy, "model service ready");
            } else {
                tracing::warn!(
                    service = %self.inner.service,
                    known,
                    "no healthy replica of the model service: requests fail fast with UNAVAILABLE"
                );
            }
        }
    }

    fn snapshot(&self) -> Arc<Vec<Arc<Replica>>> {
        Arc::clone(&self.inner.replicas.borrow())
    }

    /// Addresses currently known, healthy or not.
    pub fn addresses(&self) -> Vec<SocketAddr> {
        self.snapshot()
            .iter()
            .map(|replica| replica.address)
            .collect()
    }

    /// Addresses currently in rotation.
    pub fn healthy_addresses(&self) -> Vec<SocketAddr> {
        self.snapshot()
            .iter()
            .filter(|replica| replica.is_healthy())
            .map(|replica| replica.address)
            .collect()
    }

    /// splitmix64 over a shared counter: cheap, lock-free, and good enough to pick replicas.
    fn next_random(&self) -> u64 {
        const GOLDEN: u64 = 0x9E37_79B9_7F4A_7C15;
        let mut z = self
            .inner
            .random
            .fetch_add(GOLDEN, Ordering::Relaxed)
            .wrapping_add(GOLDEN);
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// A healthy replica for one call, other than `excluded`; none when no such replica is
    /// healthy (the caller then fails fast: the refresher brings replicas back).
    fn pick(&self, excluded: Option<SocketAddr>) -> Option<Lease> {
        let healthy: Vec<Arc<Replica>> = self
            .snapshot()
            .iter()
            .filter(|replica| Some(replica.address) != excluded && replica.is_healthy())
            .cloned()
            .collect();
        choose_less_loaded(&healthy, self.next_random())
            .map(|replica| Lease::new(Arc::clone(replica)))
    }

    /// Takes `replica` out of rotation after a transport failure, until a probe succeeds, and
    /// asks the refresher to look again now.
    fn mark_unreachable(&self, replica: &Replica, status: &Status) {
        if replica.set_healthy(false) {
            tracing::warn!(
                service = %self.inner.service,
                address = %replica.address,
                error = %status.message(),
                "replica unreachable, out of rotation"
            );
            self.publish_health();
            self.inner.probe_soon.notify_one();
        }
    }

    /// Makes one call (`send` with a replica's channel and the request, carrying what is left of
    /// `deadline` as grpc-timeout, also enforced here so a replica that never answers cannot hold
    /// the request). A transport failure is retried once on another healthy replica while the
    /// deadline allows; any answer from a model service, error or not, is final. Without a
    /// healthy replica the call fails at once with UNAVAILABLE.
    pub async fn call<Message, Answer, Send, Sent>(
        &self,
        deadline: Instant,
        message: Message,
        send: Send,
    ) -> Result<Answer, ServiceError>
    where
        Message: Clone,
        Send: Fn(Channel, tonic::Request<Message>) -> Sent,
        Sent: Future<Output = Result<tonic::Response<Answer>, Status>>,
    {
        let service = self.inner.service;
        let mut message = Some(message);
        let mut excluded = None;
        let mut last_failure = None;
        for attempt in 1..=MAX_ATTEMPTS {
            let Some(lease) = self.pick(excluded) else {
                break;
            };
            let remaining = deadline.saturating_duration_since(Instant::now());
            if remaining.is_zero() {
                return Err(ServiceError::BackendDeadline { service });
            }
            // Requests carry images: copy one only when a retry could still need it.
            let may_retry = attempt < MAX_ATTEMPTS && self.inner.replicas.borrow().len() > 1;
            let body = if may_retry {
                message.clone()
            } else {
                message.take()
            };
            let Some(body) = body else { break };
            let mut request = tonic::Request::new(body);
            request.set_timeout(remaining);
            let sent = send(lease.replica.channel.clone(), request);
            match tokio::time::timeout(remaining, sent).await {
                Err(_) => return Err(ServiceError::BackendDeadline { service }),
                Ok(Ok(response)) => return Ok(response.into_inner()),
                Ok(Err(status)) if is_transport_failure(&status) => {
                    self.mark_unreachable(&lease.replica, &status);
                    excluded = Some(lease.replica.address);
                    last_failure = Some(status);
                    if !may_retry {
                        break;
                    }
                    tracing::info!(
                        %service,
                        failed = %lease.replica.address,
                        "retrying on another replica"
                    );
                }
                Ok(Err(status)) => return Err(backend_error(service, status)),
            }
        }
        // A replica that went away, mid-call or before it: UNAVAILABLE, which clients retry
        // (tonic reports a stream cut by a dying server as INTERNAL or UNKNOWN).
        Err(ServiceError::BackendUnavailable {
            service,
            detail: match last_failure {
                Some(status) => format!("the connection failed: {}", status.message()),
                None => format!("no ready {service} replica"),
            },
        })
    }
}

/// One grpc.health.v1 check of the model service's own name. A server without the health service
/// (UNIMPLEMENTED) counts as healthy once it answers, as in gRPC's client-side health checking.
async fn probe(channel: &Channel, service: Backend, timeout: Duration) -> Result<(), String> {
    let request = HealthCheckRequest {
        service: health_service_name(service).to_owned(),
    };
    let mut client = HealthClient::new(channel.clone());
    match tokio::time::timeout(timeout, client.check(request)).await {
        Err(_) => Err(format!(
            "no health answer within {} ms",
            timeout.as_millis()
        )),
        Ok(Ok(response)) => match response.into_inner().status() {
            ServingStatus::Serving => Ok(()),
            status => Err(format!("health status {}", status.as_str_name())),
        },
        Ok(Err(status)) if status.code() == Code::Unimplemented => Ok(()),
        Ok(Err(status)) => Err(format!(
            "health check failed: {:?}: {}",
            status.code(),
            status.message()
        )),
    }
}

/// The name the model services report their health under.
fn health_service_name(service: Backend) -> &'static str {
    match service {
        Backend::Matcher => faceproof_proto::matcher::v1::matcher_server::SERVICE_NAME,
        Backend::Liveness => faceproof_proto::liveness::v1::liveness_server::SERVICE_NAME,
    }
}

/// A model service's error status as the gateway reports it.
fn backend_error(service: Backend, status: Status) -> ServiceError {
    match status.code() {
        Code::InvalidArgument | Code::ResourceExhausted => {
            ServiceError::BackendRejected { service, status }
        }
        Code::Unavailable => ServiceError::BackendUnavailable {
            service,
            detail: status.message().to_owned(),
        },
        Code::DeadlineExceeded => ServiceError::BackendDeadline { service },
        // tonic's client reports its own grpc-timeout expiry as CANCELLED.
        Code::Cancelled if status.message().contains("Timeout expired") => {
            ServiceError::BackendDeadline { service }
        }
        _ => ServiceError::BackendFailed {
            service,
            detail: format!("{:?}: {}", status.code(), status.message()),
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const LOOPBACK: IpAddr = IpAddr::V4(std::net::Ipv4Addr::LOCALHOST);

    fn settings() -> PoolSettings {
        PoolSettings {
            connect_timeout: Duration::from_millis(200),
            refresh_interval: Duration::from_secs(60),
        }
    }

    /// Replicas on loopback ports nothing is expected to dial: the tests below never call them.
    fn replicas(loads: &[usize]) -> Vec<Arc<Replica>> {
        loads
            .iter()
            .enumerate()
            .map(|(position, load)| {
                let replica = Replica::new(
                    SocketAddr::new(LOOPBACK, 1 + position as u16),
                    settings().connect_timeout,
                )
                .unwrap();
                replica.in_flight.store(*load, Ordering::Relaxed);
                Arc::new(replica)
            })
            .collect()
    }

    fn pool(urls: &[&str], resolver: Arc<dyn Resolver>) -> ReplicaPool {
        let urls: Vec<BackendUrl> = urls
            .iter()
            .map(|url| BackendUrl::parse(Backend::Matcher, url).unwrap())
            .collect();
        ReplicaPool::new(
            Backend::Matcher,
            &urls,
            settings(),
            resolver,
            Metrics::new(),
        )
        .unwrap()
    }

    fn randoms() -> impl Iterator<Item = u64> {
        (0..2000u64).map(|i| i.wrapping_mul(0x9E37_79B9_7F4A_7C15) ^ (i << 40))
    }

    #[tokio::test]
    async fn two_choices_take_the_less_loaded() {
        let pair = replicas(&[3, 0]);
        for random in randoms() {
            let chosen = choose_less_loaded(&pair, random).unwrap();
            assert_eq!(chosen.address, pair[1].address);
        }
        // With more replicas the busiest is never chosen and the idle one wins most often.
        let four = replicas(&[0, 5, 5, 9]);
        let mut wins = [0usize; 4];
        for random in randoms() {
            let chosen = choose_less_loaded(&four, random).unwrap();
            let position = four.iter().position(|r| Arc::ptr_eq(r, chosen)).unwrap();
            wins[position] += 1;
        }
        assert_eq!(wins[3], 0, "{wins:?}");
        assert!(wins[0] > wins[1] && wins[0] > wins[2], "{wins:?}");
        assert!(wins[1] > 0 && wins[2] > 0, "{wins:?}");
        assert!(choose_less_loaded(&[], 7).is_none());
    }

    #[tokio::test]
    async fn picks_skip_unhealthy_replicas_and_find_none_when_none_is_healthy() {
        let pool = pool(
            &[
                "http://127.0.0.1:1",
                "http://127.0.0.1:2",
                "http://127.0.0.1:3",
            ],
            Arc::new(StaticResolver::new()),
        );
        let all = pool.snapshot();
        assert_eq!(all.len(), 3);
        all[1].set_healthy(false);
        let mut picked = Vec::new();
        for _ in 0..300 {
            let lease = pool.pick(None).unwrap();
            picked.push(lease.replica.address);
        }
        assert!(!picked.contains(&all[1].address));
        assert!(picked.contains(&all[0].address) && picked.contains(&all[2].address));
        assert_eq!(
            pool.healthy_addresses(),
            vec![all[0].address, all[2].address]
        );

        // Excluding the replica that just failed leaves the other healthy one.
        for _ in 0..50 {
            let lease = pool.pick(Some(all[0].address)).unwrap();
            assert_eq!(lease.replica.address, all[2].address);
        }

        assert!(pool.is_ready());
        for replica in all.iter() {
            replica.set_healthy(false);
        }
        pool.publish_health();
        assert!(pool.pick(None).is_none());
        assert!(!pool.is_ready());
        assert_eq!(pool.replica_counts(), (0, 3));
    }

    #[tokio::test]
    async fn a_lease_counts_as_in_flight_until_dropped() {
        let pool = pool(
            &["http://127.0.0.1:1", "http://127.0.0.1:2"],
            Arc::new(StaticResolver::new()),
        );
        let first = pool.pick(None).unwrap();
        assert_eq!(first.replica.load(), 1);
        // The other one is now less loaded, so two choices out of two always take it.
        let second = pool.pick(None).unwrap();
        assert_ne!(second.replica.address, first.replica.address);
        let replica = Arc::clone(&first.replica);
        drop(first);
        assert_eq!(replica.load(), 0);
    }

    #[tokio::test]
    async fn refresh_follows_dns_and_keeps_the_last_answer_when_it_fails() {
        let resolver = StaticResolver::new();
        let ip = |last: u8| IpAddr::V4(std::net::Ipv4Addr::new(127, 0, 0, last));
        let pool = pool(
            &["http://matcher.test:9", "http://127.0.0.1:9"],
            Arc::new(resolver.clone()),
        );
        // Only the IP literal is known before the first refresh; the name is not an error.
        assert_eq!(pool.addresses(), vec![SocketAddr::new(ip(1), 9)]);
        pool.refresh().await;
        assert_eq!(pool.addresses(), vec![SocketAddr::new(ip(1), 9)]);

        resolver.set("matcher.test", vec![ip(2), ip(3), ip(1)]);
        pool.refresh().await;
        let addresses = |lasts: &[u8]| -> Vec<SocketAddr> {
            lasts
                .iter()
                .map(|last| SocketAddr::new(ip(*last), 9))
                .collect()
        };
        assert_eq!(pool.addresses(), addresses(&[2, 3, 1]));

        // A failed lookup keeps the last answer.
        resolver.remove("matcher.test");
        pool.refresh().await;
        assert_eq!(pool.addresses(), addresses(&[2, 3, 1]));

        // A replica that stays keeps its channel and in-flight count; a vanished one is dropped
        // from the pool while a call still holding it finishes.
        let find = |last: u8| {
            pool.snapshot()
                .iter()
                .find(|replica| replica.address == SocketAddr::new(ip(last), 9))
                .cloned()
        };
        let staying = Lease::new(find(3).unwrap());
        let leaving = Lease::new(find(2).unwrap());
        resolver.set("matcher.test", vec![ip(3)]);
        pool.refresh().await;
        assert_eq!(pool.addresses(), addresses(&[3, 1]));
        assert!(Arc::ptr_eq(&find(3).unwrap(), &staying.replica));
        assert_eq!(find(3).unwrap().load(), 1);
        assert!(find(2).is_none());
        assert_eq!(leaving.replica.load(), 1);
    }

    #[tokio::test]
    async fn a_pool_without_ready_replicas_answers_unavailable_at_once() {
        let pool = pool(&["http://nowhere.test:9"], Arc::new(StaticResolver::new()));
        assert!(!pool.is_ready());
        let started = Instant::now();
        let deadline = started + Duration::from_secs(30);
        let call = pool.call(deadline, (), |_channel, _request| async {
            Ok(tonic::Response::new(()))
        });
        let result: Result<(), ServiceError> = tokio::time::timeout(Duration::from_secs(5), call)
            .await
            .expect("the call must give up at its deadline, not hang");
        assert!(
            matches!(result, Err(ServiceError::BackendUnavailable { .. })),
            "{result:?}"
        );
        let waited = started.elapsed();
        assert!(
            waited < Duration::from_secs(2),
            "waited {waited:?} instead of failing fast"
        );
    }

    /// Serves `router` on a loopback port; returns the channel to it.
    async fn serve(router: tonic::transport::server::Router) -> Channel {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let address = listener.local_addr().unwrap();
        tokio::spawn(router.serve_with_incoming(faceproof_runtime::accept_without_nagle(listener)));
        Replica::new(address, Duration::from_secs(5))
            .unwrap()
            .channel
    }

    #[tokio::test]
    async fn probes_read_the_model_service_health() {
        let timeout = Duration::from_secs(5);
        let (reporter, health) = tonic_health::server::health_reporter();
        let channel = serve(tonic::transport::Server::builder().add_service(health)).await;
        // The overall server status does not count: the model service's own name does.
        reporter
            .set_service_status("", tonic_health::ServingStatus::Serving)
            .await;
        assert!(probe(&channel, Backend::Matcher, timeout).await.is_err());
        let report_matcher =
            |status| reporter.set_service_status(health_service_name(Backend::Matcher), status);
        report_matcher(tonic_health::ServingStatus::Serving).await;
        assert_eq!(probe(&channel, Backend::Matcher, timeout).await, Ok(()));
        assert!(probe(&channel, Backend::Liveness, timeout).await.is_err());
        report_matcher(tonic_health::ServingStatus::NotServing).await;
        let why = probe(&channel, Backend::Matcher, timeout)
            .await
            .unwrap_err();
        assert!(why.contains("NOT_SERVING"), "{why}");

        // A server without the health service counts as healthy once it answers.
        let reflection = tonic_reflection::server::Builder::configure()
            .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
            .build_v1()
            .unwrap();
        let channel = serve(tonic::transport::Server::builder().add_service(reflection)).await;
        assert_eq!(probe(&channel, Backend::Liveness, timeout).await, Ok(()));

        // Nothing listening: out of rotation.
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let address = listener.local_addr().unwrap();
        drop(listener);
        let channel = Replica::new(address, timeout).unwrap().channel;
        assert!(probe(&channel, Backend::Liveness, timeout).await.is_err());
    }

    /// An error of the transport stack wrapping the status it maps to, as hyper's errors do.
    #[derive(Debug)]
    struct Wrapped(Status);

    impl fmt::Display for Wrapped {
        fn fmt(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
            write!(formatter, "transport error")
        }
    }

    impl std::error::Error for Wrapped {
        fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
            Some(&self.0)
        }
    }

    #[test]
    fn only_transport_failures_count_as_unreachable() {
        let refused = Status::from_error(Box::new(tonic::ConnectError(Box::new(io::Error::from(
            io::ErrorKind::ConnectionRefused,
        )))));
        assert_eq!(refused.code(), Code::Unavailable);
        assert!(is_transport_failure(&refused));
        let reset = Status::from_error(Box::new(io::Error::from(io::ErrorKind::ConnectionReset)));
        assert!(is_transport_failure(&reset));
        // Statuses a server sent carry no source: never retried.
        assert!(!is_transport_failure(&Status::unavailable("draining")));
        assert!(!is_transport_failure(&Status::invalid_argument("no face")));
        assert!(!is_transport_failure(&Status::resource_exhausted(
            "queue full"
        )));
        let expired = Status::from_error(Box::new(tonic::TimeoutExpired(())));
        assert_eq!(expired.code(), Code::Cancelled);
        assert!(!is_transport_failure(&expired));
        let unsent = Status::from_error(Box::new(Wrapped(Status::cancelled(
            "operation was canceled: connection closed",
        ))));
        assert_eq!(unsent.code(), Code::Cancelled);
        assert!(is_transport_failure(&unsent));
        assert!(!is_transport_failure(&Status::cancelled(
            "the caller gave up"
        )));
    }
}
