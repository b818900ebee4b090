//! The OpenAPI 3.1 document of the REST API, served at `GET /openapi.json`.
//!
//! Written as Rust data rather than derived (utoipa): the JSON records are not serde types but the
//! mapping `faceproof_signing::response_to_json` builds from the proto messages, so a derive would
//! describe the proto shapes, not what the wire carries. The schemas below mirror that mapping
//! field for field, and `tests/openapi.rs` checks real responses (success, skipped liveness, a
//! probe copy, errors) against them, so a change to one without the other fails the suite.

use serde_json::{Map, Value, json};

/// The reference API's path (the document describes the paths, the REST router serves them).
pub const COMPARE_PATH: &str = "/v2/face-recognition/compare-with-liveness";
pub const SIGNING_KEYS_PATH: &str = "/v2/signing-keys";
/// The document's path.
pub const OPENAPI_PATH: &str = "/openapi.json";

/// The OpenAPI 3.1 document.
pub fn document() -> Value {
    json!({
        "openapi": "3.1.0",
        "info": {
            "title": "faceproof",
            "version": env!("CARGO_PKG_VERSION"),
            "description": "Face verification with liveness: the reference compare-with-liveness \
                            API with Ed25519-signed results (see docs/api.md, docs/signing.md).",
        },
        "paths": {
            COMPARE_PATH: {"post": compare_operation()},
            SIGNING_KEYS_PATH: {"get": {
                "operationId": "getSigningKeys",
                "summary": "The public keys that verify result signatures (no token needed).",
                "security": [],
                "responses": {
                    "200": json_response("The keys.", "SigningKeys"),
                    "default": json_response("An error.", "Error"),
                },
            }},
            "/healthz": {"get": health_operation("healthz", "The process is up (liveness probe).")},
            "/readyz": {"get": health_operation(
                "readyz",
                "A ready replica of every model service answers (readiness probe); 503 otherwise.",
            )},
            OPENAPI_PATH: {"get": {
                "operationId": "getOpenApi",
                "summary": "This document.",
                "security": [],
                "responses": {"200": {"description": "The OpenAPI 3.1 document.",
                    "content": {"application/json": {"schema": {"type": "object"}}}}},
            }},
        },
        "components": {
            "securitySchemes": {"bearer": {
                "type": "http",
                "scheme": "bearer",
                "description": "A JWT (`sub` = client id) or an API key.",
            }},
            "schemas": schemas(),
        },
        "security": [{"bearer": []}],
    })
}

fn compare_operation() -> Value {
    let error = || json_response("An error (see `code`, `reason`, `violations`).", "Error");
    json!({
        "operationId": "compareWithLiveness",
        "summary": "Is the probe the same person as the gallery, and is the probe live?",
        "requestBody": {
            "required": true,
            "content": {"application/json": {"schema": reference("CompareRequest")}},
        },
        "responses": {
            "200": json_response("The signed result.", "CompareResponse"),
            "400": error(), "401": error(), "403": error(), "409": error(), "412": error(),
            "413": error(), "429": error(), "500": error(), "503": error(), "504": error(),
        },
    })
}

fn health_operation(id: &str, summary: &str) -> Value {
    json!({
        "operationId": id,
        "summary": summary,
        "security": [],
        "responses": {
            "200": {"description": "Healthy.", "content": {"text/plain": {"schema": {"type": "string"}}}},
            "503": {"description": "Not ready."},
        },
    })
}

fn json_response(description: &str, schema: &str) -> Value {
    json!({"description": description, "content": {"application/json": {"schema": reference(schema)}}})
}

fn reference(name: &str) -> Value {
    json!({"$ref": format!("#/components/schemas/{name}")})
}

/// `{"type": "object", "required": [...], "properties": {...}}`, closed unless `open`.
fn object(required: &[&str], properties: Value, open: bool) -> Value {
    let mut schema = Map::new();
    schema.insert("type".into(), json!("object"));
    schema.insert("required".into(), json!(required));
    schema.insert("properties".into(), properties);
    if !open {
        schema.insert("additionalProperties".into(), json!(false));
    }
    Value::Object(schema)
}

fn string() -> Value {
    json!({"type": "string"})
}

fn sha256() -> Value {
    json!({"type": "string", "pattern": "^[0-9a-f]{64}$",
           "description": "SHA-256 (lowercase hex) of the image bytes as received."})
}

fn number(minimum: f64, maximum: f64) -> Value {
    json!({"type": "number", "minimum": minimum, "maximum": maximum})
}

fn constant(value: &str) -> Value {
    json!({"type": "string", "enum": [value]})
}

