//! The matcher's settings: every one a flag and an environment variable, checked at start.

use std::net::SocketAddr;
use std::path::PathBuf;

use faceproof_imaging::ImageLimits;
use faceproof_runtime::{ImageBoundsArgs, MetricsAddr, ServingArgs};

use crate::MatcherError;

pub const DEFAULT_LISTEN: &str = "0.0.0.0:50052";
/// Prometheus scrape address (the gateway uses 9464, liveness 9466).
pub const DEFAULT_METRICS_ADDR: &str = "0.0.0.0:9465";
pub const DEFAULT_MAX_IMAGE_BYTES: usize = 10 * 1024 * 1024;
pub const DEFAULT_MAX_IMAGE_PIXELS: u64 = 40_000_000;
/// The default `face_too_small` threshold, in pixels.
pub const DEFAULT_MIN_FACE_PX: u32 = 32;
/// The largest `--min-face-px` accepted (a face box wider than this is a close-up already).
const MAX_MIN_FACE_PX: u32 = 4096;
pub const DEFAULT_MAX_GALLERY_ITEMS: usize = 10;
pub const DEFAULT_FAST_DETECTOR_SIDE: u32 = 320;
pub const DEFAULT_ACCURATE_DETECTOR_SIDE: u32 = 640;
/// The largest image a request may carry whatever the flags say: protects the gRPC decoder.
const HARD_MAX_IMAGE_BYTES: usize = 64 * 1024 * 1024;

/// faceproof matcher: detects, aligns and embeds faces and compares them.
#[derive(Debug, Clone, PartialEq, Eq, clap::Parser)]
#[command(name = "faceproof-matcher", version, about)]
pub struct MatcherConfig {
    /// Address to listen on for gRPC.
    #[arg(long, env = "FACEPROOF_MATCHER_LISTEN", default_value = DEFAULT_LISTEN)]
    pub listen: SocketAddr,

    /// Directory holding the converted model weights (written by `faceproof models fetch`).
    #[arg(long, env = "FACEPROOF_MODEL_DIR", default_value = "models/store")]
    pub model_dir: PathBuf,

    /// Largest accepted image, in bytes (probe and each gallery image).
    #[arg(long, env = "FACEPROOF_MAX_IMAGE_BYTES", default_value_t = DEFAULT_MAX_IMAGE_BYTES)]
    pub max_image_bytes: usize,

    /// Largest accepted image, in pixels (width x height), checked before decoding.
    #[arg(long, env = "FACEPROOF_MAX_IMAGE_PIXELS", default_value_t = DEFAULT_MAX_IMAGE_PIXELS)]
    pub max_image_pixels: u64,

    #[command(flatten)]
    pub image_bounds: ImageBoundsArgs,

    /// Most gallery images one request may carry.
    #[arg(long, env = "FACEPROOF_MAX_GALLERY_ITEMS", default_value_t = DEFAULT_MAX_GALLERY_ITEMS)]
    pub max_gallery_items: usize,

    /// Smallest face that is used, in pixels of the original image (the shorter side of its
    /// box); a smaller face is refused with `face_too_small`: it carries too little detail.
    #[arg(long, env = "FACEPROOF_MIN_FACE_PX", default_value_t = DEFAULT_MIN_FACE_PX)]
    pub min_face_px: u32,

    /// Longest side of the detector input in FAST mode (images are downscaled, never upscaled).
    #[arg(long, env = "FACEPROOF_FAST_DETECTOR_SIDE", default_value_t = DEFAULT_FAST_DETECTOR_SIDE)]
    pub fast_detector_side: u32,

    /// Longest side of the detector input in ACCURATE mode.
    #[arg(long, env = "FACEPROOF_ACCURATE_DETECTOR_SIDE", default_value_t = DEFAULT_ACCURATE_DETECTOR_SIDE)]
    pub accurate_detector_side: u32,

    /// Address of the Prometheus endpoint (`GET /metrics`); `off` disables it.
    #[arg(long, env = "FACEPROOF_METRICS_ADDR", default_value = DEFAULT_METRICS_ADDR)]
    pub metrics_addr: MetricsAddr,

    #[command(flatten)]
    pub serving: ServingArgs,
}

