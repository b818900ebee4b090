//! The matcher's settings: the host's ([`ModelServiceArgs`]: listen address, models, image
//! limits, metrics, serving) and its own (gallery size, detector sides), every one a flag and an
//! environment variable, checked at start.

use faceproof_imaging::ImageLimits;
use faceproof_runtime::HostError;
use faceproof_runtime::host::ModelServiceArgs;

use crate::app::Matcher;

pub const DEFAULT_LISTEN: &str = "0.0.0.0:50052";
/// Prometheus scrape address (the gateway uses 9464, liveness 9466).
pub const DEFAULT_METRICS_ADDR: &str = "0.0.0.0:9465";
pub const DEFAULT_MAX_GALLERY_ITEMS: usize = 10;
pub const DEFAULT_FAST_DETECTOR_SIDE: u32 = 320;
pub const DEFAULT_ACCURATE_DETECTOR_SIDE: u32 = 640;

/// faceproof matcher: detects, aligns and embeds faces and compares them.
#[derive(Debug, Clone, PartialEq, Eq, clap::Parser)]
#[command(name = "faceproof-matcher", version, about)]
pub struct MatcherConfig {
    #[command(flatten)]
    pub host: ModelServiceArgs<Matcher>,

    /// Most gallery images one request may carry.
    #[arg(long, env = "FACEPROOF_MAX_GALLERY_ITEMS", default_value_t = DEFAULT_MAX_GALLERY_ITEMS)]
    pub max_gallery_items: usize,

    /// Longest side of the detector input in FAST mode (images are downscaled, never upscaled).
    #[arg(long, env = "FACEPROOF_FAST_DETECTOR_SIDE", default_value_t = DEFAULT_FAST_DETECTOR_SIDE)]
    pub fast_detector_side: u32,

    /// Longest side of the detector input in ACCURATE mode.
    #[arg(long, env = "FACEPROOF_ACCURATE_DETECTOR_SIDE", default_value_t = DEFAULT_ACCURATE_DETECTOR_SIDE)]
    pub accurate_detector_side: u32,
}

impl Default for MatcherConfig {
    fn default() -> Self {
        Self {
            host: ModelServiceArgs::default(),
            max_gallery_items: DEFAULT_MAX_GALLERY_ITEMS,
            fast_detector_side: DEFAULT_FAST_DETECTOR_SIDE,
            accurate_detector_side: DEFAULT_ACCURATE_DETECTOR_SIDE,
        }
    }
}

impl MatcherConfig {
    /// The header bounds every image is checked against before decoding.
    pub fn image_limits(&self) -> ImageLimits {
        self.host.image_limits()
    }

    /// Checks the settings together; the message names the offending flag.
    pub fn validate(&self) -> Result<(), HostError> {
        self.host.validate()?;
        if !(1..=100).contains(&self.max_gallery_items) {
            return Err(HostError::Config(format!(
                "--max-gallery-items must be 1..=100, got {}",
                self.max_gallery_items
            )));
        }
        for (flag, side) in [
            ("--fast-detector-side", self.fast_detector_side),
            ("--accurate-detector-side", self.accurate_detector_side),
        ] {
            if !(64..=2048).contains(&side) {
                return Err(HostError::Config(format!(
                    "{flag} must be 64..=2048, got {side}"
                )));
            }
        }
        Ok(())
    }

    /// The gRPC decoder's limit: a full gallery plus the probe plus room for the framing.
    pub fn max_message_bytes(&self) -> usize {
        self.host
            .max_image_bytes
            .saturating_mul(self.max_gallery_items + 1)
            .saturating_add(64 * 1024)
    }
}

#[cfg(test)]
mod tests {
    use std::net::SocketAddr;

    use clap::Parser;
    use faceproof_runtime::MetricsAddr;
    use faceproof_runtime::host::HARD_MAX_IMAGE_BYTES;

    use super::*;

    #[test]
    fn defaults_are_valid_and_match_the_flag_defaults() {
        let config = MatcherConfig::default();
        assert!(config.validate().is_ok());
        assert_eq!(config.host.listen, DEFAULT_LISTEN.parse().unwrap());
        assert_eq!(
            config.host.metrics_addr,
            DEFAULT_METRICS_ADDR.parse().unwrap()
        );
        assert!(MatcherConfig::try_parse_from(["faceproof-matcher"]).is_ok());
    }

    #[test]
    fn the_addresses_have_the_matchers_variable_and_defaults() {
        let command = <MatcherConfig as clap::CommandFactory>::command();
        let arg = |id: &str| {
            let arg = command
                .get_arguments()
                .find(|arg| arg.get_id() == id)
                .unwrap();
            let env = arg.get_env().map(|env| env.to_string_lossy().into_owned());
            let default = arg.get_default_values()[0].to_string_lossy().into_owned();
            (env, default)
        };
        assert_eq!(
            arg("listen"),
            (
                Some("FACEPROOF_MATCHER_LISTEN".into()),
                DEFAULT_LISTEN.into()
            )
        );
        assert_eq!(
            arg("metrics_addr"),
            (
                Some("FACEPROOF_METRICS_ADDR".into()),
                DEFAULT_METRICS_ADDR.into()
            )
        );
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
        assert_eq!(config.host.listen, SocketAddr::from(([127, 0, 0, 1], 6000)));
        assert_eq!(config.host.serving.pool_config().threads, 2);
        assert_eq!(config.host.serving.queue_capacity, 8);
        assert_eq!(config.host.max_image_bytes, 1000);
        assert_eq!(config.host.metrics_addr, MetricsAddr::DISABLED);
        assert_eq!(
            config.host.serving.telemetry.log_format,
            faceproof_telemetry::LogFormat::Json
        );
        assert!(config.validate().is_ok());
    }

    #[test]
    fn rejects_out_of_range_settings() {
        let mut too_large = MatcherConfig::default();
        too_large.host.max_image_bytes = HARD_MAX_IMAGE_BYTES + 1;
        let bad = [
            too_large,
            MatcherConfig {
                max_gallery_items: 0,
                ..Default::default()
            },
            MatcherConfig {
                fast_detector_side: 63,
                ..Default::default()
            },
        ];
        for config in bad {
            assert!(config.validate().is_err(), "{config:?}");
        }
    }
}
