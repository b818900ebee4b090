//! `faceproof compare`: sends a probe and a gallery to a running gateway over gRPC and prints the
//! signed result in the reference JSON form (the same shape as the REST API, so
//! `faceproof verify` checks either).

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Duration;

use anyhow::Context as _;
use faceproof_proto::gateway::v1 as pb;
use faceproof_proto::gateway::v1::face_verification_client::FaceVerificationClient;
use tonic::metadata::{Ascii, MetadataValue};
use tonic::transport::Channel;
use tonic_types::StatusExt as _;

#[derive(Debug, Clone, Copy, clap::ValueEnum)]
pub enum SearchMode {
    Fast,
    Accurate,
}

#[derive(Debug, Clone, Copy, clap::ValueEnum)]
pub enum Os {
    #[value(name = "DESKTOP")]
    Desktop,
    #[value(name = "IOS")]
    Ios,
    #[value(name = "ANDROID")]
    Android,
}

/// One compare-with-liveness request and where to send it: shared by `compare` and `load`.
#[derive(Debug, clap::Args)]
pub struct RequestArgs {
    /// The selfie to verify (JPEG, PNG or WebP); liveness is checked on it.
    #[arg(long)]
    probe: PathBuf,
    /// A reference image; repeat for several.
    #[arg(long = "gallery", required = true)]
    gallery: Vec<PathBuf>,
    #[arg(long, value_enum, ignore_case = true)]
    search_mode: SearchMode,
    /// 0.67..0.95: liveness is skipped when the comparison score is below it.
    #[arg(long)]
    compare_min_score: Option<f64>,
    /// 0.52..1: liveness passes above it (gateway default 0.6).
    #[arg(long)]
    liveness_min_score: Option<f64>,
    /// Where the capture was made.
    #[arg(long, value_enum, ignore_case = true, default_value = "DESKTOP")]
    os: Os,
    /// The gateway's gRPC address.
    #[arg(long, env = "FACEPROOF_ADDR", default_value = "http://127.0.0.1:50051")]
    pub addr: String,
    /// Bearer token (JWT or API key).
    #[arg(long, env = "FACEPROOF_TOKEN", hide_env_values = true)]
    token: Option<String>,
    /// Give up on a request after this many seconds.
    #[arg(long, default_value_t = 30)]
    timeout_s: u64,
}

impl RequestArgs {
    pub fn timeout(&self) -> Duration {
        Duration::from_secs(self.timeout_s.max(1))
    }

    /// The request message, with the images read from disk.
    pub fn message(&self) -> anyhow::Result<pb::CompareWithLivenessRequest> {
        Ok(pb::CompareWithLivenessRequest {
            os: match self.os {
                Os::Desktop => "DESKTOP",
                Os::Ios => "IOS",
                Os::Android => "ANDROID",
            }
            .to_owned(),
            probe: read_image(&self.probe)?.into(),
            gallery: self
                .gallery
                .iter()
                .map(|path| read_image(path).map(Into::into))
                .collect::<anyhow::Result<_>>()?,
            search_mode: match self.search_mode {
                SearchMode::Fast => "FAST",
                SearchMode::Accurate => "ACCURATE",
            }
            .to_owned(),
            compare_min_score: self.compare_min_score,
            liveness_min_score: self.liveness_min_score,
        })
    }

    /// A client connected to the gateway (one HTTP/2 connection; clones share it).
    pub async fn connect(&self) -> anyhow::Result<FaceVerificationClient<Channel>> {
        let timeout = self.timeout();
        let endpoint = tonic::transport::Endpoint::from_shared(self.addr.clone())
            .with_context(|| format!("bad gateway address {:?}", self.addr))?
            .connect_timeout(Duration::from_secs(5))
            .timeout(timeout);
        let channel = tokio::time::timeout(timeout, endpoint.connect())
            .await
            .with_context(|| format!("timed out connecting to {}", self.addr))?
            .with_context(|| format!("cannot connect to {}", self.addr))?;
        Ok(FaceVerificationClient::new(channel).max_decoding_message_size(64 << 20))
    }

