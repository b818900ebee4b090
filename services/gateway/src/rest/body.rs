//! The REST body parser: the reference JSON request read in one pass over the body, without
//! building a JSON tree.
//!
//! - Known fields keep only what they need: image strings stay borrowed slices of the body (no
//!   copy unless the JSON escapes something), numbers and short strings are read as such.
//! - Unknown fields are walked, never stored (like `serde::de::IgnoredAny`), but their objects are
//!   still checked for repeated keys: a JSON object with a repeated member name is refused at
//!   every level (I-JSON, RFC 7493), naming the key with its path (`probe`, `extra.a`).
//! - A wrong type is a field violation, not a parse failure, so every problem is reported at once.
//! - base64 is decoded straight into the [`Bytes`] that the gRPC calls send.

use std::borrow::Cow;
use std::collections::HashSet;
use std::fmt;

use base64::Engine as _;
use base64::engine::general_purpose::{GeneralPurpose, GeneralPurposeConfig};
use base64::engine::{DecodePaddingMode, general_purpose};
use bytes::Bytes;
use faceproof_proto::gateway::v1::CompareWithLivenessRequest;
use serde::de::{self, DeserializeSeed, MapAccess, SeqAccess, Visitor};

use crate::error::Violation;

/// Standard base64 alphabet, padding optional (clients differ).
const BASE64: GeneralPurpose = GeneralPurpose::new(
    &base64::alphabet::STANDARD,
    GeneralPurposeConfig::new().with_decode_padding_mode(DecodePaddingMode::Indifferent),
);

/// Violation reason of an image string that is not base64 (or is a URL, or a non-base64 data URL).
pub const NOT_BASE64: &str = "only_images_in_base64";
/// The violation reason of an image over `--max-image-bytes` (as validation reports it).
pub const IMAGE_TOO_LARGE: &str = "image_too_large";

/// Why a body could not be read as a request at all.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum BodyError {
    /// Not JSON, or not a JSON object; the text says where.
    Malformed(String),
    /// A repeated member name, with its path (`gallery`, `extra.inner.a`, `list[2].b`).
    DuplicateKey(String),
}

/// The request read from the body, with every field-level problem found while reading it.
#[derive(Debug)]
pub struct ParsedRequest {
    pub request: CompareWithLivenessRequest,
    pub violations: Vec<Violation>,
}

/// Parses and decodes a body with no per-image size limit (see [`parse_with_image_limit`]).
#[cfg(test)]
pub fn parse(body: &[u8]) -> Result<ParsedRequest, BodyError> {
    parse_with_image_limit(body, usize::MAX)
}

/// Parses and decodes a body. CPU-bound (base64): call it off the async workers. An image whose
/// base64 text already holds more than `max_image_bytes` is refused (`image_too_large`) without
/// being decoded, so an oversize image never costs its decoded copy on top of the body.
pub fn parse_with_image_limit(
    body: &[u8],
    max_image_bytes: usize,
) -> Result<ParsedRequest, BodyError> {
    let mut duplicate: Option<Vec<String>> = None;
    let mut deserializer = serde_json::Deserializer::from_slice(body);
    let fields = RequestSeed {
        duplicate: &mut duplicate,
    }
    .deserialize(&mut deserializer)
    .and_then(|fields| deserializer.end().map(|()| fields));
    match (fields, duplicate) {
        (_, Some(path)) => Err(BodyError::DuplicateKey(path.concat())),
        (Err(error), None) => Err(BodyError::Malformed(error.to_string())),
        (Ok(fields), None) => Ok(fields.into_request(max_image_bytes)),
    }
}

/// A JSON value as far as the request needs it.
enum Json<'de> {
    Null,
    Bool,
    Number(f64),
    Text(Cow<'de, str>),
    /// Items kept only for `gallery`; elsewhere walked and dropped.
    Array(Vec<Json<'de>>),
    Object,
    /// A string or number of an unknown field: read, not kept.
    Skipped,
}

impl Json<'_> {
    fn type_name(&self) -> &'static str {
        match self {
            Self::Null => "null",
            Self::Bool => "a boolean",
            Self::Number(_) => "a number",
            Self::Text(_) | Self::Skipped => "a string",
            Self::Array(_) => "an array",
            Self::Object => "an object",
        }
    }
}

