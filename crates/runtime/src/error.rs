//! The one place where a service failure becomes a gRPC status with rich details.

use std::borrow::Cow;

use faceproof_imaging::Cancellation;
use tonic::{Code, Status};
use tonic_types::{ErrorDetails, FieldViolation, StatusExt};

use crate::RuntimeError;

/// The `ErrorInfo.domain` of every faceproof error.
pub const ERROR_DOMAIN: &str = "faceproof";

/// The retry delay sent with `inference_queue_full`: a queue drains within about one request's
/// time (a few hundred ms of inference), and HTTP's Retry-After counts whole seconds.
pub const OVERLOAD_RETRY_AFTER: std::time::Duration = std::time::Duration::from_secs(1);

/// The kinds of failure a model service reports, each with one gRPC code.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrorCode {
    /// The request (or an image in it) cannot be served as sent.
    InvalidArgument,
    /// The inference queue is full: retry later or elsewhere.
    Overloaded,
    DeadlineExceeded,
    /// The caller went away before the result was ready (nobody reads the answer).
    Cancelled,
    /// The service is starting or stopping.
    Unavailable,
    /// A bug or a broken model: details are logged, not returned.
    Internal,
}

impl ErrorCode {
    pub fn grpc_code(self) -> Code {
        match self {
            Self::InvalidArgument => Code::InvalidArgument,
            Self::Overloaded => Code::ResourceExhausted,
            Self::DeadlineExceeded => Code::DeadlineExceeded,
            Self::Cancelled => Code::Cancelled,
            Self::Unavailable => Code::Unavailable,
            Self::Internal => Code::Internal,
        }
    }
}

/// A failure to return to the caller: code, a stable snake_case reason (`ErrorInfo.reason`), a
/// human-readable message and, for bad input, the offending fields.
#[derive(Debug, Clone, thiserror::Error)]
#[error("{code:?} ({reason}): {message}")]
pub struct ServiceError {
    pub code: ErrorCode,
    pub reason: Cow<'static, str>,
    pub message: String,
    pub violations: Vec<FieldViolation>,
}

impl ServiceError {
    pub fn new(
        code: ErrorCode,
        reason: impl Into<Cow<'static, str>>,
        message: impl Into<String>,
    ) -> Self {
        Self {
            code,
            reason: reason.into(),
            message: message.into(),
            violations: Vec::new(),
        }
    }

    /// INVALID_ARGUMENT about one field, e.g. `("image_too_large", "probe", "13 MB > 10 MB")`.
    pub fn invalid_field(
        reason: impl Into<Cow<'static, str>>,
        field: impl Into<String>,
        description: impl Into<String>,
    ) -> Self {
        let reason = reason.into();
        let field = field.into();
        let description = description.into();
        let message = format!("{field}: {description}");
        Self::new(ErrorCode::InvalidArgument, reason.clone(), message).with_violation(
            reason,
            field,
            description,
        )
    }

    /// Adds a BadRequest field violation carrying its own reason.
    pub fn with_violation(
        mut self,
        reason: impl Into<Cow<'static, str>>,
        field: impl Into<String>,
        description: impl Into<String>,
    ) -> Self {
        let mut violation = FieldViolation::new(field, description);
        violation.reason = reason.into().into_owned();
        self.violations.push(violation);
        self
    }

    pub fn overloaded(capacity: usize) -> Self {
        Self::new(
            ErrorCode::Overloaded,
            "inference_queue_full",
            format!("inference queue is full ({capacity} waiting), retry later"),
        )
    }

    pub fn deadline_exceeded() -> Self {
        Self::new(
            ErrorCode::DeadlineExceeded,
            "deadline_exceeded",
            "the request deadline passed before the result was ready",
        )
    }

    pub fn cancelled() -> Self {
        Self::new(
            ErrorCode::Cancelled,
            "cancelled",
            "the caller went away before the result was ready",
        )
    }

