//! The gateway's configuration: every setting is a flag and an environment variable, checked and
//! parsed once at start into a [`ValidConfig`] (backend URLs included), the only thing a gateway
//! is built from. Below it in the module graph is only `error`.

use std::fmt;
use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::time::Duration;

use clap::{Parser, Subcommand, ValueEnum};
use faceproof_runtime::{MetricsAddr, TelemetryArgs};

use crate::error::{Backend, GatewayError};

/// faceproof gateway: the public face verification API (gRPC and REST), in front of the matcher
/// and liveness services. Every flag can also be set by the environment variable shown.
#[derive(Debug, Parser)]
#[command(
    name = "faceproof-gateway",
    version,
    args_conflicts_with_subcommands = true,
    args_override_self = true
)]
pub struct GatewayCli {
    #[command(flatten)]
    pub config: Config,
    #[command(subcommand)]
    pub tool: Option<Tool>,
}

/// Helpers that do not start the server.
#[derive(Debug, Subcommand)]
pub enum Tool {
    /// Read an API key from stdin and print the SHA-256 that the API key file stores.
    HashApiKey,
    /// Generate a random API key for a client: prints the key (give it to the client) and the
    /// line to append to the API key file.
    NewApiKey {
        /// The client id the key authenticates as.
        client_id: String,
    },
}

/// The server's settings.
#[derive(Clone, clap::Args)]
pub struct Config {
    /// Address of the gRPC API.
    #[arg(long, env = "FACEPROOF_GRPC_ADDR", default_value = "0.0.0.0:50051")]
    pub grpc_addr: SocketAddr,

    /// Address of the REST API (`POST /v2/face-recognition/compare-with-liveness`).
    #[arg(long, env = "FACEPROOF_HTTP_ADDR", default_value = "0.0.0.0:8080")]
    pub http_addr: SocketAddr,

