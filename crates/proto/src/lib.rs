//! Generated protocol code for faceproof's three services, one module per versioned package.

// Generated code is not held to the workspace's hand-written style.
#![allow(clippy::all, clippy::pedantic, rust_2018_idioms)]

/// Declares `$package::v1` holding the code generated for the proto package
/// `faceproof.$package.v1` (what `tonic::include_proto!` does, for a name built from `$package`).
macro_rules! proto_packages {
    ($($package:ident),+) => {
        $(
            pub mod $package {
                pub mod v1 {
                    include!(concat!(
                        env!("OUT_DIR"),
                        "/faceproof.",
                        stringify!($package),
                        ".v1.rs"
                    ));
                }
            }
        )+
    };
}

proto_packages!(common, gateway, matcher, liveness);

/// Encoded `FileDescriptorSet` of every faceproof proto, for gRPC reflection.
pub const FILE_DESCRIPTOR_SET: &[u8] =
    include_bytes!(concat!(env!("OUT_DIR"), "/faceproof_descriptor.bin"));

impl common::v1::FaceIssueReason {
    /// The stable snake_case code used in ErrorInfo reasons and the REST form
    /// (`no_face_detected`, ...).
    pub fn code(self) -> &'static str {
        use common::v1::FaceIssueReason as R;
        match self {
            R::Unspecified => "unspecified",
            R::NoFaceDetected => "no_face_detected",
            R::MultipleFacesDetected => "multiple_faces_detected",
            R::FaceTooSmall => "face_too_small",
            R::FaceCloseToBorder => "face_close_to_border",
            R::ImageUndecodable => "image_undecodable",
            R::ImageTooLarge => "image_too_large",
            R::UnsupportedFormat => "unsupported_format",
            R::ImageTruncated => "image_truncated",
            R::ImageBadAspectRatio => "image_bad_aspect_ratio",
        }
    }
}
