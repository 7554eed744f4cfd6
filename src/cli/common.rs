//! Options and helpers shared by subcommands: backend, data location, progress printing.

use std::path::{Path, PathBuf};

use anyhow::{anyhow, Context, Result};
use burn::tensor::Device;
use clap::Args;

use zipmerge::backend::{self, Backend};
use zipmerge::checkpoint;
use zipmerge::data::{ImageSet, Preprocess};
use zipmerge::error::{BackendError, DataError, DataParam, MergeError, MergeParam};
use zipmerge::models::Arch;
use zipmerge::progress::Observer;

/// A usage error: a bad option value or a combination of options that cannot work. The CLI
/// exits with code 2 for it (1 for runtime errors), see README "Errors and exit codes".
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct Usage(pub String);

/// A [`Usage`] error as an `anyhow` error.
pub fn usage(msg: impl Into<String>) -> anyhow::Error {
    Usage(msg.into()).into()
}

/// The flag of a merge option a library error names ([`MergeParam`]): the library names
/// options, the CLI names its flags.
pub fn flag_of(p: MergeParam) -> &'static str {
    match p {
        MergeParam::Method => "--method",
        MergeParam::MergeEps => "--merge-eps",
        MergeParam::CcaReg => "--cca-reg",
        MergeParam::Models => "--model",
        MergeParam::Stop => "--stop",
        MergeParam::Alpha => "--alpha",
        MergeParam::Beta => "--beta",
        MergeParam::RefitRidge => "--refit-ridge",
        MergeParam::DualLambda => "--dual-lambda",
        MergeParam::ProbeImages => "--probe-images",
        MergeParam::BatchSize => "--batch-size",
    }
}

/// A library merge error as the CLI reports it: an option's bad value ([`MergeError::Param`])
/// is a usage error (exit code 2) naming the option's flag; anything else is a runtime error
/// (exit code 1) with the library's message.
pub fn merge_error(e: MergeError) -> anyhow::Error {
    match &e {
        MergeError::Param {
            param,
            value,
            expected,
        } => usage(format!("{} `{value}`: {expected}", flag_of(*param))),
        _ => e.into(),
    }
}

/// A library data error as the CLI reports it: an option's bad value ([`DataError::Param`]) is a
/// usage error (exit code 2) naming the option's flag; anything else keeps its message.
pub fn data_error(e: DataError) -> anyhow::Error {
    match &e {
        DataError::Param { param, .. } => {
            let flag = match param {
                DataParam::Tasks => "--tasks",
                DataParam::Split => "--split",
            };
            usage(format!("{flag}: {e}"))
        }
        _ => usage(e.to_string()),
    }
}

/// Marks an error as a usage error (exit code 2), keeping its message.
pub trait UsageExt<T> {
    /// `Err(e)` becomes `Err(Usage(e.to_string()))`.
    fn usage(self) -> Result<T>;
}

impl<T, E: std::fmt::Display> UsageExt<T> for std::result::Result<T, E> {
    fn usage(self) -> Result<T> {
        self.map_err(|e| usage(e.to_string()))
    }
}

/// clap value parser of `--arch`: the registered architectures ([`Arch::ALL`]), listed in
/// `--help` as the possible values.
pub fn arch_parser() -> impl clap::builder::TypedValueParser<Value = Arch> {
    use clap::builder::TypedValueParser;
    let names: Vec<&'static str> = Arch::ALL.iter().map(|a| a.def().name()).collect();
    clap::builder::PossibleValuesParser::new(names)
        .map(|s| s.parse::<Arch>().expect("a registered name"))
}

/// clap value parser: an integer >= 1 (batch sizes, image counts, epochs).
pub fn positive(s: &str) -> std::result::Result<usize, String> {
    match s.parse::<usize>() {
        Ok(0) => Err("expected an integer >= 1, got 0".into()),
        Ok(n) => Ok(n),
        Err(_) => Err(format!("expected an integer >= 1, got `{s}`")),
    }
}

/// clap value parser: a finite number >= 0 (learning rate, weight decay, warm-up epochs).
pub fn non_negative(s: &str) -> std::result::Result<f64, String> {
    match s.parse::<f64>() {
        Ok(v) if v.is_finite() && v >= 0.0 => Ok(v),
        _ => Err(format!("expected a finite number >= 0, got `{s}`")),
    }
}

/// clap value parser: a finite number (no NaN or infinity).
pub fn finite(s: &str) -> std::result::Result<f64, String> {
    match s.parse::<f64>() {
        Ok(v) if v.is_finite() => Ok(v),
        _ => Err(format!("expected a finite number, got `{s}`")),
    }
}

