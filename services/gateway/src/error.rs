//! The gateway's errors, at the bottom of its module graph (it imports no other module): what
//! stops it from starting ([`GatewayError`]) and what a request can fail with ([`ServiceError`],
//! [`AuthError`]), with the one mapping to a gRPC status and the one mapping to the reference
//! REST API's JSON errors.

use std::collections::HashMap;
use std::fmt;
use std::time::Duration;

use tonic::{Code, Status};
use tonic_types::{ErrorDetails, FieldViolation, StatusExt};

/// ErrorInfo domain of every error the gateway itself raises.
pub const ERROR_DOMAIN: &str = "faceproof.gateway";

/// The retry delay suggested for a backend's RESOURCE_EXHAUSTED that carries no RetryInfo: an
/// inference queue drains within about one request's time (a few hundred ms), and Retry-After
/// counts whole seconds.
pub const BACKEND_OVERLOAD_RETRY_AFTER: Duration = Duration::from_secs(1);

/// A model service the gateway calls.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backend {
    Matcher,
    Liveness,
}

impl Backend {
    pub fn name(self) -> &'static str {
        match self {
            Self::Matcher => "matcher",
            Self::Liveness => "liveness",
        }
    }

    /// The flag that configures this service's URLs.
    pub fn url_flag(self) -> &'static str {
        match self {
            Self::Matcher => "--matcher-url",
            Self::Liveness => "--liveness-url",
        }
    }
}

impl fmt::Display for Backend {
    fn fmt(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
        formatter.write_str(self.name())
    }
}

/// Errors that stop the gateway from starting or serving.
#[derive(Debug, thiserror::Error)]
pub enum GatewayError {
    #[error("configuration: {0}")]
    Config(String),
    #[error("cannot read a listener address: {0}")]
    Listener(#[source] std::io::Error),
    #[error("the {server} server failed: {detail}")]
    Serve {
        server: &'static str,
        detail: String,
    },
}

/// Why a request was not authenticated; `reason()` is the ErrorInfo reason.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum AuthError {
    #[error("missing `authorization: Bearer <token>`")]
    MissingToken,
    #[error("the authorization header is not a well-formed Bearer token")]
    MalformedToken,
    #[error("the token has expired")]
    TokenExpired,
    #[error("the token signature is invalid")]
    InvalidSignature,
    #[error("the token's signature algorithm is not the one this gateway accepts")]
    AlgorithmNotAllowed,
    #[error("unknown API key")]
    UnknownApiKey,
    #[error("the token's claims are not accepted (issuer, audience, not-before or subject)")]
    InvalidClaims,
    #[error("the authorization header is longer than {MAX_AUTHORIZATION_BYTES} bytes")]
    HeaderTooLarge,
    #[error(
        "the token's subject is not accepted: at most {MAX_SUBJECT_BYTES} bytes, no control or \
         bidirectional-formatting characters"
    )]
    InvalidSubject,
}

impl AuthError {
    pub fn reason(self) -> &'static str {
        match self {
            Self::MissingToken => "missing_token",
            Self::MalformedToken => "malformed_token",
            Self::TokenExpired => "token_expired",
            Self::InvalidSignature => "invalid_signature",
            Self::AlgorithmNotAllowed => "algorithm_not_allowed",
            Self::UnknownApiKey => "unknown_api_key",
            Self::InvalidClaims => "invalid_claims",
            Self::HeaderTooLarge => "authorization_header_too_large",
            Self::InvalidSubject => "invalid_subject",
        }
    }
}

/// Longest `authorization` header accepted, on REST and gRPC alike: a JWT with ordinary claims
/// is well under 2 KiB, and the header is read before anything else of the request.
pub const MAX_AUTHORIZATION_BYTES: usize = 8 * 1024;

/// Longest JWT `sub` accepted: it becomes the client id written into signed records and logs.
pub const MAX_SUBJECT_BYTES: usize = 256;

