//! The production [`LivenessEngine`]: faceproof-vision's [`LivenessPipeline`] (decode -> the
//! matcher's face hint, or detection and subject choice -> capture-quality gates -> context
//! crops -> MiniFASNet ensemble -> softmax) loaded from the configured model directory, timed
//! into the service's stage metrics.

use faceproof_imaging::Cancellation;
use faceproof_models::{ModelName, ModelStore};
use faceproof_runtime::time_stage;
use faceproof_telemetry::Metrics;
use faceproof_vision::pipeline::{LivenessPipeline, Stage};

pub use faceproof_vision::pipeline::LivenessSettings;

use crate::engine::{CheckJob, EngineError, LivenessEngine, LivenessVerdict};
use crate::{HostError, LivenessConfig};

/// The liveness pipeline's settings as the service's flags set them: the one place the
/// service's configuration reaches the pipeline.
pub fn settings_from_config(config: &LivenessConfig) -> LivenessSettings {
    LivenessSettings {
        image_limits: config.image_limits(),
        min_face_px: config.host.min_face_px,
    }
}

/// YuNet + both MiniFASNets on the CPU, behind the service's engine contract.
#[derive(Debug)]
pub struct VisionLivenessEngine {
    pipeline: LivenessPipeline,
}

/// Loads the verified weights from the configured model directory.
pub fn load_engine(config: &LivenessConfig) -> Result<VisionLivenessEngine, HostError> {
    let store = ModelStore::at(&config.host.model_dir).map_err(model_error)?;
    let read = |name| store.read_verified(name).map_err(model_error);
    VisionLivenessEngine::from_weights(
        &read(ModelName::YuNet)?,
        &read(ModelName::MiniFasNetV2)?,
        &read(ModelName::MiniFasNetV1Se)?,
        settings_from_config(config),
    )
}

fn model_error(error: impl std::fmt::Display) -> HostError {
    HostError::ModelLoad(error.to_string())
}

impl VisionLivenessEngine {
    /// Builds the engine from the safetensors bytes of YuNet and both anti-spoofing networks.
    pub fn from_weights(
        yunet: &[u8],
        minifasnet_v2: &[u8],
        minifasnet_v1se: &[u8],
        settings: LivenessSettings,
    ) -> Result<Self, HostError> {
        let pipeline =
            LivenessPipeline::from_weights(yunet, minifasnet_v2, minifasnet_v1se, settings)
                .map_err(model_error)?;
        Ok(Self { pipeline })
    }

    /// Records the time of each stage (decode, detect, antispoof) into `metrics`.
    pub fn with_metrics(self, metrics: Metrics) -> Self {
        let pipeline =
            self.pipeline
                .with_stage_timer(move |stage: Stage, work: &mut dyn FnMut()| {
                    time_stage(Some(&metrics), stage, work);
                });
        Self { pipeline }
    }
}

impl LivenessEngine for VisionLivenessEngine {
    fn check(&self, job: CheckJob, cancel: &Cancellation) -> Result<LivenessVerdict, EngineError> {
        let scores = self
            .pipeline
            .check(&job.image, job.mode, job.face_hint, cancel)?
            .map_err(EngineError::Rejected)?;
        Ok(LivenessVerdict {
            face: scores.face,
            liveness_score: scores.liveness_score,
            // MiniFASNet's two spoof classes do not separate print from screen attacks (both
            // land mostly in class 2 on the upstream samples, see `LivenessClass`): no split is
            // claimed rather than a misleading one.
            attack: None,
            models: scores.models,
        })
    }

    fn warm_up(&self) -> Result<(), EngineError> {
        Ok(self.pipeline.warm_up()?)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn flag_defaults_give_the_pipeline_defaults() {
        // `faceproof eval liveness` runs the pipeline's defaults: they must be the service's.
        let settings = settings_from_config(&LivenessConfig::default());
        assert_eq!(settings, LivenessSettings::default());
    }
}