/// Refuses an output folder that is one of the input model folders (it would silently replace
/// an input) or an existing non-folder.
///
/// # Errors
/// [`Usage`] naming `--out`.
pub fn check_out_not_input(out: &Path, inputs: &[PathBuf]) -> Result<()> {
    let canon = |p: &Path| std::fs::canonicalize(p).ok();
    if let Some(o) = canon(out) {
        for m in inputs {
            if canon(&checkpoint::model_dir(m)).is_some_and(|c| c == o) {
                return Err(usage(format!(
                    "--out {}: is the input model {}; choose another folder (an input is never replaced)",
                    out.display(),
                    m.display()
                )));
            }
        }
    }
    if out.exists() && !out.is_dir() {
        return Err(usage(format!(
            "--out {}: exists and is not a folder; choose another --out",
            out.display()
        )));
    }
    Ok(())
}

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
    /// Builds the device, reporting the wgpu adapter choice once.
    pub fn device(&self, obs: &mut dyn Observer) -> Result<Device> {
        let d = backend::device(self.backend, self.device.as_deref()).map_err(|e| {
            let device = self.device.as_deref().map(|d| format!("--device {d}"));
            let flag = match (&e, device) {
                (BackendError::NotBuilt { .. }, _) | (BackendError::NoAdapter, None) => {
                    format!("--backend {}", self.backend)
                }
                (BackendError::NoAdapter, Some(d)) => format!("--backend {} {d}", self.backend),
                (_, d) => d.unwrap_or_default(),
            };
            usage(format!("{flag}: {e}"))
        })?;
        #[cfg(feature = "wgpu")]
        if self.backend == Backend::Wgpu {
            let adapters = backend::wgpu_adapters();
            obs.info(&format!(
                "backend: wgpu, device {} ({} adapter(s): {})",
                self.device
                    .as_deref()
                    .unwrap_or("default (high-performance preferred)"),
                adapters.len(),
                adapters.join("; ")
            ));
        }
        #[cfg(not(feature = "wgpu"))]
        let _ = obs;
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

/// The pixel cache per loaded split, GiB: `ZIPMERGE_CACHE_GIB`, else
/// [`zipmerge::data::DEFAULT_CACHE_GIB`].
pub fn cache_gib() -> Result<f64> {
    match std::env::var("ZIPMERGE_CACHE_GIB") {
        Ok(v) => v
            .parse::<f64>()
            .ok()
            .filter(|g| *g > 0.0)
            .ok_or_else(|| anyhow!("ZIPMERGE_CACHE_GIB=`{v}`: expected a positive number")),
        Err(_) => Ok(zipmerge::data::DEFAULT_CACHE_GIB),
    }
}

/// How many images of `prep`'s stored size fit the pixel cache ([`cache_gib`]).
pub fn max_cached_images(prep: Preprocess, split: &str) -> Result<usize> {
    Ok(zipmerge::data::images_in_cache(
        prep,
        split == "train",
        cache_gib()?,
    ))
}

/// Loads the `split` part of a data root (`ROOT/train`, `ROOT/test`, or a CIFAR binary folder),
/// prepared for the models' architecture (`prep`). Folders larger than the pixel cache budget
/// ([`max_cached_images`]) are subsampled (seeded) with a printed note.
pub fn load_split(
    root: &Path,
    split: &str,
    prep: Preprocess,
    obs: &mut dyn Observer,
) -> Result<ImageSet> {
    load_split_classes(root, split, prep, None, obs)
}

/// [`load_split`] keeping only the images of `classes` (decoded only those).
pub fn load_split_classes(
    root: &Path,
    split: &str,
    prep: Preprocess,
    classes: Option<&[usize]>,
    obs: &mut dyn Observer,
) -> Result<ImageSet> {
    let max = max_cached_images(prep, split)?;
    let l = zipmerge::data::load_split(root, split, prep, max, classes)
        .with_context(|| format!("loading {split} images"))?;
    l.report(split, max, obs);
    Ok(l.set)
}

/// The command line as typed, for manifests.
pub fn command_line() -> String {
    std::env::args().collect::<Vec<_>>().join(" ")
}

/// The class-embedding table a `--head text` uses when no file is given.
pub const DEFAULT_EMBEDDINGS: &str = "datasets/class-text-embeddings.json";

/// Parses `--head linear | text | text:FILE`: `None` for a linear head, the embedding table's
/// path for a text head.
///
/// # Errors
/// A usage error (exit 2) for anything else.
pub fn parse_head(opt: &str) -> Result<Option<PathBuf>> {
    match opt {
        "linear" => Ok(None),
        "text" => Ok(Some(PathBuf::from(DEFAULT_EMBEDDINGS))),
        o => match o.strip_prefix("text:") {
            Some(f) if !f.is_empty() => Ok(Some(PathBuf::from(f))),
            _ => Err(usage(format!(
                "--head `{o}`: expected linear, text or text:FILE"
            ))),
        },
    }
}

/// The head of `--head opt` for `classes` ([`parse_head`]; a text head reads its table).
///
/// # Errors
/// As [`parse_head`]; the table's errors for a text head.
pub fn build_head(opt: &str, classes: &[usize]) -> Result<zipmerge::models::head::HeadSpec> {
    Ok(match parse_head(opt)? {
        None => zipmerge::models::head::HeadSpec::Linear,
        Some(file) => zipmerge::models::head::text_head(&file, classes)?,
    })
}
