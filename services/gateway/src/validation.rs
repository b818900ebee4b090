//! Request validation: every rule is checked and all violations are reported together.
//!
//! `os` and `search_mode` are matched without regard to case and default to DESKTOP and FAST
//! when empty (unset); records echo them in upper case.

use bytes::Bytes;

use faceproof_proto::common::v1::SearchMode as ProtoSearchMode;
use faceproof_proto::gateway::v1::CompareWithLivenessRequest;

use crate::config::Limits;
use crate::error::{ServiceError, Violation};

/// `compare_min_score` range: the thresholds whose false-accept rates the calibration measures.
pub const COMPARE_MIN_SCORE_RANGE: (f64, f64) = (0.67, 0.95);
/// `liveness_min_score` range.
pub const LIVENESS_MIN_SCORE_RANGE: (f64, f64) = (0.52, 1.0);
/// `liveness_min_score` when the caller gives none (as the reference API).
pub const DEFAULT_LIVENESS_MIN_SCORE: f64 = 0.6;

/// Where the capture was made.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Os {
    Desktop,
    Ios,
    Android,
}

impl Os {
    /// Any case; an empty (unset) value is the default, DESKTOP.
    pub fn parse(text: &str) -> Option<Self> {
        [Self::Desktop, Self::Ios, Self::Android]
            .into_iter()
            .find(|os| text.eq_ignore_ascii_case(os.as_str()))
            .or(text.is_empty().then_some(Self::Desktop))
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Self::Desktop => "DESKTOP",
            Self::Ios => "IOS",
            Self::Android => "ANDROID",
        }
    }
}

/// FAST or ACCURATE.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SearchMode {
    Fast,
    Accurate,
}

impl SearchMode {
    /// Any case; an empty (unset) value is the default, FAST.
    pub fn parse(text: &str) -> Option<Self> {
        [Self::Fast, Self::Accurate]
            .into_iter()
            .find(|mode| text.eq_ignore_ascii_case(mode.as_str()))
            .or(text.is_empty().then_some(Self::Fast))
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Self::Fast => "FAST",
            Self::Accurate => "ACCURATE",
        }
    }

    pub fn to_proto(self) -> ProtoSearchMode {
        match self {
            Self::Fast => ProtoSearchMode::Fast,
            Self::Accurate => ProtoSearchMode::Accurate,
        }
    }
}

/// A request that passed every rule.
#[derive(Debug)]
pub struct ValidRequest {
    pub os: Os,
    pub search_mode: SearchMode,
    pub compare_min_score: Option<f64>,
    pub liveness_min_score: f64,
    pub probe: Bytes,
    pub gallery: Vec<Bytes>,
}

/// Checks every rule of the public contract and reports all violations at once.
pub fn validate(
    request: CompareWithLivenessRequest,
    limits: &Limits,
) -> Result<ValidRequest, ServiceError> {
    let mut violations = Vec::new();
    let os = Os::parse(&request.os);
    if os.is_none() {
        violations.push(Violation::new(
            "os",
            "invalid_value",
            format!(
                "must be DESKTOP, IOS or ANDROID (any case), got {:?}",
                truncated(&request.os)
            ),
        ));
    }
    let search_mode = SearchMode::parse(&request.search_mode);
    if search_mode.is_none() {
        violations.push(Violation::new(
            "search_mode",
            "invalid_value",
            format!(
                "must be FAST or ACCURATE (any case), got {:?}",
                truncated(&request.search_mode)
            ),
        ));
    }
    if let Some(score) = request.compare_min_score {
        check_range(
            "compare_min_score",
            score,
            COMPARE_MIN_SCORE_RANGE,
            &mut violations,
        );
    }
    if let Some(score) = request.liveness_min_score {
        check_range(
            "liveness_min_score",
            score,
            LIVENESS_MIN_SCORE_RANGE,
            &mut violations,
        );
    }
    check_image("probe", &request.probe, limits, &mut violations);
    if request.gallery.is_empty() {
        violations.push(Violation::new(
            "gallery",
            "missing",
            "needs at least one image",
        ));
    } else if request.gallery.len() > limits.max_gallery {
        violations.push(Violation::new(
            "gallery",
            "too_many_images",
            format!(
                "holds {} images, at most {} are allowed",
                request.gallery.len(),
                limits.max_gallery
            ),
        ));
    }
    for (index, image) in request.gallery.iter().enumerate().take(limits.max_gallery) {
        check_image(&format!("gallery[{index}]"), image, limits, &mut violations);
    }
    match (os, search_mode) {
        (Some(os), Some(search_mode)) if violations.is_empty() => Ok(ValidRequest {
            os,
            search_mode,
            compare_min_score: request.compare_min_score,
            liveness_min_score: request
                .liveness_min_score
                .unwrap_or(DEFAULT_LIVENESS_MIN_SCORE),
            probe: request.probe,
            gallery: request.gallery,
        }),
        _ => Err(ServiceError::InvalidRequest(violations)),
    }
}

/// A caller's value quoted in a message, cut so that a huge string cannot blow up the answer.
fn truncated(text: &str) -> &str {
    const QUOTED_CHARS: usize = 40;
    text.char_indices()
        .nth(QUOTED_CHARS)
        .map_or(text, |(end, _)| &text[..end])
}

fn check_range(field: &str, value: f64, (low, high): (f64, f64), violations: &mut Vec<Violation>) {
    // `contains` is false for NaN, so NaN is refused too.
    if !(low..=high).contains(&value) {
        violations.push(Violation::new(
            field,
            "out_of_range",
            format!("must be between {low} and {high}, got {value}"),
        ));
    }
}

