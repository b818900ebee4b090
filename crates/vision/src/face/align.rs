//! Face alignment: a similarity transform of the 5 landmarks onto the 112x112 ArcFace template
//! (the input SFace was trained on), applied with a bilinear warp, border 0.

use faceproof_imaging::{
    ARCFACE_TEMPLATE_112, RgbImage, estimate_similarity, warp_affine_bilinear,
};

use crate::VisionError;
use crate::nets::sface::SFACE_INPUT_SIDE;

/// The 2x3 matrix mapping image coordinates to the aligned face (least-squares similarity of the
/// landmarks to the template).
pub fn alignment_matrix(landmarks: &[[f32; 2]; 5]) -> Result<[[f32; 3]; 2], VisionError> {
    estimate_similarity(landmarks, &ARCFACE_TEMPLATE_112).ok_or_else(|| {
        VisionError::InvalidInput(format!("landmarks cannot be aligned: {landmarks:?}"))
    })
}

/// The 112x112 aligned face for `landmarks` (right eye, left eye, nose, right and left mouth
/// corners, in `image` coordinates).
pub fn align_face(image: &RgbImage, landmarks: &[[f32; 2]; 5]) -> Result<RgbImage, VisionError> {
    let matrix = alignment_matrix(landmarks)?;
    Ok(warp_affine_bilinear(
        image,
        matrix,
        SFACE_INPUT_SIDE,
        SFACE_INPUT_SIDE,
    ))
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    #[test]
    fn template_landmarks_align_to_identity() {
        let matrix = alignment_matrix(&ARCFACE_TEMPLATE_112).unwrap();
        let identity = [[1.0, 0.0, 0.0], [0.0, 1.0, 0.0]];
        for (row, expected) in matrix.iter().zip(identity) {
            for (value, want) in row.iter().zip(expected) {
                assert!((value - want).abs() < 1e-4, "{matrix:?}");
            }
        }
    }

    #[test]
    fn coincident_landmarks_are_an_error() {
        assert!(alignment_matrix(&[[5.0, 5.0]; 5]).is_err());
    }
}
