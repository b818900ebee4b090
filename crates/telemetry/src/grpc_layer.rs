//! Server-side tower layer: one span and one metrics record per gRPC call.
//!
//! The span's parent is the caller's W3C trace context from the request headers. The call's
//! status is taken from the `grpc-status` of the response headers (trailers-only responses:
//! errors, timeouts) or, when absent there, from the body's trailers (successful unary and all
//! streaming calls). A body dropped before it finished counts as CANCELLED, a body that ends
//! without any status as OK. Latency runs from the request until that status is known.

use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll, ready};
use std::time::Instant;

use http_body::{Body, Frame, SizeHint};
use tonic::Code;
use tower::{Layer, Service};
use tracing_opentelemetry::OpenTelemetrySpanExt;

use crate::Metrics;
use crate::propagation::extract_context_from_headers;

/// Label used for paths that are not `/package.Service/Method` or name no known method: it keeps
/// arbitrary client-chosen paths out of the metric labels.
const UNKNOWN: &str = "unknown";

/// Traces and measures every call of a tonic server:
/// `Server::builder().layer(GrpcServerLayer::new(metrics.clone()))`.
#[derive(Debug, Clone)]
pub struct GrpcServerLayer {
    metrics: Metrics,
}

impl GrpcServerLayer {
    pub fn new(metrics: Metrics) -> Self {
        Self { metrics }
    }
}

impl<S> Layer<S> for GrpcServerLayer {
    type Service = GrpcServerService<S>;

    fn layer(&self, inner: S) -> Self::Service {
        GrpcServerService {
            inner,
            metrics: self.metrics.clone(),
        }
    }
}

/// The service [`GrpcServerLayer`] wraps around the server's routes.
#[derive(Debug, Clone)]
pub struct GrpcServerService<S> {
    inner: S,
    metrics: Metrics,
}

impl<S, ReqBody, ResBody> Service<http::Request<ReqBody>> for GrpcServerService<S>
where
    S: Service<http::Request<ReqBody>, Response = http::Response<ResBody>>,
    ResBody: Body,
{
    type Response = http::Response<ObservedBody<ResBody>>;
    type Error = S::Error;
    type Future = ResponseFuture<S::Future>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: http::Request<ReqBody>) -> Self::Future {
        let (service, method) = split_grpc_path(request.uri().path());
        let (service, method) = (service.to_owned(), method.to_owned());
        let span = tracing::info_span!(
            "grpc.server",
            otel.name = %format_args!("{service}/{method}"),
            otel.kind = "server",
            rpc.system = "grpc",
            rpc.service = %service,
            rpc.method = %method,
            rpc.grpc.status_code = tracing::field::Empty,
            otel.status_code = tracing::field::Empty,
        );
        // Fails only without an OpenTelemetry layer or with the span filtered out.
        let _ = span.set_parent(extract_context_from_headers(request.headers()));
        let inner = {
            let _entered = span.enter();
            self.inner.call(request)
        };
        ResponseFuture {
            inner,
            call: Some(CallRecord {
                span,
                start: Instant::now(),
                service,
                method,
                metrics: self.metrics.clone(),
            }),
        }
    }
}

/// `/faceproof.matcher.v1.Matcher/Embed` into (`faceproof.matcher.v1.Matcher`, `Embed`).
fn split_grpc_path(path: &str) -> (&str, &str) {
    path.strip_prefix('/')
        .and_then(|rest| rest.split_once('/'))
        .filter(|(service, method)| {
            !service.is_empty() && !method.is_empty() && !method.contains('/')
        })
        .unwrap_or((UNKNOWN, UNKNOWN))
}

/// One call in flight: finished exactly once, when its status is known.
struct CallRecord {
    span: tracing::Span,
    start: Instant,
    service: String,
    method: String,
    metrics: Metrics,
}

impl CallRecord {
    fn finish(self, code: Code) {
        let (service, method) = if code == Code::Unimplemented {
            (UNKNOWN, UNKNOWN)
        } else {
            (self.service.as_str(), self.method.as_str())
        };
        self.metrics
            .record_grpc_call(service, method, code, self.start.elapsed());
        self.span.record("rpc.grpc.status_code", code as i64);
        if code != Code::Ok {
            self.span.record("otel.status_code", "ERROR");
        }
        // Dropping the span here closes it, so its end time is the call's end.
    }
}

