//! Image data: ImageFolder and CIFAR binary readers (decoded in parallel, cached as u8),
//! class subsets ("tasks"), normalisation and training augmentation.

pub mod augment;
pub mod cifar_bin;
pub mod imagefolder;
pub mod tasks;

use std::path::{Path, PathBuf};

use burn::tensor::{Device, Tensor, TensorData};

use crate::error::DataError;

/// Side of a CIFAR image in pixels.
pub const SIDE: usize = 32;
/// Bytes of one image (`[32, 32, 3]`, HWC, u8).
pub const IMAGE_BYTES: usize = SIDE * SIDE * 3;
/// CIFAR channel means (reference doc §2), in 0..1 units.
pub const CIFAR_MEAN: [f32; 3] = [125.307 / 255.0, 122.961 / 255.0, 113.8575 / 255.0];
/// CIFAR channel standard deviations (reference doc §2), in 0..1 units.
pub const CIFAR_STD: [f32; 3] = [51.5865 / 255.0, 50.847 / 255.0, 51.255 / 255.0];

/// A labelled image set held in memory as u8 pixels.
#[derive(Clone, Debug, Default)]
pub struct ImageSet {
    /// `N * 32 * 32 * 3` bytes, image-major, HWC.
    pub pixels: Vec<u8>,
    /// Label id of each image.
    pub labels: Vec<usize>,
    /// Class names in label order.
    pub class_names: Vec<String>,
    /// Where the images came from.
    pub source: String,
}

impl ImageSet {
    /// Number of images.
    pub fn len(&self) -> usize {
        self.labels.len()
    }

    /// True when there are no images.
    pub fn is_empty(&self) -> bool {
        self.labels.is_empty()
    }

    /// Pixels of image `i` (`[32, 32, 3]` HWC).
    pub fn image(&self, i: usize) -> &[u8] {
        &self.pixels[i * IMAGE_BYTES..(i + 1) * IMAGE_BYTES]
    }

    /// The images whose label is in `classes`, in their original order.
    pub fn filter_classes(&self, classes: &[usize]) -> ImageSet {
        let idx: Vec<usize> = (0..self.len())
            .filter(|&i| classes.contains(&self.labels[i]))
            .collect();
        self.subset(&idx)
    }

    /// The images at `idx`, in that order.
    pub fn subset(&self, idx: &[usize]) -> ImageSet {
        let mut pixels = Vec::with_capacity(idx.len() * IMAGE_BYTES);
        for &i in idx {
            pixels.extend_from_slice(self.image(i));
        }
        ImageSet {
            pixels,
            labels: idx.iter().map(|&i| self.labels[i]).collect(),
            class_names: self.class_names.clone(),
            source: self.source.clone(),
        }
    }

    /// Loads a folder: an ImageFolder tree (`<root>/<class>/*.jpg|png`) or a folder of CIFAR
    /// binary batches (`data_batch_*.bin`/`test_batch.bin`, or `train.bin`/`test.bin`). For the
    /// binary format `split` picks `train` or `test` files.
    ///
    /// # Errors
    /// [`DataError`] naming the folder or file when it is missing, empty or undecodable.
    pub fn load(path: &Path, split: &str) -> Result<ImageSet, DataError> {
        if !path.is_dir() {
            return Err(DataError::Io {
                path: path.display().to_string(),
                msg: "no such folder".into(),
            });
        }
        if cifar_bin::is_cifar_bin_dir(path) {
            cifar_bin::load_dir(path, split)
        } else {
            imagefolder::load(path)
        }
    }
}

/// Resolves `--data ROOT` plus a split (`train`/`test`): `ROOT/<split>` when that folder exists,
/// else ROOT itself (a CIFAR binary folder, or a plain ImageFolder).
pub fn split_dir(root: &Path, split: &str) -> PathBuf {
    let sub = root.join(split);
    if sub.is_dir() {
        sub
    } else {
        root.to_path_buf()
    }
}

/// Normalises a batch of u8 images into a tensor `[batch, 3, 32, 32]` (CHW, CIFAR mean/std).
pub fn to_tensor(images: &[&[u8]], device: &Device) -> Tensor<4> {
    let b = images.len();
    let mut out = vec![0f32; b * IMAGE_BYTES];
    for (n, img) in images.iter().enumerate() {
        let base = n * IMAGE_BYTES;
        for c in 0..3 {
            let (m, s) = (CIFAR_MEAN[c], CIFAR_STD[c]);
            for p in 0..SIDE * SIDE {
                out[base + c * SIDE * SIDE + p] = (img[p * 3 + c] as f32 / 255.0 - m) / s;
            }
        }
    }
    Tensor::from_data(TensorData::new(out, [b, 3, SIDE, SIDE]), device)
}
