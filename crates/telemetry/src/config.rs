use std::str::FromStr;

use crate::TelemetryError;

/// How log lines are written.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum LogFormat {
    /// Human-readable lines for development terminals.
    #[default]
    Human,
    /// One JSON object per line, for log collectors in production.
    Json,
}

impl FromStr for LogFormat {
    type Err = TelemetryError;

    fn from_str(value: &str) -> Result<Self, Self::Err> {
        match value.trim().to_ascii_lowercase().as_str() {
            "json" => Ok(Self::Json),
            "human" | "text" | "pretty" | "" => Ok(Self::Human),
            _ => Err(TelemetryError::UnknownLogFormat(value.to_owned())),
        }
    }
}

/// Telemetry settings as explicit values, so each service reads its environment in one place.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TelemetryConfig {
    /// OpenTelemetry `service.name`, e.g. `faceproof-gateway`.
    pub service_name: String,
    /// `EnvFilter` directives (the `RUST_LOG` syntax), e.g. `info,faceproof_matcher=debug`.
    pub log_filter: String,
    /// Human or JSON log lines.
    pub log_format: LogFormat,
    /// OTLP/gRPC collector, e.g. `http://otel-collector:4317`; `None` exports nothing.
    pub otlp_endpoint: Option<String>,
}

impl TelemetryConfig {
    /// The filter used when none is configured.
    pub const DEFAULT_LOG_FILTER: &'static str = "info";

    /// Defaults: `info` filter, human logs, no exporter.
    pub fn new(service_name: impl Into<String>) -> Self {
        Self {
            service_name: service_name.into(),
            log_filter: Self::DEFAULT_LOG_FILTER.to_owned(),
            log_format: LogFormat::Human,
            otlp_endpoint: None,
        }
    }

    /// Reads `RUST_LOG`, `FACEPROOF_LOG_FORMAT` and `OTEL_EXPORTER_OTLP_ENDPOINT` (empty values
    /// count as unset). For services that do not carry these in their own `clap` config.
    pub fn from_env(service_name: impl Into<String>) -> Result<Self, TelemetryError> {
        let read = |name: &str| {
            std::env::var(name)
                .ok()
                .filter(|value| !value.trim().is_empty())
        };
        let mut config = Self::new(service_name);
        if let Some(filter) = read("RUST_LOG") {
            config.log_filter = filter;
        }
        if let Some(format) = read("FACEPROOF_LOG_FORMAT") {
            config.log_format = format.parse()?;
        }
        config.otlp_endpoint = read("OTEL_EXPORTER_OTLP_ENDPOINT");
        config.validate()?;
        Ok(config)
    }

    /// Checks what can be checked without side effects; [`crate::init`] calls it too.
    pub fn validate(&self) -> Result<(), TelemetryError> {
        if self.service_name.trim().is_empty() {
            return Err(TelemetryError::EmptyServiceName);
        }
        if let Some(endpoint) = &self.otlp_endpoint {
            let valid = (endpoint.starts_with("http://") || endpoint.starts_with("https://"))
                && endpoint
                    .parse::<http::Uri>()
                    .is_ok_and(|uri| uri.host().is_some());
            if !valid {
                return Err(TelemetryError::InvalidOtlpEndpoint(endpoint.clone()));
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn log_format_parses_known_names_and_rejects_others() {
        assert_eq!("JSON".parse::<LogFormat>().unwrap(), LogFormat::Json);
        assert_eq!("human".parse::<LogFormat>().unwrap(), LogFormat::Human);
        assert!(matches!(
            "yaml".parse::<LogFormat>(),
            Err(TelemetryError::UnknownLogFormat(name)) if name == "yaml"
        ));
    }

    #[test]
    fn validate_rejects_empty_name_and_bad_endpoints() {
        assert!(matches!(
            TelemetryConfig::new(" ").validate(),
            Err(TelemetryError::EmptyServiceName)
        ));
        for endpoint in ["localhost:4317", "http://", "ftp://collector:21"] {
            let mut config = TelemetryConfig::new("faceproof-gateway");
            config.otlp_endpoint = Some(endpoint.to_owned());
            assert!(
                matches!(
                    config.validate(),
                    Err(TelemetryError::InvalidOtlpEndpoint(_))
                ),
                "{endpoint} must be rejected"
            );
        }
        let mut config = TelemetryConfig::new("faceproof-gateway");
        config.otlp_endpoint = Some("http://127.0.0.1:4317".to_owned());
        config.validate().unwrap();
    }
}