    /// The `authorization: Bearer` value for the token, if one was given.
    pub fn authorization(&self) -> anyhow::Result<Option<MetadataValue<Ascii>>> {
        self.token
            .as_ref()
            .map(|token| {
                MetadataValue::try_from(format!("Bearer {}", token.trim()))
                    .context("the token contains characters not allowed in a header")
            })
            .transpose()
    }

    /// `message` as a call: the timeout, and the token as `authorization: Bearer`.
    pub fn call<T>(&self, message: T) -> anyhow::Result<tonic::Request<T>> {
        Ok(prepared_call(
            message,
            self.timeout(),
            self.authorization()?.as_ref(),
        ))
    }
}

/// A call carrying `timeout` as its deadline and `authorization` as its header.
pub fn prepared_call<T>(
    message: T,
    timeout: Duration,
    authorization: Option<&MetadataValue<Ascii>>,
) -> tonic::Request<T> {
    let mut call = tonic::Request::new(message);
    call.set_timeout(timeout);
    if let Some(value) = authorization {
        call.metadata_mut().insert("authorization", value.clone());
    }
    call
}

#[derive(Debug, clap::Args)]
pub struct Args {
    #[command(flatten)]
    request: RequestArgs,
    /// Also fetch the gateway's public signing keys and write them (keys JSON) to this file, for
    /// `faceproof verify --keys-json`.
    #[arg(long)]
    save_keys: Option<PathBuf>,
}

pub fn run(args: Args) -> anyhow::Result<ExitCode> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("cannot start the async runtime")?;
    runtime.block_on(compare(args))
}

fn read_image(path: &Path) -> anyhow::Result<Vec<u8>> {
    std::fs::read(path).with_context(|| format!("cannot read {}", path.display()))
}

async fn compare(args: Args) -> anyhow::Result<ExitCode> {
    let request = &args.request;
    let call = request.call(request.message()?)?;
    let mut client = request.connect().await?;
    let response = match client.compare_with_liveness(call).await {
        Ok(response) => response.into_inner(),
        Err(status) => {
            report_status(&status);
            return Ok(ExitCode::FAILURE);
        }
    };
    let envelope = faceproof_signing::response_to_json(&response)
        .context("the gateway's answer has no reference JSON form")?;
    outln!("{}", serde_json::to_string_pretty(&envelope)?);

    if let Some(path) = &args.save_keys {
        let keys = client
            .get_signing_keys(pb::GetSigningKeysRequest {})
            .await
            .map_err(|status| anyhow::anyhow!("cannot fetch the signing keys: {status}"))?
            .into_inner();
        let text = serde_json::to_string_pretty(&faceproof_signing::signing_keys_to_json(&keys))?;
        std::fs::write(path, format!("{text}\n"))
            .with_context(|| format!("cannot write {}", path.display()))?;
        eprintln!("signing keys written to {}", path.display());
    }
    Ok(ExitCode::SUCCESS)
}

/// The gRPC code, ErrorInfo reason, field violations and retry delay, on stderr.
pub fn report_status(status: &tonic::Status) {
    eprintln!("error: {:?}: {}", status.code(), status.message());
    let details = status.get_error_details();
    if let Some(info) = details.error_info() {
        eprintln!("reason: {}", info.reason);
        let mut metadata: Vec<_> = info.metadata.iter().collect();
        metadata.sort();
        for (key, value) in metadata {
            eprintln!("  {key}: {value}");
        }
    }
    if let Some(bad_request) = details.bad_request() {
        for violation in &bad_request.field_violations {
            if violation.reason.is_empty() {
                eprintln!("field {}: {}", violation.field, violation.description);
            } else {
                eprintln!(
                    "field {}: {} ({})",
                    violation.field, violation.description, violation.reason
                );
            }
        }
    }
    if let Some(delay) = details.retry_info().and_then(|info| info.retry_delay) {
        eprintln!("retry after: {:.1} s", delay.as_secs_f64());
    }
}
