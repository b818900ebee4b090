//! Hand-built image bytes for tests (this crate's, its fuzzer's and the gateway's): PNG chunks
//! with valid CRCs, and PNGs that declare any size without holding its pixels. Built for this
//! crate's tests and, elsewhere, with the `testing` feature.

/// The CRC-32 every PNG chunk ends with (ISO 3309: reflected polynomial `0xEDB88320`), over the
/// chunk's type and data.
pub fn png_crc32(bytes: &[u8]) -> u32 {
    let mut crc = !0u32;
    for &byte in bytes {
        crc ^= u32::from(byte);
        for _ in 0..8 {
            crc = if crc & 1 == 1 {
                (crc >> 1) ^ 0xEDB8_8320
            } else {
                crc >> 1
            };
        }
    }
    !crc
}

/// One PNG chunk: big-endian data length, type, data, CRC.
pub fn png_chunk(kind: &[u8; 4], data: &[u8]) -> Vec<u8> {
    let length = u32::try_from(data.len()).expect("a test chunk is under 4 GiB");
    let mut typed = kind.to_vec();
    typed.extend_from_slice(data);
    let mut chunk = length.to_be_bytes().to_vec();
    chunk.extend_from_slice(&typed);
    chunk.extend_from_slice(&png_crc32(&typed).to_be_bytes());
    chunk
}

/// A PNG whose IHDR declares `width` x `height` at `bit_depth` and `colour_type`, followed by an
/// empty IDAT and IEND: all that a header check reads, however large the declared size.
pub fn png_header_only(width: u32, height: u32, bit_depth: u8, colour_type: u8) -> Vec<u8> {
    let mut ihdr = width.to_be_bytes().to_vec();
    ihdr.extend_from_slice(&height.to_be_bytes());
    ihdr.extend_from_slice(&[bit_depth, colour_type, 0, 0, 0]);
    let mut png = PNG_SIGNATURE.to_vec();
    png.extend(png_chunk(b"IHDR", &ihdr));
    png.extend(png_chunk(b"IDAT", &[]));
    png.extend(png_chunk(b"IEND", &[]));
    png
}

/// Recomputes the IHDR chunk's CRC of an encoded PNG (at least 33 bytes) after its header fields
/// were overwritten, so that a check past the CRC sees the change.
pub fn fix_png_ihdr_crc(png: &mut [u8]) {
    let crc = png_crc32(&png[IHDR_TYPE_AND_DATA]);
    png[IHDR_TYPE_AND_DATA.end..IHDR_TYPE_AND_DATA.end + 4].copy_from_slice(&crc.to_be_bytes());
}

const PNG_SIGNATURE: &[u8; 8] = b"\x89PNG\r\n\x1a\n";

/// Where IHDR's type and 13 data bytes sit: after the signature and the chunk length.
const IHDR_TYPE_AND_DATA: std::ops::Range<usize> = 12..29;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_crc_matches_the_one_every_png_ends_with() {
        // The IEND chunk's CRC, as every PNG file ends.
        assert_eq!(png_crc32(b"IEND"), 0xAE42_6082);
        assert_eq!(png_chunk(b"IEND", &[])[8..], [0xAE, 0x42, 0x60, 0x82]);
    }

    #[test]
    fn the_png_crate_reads_a_header_only_png() {
        let png = png_header_only(7, 5, 8, 2);
        let decoder = png::Decoder::new(std::io::Cursor::new(png));
        let reader = decoder.read_info().expect("valid signature, IHDR and CRCs");
        assert_eq!((reader.info().width, reader.info().height), (7, 5));
    }
}
