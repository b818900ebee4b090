//! Authentication: a Bearer JWT (one pinned algorithm, `exp` and `sub` required) or an API key
//! (only its SHA-256 is stored). A tower layer puts the caller's [`ClientId`] into the request
//! extensions; health, reflection and GetSigningKeys need no token. Tokens are never logged.

use std::collections::HashMap;
use std::future::Future;
use std::path::Path;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use http::HeaderValue;
use jsonwebtoken::errors::ErrorKind;
use jsonwebtoken::{DecodingKey, Validation};
use serde::Deserialize;
use sha2::{Digest, Sha256};

use crate::config::{Config, JwtAlgorithm};
pub use crate::error::{AuthError, MAX_AUTHORIZATION_BYTES, MAX_SUBJECT_BYTES};
use crate::error::{GatewayError, ServiceError};

/// The authenticated caller: the JWT `sub`, or the client id an API key is registered to.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct ClientId(pub String);

/// A client id must read the same everywhere it is shown: no control characters (which break
/// logs) and no bidirectional formatting characters (which reorder the text a reader sees,
/// e.g. U+202E RIGHT-TO-LEFT OVERRIDE), and short.
pub fn is_acceptable_subject(subject: &str) -> bool {
    !subject.trim().is_empty()
        && subject.len() <= MAX_SUBJECT_BYTES
        && !subject
            .chars()
            .any(|c| c.is_control() || is_bidi_control(c))
}

/// U+061C ARABIC LETTER MARK, U+200E/F LRM/RLM, U+202A-202E embeddings and overrides,
/// U+2066-2069 isolates.
fn is_bidi_control(c: char) -> bool {
    matches!(c, '\u{061C}' | '\u{200E}' | '\u{200F}' | '\u{202A}'..='\u{202E}' | '\u{2066}'..='\u{2069}')
}

struct JwtVerifier {
    algorithm: JwtAlgorithm,
    key: DecodingKey,
    validation: Validation,
}

#[derive(Deserialize)]
struct Claims {
    sub: String,
}

/// Checks Bearer tokens against the configured JWT key and API key hashes.
pub struct Authenticator {
    jwt: Option<JwtVerifier>,
    api_keys: HashMap<[u8; 32], String>,
}

impl std::fmt::Debug for Authenticator {
    fn fmt(&self, formatter: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        formatter
            .debug_struct("Authenticator")
            .field("jwt_algorithm", &self.jwt.as_ref().map(|jwt| jwt.algorithm))
            .field("api_keys", &self.api_keys.len())
            .finish()
    }
}

/// HS256 secrets shorter than this are refused: they can be brute-forced from one token.
const MIN_HS256_SECRET_BYTES: usize = 32;

impl Authenticator {
    /// Builds from the configuration; `dev_secret` is the generated HS256 secret of
    /// `--insecure-dev` when no credentials are configured.
    pub fn from_config(config: &Config, dev_secret: Option<&[u8]>) -> Result<Self, GatewayError> {
        let jwt = match (config.jwt_algorithm, dev_secret) {
            (Some(algorithm), _) => Some(Self::jwt_verifier(config, algorithm)?),
            (None, Some(secret)) => Some(JwtVerifier {
                algorithm: JwtAlgorithm::Hs256,
                key: DecodingKey::from_secret(secret),
                validation: validation(config, JwtAlgorithm::Hs256),
            }),
            (None, None) => None,
        };
        let api_keys = match &config.api_keys_file {
            Some(path) => load_api_keys(path)?,
            None => HashMap::new(),
        };
        if jwt.is_none() && api_keys.is_empty() {
            return Err(GatewayError::Config(
                "no client credentials: configure a JWT key or a non-empty API key file".into(),
            ));
        }
        Ok(Self { jwt, api_keys })
    }

