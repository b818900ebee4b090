//! The liveness's settings: every one a flag and an environment variable, checked at start.

use std::net::SocketAddr;
use std::path::PathBuf;

use faceproof_imaging::ImageLimits;
use faceproof_runtime::{ImageBoundsArgs, MetricsAddr, ServingArgs};

use crate::LivenessError;

pub const DEFAULT_LISTEN: &str = "0.0.0.0:50053";
/// Prometheus scrape address (the gateway uses 9464, the matcher 9465).
pub const DEFAULT_METRICS_ADDR: &str = "0.0.0.0:9466";
pub const DEFAULT_MAX_IMAGE_BYTES: usize = 10 * 1024 * 1024;
pub const DEFAULT_MAX_IMAGE_PIXELS: u64 = 40_000_000;
/// The default `face_too_small` threshold, in pixels.
pub const DEFAULT_MIN_FACE_PX: u32 = 32;
/// The largest `--min-face-px` accepted (a face box wider than this is a close-up already).
const MAX_MIN_FACE_PX: u32 = 4096;
/// The largest image a request may carry whatever the flags say: protects the gRPC decoder.
const HARD_MAX_IMAGE_BYTES: usize = 64 * 1024 * 1024;

/// faceproof liveness: passive single-image anti-spoofing on the full frame.
#[derive(Debug, Clone, PartialEq, Eq, clap::Parser)]
#[command(name = "faceproof-liveness", version, about)]
pub struct LivenessConfig {
    /// Address to listen on for gRPC.
    #[arg(long, env = "FACEPROOF_LIVENESS_LISTEN", default_value = DEFAULT_LISTEN)]
    pub listen: SocketAddr,

    /// Directory holding the converted model weights (written by `faceproof models fetch`).
    #[arg(long, env = "FACEPROOF_MODEL_DIR", default_value = "models/store")]
    pub model_dir: PathBuf,

    /// Largest accepted image, in bytes.
    #[arg(long, env = "FACEPROOF_MAX_IMAGE_BYTES", default_value_t = DEFAULT_MAX_IMAGE_BYTES)]
    pub max_image_bytes: usize,

    /// Largest accepted image, in pixels (width x height), checked before decoding.
    #[arg(long, env = "FACEPROOF_MAX_IMAGE_PIXELS", default_value_t = DEFAULT_MAX_IMAGE_PIXELS)]
    pub max_image_pixels: u64,

    #[command(flatten)]
    pub image_bounds: ImageBoundsArgs,

    /// Smallest face that is used, in pixels of the original image (the shorter side of its
    /// box); a smaller face is refused with `face_too_small`: it carries too little detail.
    #[arg(long, env = "FACEPROOF_MIN_FACE_PX", default_value_t = DEFAULT_MIN_FACE_PX)]
    pub min_face_px: u32,

    /// Address of the Prometheus endpoint (`GET /metrics`); `off` disables it.
    #[arg(long, env = "FACEPROOF_METRICS_ADDR", default_value = DEFAULT_METRICS_ADDR)]
    pub metrics_addr: MetricsAddr,

    #[command(flatten)]
    pub serving: ServingArgs,
}

impl Default for LivenessConfig {
    fn default() -> Self {
        Self {
            listen: SocketAddr::from(([0, 0, 0, 0], 50053)),
            model_dir: PathBuf::from("models/store"),
            max_image_bytes: DEFAULT_MAX_IMAGE_BYTES,
            max_image_pixels: DEFAULT_MAX_IMAGE_PIXELS,
            image_bounds: ImageBoundsArgs::default(),
            min_face_px: DEFAULT_MIN_FACE_PX,
            metrics_addr: MetricsAddr(Some(SocketAddr::from(([0, 0, 0, 0], 9466)))),
            serving: ServingArgs::default(),
        }
    }
}

impl LivenessConfig {
    /// The header bounds every image is checked against before decoding.
    pub fn image_limits(&self) -> ImageLimits {
        self.image_bounds.limits(self.max_image_pixels)
    }

    /// Checks the settings together; the message names the offending flag.
    pub fn validate(&self) -> Result<(), LivenessError> {
        if !(1..=HARD_MAX_IMAGE_BYTES).contains(&self.max_image_bytes) {
            return Err(LivenessError::Config(format!(
                "--max-image-bytes must be 1..={HARD_MAX_IMAGE_BYTES}, got {}",
                self.max_image_bytes
            )));
        }
        if !(1..=MAX_MIN_FACE_PX).contains(&self.min_face_px) {
            return Err(LivenessError::Config(format!(
                "--min-face-px must be 1..={MAX_MIN_FACE_PX}, got {}",
                self.min_face_px
            )));
        }
        if self.max_image_pixels == 0 {
            return Err(LivenessError::Config(
                "--max-image-pixels must be positive".into(),
            ));
        }
        self.image_bounds
            .validate()
            .map_err(LivenessError::Config)?;
        self.serving.validate().map_err(LivenessError::Config)
    }

    /// The gRPC decoder's limit: the image plus room for the hint and the framing.
    pub fn max_message_bytes(&self) -> usize {
        self.max_image_bytes.saturating_add(64 * 1024)
    }
}

#[cfg(test)]
mod tests {
    use clap::Parser;

    use super::*;

    #[test]
    fn defaults_are_valid_and_match_the_flag_defaults() {
        let config = LivenessConfig::default();
        assert!(config.validate().is_ok());
        assert_eq!(config.listen, DEFAULT_LISTEN.parse().unwrap());
        assert_eq!(config.metrics_addr, DEFAULT_METRICS_ADDR.parse().unwrap());
        assert!(LivenessConfig::try_parse_from(["faceproof-liveness"]).is_ok());
    }

    #[test]
    fn flags_parse_into_typed_values() {
        let config = LivenessConfig::try_parse_from([
            "faceproof-liveness",
            "--listen",
            "127.0.0.1:6000",
            "--inference-threads",
            "2",
            "--queue-capacity",
            "8",
            "--max-image-bytes",
            "1000",
            "--log-format",
            "json",
            "--metrics-addr",
            "127.0.0.1:9999",
        ])
        .unwrap();
        assert_eq!(config.listen, SocketAddr::from(([127, 0, 0, 1], 6000)));
        assert_eq!(config.serving.pool_config().threads, 2);
        assert_eq!(config.serving.queue_capacity, 8);
        assert_eq!(config.max_image_bytes, 1000);
        assert_eq!(
            config.metrics_addr,
            MetricsAddr(Some(SocketAddr::from(([127, 0, 0, 1], 9999))))
        );
        assert_eq!(
            config.serving.telemetry.log_format,
            faceproof_telemetry::LogFormat::Json
        );
        assert!(config.validate().is_ok());
    }

    #[test]
    fn rejects_out_of_range_settings() {
        let bad = [
            LivenessConfig {
                max_image_bytes: 0,
                ..Default::default()
            },
            LivenessConfig {
                max_image_bytes: HARD_MAX_IMAGE_BYTES + 1,
                ..Default::default()
            },
            LivenessConfig {
                max_image_pixels: 0,
                ..Default::default()
            },
            LivenessConfig {
                min_face_px: 0,
                ..Default::default()
            },
            LivenessConfig {
                min_face_px: MAX_MIN_FACE_PX + 1,
                ..Default::default()
            },
        ];
        for config in bad {
            assert!(config.validate().is_err(), "{config:?}");
        }
    }
}
