//! The production [`MatchEngine`]: faceproof-vision's [`MatchPipeline`] (decode -> detect ->
//! subject and quality gates -> align -> embed -> cosine) loaded from the configured model
//! directory, timed into the service's stage metrics.

use faceproof_imaging::Cancellation;
use faceproof_models::{ModelName, ModelStore};
use faceproof_runtime::time_stage;
use faceproof_telemetry::Metrics;
use faceproof_vision::pipeline::{MatchPipeline, MatchSettings, Stage};

use faceproof_proto::common::v1::SearchMode;

use crate::engine::{
    CompareJob, CompareOutcome, EngineError, ImageRole, MatchEngine, SubjectResult,
};
use crate::{HostError, MatcherConfig};

/// Settings of the match pipeline (the name the matcher's callers know it by).
pub type VisionMatchSettings = MatchSettings;

/// The match pipeline's settings as the matcher's flags set them: the one place the matcher's
/// configuration reaches the pipeline.
pub fn settings_from_config(config: &MatcherConfig) -> MatchSettings {
    MatchSettings {
        image_limits: config.image_limits(),
        fast_detector_side: config.fast_detector_side,
        accurate_detector_side: config.accurate_detector_side,
        min_face_px: config.host.min_face_px,
    }
}

/// YuNet + SFace on the CPU, behind the service's engine contract.
#[derive(Debug)]
pub struct VisionMatchEngine {
    pipeline: MatchPipeline,
}

/// Loads the verified weights from the configured model directory.
pub fn load_engine(config: &MatcherConfig) -> Result<VisionMatchEngine, HostError> {
    let store = ModelStore::at(&config.host.model_dir).map_err(model_error)?;
    let yunet = store.read_verified(ModelName::YuNet).map_err(model_error)?;
    let sface = store.read_verified(ModelName::SFace).map_err(model_error)?;
    VisionMatchEngine::from_weights(&yunet, &sface, settings_from_config(config))
}

fn model_error(error: impl std::fmt::Display) -> HostError {
    HostError::ModelLoad(error.to_string())
}

impl VisionMatchEngine {
    /// Builds the engine from the safetensors bytes of YuNet and SFace.
    pub fn from_weights(
        yunet: &[u8],
        sface: &[u8],
        settings: MatchSettings,
    ) -> Result<Self, HostError> {
        let pipeline = MatchPipeline::from_weights(yunet, sface, settings).map_err(model_error)?;
        Ok(Self { pipeline })
    }

    /// Records the time of each stage (decode, detect, align, embed) into `metrics`.
    pub fn with_metrics(self, metrics: Metrics) -> Self {
        let timer = move |stage: Stage, work: &mut dyn FnMut()| {
            time_stage(Some(&metrics), stage, work);
        };
        Self {
            pipeline: self.pipeline.with_stage_timer(timer),
        }
    }
}

impl VisionMatchEngine {
    /// The whole comparison on the calling thread, one image after another (in-process tools
    /// and tests): the answer the service gives by running the images as separate jobs.
    pub fn compare(
        &self,
        job: CompareJob,
        cancel: &Cancellation,
    ) -> Result<CompareOutcome, EngineError> {
        self.pipeline
            .compare(&job.probe, &job.gallery, job.mode, cancel)?
            .map_err(EngineError::Probe)
    }
}

impl MatchEngine for VisionMatchEngine {
    fn embed_subject(
        &self,
        image: &[u8],
        mode: SearchMode,
        role: ImageRole,
        cancel: &Cancellation,
    ) -> SubjectResult {
        Ok(self.pipeline.embed_subject(image, mode, role, cancel)?)
    }

    fn warm_up(&self) -> Result<(), EngineError> {
        Ok(self.pipeline.warm_up()?)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_pipeline_defaults_are_the_flag_defaults() {
        // `faceproof eval` runs the pipeline with its defaults: they must be the service's.
        assert_eq!(
            settings_from_config(&MatcherConfig::default()),
            MatchSettings::default()
        );
    }
}
