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

/// Loads the `split` part of a data root (`ROOT/train`, `ROOT/test`, or a CIFAR binary folder),
/// prepared for the models' architecture (`prep`).
pub fn load_split(root: &Path, split: &str, prep: Preprocess, quiet: bool) -> Result<ImageSet> {
    let dir = split_dir(root, split);
    let t0 = std::time::Instant::now();
    let set =
        ImageSet::load(&dir, split, prep).with_context(|| format!("loading {split} images"))?;
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
