//! The REST drop-in for the reference API: `POST /v2/face-recognition/compare-with-liveness`
//! (reference JSON body and envelope), `GET /v2/signing-keys` and `GET /healthz`.
//!
//! Order of work for a compare request, cheapest refusal first: route and method (404 / 405
//! before anything else), token, rate limit, `Content-Length` against the body limit, then the
//! body is streamed into one buffer and cut at the limit (413), then parsed and its base64
//! decoded on the blocking pool (`body`), validated, and handed to the shared orchestration.
//! Peak memory per request: the body, then the decoded images (3/4 of it) while the body is
//! still held, then the images alone.
//!
//! Every answer carries `x-request-id` (the caller's when it is short and plain, else a new
//! one); error bodies are the reference envelope `{"message", "code"}` with our `status`,
//! `reason`, `violations` and `request_id` besides. Requests are counted by route and status in
//! `faceproof_http_server_handled` and traced in an `http.request` span.

mod body;

use std::collections::HashSet;
use std::sync::Arc;
use std::time::Instant;

use axum::Router;
use axum::body::{Body, HttpBody as _};
use axum::extract::{Request, State};
use axum::http::{HeaderMap, HeaderValue, Method, StatusCode, header};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use faceproof_telemetry::Metrics;
use serde_json::{Value, json};
use tracing::Instrument as _;

use crate::auth::Authenticator;
use crate::config::Limits;
use crate::error::ServiceError;
use crate::service::Gateway;
use crate::validation::{ValidRequest, validate};

pub use body::decode_image;

pub use crate::openapi::{COMPARE_PATH, SIGNING_KEYS_PATH};
pub const HEALTHZ_PATH: &str = "/healthz";

/// The request id header, read and echoed.
pub const REQUEST_ID_HEADER: &str = "x-request-id";
/// Longest caller-supplied request id kept; longer or unusual ones are replaced.
pub const MAX_REQUEST_ID_BYTES: usize = 128;

/// Metrics label of a request that matched no route (bounded label values).
const UNMATCHED_ROUTE: &str = "other";

/// REST-only settings.
#[derive(Debug, Clone, Default)]
pub struct RestSettings {
    /// Origins allowed by CORS (`*` = any); empty = CORS off.
    pub cors_allowed_origins: Vec<String>,
}

#[derive(Clone)]
struct RestState {
    gateway: Arc<Gateway>,
    auth: Arc<Authenticator>,
}

tokio::task_local! {
    /// The current request's id, for error bodies built deep in a handler.
    static REQUEST_ID: String;
}

pub fn router(gateway: Arc<Gateway>, auth: Arc<Authenticator>, settings: RestSettings) -> Router {
    let metrics = gateway.metrics.clone();
    let cors = Arc::new(Cors::new(&settings.cors_allowed_origins));
    Router::new()
        .route(COMPARE_PATH, post(compare_with_liveness))
        .route(SIGNING_KEYS_PATH, get(signing_keys))
        .route(HEALTHZ_PATH, get(|| async { "ok" }))
        .route(
            crate::openapi::OPENAPI_PATH,
            get(|| async { axum::Json(crate::openapi::document()) }),
        )
        .method_not_allowed_fallback(method_not_allowed)
        // Runs for matched routes only (405 included): names the route for the metrics.
        .route_layer(middleware::from_fn(tag_route))
        .fallback(not_found)
        .with_state(RestState { gateway, auth })
        .layer(middleware::from_fn_with_state(cors, cors_headers))
        .layer(middleware::from_fn_with_state(metrics, observe))
}

// ---------------------------------------------------------------- envelope

/// The one REST rendering of an error ([`ServiceError::to_rest`]): the reference API's body
/// plus our details, `{"message", "code", "status", "reason", "violations"?, "request_id"}`, and
/// `Retry-After` on every overload answer (rate_limited, too_many_in_flight,
/// inference_queue_full).
impl IntoResponse for ServiceError {
    fn into_response(self) -> Response {
        let rest = self.to_rest();
        let mut body = json!({
            "message": rest.message,
            "code": rest.code,
            "status": rest.status.as_u16(),
            "reason": rest.reason,
        });
        if !rest.violations.is_empty() {
            body["violations"] = rest
                .violations
                .iter()
                .map(|violation| {
                    json!({
                        "field": violation.field,
                        "reason": violation.reason,
                        "description": violation.description,
                    })
                })
                .collect();
        }
        if let Ok(request_id) = REQUEST_ID.try_with(Clone::clone) {
            body["request_id"] = Value::from(request_id);
        }
        let mut response = (rest.status, axum::Json(body)).into_response();
        if let Some(seconds) = rest.retry_after_seconds {
            response
                .headers_mut()
                .insert(header::RETRY_AFTER, HeaderValue::from(seconds));
        }
        response
    }
}

// ---------------------------------------------------------------- edges

