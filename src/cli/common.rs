//! Options and helpers shared by subcommands: backend, data location, progress printing.

use std::path::{Path, PathBuf};

use anyhow::{anyhow, Result};
use burn::tensor::Device;
use clap::Args;

use zipmerge::backend::{self, Backend};
use zipmerge::checkpoint;
use zipmerge::data::tasks::parse_tasks;
use zipmerge::error::{DataError, DataParam, MergeError, MergeParam};
use zipmerge::models::head::HeadChoice;
use zipmerge::models::Arch;
use zipmerge::progress::Observer;
use zipmerge::system::runner::Runner;

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
        MergeParam::Similarity => "--similarity",
        MergeParam::Corrections => "--repair/--refit/--similarity",
        MergeParam::ProbeImages => "--probe-images",
        MergeParam::BatchSize => "--batch-size",
        MergeParam::Recipe => "--recipe",
        MergeParam::Knobs => "--recipe (knobs)",
        MergeParam::Path => "--recipe (path)",
        MergeParam::Budget => "--budget",
        MergeParam::Population => "--population",
        MergeParam::Sigma => "--sigma",
        MergeParam::ValImages => "--val-images",
        MergeParam::SearchSpace => "--space",
        MergeParam::Repeat => "--repeat",
        MergeParam::Out => "--out",
        MergeParam::Resume => "--resume",
        MergeParam::Points => "--points",
        MergeParam::Probe => "--probe",
    }
}

/// A library merge error as the CLI reports it: an option's bad value ([`MergeError::Param`])
/// is a usage error (exit code 2) naming the option's flag; anything else is a runtime error
/// (exit code 1) with the library's message.
pub fn merge_error(e: MergeError) -> anyhow::Error {
    match e {
        MergeError::Param {
            param,
            value,
            expected,
        } => usage(format!("{} `{value}`: {expected}", flag_of(param))),
        e @ MergeError::TaskVectorOption { .. } => usage(e.to_string()),
        MergeError::Data(d @ DataError::Param { .. }) => data_error(d),
        e => e.into(),
    }
}

/// An experiment's error as the CLI reports it: a merge's bad option is a usage error naming
/// its flag ([`merge_error`]); anything else (a folder, an output file) keeps its message.
pub fn experiment_error(e: zipmerge::error::ExperimentError) -> anyhow::Error {
    match e {
        zipmerge::error::ExperimentError::Merge(m) => merge_error(m),
        e => e.into(),
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
                DataParam::Part => "--part",
            };
            usage(format!("{flag}: {e}"))
        }
        _ => usage(e.to_string()),
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

/// An image count that may be `all` (`None`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Count(pub Option<usize>);

/// clap value parser of an image count: a number >= `min`, or `all` (`Count(None)`).
pub fn count(
    min: usize,
) -> impl Fn(&str) -> std::result::Result<Count, String> + Clone + Send + Sync {
    move |s| match s.parse::<usize>() {
        _ if s == "all" => Ok(Count(None)),
        Ok(n) if n >= min => Ok(Count(Some(n))),
        _ => Err(format!("expected a number >= {min} or `all`, got `{s}`")),
    }
}

/// The first flag of `flags` (`(flag, given)` pairs) that was given: for refusing options
/// that have no effect.
pub fn first_given<'a>(flags: &[(&'a str, bool)]) -> Option<&'a str> {
    flags.iter().find_map(|(f, on)| on.then_some(*f))
}

/// clap value parser: an integer >= 1 (batch sizes, image counts, epochs).
pub fn positive(s: &str) -> std::result::Result<usize, String> {
    let n = s.parse::<usize>().ok().filter(|&n| n >= 1);
    n.ok_or_else(|| format!("expected an integer >= 1, got `{s}`"))
}

/// clap value parser: a finite number >= 0 (learning rate, weight decay, warm-up epochs).
pub fn non_negative(s: &str) -> std::result::Result<f64, String> {
    let v = finite(s).ok().filter(|&v| v >= 0.0);
    v.ok_or_else(|| format!("expected a finite number >= 0, got `{s}`"))
}

/// clap value parser: a finite number (no NaN or infinity).
pub fn finite(s: &str) -> std::result::Result<f64, String> {
    let v = s.parse::<f64>().ok().filter(|v| v.is_finite());
    v.ok_or_else(|| format!("expected a finite number, got `{s}`"))
}

/// Refuses `--out` before any work ([`checkpoint::check_out`]): an existing file, one of the
/// input models `inputs`, a folder that cannot be created; with `model`, also a folder holding
/// something other than a model folder ([`checkpoint::check_out_dir`]).
///
/// # Errors
/// [`Usage`] naming `--out`, or the checkpoint layer's error.
pub fn check_out(out: &Path, inputs: &[PathBuf], model: bool) -> Result<()> {
    checkpoint::check_out(out, inputs)
        .map_err(|r| usage(format!("--out {}: {r}", out.display())))?;
    if model {
        checkpoint::check_out_dir(out)?;
    }
    Ok(())
}

