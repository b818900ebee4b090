//! Assembling and running the matcher: `Application::build` binds nothing itself (the caller
//! hands in a bound listener, so tests use 127.0.0.1:0), `run_until_stopped` warms the engine up,
//! reports SERVING and serves until the shutdown future resolves.

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use faceproof_proto::matcher::v1::matcher_server::{MatcherServer, SERVICE_NAME};
use faceproof_runtime::{
    Deadline, InferencePool, PoolStats, ServiceHealth, reflection_service, serve_until_shutdown,
};
use tokio::net::TcpListener;
use tonic::transport::Server;

use crate::MatcherError;
use crate::calibration::Calibration;
use crate::config::MatcherConfig;
use crate::engine::MatchEngine;
use crate::service::{MatcherService, RequestLimits};

/// Warm-up runs whole model passes on a cold process; give it generous room.
const WARM_UP_BUDGET: Duration = Duration::from_secs(600);

/// A matcher ready to serve on a bound listener.
pub struct Application {
    config: MatcherConfig,
    listener: TcpListener,
    local_addr: SocketAddr,
    engine: Arc<dyn MatchEngine>,
    pool: Arc<InferencePool>,
    calibration: Arc<Calibration>,
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
    /// [`Self::run_until_stopped`].
    pub fn build(
        config: MatcherConfig,
        listener: TcpListener,
        engine: Arc<dyn MatchEngine>,
    ) -> Result<Self, MatcherError> {
        config.validate()?;
        let local_addr = listener.local_addr().map_err(MatcherError::Listener)?;
        let calibration = Arc::new(Calibration::builtin()?);
        if calibration.is_provisional() {
            tracing::warn!(
                calibration = calibration.id(),
                "calibration table is provisional: scores do not map to measured false-accept rates"
            );
        }
        let pool = Arc::new(InferencePool::new("matcher", config.serving.pool_config())?);
        Ok(Self {
            config,
            listener,
            local_addr,
            engine,
            pool,
            calibration,
        })
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
    pub async fn run_until_stopped<F>(self, shutdown: F) -> Result<(), MatcherError>
    where
        F: Future<Output = ()> + Send,
    {
        let (health, health_server) = ServiceHealth::new(SERVICE_NAME).await;
        let reflection = reflection_service(&[faceproof_proto::FILE_DESCRIPTOR_SET])?;
        let service = MatcherService::new(
            Arc::clone(&self.engine),
            Arc::clone(&self.pool),
            Arc::clone(&self.calibration),
            RequestLimits {
                max_image_bytes: self.config.max_image_bytes,
                max_gallery_items: self.config.max_gallery_items,
            },
            self.config.serving.deadline_policy(),
        );
        let router = Server::builder()
            .add_service(health_server)
            .add_service(reflection)
            .add_service(
                MatcherServer::new(service)
                    .max_decoding_message_size(self.config.max_message_bytes()),
            );

        tracing::info!(addr = %self.local_addr, "matcher listening");
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
            result = &mut serve => return result.map_err(MatcherError::from),
            warmed = warm_up => match warmed {
                Ok(Ok(())) => health.set_serving().await,
                Ok(Err(error)) => return Err(MatcherError::WarmUp(error.to_string())),
                Err(error) => return Err(MatcherError::WarmUp(error.to_string())),
            },
        }
        serve.await.map_err(MatcherError::from)
    }
}