/// How much of a value to keep.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Keep {
    Nothing,
    Scalars,
    ScalarsAndItems,
}

/// The top-level members, each at most once.
#[derive(Default)]
struct Fields<'de> {
    os: Option<Json<'de>>,
    probe: Option<Json<'de>>,
    gallery: Option<Json<'de>>,
    search_mode: Option<Json<'de>>,
    compare_min_score: Option<Json<'de>>,
    liveness_min_score: Option<Json<'de>>,
}

struct RequestSeed<'r> {
    duplicate: &'r mut Option<Vec<String>>,
}

impl<'de> DeserializeSeed<'de> for RequestSeed<'_> {
    type Value = Fields<'de>;

    fn deserialize<D: de::Deserializer<'de>>(
        self,
        deserializer: D,
    ) -> Result<Self::Value, D::Error> {
        deserializer.deserialize_map(self)
    }
}

impl<'de> Visitor<'de> for RequestSeed<'_> {
    type Value = Fields<'de>;

    fn expecting(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
        formatter.write_str("a JSON object")
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
        let mut fields = Fields::default();
        let mut unknown_keys: HashSet<Cow<'de, str>> = HashSet::new();
        while let Some(Key(key)) = map.next_key()? {
            let (slot, keep) = match key.as_ref() {
                "os" => (Some(&mut fields.os), Keep::Scalars),
                "probe" => (Some(&mut fields.probe), Keep::Scalars),
                "gallery" => (Some(&mut fields.gallery), Keep::ScalarsAndItems),
                "search_mode" => (Some(&mut fields.search_mode), Keep::Scalars),
                "compare_min_score" => (Some(&mut fields.compare_min_score), Keep::Scalars),
                "liveness_min_score" => (Some(&mut fields.liveness_min_score), Keep::Scalars),
                _ => (None, Keep::Nothing),
            };
            let repeated = match &slot {
                Some(slot) => slot.is_some(),
                None => !unknown_keys.insert(key.clone()),
            };
            if repeated {
                return Err(duplicate_key(self.duplicate, &key));
            }
            let value = map
                .next_value_seed(ValueSeed {
                    keep,
                    duplicate: self.duplicate,
                })
                .map_err(|error| prefix_path(self.duplicate, &key, error))?;
            if let Some(slot) = slot {
                *slot = Some(value);
            }
        }
        Ok(fields)
    }
}

/// Records the repeated key and stops the parse.
fn duplicate_key<E: de::Error>(duplicate: &mut Option<Vec<String>>, key: &str) -> E {
    // Quoted back to the caller: a key of any length must not make the answer large.
    const QUOTED_CHARS: usize = 64;
    let key = key
        .char_indices()
        .nth(QUOTED_CHARS)
        .map_or(key, |(end, _)| &key[..end]);
    *duplicate = Some(vec![key.to_owned()]);
    E::custom(format_args!("duplicate key {key:?}"))
}

/// On the way out of a nested duplicate, puts the enclosing member's name in front of its path
/// (only then: the happy path builds no paths).
fn prefix_path<E>(duplicate: &mut Option<Vec<String>>, key: &str, error: E) -> E {
    prefix(duplicate, key.to_owned(), error)
}

fn prefix_index<E>(duplicate: &mut Option<Vec<String>>, index: usize, error: E) -> E {
    prefix(duplicate, format!("[{index}]"), error)
}

/// `list` + `[1]` + `k` reads `list[1].k`.
fn prefix<E>(duplicate: &mut Option<Vec<String>>, mut segment: String, error: E) -> E {
    if let Some(path) = duplicate {
        if !path.first().is_some_and(|next| next.starts_with('[')) {
            segment.push('.');
        }
        path.insert(0, segment);
    }
    error
}

/// A key, borrowed from the body when it has no escapes.
struct Key<'de>(Cow<'de, str>);

