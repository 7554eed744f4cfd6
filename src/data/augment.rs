//! CIFAR training augmentation (reference doc §2, §6): random horizontal flip, then random crop
//! 32 with 4-pixel zero padding. Works on u8 HWC images, driven by a seeded RNG.

use rand::Rng;

/// Padding of the random crop, pixels.
pub const PAD: usize = 4;

/// Training augmentation of `prep` for a stored `[side, side, 3]` image: CIFAR flip + pad-4
/// crop ([`augment_into`]); ImageNet random resized crop to 224 + flip
/// ([`super::preprocess::random_resized_crop_flip`]). `out` holds `prep.side()^2 * 3` bytes.
pub fn augment_for<R: Rng>(
    prep: super::Preprocess,
    side: usize,
    img: &[u8],
    out: &mut [u8],
    rng: &mut R,
) {
    match prep.family {
        super::Family::Cifar => augment_into(img, out, rng),
        super::Family::ImageNet => {
            super::preprocess::random_resized_crop_flip(img, side, prep.side(), out, rng)
        }
    }
}

/// A Cutout square (DeVries & Taylor 2017, "Improved Regularization of Convolutional Neural
/// Networks with Cutout", §3; official code uoguelph-mlrg/Cutout `util/cutout.py`): rows
/// `y0..y1` and columns `x0..x1` of an image, zeroed after normalisation (so the pixels hold the
/// dataset mean colour).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct CutoutBox {
    /// First row.
    pub y0: usize,
    /// One past the last row.
    pub y1: usize,
    /// First column.
    pub x0: usize,
    /// One past the last column.
    pub x1: usize,
}

impl CutoutBox {
    /// The official draw for a `side x side` image and a square of `size` pixels: centre
    /// `(y, x)` uniform over the pixels, rows `clip(y - size/2, 0, side)..clip(y + size/2, 0,
    /// side)`, the same for columns (so a square near the border is cut off, as in the
    /// official code; an odd `size` covers `size - 1` pixels there too).
    pub fn draw<R: Rng>(side: usize, size: usize, rng: &mut R) -> Self {
        let y = rng.gen_range(0..side);
        let x = rng.gen_range(0..side);
        let (h, s) = (size / 2, side);
        Self {
            y0: y.saturating_sub(h),
            y1: (y + h).min(s),
            x0: x.saturating_sub(h),
            x1: (x + h).min(s),
        }
    }

    /// Zeroes the square in one normalised image of `side x side` pixels and `c` channels,
    /// `[side, side, c]` (HWC, `hwc`) or `[c, side, side]` (CHW).
    pub fn zero(&self, img: &mut [f32], side: usize, c: usize, hwc: bool) {
        for y in self.y0..self.y1 {
            if hwc {
                img[(y * side + self.x0) * c..(y * side + self.x1) * c].fill(0.0);
            } else {
                for ch in 0..c {
                    let row = (ch * side + y) * side;
                    img[row + self.x0..row + self.x1].fill(0.0);
                }
            }
        }
    }
}

/// Writes an augmented copy of `img` (`[side, side, 3]` HWC, any square side; CIFAR's is 32)
/// into `out` (same size).
pub fn augment_into<R: Rng>(img: &[u8], out: &mut [u8], rng: &mut R) {
    let flip = rng.gen_bool(0.5);
    let dy = rng.gen_range(0..=2 * PAD) as isize - PAD as isize;
    let dx = rng.gen_range(0..=2 * PAD) as isize - PAD as isize;
    crop_flip(img, out, dy, dx, flip);
}