fn schemas() -> Value {
    json!({
        "CompareRequest": object(&["probe", "gallery"], json!({
            "os": {"type": "string", "description": "DESKTOP, IOS or ANDROID (any case); default DESKTOP."},
            "probe": {"type": "string", "description": "The selfie: base64 or a data:image/...;base64, URL."},
            "gallery": {"type": "array", "minItems": 1, "items": {"type": "string"}},
            "search_mode": {"type": "string", "description": "FAST or ACCURATE (any case); default FAST."},
            "compare_min_score": number(0.67, 0.95),
            "liveness_min_score": number(0.52, 1.0),
        }), true),
        "CompareResponse": object(&["id", "data", "signature"], json!({
            "id": string(),
            "data": object(&["comparison", "liveness"], json!({
                "comparison": reference("ComparisonRecord"),
                "liveness": reference("LivenessRecord"),
            }), false),
            "signature": reference("Signature"),
        }), false),
        "ComparisonRecord": object(
            &["id", "client", "type", "search_mode", "status", "result", "comparedAt", "createdAt", "updatedAt"],
            json!({
                "id": string(),
                "client": string(),
                "type": constant("compareLive"),
                "search_mode": {"type": "string", "enum": ["FAST", "ACCURATE"]},
                "status": constant("success"),
                "result": reference("ComparisonResult"),
                "comparedAt": {"type": "string", "format": "date-time"},
                "createdAt": {"type": "string", "format": "date-time"},
                "updatedAt": {"type": "string", "format": "date-time"},
            }),
            false,
        ),
        "ComparisonResult": object(
            &["score", "passed", "min_score", "probe_sha256", "probe_is_gallery_copy", "best_gallery_index", "gallery"],
            json!({
                "score": number(0.0, 1.0),
                "passed": {"type": "boolean", "description": "score >= min_score."},
                "min_score": {"type": "number", "description": "compare_min_score, or 0.67 when none was sent."},
                "probe_sha256": sha256(),
                "probe_is_gallery_copy": {"type": "boolean"},
                "false_accept_rate": number(0.0, 1.0),
                "best_gallery_index": {"type": "integer", "minimum": 0},
                "probe_face": reference("Face"),
                "gallery": {"type": "array", "items": reference("GalleryItem")},
            }),
            false,
        ),
        "GalleryItem": object(&["index", "score", "sha256", "probe_copy"], json!({
            "index": {"type": "integer", "minimum": 0},
            "score": number(0.0, 1.0),
            "similarity": number(-1.0, 1.0),
            "sha256": sha256(),
            "probe_copy": {"type": "boolean"},
            "face": reference("Face"),
            "issue": reference("FaceIssue"),
        }), false),
        "LivenessRecord": object(
            &["id", "client", "type", "status", "search_mode", "os", "liveness_min_score", "result", "createdAt", "updatedAt"],
            json!({
                "id": string(),
                "client": string(),
                "type": constant("liveness"),
                "status": {"type": "string", "enum": ["success", "failed", "skipped"]},
                "search_mode": {"type": "string", "enum": ["FAST", "ACCURATE"]},
                "os": {"type": "string", "enum": ["DESKTOP", "IOS", "ANDROID"]},
                "liveness_min_score": number(0.0, 1.0),
                "result": reference("LivenessResult"),
                "createdAt": {"type": "string", "format": "date-time"},
                "updatedAt": {"type": "string", "format": "date-time"},
            }),
            false,
        ),
        "LivenessResult": object(&["passed", "min_score"], json!({
            "liveness_score": {"type": "number", "minimum": 0.0, "maximum": 1.0,
                               "description": "Absent when the check did not run."},
            "passed": {"type": "boolean"},
            "min_score": number(0.0, 1.0),
            "reason": {"type": "string", "enum": ["comparison_below_threshold", "probe_is_gallery_copy"]},
            "comparison_score": number(0.0, 1.0),
            "attack": object(&["print_probability", "screen_probability"], json!({
                "print_probability": number(0.0, 1.0),
                "screen_probability": number(0.0, 1.0),
            }), false),
            "issue": reference("FaceIssue"),
        }), false),
        "Face": object(&["landmarks", "detection_score"], json!({
            "box": object(&["x", "y", "width", "height"], json!({
                "x": {"type": "number"}, "y": {"type": "number"},
                "width": {"type": "number"}, "height": {"type": "number"},
            }), false),
            "landmarks": {"type": "array", "items": object(&["x", "y"], json!({
                "x": {"type": "number"}, "y": {"type": "number"},
            }), false)},
            "detection_score": number(0.0, 1.0),
        }), false),
        "FaceIssue": object(&["reason", "field", "detail"], json!({
            "reason": string(), "field": string(), "detail": string(),
        }), false),
        "Signature": object(
            &["dateTime", "message", "algorithm", "key_id", "canonicalization", "value"],
            json!({
                "dateTime": string(),
                "message": string(),
                "algorithm": constant("Ed25519"),
                "key_id": string(),
                "canonicalization": constant("jcs-rfc8785"),
                "value": {"type": "string", "description": "Base64 Ed25519 signature (docs/signing.md)."},
                "digests": {"type": "object", "additionalProperties": string()},
            }),
            false,
        ),
        "SigningKeys": object(&["keys"], json!({
            "keys": {"type": "array", "items": object(&["key_id", "algorithm", "public_key"], json!({
                "key_id": string(), "algorithm": constant("Ed25519"), "public_key": string(),
            }), false)},
        }), false),
        "Error": object(&["message", "code"], json!({
            "message": string(),
            "code": {"type": "string", "description": "The reference API's code: MissingParameter, \
                     UNAUTHORIZED, FORBIDDEN, ERROR, NotFound, InternalServerError, ..."},
            "status": {"type": "integer"},
            "reason": string(),
            "violations": {"type": "array", "items": object(&["field"], json!({
                "field": string(), "reason": string(), "description": string(),
            }), true)},
            "request_id": string(),
        }), true),
    })
}