    fn jwt_verifier(config: &Config, algorithm: JwtAlgorithm) -> Result<JwtVerifier, GatewayError> {
        let key = match algorithm {
            JwtAlgorithm::Hs256 => {
                let path = config
                    .jwt_secret_file
                    .as_deref()
                    .ok_or_else(|| GatewayError::Config("HS256 needs --jwt-secret-file".into()))?;
                let secret = read_file(path, "JWT secret")?;
                let secret = trim_trailing_newline(&secret);
                if secret.len() < MIN_HS256_SECRET_BYTES {
                    return Err(GatewayError::Config(format!(
                        "the JWT secret in {} has {} bytes, at least {MIN_HS256_SECRET_BYTES} are needed",
                        path.display(),
                        secret.len()
                    )));
                }
                DecodingKey::from_secret(secret)
            }
            other => {
                let path = config.jwt_public_key_file.as_deref().ok_or_else(|| {
                    GatewayError::Config("this algorithm needs --jwt-public-key-file".into())
                })?;
                let pem = read_file(path, "JWT public key")?;
                let parsed = match other {
                    JwtAlgorithm::EdDsa => DecodingKey::from_ed_pem(&pem),
                    JwtAlgorithm::Rs256 => DecodingKey::from_rsa_pem(&pem),
                    _ => DecodingKey::from_ec_pem(&pem),
                };
                parsed.map_err(|error| {
                    GatewayError::Config(format!(
                        "{} is not a {} public key PEM: {error}",
                        path.display(),
                        other.header_name()
                    ))
                })?
            }
        };
        Ok(JwtVerifier {
            algorithm,
            key,
            validation: validation(config, algorithm),
        })
    }

    pub fn jwt_algorithm(&self) -> Option<JwtAlgorithm> {
        self.jwt.as_ref().map(|jwt| jwt.algorithm)
    }

    pub fn api_key_count(&self) -> usize {
        self.api_keys.len()
    }

    /// Authenticates an `authorization` header value.
    pub fn authenticate(&self, header: Option<&HeaderValue>) -> Result<ClientId, AuthError> {
        let header = header.ok_or(AuthError::MissingToken)?;
        if header.len() > MAX_AUTHORIZATION_BYTES {
            return Err(AuthError::HeaderTooLarge);
        }
        let header = header.to_str().map_err(|_| AuthError::MalformedToken)?;
        let (scheme, token) = header
            .trim()
            .split_once(' ')
            .ok_or(AuthError::MalformedToken)?;
        if !scheme.eq_ignore_ascii_case("bearer") {
            return Err(AuthError::MalformedToken);
        }
        let token = token.trim();
        if token.is_empty() {
            return Err(AuthError::MissingToken);
        }
        if let Some(jwt) = &self.jwt
            && token.split('.').count() == 3
        {
            return verify_jwt(jwt, token);
        }
        if self.api_keys.is_empty() {
            return Err(AuthError::MalformedToken);
        }
        let digest: [u8; 32] = Sha256::digest(token.as_bytes()).into();
        self.api_keys
            .get(&digest)
            .map(|client| ClientId(client.clone()))
            .ok_or(AuthError::UnknownApiKey)
    }
}

fn validation(config: &Config, algorithm: JwtAlgorithm) -> Validation {
    let mut validation = Validation::new(algorithm.as_jsonwebtoken());
    validation.algorithms = vec![algorithm.as_jsonwebtoken()];
    validation.leeway = config.jwt_leeway_s;
    validation.validate_exp = true;
    validation.validate_nbf = true;
    let mut required = vec!["exp", "sub"];
    if let Some(issuer) = &config.jwt_issuer {
        validation.set_issuer(&[issuer]);
        required.push("iss");
    }
    match &config.jwt_audience {
        Some(audience) => {
            validation.set_audience(&[audience]);
            required.push("aud");
        }
        None => validation.validate_aud = false,
    }
    validation.set_required_spec_claims(&required);
    validation
}

fn verify_jwt(jwt: &JwtVerifier, token: &str) -> Result<ClientId, AuthError> {
    // Read `alg` ourselves first: `none` and algorithms jsonwebtoken does not know must still be
    // reported as a refused algorithm, not as a malformed token.
    let header_segment = token.split('.').next().ok_or(AuthError::MalformedToken)?;
    let header_bytes = URL_SAFE_NO_PAD
        .decode(header_segment.trim_end_matches('='))
        .map_err(|_| AuthError::MalformedToken)?;
    let header: serde_json::Value =
        serde_json::from_slice(&header_bytes).map_err(|_| AuthError::MalformedToken)?;
    let algorithm = header
        .get("alg")
        .and_then(serde_json::Value::as_str)
        .ok_or(AuthError::MalformedToken)?;
    if algorithm != jwt.algorithm.header_name() {
        return Err(AuthError::AlgorithmNotAllowed);
    }
    let data =
        jsonwebtoken::decode::<Claims>(token, &jwt.key, &jwt.validation).map_err(|error| {
            match error.kind() {
                ErrorKind::ExpiredSignature => AuthError::TokenExpired,
                ErrorKind::InvalidSignature => AuthError::InvalidSignature,
                ErrorKind::InvalidAlgorithm => AuthError::AlgorithmNotAllowed,
                ErrorKind::InvalidIssuer
                | ErrorKind::InvalidAudience
                | ErrorKind::InvalidSubject
                | ErrorKind::ImmatureSignature
                | ErrorKind::MissingRequiredClaim(_) => AuthError::InvalidClaims,
                _ => AuthError::MalformedToken,
            }
        })?;
    if data.claims.sub.trim().is_empty() {
        return Err(AuthError::InvalidClaims);
    }
    if !is_acceptable_subject(&data.claims.sub) {
        return Err(AuthError::InvalidSubject);
    }
    Ok(ClientId(data.claims.sub))
}

