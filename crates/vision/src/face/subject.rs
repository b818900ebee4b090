//! Subject choice among the detected faces: the largest and most central face is the one the
//! photo is about (DESIGN.md section 4).

use super::detect::DetectedFace;

/// How much a face counts as the subject: its box area minus twice the squared distance of its
/// box centre from the image centre (both in pixels squared), so a large face wins unless it sits
/// far off-centre.
pub fn subject_score(face: &DetectedFace, image_width: u32, image_height: u32) -> f32 {
    let [x, y, w, h] = face.bbox;
    let dx = x + w / 2.0 - image_width as f32 / 2.0;
    let dy = y + h / 2.0 - image_height as f32 / 2.0;
    w * h - 2.0 * (dx * dx + dy * dy)
}

/// Index of the subject among `faces`, or `None` when there is no face.
pub fn choose_subject(
    faces: &[DetectedFace],
    image_width: u32,
    image_height: u32,
) -> Option<usize> {
    faces
        .iter()
        .enumerate()
        .map(|(i, f)| (i, subject_score(f, image_width, image_height)))
        .max_by(|a, b| a.1.total_cmp(&b.1))
        .map(|(i, _)| i)
}

/// Default for [`has_rival_face`]: a second face with at least 80% of the subject's box area makes
/// the photo ambiguous.
pub const DEFAULT_RIVAL_AREA_RATIO: f32 = 0.8;

/// Whether some face other than `subject` has a box area of at least `min_area_ratio` times the
/// subject's: then it is unclear whose photo this is (`multiple_faces_detected`). Smaller faces in
/// the background do not count.
pub fn has_rival_face(faces: &[DetectedFace], subject: usize, min_area_ratio: f32) -> bool {
    let Some(chosen) = faces.get(subject) else {
        return false;
    };
    let subject_area = box_area(chosen);
    faces
        .iter()
        .enumerate()
        .any(|(i, f)| i != subject && box_area(f) >= min_area_ratio * subject_area)
}

fn box_area(face: &DetectedFace) -> f32 {
    face.bbox[2].max(0.0) * face.bbox[3].max(0.0)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn face(x: f32, y: f32, w: f32, h: f32) -> DetectedFace {
        DetectedFace {
            bbox: [x, y, w, h],
            landmarks: [[0.0; 2]; 5],
            score: 0.9,
        }
    }

    #[test]
    fn no_face_no_subject() {
        assert_eq!(choose_subject(&[], 100, 100), None);
    }

    #[test]
    fn larger_face_wins_when_both_central() {
        let faces = [face(40.0, 40.0, 20.0, 20.0), face(30.0, 30.0, 40.0, 40.0)];
        assert_eq!(choose_subject(&faces, 100, 100), Some(1));
    }

    #[test]
    fn central_face_beats_slightly_larger_corner_face() {
        // Corner face: area 900, centre (15, 15), distance^2 from (100, 100) = 2 * 85^2 = 14450.
        // Central face: area 800, centre at the image centre.
        let faces = [face(0.0, 0.0, 30.0, 30.0), face(80.0, 80.0, 40.0, 20.0)];
        assert_eq!(choose_subject(&faces, 200, 200), Some(1));
        assert!(subject_score(&faces[0], 200, 200) < 0.0);
    }

    #[test]
    fn rival_face_needs_comparable_area() {
        let faces = [
            face(0.0, 0.0, 100.0, 100.0),
            face(200.0, 0.0, 90.0, 90.0),
            face(400.0, 0.0, 50.0, 50.0),
        ];
        assert!(has_rival_face(&faces, 0, DEFAULT_RIVAL_AREA_RATIO)); // 8100 >= 8000
        assert!(!has_rival_face(&faces[..1], 0, DEFAULT_RIVAL_AREA_RATIO));
        let without_close_rival = [faces[0].clone(), faces[2].clone()];
        assert!(!has_rival_face(
            &without_close_rival,
            0,
            DEFAULT_RIVAL_AREA_RATIO
        ));
        assert!(!has_rival_face(&faces, 7, DEFAULT_RIVAL_AREA_RATIO));
    }
}