    /// Matcher endpoints (comma-separated `http://host:port` URLs). A DNS name is resolved to
    /// every replica (a Kubernetes headless Service) and re-resolved every --backend-refresh-ms;
    /// each request goes to the less loaded of two healthy replicas picked at random.
    #[arg(
        long = "matcher-url",
        env = "FACEPROOF_MATCHER_URLS",
        value_delimiter = ',',
        default_value = "http://127.0.0.1:50052"
    )]
    pub matcher_urls: Vec<String>,

    /// Liveness endpoints (comma-separated `http://host:port` URLs); a DNS name is resolved to
    /// every replica, balanced as --matcher-url.
    #[arg(
        long = "liveness-url",
        env = "FACEPROOF_LIVENESS_URLS",
        value_delimiter = ',',
        default_value = "http://127.0.0.1:50053"
    )]
    pub liveness_urls: Vec<String>,

    /// Time allowed to open a connection to a model service before it counts as down.
    #[arg(
        long,
        env = "FACEPROOF_BACKEND_CONNECT_TIMEOUT_MS",
        default_value_t = 1000
    )]
    pub backend_connect_timeout_ms: u64,

    /// How often the model services' names are re-resolved and every replica's grpc.health.v1
    /// status is checked, in milliseconds (50 at least).
    #[arg(long, env = "FACEPROOF_BACKEND_REFRESH_MS", default_value_t = 5000)]
    pub backend_refresh_ms: u64,

    /// Overall deadline of a FAST request (matcher and liveness together), in milliseconds.
    #[arg(long, env = "FACEPROOF_DEADLINE_FAST_MS", default_value_t = 3000)]
    pub deadline_fast_ms: u64,

    /// Overall deadline of an ACCURATE request, in milliseconds.
    #[arg(long, env = "FACEPROOF_DEADLINE_ACCURATE_MS", default_value_t = 6000)]
    pub deadline_accurate_ms: u64,

    /// JWT signature algorithm accepted (pinned: tokens with any other `alg` are refused).
    #[arg(long, env = "FACEPROOF_JWT_ALGORITHM", value_enum)]
    pub jwt_algorithm: Option<JwtAlgorithm>,

    /// File holding the HS256 shared secret (at least 32 bytes).
    #[arg(long, env = "FACEPROOF_JWT_SECRET_FILE")]
    pub jwt_secret_file: Option<PathBuf>,

    /// PEM public key file that verifies EdDSA, RS256 or ES256 tokens.
    #[arg(long, env = "FACEPROOF_JWT_PUBLIC_KEY_FILE")]
    pub jwt_public_key_file: Option<PathBuf>,

    /// Required `iss` claim, if set.
    #[arg(long, env = "FACEPROOF_JWT_ISSUER")]
    pub jwt_issuer: Option<String>,

    /// Required `aud` claim, if set.
    #[arg(long, env = "FACEPROOF_JWT_AUDIENCE")]
    pub jwt_audience: Option<String>,

    /// Clock skew tolerated on `exp` and `nbf`, in seconds.
    #[arg(long, env = "FACEPROOF_JWT_LEEWAY_S", default_value_t = 30)]
    pub jwt_leeway_s: u64,

    /// API key file: one `client_id sha256hex` line per key (only hashes are stored; see
    /// `faceproof-gateway hash-api-key`). Blank lines and `#` comments are ignored.
    #[arg(long, env = "FACEPROOF_API_KEYS_FILE")]
    pub api_keys_file: Option<PathBuf>,

    /// Ed25519 PKCS#8 PEM private key that signs results (`openssl genpkey -algorithm ed25519`).
    #[arg(long, env = "FACEPROOF_SIGNING_KEY_FILE")]
    pub signing_key_file: Option<PathBuf>,

    /// Development only: without credentials or signing key configured, generate an HS256 secret,
    /// a token and a signing key under --data-dir instead of refusing to start. Never in production.
    #[arg(long, env = "FACEPROOF_INSECURE_DEV", default_value_t = false)]
    pub insecure_dev: bool,

    /// Where --insecure-dev keeps its generated secret, token and signing key.
    #[arg(long, env = "FACEPROOF_DATA_DIR", default_value = ".faceproof")]
    pub data_dir: PathBuf,

    /// Sustained requests per second allowed to each client (0 disables rate limiting).
    #[arg(long, env = "FACEPROOF_RATE_LIMIT_PER_SECOND", default_value_t = 10.0)]
    pub rate_limit_per_second: f64,

    /// Requests a client may send at once above its sustained rate.
    #[arg(long, env = "FACEPROOF_RATE_LIMIT_BURST", default_value_t = 20)]
    pub rate_limit_burst: u32,

    /// Requests each client may have in flight at this gateway at once, besides the rate limit
    /// (0 disables it); more get RESOURCE_EXHAUSTED `too_many_in_flight` at once. The default,
    /// 4, is about the sustained rate limit times a FAST request's time, and keeps one client
    /// from holding every inference worker of a model service (see docs/configuration.md).
    #[arg(
        long,
        env = "FACEPROOF_MAX_IN_FLIGHT_PER_CLIENT",
        default_value_t = crate::in_flight::DEFAULT_MAX_IN_FLIGHT_PER_CLIENT
    )]
    pub max_in_flight_per_client: usize,

    /// Most gallery images per request.
    #[arg(long, env = "FACEPROOF_MAX_GALLERY", default_value_t = 10)]
    pub max_gallery: usize,

    /// Most bytes per image.
    #[arg(long, env = "FACEPROOF_MAX_IMAGE_BYTES", default_value_t = 8 * 1024 * 1024)]
    pub max_image_bytes: usize,

    /// Most pixels (width x height) per image, read from the header before any decoding.
    #[arg(long, env = "FACEPROOF_MAX_IMAGE_PIXELS", default_value_t = 40_000_000)]
    pub max_image_pixels: u64,

    /// Browser origins allowed to call the REST API (CORS), comma-separated, e.g.
    /// `https://app.example.com`; `*` allows any origin. Empty (the default): CORS is off.
    #[arg(
        long = "cors-allowed-origin",
        env = "FACEPROOF_CORS_ALLOWED_ORIGINS",
        value_delimiter = ','
    )]
    pub cors_allowed_origins: Vec<String>,

    /// Time given to in-flight requests to finish after SIGTERM or ctrl-c, in milliseconds.
    #[arg(long, env = "FACEPROOF_SHUTDOWN_GRACE_MS", default_value_t = 10_000)]
    pub shutdown_grace_ms: u64,

    /// Address of the Prometheus endpoint (`GET /metrics`); `off` disables it.
    #[arg(long, env = "FACEPROOF_METRICS_ADDR", default_value = DEFAULT_METRICS_ADDR)]
    pub metrics_addr: MetricsAddr,

    /// Logs (format, filter) and trace export.
    #[command(flatten)]
    pub telemetry: TelemetryArgs,
}

