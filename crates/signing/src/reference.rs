//! The reference JSON form of a compare-with-liveness result: the one mapping from the gateway's
//! proto response to the records of the reference REST API. The REST endpoint and
//! `faceproof compare` both print this form, so `faceproof verify` accepts either.

use faceproof_proto::common::v1::{Face, FaceIssue, FaceIssueReason};
use faceproof_proto::gateway::v1 as pb;
use serde_json::{Map, Value, json};

use crate::SigningError;

/// The reference JSON envelope `{"id", "data": {...}, "signature": {...}}` of a response.
///
/// `signature.digests` holds the SHA-256 of each signed part (see [`crate::part_digests`]): they
/// are not signed themselves, they let a verifier name the part that changed.
pub fn response_to_json(response: &pb::CompareWithLivenessResponse) -> Result<Value, SigningError> {
    let data = response
        .data
        .as_ref()
        .ok_or(SigningError::MissingPart("data"))?;
    let mut data_json = Map::new();
    let comparison = data
        .comparison
        .as_ref()
        .ok_or(SigningError::MissingPart("data.comparison"))?;
    data_json.insert("comparison".into(), comparison_to_json(comparison)?);
    let liveness = data
        .liveness
        .as_ref()
        .ok_or(SigningError::MissingPart("data.liveness"))?;
    data_json.insert("liveness".into(), liveness_to_json(liveness)?);
    let mut envelope = Map::new();
    envelope.insert("id".into(), Value::String(response.id.clone()));
    envelope.insert("data".into(), Value::Object(data_json));
    if let Some(signature) = &response.signature {
        envelope.insert("signature".into(), signature_to_json(signature));
        let envelope_value = Value::Object(envelope);
        let digests = crate::part_digests(&envelope_value)?;
        let mut envelope = match envelope_value {
            Value::Object(map) => map,
            _ => return Err(SigningError::MissingPart("envelope")),
        };
        if let Some(Value::Object(signature)) = envelope.get_mut("signature") {
            let digests: Map<String, Value> = digests
                .into_iter()
                .map(|(part, digest)| (part, Value::String(digest)))
                .collect();
            signature.insert("digests".into(), Value::Object(digests));
        }
        return Ok(Value::Object(envelope));
    }
    Ok(Value::Object(envelope))
}

/// `{"keys": [{"key_id", "algorithm", "public_key"}]}`, as served by `GET /v2/signing-keys`.
pub fn signing_keys_to_json(keys: &pb::GetSigningKeysResponse) -> Value {
    let keys: Vec<Value> = keys
        .keys
        .iter()
        .map(|key| {
            json!({
                "key_id": key.key_id,
                "algorithm": key.algorithm,
                "public_key": key.public_key,
            })
        })
        .collect();
    json!({ "keys": keys })
}

fn comparison_to_json(record: &pb::ComparisonRecord) -> Result<Value, SigningError> {
    let result = record
        .result
        .as_ref()
        .ok_or(SigningError::MissingPart("data.comparison.result"))?;
    let mut result_json = Map::new();
    result_json.insert("score".into(), number(result.score)?);
    result_json.insert("passed".into(), Value::Bool(result.passed));
    result_json.insert("min_score".into(), number(result.min_score)?);
    result_json.insert(
        "probe_sha256".into(),
        Value::String(result.probe_sha256.clone()),
    );
    result_json.insert(
        "probe_is_gallery_copy".into(),
        Value::Bool(result.probe_is_gallery_copy),
    );
    if let Some(rate) = result.false_accept_rate {
        result_json.insert("false_accept_rate".into(), number(rate)?);
    }
    result_json.insert(
        "best_gallery_index".into(),
        Value::from(result.best_gallery_index),
    );
    if let Some(face) = &result.probe_face {
        result_json.insert("probe_face".into(), face_to_json(face)?);
    }
    let gallery = result
        .gallery
        .iter()
        .map(gallery_item_to_json)
        .collect::<Result<Vec<_>, _>>()?;
    result_json.insert("gallery".into(), Value::Array(gallery));
    Ok(json!({
        "id": record.id,
        "client": record.client,
        "type": record.r#type,
        "search_mode": record.search_mode,
        "status": record.status,
        "result": result_json,
        "comparedAt": record.compared_at,
        "createdAt": record.created_at,
        "updatedAt": record.updated_at,
    }))
}

