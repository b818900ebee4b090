//! The REST front end's edges against a gateway with in-process fake model services: auth and
//! rate limit before the body, the body limit, the JSON parser (duplicate keys, unknown fields,
//! types, enums), the reference error envelope, 404/405, CORS, request ids, metrics, and the
//! token limits on both transports.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::HashMap;

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;
use faceproof_proto::gateway::v1 as pb;
use faceproof_testkit::fake_backend::{
    COMPARE_PATH as PATH, GatewaySetup, HttpAnswer, MatcherScript, TestGateway, authorize,
    exchange, gallery_image, hs256_token as token_for, probe, reason, within,
};
use serde_json::{Value, json};
use tonic::{Code, Request, Status};
use tonic_types::{ErrorDetails, StatusExt as _};

fn token() -> String {
    token_for("acme", 600)
}

async fn post(app: &TestGateway, token: Option<&str>, body: &str) -> HttpAnswer {
    app.http("POST", PATH, token, body.as_bytes()).await
}

fn body() -> Value {
    json!({
        "probe": STANDARD.encode(probe()),
        "gallery": [STANDARD.encode(gallery_image())],
        "compare_min_score": 0.8,
    })
}

fn assert_envelope(answer: &HttpAnswer, status: u16, code: &str, reason: &str) {
    assert_eq!(answer.status, status, "{}", answer.body);
    assert_eq!(answer.body["code"], code, "{}", answer.body);
    assert_eq!(answer.body["status"], status);
    assert_eq!(answer.body["reason"], reason, "{}", answer.body);
    assert!(answer.body["message"].is_string());
    let request_id = answer.header("x-request-id").expect("x-request-id echoed");
    assert_eq!(answer.body["request_id"], request_id);
}

// ---------------------------------------------------------------- tests

#[tokio::test]
async fn a_huge_body_without_a_token_is_refused_without_being_read() {
    let app = TestGateway::start().await;
    // 1 GB announced, none of it sent: an answer proves the body was never waited for.
    let head = "content-type: application/json\r\ncontent-length: 1000000000\r\n";
    let answer = exchange(app.http_addr, &format!("POST {PATH}"), head, Vec::new()).await;
    assert_envelope(&answer, 401, "UNAUTHORIZED", "missing_token");

    // With a token, the declared length alone is refused.
    let head = format!("{head}authorization: Bearer {}\r\n", token());
    let answer = exchange(app.http_addr, &format!("POST {PATH}"), &head, Vec::new()).await;
    assert_envelope(&answer, 413, "PayloadTooLarge", "request_body_too_large");
    assert_eq!(app.matcher.calls(), 0);
}

#[tokio::test]
async fn the_rate_limit_answers_before_the_body_is_read() {
    let app =
        GatewaySetup::with_args(&["--rate-limit-per-second", "0.01", "--rate-limit-burst", "1"])
            .start()
            .await;
    let first = post(&app, Some(&token()), &body().to_string()).await;
    assert_eq!(first.status, 200, "{}", first.body);
    let head = format!(
        "content-type: application/json\r\ncontent-length: 50000000\r\nauthorization: Bearer {}\r\n",
        token()
    );
    let answer = exchange(app.http_addr, &format!("POST {PATH}"), &head, Vec::new()).await;
    assert_envelope(&answer, 429, "TooManyRequests", "rate_limited");
    assert!(answer.header("retry-after").is_some());
}

#[tokio::test]
async fn a_streamed_body_is_cut_at_the_limit() {
    // Limit: ((1 + 1) x 100000 + 64 KiB) x 4/3 + 64 KiB, about 418 KB.
    let app = GatewaySetup::with_args(&["--max-image-bytes", "100000", "--max-gallery", "1"])
        .start()
        .await;
    let chunk = vec![b' '; 64 * 1024];
    let mut chunked = Vec::new();
    for _ in 0..10 {
        chunked.extend_from_slice(format!("{:x}\r\n", chunk.len()).as_bytes());
        chunked.extend_from_slice(&chunk);
        chunked.extend_from_slice(b"\r\n");
    }
    chunked.extend_from_slice(b"0\r\n\r\n");
    let head = format!(
        "content-type: application/json\r\ntransfer-encoding: chunked\r\nauthorization: Bearer {}\r\n",
        token()
    );
    let answer = exchange(app.http_addr, &format!("POST {PATH}"), &head, chunked).await;
    assert_envelope(&answer, 413, "PayloadTooLarge", "request_body_too_large");
}

