//! Image preprocessing per architecture family.
//!
//! - **CIFAR** (ResNet-20, VGG-11; reference doc §2): 32x32 images as they are, CIFAR mean/std;
//!   training adds flip + pad-4 random crop ([`super::augment`]).
//! - **ImageNet** (ResNet-50; torchvision's recipe): evaluation and probe images are resized so
//!   the shorter side is 256 (bilinear with antialiasing), centre-cropped to 224x224 and
//!   normalised with the ImageNet mean/std. Training images are stored resized to 256 on the
//!   shorter side and centre-cropped to 256x256 (a fixed-size u8 cache); each step then applies
//!   `RandomResizedCrop(224, scale=(0.08, 1), ratio=(3/4, 4/3))` and a horizontal flip to that
//!   256x256 image. torchvision crops the full-resolution original instead; at the default scale
//!   range the difference is a slightly smaller crop field (the outer border beyond the centre
//!   square is never sampled).

use image::imageops;
use image::RgbImage;
use rand::Rng;
use serde::{Deserialize, Serialize};

/// CIFAR channel means (reference doc §2), in 0..1 units.
pub const CIFAR_MEAN: [f32; 3] = [125.307 / 255.0, 122.961 / 255.0, 113.8575 / 255.0];
/// CIFAR channel standard deviations (reference doc §2), in 0..1 units.
pub const CIFAR_STD: [f32; 3] = [51.5865 / 255.0, 50.847 / 255.0, 51.255 / 255.0];
/// ImageNet channel means (torchvision), in 0..1 units.
pub const IMAGENET_MEAN: [f32; 3] = [0.485, 0.456, 0.406];
/// ImageNet channel standard deviations (torchvision), in 0..1 units.
pub const IMAGENET_STD: [f32; 3] = [0.229, 0.224, 0.225];

/// Preprocessing family: decides the training augmentation and how training images are
/// stored.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Family {
    /// CIFAR: flip + pad-4 random crop for training (reference doc §2).
    #[default]
    Cifar,
    /// ImageNet: `RandomResizedCrop` + flip for training, resize + centre crop otherwise.
    #[serde(rename = "imagenet")]
    ImageNet,
}

/// How a decoded image becomes a network input: an optional resize of the shorter side
/// (bilinear, PIL-exact), a centre crop to `input_size`, then `(x / 255 - mean) / std` per
/// channel. The architecture gives the default ([`Preprocess::CIFAR`] or
/// [`Preprocess::IMAGENET`]); a model's manifest may carry its own (`zipmerge import --mean
/// --std --input-size --resize`).
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
pub struct Preprocess {
    /// Augmentation and storage family.
    pub family: Family,
    /// Channel means, 0..1 units (RGB).
    pub mean: [f32; 3],
    /// Channel standard deviations, 0..1 units (RGB), each > 0.
    pub std: [f32; 3],
    /// Side of the square image the network sees, pixels.
    pub input_size: usize,
    /// Shorter side the image is resized to before the centre crop, pixels; 0: no resize (every
    /// image must already be `input_size` square).
    pub resize: usize,
}

// Values are validated finite ([`Preprocess::validate`]), so equality is an equivalence.
impl Eq for Preprocess {}

/// Largest `input_size` / `resize` accepted, pixels.
pub const MAX_SIDE: usize = 4096;

impl Preprocess {
    /// 32x32 images as they are, CIFAR mean/std (reference doc §2).
    pub const CIFAR: Preprocess = Preprocess {
        family: Family::Cifar,
        mean: CIFAR_MEAN,
        std: CIFAR_STD,
        input_size: 32,
        resize: 0,
    };

    /// torchvision's ImageNet evaluation: resize 256, centre crop 224, ImageNet mean/std.
    pub const IMAGENET: Preprocess = Preprocess {
        family: Family::ImageNet,
        mean: IMAGENET_MEAN,
        std: IMAGENET_STD,
        input_size: 224,
        resize: 256,
    };

    /// Channel means, 0..1 units.
    pub fn mean(&self) -> [f32; 3] {
        self.mean
    }

