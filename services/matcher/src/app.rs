//! The matcher as a model service of the runtime host ([`faceproof_runtime::host`]): its
//! addresses, models, engine, warm-up and gRPC handler. Loading, warm-up, health, serving,
//! draining and telemetry are the host's; [`Application`], [`run`] and [`serve`] are the host's
//! for the matcher.

use std::future::Future;
use std::sync::Arc;

use faceproof_models::ModelName;
use faceproof_proto::matcher::v1::matcher_server::{MatcherServer, SERVICE_NAME};
use faceproof_runtime::host::{self, ModelService, ModelServiceArgs};
use faceproof_runtime::{HostError, Inference, ObservedRouter};
use faceproof_telemetry::Metrics;

use crate::calibration::Calibration;
use crate::config::{DEFAULT_LISTEN, DEFAULT_METRICS_ADDR, MatcherConfig};
use crate::engine::MatchEngine;
use crate::service::{MatcherService, RequestLimits};

/// OpenTelemetry `service.name` of the matcher.
pub const TELEMETRY_SERVICE_NAME: &str = "faceproof-matcher";

/// The matcher, as the host runs it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Matcher;

/// A matcher ready to serve on a bound listener (tests hand in `127.0.0.1:0`).
pub type Application = host::Application<Matcher>;

/// The matcher process: telemetry, [`serve`] until SIGTERM or ctrl-c, the last spans flushed.
pub async fn run(config: MatcherConfig) -> anyhow::Result<()> {
    host::run::<Matcher>(config).await
}

/// Validates, loads the models, binds the gRPC and metrics listeners and serves until
/// `shutdown` resolves. Installs no subscriber: the host process owns telemetry.
pub async fn serve(
    config: MatcherConfig,
    shutdown: impl Future<Output = ()> + Send,
) -> anyhow::Result<()> {
    host::serve::<Matcher>(config, shutdown).await
}

impl ModelService for Matcher {
    const NAME: &'static str = "matcher";
    const TELEMETRY_SERVICE_NAME: &'static str = TELEMETRY_SERVICE_NAME;
    const GRPC_SERVICE_NAME: &'static str = SERVICE_NAME;
    const FILE_DESCRIPTOR_SET: &'static [u8] = faceproof_proto::FILE_DESCRIPTOR_SET;
    const LISTEN_ENV: &'static str = "FACEPROOF_MATCHER_LISTEN";
    const DEFAULT_LISTEN: &'static str = DEFAULT_LISTEN;
    const DEFAULT_METRICS_ADDR: &'static str = DEFAULT_METRICS_ADDR;
    const MODELS: &'static [ModelName] = &[ModelName::YuNet, ModelName::SFace];

    type Config = MatcherConfig;
    type Engine = dyn MatchEngine;
    type Handler = MatcherServer<MatcherService>;

    fn host_args(config: &MatcherConfig) -> &ModelServiceArgs<Self> {
        &config.host
    }

    fn validate(config: &MatcherConfig) -> Result<(), HostError> {
        config.validate()
    }

    fn load_engine(
        config: &MatcherConfig,
        metrics: Metrics,
    ) -> Result<Arc<dyn MatchEngine>, HostError> {
        Ok(Arc::new(
            crate::vision::load_engine(config)?.with_metrics(metrics),
        ))
    }

    fn warm_up(engine: &dyn MatchEngine) -> Result<(), HostError> {
        engine
            .warm_up()
            .map_err(|error| HostError::WarmUp(error.to_string()))
    }

    fn handler(
        config: &MatcherConfig,
        inference: Inference<dyn MatchEngine>,
    ) -> Result<Self::Handler, HostError> {
        // A malformed table stops the start ("invalid calibration table: ...").
        let calibration =
            Calibration::builtin().map_err(|error| HostError::Service(Box::new(error)))?;
        if calibration.is_provisional() {
            tracing::warn!(
                calibration = calibration.id(),
                "calibration table is provisional: scores do not map to measured false-accept rates"
            );
        }
        let limits = RequestLimits {
            max_image_bytes: config.host.max_image_bytes,
            max_gallery_items: config.max_gallery_items,
        };
        Ok(MatcherServer::new(MatcherService::new(
            inference,
            Arc::new(calibration),
            limits,
        ))
        .max_decoding_message_size(config.max_message_bytes()))
    }

    fn route(router: ObservedRouter, handler: Self::Handler) -> ObservedRouter {
        router.add_service(handler)
    }
}

#[cfg(test)]
mod tests {
    use faceproof_models::Manifest;

    use super::*;

    #[test]
    fn model_info_carries_the_pinned_checksum_prefix_of_each_model() {
        let metrics = Metrics::new();
        host::publish_model_info(
            &metrics,
            std::path::Path::new("models/store"),
            Matcher::MODELS,
        );
        let text = metrics.encode().unwrap();
        let manifest = Manifest::builtin().unwrap();
        for &name in Matcher::MODELS {
            let Some(digest) = manifest.model(name).converted_sha256 else {
                continue;
            };
            let prefix: String = digest.to_string().chars().take(12).collect();
            let expected = format!(
                "faceproof_model_info{{model=\"{}\",sha256=\"{prefix}\"}} 1",
                name.as_str()
            );
            assert!(text.contains(&expected), "missing {expected} in\n{text}");
        }
        assert!(!text.contains("minifasnet"), "{text}");
    }
}