fn read_file(path: &Path, what: &str) -> Result<Vec<u8>, GatewayError> {
    std::fs::read(path).map_err(|error| {
        GatewayError::Config(format!(
            "cannot read the {what} file {}: {error}",
            path.display()
        ))
    })
}

fn trim_trailing_newline(bytes: &[u8]) -> &[u8] {
    let mut end = bytes.len();
    while end > 0 && matches!(bytes[end - 1], b'\n' | b'\r') {
        end -= 1;
    }
    &bytes[..end]
}

/// The SHA-256 (lowercase hex) that the API key file stores for a key.
pub fn hash_api_key(key: &str) -> String {
    hex::encode(Sha256::digest(key.trim().as_bytes()))
}

/// Parses `client_id sha256hex` lines; blank lines and `#` comments are skipped.
pub fn parse_api_keys(text: &str, origin: &str) -> Result<HashMap<[u8; 32], String>, GatewayError> {
    let mut keys = HashMap::new();
    for (number, line) in text.lines().enumerate() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let bad = |why: &str| GatewayError::Config(format!("{origin} line {}: {why}", number + 1));
        let fields: Vec<&str> = line.split_whitespace().collect();
        let [client, digest_hex] = fields.as_slice() else {
            return Err(bad("expected `client_id sha256hex`"));
        };
        let digest: [u8; 32] = hex::decode(digest_hex)
            .ok()
            .and_then(|bytes| bytes.try_into().ok())
            .ok_or_else(|| bad("the hash is not 64 hex digits (a SHA-256)"))?;
        if keys.insert(digest, (*client).to_owned()).is_some() {
            return Err(bad("this key hash is listed twice"));
        }
    }
    Ok(keys)
}

fn load_api_keys(path: &Path) -> Result<HashMap<[u8; 32], String>, GatewayError> {
    let text = std::fs::read_to_string(path).map_err(|error| {
        GatewayError::Config(format!(
            "cannot read the API key file {}: {error}",
            path.display()
        ))
    })?;
    parse_api_keys(&text, &path.display().to_string())
}

/// gRPC paths that need no token.
const PUBLIC_GRPC_PATHS: &[&str] = &[
    "/grpc.health.v1.Health/",
    "/grpc.reflection.v1.ServerReflection/",
    "/grpc.reflection.v1alpha.ServerReflection/",
    "/faceproof.gateway.v1.FaceVerification/GetSigningKeys",
];

fn is_public_grpc_path(path: &str) -> bool {
    PUBLIC_GRPC_PATHS
        .iter()
        .any(|public| path.starts_with(public))
}

/// Tower layer that authenticates gRPC requests before they reach any service. It also turns
/// tonic's OUT_OF_RANGE for an oversized request message into RESOURCE_EXHAUSTED naming the
/// limit, the code the gRPC spec gives for "request larger than the server's maximum".
#[derive(Clone)]
pub struct GrpcAuthLayer {
    auth: Arc<Authenticator>,
    max_message_bytes: usize,
}

impl GrpcAuthLayer {
    pub fn new(auth: Arc<Authenticator>, max_message_bytes: usize) -> Self {
        Self {
            auth,
            max_message_bytes,
        }
    }
}

impl<S> tower::Layer<S> for GrpcAuthLayer {
    type Service = GrpcAuth<S>;

    fn layer(&self, inner: S) -> Self::Service {
        GrpcAuth {
            inner,
            auth: Arc::clone(&self.auth),
            max_message_bytes: self.max_message_bytes,
        }
    }
}

#[derive(Clone)]
pub struct GrpcAuth<S> {
    inner: S,
    auth: Arc<Authenticator>,
    max_message_bytes: usize,
}

type BoxFuture<T> = Pin<Box<dyn Future<Output = T> + Send + 'static>>;

