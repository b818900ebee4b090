//! `faceproof verify`: checks the signature of a saved compare-with-liveness response offline and
//! says exactly what fails.

use std::io::Read as _;
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context as _;
use faceproof_signing::PublicKeySet;

#[derive(Debug, clap::Args)]
#[command(group(clap::ArgGroup::new("keys").required(true).args(["public_key", "keys_json"])))]
pub struct Args {
    /// The saved response (REST body or `faceproof compare` output); `-` reads stdin.
    response: PathBuf,
    /// The gateway's Ed25519 public key: SPKI PEM or the raw 32 bytes in base64.
    #[arg(long)]
    public_key: Option<PathBuf>,
    /// The keys JSON served by `GET /v2/signing-keys` (or saved by `faceproof compare
    /// --save-keys`).
    #[arg(long)]
    keys_json: Option<PathBuf>,
    /// The probe photo: its SHA-256 must be the signed `probe_sha256`.
    #[arg(long)]
    probe: Option<PathBuf>,
    /// Every gallery photo, in request order: their SHA-256 must be the signed ones.
    #[arg(long, num_args = 1..)]
    gallery: Vec<PathBuf>,
}

pub fn run(args: Args) -> anyhow::Result<ExitCode> {
    let keys = match (&args.public_key, &args.keys_json) {
        (Some(path), _) => {
            let text = std::fs::read_to_string(path)
                .with_context(|| format!("cannot read {}", path.display()))?;
            PublicKeySet::from_public_key_text(&text)
                .with_context(|| format!("{}", path.display()))?
        }
        (None, Some(path)) => {
            let text = std::fs::read_to_string(path)
                .with_context(|| format!("cannot read {}", path.display()))?;
            PublicKeySet::from_keys_json(&text).with_context(|| format!("{}", path.display()))?
        }
        (None, None) => anyhow::bail!("give --public-key or --keys-json"),
    };
    let text = if args.response.as_os_str() == "-" {
        let mut text = String::new();
        std::io::stdin()
            .read_to_string(&mut text)
            .context("cannot read the response from stdin")?;
        text
    } else {
        std::fs::read_to_string(&args.response)
            .with_context(|| format!("cannot read {}", args.response.display()))?
    };
    let probe = args
        .probe
        .as_ref()
        .map(|path| std::fs::read(path).with_context(|| format!("cannot read {}", path.display())))
        .transpose()?;
    let gallery = args
        .gallery
        .iter()
        .map(|path| std::fs::read(path).with_context(|| format!("cannot read {}", path.display())))
        .collect::<anyhow::Result<Vec<_>>>()?;
    // Parsed as I-JSON: a duplicated key anywhere is refused before anything else is read.
    let verified = faceproof_signing::parse_response_text(&text).and_then(|envelope| {
        let verified = faceproof_signing::verify_response_json(&envelope, &keys)?;
        let gallery = (!gallery.is_empty()).then_some(gallery.as_slice());
        let checked = faceproof_signing::check_image_digests(&envelope, probe.as_deref(), gallery)?;
        Ok((verified, checked))
    });
    match verified {
        Ok((verified, checked)) => {
            outln!(
                "signature valid (key {}, signed at {}, response {})",
                verified.key_id,
                verified.signed_at,
                verified.response_id
            );
            if checked == 0 {
                outln!(
                    "photos not checked: give --probe FILE and --gallery FILE... to check that \
                     the signed SHA-256 digests are those of your photos"
                );
            } else {
                outln!("photos match the signed SHA-256 digests ({checked} checked)");
            }
            Ok(ExitCode::SUCCESS)
        }
        Err(
            error @ (faceproof_signing::VerifyError::ImageMismatch { .. }
            | faceproof_signing::VerifyError::GalleryCount { .. }),
        ) => {
            eprintln!("signature valid, but the photos do NOT match: {error}");
            Ok(ExitCode::FAILURE)
        }
        Err(error) => {
            eprintln!("signature INVALID: {error}");
            Ok(ExitCode::FAILURE)
        }
    }
}
