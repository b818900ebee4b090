//! The signed records (issues 10 and 12) over REST against fake model services: image digests,
//! the always-present liveness record, `comparison.result.passed`, per-item similarity, the
//! probe-copy flag; and every answer checked against the served OpenAPI document.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;
use faceproof_signing::PublicKeySet;
use faceproof_testkit::fake_backend::{
    API_KEY, COMPARE_PATH, HttpAnswer, MatcherScript, TestGateway, gallery_image, probe,
};
use serde_json::{Value, json};
use sha2::{Digest as _, Sha256};

fn sha256(bytes: &[u8]) -> String {
    hex::encode(Sha256::digest(bytes))
}

/// Every gallery item a match scoring `score` with `similarity`.
fn set_matcher(app: &TestGateway, score: f64, similarity: f64, near_identical: bool) {
    app.matcher.set(MatcherScript::Answer {
        score,
        similarity,
        near_identical,
    });
}

async fn rest_compare(app: &TestGateway, body: &Value) -> HttpAnswer {
    app.http(
        "POST",
        COMPARE_PATH,
        Some(API_KEY),
        body.to_string().as_bytes(),
    )
    .await
}

async fn openapi(app: &TestGateway) -> Value {
    let answer = app.http("GET", "/openapi.json", None, b"").await;
    assert_eq!(answer.status, 200);
    answer.body
}

/// The signing keys as REST publishes them.
async fn rest_keys(app: &TestGateway) -> PublicKeySet {
    let answer = app.http("GET", "/v2/signing-keys", None, b"").await;
    PublicKeySet::from_keys_json(&answer.body.to_string()).unwrap()
}

/// Checks a compare answer against the document: its status is listed and the body matches
/// that response's schema.
async fn assert_conforms(app: &TestGateway, answer: &HttpAnswer) {
    let document = openapi(app).await;
    let responses = &document["paths"][COMPARE_PATH]["post"]["responses"];
    let listed = &responses[answer.status.to_string()];
    assert!(
        listed.is_object(),
        "status {} is not documented",
        answer.status
    );
    let schema = &listed["content"]["application/json"]["schema"];
    let problems = check(&document, schema, &answer.body, "$");
    assert!(problems.is_empty(), "{problems:#?}\n{:#}", answer.body);
}

fn body(probe: &[u8], gallery: &[Vec<u8>], compare_min_score: Option<f64>) -> Value {
    let mut body = json!({
        "os": "IOS",
        "probe": STANDARD.encode(probe),
        "gallery": gallery.iter().map(|image| STANDARD.encode(image)).collect::<Vec<_>>(),
        "search_mode": "FAST",
    });
    if let Some(threshold) = compare_min_score {
        body["compare_min_score"] = json!(threshold);
    }
    body
}

// ---------------------------------------------------------------- the schema checker