impl<'de> de::Deserialize<'de> for Key<'de> {
    fn deserialize<D: de::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct KeyVisitor;
        impl<'de> Visitor<'de> for KeyVisitor {
            type Value = Key<'de>;

            fn expecting(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
                formatter.write_str("a member name")
            }

            fn visit_borrowed_str<E: de::Error>(self, text: &'de str) -> Result<Self::Value, E> {
                Ok(Key(Cow::Borrowed(text)))
            }

            fn visit_str<E: de::Error>(self, text: &str) -> Result<Self::Value, E> {
                Ok(Key(Cow::Owned(text.to_owned())))
            }
        }
        deserializer.deserialize_str(KeyVisitor)
    }
}

struct ValueSeed<'r> {
    keep: Keep,
    duplicate: &'r mut Option<Vec<String>>,
}

impl<'de> DeserializeSeed<'de> for ValueSeed<'_> {
    type Value = Json<'de>;

    fn deserialize<D: de::Deserializer<'de>>(
        self,
        deserializer: D,
    ) -> Result<Self::Value, D::Error> {
        deserializer.deserialize_any(self)
    }
}

impl<'de> Visitor<'de> for ValueSeed<'_> {
    type Value = Json<'de>;

    fn expecting(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
        formatter.write_str("a JSON value")
    }

    fn visit_unit<E: de::Error>(self) -> Result<Self::Value, E> {
        Ok(Json::Null)
    }

    fn visit_bool<E: de::Error>(self, _: bool) -> Result<Self::Value, E> {
        Ok(Json::Bool)
    }

    fn visit_u64<E: de::Error>(self, value: u64) -> Result<Self::Value, E> {
        Ok(Json::Number(value as f64))
    }

    fn visit_i64<E: de::Error>(self, value: i64) -> Result<Self::Value, E> {
        Ok(Json::Number(value as f64))
    }

    fn visit_f64<E: de::Error>(self, value: f64) -> Result<Self::Value, E> {
        Ok(Json::Number(value))
    }

    fn visit_borrowed_str<E: de::Error>(self, text: &'de str) -> Result<Self::Value, E> {
        Ok(match self.keep {
            Keep::Nothing => Json::Skipped,
            _ => Json::Text(Cow::Borrowed(text)),
        })
    }

    fn visit_str<E: de::Error>(self, text: &str) -> Result<Self::Value, E> {
        Ok(match self.keep {
            Keep::Nothing => Json::Skipped,
            _ => Json::Text(Cow::Owned(text.to_owned())),
        })
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Self::Value, A::Error> {
        let item_keep = match self.keep {
            Keep::ScalarsAndItems => Keep::Scalars,
            _ => Keep::Nothing,
        };
        let mut items = Vec::new();
        let mut index = 0;
        loop {
            let item = seq
                .next_element_seed(ValueSeed {
                    keep: item_keep,
                    duplicate: self.duplicate,
                })
                .map_err(|error| prefix_index(self.duplicate, index, error))?;
            let Some(item) = item else { break };
            if item_keep != Keep::Nothing {
                items.push(item);
            }
            index += 1;
        }
        Ok(Json::Array(items))
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
        let mut keys: HashSet<Cow<'de, str>> = HashSet::new();
        while let Some(Key(key)) = map.next_key()? {
            if keys.contains(&key) {
                return Err(duplicate_key(self.duplicate, &key));
            }
            map.next_value_seed(ValueSeed {
                keep: Keep::Nothing,
                duplicate: self.duplicate,
            })
            .map_err(|error| prefix_path(self.duplicate, &key, error))?;
            keys.insert(key);
        }
        Ok(Json::Object)
    }
}

