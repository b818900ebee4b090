//! The signed result format of faceproof.
//!
//! A compare-with-liveness result travels as the reference JSON envelope
//! `{"id", "data": {"comparison", "liveness"}, "signature"}`
//! ([`response_to_json`]). The gateway signs, with Ed25519, the JCS (RFC 8785) bytes of
//! `{"id", "data", "signature"}` where `signature` keeps only its metadata (`algorithm`,
//! `canonicalization`, `dateTime`, `key_id`, `message`): see [`signed_payload`] and
//! docs/signing.md. Anyone with the public key can check a saved response offline
//! ([`verify_response_text`]), and a failure names what changed.

#![cfg_attr(test, allow(clippy::unwrap_used))]

mod canonical;
mod keys;
mod reference;
mod strict_json;
#[cfg(any(test, feature = "testing"))]
pub mod testing;
mod verify;

pub use canonical::{CANONICALIZATION, canonicalize, format_double};
pub use keys::{PublicKeySet, Signer, key_id_for};
pub use reference::{response_to_json, signing_keys_to_json};
pub use strict_json::parse_without_duplicate_keys;
pub use verify::{
    Verified, VerifyError, check_image_digests, parse_response_text, verify_response_json,
    verify_response_text,
};

use std::collections::BTreeMap;

use serde_json::{Map, Value};
use sha2::{Digest, Sha256};

/// The only signature algorithm faceproof issues.
pub const ALGORITHM: &str = "Ed25519";

/// The signature members that are signed (everything but `value` and `digests`).
const SIGNED_SIGNATURE_MEMBERS: [&str; 5] = [
    "algorithm",
    "canonicalization",
    "dateTime",
    "key_id",
    "message",
];

/// The parts whose digests `signature.digests` carries, in the order a verifier reports them.
pub const PARTS: [&str; 4] = ["id", "data.comparison", "data.liveness", "signature"];

#[derive(Debug, thiserror::Error)]
pub enum SigningError {
    #[error("the result has no `{0}`")]
    MissingPart(&'static str),
    #[error("a number is NaN or infinite and has no JSON form")]
    NonFiniteNumber,
    #[error("the integer {0} is too large for an IEEE 754 double (JCS cannot write it exactly)")]
    NumberOutOfRange(String),
    #[error("signing key: {0}")]
    Key(String),
    #[error("public key: {0}")]
    PublicKey(String),
    #[error("keys JSON: {0}")]
    KeysJson(String),
}

/// The bytes that the Ed25519 signature covers: the JCS form of
/// `{"data", "id", "signature": {"algorithm", "canonicalization", "dateTime", "key_id", "message"}}`
/// taken from a reference JSON envelope. Members of the envelope other than these are ignored.
pub fn signed_payload(envelope: &Value) -> Result<Vec<u8>, SigningError> {
    let object = envelope
        .as_object()
        .ok_or(SigningError::MissingPart("envelope"))?;
    let mut payload = Map::new();
    payload.insert(
        "id".into(),
        object
            .get("id")
            .cloned()
            .ok_or(SigningError::MissingPart("id"))?,
    );
    payload.insert(
        "data".into(),
        object
            .get("data")
            .cloned()
            .ok_or(SigningError::MissingPart("data"))?,
    );
    payload.insert(
        "signature".into(),
        Value::Object(signed_signature_members(object)?),
    );
    canonicalize(&Value::Object(payload))
}

fn signed_signature_members(
    envelope: &Map<String, Value>,
) -> Result<Map<String, Value>, SigningError> {
    let signature = envelope
        .get("signature")
        .and_then(Value::as_object)
        .ok_or(SigningError::MissingPart("signature"))?;
    Ok(signature
        .iter()
        .filter(|(name, _)| SIGNED_SIGNATURE_MEMBERS.contains(&name.as_str()))
        .map(|(name, value)| (name.clone(), value.clone()))
        .collect())
}

/// SHA-256 (lowercase hex) of the JCS bytes of each signed part present in the envelope:
/// `id`, `data.comparison`, `data.liveness` and `signature` (its signed
/// members). Not signed themselves: they let a verifier say which part changed.
pub fn part_digests(envelope: &Value) -> Result<BTreeMap<String, String>, SigningError> {
    let object = envelope
        .as_object()
        .ok_or(SigningError::MissingPart("envelope"))?;
    let mut digests = BTreeMap::new();
    if let Some(id) = object.get("id") {
        digests.insert("id".to_owned(), digest_hex(id)?);
    }
    if let Some(data) = object.get("data").and_then(Value::as_object) {
        for part in ["comparison", "liveness"] {
            if let Some(value) = data.get(part) {
                digests.insert(format!("data.{part}"), digest_hex(value)?);
            }
        }
    }
    if object.get("signature").is_some() {
        let members = signed_signature_members(object)?;
        digests.insert("signature".to_owned(), digest_hex(&Value::Object(members))?);
    }
    Ok(digests)
}

fn digest_hex(value: &Value) -> Result<String, SigningError> {
    Ok(hex::encode(Sha256::digest(canonicalize(value)?)))
}

/// The false-accept rate that a calibrated comparison score threshold stands for.
///
/// The matcher's calibration is `score = -log10(FAR) / 5` (DESIGN.md section 4), so a threshold
/// `t` accepts impostors at `FAR = 10^(-5 t)`: 0.6 is 1e-3, 0.8 is 1e-4. Holds for LFW-like
/// populations (measured 15-50x higher among look-alikes).
pub fn false_accept_rate_for_threshold(compare_min_score: f64) -> f64 {
    10f64.powf(-5.0 * compare_min_score)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn false_accept_rate_follows_the_calibration_scale() {
        assert!((false_accept_rate_for_threshold(0.6) - 1e-3).abs() < 1e-15);
        assert!((false_accept_rate_for_threshold(0.8) - 1e-4).abs() < 1e-16);
        assert!(false_accept_rate_for_threshold(0.95) < false_accept_rate_for_threshold(0.67));
    }
}