/// The route template of a matched request, carried out to [`observe`].
#[derive(Clone)]
struct RouteLabel(&'static str);

/// Our routes have no path parameters, so a matched request's path is its route.
async fn tag_route(request: Request, next: Next) -> Response {
    let route = known_route(request.uri().path());
    let mut response = next.run(request).await;
    response.extensions_mut().insert(RouteLabel(route));
    response
}

/// Our routes as `'static` labels (another router's paths fall under `other`).
fn known_route(path: &str) -> &'static str {
    [
        COMPARE_PATH,
        SIGNING_KEYS_PATH,
        HEALTHZ_PATH,
        "/readyz",
        "/openapi.json",
    ]
    .into_iter()
    .find(|route| *route == path)
    .unwrap_or(UNMATCHED_ROUTE)
}

async fn not_found() -> Response {
    ServiceError::NotFound {
        api_path: COMPARE_PATH,
    }
    .into_response()
}

/// axum adds the `Allow` header.
async fn method_not_allowed(method: Method) -> Response {
    ServiceError::MethodNotAllowed {
        method: method.to_string(),
    }
    .into_response()
}

/// The request id, the `http.request` span, the echoed header and the metrics, around
/// everything else.
async fn observe(State(metrics): State<Metrics>, request: Request, next: Next) -> Response {
    let started = Instant::now();
    let request_id = request
        .headers()
        .get(REQUEST_ID_HEADER)
        .and_then(|value| value.to_str().ok())
        .filter(|id| is_acceptable_request_id(id))
        .map_or_else(new_request_id, str::to_owned);
    let method = request.method().clone();
    let span = tracing::info_span!(
        "http.request",
        otel.name = %format_args!("{method} {}", known_route(request.uri().path())),
        otel.kind = "server",
        http.request.method = %method,
        http.route = known_route(request.uri().path()),
        http.response.status_code = tracing::field::Empty,
        request_id = %request_id,
    );
    faceproof_telemetry::propagation::set_parent_from_headers(&span, request.headers());
    let mut response = REQUEST_ID
        .scope(request_id.clone(), next.run(request))
        .instrument(span.clone())
        .await;
    if let Ok(value) = HeaderValue::from_str(&request_id) {
        response.headers_mut().insert(REQUEST_ID_HEADER, value);
    }
    let status = response.status().as_u16();
    let route = response
        .extensions()
        .get::<RouteLabel>()
        .map_or(UNMATCHED_ROUTE, |label| label.0);
    metrics.record_http_request(route, &method, status, started.elapsed());
    span.record("http.response.status_code", status);
    tracing::info!(
        parent: &span,
        %method,
        route,
        status,
        elapsed_ms = started.elapsed().as_millis() as u64,
        "rest request answered"
    );
    response
}

/// 1 to 128 bytes of letters, digits and `-_.:` (what log and trace tools take as is).
fn is_acceptable_request_id(id: &str) -> bool {
    (1..=MAX_REQUEST_ID_BYTES).contains(&id.len())
        && id
            .bytes()
            .all(|byte| byte.is_ascii_alphanumeric() || matches!(byte, b'-' | b'_' | b'.' | b':'))
}

fn new_request_id() -> String {
    uuid::Uuid::new_v4().to_string()
}

/// CORS, off unless origins are configured. A preflight from an allowed origin is answered
/// here, before authentication (browsers send no token with it); other requests from an
/// allowed origin get the allow headers added. Other origins get no CORS headers at all.
struct Cors {
    any_origin: bool,
    origins: HashSet<String>,
}

impl Cors {
    fn new(origins: &[String]) -> Self {
        let origins: HashSet<String> = origins
            .iter()
            .map(|origin| origin.trim().trim_end_matches('/').to_ascii_lowercase())
            .filter(|origin| !origin.is_empty())
            .collect();
        Self {
            any_origin: origins.contains("*"),
            origins,
        }
    }

    fn allows(&self, origin: &HeaderValue) -> bool {
        self.any_origin
            || origin
                .to_str()
                .is_ok_and(|origin| self.origins.contains(&origin.to_ascii_lowercase()))
    }
}

async fn cors_headers(State(cors): State<Arc<Cors>>, request: Request, next: Next) -> Response {
    let origin = request
        .headers()
        .get(header::ORIGIN)
        .filter(|origin| cors.allows(origin))
        .cloned();
    let Some(origin) = origin else {
        return next.run(request).await;
    };
    let preflight = request.method() == Method::OPTIONS
        && request
            .headers()
            .contains_key(header::ACCESS_CONTROL_REQUEST_METHOD);
    let mut response = if preflight {
        let mut response = StatusCode::NO_CONTENT.into_response();
        let headers = response.headers_mut();
        headers.insert(
            header::ACCESS_CONTROL_ALLOW_METHODS,
            HeaderValue::from_static("GET, POST, OPTIONS"),
        );
        headers.insert(
            header::ACCESS_CONTROL_ALLOW_HEADERS,
            HeaderValue::from_static("authorization, content-type, x-request-id, traceparent"),
        );
        headers.insert(
            header::ACCESS_CONTROL_MAX_AGE,
            HeaderValue::from_static("600"),
        );
        response
    } else {
        let mut response = next.run(request).await;
        response.headers_mut().insert(
            header::ACCESS_CONTROL_EXPOSE_HEADERS,
            HeaderValue::from_static("x-request-id, retry-after"),
        );
        response
    };
    let headers = response.headers_mut();
    headers.insert(header::ACCESS_CONTROL_ALLOW_ORIGIN, origin);
    headers.append(header::VARY, HeaderValue::from_static("origin"));
    response
}