/// Output pixel (y, x) = input pixel (y + dy, x' + dx) of the (optionally flipped) image, zero
/// outside the image. `img` and `out` are `[side, side, 3]` HWC (the side read off the length).
pub fn crop_flip(img: &[u8], out: &mut [u8], dy: isize, dx: isize, flip: bool) {
    debug_assert_eq!(img.len(), out.len());
    let s = ((img.len() / 3) as f64).sqrt().round() as isize;
    debug_assert_eq!((s * s * 3) as usize, img.len());
    for y in 0..s {
        for x in 0..s {
            let (sy, sx) = (y + dy, x + dx);
            let o = ((y * s + x) * 3) as usize;
            if sy < 0 || sy >= s || sx < 0 || sx >= s {
                out[o..o + 3].fill(0);
            } else {
                let sx = if flip { s - 1 - sx } else { sx };
                let i = ((sy * s + sx) * 3) as usize;
                out[o..o + 3].copy_from_slice(&img[i..i + 3]);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::data::{IMAGE_BYTES, SIDE};
    use rand::SeedableRng;

    fn ramp() -> Vec<u8> {
        (0..IMAGE_BYTES)
            .map(|i| ((i / 3) % 251) as u8 + 1)
            .collect()
    }

    #[test]
    fn identity_shift_keeps_the_image() {
        let img = ramp();
        let mut out = vec![0; IMAGE_BYTES];
        crop_flip(&img, &mut out, 0, 0, false);
        assert_eq!(out, img);
    }

    #[test]
    fn shift_pads_with_zeros_and_keeps_shape() {
        let img = ramp();
        let mut out = vec![9; IMAGE_BYTES];
        crop_flip(&img, &mut out, -4, 0, false); // content moves down 4 rows
        assert!(out[..4 * SIDE * 3].iter().all(|&v| v == 0));
        assert_eq!(&out[4 * SIDE * 3..4 * SIDE * 3 + 3], &img[0..3]);
        assert_eq!(out.len(), IMAGE_BYTES);
    }

    #[test]
    fn flip_mirrors_columns() {
        let img = ramp();
        let mut out = vec![0; IMAGE_BYTES];
        crop_flip(&img, &mut out, 0, 0, true);
        assert_eq!(&out[0..3], &img[(SIDE - 1) * 3..SIDE * 3]);
    }

    #[test]
    fn cutout_box_is_clipped_at_the_border_as_the_official_code() {
        // official: y1 = clip(y - L // 2, 0, h), y2 = clip(y + L // 2, 0, h)
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(3);
        for _ in 0..200 {
            let b = CutoutBox::draw(32, 16, &mut rng);
            assert!(b.y0 <= b.y1 && b.y1 <= 32 && b.x0 <= b.x1 && b.x1 <= 32);
            // a centre at y covers y-8..y+8 clipped: 8..=16 rows
            assert!((8..=16).contains(&(b.y1 - b.y0)) && (8..=16).contains(&(b.x1 - b.x0)));
        }
        // the centre is the only draw: a 2x2 square of a 4x4 image centred at (0, 3)
        let b = CutoutBox {
            y0: 0,
            y1: 1,
            x0: 2,
            x1: 4,
        };
        let mut hwc = vec![1f32; 4 * 4 * 2];
        b.zero(&mut hwc, 4, 2, true);
        let zeros: Vec<usize> = (0..hwc.len()).filter(|&i| hwc[i] == 0.0).collect();
        assert_eq!(zeros, vec![4, 5, 6, 7]); // pixels (0,2) and (0,3), both channels
        let mut chw = vec![1f32; 2 * 4 * 4];
        b.zero(&mut chw, 4, 2, false);
        let zeros: Vec<usize> = (0..chw.len()).filter(|&i| chw[i] == 0.0).collect();
        assert_eq!(zeros, vec![2, 3, 18, 19]);
    }

    #[test]
    fn seeded_augmentation_is_deterministic() {
        let img = ramp();
        let (mut a, mut b) = (vec![0; IMAGE_BYTES], vec![0; IMAGE_BYTES]);
        augment_into(&img, &mut a, &mut rand_chacha::ChaCha8Rng::seed_from_u64(5));
        augment_into(&img, &mut b, &mut rand_chacha::ChaCha8Rng::seed_from_u64(5));
        assert_eq!(a, b);
    }
}
