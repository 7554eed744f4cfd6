//! Bilinear resize with antialiasing, bit-exact with Pillow's `Image.resize(size,
//! Image.BILINEAR)` on 8-bit RGB images, which is what torchvision's `Resize` does to a PIL image.
//!
//! Source: Pillow `src/libImaging/Resample.c` (`precompute_coeffs`, `normalize_coeffs_8bpc`,
//! `ImagingResampleHorizontal_8bpc` / `Vertical_8bpc`, `ImagingResampleInner`; checked against
//! Pillow 13.0.0, `tests/fixtures/make_resize_fixture.py`). The algorithm:
//! a separable triangle filter whose support widens with the downscale factor (antialiasing);
//! per output pixel the taps are computed in `f64`, normalised to sum 1, converted to fixed point
//! with 22 fraction bits (rounded half away from zero), accumulated in `i32` from a bias of
//! `2^21`, shifted right by 22 and clamped to 0..=255; the intermediate image between the two
//! passes is 8-bit, as in Pillow.

use image::RgbImage;

/// Fraction bits of the fixed-point taps (Pillow: `32 - 8 - 2`).
const PRECISION_BITS: u32 = 22;

/// Per output position: first input index, and the fixed-point taps.
struct Taps {
    /// `[out]`: first input index of each output position.
    first: Vec<usize>,
    /// `[out]`: number of taps of each output position.
    count: Vec<usize>,
    /// `[out * ksize]`: fixed-point taps, row-major.
    taps: Vec<i32>,
    /// Taps per output position (row stride of `taps`).
    ksize: usize,
}

/// Pillow's bilinear (triangle) filter, support 1.
fn triangle(x: f64) -> f64 {
    let x = x.abs();
    if x < 1.0 {
        1.0 - x
    } else {
        0.0
    }
}

/// Taps resampling `in_size` positions to `out_size` (Pillow `precompute_coeffs` with the box
/// `[0, in_size)` and `normalize_coeffs_8bpc`). Requires `in_size, out_size >= 1`.
fn taps(in_size: usize, out_size: usize) -> Taps {
    let scale = in_size as f64 / out_size as f64;
    let filterscale = scale.max(1.0);
    let support = filterscale; // triangle support 1.0 x filterscale
    let ksize = support.ceil() as usize * 2 + 1;
    let mut first = Vec::with_capacity(out_size);
    let mut count = Vec::with_capacity(out_size);
    let mut taps = vec![0i32; out_size * ksize];
    let mut w = vec![0f64; ksize];
    for xx in 0..out_size {
        let center = (xx as f64 + 0.5) * scale;
        let ss = 1.0 / filterscale;
        // C's (int) cast truncates toward zero; negative values clamp to 0 below anyway
        let xmin = ((center - support + 0.5) as i64).max(0) as usize;
        let xmax = ((center + support + 0.5) as i64).min(in_size as i64) as usize;
        let n = xmax.saturating_sub(xmin);
        let mut ww = 0.0;
        for (x, wx) in w.iter_mut().enumerate().take(n) {
            *wx = triangle((x as f64 + xmin as f64 - center + 0.5) * ss);
            ww += *wx;
        }
        let row = &mut taps[xx * ksize..(xx + 1) * ksize];
        for (t, &wx) in row.iter_mut().zip(&w).take(n) {
            let k = if ww != 0.0 { wx / ww } else { wx };
            let f = k * f64::from(1u32 << PRECISION_BITS);
            *t = if k < 0.0 {
                (-0.5 + f) as i32
            } else {
                (0.5 + f) as i32
            };
        }
        first.push(xmin);
        count.push(n);
    }
    Taps {
        first,
        count,
        taps,
        ksize,
    }
}

/// Fixed-point accumulator to u8 (Pillow `clip8`).
fn clip8(acc: i32) -> u8 {
    (acc >> PRECISION_BITS).clamp(0, 255) as u8
}

/// Horizontal pass over rows `rows` of `src` (`[.., in_w, 3]` u8): `[rows.len(), out_w, 3]`.
fn horizontal(src: &[u8], in_w: usize, rows: std::ops::Range<usize>, t: &Taps) -> Vec<u8> {
    let out_w = t.first.len();
    let bias = 1i32 << (PRECISION_BITS - 1);
    let mut out = vec![0u8; rows.len() * out_w * 3];
    for (r, y) in rows.enumerate() {
        let line = &src[y * in_w * 3..(y + 1) * in_w * 3];
        for xx in 0..out_w {
            let k = &t.taps[xx * t.ksize..xx * t.ksize + t.count[xx]];
            let base = t.first[xx] * 3;
            let mut acc = [bias; 3];
            for (x, &w) in k.iter().enumerate() {
                let p = &line[base + x * 3..base + x * 3 + 3];
                for c in 0..3 {
                    acc[c] += i32::from(p[c]) * w;
                }
            }
            let o = (r * out_w + xx) * 3;
            for c in 0..3 {
                out[o + c] = clip8(acc[c]);
            }
        }
    }
    out
}

