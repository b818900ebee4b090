//! Offline verification of a saved result, with an error that says exactly what fails.

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;
use ed25519_dalek::Signature;
use serde_json::Value;
use sha2::{Digest as _, Sha256};

use crate::{
    ALGORITHM, CANONICALIZATION, PARTS, PublicKeySet, SigningError, part_digests, signed_payload,
};

/// What a valid signature vouches for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Verified {
    pub response_id: String,
    pub key_id: String,
    /// `signature.dateTime` (signed).
    pub signed_at: String,
}

#[derive(Debug, thiserror::Error)]
pub enum VerifyError {
    #[error("not valid JSON: line {line}, column {column}: {message}")]
    Json {
        line: usize,
        column: usize,
        message: String,
    },
    #[error("the response has no {0}")]
    Missing(&'static str),
    #[error("signature algorithm {found:?} is not supported (expected {ALGORITHM})")]
    UnsupportedAlgorithm { found: String },
    #[error("canonicalization {found:?} is not supported (expected {CANONICALIZATION})")]
    UnsupportedCanonicalization { found: String },
    #[error("unknown key id {key_id} (the keys given are: {known})")]
    UnknownKey { key_id: String, known: String },
    #[error("signature.value is not a base64 Ed25519 signature: {0}")]
    MalformedSignature(String),
    #[error("signature does not match: {} changed since signing", .parts.join(", "))]
    Tampered { parts: Vec<String> },
    #[error("signature does not match: {0}")]
    Mismatch(String),
    #[error("the response cannot be canonicalized: {0}")]
    Canonical(#[from] SigningError),
    #[error(
        "{image} does not match the signed result: signed SHA-256 {expected}, the file's is {actual}"
    )]
    ImageMismatch {
        /// `probe` or `gallery[i]`.
        image: String,
        expected: String,
        actual: String,
    },
    #[error("the signed result has {signed} gallery images, {given} were given")]
    GalleryCount { signed: usize, given: usize },
}

/// Parses a saved response as I-JSON: a duplicated member name anywhere is refused, naming it.
pub fn parse_response_text(text: &str) -> Result<Value, VerifyError> {
    crate::strict_json::parse_without_duplicate_keys(text).map_err(|error| VerifyError::Json {
        line: error.line(),
        column: error.column(),
        message: error.to_string(),
    })
}

/// Checks photos against the SHA-256 digests in the signed data (`data.comparison.result
/// .probe_sha256` and `gallery[i].sha256`). Call it on an envelope whose signature verified: only
/// then are those digests the gateway's. `gallery`, when given, must hold every gallery image in
/// request order. Returns the number of images checked.
pub fn check_image_digests(
    envelope: &Value,
    probe: Option<&[u8]>,
    gallery: Option<&[Vec<u8>]>,
) -> Result<usize, VerifyError> {
    let result = envelope
        .pointer("/data/comparison/result")
        .ok_or(VerifyError::Missing("`data.comparison.result`"))?;
    let mut checked = 0;
    if let Some(probe) = probe {
        let expected =
            result
                .get("probe_sha256")
                .and_then(Value::as_str)
                .ok_or(VerifyError::Missing(
                    "`data.comparison.result.probe_sha256`",
                ))?;
        compare_digest("probe".to_owned(), expected, probe)?;
        checked += 1;
    }
    if let Some(gallery) = gallery {
        let signed =
            result
                .get("gallery")
                .and_then(Value::as_array)
                .ok_or(VerifyError::Missing(
                    "`data.comparison.result.gallery` array",
                ))?;
        if signed.len() != gallery.len() {
            return Err(VerifyError::GalleryCount {
                signed: signed.len(),
                given: gallery.len(),
            });
        }
        for (index, (item, image)) in signed.iter().zip(gallery).enumerate() {
            let expected = item
                .get("sha256")
                .and_then(Value::as_str)
                .ok_or(VerifyError::Missing("`sha256` in a gallery item"))?;
            compare_digest(format!("gallery[{index}]"), expected, image)?;
            checked += 1;
        }
    }
    Ok(checked)
}

fn compare_digest(image: String, expected: &str, bytes: &[u8]) -> Result<(), VerifyError> {
    let actual = hex::encode(Sha256::digest(bytes));
    if actual.eq_ignore_ascii_case(expected) {
        Ok(())
    } else {
        Err(VerifyError::ImageMismatch {
            image,
            expected: expected.to_owned(),
            actual,
        })
    }
}

