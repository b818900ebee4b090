//! Ed25519 keys: the gateway's signing key and the public key sets that verify its results.

use std::collections::BTreeMap;
use std::fmt;

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;
use ed25519_dalek::pkcs8::spki::der::pem::LineEnding;
use ed25519_dalek::pkcs8::{DecodePrivateKey, DecodePublicKey, EncodePrivateKey};
use ed25519_dalek::{Signer as _, SigningKey, VerifyingKey};
use faceproof_proto::gateway::v1 as pb;
use serde_json::Value;
use sha2::{Digest, Sha256};

use crate::{ALGORITHM, CANONICALIZATION, SigningError, response_to_json, signed_payload};

/// The key id of a public key: the first 16 hex digits of the SHA-256 of its raw 32 bytes.
pub fn key_id_for(public_key: &VerifyingKey) -> String {
    let digest = hex::encode(Sha256::digest(public_key.as_bytes()));
    digest[..16].to_owned()
}

/// The gateway's Ed25519 signing key.
pub struct Signer {
    key: SigningKey,
    key_id: String,
}

impl fmt::Debug for Signer {
    fn fmt(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
        formatter
            .debug_struct("Signer")
            .field("key_id", &self.key_id)
            .field("key", &"<redacted>")
            .finish()
    }
}

impl Signer {
    /// A fresh key from the operating system's random source.
    pub fn generate() -> Self {
        Self::from_key(SigningKey::generate(&mut rand_core::OsRng))
    }

    /// Reads a PKCS#8 PEM private key (`-----BEGIN PRIVATE KEY-----`, as written by
    /// `openssl genpkey -algorithm ed25519`).
    pub fn from_pkcs8_pem(pem: &str) -> Result<Self, SigningError> {
        let key = SigningKey::from_pkcs8_pem(pem).map_err(|error| {
            SigningError::Key(format!("not an Ed25519 PKCS#8 PEM key: {error}"))
        })?;
        Ok(Self::from_key(key))
    }

    fn from_key(key: SigningKey) -> Self {
        let key_id = key_id_for(&key.verifying_key());
        Self { key, key_id }
    }

    /// The private key as PKCS#8 PEM, for saving a generated key.
    pub fn to_pkcs8_pem(&self) -> Result<String, SigningError> {
        self.key
            .to_pkcs8_pem(LineEnding::LF)
            .map(|pem| pem.to_string())
            .map_err(|error| SigningError::Key(error.to_string()))
    }

    pub fn key_id(&self) -> &str {
        &self.key_id
    }

    pub fn verifying_key(&self) -> VerifyingKey {
        self.key.verifying_key()
    }

    /// The entry that GetSigningKeys lists for this key.
    pub fn public_key(&self) -> pb::SigningKey {
        pb::SigningKey {
            key_id: self.key_id.clone(),
            algorithm: ALGORITHM.to_owned(),
            public_key: STANDARD.encode(self.key.verifying_key().as_bytes()),
        }
    }

    /// Sets `response.signature`: metadata, then the Ed25519 signature over [`signed_payload`]
    /// of the response's reference JSON form.
    pub fn sign(
        &self,
        response: &mut pb::CompareWithLivenessResponse,
        date_time: String,
    ) -> Result<(), SigningError> {
        let message = certification_message(&date_time, &self.key_id);
        response.signature = Some(pb::Signature {
            date_time,
            message,
            algorithm: ALGORITHM.to_owned(),
            key_id: self.key_id.clone(),
            canonicalization: CANONICALIZATION.to_owned(),
            value: String::new(),
        });
        let envelope = response_to_json(response)?;
        let payload = signed_payload(&envelope)?;
        let signature = self.key.sign(&payload);
        if let Some(signature_field) = response.signature.as_mut() {
            signature_field.value = STANDARD.encode(signature.to_bytes());
        }
        Ok(())
    }
}

/// The certification sentence of the reference API, naming the time and the key.
pub fn certification_message(date_time: &str, key_id: &str) -> String {
    format!(
        "Certified by faceproof: this comparison and liveness result was produced and signed on \
         {date_time} with Ed25519 key {key_id}; any change to it invalidates the signature."
    )
}

