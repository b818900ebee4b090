//! The liveness service as a model service of the runtime host ([`faceproof_runtime::host`]):
//! its addresses, models, engine, warm-up and gRPC handler. Loading, warm-up, health, serving,
//! draining and telemetry are the host's; [`Application`], [`run`] and [`serve`] are the host's
//! for the liveness service.

use std::future::Future;
use std::sync::Arc;

use faceproof_models::ModelName;
use faceproof_proto::liveness::v1::liveness_server::{LivenessServer, SERVICE_NAME};
use faceproof_runtime::host::{self, ModelService, ModelServiceArgs};
use faceproof_runtime::{HostError, Inference, ObservedRouter};
use faceproof_telemetry::Metrics;

use crate::config::{DEFAULT_LISTEN, DEFAULT_METRICS_ADDR, LivenessConfig};
use crate::engine::LivenessEngine;
use crate::service::{LivenessService, RequestLimits};

/// OpenTelemetry `service.name` of the liveness service.
pub const TELEMETRY_SERVICE_NAME: &str = "faceproof-liveness";

/// The liveness service, as the host runs it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Liveness;

/// A liveness service ready to serve on a bound listener (tests hand in `127.0.0.1:0`).
pub type Application = host::Application<Liveness>;

/// The liveness process: telemetry, [`serve`] until SIGTERM or ctrl-c, the last spans flushed.
pub async fn run(config: LivenessConfig) -> anyhow::Result<()> {
    host::run::<Liveness>(config).await
}

/// Validates, loads the models, binds the gRPC and metrics listeners and serves until
/// `shutdown` resolves. Installs no subscriber: the host process owns telemetry.
pub async fn serve(
    config: LivenessConfig,
    shutdown: impl Future<Output = ()> + Send,
) -> anyhow::Result<()> {
    host::serve::<Liveness>(config, shutdown).await
}

impl ModelService for Liveness {
    const NAME: &'static str = "liveness";
    const TELEMETRY_SERVICE_NAME: &'static str = TELEMETRY_SERVICE_NAME;
    const GRPC_SERVICE_NAME: &'static str = SERVICE_NAME;
    const FILE_DESCRIPTOR_SET: &'static [u8] = faceproof_proto::FILE_DESCRIPTOR_SET;
    const LISTEN_ENV: &'static str = "FACEPROOF_LIVENESS_LISTEN";
    const DEFAULT_LISTEN: &'static str = DEFAULT_LISTEN;
    const DEFAULT_METRICS_ADDR: &'static str = DEFAULT_METRICS_ADDR;
    const MODELS: &'static [ModelName] = &[
        ModelName::YuNet,
        ModelName::MiniFasNetV2,
        ModelName::MiniFasNetV1Se,
    ];

    type Config = LivenessConfig;
    type Engine = dyn LivenessEngine;
    type Handler = LivenessServer<LivenessService>;

    fn host_args(config: &LivenessConfig) -> &ModelServiceArgs<Self> {
        &config.host
    }

    fn validate(config: &LivenessConfig) -> Result<(), HostError> {
        config.validate()
    }

    fn load_engine(
        config: &LivenessConfig,
        metrics: Metrics,
    ) -> Result<Arc<dyn LivenessEngine>, HostError> {
        Ok(Arc::new(
            crate::vision::load_engine(config)?.with_metrics(metrics),
        ))
    }

    fn warm_up(engine: &dyn LivenessEngine) -> Result<(), HostError> {
        engine
            .warm_up()
            .map_err(|error| HostError::WarmUp(error.to_string()))
    }

    fn handler(
        config: &LivenessConfig,
        inference: Inference<dyn LivenessEngine>,
    ) -> Result<Self::Handler, HostError> {
        let limits = RequestLimits {
            max_image_bytes: config.host.max_image_bytes,
        };
        Ok(LivenessServer::new(LivenessService::new(inference, limits))
            .max_decoding_message_size(config.max_message_bytes()))
    }

    fn route(router: ObservedRouter, handler: Self::Handler) -> ObservedRouter {
        router.add_service(handler)
    }
}