/// The JSON Schema subset the document uses: `$ref`, `type`, `required`, `properties`,
/// `additionalProperties` (false or a schema), `items`, `minItems`, `enum`, `minimum`, `maximum`
/// and the one `pattern` (64 lowercase hex digits). Returns every mismatch with its JSON path.
fn check(document: &Value, schema: &Value, value: &Value, path: &str) -> Vec<String> {
    if let Some(reference) = schema.get("$ref").and_then(Value::as_str) {
        let pointer = reference.trim_start_matches('#');
        let target = document
            .pointer(pointer)
            .unwrap_or_else(|| panic!("dangling $ref {reference}"));
        return check(document, target, value, path);
    }
    let mut problems = Vec::new();
    for keyword in schema.as_object().unwrap().keys() {
        assert!(
            [
                "type",
                "required",
                "properties",
                "additionalProperties",
                "items",
                "minItems",
                "enum",
                "minimum",
                "maximum",
                "pattern",
                "description",
                "format",
            ]
            .contains(&keyword.as_str()),
            "the checker does not know the keyword {keyword}"
        );
    }
    if let Some(expected) = schema.get("type").and_then(Value::as_str) {
        let actual = match value {
            Value::Null => "null",
            Value::Bool(_) => "boolean",
            Value::Number(number) if number.is_i64() || number.is_u64() => "integer",
            Value::Number(_) => "number",
            Value::String(_) => "string",
            Value::Array(_) => "array",
            Value::Object(_) => "object",
        };
        if actual != expected && !(expected == "number" && actual == "integer") {
            problems.push(format!("{path}: {actual}, expected {expected}"));
            return problems;
        }
    }
    if let Some(allowed) = schema.get("enum").and_then(Value::as_array)
        && !allowed.contains(value)
    {
        problems.push(format!("{path}: {value} is not one of {allowed:?}"));
    }
    if let Some(number) = value.as_f64() {
        if let Some(minimum) = schema.get("minimum").and_then(Value::as_f64)
            && number < minimum
        {
            problems.push(format!("{path}: {number} < {minimum}"));
        }
        if let Some(maximum) = schema.get("maximum").and_then(Value::as_f64)
            && number > maximum
        {
            problems.push(format!("{path}: {number} > {maximum}"));
        }
    }
    if let Some(pattern) = schema.get("pattern").and_then(Value::as_str) {
        assert_eq!(pattern, "^[0-9a-f]{64}$", "the checker knows one pattern");
        let text = value.as_str().unwrap_or_default();
        if text.len() != 64
            || !text
                .bytes()
                .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
        {
            problems.push(format!("{path}: {value} is not 64 lowercase hex digits"));
        }
    }
    if let Some(items) = value.as_array() {
        if let Some(minimum) = schema.get("minItems").and_then(Value::as_u64)
            && (items.len() as u64) < minimum
        {
            problems.push(format!("{path}: fewer than {minimum} items"));
        }
        if let Some(item_schema) = schema.get("items") {
            for (index, item) in items.iter().enumerate() {
                problems.extend(check(
                    document,
                    item_schema,
                    item,
                    &format!("{path}[{index}]"),
                ));
            }
        }
    }
    if let Some(members) = value.as_object() {
        for required in schema
            .get("required")
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
        {
            let name = required.as_str().unwrap();
            if !members.contains_key(name) {
                problems.push(format!("{path}: `{name}` is missing"));
            }
        }
        let properties = schema.get("properties").and_then(Value::as_object);
        for (name, member) in members {
            let member_path = format!("{path}.{name}");
            match (
                properties.and_then(|p| p.get(name)),
                schema.get("additionalProperties"),
            ) {
                (Some(member_schema), _) => {
                    problems.extend(check(document, member_schema, member, &member_path));
                }
                (None, Some(Value::Bool(false))) => {
                    problems.push(format!("{member_path}: not in the document"));
                }
                (None, Some(extra)) if extra.is_object() => {
                    problems.extend(check(document, extra, member, &member_path));
                }
                _ => {}
            }
        }
    }
    problems
}

// ---------------------------------------------------------------- tests

#[tokio::test]
async fn a_match_carries_digests_similarity_and_passed_and_conforms() {
    let app = TestGateway::start().await;
    let (probe, gallery) = (probe(), vec![gallery_image()]);
    let answer = rest_compare(&app, &body(&probe, &gallery, Some(0.8))).await;
    assert_eq!(answer.status, 200, "{}", answer.body);
    assert_conforms(&app, &answer).await;
    let result = &answer.body["data"]["comparison"]["result"];
    assert_eq!(result["passed"], true);
    assert_eq!(result["min_score"], 0.8);
    assert_eq!(result["probe_sha256"], sha256(&probe));
    assert_eq!(result["probe_is_gallery_copy"], false);
    let item = &result["gallery"][0];
    assert_eq!(item["sha256"], sha256(&gallery[0]));
    assert_eq!(
        (item["similarity"].as_f64(), item["score"].as_f64()),
        (Some(0.55), Some(0.9))
    );
    assert_eq!(item["probe_copy"], false);
    let liveness = &answer.body["data"]["liveness"];
    assert_eq!(liveness["status"], "success");
    assert_eq!(liveness["result"]["passed"], true);

    // The digests are signed and bind the photos.
    let text = answer.body.to_string();
    let keys = rest_keys(&app).await;
    faceproof_signing::verify_response_text(&text, &keys).unwrap();
    let envelope = faceproof_signing::parse_response_text(&text).unwrap();
    assert_eq!(
        faceproof_signing::check_image_digests(
            &envelope,
            Some(probe.as_slice()),
            Some(gallery.as_slice())
        )
        .unwrap(),
        2
    );
    assert!(
        faceproof_signing::check_image_digests(&envelope, Some(gallery[0].as_slice()), None)
            .is_err()
    );
}

#[tokio::test]
async fn skipped_liveness_is_a_full_record_and_conforms() {
    let app = TestGateway::start().await;
    set_matcher(&app, 0.7, 0.3, false);
    let answer = rest_compare(&app, &body(&probe(), &[gallery_image()], Some(0.8))).await;
    assert_eq!(answer.status, 200, "{}", answer.body);
    assert_conforms(&app, &answer).await;
    let data = &answer.body["data"];
    assert_eq!(data["comparison"]["result"]["passed"], false);
    assert!(data.get("liveness_skipped").is_none());
    let liveness = &data["liveness"];
    assert_eq!(liveness["status"], "skipped");
    assert_eq!(liveness["type"], "liveness");
    assert_eq!(liveness["os"], "IOS");
    let result = &liveness["result"];
    assert_eq!(result["passed"], false);
    assert!(result.get("liveness_score").is_none(), "{result}");
    assert_eq!(result["reason"], "comparison_below_threshold");
    assert_eq!(result["comparison_score"], 0.7);
    assert_eq!(app.liveness.calls(), 0);
    faceproof_signing::verify_response_text(&answer.body.to_string(), &rest_keys(&app).await)
        .unwrap();
}