/// One invalid request field (`probe`, `gallery[3]`, `os`, ...).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Violation {
    pub field: String,
    pub description: String,
    /// Machine-readable reason, e.g. `out_of_range`, `unsupported_format`.
    pub reason: &'static str,
}

impl Violation {
    pub fn new(
        field: impl Into<String>,
        reason: &'static str,
        description: impl Into<String>,
    ) -> Self {
        Self {
            field: field.into(),
            description: description.into(),
            reason,
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ServiceError {
    #[error("{0}")]
    Unauthenticated(AuthError),
    #[error("rate limit exceeded: retry in {:.3} s", .retry_after.as_secs_f64())]
    RateLimited { retry_after: Duration },
    /// The client already has its limit of requests in flight at this gateway.
    #[error("too many requests in flight for this client (limit {limit}): retry when one ends")]
    TooManyInFlight { limit: usize, retry_after: Duration },
    #[error("invalid request: {}", describe(.0))]
    InvalidRequest(Vec<Violation>),
    /// REST only: an image string is not base64.
    #[error("undecodable image: {}", describe(.0))]
    UndecodableImage(Vec<Violation>),
    #[error("the {service} service is unavailable: {detail}")]
    BackendUnavailable { service: Backend, detail: String },
    #[error("the {service} service did not answer within the request deadline")]
    BackendDeadline { service: Backend },
    /// A backend answer that the caller must see as is (INVALID_ARGUMENT with its details,
    /// RESOURCE_EXHAUSTED, to which the gateway adds RetryInfo when the backend sent none).
    #[error("the {service} service refused the request: {}", .status.message())]
    BackendRejected { service: Backend, status: Status },
    #[error("the {service} service failed: {detail}")]
    BackendFailed { service: Backend, detail: String },
    #[error("the request message is larger than the gateway's limit of {limit} bytes")]
    MessageTooLarge { limit: usize },
    #[error("internal error: {0}")]
    Internal(String),
    /// REST only: the body could not be read off the connection.
    #[error("the request body could not be read: {0}")]
    UnreadableBody(String),
    /// REST only: the body is not one JSON object.
    #[error("the body is not one valid JSON object: {0}")]
    NotJson(String),
    /// REST only: a member name appears twice in one object.
    #[error("duplicate key \"{0}\": each member name may appear once per object")]
    DuplicateKey(String),
    /// REST only: the body is larger than the image limits allow, base64-encoded.
    #[error("the request body is larger than {limit} bytes (the image limits, base64-encoded)")]
    BodyTooLarge { limit: usize },
    /// REST only: no route at this path.
    #[error("no such path; the API is POST {api_path}")]
    NotFound { api_path: &'static str },
    /// REST only: the path exists, the method does not.
    #[error("{method} is not allowed on this path (see the Allow header)")]
    MethodNotAllowed { method: String },
}

/// A [`ServiceError`] as the REST API answers it: the reference API's error body
/// (`message`, `code`, `status`) plus our `reason` and `violations`, and `Retry-After`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RestError {
    pub status: http::StatusCode,
    pub code: &'static str,
    pub message: String,
    pub reason: String,
    pub violations: Vec<Violation>,
    /// Whole seconds, at least 1: for the overload answers only.
    pub retry_after_seconds: Option<u64>,
}

fn describe(violations: &[Violation]) -> String {
    violations
        .iter()
        .map(|violation| format!("{}: {}", violation.field, violation.description))
        .collect::<Vec<_>>()
        .join("; ")
}

fn error_info(reason: &str, metadata: HashMap<String, String>) -> ErrorDetails {
    ErrorDetails::with_error_info(reason, ERROR_DOMAIN, metadata)
}

impl ServiceError {
    /// The ErrorInfo reason.
    pub fn reason(&self) -> String {
        match self {
            Self::Unauthenticated(error) => error.reason().to_owned(),
            Self::RateLimited { .. } => "rate_limited".to_owned(),
            Self::TooManyInFlight { .. } => "too_many_in_flight".to_owned(),
            Self::InvalidRequest(_) => "invalid_request".to_owned(),
            Self::UndecodableImage(_) => "undecodable_base64".to_owned(),
            Self::BackendUnavailable { service, .. } => format!("{service}_unavailable"),
            Self::BackendDeadline { service } => format!("{service}_deadline_exceeded"),
            Self::BackendRejected { service, status } => status
                .get_error_details()
                .error_info()
                .map(|info| info.reason.clone())
                .filter(|reason| !reason.is_empty())
                .unwrap_or_else(|| match status.code() {
                    Code::ResourceExhausted => format!("{service}_overloaded"),
                    _ => format!("{service}_rejected"),
                }),
            Self::BackendFailed { service, .. } => format!("{service}_failed"),
            Self::MessageTooLarge { .. } => "message_too_large".to_owned(),
            Self::Internal(_) => "internal".to_owned(),
            Self::UnreadableBody(_) | Self::NotJson(_) => "malformed_request".to_owned(),
            Self::DuplicateKey(_) => "duplicate_key".to_owned(),
            Self::BodyTooLarge { .. } => "request_body_too_large".to_owned(),
            Self::NotFound { .. } => "not_found".to_owned(),
            Self::MethodNotAllowed { .. } => "method_not_allowed".to_owned(),
        }
    }

    /// The one mapping to the REST API's answer.
    pub fn to_rest(&self) -> RestError {
        RestError {
            status: self.http_status(),
            code: self.rest_code(),
            message: self.public_message(),
            reason: self.reason(),
            violations: self.violations(),
            retry_after_seconds: self
                .retry_after()
                .map(|retry_after| retry_after.as_secs_f64().ceil().max(1.0) as u64),
        }
    }

    /// Field violations to show the caller (ours, or the backend's BadRequest with each
    /// violation's own reason, else the ErrorInfo reason). A backend's fields are the public
    /// ones: the liveness service's `image` is the caller's `probe`.
    pub fn violations(&self) -> Vec<Violation> {
        match self {
            Self::InvalidRequest(violations) | Self::UndecodableImage(violations) => {
                violations.clone()
            }
            Self::BackendRejected { service, status } => {
                let details = status.get_error_details();
                let info_reason = details
                    .error_info()
                    .map(|info| info.reason.clone())
                    .unwrap_or_default();
                details
                    .bad_request()
                    .map(|bad_request| {
                        bad_request
                            .field_violations
                            .iter()
                            .map(|violation| Violation {
                                field: public_field(*service, &violation.field),
                                description: violation.description.clone(),
                                reason: known_reason(if violation.reason.is_empty() {
                                    &info_reason
                                } else {
                                    &violation.reason
                                }),
                            })
                            .collect()
                    })
                    .unwrap_or_default()
            }
            Self::DuplicateKey(key) => vec![Violation::new(
                key.clone(),
                "duplicate_key",
                "appears more than once in its object",
            )],
            _ => Vec::new(),
        }
    }

    /// How long the caller should wait before trying again, for the overload answers only
    /// (`rate_limited`, `too_many_in_flight`, a backend's RESOURCE_EXHAUSTED such as
    /// `inference_queue_full`): gRPC sends it as `google.rpc.RetryInfo`, REST as `Retry-After`.
    pub fn retry_after(&self) -> Option<Duration> {
        match self {
            Self::RateLimited { retry_after } | Self::TooManyInFlight { retry_after, .. } => {
                Some(*retry_after)
            }
            Self::BackendRejected { status, .. } if status.code() == Code::ResourceExhausted => {
                Some(
                    status
                        .get_error_details()
                        .retry_info()
                        .and_then(|info| info.retry_delay)
                        .unwrap_or(BACKEND_OVERLOAD_RETRY_AFTER),
                )
            }
            _ => None,
        }
    }

    /// HTTP status of the reference REST API: 409 for a parameter problem, 412 for an image
    /// whose content is refused (format, size, decoding, face), 403 for an expired token.
    fn http_status(&self) -> http::StatusCode {
        use http::StatusCode as S;
        match self {
            Self::Unauthenticated(AuthError::TokenExpired) => S::FORBIDDEN,
            Self::Unauthenticated(_) => S::UNAUTHORIZED,
            Self::RateLimited { .. } | Self::TooManyInFlight { .. } => S::TOO_MANY_REQUESTS,
            Self::InvalidRequest(_) | Self::UndecodableImage(_) => {
                violations_status(&self.violations())
            }
            Self::BackendUnavailable { .. } => S::SERVICE_UNAVAILABLE,
            Self::BackendDeadline { .. } => S::GATEWAY_TIMEOUT,
            Self::BackendRejected { status, .. } => match status.code() {
                Code::InvalidArgument => violations_status(&self.violations()),
                Code::ResourceExhausted | Code::Unavailable => S::SERVICE_UNAVAILABLE,
                Code::DeadlineExceeded => S::GATEWAY_TIMEOUT,
                _ => S::BAD_GATEWAY,
            },
            Self::BackendFailed { .. } => S::BAD_GATEWAY,
            Self::MessageTooLarge { .. } | Self::BodyTooLarge { .. } => S::PAYLOAD_TOO_LARGE,
            Self::Internal(_) => S::INTERNAL_SERVER_ERROR,
            Self::UnreadableBody(_) | Self::NotJson(_) => S::BAD_REQUEST,
            Self::DuplicateKey(_) => S::CONFLICT,
            Self::NotFound { .. } => S::NOT_FOUND,
            Self::MethodNotAllowed { .. } => S::METHOD_NOT_ALLOWED,
        }
    }

    /// The REST envelope's `code`: a missing field is `MissingParameter` (as the reference).
    fn rest_code(&self) -> &'static str {
        let status = self.http_status();
        let missing = self
            .violations()
            .iter()
            .any(|violation| violation.reason == "missing");
        if status == http::StatusCode::CONFLICT && missing {
            "MissingParameter"
        } else {
            rest_code_for_status(status)
        }
    }

    /// The message a REST caller reads: never the name or address of an internal service.
    fn public_message(&self) -> String {
        match self {
            Self::Unauthenticated(_)
            | Self::RateLimited { .. }
            | Self::TooManyInFlight { .. }
            | Self::MessageTooLarge { .. }
            | Self::UnreadableBody(_)
            | Self::NotJson(_)
            | Self::DuplicateKey(_)
            | Self::BodyTooLarge { .. }
            | Self::NotFound { .. }
            | Self::MethodNotAllowed { .. } => self.to_string(),
            Self::InvalidRequest(violations) | Self::UndecodableImage(violations) => {
                match violations
                    .iter()
                    .find(|violation| violation.reason == "missing")
                {
                    // The reference's wording: `"search_mode" is required`.
                    Some(missing) if missing.description.ends_with("is required") => {
                        missing.description.clone()
                    }
                    _ => format!("invalid request: {}", describe(violations)),
                }
            }
            Self::BackendUnavailable { .. } => {
                "face verification is temporarily unavailable; retry later".to_owned()
            }
            Self::BackendDeadline { .. } => {
                "the request did not complete within its deadline".to_owned()
            }
            Self::BackendRejected { status, .. } => match status.code() {
                Code::InvalidArgument => {
                    let violations = self.violations();
                    if violations.is_empty() {
                        "an image was refused".to_owned()
                    } else {
                        format!("an image was refused: {}", describe(&violations))
                    }
                }
                Code::ResourceExhausted | Code::Unavailable => {
                    "face verification is overloaded; retry later".to_owned()
                }
                Code::DeadlineExceeded => {
                    "the request did not complete within its deadline".to_owned()
                }
                _ => "the request could not be processed".to_owned(),
            },
            Self::BackendFailed { .. } => "the request could not be processed".to_owned(),
            Self::Internal(_) => "internal error".to_owned(),
        }
    }
}

/// The reference API's string `code` for an HTTP status (its own: `UNAUTHORIZED`, `FORBIDDEN`,
/// `ERROR`, `NotFound`, `InternalServerError`, `MissingParameter`; the others in its style).
pub fn rest_code_for_status(status: http::StatusCode) -> &'static str {
    match status.as_u16() {
        400 => "BadRequest",
        401 => "UNAUTHORIZED",
        403 => "FORBIDDEN",
        404 => "NotFound",
        405 => "MethodNotAllowed",
        409 => "InvalidParameter",
        412 => "ERROR",
        413 => "PayloadTooLarge",
        429 => "TooManyRequests",
        502 => "BadGateway",
        503 => "ServiceUnavailable",
        504 => "GatewayTimeout",
        _ => "InternalServerError",
    }
}

/// 409 when any violation is about a parameter (a missing or mistyped field, a value out of
/// range, too many images); 412 when every one is about an image's content.
fn violations_status(violations: &[Violation]) -> http::StatusCode {
    let image_content = |violation: &Violation| {
        let image_field = violation.field == "probe" || violation.field.starts_with("gallery[");
        image_field && !matches!(violation.reason, "missing" | "invalid_type" | "")
    };
    if !violations.is_empty() && violations.iter().all(image_content) {
        http::StatusCode::PRECONDITION_FAILED
    } else {
        http::StatusCode::CONFLICT
    }
}

/// A backend's request field as the caller named it.
fn public_field(service: Backend, field: &str) -> String {
    match (service, field) {
        (Backend::Liveness, "image") => "probe".to_owned(),
        _ => field.to_owned(),
    }
}

/// Violation reasons are `&'static str`: a backend's reason is kept when it is one of the
/// shared vocabulary, else reported as `image_refused`.
fn known_reason(reason: &str) -> &'static str {
    const KNOWN: &[&str] = &[
        "image_too_large",
        "image_bad_aspect_ratio",
        "image_truncated",
        "image_undecodable",
        "unsupported_format",
        "no_face_detected",
        "multiple_faces_detected",
        "face_too_small",
        "face_cut_off",
        "face_too_blurry",
        "face_too_dark",
        "face_too_bright",
        "face_not_frontal",
        "face_close_to_border",
        "empty_image",
        "invalid_face_hint",
        "probe_is_gallery_copy",
        "missing",
        "invalid_value",
    ];
    KNOWN
        .iter()
        .find(|known| known.eq_ignore_ascii_case(reason))
        .copied()
        .unwrap_or("image_refused")
}

