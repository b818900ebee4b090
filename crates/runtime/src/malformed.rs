//! A request body that is not a valid protobuf message is the caller's mistake, but tonic's
//! prost codec reports it as INTERNAL ("failed to decode Protobuf message: ..."), which reads as
//! a server bug and carries no ErrorInfo. [`MalformedRequestLayer`] turns exactly that answer
//! into INVALID_ARGUMENT with ErrorInfo `malformed_request` (domain [`ERROR_DOMAIN`]), in one
//! place for every service: the model services get it from [`crate::observed_server`], the
//! gateway adds the layer to its own server.
//!
//! tonic answers a unary call whose message does not decode before the handler runs, with the
//! status in the response headers (a trailers-only response), which is where this layer looks.
//! A handler's own INTERNAL never starts with the codec's message, so it is left alone.

use std::collections::HashMap;
use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};

use tonic::{Code, Status};
use tonic_types::{ErrorDetails, StatusExt as _};

use crate::ERROR_DOMAIN;

/// The ErrorInfo reason of a request body that does not parse.
pub const MALFORMED_REQUEST: &str = "malformed_request";

/// How prost's `DecodeError` starts its message (tonic-prost puts it in the status as is).
const DECODE_FAILURE_PREFIX: &str = "failed to decode Protobuf message";

/// The status a malformed request gets: INVALID_ARGUMENT, ErrorInfo `malformed_request`.
pub fn malformed_request_status(detail: &str) -> Status {
    Status::with_error_details(
        Code::InvalidArgument,
        format!("the request is not a valid protobuf message of this method: {detail}"),
        ErrorDetails::with_error_info(MALFORMED_REQUEST, ERROR_DOMAIN, HashMap::new()),
    )
}

/// Rewrites tonic's INTERNAL decode failure into [`malformed_request_status`]; any other
/// response passes unchanged.
pub fn rewrite_decode_failure<B: Default>(response: http::Response<B>) -> http::Response<B> {
    let is_internal = response
        .headers()
        .get("grpc-status")
        .is_some_and(|code| code.as_bytes() == b"13");
    if !is_internal {
        return response;
    }
    match Status::from_header_map(response.headers()) {
        Some(status) if status.message().starts_with(DECODE_FAILURE_PREFIX) => {
            malformed_request_status(status.message()).into_http()
        }
        _ => response,
    }
}

/// Tower layer applying [`rewrite_decode_failure`] to every response of a gRPC server.
#[derive(Debug, Clone, Copy, Default)]
pub struct MalformedRequestLayer;

impl<S> tower::Layer<S> for MalformedRequestLayer {
    type Service = MalformedRequest<S>;

    fn layer(&self, inner: S) -> Self::Service {
        MalformedRequest { inner }
    }
}

#[derive(Debug, Clone)]
pub struct MalformedRequest<S> {
    inner: S,
}

impl<S, ReqBody, ResBody> tower::Service<http::Request<ReqBody>> for MalformedRequest<S>
where
    S: tower::Service<http::Request<ReqBody>, Response = http::Response<ResBody>>,
    ResBody: Default,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = RewriteFuture<S::Future>;

    fn poll_ready(&mut self, context: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(context)
    }

    fn call(&mut self, request: http::Request<ReqBody>) -> Self::Future {
        RewriteFuture {
            inner: Box::pin(self.inner.call(request)),
        }
    }
}

/// The inner service's future with its answer rewritten (boxed: no pin projection needed).
pub struct RewriteFuture<F> {
    inner: Pin<Box<F>>,
}

impl<F, ResBody, E> Future for RewriteFuture<F>
where
    F: Future<Output = Result<http::Response<ResBody>, E>>,
    ResBody: Default,
{
    type Output = F::Output;

    fn poll(mut self: Pin<&mut Self>, context: &mut Context<'_>) -> Poll<Self::Output> {
        self.inner
            .as_mut()
            .poll(context)
            .map(|answer| answer.map(rewrite_decode_failure))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn reason(response: &http::Response<tonic::body::Body>) -> (Code, Option<String>) {
        let status = Status::from_header_map(response.headers()).unwrap();
        let reason = status
            .get_error_details()
            .error_info()
            .map(|info| info.reason.clone());
        (status.code(), reason)
    }

    /// What a model service serves ([`crate::observed_server`]), sent an undecodable message as
    /// raw HTTP/2: here grpc.health's Check, which every model service serves.
    #[tokio::test]
    async fn a_model_service_answers_a_malformed_message_with_invalid_argument() {
        use tower::ServiceExt as _;
        let (_reporter, health) = tonic_health::server::health_reporter();
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let address = listener.local_addr().unwrap();
        let router =
            crate::observed_server(&faceproof_telemetry::Metrics::new()).add_service(health);
        tokio::spawn(router.serve_with_incoming(crate::accept_without_nagle(listener)));
        let channel = tonic::transport::Endpoint::from_shared(format!("http://{address}"))
            .unwrap()
            .connect()
            .await
            .unwrap();
        // One gRPC frame: uncompressed, 2 bytes, field 1 with wire type 7 (no such type).
        let frame = String::from_utf8(vec![0, 0, 0, 0, 2, 0x0f, 0x07]).unwrap();
        let request = http::Request::builder()
            .method("POST")
            .uri(format!("http://{address}/grpc.health.v1.Health/Check"))
            .header("content-type", "application/grpc")
            .header("te", "trailers")
            .body(tonic::body::Body::new(frame))
            .unwrap();
        let response = channel.oneshot(request).await.unwrap();
        assert_eq!(
            reason(&response),
            (Code::InvalidArgument, Some(MALFORMED_REQUEST.to_owned()))
        );
    }

    #[test]
    fn only_the_codec_decode_failure_is_rewritten() {
        let decode =
            Status::internal("failed to decode Protobuf message: buffer underflow").into_http();
        let rewritten = rewrite_decode_failure::<tonic::body::Body>(decode);
        assert_eq!(
            reason(&rewritten),
            (Code::InvalidArgument, Some(MALFORMED_REQUEST.to_owned()))
        );
        let other = rewrite_decode_failure::<tonic::body::Body>(
            Status::internal("model broke").into_http(),
        );
        assert_eq!(reason(&other), (Code::Internal, None));
        let refused = rewrite_decode_failure::<tonic::body::Body>(
            Status::invalid_argument("failed to decode Protobuf message").into_http(),
        );
        assert_eq!(reason(&refused).0, Code::InvalidArgument);
        let ok = rewrite_decode_failure(http::Response::new(tonic::body::Body::empty()));
        assert!(ok.headers().get("grpc-status").is_none());
    }
}