#[tokio::test]
async fn without_a_threshold_passed_is_judged_at_the_lowest_one() {
    let app = TestGateway::start().await;
    for (score, passed) in [(0.6699, false), (0.67, true)] {
        set_matcher(&app, score, 0.4, false);
        let answer = rest_compare(&app, &body(&probe(), &[gallery_image()], None)).await;
        assert_eq!(answer.status, 200, "{}", answer.body);
        let result = &answer.body["data"]["comparison"]["result"];
        assert_eq!(
            (result["passed"].as_bool(), result["min_score"].as_f64()),
            (Some(passed), Some(0.67))
        );
        // Without a threshold liveness always runs.
        assert_eq!(answer.body["data"]["liveness"]["status"], "success");
    }
}

#[tokio::test]
async fn a_probe_sent_again_as_a_gallery_image_fails_liveness_as_a_copy() {
    let app = TestGateway::start().await;
    let probe = probe();
    let answer = rest_compare(
        &app,
        &body(&probe, &[gallery_image(), probe.clone()], Some(0.8)),
    )
    .await;
    assert_eq!(answer.status, 200, "{}", answer.body);
    assert_conforms(&app, &answer).await;
    let result = &answer.body["data"]["comparison"]["result"];
    assert_eq!(result["probe_is_gallery_copy"], true);
    assert_eq!(result["gallery"][0]["probe_copy"], false);
    assert_eq!(result["gallery"][1]["probe_copy"], true);
    assert_eq!(result["gallery"][1]["sha256"], result["probe_sha256"]);
    let liveness = &answer.body["data"]["liveness"];
    assert_eq!(liveness["status"], "failed");
    assert_eq!(liveness["result"]["passed"], false);
    assert_eq!(liveness["result"]["reason"], "probe_is_gallery_copy");
    assert!(liveness["result"].get("liveness_score").is_none());
    assert_eq!(app.liveness.calls(), 0, "not run on a copy");
}

#[tokio::test]
async fn a_near_identical_embedding_is_a_copy_too() {
    let app = TestGateway::start().await;
    set_matcher(&app, 1.0, 0.995, true);
    let answer = rest_compare(&app, &body(&probe(), &[gallery_image()], Some(0.8))).await;
    assert_eq!(answer.status, 200, "{}", answer.body);
    let data = &answer.body["data"];
    assert_eq!(
        data["comparison"]["result"]["gallery"][0]["probe_copy"],
        true
    );
    assert_eq!(
        data["liveness"]["result"]["reason"],
        "probe_is_gallery_copy"
    );
}

#[tokio::test]
async fn errors_and_the_keys_conform_to_the_document() {
    let app = TestGateway::start().await;
    let document = openapi(&app).await;
    assert_eq!(document["openapi"], "3.1.0");
    assert!(document["paths"]["/v2/face-recognition/compare-with-liveness"]["post"].is_object());

    // No token.
    let unauthenticated = app.http("POST", COMPARE_PATH, None, b"{}").await;
    assert_eq!(unauthenticated.status, 401);
    assert_conforms(&app, &unauthenticated).await;
    // A value out of range.
    let mut out_of_range = body(&probe(), &[gallery_image()], None);
    out_of_range["compare_min_score"] = json!(2.0);
    let refused = rest_compare(&app, &out_of_range).await;
    assert_eq!(refused.status, 409, "{}", refused.body);
    assert_conforms(&app, &refused).await;
    // Not an image.
    let not_an_image = rest_compare(&app, &body(b"plain text", &[gallery_image()], None)).await;
    assert!(not_an_image.status >= 400, "{}", not_an_image.body);
    assert_conforms(&app, &not_an_image).await;

    let keys = app.http("GET", "/v2/signing-keys", None, b"").await;
    let schema = &document["paths"]["/v2/signing-keys"]["get"]["responses"]["200"]["content"]["application/json"]
        ["schema"];
    assert_eq!(
        check(&document, schema, &keys.body, "$"),
        Vec::<String>::new()
    );
}

#[test]
fn the_checker_finds_what_does_not_conform() {
    let document = faceproof_gateway::openapi::document();
    let schema = json!({"$ref": "#/components/schemas/GalleryItem"});
    let good = json!({"index": 0, "score": 0.5, "sha256": "a".repeat(64), "probe_copy": false});
    assert!(check(&document, &schema, &good, "$").is_empty());
    let bad = json!({"index": -1, "score": 2, "sha256": "XY", "extra": 1});
    let problems = check(&document, &schema, &bad, "$");
    assert_eq!(problems.len(), 5, "{problems:#?}");
}