    /// Channel standard deviations, 0..1 units.
    pub fn std(&self) -> [f32; 3] {
        self.std
    }

    /// Side of the images the network sees, pixels (`input_size`).
    pub fn side(&self) -> usize {
        self.input_size
    }

    /// Side of the stored (cached) images of a split, pixels: the network side, except
    /// ImageNet-family training images (the resize side, cropped per step).
    pub fn stored_side(&self, train: bool) -> usize {
        match (self.family, train) {
            (Family::ImageNet, true) => self.resize.max(self.input_size),
            _ => self.input_size,
        }
    }

    /// Checks the values: finite means, finite positive standard deviations, `input_size` in
    /// 1..=[`MAX_SIDE`], `resize` 0 or in `input_size..=MAX_SIDE`.
    ///
    /// # Errors
    /// A message naming the field and what was expected.
    pub fn validate(&self) -> Result<(), String> {
        if let Some(m) = self.mean.iter().find(|m| !m.is_finite()) {
            return Err(format!("mean {m} is not a finite number"));
        }
        if let Some(s) = self.std.iter().find(|s| !(s.is_finite() && **s > 0.0)) {
            return Err(format!("std {s} is not a finite number above 0"));
        }
        if !(1..=MAX_SIDE).contains(&self.input_size) {
            return Err(format!(
                "input_size {} is not in 1..={MAX_SIDE}",
                self.input_size
            ));
        }
        if self.resize != 0 && !(self.input_size..=MAX_SIDE).contains(&self.resize) {
            return Err(format!(
                "resize {} is neither 0 (no resize) nor in {}..={MAX_SIDE} (at least input_size)",
                self.resize, self.input_size
            ));
        }
        Ok(())
    }

    /// One line for messages and reports: `resize 256, centre crop 224, mean [..], std [..]`.
    pub fn describe(&self) -> String {
        let r = if self.resize == 0 {
            format!("{0}x{0} images as they are", self.input_size)
        } else {
            format!(
                "resize {} (shorter side, bilinear, PIL-exact), centre crop {}",
                self.resize, self.input_size
            )
        };
        format!("{r}, mean {:?}, std {:?}", self.mean, self.std)
    }

    /// Turns a decoded image into the stored `[side, side, 3]` u8 form
    /// ([`Preprocess::stored_side`]).
    ///
    /// # Errors
    /// A message when an image that is not resized is not `input_size` square.
    pub fn prepare(&self, img: RgbImage, train: bool) -> Result<Vec<u8>, String> {
        if self.resize == 0 {
            let s = self.input_size as u32;
            if img.width() != s || img.height() != s {
                return Err(format!(
                    "image is {}x{}, expected {s}x{s}",
                    img.width(),
                    img.height()
                ));
            }
            return Ok(img.into_raw());
        }
        let crop = self.stored_side(train) as u32;
        Ok(center_crop(&resize_shorter(&img, self.resize as u32), crop).into_raw())
    }
}

/// Resizes so the shorter side is `short` (torchvision `Resize(int)`: the longer side is
/// `int(short * long / shorter)`), bilinear with antialiasing, bit-exact with PIL
/// ([`super::resize::resize_bilinear`]).
pub fn resize_shorter(img: &RgbImage, short: u32) -> RgbImage {
    let (w, h) = img.dimensions();
    let (nw, nh) = if w <= h {
        (short, (short as u64 * h as u64 / w.max(1) as u64) as u32)
    } else {
        ((short as u64 * w as u64 / h.max(1) as u64) as u32, short)
    };
    super::resize::resize_bilinear(img, nw, nh)
}

/// Centre crop to `side x side` (torchvision `CenterCrop`: offsets `round((H - side) / 2)` with
/// Python's round, halves to even).
pub fn center_crop(img: &RgbImage, side: u32) -> RgbImage {
    let (w, h) = img.dimensions();
    let top = ((h.saturating_sub(side)) as f64 / 2.0).round_ties_even() as u32;
    let left = ((w.saturating_sub(side)) as f64 / 2.0).round_ties_even() as u32;
    imageops::crop_imm(img, left, top, side.min(w), side.min(h)).to_image()
}

