//! Whether the gateway can serve requests: at least one healthy replica of the matcher and of the
//! liveness service, and not shutting down. It drives the gateway's grpc.health (the overall
//! `""` and `faceproof.gateway.v1.FaceVerification`) and the REST `GET /readyz`; `GET /healthz`
//! stays the process check (the gateway answers), for liveness probes, so a model service outage
//! takes gateways out of load balancing without restarting them.

use std::sync::Arc;

use axum::Router;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use faceproof_runtime::ServiceHealth;
use serde_json::json;
use tokio::sync::watch;
use tokio::task::JoinHandle;

use crate::balancer::ReplicaPool;
use crate::service::Gateway;

/// The REST readiness path.
pub const READYZ_PATH: &str = "/readyz";

/// Follows both pools' readiness into grpc.health (the shared [`ServiceHealth`], which also
/// reports the overall `""`) and a watch that `/readyz` reads.
#[derive(Debug)]
pub struct Readiness {
    ready: watch::Sender<bool>,
    follower: JoinHandle<()>,
}

impl Readiness {
    /// Publishes the current state at once, then every change, until [`Self::shut_down`].
    pub async fn follow(gateway: &Gateway, health: ServiceHealth) -> Self {
        let ready = watch::Sender::new(false);
        let mut matchers = gateway.matchers.watch_ready();
        let mut liveness = gateway.liveness.watch_ready();
        // Reading marks the value seen, so a change after the read always wakes the loop.
        let both = |matchers: &mut watch::Receiver<bool>, liveness: &mut watch::Receiver<bool>| {
            *matchers.borrow_and_update() && *liveness.borrow_and_update()
        };
        publish(&ready, &health, both(&mut matchers, &mut liveness)).await;
        let follower = {
            let ready = ready.clone();
            tokio::spawn(async move {
                loop {
                    let changed = tokio::select! {
                        changed = matchers.changed() => changed,
                        changed = liveness.changed() => changed,
                    };
                    if changed.is_err() {
                        return;
                    }
                    publish(&ready, &health, both(&mut matchers, &mut liveness)).await;
                }
            })
        };
        Self { ready, follower }
    }

    /// What `/readyz` reads.
    pub fn subscribe(&self) -> watch::Receiver<bool> {
        self.ready.subscribe()
    }

    /// Not ready from now on, whatever the model services say: the gateway is draining.
    /// grpc.health turns NOT_SERVING for good in the shared drain (`serve_until_shutdown`),
    /// before the gRPC server stops accepting.
    pub fn shut_down(self) {
        self.follower.abort();
        self.ready.send_replace(false);
    }
}

async fn publish(ready: &watch::Sender<bool>, health: &ServiceHealth, now: bool) {
    // grpc.health starts NOT_SERVING, as `ready` starts false: only a change is published.
    let was = ready.send_replace(now);
    if was == now {
        return;
    }
    tracing::info!(ready = now, "gateway readiness changed");
    if now {
        health.set_serving().await;
    } else {
        health.set_not_serving().await;
    }
}

/// `GET /readyz`: 200 `{"status":"ready",...}` or 503 `{"status":"not_ready",...}` with each
/// model service's healthy and known replica counts (counts only: no addresses).
pub fn router(gateway: Arc<Gateway>, ready: watch::Receiver<bool>) -> Router {
    Router::new().route(
        READYZ_PATH,
        get(move || {
            let gateway = Arc::clone(&gateway);
            let ready = *ready.borrow();
            async move { readyz(&gateway, ready) }
        }),
    )
}

fn readyz(gateway: &Gateway, ready: bool) -> Response {
    let pool = |pool: &ReplicaPool| {
        let (healthy, known) = pool.replica_counts();
        json!({"healthy_replicas": healthy, "known_replicas": known})
    };
    let (status, word) = if ready {
        (StatusCode::OK, "ready")
    } else {
        (StatusCode::SERVICE_UNAVAILABLE, "not_ready")
    };
    let body = json!({
        "status": word,
        "matcher": pool(&gateway.matchers),
        "liveness": pool(&gateway.liveness),
    });
    (status, axum::Json(body)).into_response()
}