/// Prometheus scrape address (the matcher uses 9465, liveness 9466).
pub const DEFAULT_METRICS_ADDR: &str = "0.0.0.0:9464";

/// The shortest --backend-refresh-ms accepted.
pub const MIN_BACKEND_REFRESH_MS: u64 = 50;

/// JWT algorithms the gateway can be pinned to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum JwtAlgorithm {
    #[value(name = "HS256")]
    Hs256,
    #[value(name = "EdDSA")]
    EdDsa,
    #[value(name = "RS256")]
    Rs256,
    #[value(name = "ES256")]
    Es256,
}

impl JwtAlgorithm {
    pub fn as_jsonwebtoken(self) -> jsonwebtoken::Algorithm {
        match self {
            Self::Hs256 => jsonwebtoken::Algorithm::HS256,
            Self::EdDsa => jsonwebtoken::Algorithm::EdDSA,
            Self::Rs256 => jsonwebtoken::Algorithm::RS256,
            Self::Es256 => jsonwebtoken::Algorithm::ES256,
        }
    }

    /// The `alg` header value of tokens signed with this algorithm.
    pub fn header_name(self) -> &'static str {
        match self {
            Self::Hs256 => "HS256",
            Self::EdDsa => "EdDSA",
            Self::Rs256 => "RS256",
            Self::Es256 => "ES256",
        }
    }
}

/// Paths and identities are fine to log; nothing secret is held here, but the key and secret
/// files are still shown only by path.
impl fmt::Debug for Config {
    fn fmt(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
        formatter
            .debug_struct("Config")
            .field("grpc_addr", &self.grpc_addr)
            .field("http_addr", &self.http_addr)
            .field("matcher_urls", &self.matcher_urls)
            .field("liveness_urls", &self.liveness_urls)
            .field(
                "backend_connect_timeout_ms",
                &self.backend_connect_timeout_ms,
            )
            .field("backend_refresh_ms", &self.backend_refresh_ms)
            .field("deadline_fast_ms", &self.deadline_fast_ms)
            .field("deadline_accurate_ms", &self.deadline_accurate_ms)
            .field("jwt_algorithm", &self.jwt_algorithm)
            .field(
                "jwt_secret_file",
                &self.jwt_secret_file.as_ref().map(|_| "<redacted path>"),
            )
            .field("jwt_public_key_file", &self.jwt_public_key_file)
            .field("jwt_issuer", &self.jwt_issuer)
            .field("jwt_audience", &self.jwt_audience)
            .field("jwt_leeway_s", &self.jwt_leeway_s)
            .field("api_keys_file", &self.api_keys_file)
            .field("signing_key_file", &self.signing_key_file)
            .field("insecure_dev", &self.insecure_dev)
            .field("data_dir", &self.data_dir)
            .field("rate_limit_per_second", &self.rate_limit_per_second)
            .field("rate_limit_burst", &self.rate_limit_burst)
            .field("max_in_flight_per_client", &self.max_in_flight_per_client)
            .field("max_gallery", &self.max_gallery)
            .field("max_image_bytes", &self.max_image_bytes)
            .field("max_image_pixels", &self.max_image_pixels)
            .field("cors_allowed_origins", &self.cors_allowed_origins)
            .field("shutdown_grace_ms", &self.shutdown_grace_ms)
            .field("metrics_addr", &self.metrics_addr)
            .field("telemetry", &self.telemetry)
            .finish()
    }
}

/// Where a configured backend URL points: an address, or a name to resolve.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum BackendHost {
    Ip(IpAddr),
    Name(String),
}

/// One model service URL (`http://host[:port]`), parsed once at start.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BackendUrl {
    /// As configured, trimmed (credentials are refused, so it is safe to log).
    pub url: String,
    pub host: BackendHost,
    pub port: u16,
}

