//! The REST drop-in for the reference API: `POST /v2/face-recognition/compare-with-liveness`
//! (reference JSON body and envelope) and `GET /v2/signing-keys`.

use std::sync::Arc;

use axum::Router;
use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::extract::{DefaultBodyLimit, Request, State};
use axum::http::{HeaderValue, StatusCode, header};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use base64::Engine as _;
use base64::engine::general_purpose::{GeneralPurpose, GeneralPurposeConfig};
use base64::engine::{DecodePaddingMode, general_purpose};
use faceproof_proto::gateway::v1::CompareWithLivenessRequest;
use serde_json::{Value, json};

use crate::auth::{Authenticator, ClientId};
use crate::error::{ServiceError, Violation};
use crate::service::Gateway;

/// The reference API's path.
pub const COMPARE_PATH: &str = "/v2/face-recognition/compare-with-liveness";
pub const SIGNING_KEYS_PATH: &str = "/v2/signing-keys";

/// Standard base64 alphabet, padding optional (clients differ).
const BASE64: GeneralPurpose = GeneralPurpose::new(
    &base64::alphabet::STANDARD,
    GeneralPurposeConfig::new().with_decode_padding_mode(DecodePaddingMode::Indifferent),
);

#[derive(Clone)]
struct RestState {
    gateway: Arc<Gateway>,
}

pub fn router(gateway: Arc<Gateway>, auth: Arc<Authenticator>) -> Router {
    let body_limit = gateway.limits.max_rest_body_bytes();
    let protected = Router::new()
        .route(COMPARE_PATH, post(compare_with_liveness))
        .layer(DefaultBodyLimit::max(body_limit))
        .layer(middleware::from_fn_with_state(auth, authenticate));
    Router::new()
        .route(SIGNING_KEYS_PATH, get(signing_keys))
        .route("/healthz", get(|| async { "ok" }))
        .route(
            crate::openapi::OPENAPI_PATH,
            get(|| async { axum::Json(crate::openapi::document()) }),
        )
        .merge(protected)
        .with_state(RestState { gateway })
}

/// The reference API's error body: `{"message", "code"}` plus `reason` and `violations`.
fn error_response(
    status: StatusCode,
    message: String,
    reason: &str,
    violations: &[Violation],
) -> Response {
    // The reference API's string codes (the "rest" branch owns the full mapping).
    let code = match status.as_u16() {
        400 => "BadRequest",
        401 => "UNAUTHORIZED",
        403 => "FORBIDDEN",
        404 => "NotFound",
        409 => "InvalidParameter",
        412 => "ERROR",
        413 => "PayloadTooLarge",
        429 => "TooManyRequests",
        502 => "BadGateway",
        503 => "ServiceUnavailable",
        504 => "GatewayTimeout",
        _ => "InternalServerError",
    };
    let mut body =
        json!({"message": message, "code": code, "status": status.as_u16(), "reason": reason});
    if !violations.is_empty() {
        body["violations"] = violations
            .iter()
            .map(|violation| {
                let mut entry =
                    json!({"field": violation.field, "description": violation.description});
                if !violation.reason.is_empty() {
                    entry["reason"] = Value::from(violation.reason);
                }
                entry
            })
            .collect();
    }
    (status, axum::Json(body)).into_response()
}

impl IntoResponse for ServiceError {
    fn into_response(self) -> Response {
        let status = self.http_status();
        // Every overload answer (rate_limited, too_many_in_flight, inference_queue_full).
        let retry_after = self
            .retry_after()
            .map(|retry_after| retry_after.as_secs_f64().ceil().max(1.0));
        let mut response =
            error_response(status, self.to_string(), &self.reason(), &self.violations());
        if let Some(seconds) = retry_after
            && let Ok(value) = HeaderValue::from_str(&format!("{seconds:.0}"))
        {
            response.headers_mut().insert(header::RETRY_AFTER, value);
        }
        response
    }
}

async fn authenticate(
    State(auth): State<Arc<Authenticator>>,
    mut request: Request,
    next: Next,
) -> Response {
    match auth.authenticate(request.headers().get(header::AUTHORIZATION)) {
        Ok(client) => {
            request.extensions_mut().insert(client);
            next.run(request).await
        }
        Err(error) => {
            tracing::info!(reason = error.reason(), "rest request not authenticated");
            ServiceError::Unauthenticated(error).into_response()
        }
    }
}

async fn signing_keys(State(state): State<RestState>) -> Response {
    axum::Json(faceproof_signing::signing_keys_to_json(
        &state.gateway.signing_keys(),
    ))
    .into_response()
}