/// Verifies a saved response given as JSON text (the REST body or `faceproof compare` output).
/// The text must be I-JSON: a duplicated member name anywhere is refused ([`parse_response_text`]).
pub fn verify_response_text(text: &str, keys: &PublicKeySet) -> Result<Verified, VerifyError> {
    verify_response_json(&parse_response_text(text)?, keys)
}

/// Verifies a parsed reference JSON envelope.
pub fn verify_response_json(
    envelope: &Value,
    keys: &PublicKeySet,
) -> Result<Verified, VerifyError> {
    let response_id = envelope
        .get("id")
        .and_then(Value::as_str)
        .ok_or(VerifyError::Missing("`id` string"))?;
    let signature = envelope
        .get("signature")
        .and_then(Value::as_object)
        .ok_or(VerifyError::Missing("`signature` object"))?;
    let member = |name: &'static str, missing: &'static str| {
        signature
            .get(name)
            .and_then(Value::as_str)
            .ok_or(VerifyError::Missing(missing))
    };
    let algorithm = member("algorithm", "`signature.algorithm` string")?;
    if algorithm != ALGORITHM {
        return Err(VerifyError::UnsupportedAlgorithm {
            found: algorithm.to_owned(),
        });
    }
    let canonicalization = member("canonicalization", "`signature.canonicalization` string")?;
    if canonicalization != CANONICALIZATION {
        return Err(VerifyError::UnsupportedCanonicalization {
            found: canonicalization.to_owned(),
        });
    }
    let key_id = member("key_id", "`signature.key_id` string")?;
    let key = keys.get(key_id).ok_or_else(|| VerifyError::UnknownKey {
        key_id: key_id.to_owned(),
        known: keys.key_ids().join(", "),
    })?;
    let value = member("value", "`signature.value` string")?;
    let signed_at = member("dateTime", "`signature.dateTime` string")?;
    let signature_bytes = STANDARD
        .decode(value)
        .map_err(|error| VerifyError::MalformedSignature(error.to_string()))?;
    let signature = Signature::from_slice(&signature_bytes).map_err(|_| {
        VerifyError::MalformedSignature(format!(
            "an Ed25519 signature has 64 bytes, this one has {}",
            signature_bytes.len()
        ))
    })?;
    if envelope.get("data").and_then(Value::as_object).is_none() {
        return Err(VerifyError::Missing("`data` object"));
    }
    let payload = signed_payload(envelope)?;
    match key.verify_strict(&payload, &signature) {
        Ok(()) => Ok(Verified {
            response_id: response_id.to_owned(),
            key_id: key_id.to_owned(),
            signed_at: signed_at.to_owned(),
        }),
        Err(_) => Err(diagnose(envelope)?),
    }
}