/// Header-only checks: size, format by magic bytes, readable dimensions, pixel count.
fn check_image(field: &str, bytes: &[u8], limits: &Limits, violations: &mut Vec<Violation>) {
    if bytes.is_empty() {
        violations.push(Violation::new(field, "missing", "the image is empty"));
        return;
    }
    if bytes.len() > limits.max_image_bytes {
        violations.push(Violation::new(
            field,
            "image_too_large",
            format!(
                "the image has {} bytes, at most {} are allowed",
                bytes.len(),
                limits.max_image_bytes
            ),
        ));
        return;
    }
    if faceproof_imaging::sniff_format(bytes).is_none() {
        violations.push(Violation::new(
            field,
            "unsupported_format",
            "not a JPEG, PNG or WebP image (checked by its leading bytes)",
        ));
        return;
    }
    match faceproof_imaging::inspect(bytes) {
        Err(error) => violations.push(Violation::new(
            field,
            "image_undecodable",
            format!("the image header cannot be read: {error}"),
        )),
        Ok(info) => {
            let pixels = u64::from(info.width) * u64::from(info.height);
            if pixels > limits.max_image_pixels {
                violations.push(Violation::new(
                    field,
                    "image_too_large",
                    format!(
                        "the image is {}x{} ({pixels} pixels), at most {} pixels are allowed",
                        info.width, info.height, limits.max_image_pixels
                    ),
                ));
            } else if pixels == 0 {
                violations.push(Violation::new(
                    field,
                    "image_undecodable",
                    "the image has no pixels",
                ));
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn png(width: u32, height: u32) -> Vec<u8> {
        // 8-bit RGB, header only: all that validation reads.
        faceproof_imaging::testing::png_header_only(width, height, 8, 2)
    }

    fn limits() -> Limits {
        Limits {
            max_gallery: 2,
            max_image_bytes: 1000,
            max_image_pixels: 10_000,
        }
    }

    fn request() -> CompareWithLivenessRequest {
        CompareWithLivenessRequest {
            os: "IOS".into(),
            probe: png(10, 10).into(),
            gallery: vec![png(10, 10).into()],
            search_mode: "FAST".into(),
            compare_min_score: None,
            liveness_min_score: None,
        }
    }

    fn fields(result: Result<ValidRequest, ServiceError>) -> Vec<String> {
        match result {
            Err(ServiceError::InvalidRequest(violations)) => violations
                .into_iter()
                .map(|violation| violation.field)
                .collect(),
            other => panic!("expected violations, got {other:?}"),
        }
    }

    #[test]
    fn a_valid_request_gets_the_default_liveness_threshold() {
        let valid = validate(request(), &limits()).expect("valid");
        assert_eq!(valid.liveness_min_score, DEFAULT_LIVENESS_MIN_SCORE);
        assert_eq!(valid.compare_min_score, None);
    }

    #[test]
    fn enums_match_any_case_and_default_when_unset() {
        let mut candidate = request();
        candidate.os = "android".into();
        candidate.search_mode = "Accurate".into();
        let valid = validate(candidate, &limits()).expect("valid");
        assert_eq!(
            (valid.os, valid.search_mode),
            (Os::Android, SearchMode::Accurate)
        );
        let mut unset = request();
        unset.os.clear();
        unset.search_mode.clear();
        let valid = validate(unset, &limits()).expect("defaults");
        assert_eq!(
            (valid.os, valid.search_mode),
            (Os::Desktop, SearchMode::Fast)
        );
        assert_eq!(SearchMode::parse(" FAST"), None);
        assert_eq!(Os::parse("iOS"), Some(Os::Ios));
    }

    #[test]
    fn bounds_are_inclusive_and_nan_is_refused() {
        for (compare, liveness, ok) in [
            (0.67, 0.52, true),
            (0.95, 1.0, true),
            (0.669, 0.6, false),
            (0.951, 0.6, false),
            (0.8, 0.519, false),
            (0.8, 1.001, false),
            (f64::NAN, 0.6, false),
            (0.8, f64::NAN, false),
        ] {
            let mut candidate = request();
            candidate.compare_min_score = Some(compare);
            candidate.liveness_min_score = Some(liveness);
            assert_eq!(
                validate(candidate, &limits()).is_ok(),
                ok,
                "{compare} {liveness}"
            );
        }
    }

    #[test]
    fn all_violations_are_reported_together() {
        let mut candidate = request();
        candidate.os = "windows".into();
        candidate.search_mode = "quick".into();
        candidate.compare_min_score = Some(2.0);
        candidate.probe = Bytes::new();
        candidate.gallery = vec![
            Bytes::from_static(b"GIF89a...."),
            png(200, 200).into(),
            vec![0xFF; 2000].into(),
        ];
        assert_eq!(
            fields(validate(candidate, &limits())),
            [
                "os",
                "search_mode",
                "compare_min_score",
                "probe",
                "gallery",
                "gallery[0]",
                "gallery[1]"
            ]
        );
    }

    #[test]
    fn image_rules_name_the_field() {
        let mut candidate = request();
        candidate.gallery = vec![png(10, 10).into(), vec![0xFF; 2000].into()];
        candidate.probe = Bytes::from_static(b"\xFF\xD8\xFFtruncated");
        assert_eq!(
            fields(validate(candidate, &limits())),
            ["probe", "gallery[1]"]
        );
        let mut empty_gallery = request();
        empty_gallery.gallery.clear();
        assert_eq!(fields(validate(empty_gallery, &limits())), ["gallery"]);
    }
}
