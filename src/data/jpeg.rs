//! JPEG decoding bit-exact with PIL / torchvision: libjpeg-turbo's own decoder (the `mozjpeg-sys`
//! crate builds it from source with the C compiler, no system library), with PIL's settings:
//! accurate integer IDCT (`JDCT_ISLOW`), fancy (triangular) chroma upsampling, RGB output
//! (greyscale replicated). Checked against PIL 13 (libjpeg-turbo) on 400 CIFAR-10 JPEGs: 0
//! differing bytes (the `image` crate's decoder differed by up to 4 levels on 276,855 bytes);
//! `tests/fixtures/jpeg/` holds a few with their PIL pixels for the test.
//!
//! libjpeg reports a corrupt stream by calling `error_exit`; ours formats the message and
//! unwinds (with `resume_unwind`, so no panic message is printed) back to [`decode_rgb`], which
//! turns it into an error. Headers are read before any pixel buffer is allocated and images
//! over [`MAX_PIXELS`] are refused.

use std::mem;

use mozjpeg_sys::{
    boolean, jpeg_CreateDecompress, jpeg_common_struct, jpeg_decompress_struct,
    jpeg_destroy_decompress, jpeg_error_mgr, jpeg_finish_decompress, jpeg_mem_src,
    jpeg_read_header, jpeg_read_scanlines, jpeg_start_decompress, jpeg_std_error, JPEG_LIB_VERSION,
    J_COLOR_SPACE, J_DCT_METHOD,
};

/// Largest image (width x height, pixels) decoded: 2^26 (e.g. 8192 x 8192, 192 MiB of RGB).
pub const MAX_PIXELS: usize = 1 << 26;

/// The first bytes of every JPEG stream (SOI marker).
pub fn is_jpeg(bytes: &[u8]) -> bool {
    bytes.starts_with(&[0xff, 0xd8, 0xff])
}

struct JpegFailure(String);

unsafe extern "C-unwind" fn error_exit(c: &mut jpeg_common_struct) {
    let buf = [0u8; 80];
    // SAFETY: `err` was set to our error manager before any libjpeg call.
    if let Some(f) = unsafe { (*c.err).format_message } {
        // SAFETY: format_message writes at most 80 bytes (JMSG_LENGTH_MAX) into `buf`.
        unsafe { f(c, &buf) };
    }
    let n = buf.iter().position(|&b| b == 0).unwrap_or(buf.len());
    let msg = String::from_utf8_lossy(&buf[..n]).into_owned();
    std::panic::resume_unwind(Box::new(JpegFailure(msg)));
}

unsafe extern "C-unwind" fn quiet_message(_c: &mut jpeg_common_struct, _level: i32) {}

struct Guard(*mut jpeg_decompress_struct);

impl Drop for Guard {
    fn drop(&mut self) {
        // SAFETY: the struct was created by jpeg_CreateDecompress and outlives the guard.
        unsafe { jpeg_destroy_decompress(&mut *self.0) }
    }
}

/// Decodes a JPEG stream to `(width, height, [height, width, 3] u8 RGB)`, exactly as
/// `PIL.Image.open(f).convert("RGB")` does.
///
/// # Errors
/// libjpeg's message (one line) for a corrupt or unsupported stream (e.g. CMYK), or a note
/// that the image exceeds [`MAX_PIXELS`].
pub fn decode_rgb(bytes: &[u8]) -> Result<(usize, usize, Vec<u8>), String> {
    let run = std::panic::AssertUnwindSafe(|| -> Result<(usize, usize, Vec<u8>), String> {
        // SAFETY: the usual libjpeg sequence on zeroed structs; errors unwind out of
        // error_exit (the crate is built with its `unwinding` feature, callbacks are
        // `C-unwind`), and the guard destroys the decompressor on every path.
        unsafe {
            let mut err: Box<jpeg_error_mgr> = Box::new(mem::zeroed());
            let e = jpeg_std_error(&mut err);
            e.error_exit = Some(error_exit);
            e.emit_message = Some(quiet_message);
            let mut c: Box<jpeg_decompress_struct> = Box::new(mem::zeroed());
            c.common.err = e;
            jpeg_CreateDecompress(
                &mut *c,
                JPEG_LIB_VERSION,
                mem::size_of::<jpeg_decompress_struct>(),
            );
            let guard = Guard(&mut *c);
            let c = &mut *guard.0;
            jpeg_mem_src(c, bytes.as_ptr(), bytes.len() as _);
            jpeg_read_header(c, 1 as boolean);
            let (w, h) = (c.image_width as usize, c.image_height as usize);
            if w.saturating_mul(h) > MAX_PIXELS {
                return Err(format!(
                    "image of {w}x{h} pixels exceeds the {MAX_PIXELS}-pixel limit"
                ));
            }
            c.out_color_space = J_COLOR_SPACE::JCS_RGB;
            c.dct_method = J_DCT_METHOD::JDCT_ISLOW;
            c.do_fancy_upsampling = 1 as boolean;
            jpeg_start_decompress(c);
            let (w, h) = (c.output_width as usize, c.output_height as usize);
            if c.output_components != 3 || w.saturating_mul(h) > MAX_PIXELS {
                return Err(format!(
                    "unsupported JPEG output ({} components, {w}x{h})",
                    c.output_components
                ));
            }
            let mut out = vec![0u8; w * h * 3];
            while (c.output_scanline as usize) < h {
                let at = c.output_scanline as usize * w * 3;
                let mut row = out[at..].as_mut_ptr();
                if jpeg_read_scanlines(c, &mut row, 1) == 0 {
                    return Err("truncated JPEG data".into());
                }
            }
            jpeg_finish_decompress(c);
            Ok((w, h, out))
        }
    });
    match std::panic::catch_unwind(run) {
        Ok(r) => r,
        Err(p) => Err(match p.downcast::<JpegFailure>() {
            Ok(f) => f.0,
            Err(_) => "the JPEG decoder failed".into(),
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn corrupt_streams_are_errors_not_panics() {
        assert!(decode_rgb(b"").is_err());
        assert!(decode_rgb(b"\xff\xd8\xffgarbage").is_err());
        let ok = std::fs::read("tests/fixtures/jpeg/0.jpg").unwrap();
        for cut in [4, 20, ok.len() / 2, ok.len() - 2] {
            let _ = decode_rgb(&ok[..cut]); // may decode partially (libjpeg pads); never panics
        }
        let mut flipped = ok.clone();
        for i in (100..flipped.len()).step_by(37) {
            flipped[i] ^= 0x5a;
        }
        let _ = decode_rgb(&flipped);
    }
}
