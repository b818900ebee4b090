//! `--insecure-dev`: local development without real credentials. Generates an HS256 secret, a
//! token and a signing key under the data directory (reused on the next start) and says so loudly.

use std::path::Path;

use faceproof_signing::Signer;
use rand_core::RngCore;
use serde::Serialize;

use crate::config::Config;
use crate::error::GatewayError;

const DEV_SECRET_FILE: &str = "dev-jwt-secret";
const DEV_TOKEN_FILE: &str = "dev-token";
const DEV_SIGNING_KEY_FILE: &str = "dev-signing-key.pem";
/// The client id of the generated token.
pub const DEV_CLIENT: &str = "dev";
const DEV_TOKEN_LIFETIME_S: i64 = 30 * 24 * 3600;

/// What `--insecure-dev` generated (only what the configuration lacks).
#[derive(Debug, Default)]
pub struct DevMaterial {
    pub jwt_secret: Option<Vec<u8>>,
    pub signer: Option<Signer>,
}

#[derive(Serialize)]
struct DevClaims<'a> {
    sub: &'a str,
    iat: i64,
    exp: i64,
}

/// Fills the gaps of an `--insecure-dev` configuration; does nothing otherwise.
pub fn prepare(config: &Config) -> Result<DevMaterial, GatewayError> {
    let mut material = DevMaterial::default();
    if !config.insecure_dev {
        return Ok(material);
    }
    let needs_credentials = config.jwt_algorithm.is_none() && config.api_keys_file.is_none();
    let needs_signer = config.signing_key_file.is_none();
    if !needs_credentials && !needs_signer {
        return Ok(material);
    }
    let dir = &config.data_dir;
    std::fs::create_dir_all(dir).map_err(|error| io_error(dir, error))?;
    if needs_credentials {
        let secret_path = dir.join(DEV_SECRET_FILE);
        let secret = if secret_path.exists() {
            std::fs::read_to_string(&secret_path)
                .map_err(|error| io_error(&secret_path, error))?
                .trim()
                .to_owned()
        } else {
            let mut bytes = [0u8; 32];
            rand_core::OsRng.fill_bytes(&mut bytes);
            let secret = hex::encode(bytes);
            write_private(&secret_path, secret.as_bytes())?;
            secret
        };
        let now = chrono::Utc::now().timestamp();
        let token = jsonwebtoken::encode(
            &jsonwebtoken::Header::new(jsonwebtoken::Algorithm::HS256),
            &DevClaims {
                sub: DEV_CLIENT,
                iat: now,
                exp: now + DEV_TOKEN_LIFETIME_S,
            },
            &jsonwebtoken::EncodingKey::from_secret(secret.as_bytes()),
        )
        .map_err(|error| GatewayError::Config(format!("cannot create the dev token: {error}")))?;
        let token_path = dir.join(DEV_TOKEN_FILE);
        write_private(&token_path, format!("{token}\n").as_bytes())?;
        tracing::warn!(
            token_file = %token_path.display(),
            "INSECURE DEV MODE: no credentials configured, accepting HS256 tokens signed with a \
             generated secret; use the token in the token file (client id `dev`). Never run \
             like this in production"
        );
        material.jwt_secret = Some(secret.into_bytes());
    }
    if needs_signer {
        let key_path = dir.join(DEV_SIGNING_KEY_FILE);
        let signer = if key_path.exists() {
            load_signer(&key_path)?
        } else {
            let signer = Signer::generate();
            let pem = signer
                .to_pkcs8_pem()
                .map_err(|error| GatewayError::Config(error.to_string()))?;
            write_private(&key_path, pem.as_bytes())?;
            signer
        };
        tracing::warn!(
            key_file = %key_path.display(),
            key_id = signer.key_id(),
            "INSECURE DEV MODE: signing results with a generated key; configure \
             --signing-key-file in production"
        );
        material.signer = Some(signer);
    }
    Ok(material)
}

/// Reads an Ed25519 PKCS#8 PEM signing key.
pub fn load_signer(path: &Path) -> Result<Signer, GatewayError> {
    let pem = std::fs::read_to_string(path).map_err(|error| io_error(path, error))?;
    Signer::from_pkcs8_pem(&pem)
        .map_err(|error| GatewayError::Config(format!("{}: {error}", path.display())))
}

fn io_error(path: &Path, error: std::io::Error) -> GatewayError {
    GatewayError::Config(format!("{}: {error}", path.display()))
}

/// Writes a file only its owner can read.
fn write_private(path: &Path, contents: &[u8]) -> Result<(), GatewayError> {
    use std::io::Write as _;
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create(true).truncate(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt as _;
        options.mode(0o600);
    }
    let mut file = options.open(path).map_err(|error| io_error(path, error))?;
    file.write_all(contents)
        .map_err(|error| io_error(path, error))
}