fn gallery_item_to_json(item: &pb::GalleryItem) -> Result<Value, SigningError> {
    let mut map = Map::new();
    map.insert("index".into(), Value::from(item.index));
    map.insert("score".into(), number(item.score)?);
    if let Some(similarity) = item.similarity {
        map.insert("similarity".into(), number(similarity)?);
    }
    map.insert("sha256".into(), Value::String(item.sha256.clone()));
    map.insert("probe_copy".into(), Value::Bool(item.probe_copy));
    if let Some(face) = &item.face {
        map.insert("face".into(), face_to_json(face)?);
    }
    if let Some(issue) = &item.issue {
        map.insert("issue".into(), issue_to_json(issue));
    }
    Ok(Value::Object(map))
}

fn liveness_to_json(record: &pb::LivenessRecord) -> Result<Value, SigningError> {
    let result = record
        .result
        .as_ref()
        .ok_or(SigningError::MissingPart("data.liveness.result"))?;
    let mut result_json = Map::new();
    if let Some(score) = result.liveness_score {
        result_json.insert("liveness_score".into(), number(score)?);
    }
    result_json.insert("passed".into(), Value::Bool(result.passed));
    result_json.insert("min_score".into(), number(result.min_score)?);
    if !result.reason.is_empty() {
        result_json.insert("reason".into(), Value::String(result.reason.clone()));
    }
    if let Some(score) = result.comparison_score {
        result_json.insert("comparison_score".into(), number(score)?);
    }
    if let Some(attack) = &result.attack {
        result_json.insert(
            "attack".into(),
            json!({
                "print_probability": number(attack.print_probability)?,
                "screen_probability": number(attack.screen_probability)?,
            }),
        );
    }
    if let Some(issue) = &result.issue {
        result_json.insert("issue".into(), issue_to_json(issue));
    }
    Ok(json!({
        "id": record.id,
        "client": record.client,
        "type": record.r#type,
        "status": record.status,
        "search_mode": record.search_mode,
        "os": record.os,
        "liveness_min_score": number(record.liveness_min_score)?,
        "result": result_json,
        "createdAt": record.created_at,
        "updatedAt": record.updated_at,
    }))
}

fn signature_to_json(signature: &pb::Signature) -> Value {
    json!({
        "dateTime": signature.date_time,
        "message": signature.message,
        "algorithm": signature.algorithm,
        "key_id": signature.key_id,
        "canonicalization": signature.canonicalization,
        "value": signature.value,
    })
}

fn face_to_json(face: &Face) -> Result<Value, SigningError> {
    let mut map = Map::new();
    if let Some(bounding_box) = &face.r#box {
        map.insert(
            "box".into(),
            json!({
                "x": single(bounding_box.x)?,
                "y": single(bounding_box.y)?,
                "width": single(bounding_box.width)?,
                "height": single(bounding_box.height)?,
            }),
        );
    }
    let landmarks = face
        .landmarks
        .iter()
        .map(|point| Ok(json!({"x": single(point.x)?, "y": single(point.y)?})))
        .collect::<Result<Vec<_>, SigningError>>()?;
    map.insert("landmarks".into(), Value::Array(landmarks));
    map.insert("detection_score".into(), single(face.detection_score)?);
    Ok(Value::Object(map))
}

fn issue_to_json(issue: &FaceIssue) -> Value {
    let reason = FaceIssueReason::try_from(issue.reason)
        .unwrap_or(FaceIssueReason::Unspecified)
        .code();
    json!({"reason": reason, "field": issue.field, "detail": issue.detail})
}

fn number(value: f64) -> Result<Value, SigningError> {
    serde_json::Number::from_f64(value)
        .map(Value::Number)
        .ok_or(SigningError::NonFiniteNumber)
}

/// A 32-bit float written with its own shortest digits (0.1f32 becomes 0.1, not
/// 0.10000000149011612), so box coordinates read naturally and stay exact.
fn single(value: f32) -> Result<Value, SigningError> {
    let widened: f64 = value
        .to_string()
        .parse()
        .map_err(|_| SigningError::NonFiniteNumber)?;
    number(widened)
}