// ---------------------------------------------------------------- routes

async fn signing_keys(State(state): State<RestState>) -> Response {
    axum::Json(faceproof_signing::signing_keys_to_json(
        &state.gateway.signing_keys(),
    ))
    .into_response()
}

async fn compare_with_liveness(State(state): State<RestState>, request: Request) -> Response {
    let (parts, body) = request.into_parts();
    // Token and rate limit before a byte of the body is read.
    let client = match state
        .auth
        .authenticate(parts.headers.get(header::AUTHORIZATION))
    {
        Ok(client) => client,
        Err(error) => {
            tracing::info!(reason = error.reason(), "rest request not authenticated");
            return ServiceError::Unauthenticated(error).into_response();
        }
    };
    // The in-flight slot also bounds how many bodies one client can have in memory at once.
    let _in_flight = match state.gateway.admit(&client) {
        Ok(slot) => slot,
        Err(error) => return error.into_response(),
    };
    let limit = state.gateway.limits.max_rest_body_bytes();
    let body = match read_body(&parts.headers, body, limit).await {
        Ok(body) => body,
        Err(response) => return *response,
    };
    let limits = state.gateway.limits;
    // Parsing and base64 are CPU work proportional to the body: off the async workers.
    let parsed = tokio::task::spawn_blocking(move || parse_and_validate(body, &limits)).await;
    let request = match parsed {
        Ok(Ok(request)) => request,
        Ok(Err(error)) => return error.into_response(),
        Err(error) => {
            return ServiceError::Internal(format!("request parsing stopped: {error}"))
                .into_response();
        }
    };
    match state.gateway.compare_valid(&client, request, None).await {
        Ok(response) => match faceproof_signing::response_to_json(&response) {
            Ok(envelope) => axum::Json(envelope).into_response(),
            Err(error) => ServiceError::Internal(error.to_string()).into_response(),
        },
        Err(error) => error.into_response(),
    }
}

/// Parses, decodes and validates a body, reporting every violation together. The body is
/// dropped as soon as the images are decoded out of it.
fn parse_and_validate(body: Vec<u8>, limits: &Limits) -> Result<ValidRequest, ServiceError> {
    let parsed =
        body::parse_with_image_limit(&body, limits.max_image_bytes).map_err(
            |error| match error {
                body::BodyError::Malformed(detail) => ServiceError::NotJson(detail),
                body::BodyError::DuplicateKey(key) => ServiceError::DuplicateKey(key),
            },
        )?;
    drop(body);
    let mut violations = parsed.violations;
    match validate(parsed.request, limits) {
        Ok(valid) if violations.is_empty() => Ok(valid),
        Ok(_) => Err(ServiceError::InvalidRequest(violations)),
        Err(ServiceError::InvalidRequest(found)) => {
            // A field that failed to parse is not judged again (a missing probe is not also
            // "empty").
            let reported: HashSet<String> = violations
                .iter()
                .map(|violation| violation.field.clone())
                .collect();
            violations.extend(
                found
                    .into_iter()
                    .filter(|violation| !reported.contains(&violation.field)),
            );
            Err(ServiceError::InvalidRequest(violations))
        }
        Err(other) => Err(other),
    }
}

/// The body in one buffer: refused from `Content-Length` when it declares too much, cut while
/// streaming when it sends too much (chunked or lying).
async fn read_body(
    headers: &HeaderMap,
    body: Body,
    limit: usize,
) -> Result<Vec<u8>, Box<Response>> {
    let too_large = || Box::new(ServiceError::BodyTooLarge { limit }.into_response());
    let declared = headers
        .get(header::CONTENT_LENGTH)
        .and_then(|value| value.to_str().ok())
        .and_then(|value| value.parse::<u64>().ok());
    if declared.is_some_and(|length| length > limit as u64) {
        return Err(too_large());
    }
    let mut buffer = Vec::with_capacity(declared.map_or(0, |length| length as usize));
    let mut body = std::pin::pin!(body);
    while let Some(frame) = std::future::poll_fn(|context| body.as_mut().poll_frame(context)).await
    {
        let frame = frame.map_err(|error| {
            Box::new(ServiceError::UnreadableBody(error.to_string()).into_response())
        })?;
        // Trailers carry no body bytes.
        let Ok(chunk) = frame.into_data() else {
            continue;
        };
        if buffer.len() + chunk.len() > limit {
            return Err(too_large());
        }
        buffer.extend_from_slice(&chunk);
    }
    Ok(buffer)
}