impl Fields<'_> {
    /// The typed request and the violations of the fields' types and images. Absent and
    /// `null` are the same; enums and scores are checked later by the shared validation.
    fn into_request(self, max_image_bytes: usize) -> ParsedRequest {
        let mut violations = Vec::new();
        let os = text_field("os", self.os, &mut violations);
        let search_mode = text_field("search_mode", self.search_mode, &mut violations);
        let compare_min_score =
            number_field("compare_min_score", self.compare_min_score, &mut violations);
        let liveness_min_score = number_field(
            "liveness_min_score",
            self.liveness_min_score,
            &mut violations,
        );
        let probe = match self.probe {
            None | Some(Json::Null) => {
                violations.push(required("probe"));
                Bytes::new()
            }
            Some(value) => image_field("probe", value, max_image_bytes, &mut violations),
        };
        let gallery = match self.gallery {
            None | Some(Json::Null) => {
                violations.push(required("gallery"));
                Vec::new()
            }
            Some(Json::Array(items)) => items
                .into_iter()
                .enumerate()
                .map(|(index, item)| {
                    image_field(
                        &format!("gallery[{index}]"),
                        item,
                        max_image_bytes,
                        &mut violations,
                    )
                })
                .collect(),
            Some(other) => {
                violations.push(invalid_type("gallery", "an array of base64 images", &other));
                Vec::new()
            }
        };
        ParsedRequest {
            request: CompareWithLivenessRequest {
                os,
                probe,
                gallery,
                search_mode,
                compare_min_score,
                liveness_min_score,
            },
            violations,
        }
    }
}

fn required(field: &str) -> Violation {
    Violation::new(field, "missing", format!("\"{field}\" is required"))
}

fn invalid_type(field: &str, expected: &str, got: &Json<'_>) -> Violation {
    Violation::new(
        field,
        "invalid_type",
        format!("must be {expected}, got {}", got.type_name()),
    )
}

/// A string field; unset is empty (the validation's default).
fn text_field(field: &str, value: Option<Json<'_>>, violations: &mut Vec<Violation>) -> String {
    match value {
        None | Some(Json::Null) => String::new(),
        Some(Json::Text(text)) => text.into_owned(),
        Some(other) => {
            violations.push(invalid_type(field, "a string", &other));
            String::new()
        }
    }
}

fn number_field(
    field: &str,
    value: Option<Json<'_>>,
    violations: &mut Vec<Violation>,
) -> Option<f64> {
    match value {
        None | Some(Json::Null) => None,
        Some(Json::Number(number)) => Some(number),
        Some(other) => {
            violations.push(invalid_type(field, "a number", &other));
            None
        }
    }
}

fn image_field(
    field: &str,
    value: Json<'_>,
    max_image_bytes: usize,
    violations: &mut Vec<Violation>,
) -> Bytes {
    match value {
        Json::Text(text) => match oversize(&text, max_image_bytes) {
            Some(at_least) => {
                violations.push(Violation::new(
                    field,
                    IMAGE_TOO_LARGE,
                    format!(
                        "the image has at least {at_least} bytes, at most {max_image_bytes} are allowed"
                    ),
                ));
                Bytes::new()
            }
            None => decode_image(&text).unwrap_or_else(|description| {
                violations.push(Violation::new(field, NOT_BASE64, description));
                Bytes::new()
            }),
        },
        other => {
            violations.push(invalid_type(
                field,
                "a base64 string or a data:image/...;base64, URL",
                &other,
            ));
            Bytes::new()
        }
    }
}

/// `Some(the fewest bytes text can decode to)` when that is over `max_image_bytes`. Cheap
/// first: most images are under the limit even counting every character.
fn oversize(text: &str, max_image_bytes: usize) -> Option<usize> {
    if text.len() / 4 * 3 <= max_image_bytes {
        return None;
    }
    Some(decoded_size_at_least(text)).filter(|&at_least| at_least > max_image_bytes)
}

/// The fewest bytes `text` can decode to: its base64 characters (whitespace and a data-URL
/// prefix not counted, two padding characters allowed for) times 3/4.
fn decoded_size_at_least(text: &str) -> usize {
    let payload = match strip_prefix_ignore_case(text, "data:") {
        Some(rest) => rest.split_once(',').map_or("", |(_, payload)| payload),
        None => text,
    };
    // memchr scans at memory speed (a 90 MB string is a few ms, even in a debug build).
    let bytes = payload.as_bytes();
    let whitespace = memchr::memchr3_iter(b'\n', b'\r', b' ', bytes).count()
        + memchr::memchr2_iter(b'\t', b'\x0c', bytes).count();
    (bytes.len() - whitespace).saturating_sub(2) * 3 / 4
}