async fn compare_with_liveness(
    State(state): State<RestState>,
    axum::Extension(client): axum::Extension<ClientId>,
    body: Result<Bytes, BytesRejection>,
) -> Response {
    let body = match body {
        Ok(body) => body,
        Err(rejection) if rejection.status() == StatusCode::PAYLOAD_TOO_LARGE => {
            return error_response(
                StatusCode::PAYLOAD_TOO_LARGE,
                format!(
                    "the request body is larger than {} bytes",
                    state.gateway.limits.max_rest_body_bytes()
                ),
                "body_too_large",
                &[],
            );
        }
        Err(rejection) => {
            return error_response(rejection.status(), rejection.body_text(), "bad_body", &[]);
        }
    };
    let request = match parse_request(&body) {
        Ok(request) => request,
        Err(response) => return *response,
    };
    match state
        .gateway
        .compare_with_liveness(&client, request, None)
        .await
    {
        Ok(response) => match faceproof_signing::response_to_json(&response) {
            Ok(envelope) => axum::Json(envelope).into_response(),
            Err(error) => ServiceError::Internal(error.to_string()).into_response(),
        },
        Err(error) => error.into_response(),
    }
}

/// Reads the reference JSON body into the gRPC request, so both front ends share one validation.
/// Type errors are validation errors (409, all at once); undecodable base64 is 412.
fn parse_request(body: &[u8]) -> Result<CompareWithLivenessRequest, Box<Response>> {
    let value: Value = serde_json::from_slice(body).map_err(|error| {
        Box::new(error_response(
            StatusCode::BAD_REQUEST,
            format!(
                "the body is not valid JSON: line {}, column {}: {error}",
                error.line(),
                error.column()
            ),
            "malformed_json",
            &[],
        ))
    })?;
    let Some(object) = value.as_object() else {
        return Err(Box::new(
            ServiceError::InvalidRequest(vec![Violation::new(
                "body",
                "invalid_type",
                "must be a JSON object",
            )])
            .into_response(),
        ));
    };
    let mut violations = Vec::new();
    let mut undecodable = Vec::new();
    let mut text = |name: &str| match object.get(name) {
        None | Some(Value::Null) => String::new(),
        Some(Value::String(text)) => text.clone(),
        Some(_) => {
            violations.push(Violation::new(name, "invalid_type", "must be a string"));
            String::new()
        }
    };
    let os = text("os");
    let search_mode = text("search_mode");
    let mut number = |name: &str| match object.get(name) {
        None | Some(Value::Null) => None,
        Some(Value::Number(number)) => number.as_f64(),
        Some(_) => {
            violations.push(Violation::new(name, "invalid_type", "must be a number"));
            None
        }
    };
    let compare_min_score = number("compare_min_score");
    let liveness_min_score = number("liveness_min_score");
    let mut image = |field: String, value: Option<&Value>| match value {
        None | Some(Value::Null) => Vec::new(),
        Some(Value::String(text)) => match decode_image(text) {
            Ok(bytes) => bytes,
            Err(description) => {
                undecodable.push(Violation::new(field, "undecodable_base64", description));
                Vec::new()
            }
        },
        Some(_) => {
            violations.push(Violation::new(
                field,
                "invalid_type",
                "must be a base64 string or a data:image/...;base64, URL",
            ));
            Vec::new()
        }
    };
    let probe = image("probe".to_owned(), object.get("probe"));
    let gallery = match object.get("gallery") {
        None | Some(Value::Null) => Vec::new(),
        Some(Value::Array(items)) => items
            .iter()
            .enumerate()
            .map(|(index, item)| image(format!("gallery[{index}]"), Some(item)))
            .collect(),
        Some(_) => {
            violations.push(Violation::new(
                "gallery",
                "invalid_type",
                "must be an array of images",
            ));
            Vec::new()
        }
    };
    if !undecodable.is_empty() {
        return Err(Box::new(
            ServiceError::UndecodableImage(undecodable).into_response(),
        ));
    }
    if !violations.is_empty() {
        return Err(Box::new(
            ServiceError::InvalidRequest(violations).into_response(),
        ));
    }
    Ok(CompareWithLivenessRequest {
        os,
        probe,
        gallery,
        search_mode,
        compare_min_score,
        liveness_min_score,
    })
}

/// Plain base64 or a `data:image/...;base64,` URL.
fn decode_image(text: &str) -> Result<Vec<u8>, String> {
    let payload = if let Some(rest) = text.strip_prefix("data:") {
        let (media, payload) = rest
            .split_once(',')
            .ok_or("a data URL needs a comma before its payload")?;
        if !media.ends_with(";base64") {
            return Err("only base64 data URLs are accepted (`data:image/jpeg;base64,...`)".into());
        }
        payload
    } else {
        text
    };
    let compact: String = payload
        .chars()
        .filter(|c| !c.is_ascii_whitespace())
        .collect();
    BASE64
        .decode(compact.as_bytes())
        .or_else(|_| general_purpose::URL_SAFE_NO_PAD.decode(compact.trim_end_matches('=')))
        .map_err(|error| format!("not valid base64: {error}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn images_decode_from_base64_and_data_urls() {
        assert_eq!(decode_image("aGk=").expect("padded"), b"hi");
        assert_eq!(decode_image("aGk").expect("unpadded"), b"hi");
        assert_eq!(
            decode_image("data:image/png;base64,aGk=").expect("data url"),
            b"hi"
        );
        assert!(decode_image("data:image/png,aGk=").is_err());
        assert!(decode_image("not base64!").is_err());
    }
}
