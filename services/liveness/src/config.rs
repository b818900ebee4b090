//! The liveness service's settings: the host's ([`ModelServiceArgs`]: listen address, models,
//! image limits, metrics, serving), every one a flag and an environment variable, checked at
//! start. Liveness has no flag of its own.

use faceproof_imaging::ImageLimits;
use faceproof_runtime::HostError;
use faceproof_runtime::host::ModelServiceArgs;

use crate::app::Liveness;

pub const DEFAULT_LISTEN: &str = "0.0.0.0:50053";
/// Prometheus scrape address (the gateway uses 9464, the matcher 9465).
pub const DEFAULT_METRICS_ADDR: &str = "0.0.0.0:9466";

/// faceproof liveness: passive single-image anti-spoofing on the full frame.
#[derive(Debug, Clone, Default, PartialEq, Eq, clap::Parser)]
#[command(name = "faceproof-liveness", version, about)]
pub struct LivenessConfig {
    #[command(flatten)]
    pub host: ModelServiceArgs<Liveness>,
}

impl LivenessConfig {
    /// The header bounds every image is checked against before decoding.
    pub fn image_limits(&self) -> ImageLimits {
        self.host.image_limits()
    }

    /// Checks the settings together; the message names the offending flag.
    pub fn validate(&self) -> Result<(), HostError> {
        self.host.validate()
    }

    /// The gRPC decoder's limit: the image plus room for the hint and the framing.
    pub fn max_message_bytes(&self) -> usize {
        self.host.max_image_bytes.saturating_add(64 * 1024)
    }
}

#[cfg(test)]
mod tests {
    use std::net::SocketAddr;

    use clap::{CommandFactory, Parser};
    use faceproof_runtime::MetricsAddr;
    use faceproof_runtime::host::HARD_MAX_IMAGE_BYTES;

    use super::*;

    #[test]
    fn defaults_are_valid_and_match_the_flag_defaults() {
        let config = LivenessConfig::default();
        assert!(config.validate().is_ok());
        assert_eq!(config.host.listen, DEFAULT_LISTEN.parse().unwrap());
        let command = LivenessConfig::command();
        let listen = command
            .get_arguments()
            .find(|arg| arg.get_id() == "listen")
            .unwrap();
        assert_eq!(
            listen.get_env().unwrap().to_str(),
            Some("FACEPROOF_LIVENESS_LISTEN")
        );
        assert_eq!(
            listen.get_default_values()[0].to_str(),
            Some(DEFAULT_LISTEN)
        );
        assert!(LivenessConfig::try_parse_from(["faceproof-liveness"]).is_ok());
    }

    #[test]
    fn flags_parse_into_typed_values() {
        let config = LivenessConfig::try_parse_from([
            "faceproof-liveness",
            "--listen",
            "127.0.0.1:6000",
            "--max-image-bytes",
            "1000",
            "--metrics-addr",
            "127.0.0.1:9999",
        ])
        .unwrap();
        assert_eq!(config.host.listen, SocketAddr::from(([127, 0, 0, 1], 6000)));
        assert_eq!(config.host.max_image_bytes, 1000);
        assert_eq!(
            config.host.metrics_addr,
            MetricsAddr(Some(SocketAddr::from(([127, 0, 0, 1], 9999))))
        );
        assert_eq!(config.max_message_bytes(), 1000 + 64 * 1024);
        assert!(config.validate().is_ok());
    }

    #[test]
    fn rejects_out_of_range_settings() {
        let mut config = LivenessConfig::default();
        config.host.max_image_bytes = HARD_MAX_IMAGE_BYTES + 1;
        assert!(config.validate().is_err());
    }
}
