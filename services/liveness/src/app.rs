//! Assembling and running the liveness service: `Application::build` binds nothing itself (the caller
//! hands in a bound listener, so tests use 127.0.0.1:0), `run_until_stopped` warms the engine up,
//! reports SERVING and serves until the shutdown future resolves.

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use faceproof_proto::liveness::v1::liveness_server::{LivenessServer, SERVICE_NAME};
use faceproof_runtime::{
    Deadline, InferencePool, PoolStats, ServiceHealth, reflection_service, serve_until_shutdown,
};
use tokio::net::TcpListener;
use tonic::transport::Server;

use crate::LivenessError;
use crate::config::LivenessConfig;
use crate::engine::LivenessEngine;
use crate::service::{LivenessService, RequestLimits};

/// Warm-up runs whole model passes on a cold process; give it generous room.
const WARM_UP_BUDGET: Duration = Duration::from_secs(600);

/// A liveness service ready to serve on a bound listener.
pub struct Application {
    config: LivenessConfig,
    listener: TcpListener,
    local_addr: SocketAddr,
    engine: Arc<dyn LivenessEngine>,
    pool: Arc<InferencePool>,
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
        config: LivenessConfig,
        listener: TcpListener,
        engine: Arc<dyn LivenessEngine>,
    ) -> Result<Self, LivenessError> {
        config.validate()?;
        let local_addr = listener.local_addr().map_err(LivenessError::Listener)?;
        let pool = Arc::new(InferencePool::new(
            "liveness",
            config.serving.pool_config(),
        )?);
        Ok(Self {
            config,
            listener,
            local_addr,
            engine,
            pool,
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
    pub async fn run_until_stopped<F>(self, shutdown: F) -> Result<(), LivenessError>
    where
        F: Future<Output = ()> + Send,
    {
        let (health, health_server) = ServiceHealth::new(SERVICE_NAME).await;
        let reflection = reflection_service(&[faceproof_proto::FILE_DESCRIPTOR_SET])?;
        let service = LivenessService::new(
            Arc::clone(&self.engine),
            Arc::clone(&self.pool),
            RequestLimits {
                max_image_bytes: self.config.max_image_bytes,
            },
            self.config.serving.deadline_policy(),
        );
        let router = Server::builder()
            .add_service(health_server)
            .add_service(reflection)
            .add_service(
                LivenessServer::new(service)
                    .max_decoding_message_size(self.config.max_message_bytes()),
            );

        tracing::info!(addr = %self.local_addr, "liveness listening");
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
            result = &mut serve => return result.map_err(LivenessError::from),
            warmed = warm_up => match warmed {
                Ok(Ok(())) => health.set_serving().await,
                Ok(Err(error)) => return Err(LivenessError::WarmUp(error.to_string())),
                Err(error) => return Err(LivenessError::WarmUp(error.to_string())),
            },
        }
        serve.await.map_err(LivenessError::from)
    }
}