impl Default for MatcherConfig {
    fn default() -> Self {
        Self {
            listen: SocketAddr::from(([0, 0, 0, 0], 50052)),
            model_dir: PathBuf::from("models/store"),
            max_image_bytes: DEFAULT_MAX_IMAGE_BYTES,
            max_image_pixels: DEFAULT_MAX_IMAGE_PIXELS,
            image_bounds: ImageBoundsArgs::default(),
            max_gallery_items: DEFAULT_MAX_GALLERY_ITEMS,
            fast_detector_side: DEFAULT_FAST_DETECTOR_SIDE,
            accurate_detector_side: DEFAULT_ACCURATE_DETECTOR_SIDE,
            min_face_px: DEFAULT_MIN_FACE_PX,
            metrics_addr: MetricsAddr(Some(SocketAddr::from(([0, 0, 0, 0], 9465)))),
            serving: ServingArgs::default(),
        }
    }
}

impl MatcherConfig {
    /// The header bounds every image is checked against before decoding.
    pub fn image_limits(&self) -> ImageLimits {
        self.image_bounds.limits(self.max_image_pixels)
    }

    /// Checks the settings together; the message names the offending flag.
    pub fn validate(&self) -> Result<(), MatcherError> {
        if !(1..=HARD_MAX_IMAGE_BYTES).contains(&self.max_image_bytes) {
            return Err(MatcherError::Config(format!(
                "--max-image-bytes must be 1..={HARD_MAX_IMAGE_BYTES}, got {}",
                self.max_image_bytes
            )));
        }
        if !(1..=MAX_MIN_FACE_PX).contains(&self.min_face_px) {
            return Err(MatcherError::Config(format!(
                "--min-face-px must be 1..={MAX_MIN_FACE_PX}, got {}",
                self.min_face_px
            )));
        }
        if self.max_image_pixels == 0 {
            return Err(MatcherError::Config(
                "--max-image-pixels must be positive".into(),
            ));
        }
        self.image_bounds.validate().map_err(MatcherError::Config)?;
        if !(1..=100).contains(&self.max_gallery_items) {
            return Err(MatcherError::Config(format!(
                "--max-gallery-items must be 1..=100, got {}",
                self.max_gallery_items
            )));
        }
        for (flag, side) in [
            ("--fast-detector-side", self.fast_detector_side),
            ("--accurate-detector-side", self.accurate_detector_side),
        ] {
            if !(64..=2048).contains(&side) {
                return Err(MatcherError::Config(format!(
                    "{flag} must be 64..=2048, got {side}"
                )));
            }
        }
        self.serving.validate().map_err(MatcherError::Config)
    }

    /// The gRPC decoder's limit: a full gallery plus the probe plus room for the framing.
    pub fn max_message_bytes(&self) -> usize {
        self.max_image_bytes
            .saturating_mul(self.max_gallery_items + 1)
            .saturating_add(64 * 1024)
    }
}

#[cfg(test)]
mod tests {
    use clap::Parser;

    use super::*;

    #[test]
    fn defaults_are_valid_and_match_the_flag_defaults() {
        let config = MatcherConfig::default();
        assert!(config.validate().is_ok());
        assert_eq!(config.listen, DEFAULT_LISTEN.parse().unwrap());
        assert_eq!(config.metrics_addr, DEFAULT_METRICS_ADDR.parse().unwrap());
        assert!(MatcherConfig::try_parse_from(["faceproof-matcher"]).is_ok());
    }

    #[test]
    fn flags_parse_into_typed_values() {
        let config = MatcherConfig::try_parse_from([
            "faceproof-matcher",
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
            "off",
        ])
        .unwrap();
        assert_eq!(config.listen, SocketAddr::from(([127, 0, 0, 1], 6000)));
        assert_eq!(config.serving.pool_config().threads, 2);
        assert_eq!(config.serving.queue_capacity, 8);
        assert_eq!(config.max_image_bytes, 1000);
        assert_eq!(config.metrics_addr, MetricsAddr::DISABLED);
        assert_eq!(
            config.serving.telemetry.log_format,
            faceproof_telemetry::LogFormat::Json
        );
        assert!(config.validate().is_ok());
    }

    #[test]
    fn rejects_out_of_range_settings() {
        let bad = [
            MatcherConfig {
                max_image_bytes: 0,
                ..Default::default()
            },
            MatcherConfig {
                max_image_bytes: HARD_MAX_IMAGE_BYTES + 1,
                ..Default::default()
            },
            MatcherConfig {
                max_gallery_items: 0,
                ..Default::default()
            },
            MatcherConfig {
                max_image_pixels: 0,
                ..Default::default()
            },
            MatcherConfig {
                min_face_px: 0,
                ..Default::default()
            },
            MatcherConfig {
                min_face_px: MAX_MIN_FACE_PX + 1,
                ..Default::default()
            },
        ];
        for config in bad {
            assert!(config.validate().is_err(), "{config:?}");
        }
    }
}