/// Plain base64 (standard or URL-safe alphabet, padding optional, line breaks allowed) or a
/// `data:image/...;base64,` URL, decoded into one buffer. The error never quotes the input (a
/// URL may hold credentials).
pub fn decode_image(text: &str) -> Result<Bytes, String> {
    let payload = if let Some(rest) = strip_prefix_ignore_case(text, "data:") {
        let (media, payload) = rest
            .split_once(',')
            .ok_or("a data URL needs a comma before its payload")?;
        if !media.to_ascii_lowercase().ends_with(";base64") {
            return Err("only base64 data URLs are accepted (`data:image/jpeg;base64,...`)".into());
        }
        payload
    } else if looks_like_url(text) {
        return Err("images are sent as base64; URLs are not fetched".into());
    } else {
        text
    };
    let decoded = match decode_base64(payload.as_bytes()) {
        Ok(decoded) => decoded,
        // Line-wrapped base64 (MIME, `base64` without -w0): only then pay for a compact copy.
        Err(error) if payload.bytes().any(|byte| byte.is_ascii_whitespace()) => {
            let compact: Vec<u8> = payload
                .bytes()
                .filter(|byte| !byte.is_ascii_whitespace())
                .collect();
            decode_base64(&compact).map_err(|_| describe_base64_error(&error))?
        }
        Err(error) => return Err(describe_base64_error(&error)),
    };
    Ok(Bytes::from(decoded))
}

fn decode_base64(payload: &[u8]) -> Result<Vec<u8>, base64::DecodeError> {
    BASE64.decode(payload).or_else(|error| {
        let unpadded = payload
            .strip_suffix(b"==")
            .or(payload.strip_suffix(b"="))
            .unwrap_or(payload);
        general_purpose::URL_SAFE_NO_PAD
            .decode(unpadded)
            .map_err(|_| error)
    })
}

fn describe_base64_error(error: &base64::DecodeError) -> String {
    match error {
        base64::DecodeError::InvalidByte(offset, _) => {
            format!("not valid base64: unexpected character at offset {offset}")
        }
        base64::DecodeError::InvalidLength(_) => "not valid base64: truncated (bad length)".into(),
        base64::DecodeError::InvalidLastSymbol(offset, _) => {
            format!("not valid base64: bad final character at offset {offset}")
        }
        base64::DecodeError::InvalidPadding => "not valid base64: bad padding".into(),
    }
}

fn strip_prefix_ignore_case<'t>(text: &'t str, prefix: &str) -> Option<&'t str> {
    let head = text.get(..prefix.len())?;
    head.eq_ignore_ascii_case(prefix)
        .then(|| &text[prefix.len()..])
}