/// The public keys a verifier trusts, by key id.
#[derive(Debug, Clone, Default)]
pub struct PublicKeySet {
    keys: BTreeMap<String, VerifyingKey>,
}

impl PublicKeySet {
    pub fn insert(&mut self, key: VerifyingKey) {
        self.keys.insert(key_id_for(&key), key);
    }

    pub fn get(&self, key_id: &str) -> Option<&VerifyingKey> {
        self.keys.get(key_id)
    }

    pub fn key_ids(&self) -> Vec<String> {
        self.keys.keys().cloned().collect()
    }

    pub fn is_empty(&self) -> bool {
        self.keys.is_empty()
    }

    /// The keys of a GetSigningKeys answer.
    pub fn from_proto(response: &pb::GetSigningKeysResponse) -> Result<Self, SigningError> {
        let mut set = Self::default();
        for key in &response.keys {
            set.insert(decode_listed_key(
                &key.key_id,
                &key.algorithm,
                &key.public_key,
            )?);
        }
        Ok(set)
    }

    /// The keys JSON served by `GET /v2/signing-keys`:
    /// `{"keys": [{"key_id", "algorithm": "Ed25519", "public_key": base64}]}`.
    pub fn from_keys_json(text: &str) -> Result<Self, SigningError> {
        let value: Value = serde_json::from_str(text).map_err(|error| {
            SigningError::KeysJson(format!(
                "line {}, column {}: {error}",
                error.line(),
                error.column()
            ))
        })?;
        let keys = value
            .get("keys")
            .and_then(Value::as_array)
            .ok_or_else(|| SigningError::KeysJson("no `keys` array".into()))?;
        let mut set = Self::default();
        for (position, key) in keys.iter().enumerate() {
            let member = |name: &str| {
                key.get(name).and_then(Value::as_str).ok_or_else(|| {
                    SigningError::KeysJson(format!("keys[{position}] has no string `{name}`"))
                })
            };
            set.insert(decode_listed_key(
                member("key_id")?,
                member("algorithm")?,
                member("public_key")?,
            )?);
        }
        if set.is_empty() {
            return Err(SigningError::KeysJson("the `keys` array is empty".into()));
        }
        Ok(set)
    }

    /// A public key file: SPKI PEM (`-----BEGIN PUBLIC KEY-----`, as written by
    /// `openssl pkey -pubout`) or the raw 32 bytes in standard base64.
    pub fn from_public_key_text(text: &str) -> Result<Self, SigningError> {
        let trimmed = text.trim();
        let key = if trimmed.starts_with("-----BEGIN") {
            VerifyingKey::from_public_key_pem(trimmed).map_err(|error| {
                SigningError::PublicKey(format!("not an Ed25519 public key PEM: {error}"))
            })?
        } else {
            decode_raw_key(trimmed)?
        };
        let mut set = Self::default();
        set.insert(key);
        Ok(set)
    }
}

fn decode_listed_key(
    key_id: &str,
    algorithm: &str,
    public_key: &str,
) -> Result<VerifyingKey, SigningError> {
    if algorithm != ALGORITHM {
        return Err(SigningError::PublicKey(format!(
            "key {key_id} uses algorithm {algorithm:?}, only {ALGORITHM} is supported"
        )));
    }
    let key = decode_raw_key(public_key)?;
    let actual_id = key_id_for(&key);
    if actual_id != key_id {
        return Err(SigningError::PublicKey(format!(
            "key id {key_id} does not match its public key (whose id is {actual_id})"
        )));
    }
    Ok(key)
}

fn decode_raw_key(base64_text: &str) -> Result<VerifyingKey, SigningError> {
    let bytes = STANDARD
        .decode(base64_text)
        .map_err(|error| SigningError::PublicKey(format!("public key is not base64: {error}")))?;
    let bytes: [u8; 32] = bytes.as_slice().try_into().map_err(|_| {
        SigningError::PublicKey(format!(
            "an Ed25519 public key has 32 bytes, this one has {}",
            bytes.len()
        ))
    })?;
    VerifyingKey::from_bytes(&bytes)
        .map_err(|error| SigningError::PublicKey(format!("not a valid Ed25519 point: {error}")))
}
