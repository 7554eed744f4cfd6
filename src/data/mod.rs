//! Image data: ImageFolder and CIFAR binary readers (decoded in parallel, cached as u8),
//! class subsets ("tasks"), normalisation and training augmentation.

pub mod augment;
pub mod cifar_bin;
pub mod imagefolder;
pub mod jpeg;
pub mod preprocess;
pub mod resize;
pub mod tasks;

use std::path::{Path, PathBuf};

use burn::tensor::{Device, Tensor, TensorData};

use crate::error::DataError;
pub use preprocess::{Family, Preprocess, CIFAR_MEAN, CIFAR_STD, IMAGENET_MEAN, IMAGENET_STD};
pub mod set;
pub use set::{ImageSet, IMAGE_BYTES, SIDE};

impl ImageSet {
    /// Loads a folder: an ImageFolder tree (`<root>/<class>/*.jpg|png`) or a folder of CIFAR
    /// binary batches (`data_batch_*.bin`/`test_batch.bin`, or `train.bin`/`test.bin`). For the
    /// binary format `split` picks `train` or `test` files. Images are stored as `prep` says
    /// for the split (`train` keeps ImageNet images at 256 for per-step random crops).
    ///
    /// # Errors
    /// [`DataError`] naming the folder or file when it is missing, empty or undecodable.
    pub fn load(path: &Path, split: &str, prep: Preprocess) -> Result<ImageSet, DataError> {
        Self::load_at_most(path, split, prep, usize::MAX, None)
    }

    /// Class names (label order) of a data folder, without decoding its images (a CIFAR binary
    /// folder is read).
    ///
    /// # Errors
    /// As [`ImageSet::load`].
    pub fn class_names_of(path: &Path, split: &str) -> Result<Vec<String>, DataError> {
        if cifar_bin::is_cifar_bin_dir(path) {
            Ok(cifar_bin::load_dir(path, split, Preprocess::CIFAR)?.class_names)
        } else {
            Ok(imagefolder::list(path)?.1)
        }
    }

    /// Like [`ImageSet::load`], keeping only the images of `classes` (all when `None`) and
    /// decoding at most `max_images` of an ImageFolder tree (a seeded subset when it holds more;
    /// [`imagefolder::load_at_most`]). CIFAR binary folders are read whole, then filtered.
    ///
    /// # Errors
    /// As [`ImageSet::load`].
    pub fn load_at_most(
        path: &Path,
        split: &str,
        prep: Preprocess,
        max_images: usize,
        classes: Option<&[usize]>,
    ) -> Result<ImageSet, DataError> {
        if !path.is_dir() {
            return Err(DataError::Io {
                path: path.display().to_string(),
                msg: "no such folder".into(),
            });
        }
        if cifar_bin::is_cifar_bin_dir(path) {
            cifar_bin::load_dir(path, split, prep).map(|s| match classes {
                Some(c) => s.filter_classes(c),
                None => s,
            })
        } else {
            imagefolder::load_at_most(path, prep, split == "train", max_images, classes)
        }
    }
}

/// A folder of which only some images were decoded: `set` holds the images at sorted
/// `positions` of the folder's listing of `total` images (see
/// [`crate::collect::probe_batches_sparse`]). Probe and BN-reset draws decode only what they
/// use (a 1,000-image probe of CIFAR-10's 50,000 training images decodes ~2,000).
#[derive(Clone, Debug)]
pub struct SparseSet {
    /// The decoded images, in position order.
    pub set: ImageSet,
    /// Images in the folder's listing.
    pub total: usize,
    /// Listing position of each image of `set` (sorted).
    pub positions: Vec<usize>,
}