/// `scheme://...` (http, https, ftp, s3, ...), `www.` or a `file:` URL.
fn looks_like_url(text: &str) -> bool {
    // At most 64 bytes, cut on a character boundary (slicing inside a multi-byte character
    // panics: found by the REST fuzzer).
    let mut end = text.len().min(64);
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    let head = &text[..end];
    if let Some((scheme, _)) = head.split_once("://") {
        let mut chars = scheme.chars();
        return chars.next().is_some_and(|c| c.is_ascii_alphabetic())
            && chars.all(|c| c.is_ascii_alphanumeric() || matches!(c, '+' | '-' | '.'));
    }
    strip_prefix_ignore_case(head, "www.").is_some()
        || strip_prefix_ignore_case(head, "file:").is_some()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fields(parsed: &ParsedRequest) -> Vec<(&str, &str)> {
        parsed
            .violations
            .iter()
            .map(|violation| (violation.field.as_str(), violation.reason))
            .collect()
    }

    #[test]
    fn images_decode_from_base64_and_data_urls() {
        assert_eq!(decode_image("aGk=").expect("padded"), &b"hi"[..]);
        assert_eq!(decode_image("aGk").expect("unpadded"), &b"hi"[..]);
        assert_eq!(decode_image("aG\nk=").expect("wrapped"), &b"hi"[..]);
        assert_eq!(decode_image("_-8").expect("url-safe"), &[0xff, 0xef][..]);
        assert_eq!(
            decode_image("data:image/png;base64,aGk=").expect("data url"),
            &b"hi"[..]
        );
        assert_eq!(
            decode_image("DATA:image/png;BASE64,aGk=").expect("any case"),
            &b"hi"[..]
        );
        assert!(decode_image("data:image/png,aGk=").is_err());
        assert!(decode_image("not base64!").is_err());
        // A lower bound: the true sizes are 2, 3 and 6.
        assert_eq!(decoded_size_at_least("aGk="), 1);
        assert_eq!(decoded_size_at_least("aGlh"), 1);
        assert_eq!(decoded_size_at_least("data:image/png;base64,aGlhaGlh\n"), 4);
        // A multi-byte character across byte 64 is refused, not a panic.
        let across = format!("{}\u{202e}rest", "A".repeat(63));
        assert!(decode_image(&across).is_err());
        for url in [
            "https://user:secret@example.com/a.jpg",
            "http://x/y",
            "s3://bucket/key",
            "www.example.com/a.jpg",
            "file:///etc/passwd",
        ] {
            let error = decode_image(url).unwrap_err();
            assert_eq!(error, "images are sent as base64; URLs are not fetched");
        }
    }

    #[test]
    fn known_fields_are_typed_and_unknown_fields_skipped() {
        let parsed = parse(
            br#"{"os":"ios","probe":"aGk=","gallery":["aGk=","data:image/png;base64,aGk="],
                "extra":{"deep":[1,{"x":"y"}]},"search_mode":null,"liveness_min_score":0.7}"#,
        )
        .expect("parses");
        assert!(parsed.violations.is_empty(), "{:?}", parsed.violations);
        assert_eq!(parsed.request.os, "ios");
        assert_eq!(parsed.request.search_mode, "");
        assert_eq!(parsed.request.probe, &b"hi"[..]);
        assert_eq!(parsed.request.gallery.len(), 2);
        assert_eq!(parsed.request.liveness_min_score, Some(0.7));
        assert_eq!(parsed.request.compare_min_score, None);
    }

    #[test]
    fn every_field_problem_is_reported_together() {
        let parsed = parse(
            br#"{"os":5,"gallery":["%%%",{"a":1},"https://x/y.jpg"],"compare_min_score":"0.8"}"#,
        )
        .expect("parses");
        assert_eq!(
            fields(&parsed),
            [
                ("os", "invalid_type"),
                ("compare_min_score", "invalid_type"),
                ("probe", "missing"),
                ("gallery[0]", NOT_BASE64),
                ("gallery[1]", "invalid_type"),
                ("gallery[2]", NOT_BASE64),
            ]
        );
        assert_eq!(parsed.violations[2].description, "\"probe\" is required");
    }

    #[test]
    fn repeated_keys_are_refused_at_every_level_naming_the_path() {
        for (body, path) in [
            (&br#"{"probe":"aGk=","probe":"aGk="}"#[..], "probe"),
            (br#"{"x":1,"gallery":[],"x":2}"#, "x"),
            (br#"{"extra":{"a":1,"b":{"c":1,"c":2}}}"#, "extra.b.c"),
            (br#"{"list":[0,{"k":1,"k":1}]}"#, "list[1].k"),
            (br#"{"gallery":[{"k":1,"k":1}]}"#, "gallery[0].k"),
            (br#"{"a\u0062":1,"ab":2}"#, "ab"),
            (br#"{"x":[[{"k":1,"k":1}]]}"#, "x[0][0].k"),
        ] {
            assert_eq!(
                parse(body).unwrap_err(),
                BodyError::DuplicateKey(path.into()),
                "{}",
                String::from_utf8_lossy(body)
            );
        }
    }

    #[test]
    fn bodies_that_are_not_one_json_object_are_malformed() {
        for body in [
            &b"[]"[..],
            b"\"x\"",
            b"{\"os\":",
            b"{} {}",
            b"",
            b"{\"a\":1e999}",
        ] {
            assert!(
                matches!(parse(body), Err(BodyError::Malformed(_))),
                "{}",
                String::from_utf8_lossy(body)
            );
        }
    }
}