/// `--backend`, `--device`.
#[derive(Args, Debug, Clone)]
pub struct BackendArgs {
    /// Compute backend: flex (CPU, default), ndarray (CPU, deprecated), wgpu (GPU) or cuda
    /// (NVIDIA GPU; a build with `--features cuda`).
    #[arg(long, default_value = "flex")]
    pub backend: Backend,
    /// wgpu adapter: a discrete-GPU number, or `cpu` for a software adapter (lavapipe); cuda:
    /// the GPU number (default 0).
    #[arg(long)]
    pub device: Option<String>,
}

impl BackendArgs {
    /// Builds the device, reporting the wgpu adapter choice once.
    pub fn device(&self, obs: &mut dyn Observer) -> Result<Device> {
        let d = backend::device(self.backend, self.device.as_deref()).map_err(|e| {
            let device = self.device.as_ref().map(|d| format!(" --device {d}"));
            usage(format!(
                "--backend {}{}: {e}",
                self.backend,
                device.unwrap_or_default()
            ))
        })?;
        if let Some(line) = backend::describe(self.backend, self.device.as_deref()) {
            obs.info(&line);
        }
        Ok(d)
    }

    /// The device and the forward path on it: the CPU engine on the flex device unless the
    /// environment says `ZIPMERGE_ENGINE=burn` (read here, once, for side-by-side
    /// measurements; the library never reads it).
    pub fn runner(&self, obs: &mut dyn Observer) -> Result<Runner> {
        Ok(engine_choice(self.device(obs)?))
    }
}

/// The forward path on `device`: the CPU engine unless `ZIPMERGE_ENGINE=burn` (the only place
/// that reads it).
pub fn engine_choice(device: Device) -> Runner {
    let engine = std::env::var("ZIPMERGE_ENGINE").as_deref() != Ok("burn");
    Runner::new(device, engine)
}

/// The data root: `--data`, else `$ZIPMERGE_DATA`, else the embedded sample.
pub fn data_root(arg: Option<&Path>) -> PathBuf {
    let env = || std::env::var_os("ZIPMERGE_DATA").map(PathBuf::from);
    let root = arg.map(Path::to_path_buf).or_else(env);
    root.unwrap_or_else(|| zipmerge::util::shipped("datasets/cifar10-sample"))
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

/// The command line as typed, for manifests.
pub fn command_line() -> String {
    std::env::args().collect::<Vec<_>>().join(" ")
}

/// The long flags given on this command line (`--alpha 2` and `--alpha=2` both give
/// `--alpha`), for options whose presence matters beside a default (`merge --recipe`).
pub fn given_flags() -> std::collections::BTreeSet<String> {
    std::env::args()
        .skip(1)
        .filter(|a| a.starts_with("--") && a.len() > 2)
        .map(|a| a.split('=').next().unwrap_or(&a).to_string())
        .collect()
}

/// The output folder of an experiment run without `--out`: `<kind>-<YYYYMMDD-HHMMSS>` (UTC) in
/// the working directory, with `-2`, `-3`, ... appended while that name exists.
pub fn default_out(kind: &str) -> PathBuf {
    let secs = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    // 2026-12-06T09:33:44Z -> 20261206-093344
    let stamp: String = zipmerge::provenance::utc_date(secs)
        .chars()
        .filter(|c| c.is_ascii_digit() || *c == 'T')
        .map(|c| if c == 'T' { '-' } else { c })
        .collect();
    let base = format!("{kind}-{stamp}");
    let mut out = PathBuf::from(&base);
    let mut k = 2;
    while out.exists() {
        out = PathBuf::from(format!("{base}-{k}"));
        k += 1;
    }
    out
}

/// `--tasks`: `auto` (`None`: each model's or head's own classes) or a task list (`0,1,2;3,4`,
/// [`parse_tasks`]).
///
/// # Errors
/// A usage error (exit 2) naming `--tasks`.
pub fn tasks_option(t: &str) -> Result<Option<Vec<Vec<usize>>>> {
    match t {
        "auto" => Ok(None),
        t => Ok(Some(
            parse_tasks(t, checkpoint::MAX_LABELS).map_err(data_error)?,
        )),
    }
}

/// `--head linear | text | text:FILE` ([`HeadChoice::parse`]).
///
/// # Errors
/// A usage error (exit 2) naming `--head`.
pub fn parse_head(opt: &str) -> Result<HeadChoice> {
    HeadChoice::parse(opt).map_err(|e| usage(format!("--{e}")))
}