impl ServiceError {
    /// The gRPC code, one per error (a backend's refusal keeps its own).
    fn grpc_code(&self) -> Code {
        match self {
            Self::Unauthenticated(_) => Code::Unauthenticated,
            Self::RateLimited { .. }
            | Self::TooManyInFlight { .. }
            | Self::MessageTooLarge { .. }
            | Self::BodyTooLarge { .. } => Code::ResourceExhausted,
            Self::InvalidRequest(_)
            | Self::UndecodableImage(_)
            | Self::UnreadableBody(_)
            | Self::NotJson(_)
            | Self::DuplicateKey(_) => Code::InvalidArgument,
            Self::BackendUnavailable { .. } => Code::Unavailable,
            Self::BackendDeadline { .. } => Code::DeadlineExceeded,
            Self::BackendRejected { status, .. } => status.code(),
            Self::BackendFailed { .. } | Self::Internal(_) => Code::Internal,
            Self::NotFound { .. } | Self::MethodNotAllowed { .. } => Code::Unimplemented,
        }
    }

    /// The ErrorInfo metadata: the limit hit, the violation count or the backend's name.
    fn error_metadata(&self) -> HashMap<String, String> {
        let (key, value) = match self {
            Self::TooManyInFlight { limit, .. } => ("limit", limit.to_string()),
            Self::InvalidRequest(violations) | Self::UndecodableImage(violations) => {
                ("violations", violations.len().to_string())
            }
            Self::BackendUnavailable { service, .. }
            | Self::BackendDeadline { service }
            | Self::BackendFailed { service, .. } => ("service", service.name().to_owned()),
            Self::MessageTooLarge { limit } | Self::BodyTooLarge { limit } => {
                ("limit_bytes", limit.to_string())
            }
            _ => return HashMap::new(),
        };
        HashMap::from([(key.to_owned(), value)])
    }
}