/// Vertical pass over `src` (`[.., w, 3]` u8) whose row 0 is input row `row0`:
/// `[out_h, w, 3]`.
fn vertical(src: &[u8], w: usize, row0: usize, t: &Taps) -> Vec<u8> {
    let out_h = t.first.len();
    let bias = 1i32 << (PRECISION_BITS - 1);
    let stride = w * 3;
    let mut out = vec![0u8; out_h * stride];
    for yy in 0..out_h {
        let k = &t.taps[yy * t.ksize..yy * t.ksize + t.count[yy]];
        let y0 = t.first[yy] - row0;
        for xx in 0..stride {
            let mut acc = bias;
            for (y, &wt) in k.iter().enumerate() {
                acc += i32::from(src[(y0 + y) * stride + xx]) * wt;
            }
            out[yy * stride + xx] = clip8(acc);
        }
    }
    out
}

/// Resizes an RGB image to `width x height` exactly as Pillow's `resize(..., BILINEAR)` (no
/// `reducing_gap`, the whole image as the box). An image already of that size is returned as a
/// copy; a zero side gives an empty image.
///
/// Pass order as Pillow 12+ (`ImagingResampleInner`): the vertical pass runs first when the
/// height shrinks by more than twice as many pixels as the width does
/// (`in_h - out_h > 2 (in_w - out_w)`), the horizontal pass first otherwise (Pillow 11 and
/// earlier always ran it first; the orders differ in the 8-bit rounding between the passes).
pub fn resize_bilinear(img: &RgbImage, width: u32, height: u32) -> RgbImage {
    let (iw, ih) = (img.width() as usize, img.height() as usize);
    let (ow, oh) = (width as usize, height as usize);
    if (ow, oh) == (iw, ih) {
        return img.clone();
    }
    if ow == 0 || oh == 0 || iw == 0 || ih == 0 {
        return RgbImage::new(width, height);
    }
    let src = img.as_raw();
    let (need_h, need_v) = (ow != iw, oh != ih);
    let (dh, dw) = (ih as i64 - oh as i64, iw as i64 - ow as i64);
    let horizontal_first = !(dh > 0 && dh > dw * 2);
    let out = if horizontal_first {
        let vert = taps(ih, oh);
        // rows the vertical pass reads
        let rows = vert.first[0]..vert.first[oh - 1] + vert.count[oh - 1];
        let row0 = rows.start;
        let mid = if need_h {
            horizontal(src, iw, rows, &taps(iw, ow))
        } else {
            src[row0 * iw * 3..rows.end * iw * 3].to_vec()
        };
        if need_v {
            vertical(&mid, ow, row0, &vert)
        } else {
            mid
        }
    } else {
        // need_v holds here (the height shrinks)
        let mid = vertical(src, iw, 0, &taps(ih, oh));
        if need_h {
            horizontal(&mid, iw, 0..oh, &taps(iw, ow))
        } else {
            mid
        }
    };
    RgbImage::from_raw(width, height, out).expect("resized buffer has width*height*3 bytes")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn taps_sum_to_one_in_fixed_point_and_upscale_by_two_is_hand_derived() {
        // 2 -> 4: scale 0.5, support 1; output 0 centre 0.25: inputs 0 and 1 (xmin = 0,
        // xmax = int(1.75) = 1 -> only input 0): one tap of weight 1
        let t = taps(2, 4);
        assert_eq!(t.count, vec![1, 2, 2, 1]);
        assert_eq!(t.taps[0], 1 << PRECISION_BITS);
        // output 1, centre 0.75: x = 0 -> triangle(0 - 0.75 + 0.5) = 0.75, x = 1 -> 0.25
        assert_eq!(t.taps[t.ksize], (0.75 * 4194304.0 + 0.5) as i32);
        assert_eq!(t.taps[t.ksize + 1], (0.25 * 4194304.0 + 0.5) as i32);
        let img = RgbImage::from_fn(2, 1, |x, _| image::Rgb([if x == 0 { 0 } else { 200 }; 3]));
        let r = resize_bilinear(&img, 4, 1);
        // 0, 0.75*0 + 0.25*200 = 50, 150, 200
        let row: Vec<u8> = (0..4).map(|x| r.get_pixel(x, 0)[0]).collect();
        assert_eq!(row, vec![0, 50, 150, 200]);
    }

    #[test]
    fn downscale_by_two_averages_with_the_widened_triangle() {
        // 4 -> 2: scale 2, support 2; output 0 centre 1: xmin = int(-0.5) = 0, xmax = int(3.5)
        // = 3; weights triangle((x - 1 + 0.5) / 2) for x = 0, 1, 2: 0.75, 0.75, 0.25 -> /1.75
        let img = RgbImage::from_fn(4, 1, |x, _| image::Rgb([[0, 70, 140, 210][x as usize]; 3]));
        let r = resize_bilinear(&img, 2, 1);
        let want0: f64 = (0.0 * 0.75 + 70.0 * 0.75 + 140.0 * 0.25) / 1.75; // 50
        assert_eq!(r.get_pixel(0, 0)[0], want0.round() as u8);
        // symmetric: output 1 centre 3: x = 1..4 weights 0.25, 0.75, 0.75 -> 160
        let want1: f64 = (70.0 * 0.25 + 140.0 * 0.75 + 210.0 * 0.75) / 1.75;
        assert_eq!(r.get_pixel(1, 0)[0], want1.round() as u8);
    }
}