/// torchvision `RandomResizedCrop(out, scale=(0.08, 1), ratio=(3/4, 4/3))` followed by
/// `RandomHorizontalFlip()`, on a `[side, side, 3]` u8 image; writes `[out, out, 3]` into `dst`.
pub fn random_resized_crop_flip<R: Rng>(
    src: &[u8],
    side: usize,
    out: usize,
    dst: &mut [u8],
    rng: &mut R,
) {
    let img = RgbImage::from_raw(side as u32, side as u32, src.to_vec())
        .expect("stored image has side*side*3 bytes");
    let area = (side * side) as f64;
    let (lr0, lr1) = ((3.0f64 / 4.0).ln(), (4.0f64 / 3.0).ln());
    let mut pick = None;
    for _ in 0..10 {
        let target = area * rng.gen_range(0.08..1.0);
        let ratio = rng.gen_range(lr0..lr1).exp();
        let w = (target * ratio).sqrt().round() as usize;
        let h = (target / ratio).sqrt().round() as usize;
        if w > 0 && h > 0 && w <= side && h <= side {
            let top = rng.gen_range(0..=side - h);
            let left = rng.gen_range(0..=side - w);
            pick = Some((left, top, w, h));
            break;
        }
    }
    // fallback (square image): the whole image, as torchvision's central crop at ratio 1
    let (left, top, w, h) = pick.unwrap_or((0, 0, side, side));
    let crop = imageops::crop_imm(&img, left as u32, top as u32, w as u32, h as u32).to_image();
    let mut r = super::resize::resize_bilinear(&crop, out as u32, out as u32);
    if rng.gen_bool(0.5) {
        imageops::flip_horizontal_in_place(&mut r);
    }
    dst.copy_from_slice(r.as_raw());
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::SeedableRng;

    #[test]
    fn imagenet_eval_is_resize_256_then_centre_224() {
        // 300x200 image whose left half is black, right half white: resize -> 384x256,
        // crop offsets left = 80, top = 0; the crop's columns 0..112 come from x 80..192 of the
        // resized image, i.e. the black half (x < 192).
        let img = RgbImage::from_fn(300, 200, |x, _| {
            if x < 150 {
                image::Rgb([0, 0, 0])
            } else {
                image::Rgb([255, 255, 255])
            }
        });
        let r = resize_shorter(&img, 256);
        assert_eq!(r.dimensions(), (384, 256));
        // torchvision rounds the crop offset half to even: (385 - 224) / 2 = 80.5 -> 80
        let odd = RgbImage::from_fn(385, 224, |x, _| image::Rgb([x as u8, 0, 0]));
        assert_eq!(center_crop(&odd, 224).get_pixel(0, 0)[0], 80);
        let v = Preprocess::IMAGENET.prepare(img, false).unwrap();
        assert_eq!(v.len(), 224 * 224 * 3);
        let px = |x: usize, y: usize| v[(y * 224 + x) * 3];
        assert_eq!(px(0, 100), 0);
        assert_eq!(px(100, 100), 0);
        assert_eq!(px(120, 100), 255);
        assert_eq!(px(223, 0), 255);
        // training storage keeps a 256x256 centre square
        let t = Preprocess::IMAGENET
            .prepare(RgbImage::new(256, 512), true)
            .unwrap();
        assert_eq!(t.len(), 256 * 256 * 3);
        // CIFAR images are never resized
        assert!(Preprocess::CIFAR
            .prepare(RgbImage::new(8, 8), false)
            .unwrap_err()
            .contains("expected 32x32"));
    }

    #[test]
    fn random_resized_crop_is_seeded_and_sized() {
        let src: Vec<u8> = (0..256 * 256 * 3).map(|i| (i % 251) as u8).collect();
        let run = |seed| {
            let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(seed);
            let mut dst = vec![0u8; 224 * 224 * 3];
            random_resized_crop_flip(&src, 256, 224, &mut dst, &mut rng);
            dst
        };
        assert_eq!(run(3), run(3));
        assert_ne!(run(3), run(4));
    }
}
