//! The decoded image set every reader returns: CIFAR-sized RGB bytes in HWC order with labels
//! and class names (a leaf of `data/`: the readers fill it, `data/mod.rs` loads it).

use super::preprocess::Preprocess;

/// Side of a CIFAR image in pixels.
pub const SIDE: usize = 32;
/// Bytes of one CIFAR image (`[32, 32, 3]`, HWC, u8).
pub const IMAGE_BYTES: usize = SIDE * SIDE * 3;

/// A labelled image set held in memory as u8 pixels.
#[derive(Clone, Debug)]
pub struct ImageSet {
    /// `N * side * side * 3` bytes, image-major, HWC.
    pub pixels: Vec<u8>,
    /// Side of every stored image, pixels.
    pub side: usize,
    /// Preprocessing the images were stored with (and are normalised with).
    pub prep: Preprocess,
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

    /// Bytes of one stored image (`side * side * 3`).
    pub fn image_bytes(&self) -> usize {
        self.side * self.side * 3
    }

    /// Pixels of image `i` (`[side, side, 3]` HWC).
    pub fn image(&self, i: usize) -> &[u8] {
        let n = self.image_bytes();
        &self.pixels[i * n..(i + 1) * n]
    }

    /// The images whose label is in `classes`, in their original order.
    pub fn filter_classes(&self, classes: &[usize]) -> ImageSet {
        let idx: Vec<usize> = (0..self.len())
            .filter(|&i| classes.contains(&self.labels[i]))
            .collect();
        self.subset(&idx)
    }

    /// A seeded random subset of `n` images (all when there are fewer), in their original
    /// order (ChaCha8 shuffle with `seed`, truncated, sorted).
    pub fn seeded_subset(&self, n: usize, seed: u64) -> ImageSet {
        use rand::{seq::SliceRandom, SeedableRng};
        let mut idx: Vec<usize> = (0..self.len()).collect();
        idx.shuffle(&mut rand_chacha::ChaCha8Rng::seed_from_u64(seed));
        idx.truncate(n);
        idx.sort_unstable();
        self.subset(&idx)
    }

    /// The images at `idx`, in that order.
    pub fn subset(&self, idx: &[usize]) -> ImageSet {
        let mut pixels = Vec::with_capacity(idx.len() * self.image_bytes());
        for &i in idx {
            pixels.extend_from_slice(self.image(i));
        }
        ImageSet {
            pixels,
            side: self.side,
            prep: self.prep,
            labels: idx.iter().map(|&i| self.labels[i]).collect(),
            class_names: self.class_names.clone(),
            source: self.source.clone(),
        }
    }
}
