//! `faceproof serve gateway|matcher|liveness [flags]`: runs one service in this process with the
//! service's own configuration (the same flags and environment variables as its own binary), so
//! the single `faceproof` binary can run the whole stack (`faceproof up` spawns itself this way).

use std::process::ExitCode;

use anyhow::Context as _;

/// The service to run; each takes exactly the flags of its own binary (`--help` lists them).
#[derive(Debug, clap::Subcommand)]
// Parsed once per process and moved straight into the service: boxing would buy nothing.
#[allow(clippy::large_enum_variant)]
pub enum Service {
    /// The public API (gRPC and REST): authentication, validation, orchestration, signing.
    Gateway(faceproof_gateway::Config),
    /// The face matcher model service (detect, align, embed, compare).
    Matcher(faceproof_matcher::MatcherConfig),
    /// The liveness (anti-spoofing) model service.
    Liveness(faceproof_liveness::LivenessConfig),
}

impl Service {
    pub fn name(&self) -> &'static str {
        match self {
            Self::Gateway(_) => "gateway",
            Self::Matcher(_) => "matcher",
            Self::Liveness(_) => "liveness",
        }
    }
}

pub fn run(service: Service) -> anyhow::Result<ExitCode> {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("cannot start the async runtime")?;
    let name = service.name();
    runtime
        .block_on(async move {
            match service {
                Service::Gateway(config) => faceproof_gateway::run(config).await,
                Service::Matcher(config) => faceproof_matcher::run(config).await,
                Service::Liveness(config) => faceproof_liveness::run(config).await,
            }
        })
        .with_context(|| format!("the {name} service failed"))?;
    Ok(ExitCode::SUCCESS)
}
