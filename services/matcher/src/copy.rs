//! Is the probe a copy of a gallery image? A cosine so high that no genuine pair of distinct photos
//! reaches it means the two images are the same photo (re-encoded, re-saved, lightly cropped): the
//! ID photo submitted as the selfie. The gateway turns the flag into a failed liveness record
//! (`probe_is_gallery_copy`).
//!
//! Thresholds measured on LFW View 1 (pairs-devtrain.csv and pairs-devtest.csv, 1,600 genuine
//! pairs of different files) with `faceproof eval verification --scores-out`: the genuine maximum
//! is 0.9228 (FAST) and 0.9247 (ACCURATE); JPEG re-encodes of one photo at quality 75 or better
//! score at least 0.983. 0.97 keeps a 0.045 margin above genuine pairs: see docs/api.md.

use faceproof_proto::common::v1::SearchMode;

/// Cosine above which a FAST comparison is taken for a copy.
pub const FAST_COPY_COSINE: f64 = 0.97;
/// Cosine above which an ACCURATE comparison is taken for a copy.
pub const ACCURATE_COPY_COSINE: f64 = 0.97;

/// The copy threshold of a search mode.
pub fn copy_threshold(mode: SearchMode) -> f64 {
    match mode {
        SearchMode::Accurate => ACCURATE_COPY_COSINE,
        SearchMode::Fast | SearchMode::Unspecified => FAST_COPY_COSINE,
    }
}

/// True when `similarity` is above the mode's copy threshold.
pub fn is_near_identical(mode: SearchMode, similarity: f64) -> bool {
    similarity > copy_threshold(mode)
}