impl<S, B, ResBody> tower::Service<http::Request<B>> for GrpcAuth<S>
where
    S: tower::Service<http::Request<B>, Response = http::Response<ResBody>>
        + Clone
        + Send
        + 'static,
    S::Future: Send + 'static,
    B: Send + 'static,
    ResBody: Default + Send + 'static,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = BoxFuture<Result<S::Response, S::Error>>;

    fn poll_ready(&mut self, context: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(context)
    }

    fn call(&mut self, mut request: http::Request<B>) -> Self::Future {
        // The clone that was polled ready is the one that must serve the call.
        let ready = self.inner.clone();
        let mut inner = std::mem::replace(&mut self.inner, ready);
        if !is_public_grpc_path(request.uri().path()) {
            match self
                .auth
                .authenticate(request.headers().get(http::header::AUTHORIZATION))
            {
                Ok(client) => {
                    request.extensions_mut().insert(client);
                }
                Err(error) => {
                    // The token itself is never logged.
                    tracing::info!(
                        reason = error.reason(),
                        path = request.uri().path(),
                        "request not authenticated"
                    );
                    let status = tonic::Status::from(ServiceError::Unauthenticated(error));
                    return Box::pin(async move { Ok(status.into_http()) });
                }
            }
        }
        let limit = self.max_message_bytes;
        Box::pin(async move {
            let response = inner.call(request).await?;
            Ok(rewrite_oversized_message(response, limit))
        })
    }
}

/// tonic answers a request message above `max_decoding_message_size` with OUT_OF_RANGE in the
/// response headers; nothing else in the gateway uses that code.
fn rewrite_oversized_message<B: Default>(
    response: http::Response<B>,
    limit: usize,
) -> http::Response<B> {
    let out_of_range = response
        .headers()
        .get("grpc-status")
        .is_some_and(|code| code.as_bytes() == b"11");
    if !out_of_range {
        return response;
    }
    let status = tonic::Status::from(ServiceError::MessageTooLarge { limit });
    status.into_http()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn api_key_file_stores_hashes_only() {
        let text = format!("# comment\n\nacme {}\n", hash_api_key("fp_secret"));
        let keys = parse_api_keys(&text, "test").expect("parses");
        assert_eq!(keys.len(), 1);
        assert!(keys.values().any(|client| client == "acme"));
        let error = parse_api_keys("acme nothex\n", "keys.txt").unwrap_err();
        assert!(error.to_string().contains("keys.txt line 1"), "{error}");
        assert!(parse_api_keys("onlyone\n", "k").is_err());
        let twice = format!("a {0}\nb {0}\n", hash_api_key("x"));
        assert!(parse_api_keys(&twice, "k").is_err());
    }

    #[test]
    fn public_paths_are_exactly_health_reflection_and_keys() {
        assert!(is_public_grpc_path("/grpc.health.v1.Health/Check"));
        assert!(is_public_grpc_path(
            "/faceproof.gateway.v1.FaceVerification/GetSigningKeys"
        ));
        assert!(!is_public_grpc_path(
            "/faceproof.gateway.v1.FaceVerification/CompareWithLiveness"
        ));
    }

    #[test]
    fn subjects_with_control_or_bidi_characters_or_too_long_are_refused() {
        assert!(is_acceptable_subject("acme-corp_01@example.com"));
        assert!(is_acceptable_subject("Zoë Müller"));
        assert!(is_acceptable_subject(&"a".repeat(MAX_SUBJECT_BYTES)));
        assert!(!is_acceptable_subject(&"a".repeat(MAX_SUBJECT_BYTES + 1)));
        for bad in [
            "acme\n",
            "a\u{0}b",
            "a\u{7f}",
            "a\u{85}",
            "a\u{061C}",
            "a\u{200E}",
            "a\u{200F}",
            "a\u{202A}",
            "a\u{202E}",
            "a\u{2066}",
            "a\u{2069}",
            " ",
        ] {
            assert!(!is_acceptable_subject(bad), "{bad:?}");
        }
    }

    #[test]
    fn an_authorization_header_over_8_kib_is_refused_before_parsing() {
        let auth = Authenticator {
            jwt: None,
            api_keys: HashMap::new(),
        };
        let header =
            HeaderValue::from_str(&format!("Bearer {}", "x".repeat(MAX_AUTHORIZATION_BYTES)))
                .unwrap();
        assert_eq!(
            auth.authenticate(Some(&header)),
            Err(AuthError::HeaderTooLarge)
        );
    }

    #[test]
    fn trailing_newlines_of_secret_files_are_ignored() {
        assert_eq!(trim_trailing_newline(b"abc\r\n"), b"abc");
        assert_eq!(trim_trailing_newline(b"abc"), b"abc");
    }
}