impl BackendUrl {
    /// Parses a URL given to `--matcher-url` or `--liveness-url` (the flag of `service`); anything
    /// but `http://host[:port]` is a configuration error naming the flag.
    pub fn parse(service: Backend, url: &str) -> Result<Self, GatewayError> {
        let url = url.trim();
        let flag = service.url_flag();
        // First, before any message quotes the URL: credentials must not reach the logs.
        let after_scheme = url.split_once("://").map_or(url, |(_, rest)| rest);
        let authority = after_scheme
            .split(['/', '?', '#'])
            .next()
            .unwrap_or_default();
        if authority.contains('@') {
            return Err(GatewayError::Config(format!(
                "{flag}: bad {service} URL: credentials in the URL are not supported (they would \
                 be dropped, not sent)"
            )));
        }
        let bad =
            |why: &str| GatewayError::Config(format!("{flag}: bad {service} URL {url:?}: {why}"));
        let uri: http::Uri = url.parse().map_err(|error| bad(&format!("{error}")))?;
        match uri.scheme_str() {
            Some("http") => {}
            Some(_) => {
                return Err(bad(
                    "only http:// is supported (terminate TLS in front of the model services)",
                ));
            }
            None => return Err(bad("a scheme is needed, e.g. http://matcher:50052")),
        }
        if uri
            .path_and_query()
            .is_some_and(|path| path.as_str() != "/")
        {
            return Err(bad("a path is not supported"));
        }
        if uri.port_u16() == Some(0) {
            return Err(bad("port 0 is not a port to connect to"));
        }
        let host = uri
            .host()
            .filter(|host| !host.is_empty())
            .ok_or_else(|| bad("no host"))?;
        let bare = host.trim_start_matches('[').trim_end_matches(']');
        let host = match bare.parse::<IpAddr>() {
            Ok(ip) => BackendHost::Ip(ip),
            Err(_) => BackendHost::Name(host.to_owned()),
        };
        Ok(Self {
            url: url.to_owned(),
            host,
            port: uri.port_u16().unwrap_or(80),
        })
    }

    /// Every URL of one backend flag: at least one, none empty, each parsed.
    fn parse_all(service: Backend, urls: &[String]) -> Result<Vec<Self>, GatewayError> {
        if urls.is_empty() || urls.iter().any(|url| url.trim().is_empty()) {
            return Err(GatewayError::Config(format!(
                "{} needs at least one non-empty URL",
                service.url_flag()
            )));
        }
        urls.iter().map(|url| Self::parse(service, url)).collect()
    }
}

/// A [`Config`] that passed every check, with its backend URLs parsed: what a gateway is built
/// from, so nothing downstream checks or parses again.
#[derive(Debug, Clone)]
pub struct ValidConfig {
    config: Config,
    matcher_urls: Vec<BackendUrl>,
    liveness_urls: Vec<BackendUrl>,
}

impl ValidConfig {
    pub fn config(&self) -> &Config {
        &self.config
    }

    /// The parsed URLs of one model service.
    pub fn backend_urls(&self, service: Backend) -> &[BackendUrl] {
        match service {
            Backend::Matcher => &self.matcher_urls,
            Backend::Liveness => &self.liveness_urls,
        }
    }
}

/// What a gateway can be built from: a [`Config`], checked and parsed on the way, or a
/// [`ValidConfig`], already checked and parsed.
pub trait IntoValidConfig {
    fn into_valid(self) -> Result<ValidConfig, GatewayError>;
}

impl IntoValidConfig for Config {
    fn into_valid(self) -> Result<ValidConfig, GatewayError> {
        Config::into_valid(self)
    }
}

impl IntoValidConfig for ValidConfig {
    fn into_valid(self) -> Result<ValidConfig, GatewayError> {
        Ok(self)
    }
}

/// Request limits, checked by validation.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    pub max_gallery: usize,
    pub max_image_bytes: usize,
    pub max_image_pixels: u64,
}

impl Limits {
    /// The largest request message that can be valid: every image at its limit plus room for the
    /// other fields and framing. Bigger messages are refused before they are buffered.
    pub fn max_message_bytes(&self) -> usize {
        const SLACK: usize = 64 * 1024;
        self.max_image_bytes
            .saturating_mul(self.max_gallery.saturating_add(1))
            .saturating_add(SLACK)
    }

    /// The REST body limit: base64 grows the images by 4/3 (plus data-URL prefixes).
    pub fn max_rest_body_bytes(&self) -> usize {
        self.max_message_bytes() / 3 * 4 + 64 * 1024
    }
}

impl Config {
    /// Checks the values that clap cannot (ranges and combinations) without keeping anything:
    /// for tools that only ask whether a configuration would start.
    pub fn validate(&self) -> Result<(), GatewayError> {
        self.check().map(drop)
    }