/// Names the parts whose digest differs from the one recorded at signing time.
fn diagnose(envelope: &Value) -> Result<VerifyError, SigningError> {
    let current = part_digests(envelope)?;
    let mut parts = Vec::new();
    if let Some(data) = envelope.get("data").and_then(Value::as_object) {
        for name in data.keys() {
            if !PARTS.contains(&format!("data.{name}").as_str()) {
                parts.push(format!("data.{name} (added)"));
            }
        }
    }
    let Some(recorded) = envelope
        .get("signature")
        .and_then(|signature| signature.get("digests"))
        .and_then(Value::as_object)
    else {
        if !parts.is_empty() {
            return Ok(VerifyError::Tampered { parts });
        }
        return Ok(VerifyError::Mismatch(
            "the response carries no signature.digests to tell which part changed".into(),
        ));
    };
    for part in PARTS {
        let before = recorded.get(part).and_then(Value::as_str);
        let now = current.get(part).map(String::as_str);
        match (before, now) {
            (Some(before), Some(now)) if before != now => parts.push(part.to_owned()),
            (Some(_), None) => parts.push(format!("{part} (removed)")),
            (None, Some(_)) => parts.push(format!("{part} (added)")),
            _ => {}
        }
    }
    if parts.is_empty() {
        return Ok(VerifyError::Mismatch(
            "every signed part still matches its recorded digest: the signature value or \
             signature.digests were altered, or another key signed this response"
                .into(),
        ));
    }
    Ok(VerifyError::Tampered { parts })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::Signer;
    use crate::testing::{SAMPLE_GALLERY, SAMPLE_PROBE, SAMPLE_SIGNED_AT, signed_sample_text};
    use faceproof_proto::gateway::v1 as pb;

    fn signed() -> (String, PublicKeySet, Signer) {
        let signer = Signer::generate();
        let text = signed_sample_text(&signer);
        let mut keys = PublicKeySet::default();
        keys.insert(signer.verifying_key());
        (text, keys, signer)
    }

    #[test]
    fn a_signed_response_verifies_after_reformatting() {
        let (text, keys, signer) = signed();
        let verified = verify_response_text(&text, &keys).unwrap();
        assert_eq!(verified.key_id, signer.key_id());
        assert_eq!(verified.signed_at, SAMPLE_SIGNED_AT);
        let compact =
            serde_json::to_string(&serde_json::from_str::<Value>(&text).unwrap()).unwrap();
        verify_response_text(&compact, &keys).unwrap();
    }

    #[test]
    fn a_changed_score_names_the_comparison() {
        let (text, keys, _) = signed();
        let tampered = text.replacen("0.8123", "0.8124", 1);
        assert_ne!(tampered, text);
        match verify_response_text(&tampered, &keys) {
            Err(VerifyError::Tampered { parts }) => assert_eq!(parts, vec!["data.comparison"]),
            other => panic!("expected tampering, got {other:?}"),
        }
    }

    #[test]
    fn a_changed_liveness_and_date_are_named() {
        let (text, keys, _) = signed();
        let tampered = text
            .replace("\"liveness_score\": 0.97", "\"liveness_score\": 0.12")
            .replace("06:41:02 UTC", "07:41:02 UTC");
        assert!(
            tampered.contains("0.12"),
            "the fixture's liveness score moved"
        );
        let error = verify_response_text(&tampered, &keys).unwrap_err();
        assert_eq!(
            error.to_string(),
            "signature does not match: data.liveness, signature changed since signing"
        );
    }

    #[test]
    fn a_removed_liveness_record_is_named() {
        let (text, keys, _) = signed();
        let mut envelope: Value = serde_json::from_str(&text).unwrap();
        envelope["data"].as_object_mut().unwrap().remove("liveness");
        let error = verify_response_json(&envelope, &keys).unwrap_err();
        assert!(
            error.to_string().contains("data.liveness (removed)"),
            "{error}"
        );
    }

    #[test]
    fn unknown_key_wrong_algorithm_and_bad_json_are_explained() {
        let (text, _, _) = signed();
        let mut other_keys = PublicKeySet::default();
        other_keys.insert(Signer::generate().verifying_key());
        assert!(matches!(
            verify_response_text(&text, &other_keys),
            Err(VerifyError::UnknownKey { .. })
        ));
        let (_, keys, _) = signed();
        let wrong_algorithm = text.replace("\"Ed25519\"", "\"RS256\"");
        assert!(matches!(
            verify_response_text(&wrong_algorithm, &keys),
            Err(VerifyError::UnsupportedAlgorithm { .. })
        ));
        match verify_response_text("{\n  \"id\": \"x\",\n  oops\n}", &keys) {
            Err(VerifyError::Json { line, column, .. }) => assert_eq!((line, column), (3, 3)),
            other => panic!("expected a JSON error, got {other:?}"),
        }
    }

    #[test]
    fn a_changed_signature_value_is_reported_as_such() {
        let (text, keys, _) = signed();
        let mut envelope: Value = serde_json::from_str(&text).unwrap();
        let value = envelope["signature"]["value"].as_str().unwrap().to_owned();
        let mut bytes = STANDARD.decode(value).unwrap();
        bytes[10] ^= 1;
        envelope["signature"]["value"] = Value::String(STANDARD.encode(bytes));
        assert!(matches!(
            verify_response_json(&envelope, &keys),
            Err(VerifyError::Mismatch(_))
        ));
    }

    #[test]
    fn keys_json_round_trips_and_checks_key_ids() {
        let signer = Signer::generate();
        let listing = pb::GetSigningKeysResponse {
            keys: vec![signer.public_key()],
        };
        let text = crate::signing_keys_to_json(&listing).to_string();
        let keys = PublicKeySet::from_keys_json(&text).unwrap();
        assert_eq!(keys.key_ids(), vec![signer.key_id().to_owned()]);
        let forged = text.replace(signer.key_id(), "0000000000000000");
        assert!(PublicKeySet::from_keys_json(&forged).is_err());
        let pem = ed25519_dalek::pkcs8::EncodePublicKey::to_public_key_pem(
            &signer.verifying_key(),
            ed25519_dalek::pkcs8::spki::der::pem::LineEnding::LF,
        )
        .unwrap();
        let from_pem = PublicKeySet::from_public_key_text(&pem).unwrap();
        assert!(from_pem.get(signer.key_id()).is_some());
        let reloaded = Signer::from_pkcs8_pem(&signer.to_pkcs8_pem().unwrap()).unwrap();
        assert_eq!(reloaded.key_id(), signer.key_id());
    }

    #[test]
    fn image_digests_are_signed_and_checked() {
        let (text, keys, _) = signed();
        let envelope = parse_response_text(&text).unwrap();
        verify_response_json(&envelope, &keys).unwrap();
        assert_eq!(
            envelope["data"]["comparison"]["result"]["probe_sha256"],
            hex::encode(Sha256::digest(SAMPLE_PROBE))
        );
        let gallery = vec![SAMPLE_GALLERY.to_vec()];
        assert_eq!(
            check_image_digests(&envelope, Some(SAMPLE_PROBE), Some(gallery.as_slice())).unwrap(),
            2
        );
        assert_eq!(check_image_digests(&envelope, None, None).unwrap(), 0);
    }

    #[test]
    fn another_photo_is_named_with_both_digests() {
        let (text, _, _) = signed();
        let envelope = parse_response_text(&text).unwrap();
        let error = check_image_digests(&envelope, Some(&b"another selfie"[..]), None).unwrap_err();
        let expected = hex::encode(Sha256::digest(SAMPLE_PROBE));
        let actual = hex::encode(Sha256::digest(b"another selfie"));
        assert_eq!(
            error.to_string(),
            format!(
                "probe does not match the signed result: signed SHA-256 {expected}, the file's \
                 is {actual}"
            )
        );
        let swapped = vec![SAMPLE_PROBE.to_vec()];
        match check_image_digests(&envelope, Some(SAMPLE_PROBE), Some(swapped.as_slice())) {
            Err(VerifyError::ImageMismatch { image, .. }) => assert_eq!(image, "gallery[0]"),
            other => panic!("expected a gallery mismatch, got {other:?}"),
        }
        let two = vec![SAMPLE_GALLERY.to_vec(), SAMPLE_GALLERY.to_vec()];
        assert!(matches!(
            check_image_digests(&envelope, None, Some(two.as_slice())),
            Err(VerifyError::GalleryCount {
                signed: 1,
                given: 2
            })
        ));
    }

    #[test]
    fn a_tampered_image_digest_breaks_the_signature() {
        let (text, keys, _) = signed();
        let real = hex::encode(Sha256::digest(SAMPLE_PROBE));
        let forged = hex::encode(Sha256::digest(b"another selfie"));
        let tampered = text.replace(&real, &forged);
        assert_ne!(tampered, text);
        match verify_response_text(&tampered, &keys) {
            Err(VerifyError::Tampered { parts }) => assert_eq!(parts, vec!["data.comparison"]),
            other => panic!("expected tampering, got {other:?}"),
        }
    }

    #[test]
    fn a_fake_score_before_the_real_one_is_refused_naming_the_key() {
        let (text, keys, _) = signed();
        // The attack: a reader that keeps the first duplicate shows 0.01, serde_json's Value keeps
        // the last (signed) one, so a lenient verifier would say "valid".
        let injected = text.replacen("\"score\": 0.8123", "\"score\": 0.01, \"score\": 0.8123", 1);
        assert_ne!(injected, text);
        let error = verify_response_text(&injected, &keys).unwrap_err();
        assert!(matches!(error, VerifyError::Json { .. }), "{error:?}");
        assert!(
            error.to_string().contains("duplicate key `score`"),
            "{error}"
        );
        // Nested deeper and at the top level too.
        let nested = text.replacen("\"x\": 10.5", "\"x\": 1, \"x\": 10.5", 1);
        assert_ne!(nested, text);
        assert!(
            verify_response_text(&nested, &keys)
                .unwrap_err()
                .to_string()
                .contains("duplicate key `x`")
        );
        let top = text.replacen('{', "{\"id\": \"forged\",", 1);
        assert!(
            verify_response_text(&top, &keys)
                .unwrap_err()
                .to_string()
                .contains("duplicate key `id`")
        );
    }
}