    /// An engine stopped inside a stage because its [`Cancellation`] fired: CANCELLED when the
    /// caller went away, DEADLINE_EXCEEDED when the deadline passed.
    pub fn stopped(cancel: &Cancellation) -> Self {
        if cancel.caller_gone() {
            Self::cancelled()
        } else {
            Self::deadline_exceeded()
        }
    }

    /// INTERNAL with a generic message: `detail` is logged here, never sent to the caller.
    pub fn internal(detail: impl std::fmt::Display) -> Self {
        tracing::error!(%detail, "internal error");
        Self::new(ErrorCode::Internal, "internal", "internal error")
    }
}

impl From<RuntimeError> for ServiceError {
    fn from(error: RuntimeError) -> Self {
        match error {
            RuntimeError::QueueFull { capacity } => Self::overloaded(capacity),
            RuntimeError::DeadlineExceeded => Self::deadline_exceeded(),
            RuntimeError::PoolClosed => Self::new(
                ErrorCode::Unavailable,
                "shutting_down",
                "the service is shutting down",
            ),
            other => Self::internal(other),
        }
    }
}

impl From<ServiceError> for Status {
    fn from(error: ServiceError) -> Self {
        let mut details = ErrorDetails::with_error_info(
            error.reason.into_owned(),
            ERROR_DOMAIN,
            std::collections::HashMap::new(),
        );
        if !error.violations.is_empty() {
            details.set_bad_request(error.violations);
        }
        // Clients (and the gateway) back off on RESOURCE_EXHAUSTED by RetryInfo.
        if error.code == ErrorCode::Overloaded {
            details.set_retry_info(Some(OVERLOAD_RETRY_AFTER));
        }
        Status::with_error_details(error.code.grpc_code(), error.message, details)
    }
}

/// Checks one image field of a request before any decoding: not empty and within `max_bytes`.
/// Both model services apply it to every image they receive (`probe`, `gallery[i]`, `image`).
pub fn check_image_bytes(bytes: &[u8], field: &str, max_bytes: usize) -> Result<(), ServiceError> {
    if bytes.is_empty() {
        return Err(ServiceError::invalid_field(
            "empty_image",
            field.to_owned(),
            "image is empty",
        ));
    }
    if bytes.len() > max_bytes {
        return Err(ServiceError::invalid_field(
            "image_too_large",
            field.to_owned(),
            format!("image is {} bytes, the limit is {max_bytes}", bytes.len()),
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn invalid_field_carries_reason_domain_and_violation() {
        let status = Status::from(ServiceError::invalid_field(
            "image_too_large",
            "gallery[2]",
            "12000000 bytes, limit is 10000000",
        ));
        assert_eq!(status.code(), Code::InvalidArgument);
        let details = status.get_error_details();
        let info = details.error_info().unwrap();
        assert_eq!(info.reason, "image_too_large");
        assert_eq!(info.domain, ERROR_DOMAIN);
        let violations = &details.bad_request().unwrap().field_violations;
        assert_eq!(violations.len(), 1);
        assert_eq!(violations[0].field, "gallery[2]");
        assert_eq!(violations[0].reason, "image_too_large");
    }

    #[test]
    fn runtime_errors_map_to_their_codes() {
        let code = |error| Status::from(ServiceError::from(error)).code();
        assert_eq!(
            code(RuntimeError::QueueFull { capacity: 3 }),
            Code::ResourceExhausted
        );
        assert_eq!(code(RuntimeError::DeadlineExceeded), Code::DeadlineExceeded);
        assert_eq!(code(RuntimeError::PoolClosed), Code::Unavailable);
        assert_eq!(code(RuntimeError::JobPanicked("x".into())), Code::Internal);
    }

    #[test]
    fn internal_errors_do_not_leak_details() {
        let status = Status::from(ServiceError::internal(
            "weights at /secret/path are corrupt",
        ));
        assert_eq!(status.code(), Code::Internal);
        assert!(!status.message().contains("secret"));
    }
}
