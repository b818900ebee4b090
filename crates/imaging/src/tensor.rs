//! Conversion of images to the planar `f32` layout that the networks take.

use image::RgbImage;

/// Channel order of a network's input planes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ChannelOrder {
    /// Red, green, blue (e.g. SFace as the reference feeds it).
    Rgb,
    /// Blue, green, red (OpenCV-trained models such as YuNet and MiniFASNet).
    Bgr,
}

/// Converts an RGB image to a `3 x height x width` planar (CHW, i.e. NCHW with N = 1) buffer of
/// raw 0..=255 values as `f32`, planes in `channel_order`. Any normalisation is the caller's.
pub fn to_planar_f32(image: &RgbImage, channel_order: ChannelOrder) -> Vec<f32> {
    let plane = image.width() as usize * image.height() as usize;
    let mut out = vec![0f32; plane * 3];
    let order = match channel_order {
        ChannelOrder::Rgb => [0, 1, 2],
        ChannelOrder::Bgr => [2, 1, 0],
    };
    let (first, rest) = out.split_at_mut(plane);
    let (second, third) = rest.split_at_mut(plane);
    for (i, pixel) in image.as_raw().chunks_exact(3).enumerate() {
        first[i] = f32::from(pixel[order[0]]);
        second[i] = f32::from(pixel[order[1]]);
        third[i] = f32::from(pixel[order[2]]);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn planes_follow_channel_order() {
        let image = RgbImage::from_fn(2, 1, |x, _| {
            image::Rgb([10 + x as u8, 20 + x as u8, 30 + x as u8])
        });
        assert_eq!(
            to_planar_f32(&image, ChannelOrder::Rgb),
            vec![10.0, 11.0, 20.0, 21.0, 30.0, 31.0]
        );
        assert_eq!(
            to_planar_f32(&image, ChannelOrder::Bgr),
            vec![30.0, 31.0, 20.0, 21.0, 10.0, 11.0]
        );
        assert!(to_planar_f32(&RgbImage::new(0, 0), ChannelOrder::Rgb).is_empty());
    }
}