    /// Checks and parses the configuration, once, into what a gateway is built from.
    pub fn into_valid(self) -> Result<ValidConfig, GatewayError> {
        let (matcher_urls, liveness_urls) = self.check()?;
        Ok(ValidConfig {
            config: self,
            matcher_urls,
            liveness_urls,
        })
    }

    /// Every check, in one place; returns the parsed matcher and liveness URLs.
    fn check(&self) -> Result<(Vec<BackendUrl>, Vec<BackendUrl>), GatewayError> {
        let invalid = |message: String| Err(GatewayError::Config(message));
        let matcher_urls = BackendUrl::parse_all(Backend::Matcher, &self.matcher_urls)?;
        let liveness_urls = BackendUrl::parse_all(Backend::Liveness, &self.liveness_urls)?;
        if self.deadline_fast_ms == 0 || self.deadline_accurate_ms == 0 {
            return invalid("deadlines must be above 0 ms".into());
        }
        if self.backend_connect_timeout_ms == 0 {
            return invalid("--backend-connect-timeout-ms must be above 0".into());
        }
        // Every round resolves DNS and probes every replica: a few ms would be a busy loop.
        if self.backend_refresh_ms < MIN_BACKEND_REFRESH_MS {
            return invalid(format!(
                "--backend-refresh-ms must be at least {MIN_BACKEND_REFRESH_MS}"
            ));
        }
        if !self.rate_limit_per_second.is_finite() || self.rate_limit_per_second < 0.0 {
            return invalid(format!(
                "--rate-limit-per-second must be 0 (off) or positive, got {}",
                self.rate_limit_per_second
            ));
        }
        if self.rate_limit_per_second > 0.0 && self.rate_limit_burst == 0 {
            return invalid("--rate-limit-burst must be at least 1".into());
        }
        if self.max_gallery == 0 {
            return invalid("--max-gallery must be at least 1".into());
        }
        if self.max_image_bytes == 0 || self.max_image_pixels == 0 {
            return invalid("image limits must be above 0".into());
        }
        match self.jwt_algorithm {
            Some(JwtAlgorithm::Hs256) => {
                if self.jwt_secret_file.is_none() {
                    return invalid("--jwt-algorithm HS256 needs --jwt-secret-file".into());
                }
                if self.jwt_public_key_file.is_some() {
                    return invalid("--jwt-public-key-file is not used with HS256".into());
                }
            }
            Some(algorithm) => {
                if self.jwt_public_key_file.is_none() {
                    return invalid(format!(
                        "--jwt-algorithm {} needs --jwt-public-key-file",
                        algorithm.header_name()
                    ));
                }
                if self.jwt_secret_file.is_some() {
                    return invalid("--jwt-secret-file is only used with HS256".into());
                }
            }
            None => {
                if self.jwt_secret_file.is_some() || self.jwt_public_key_file.is_some() {
                    return invalid("a JWT key file is set but --jwt-algorithm is not".into());
                }
            }
        }
        let has_credentials = self.jwt_algorithm.is_some() || self.api_keys_file.is_some();
        if !self.insecure_dev {
            if !has_credentials {
                return invalid(
                    "no client credentials configured: set --jwt-algorithm with its key file \
                     and/or --api-keys-file (or --insecure-dev for local development only)"
                        .into(),
                );
            }
            if self.signing_key_file.is_none() {
                return invalid(
                    "no --signing-key-file configured (or --insecure-dev for local development only)"
                        .into(),
                );
            }
        }
        Ok((matcher_urls, liveness_urls))
    }

    pub fn limits(&self) -> Limits {
        Limits {
            max_gallery: self.max_gallery,
            max_image_bytes: self.max_image_bytes,
            max_image_pixels: self.max_image_pixels,
        }
    }

    pub fn deadline_fast(&self) -> Duration {
        Duration::from_millis(self.deadline_fast_ms)
    }

    pub fn deadline_accurate(&self) -> Duration {
        Duration::from_millis(self.deadline_accurate_ms)
    }

    pub fn backend_connect_timeout(&self) -> Duration {
        Duration::from_millis(self.backend_connect_timeout_ms)
    }

    pub fn backend_refresh(&self) -> Duration {
        Duration::from_millis(self.backend_refresh_ms)
    }