fn grpc_status(headers: &http::HeaderMap) -> Option<Code> {
    let value = headers.get("grpc-status")?;
    let code = value.to_str().ok()?.trim().parse::<i32>().ok()?;
    Some(Code::from_i32(code))
}

pin_project_lite::pin_project! {
    /// Future of [`GrpcServerService`].
    pub struct ResponseFuture<F> {
        #[pin]
        inner: F,
        call: Option<CallRecord>,
    }
}

impl<F, ResBody, E> Future for ResponseFuture<F>
where
    F: Future<Output = Result<http::Response<ResBody>, E>>,
    ResBody: Body,
{
    type Output = Result<http::Response<ObservedBody<ResBody>>, E>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.project();
        let polled = {
            let _entered = this.call.as_ref().map(|call| call.span.enter());
            ready!(this.inner.poll(cx))
        };
        let call = this.call.take();
        Poll::Ready(match polled {
            Ok(response) => {
                // A status in the headers, or a body with nothing left to send, ends the call now.
                let status = grpc_status(response.headers())
                    .or_else(|| response.body().is_end_stream().then_some(Code::Ok));
                let call = match (status, call) {
                    (Some(code), Some(call)) => {
                        call.finish(code);
                        None
                    }
                    (_, call) => call,
                };
                Ok(response.map(|inner| ObservedBody { inner, call }))
            }
            Err(error) => {
                if let Some(call) = call {
                    call.finish(Code::Unknown);
                }
                Err(error)
            }
        })
    }
}

pin_project_lite::pin_project! {
    /// Response body that reports the call's status from its trailers.
    pub struct ObservedBody<B> {
        #[pin]
        inner: B,
        call: Option<CallRecord>,
    }

    impl<B> PinnedDrop for ObservedBody<B> {
        fn drop(this: Pin<&mut Self>) {
            let this = this.project();
            // Still unfinished: the client went away (or the server aborted) mid-response.
            if let Some(call) = this.call.take() {
                call.finish(Code::Cancelled);
            }
        }
    }
}