#[tokio::test]
async fn duplicated_keys_are_refused_at_every_level_naming_the_key() {
    let app = TestGateway::start().await;
    let image = STANDARD.encode(probe());
    let gallery = STANDARD.encode(gallery_image());
    for (text, key) in [
        (
            format!(r#"{{"probe":"{gallery}","gallery":["{gallery}"],"probe":"{image}"}}"#),
            "probe",
        ),
        (
            format!(r#"{{"probe":"{image}","gallery":["{gallery}"],"note":1,"note":2}}"#),
            "note",
        ),
        (
            format!(
                r#"{{"probe":"{image}","gallery":["{gallery}"],"meta":{{"a":{{"b":1,"b":1}}}}}}"#
            ),
            "meta.a.b",
        ),
    ] {
        let answer = post(&app, Some(&token()), &text).await;
        assert_envelope(&answer, 409, "InvalidParameter", "duplicate_key");
        assert_eq!(
            answer.fields(),
            [(key.to_owned(), "duplicate_key".to_owned())]
        );
        assert!(answer.body["message"].as_str().unwrap().contains(key));
    }
    assert_eq!(app.matcher.calls(), 0);
}

#[tokio::test]
async fn unknown_fields_are_ignored_and_enums_default_or_match_any_case() {
    let app = TestGateway::start().await;
    let mut minimal = body();
    minimal["client_reference"] = json!({"nested": [1, {"deep": "x"}], "n": null});
    let answer = post(&app, Some(&token()), &minimal.to_string()).await;
    assert_eq!(answer.status, 200, "{}", answer.body);
    let data = &answer.body["data"];
    assert_eq!(data["comparison"]["search_mode"], "FAST");
    assert_eq!(data["liveness"]["os"], "DESKTOP");
    assert_eq!(data["liveness"]["search_mode"], "FAST");
    // The images reach both model services as the decoded bytes.
    let compared = app.matcher.last_request().unwrap();
    assert_eq!(compared.probe, probe());
    assert_eq!(compared.gallery, [gallery_image()]);
    let checked = app.liveness.last_request().unwrap();
    assert_eq!(checked.image, probe());
    assert_eq!(checked.os, "DESKTOP");

    let mut lower = body();
    lower["search_mode"] = json!("accurate");
    lower["os"] = json!("ios");
    let answer = post(&app, Some(&token()), &lower.to_string()).await;
    assert_eq!(answer.status, 200, "{}", answer.body);
    assert_eq!(answer.body["data"]["comparison"]["search_mode"], "ACCURATE");
    assert_eq!(answer.body["data"]["liveness"]["os"], "IOS");
}

#[tokio::test]
async fn the_error_envelope_uses_the_reference_codes_and_reports_everything() {
    let app = TestGateway::start().await;
    let answer = post(&app, Some(&token()), r#"{"gallery":["aGk="]}"#).await;
    assert_envelope(&answer, 409, "MissingParameter", "invalid_request");
    assert_eq!(answer.body["message"], "\"probe\" is required");
    assert!(
        answer
            .fields()
            .contains(&("probe".to_owned(), "missing".to_owned()))
    );

    // A bad enum, a bad type, bad base64 and a URL: all reported together, 409 (parameters).
    let mut mixed = body();
    mixed["os"] = json!("WINDOWS");
    mixed["liveness_min_score"] = json!("high");
    mixed["probe"] = json!("https://user:secret@example.com/selfie.jpg");
    mixed["gallery"] = json!(["%%% not base64 %%%"]);
    let answer = post(&app, Some(&token()), &mixed.to_string()).await;
    assert_envelope(&answer, 409, "InvalidParameter", "invalid_request");
    let fields = answer.fields();
    for expected in [
        ("liveness_min_score", "invalid_type"),
        ("probe", "only_images_in_base64"),
        ("gallery[0]", "only_images_in_base64"),
        ("os", "invalid_value"),
    ] {
        assert!(
            fields.contains(&(expected.0.to_owned(), expected.1.to_owned())),
            "{expected:?} in {fields:?}"
        );
    }
    let text = answer.body.to_string();
    assert!(
        text.contains("images are sent as base64; URLs are not fetched"),
        "{text}"
    );
    assert!(!text.contains("secret"), "the URL is never quoted: {text}");

    // Only image problems: 412 ERROR.
    let mut images = body();
    images["gallery"] = json!(["%%%", STANDARD.encode(b"GIF89a not a supported image")]);
    let answer = post(&app, Some(&token()), &images.to_string()).await;
    assert_envelope(&answer, 412, "ERROR", "invalid_request");
    assert_eq!(
        answer.fields(),
        [
            ("gallery[0]".to_owned(), "only_images_in_base64".to_owned()),
            ("gallery[1]".to_owned(), "unsupported_format".to_owned()),
        ]
    );

    let answer = post(&app, Some(&token()), "{\"probe\": ").await;
    assert_envelope(&answer, 400, "BadRequest", "malformed_request");

    // A face problem from the model service: 412, field and reason, no internal names.
    let mut details = ErrorDetails::with_bad_request_violation("probe", "no face found");
    details.set_error_info("no_face_detected", "faceproof.matcher", HashMap::new());
    app.matcher
        .set(MatcherScript::Fail(Status::with_error_details(
            Code::InvalidArgument,
            "the matcher found no face",
            details,
        )));
    let answer = post(&app, Some(&token()), &body().to_string()).await;
    assert_envelope(&answer, 412, "ERROR", "no_face_detected");
    assert_eq!(
        answer.fields(),
        [("probe".to_owned(), "no_face_detected".to_owned())]
    );
    assert!(!answer.body["message"].as_str().unwrap().contains("matcher"));

    app.matcher.set(MatcherScript::Fail(Status::unavailable(
        "connection refused",
    )));
    let answer = post(&app, Some(&token()), &body().to_string()).await;
    assert_envelope(&answer, 503, "ServiceUnavailable", "matcher_unavailable");
    assert!(!answer.body["message"].as_str().unwrap().contains("matcher"));
}

#[tokio::test]
async fn token_limits_hold_on_rest_and_grpc() {
    let app = TestGateway::start().await;
    let long = "x".repeat(9 * 1024);
    let answer = post(&app, Some(&long), &body().to_string()).await;
    assert_envelope(
        &answer,
        401,
        "UNAUTHORIZED",
        "authorization_header_too_large",
    );
    let answer = post(
        &app,
        Some(&token_for("acme\u{202E}evil", 600)),
        &body().to_string(),
    )
    .await;
    assert_envelope(&answer, 401, "UNAUTHORIZED", "invalid_subject");
    let answer = post(
        &app,
        Some(&token_for(&"a".repeat(257), 600)),
        &body().to_string(),
    )
    .await;
    assert_envelope(&answer, 401, "UNAUTHORIZED", "invalid_subject");
    let answer = post(&app, Some(&token_for("acme", -3600)), &body().to_string()).await;
    assert_envelope(&answer, 403, "FORBIDDEN", "token_expired");

    let mut client = app.client().await;
    for (token, expected) in [
        (long, "authorization_header_too_large"),
        (token_for("line\nbreak", 600), "invalid_subject"),
    ] {
        let mut request = Request::new(pb::CompareWithLivenessRequest::default());
        authorize(&mut request, &token);
        let status = within(client.compare_with_liveness(request))
            .await
            .unwrap_err();
        assert_eq!(status.code(), Code::Unauthenticated);
        assert_eq!(reason(&status), expected);
    }
}

#[tokio::test]
async fn unknown_paths_and_methods_are_json_before_authentication() {
    let app = TestGateway::start().await;
    let answer = exchange(app.http_addr, "GET /v2/nothing-here", "", Vec::new()).await;
    assert_envelope(&answer, 404, "NotFound", "not_found");
    let answer = exchange(app.http_addr, &format!("GET {PATH}"), "", Vec::new()).await;
    assert_envelope(&answer, 405, "MethodNotAllowed", "method_not_allowed");
    assert_eq!(answer.header("allow"), Some("POST"));
}

#[tokio::test]
async fn request_ids_are_kept_or_generated_and_echoed() {
    let app = TestGateway::start().await;
    let answer = exchange(
        app.http_addr,
        "GET /healthz",
        "x-request-id: abc-123.X:9\r\n",
        Vec::new(),
    )
    .await;
    assert_eq!(answer.status, 200);
    assert_eq!(answer.header("x-request-id"), Some("abc-123.X:9"));
    for unusual in ["has space", "<script>", &"x".repeat(129)] {
        let head = format!("x-request-id: {unusual}\r\n");
        let answer = exchange(app.http_addr, "GET /nope", &head, Vec::new()).await;
        let generated = answer.header("x-request-id").unwrap();
        assert_ne!(generated, unusual);
        assert_eq!(generated.len(), 36, "a UUID: {generated}");
        assert_eq!(answer.body["request_id"], generated);
    }
}

#[tokio::test]
async fn cors_is_off_by_default_and_answers_allowed_origins_without_a_token() {
    let preflight = |origin: &str| {
        format!(
            "origin: {origin}\r\naccess-control-request-method: POST\r\naccess-control-request-headers: authorization, content-type\r\n"
        )
    };
    let off = TestGateway::start().await;
    let answer = exchange(
        off.http_addr,
        &format!("OPTIONS {PATH}"),
        &preflight("https://app.example.com"),
        Vec::new(),
    )
    .await;
    assert_eq!(answer.status, 405);
    assert_eq!(answer.header("access-control-allow-origin"), None);

    let app = GatewaySetup::with_args(&[
        "--cors-allowed-origin",
        "https://app.example.com,https://admin.example.com",
    ])
    .start()
    .await;
    let answer = exchange(
        app.http_addr,
        &format!("OPTIONS {PATH}"),
        &preflight("https://app.example.com"),
        Vec::new(),
    )
    .await;
    assert_eq!(answer.status, 204);
    assert_eq!(
        answer.header("access-control-allow-origin"),
        Some("https://app.example.com")
    );
    assert!(
        answer
            .header("access-control-allow-headers")
            .unwrap()
            .contains("authorization")
    );
    let answer = exchange(
        app.http_addr,
        &format!("OPTIONS {PATH}"),
        &preflight("https://evil.example.com"),
        Vec::new(),
    )
    .await;
    assert_eq!(answer.header("access-control-allow-origin"), None);
    let head = format!(
        "origin: https://app.example.com\r\ncontent-type: application/json\r\nauthorization: Bearer {}\r\n",
        token()
    );
    let text = body().to_string();
    let head = format!("{head}content-length: {}\r\n", text.len());
    let answer = exchange(
        app.http_addr,
        &format!("POST {PATH}"),
        &head,
        text.into_bytes(),
    )
    .await;
    assert_eq!(answer.status, 200, "{}", answer.body);
    assert_eq!(
        answer.header("access-control-allow-origin"),
        Some("https://app.example.com")
    );
}

#[tokio::test]
async fn rest_requests_are_counted_by_route_and_status() {
    let app = TestGateway::start().await;
    assert_eq!(
        post(&app, Some(&token()), &body().to_string()).await.status,
        200
    );
    assert_eq!(post(&app, None, "{}").await.status, 401);
    assert_eq!(
        exchange(app.http_addr, "GET /nope", "", Vec::new())
            .await
            .status,
        404
    );
    assert_eq!(
        exchange(app.http_addr, &format!("GET {PATH}"), "", Vec::new())
            .await
            .status,
        405
    );
    let text = app.metrics.encode().unwrap();
    for line in [
        format!(
            r#"faceproof_http_server_handled_total{{route="{PATH}",method="POST",status="200"}} 1"#
        ),
        format!(
            r#"faceproof_http_server_handled_total{{route="{PATH}",method="POST",status="401"}} 1"#
        ),
        format!(
            r#"faceproof_http_server_handled_total{{route="{PATH}",method="GET",status="405"}} 1"#
        ),
        r#"faceproof_http_server_handled_total{route="other",method="GET",status="404"} 1"#
            .to_owned(),
    ] {
        assert!(text.contains(&line), "{line} in\n{text}");
    }
}
