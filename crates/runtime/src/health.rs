//! `grpc.health.v1` for a model service: NOT_SERVING until the engine has loaded and warmed up,
//! SERVING while it takes traffic, NOT_SERVING again as soon as shutdown starts so balancers
//! stop sending new requests.

use std::sync::Arc;

use tokio::sync::Mutex;
use tonic_health::ServingStatus;
use tonic_health::pb::health_server::{Health, HealthServer};
use tonic_health::server::HealthReporter;

/// Reports one named service and the overall server (`""`) together.
#[derive(Debug, Clone)]
pub struct ServiceHealth {
    reporter: HealthReporter,
    service_name: String,
    /// True once shutdown began: a late warm-up must not flip the status back to SERVING. The
    /// lock also orders the status changes themselves.
    shutting_down: Arc<Mutex<bool>>,
}

impl ServiceHealth {
    /// Creates the reporter and the health gRPC service, both statuses NOT_SERVING.
    pub async fn new(service_name: &str) -> (Self, HealthServer<impl Health>) {
        let (reporter, server) = tonic_health::server::health_reporter();
        let health = Self {
            reporter,
            service_name: service_name.to_owned(),
            shutting_down: Arc::new(Mutex::new(false)),
        };
        health.set(ServingStatus::NotServing).await;
        (health, server)
    }

    /// SERVING, unless shutdown has already begun.
    pub async fn set_serving(&self) {
        let shutting_down = self.shutting_down.lock().await;
        if *shutting_down {
            return;
        }
        tracing::info!(service = %self.service_name, "serving");
        self.set(ServingStatus::Serving).await;
    }

    /// NOT_SERVING until the next [`Self::set_serving`]: for a server that cannot serve for a
    /// while without shutting down (the gateway while no model service replica is healthy).
    pub async fn set_not_serving(&self) {
        let shutting_down = self.shutting_down.lock().await;
        // Once shutting down it is NOT_SERVING already, for good.
        if !*shutting_down {
            tracing::info!(service = %self.service_name, "not serving");
            self.set(ServingStatus::NotServing).await;
        }
    }

    /// NOT_SERVING for good: later [`Self::set_serving`] calls are ignored.
    pub async fn begin_shutdown(&self) {
        let mut shutting_down = self.shutting_down.lock().await;
        *shutting_down = true;
        tracing::info!(service = %self.service_name, "not serving: shutting down");
        self.set(ServingStatus::NotServing).await;
    }

    async fn set(&self, status: ServingStatus) {
        self.reporter.set_service_status("", status).await;
        self.reporter
            .set_service_status(&self.service_name, status)
            .await;
    }
}