/// The one mapping to a gRPC status: code, message, ErrorInfo (reason, domain
/// [`ERROR_DOMAIN`], metadata), RetryInfo for the overload answers, BadRequest for invalid
/// fields. A backend's refusal passes through with its own message and details.
impl From<ServiceError> for Status {
    fn from(error: ServiceError) -> Self {
        if let ServiceError::BackendRejected { status, .. } = error {
            return backend_rejection(status);
        }
        let mut details = error_info(&error.reason(), error.error_metadata());
        if let Some(retry_after) = error.retry_after() {
            details.set_retry_info(Some(retry_after));
        }
        let violations = error.violations();
        let has_fields = matches!(
            error,
            ServiceError::InvalidRequest(_) | ServiceError::UndecodableImage(_)
        );
        if has_fields || !violations.is_empty() {
            details.set_bad_request(
                violations
                    .into_iter()
                    .map(|violation| FieldViolation {
                        field: violation.field,
                        description: violation.description,
                        reason: violation.reason.to_owned(),
                        localized_message: None,
                    })
                    .collect::<Vec<_>>(),
            );
        }
        Status::with_error_details(error.grpc_code(), error.to_string(), details)
    }
}

/// A backend's refusal with its own message and details (field, reason); an overload answer
/// without RetryInfo gets the gateway's default, so clients back off.
fn backend_rejection(status: Status) -> Status {
    let mut details = status.get_error_details();
    if status.code() == Code::ResourceExhausted && details.retry_info().is_none() {
        details.set_retry_info(Some(BACKEND_OVERLOAD_RETRY_AFTER));
        Status::with_error_details(status.code(), status.message(), details)
    } else {
        Status::with_details(
            status.code(),
            status.message(),
            status.details().to_vec().into(),
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_error_maps_to_its_grpc_code_and_reason() {
        let cases = [
            (
                ServiceError::Unauthenticated(AuthError::TokenExpired),
                Code::Unauthenticated,
                "token_expired",
            ),
            (
                ServiceError::RateLimited {
                    retry_after: Duration::from_millis(1500),
                },
                Code::ResourceExhausted,
                "rate_limited",
            ),
            (
                ServiceError::BackendUnavailable {
                    service: Backend::Liveness,
                    detail: "down".into(),
                },
                Code::Unavailable,
                "liveness_unavailable",
            ),
            (
                ServiceError::BackendDeadline {
                    service: Backend::Matcher,
                },
                Code::DeadlineExceeded,
                "matcher_deadline_exceeded",
            ),
        ];
        for (error, code, reason) in cases {
            let status = Status::from(error);
            assert_eq!(status.code(), code);
            let details = status.get_error_details();
            assert_eq!(
                details.error_info().map(|info| info.reason.as_str()),
                Some(reason)
            );
        }
    }

    #[test]
    fn rate_limit_carries_retry_info() {
        let status = Status::from(ServiceError::RateLimited {
            retry_after: Duration::from_millis(1500),
        });
        let retry = status
            .get_error_details()
            .retry_info()
            .and_then(|info| info.retry_delay);
        assert_eq!(retry, Some(Duration::from_millis(1500)));
    }

    #[test]
    fn passthrough_keeps_backend_details() {
        let backend = Status::with_error_details(
            Code::InvalidArgument,
            "no face",
            ErrorDetails::with_bad_request_violation("probe", "no face detected"),
        );
        let error = ServiceError::BackendRejected {
            service: Backend::Matcher,
            status: backend,
        };
        // An image's content refused: 412, with a reason even when the backend gave none.
        let rest = error.to_rest();
        assert_eq!(rest.status, http::StatusCode::PRECONDITION_FAILED);
        assert_eq!(rest.code, "ERROR");
        assert_eq!(rest.violations[0].field, "probe");
        assert_eq!(rest.violations[0].reason, "image_refused");
        assert!(!rest.message.contains("matcher"));
        let status = Status::from(error);
        assert_eq!(status.code(), Code::InvalidArgument);
        assert_eq!(status.message(), "no face");
        let details = status.get_error_details();
        assert_eq!(
            details
                .bad_request()
                .map(|b| b.field_violations[0].field.as_str()),
            Some("probe")
        );
    }

    #[test]
    fn rest_only_refusals_keep_their_envelopes() {
        let cases = [
            (
                ServiceError::NotJson("line 1".into()),
                400,
                "BadRequest",
                "malformed_request",
                "the body is not one valid JSON object: line 1",
            ),
            (
                ServiceError::UnreadableBody("reset".into()),
                400,
                "BadRequest",
                "malformed_request",
                "the request body could not be read: reset",
            ),
            (
                ServiceError::DuplicateKey("probe".into()),
                409,
                "InvalidParameter",
                "duplicate_key",
                "duplicate key \"probe\": each member name may appear once per object",
            ),
            (
                ServiceError::BodyTooLarge { limit: 10 },
                413,
                "PayloadTooLarge",
                "request_body_too_large",
                "the request body is larger than 10 bytes (the image limits, base64-encoded)",
            ),
            (
                ServiceError::NotFound { api_path: "/v2/x" },
                404,
                "NotFound",
                "not_found",
                "no such path; the API is POST /v2/x",
            ),
            (
                ServiceError::MethodNotAllowed {
                    method: "PUT".into(),
                },
                405,
                "MethodNotAllowed",
                "method_not_allowed",
                "PUT is not allowed on this path (see the Allow header)",
            ),
        ];
        for (error, status, code, reason, message) in cases {
            let rest = error.to_rest();
            assert_eq!(rest.status.as_u16(), status, "{error:?}");
            assert_eq!((rest.code, rest.reason.as_str()), (code, reason));
            assert_eq!(rest.message, message);
            assert_eq!(rest.retry_after_seconds, None);
        }
        let duplicate = ServiceError::DuplicateKey("gallery".into()).to_rest();
        assert_eq!(duplicate.violations[0].field, "gallery");
        assert_eq!(duplicate.violations[0].reason, "duplicate_key");
    }

    #[test]
    fn error_info_metadata_names_the_limit_count_or_service() {
        let metadata = |error: ServiceError| {
            Status::from(error)
                .get_error_details()
                .error_info()
                .map(|info| info.metadata.clone())
                .unwrap()
        };
        let in_flight = metadata(ServiceError::TooManyInFlight {
            limit: 4,
            retry_after: Duration::from_secs(1),
        });
        assert_eq!(in_flight.get("limit").map(String::as_str), Some("4"));
        let too_large = metadata(ServiceError::MessageTooLarge { limit: 9 });
        assert_eq!(too_large.get("limit_bytes").map(String::as_str), Some("9"));
        let invalid = Status::from(ServiceError::InvalidRequest(vec![Violation::new(
            "os",
            "invalid_value",
            "unknown",
        )]));
        let details = invalid.get_error_details();
        assert_eq!(
            details.error_info().unwrap().metadata.get("violations"),
            Some(&"1".to_owned())
        );
        assert_eq!(
            details.bad_request().unwrap().field_violations[0].field,
            "os"
        );
        assert!(details.retry_info().is_none());
        let failed = metadata(ServiceError::BackendFailed {
            service: Backend::Liveness,
            detail: "x".into(),
        });
        assert_eq!(failed.get("service").map(String::as_str), Some("liveness"));
        let too_many = Status::from(ServiceError::TooManyInFlight {
            limit: 4,
            retry_after: Duration::from_millis(250),
        });
        assert_eq!(
            too_many
                .get_error_details()
                .retry_info()
                .and_then(|info| info.retry_delay),
            Some(Duration::from_millis(250))
        );
    }
}