    pub fn shutdown_grace(&self) -> Duration {
        Duration::from_millis(self.shutdown_grace_ms)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(args: &[&str]) -> Config {
        let mut all = vec!["faceproof-gateway"];
        all.extend_from_slice(args);
        GatewayCli::try_parse_from(all).expect("parses").config
    }

    #[test]
    fn refuses_to_start_without_credentials() {
        let error = parse(&["--signing-key-file", "k.pem"])
            .validate()
            .unwrap_err();
        assert!(
            error.to_string().contains("no client credentials"),
            "{error}"
        );
        parse(&["--insecure-dev"])
            .validate()
            .expect("dev mode starts");
    }

    #[test]
    fn requires_the_key_that_matches_the_algorithm() {
        let error = parse(&[
            "--jwt-algorithm",
            "EdDSA",
            "--jwt-secret-file",
            "s",
            "--signing-key-file",
            "k",
        ])
        .validate()
        .unwrap_err();
        assert!(
            error.to_string().contains("--jwt-public-key-file"),
            "{error}"
        );
        parse(&[
            "--jwt-algorithm",
            "HS256",
            "--jwt-secret-file",
            "s",
            "--signing-key-file",
            "k",
        ])
        .validate()
        .expect("valid");
    }

    #[test]
    fn several_backend_urls_are_accepted() {
        let config = parse(&["--insecure-dev", "--matcher-url", "http://a:1,http://b:2"]);
        assert_eq!(config.matcher_urls.len(), 2);
    }

    #[test]
    fn backend_urls_and_refresh_are_checked() {
        let config = parse(&["--insecure-dev"]);
        assert_eq!(config.backend_refresh(), Duration::from_secs(5));
        for (flag, value, expected) in [
            ("--matcher-url", "https://matcher:50052", "bad matcher URL"),
            ("--liveness-url", "liveness:50053", "bad liveness URL"),
            ("--backend-refresh-ms", "0", "--backend-refresh-ms"),
            ("--backend-refresh-ms", "1", "at least 50"),
        ] {
            let error = parse(&["--insecure-dev", flag, value])
                .validate()
                .unwrap_err();
            assert!(error.to_string().contains(expected), "{error}");
        }
        parse(&[
            "--insecure-dev",
            "--matcher-url",
            "http://faceproof-matcher:50052,http://10.0.0.7:50052",
        ])
        .validate()
        .expect("names and addresses");
    }

    #[test]
    fn message_limit_fits_a_full_request() {
        let limits = Limits {
            max_gallery: 10,
            max_image_bytes: 8 << 20,
            max_image_pixels: 1,
        };
        assert!(limits.max_message_bytes() > 11 * (8 << 20));
        assert!(limits.max_rest_body_bytes() > limits.max_message_bytes() * 4 / 3);
    }

    #[test]
    fn urls_parse_into_names_and_addresses() {
        let target =
            BackendUrl::parse(Backend::Matcher, " http://faceproof-matcher:50052 ").unwrap();
        assert_eq!(target.host, BackendHost::Name("faceproof-matcher".into()));
        assert_eq!(target.port, 50052);
        let target = BackendUrl::parse(Backend::Matcher, "http://10.1.2.3:7").unwrap();
        assert_eq!(target.host, BackendHost::Ip("10.1.2.3".parse().unwrap()));
        let target = BackendUrl::parse(Backend::Matcher, "http://[::1]:7").unwrap();
        assert_eq!(target.host, BackendHost::Ip("::1".parse().unwrap()));
        assert_eq!(
            BackendUrl::parse(Backend::Matcher, "http://matcher")
                .unwrap()
                .port,
            80
        );
        for bad in [
            "https://matcher:1",
            "matcher:50052",
            "http://matcher:1/v1",
            "not a url",
            "http://:1",
            "http://user:secret@matcher:1",
            "https://user:secret@matcher:1",
            "http://user:secret@matcher:1/path",
            "http://user:secret@matcher:99999",
            "user:secret@matcher:1",
            "http://matcher:0",
        ] {
            let error = BackendUrl::parse(Backend::Liveness, bad).unwrap_err();
            assert!(
                error.to_string().contains("bad liveness URL"),
                "{bad}: {error}"
            );
            assert!(
                error
                    .to_string()
                    .starts_with("configuration: --liveness-url: "),
                "{error}"
            );
            assert!(!error.to_string().contains("secret"), "{error}");
        }
    }
}