impl SparseSet {
    /// Lists `path` (capped at `max_images` as [`ImageSet::load_at_most`]) and decodes only
    /// the positions `select(total)` returns. A CIFAR binary folder is read whole.
    ///
    /// # Errors
    /// As [`ImageSet::load`].
    pub fn load(
        path: &Path,
        split: &str,
        prep: Preprocess,
        max_images: usize,
        select: &dyn Fn(usize) -> Vec<usize>,
    ) -> Result<Self, DataError> {
        if !path.is_dir() || cifar_bin::is_cifar_bin_dir(path) {
            let set = ImageSet::load_at_most(path, split, prep, max_images, None)?;
            let total = set.len();
            return Ok(Self {
                set,
                total,
                positions: (0..total).collect(),
            });
        }
        let (items, class_names) = imagefolder::listing_at_most(path, max_images, None)?;
        let total = items.len();
        let mut positions = select(total);
        positions.retain(|&p| p < total);
        positions.sort_unstable();
        positions.dedup();
        let chosen: Vec<_> = positions.iter().map(|&p| items[p].clone()).collect();
        let set = imagefolder::decode_items(path, &chosen, class_names, prep, split == "train")?;
        Ok(Self {
            set,
            total,
            positions,
        })
    }
}

/// Default in-memory pixel cache per loaded split, GiB.
pub const DEFAULT_CACHE_GIB: f64 = 4.0;

/// How many images of `prep`'s stored size (training images when `train`) fit a pixel cache of
/// `gib` GiB: at 4 GiB, CIFAR (3 KiB per image) ~1.4M images, ImageNet evaluation (147 KiB)
/// ~28,500, ImageNet training (192 KiB, stored at 256x256) ~21,800.
pub fn images_in_cache(prep: Preprocess, train: bool, gib: f64) -> usize {
    let side = prep.stored_side(train);
    (gib * (1u64 << 30) as f64 / (side * side * 3) as f64) as usize
}

/// Loads the `split` part (`train`, `test`) of a data root ([`split_dir`]), keeping the images
/// of `classes` only (all when `None`) and decoding at most as many as a pixel cache of
/// `cache_gib` GiB holds ([`images_in_cache`], [`ImageSet::load_at_most`]). Reports on `obs`
/// what was loaded from where in how long, with a `note:` when the folder was capped.
///
/// # Errors
/// As [`ImageSet::load`].
pub fn load_split(
    root: &Path,
    split: &str,
    prep: Preprocess,
    cache_gib: f64,
    classes: Option<&[usize]>,
    obs: &mut dyn crate::progress::Observer,
) -> Result<ImageSet, DataError> {
    let dir = split_dir(root, split);
    let max = images_in_cache(prep, split == "train", cache_gib);
    let t0 = std::time::Instant::now();
    let set = ImageSet::load_at_most(&dir, split, prep, max, classes)?;
    if set.len() == max.max(1) && max < usize::MAX {
        obs.warn(&format!(
            "note: {} holds more {split} images than the pixel cache allows; decoded a seeded \
             random subset of {max} (a larger cache decodes more)",
            dir.display()
        ));
    }
    obs.info(&format!(
        "loaded {} {split} images ({} classes) from {} in {:.1}s",
        set.len(),
        set.class_names.len(),
        dir.display(),
        t0.elapsed().as_secs_f64()
    ));
    Ok(set)
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

/// Normalises a batch of square u8 HWC images (all the same size) into a tensor
/// `[batch, 3, side, side]` (CHW, `prep`'s mean/std). The side is read off the byte count.
pub fn to_tensor(images: &[&[u8]], prep: Preprocess, device: &Device) -> Tensor<4> {
    let b = images.len();
    let px = images.first().map_or(0, |i| i.len() / 3);
    let side = (px as f64).sqrt().round() as usize;
    let (mean, std) = (prep.mean(), prep.std());
    let mut out = vec![0f32; b * px * 3];
    for (n, img) in images.iter().enumerate() {
        let base = n * px * 3;
        for c in 0..3 {
            let (m, s) = (mean[c], std[c]);
            for p in 0..px {
                out[base + c * px + p] = (img[p * 3 + c] as f32 / 255.0 - m) / s;
            }
        }
    }
    Tensor::from_data(TensorData::new(out, [b, 3, side, side]), device)
}
