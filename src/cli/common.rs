//! Options and helpers shared by subcommands: backend, data location, progress printing.

use std::path::{Path, PathBuf};

use anyhow::{anyhow, Context, Result};
use burn::tensor::Device;
use clap::Args;
use indicatif::{ProgressBar, ProgressStyle};

use zipmerge::backend::{self, Backend};
use zipmerge::checkpoint;
use zipmerge::data::{split_dir, ImageSet, Preprocess};

/// `--backend`, `--device`.
#[derive(Args, Debug, Clone)]
pub struct BackendArgs {
    /// Compute backend: flex (CPU, default), ndarray (CPU, deprecated) or wgpu (GPU).
    #[arg(long, default_value = "flex")]
    pub backend: Backend,
    /// wgpu adapter: a discrete-GPU number, or `cpu` for a software adapter (lavapipe).
    #[arg(long)]
    pub device: Option<String>,
}

impl BackendArgs {
    /// Builds the device, printing the wgpu adapter choice once.
    pub fn device(&self, quiet: bool) -> Result<Device> {
        let d = backend::device(self.backend, self.device.as_deref()).map_err(|e| anyhow!(e))?;
        #[cfg(feature = "wgpu")]
        if self.backend == Backend::Wgpu && !quiet {
            let adapters = backend::wgpu_adapters();
            eprintln!(
                "backend: wgpu, device {} ({} adapter(s): {})",
                self.device
                    .as_deref()
                    .unwrap_or("default (high-performance preferred)"),
                adapters.len(),
                adapters.join("; ")
            );
        }
        Ok(d)
    }
}

/// The data root: `--data`, else `$ZIPMERGE_DATA`, else the embedded sample.
pub fn data_root(arg: Option<&Path>) -> PathBuf {
    if let Some(p) = arg {
        return p.to_path_buf();
    }
    if let Ok(p) = std::env::var("ZIPMERGE_DATA") {
        return PathBuf::from(p);
    }
    PathBuf::from("datasets/cifar10-sample")
}

/// The image preprocessing of the model folder `model` (from its manifest's architecture).
pub fn preprocess_of(model: &Path) -> Result<Preprocess> {
    let m = checkpoint::read_manifest(&checkpoint::model_dir(model))
        .with_context(|| format!("reading model {}", model.display()))?;
    Ok(m.net_config().preprocess())
}

/// Default in-memory pixel cache per loaded split, GiB (`ZIPMERGE_CACHE_GIB` overrides).
pub const DEFAULT_CACHE_GIB: f64 = 4.0;

/// How many images of `prep`'s stored size fit the pixel cache budget (`ZIPMERGE_CACHE_GIB`,
/// default [`DEFAULT_CACHE_GIB`]): CIFAR (3 KiB per image) ~1.4M images, ImageNet evaluation
/// (147 KiB) ~28,500, ImageNet training (192 KiB, stored at 256x256) ~21,800.
pub fn max_cached_images(prep: Preprocess, split: &str) -> Result<usize> {
    let gib = match std::env::var("ZIPMERGE_CACHE_GIB") {
        Ok(v) => v
            .parse::<f64>()
            .ok()
            .filter(|g| *g > 0.0)
            .ok_or_else(|| anyhow!("ZIPMERGE_CACHE_GIB=`{v}`: expected a positive number"))?,
        Err(_) => DEFAULT_CACHE_GIB,
    };
    let side = prep.stored_side(split == "train");
    Ok((gib * (1u64 << 30) as f64 / (side * side * 3) as f64) as usize)
}

/// Loads the `split` part of a data root (`ROOT/train`, `ROOT/test`, or a CIFAR binary folder),
/// prepared for the models' architecture (`prep`). Folders larger than the pixel cache budget
/// ([`max_cached_images`]) are subsampled (seeded) with a printed note.
pub fn load_split(root: &Path, split: &str, prep: Preprocess, quiet: bool) -> Result<ImageSet> {
    load_split_classes(root, split, prep, None, quiet)
}

/// [`load_split`] keeping only the images of `classes` (decoded only those).
pub fn load_split_classes(
    root: &Path,
    split: &str,
    prep: Preprocess,
    classes: Option<&[usize]>,
    quiet: bool,
) -> Result<ImageSet> {
    let dir = split_dir(root, split);
    let t0 = std::time::Instant::now();
    let max = max_cached_images(prep, split)?;
    let set = ImageSet::load_at_most(&dir, split, prep, max, classes)
        .with_context(|| format!("loading {split} images"))?;
    if set.len() == max.max(1) && max < usize::MAX {
        eprintln!(
            "note: {} holds more {split} images than the pixel cache allows; decoded a seeded \
             random subset of {max} (raise ZIPMERGE_CACHE_GIB, default {DEFAULT_CACHE_GIB})",
            dir.display()
        );
    }
    if !quiet {
        eprintln!(
            "loaded {} {split} images ({} classes) from {} in {:.1}s",
            set.len(),
            set.class_names.len(),
            dir.display(),
            t0.elapsed().as_secs_f64()
        );
    }
    Ok(set)
}

/// A progress bar (hidden when quiet).
pub fn bar(len: u64, msg: &str, quiet: bool) -> ProgressBar {
    if quiet {
        return ProgressBar::hidden();
    }
    let b = ProgressBar::new(len);
    b.set_style(
        ProgressStyle::with_template(
            "{msg:>12} [{bar:30}] {pos}/{len} {per_sec} eta {eta} {prefix}",
        )
        .expect("template")
        .progress_chars("=> "),
    );
    b.set_message(msg.to_string());
    b
}

/// The command line as typed, for manifests.
pub fn command_line() -> String {
    std::env::args().collect::<Vec<_>>().join(" ")
}