impl<B: Body> Body for ObservedBody<B> {
    type Data = B::Data;
    type Error = B::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Self::Data>, Self::Error>>> {
        let mut this = self.project();
        let polled = {
            let _entered = this.call.as_ref().map(|call| call.span.enter());
            ready!(this.inner.as_mut().poll_frame(cx))
        };
        let finished_with = match &polled {
            Some(Ok(frame)) => match frame.trailers_ref() {
                Some(trailers) => Some(grpc_status(trailers).unwrap_or(Code::Ok)),
                None if this.inner.is_end_stream() => Some(Code::Ok),
                None => None,
            },
            Some(Err(_)) => Some(Code::Internal),
            None => Some(Code::Ok),
        };
        if let Some(code) = finished_with
            && let Some(call) = this.call.take()
        {
            call.finish(code);
        }
        Poll::Ready(polled)
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn splits_grpc_paths_and_refuses_odd_ones() {
        assert_eq!(
            split_grpc_path("/faceproof.matcher.v1.Matcher/Embed"),
            ("faceproof.matcher.v1.Matcher", "Embed")
        );
        for odd in [
            "",
            "/",
            "/Service",
            "//Method",
            "/Service/",
            "/a/b/c",
            "no-slash",
        ] {
            assert_eq!(split_grpc_path(odd), (UNKNOWN, UNKNOWN), "{odd:?}");
        }
    }

    #[test]
    fn reads_grpc_status_from_headers() {
        let mut headers = http::HeaderMap::new();
        assert_eq!(grpc_status(&headers), None);
        headers.insert("grpc-status", http::HeaderValue::from_static("8"));
        assert_eq!(grpc_status(&headers), Some(Code::ResourceExhausted));
        headers.insert("grpc-status", http::HeaderValue::from_static("x"));
        assert_eq!(grpc_status(&headers), None);
    }

    use std::convert::Infallible;

    use http_body_util::{BodyExt, Empty, StreamBody};
    use tower::ServiceExt;

    type TestFrame = Result<Frame<&'static [u8]>, Infallible>;

    fn grpc_request(path: &str) -> http::Request<()> {
        http::Request::builder().uri(path).body(()).unwrap()
    }

    fn trailers(code: &'static str) -> http::HeaderMap {
        let mut map = http::HeaderMap::new();
        map.insert("grpc-status", http::HeaderValue::from_static(code));
        map
    }

    fn streamed(
        frames: Vec<TestFrame>,
    ) -> http::Response<StreamBody<tokio_stream::Iter<std::vec::IntoIter<TestFrame>>>> {
        http::Response::new(StreamBody::new(tokio_stream::iter(frames)))
    }

    fn count_line(text: &str, method: &str, code: u16) -> bool {
        text.lines().any(|line| {
            line.starts_with("faceproof_grpc_server_handled_total{")
                && line.contains(&format!("grpc_method=\"{method}\""))
                && line.contains(&format!("grpc_code=\"{code}\""))
                && line.ends_with(" 1")
        })
    }

    #[tokio::test]
    async fn status_from_trailers_is_recorded_when_the_body_ends() {
        let metrics = Metrics::new();
        let service = GrpcServerLayer::new(metrics.clone()).layer(tower::service_fn(|_| async {
            Ok::<_, Infallible>(streamed(vec![
                Ok(Frame::data(&b"\0\0\0\0\0"[..])),
                Ok(Frame::trailers(trailers("0"))),
            ]))
        }));
        let response = service
            .oneshot(grpc_request("/pkg.Svc/Unary"))
            .await
            .unwrap();
        assert!(
            !count_line(&metrics.encode().unwrap(), "Unary", 0),
            "not before the body ends"
        );
        response.into_body().collect().await.unwrap();
        assert!(count_line(&metrics.encode().unwrap(), "Unary", 0));
    }

    #[tokio::test]
    async fn status_in_headers_is_recorded_at_once() {
        let metrics = Metrics::new();
        let service = GrpcServerLayer::new(metrics.clone()).layer(tower::service_fn(|_| async {
            let mut response = http::Response::new(Empty::<&'static [u8]>::new());
            *response.headers_mut() = trailers("8");
            Ok::<_, Infallible>(response)
        }));
        let response = service
            .oneshot(grpc_request("/pkg.Svc/Busy"))
            .await
            .unwrap();
        assert!(count_line(&metrics.encode().unwrap(), "Busy", 8));
        drop(response);
        assert!(
            count_line(&metrics.encode().unwrap(), "Busy", 8),
            "recorded once"
        );
    }

    #[tokio::test]
    async fn a_body_dropped_mid_stream_counts_as_cancelled() {
        let metrics = Metrics::new();
        let service = GrpcServerLayer::new(metrics.clone()).layer(tower::service_fn(|_| async {
            Ok::<_, Infallible>(streamed(vec![
                Ok(Frame::data(&b"first"[..])),
                Ok(Frame::data(&b"second"[..])),
                Ok(Frame::trailers(trailers("0"))),
            ]))
        }));
        let mut body = service
            .oneshot(grpc_request("/pkg.Svc/Watch"))
            .await
            .unwrap()
            .into_body();
        body.frame().await.unwrap().unwrap();
        drop(body);
        let text = metrics.encode().unwrap();
        assert!(count_line(&text, "Watch", 1), "{text}");
        assert!(text.contains("faceproof_grpc_server_handling_seconds_count{grpc_service=\"pkg.Svc\",grpc_method=\"Watch\"} 1"), "{text}");
    }

    #[tokio::test]
    async fn unimplemented_paths_do_not_become_labels() {
        let metrics = Metrics::new();
        let service = GrpcServerLayer::new(metrics.clone()).layer(tower::service_fn(|_| async {
            let mut response = http::Response::new(Empty::<&'static [u8]>::new());
            *response.headers_mut() = trailers("12");
            Ok::<_, Infallible>(response)
        }));
        service
            .oneshot(grpc_request("/attacker.Chosen/Name"))
            .await
            .unwrap();
        let text = metrics.encode().unwrap();
        assert!(!text.contains("attacker"), "{text}");
        assert!(count_line(&text, UNKNOWN, 12), "{text}");
    }
}
