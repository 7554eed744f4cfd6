//! The merge pipeline as one library call ([`run`]): load and check the endpoints, decode the
//! probe and BN-reset images, reset the endpoints' BN, collect statistics up to the stop,
//! match, rewrite, reset the merged BN, apply the post-merge corrections, evaluate. The CLI's
//! `merge` builds a [`MergePlan`] from its flags, calls [`run`] and prints the
//! [`MergeReport`]. Reference doc §1.1 gives the order of the steps.

use std::path::{Path, PathBuf};

use serde::Serialize;

use super::knobs::Knobs;
use super::{check_dual, Endpoints, Method};
use crate::collect::probe::Draws;
use crate::collect::ProbeOptions;
use crate::correct::Corrections;
use crate::error::{MergeError, MergeParam};
use crate::eval::Accuracy;
use crate::progress::{phase, Observer};
use crate::rewrite::path::DataFlowPath;
use crate::system::runner::Runner;
use crate::taskvec::{TaskVectorError, TaskVectorSettings};

pub use crate::collect::probe::{images, Batches};

/// How features are compared by ZipIt! and Permute ([`crate::matching::dual`]).
#[derive(Clone, Copy, Debug, PartialEq, Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case", deny_unknown_fields)]
pub enum Similarity {
    /// Correlation of the activations (the paper).
    Activation,
    /// Cosine of the producing filters.
    Weight,
    /// MuDSC's `(1 - lambda) * activation + lambda * weight`, lambda in [0, 1].
    Dual(f64),
}

impl Similarity {
    /// The similarity named `activation`, `weight` or `dual` (with weight share `lambda`).
    /// `lambda` is checked whatever the name, as callers that add dual rows later (Table 1's
    /// extended rows) take it from the same option.
    ///
    /// # Errors
    /// [`MergeError::Param`] for `lambda` outside `[0, 1]` (NaN included) or an unknown name.
    pub fn parse(name: &str, lambda: f64) -> Result<Self, MergeError> {
        super::check_dual_lambda(lambda)?;
        match name {
            "activation" => Ok(Similarity::Activation),
            "weight" => Ok(Similarity::Weight),
            "dual" => Ok(Similarity::Dual(lambda)),
            o => Err(MergeError::param(
                MergeParam::Similarity,
                o,
                "expected activation, weight or dual",
            )),
        }
    }

    /// The weight-similarity share lambda (0 for activations, 1 for weights).
    pub fn lambda(&self) -> f64 {
        match self {
            Similarity::Activation => 0.0,
            Similarity::Weight => 1.0,
            Similarity::Dual(l) => *l,
        }
    }

    /// Name as the report writes it (`activation`, `weight`, `dual`).
    pub fn name(&self) -> &'static str {
        match self {
            Similarity::Activation => "activation",
            Similarity::Weight => "weight",
            Similarity::Dual(_) => "dual",
        }
    }
}

/// Settings of one merge shared by `merge`, `sweep` and `reproduce`: method, probe and
/// BN-reset draws, corrections. [`MergeSettings::new`] gives the reference's defaults
/// (reference doc §2, §4.4).
#[derive(Clone, Debug, PartialEq, Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MergeSettings {
    /// Matching method.
    pub method: Method,
    /// Merge normalisation epsilon: `merge = P / (colsum(P) + eps)` (reference doc §3.1).
    pub merge_eps: f64,
    /// Feature similarity of ZipIt! and Permute.
    pub similarity: Similarity,
    /// Post-merge corrections (REPAIR, closed-form refit).
    pub corrections: Corrections,
    /// Probe images for the statistics (`None` = every image of the probe folder).
    pub probe_images: Option<usize>,
    /// Apply the training augmentation to the probe images (the reference does).
    pub probe_augment: bool,
    /// Images of the BN reset (`Some(0)` = no reset; `None` = every probe-folder image).
    pub bn_reset_images: Option<usize>,
    /// Reset the endpoints' BN before merging (the reference does).
    pub endpoint_bn_reset: bool,
    /// Reset BN after a Git Re-Basin merge too (the paper; one reference script does not:
    /// reference doc §3.5).
    pub rebasin_bn_reset: bool,
    /// Images per batch of statistics, BN reset and evaluation.
    pub batch_size: usize,
    /// Seed of the probe and BN-reset draws and their augmentation (the BN-reset draw uses
    /// `seed + 1`).
    pub seed: u64,
    /// Per-space and per-layer-group knobs ([`super::knobs`]; empty: the settings above
    /// apply to every space and layer).
    #[serde(default, skip_serializing_if = "Knobs::is_empty")]
    pub knobs: Knobs,
    /// A data-flow path through the Permute-aligned models and their merge
    /// ([`crate::rewrite::path`]); `None`: the merged network itself.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub path: Option<DataFlowPath>,
}

impl MergeSettings {
    /// The reference's settings for `method`: 1,000 augmented probe images, endpoint and merged
    /// BN reset on 1,000 images, batch 500, merge epsilon 1e-5, activation similarity, no
    /// corrections, seed 0.
    pub fn new(method: Method) -> Self {
        Self {
            method,
            merge_eps: 1e-5,
            similarity: Similarity::Activation,
            corrections: Corrections::default(),
            probe_images: Some(1000),
            probe_augment: true,
            bn_reset_images: Some(1000),
            endpoint_bn_reset: true,
            rebasin_bn_reset: true,
            batch_size: 500,
            seed: 0,
            knobs: Knobs::default(),
            path: None,
        }
    }

    /// Checks the settings that do not depend on the models.
    ///
    /// # Errors
    /// [`MergeError::Param`] naming the option: a merge epsilon that is not finite and >= 0, a
    /// batch size of 0, no probe image, a
    /// dual-space lambda outside [0, 1] or with a method that does not use it, a negative
    /// refit ridge.
    pub fn check(&self) -> Result<(), MergeError> {
        if !(self.merge_eps.is_finite() && self.merge_eps >= 0.0) {
            return Err(MergeError::param(
                MergeParam::MergeEps,
                self.merge_eps,
                "expected a finite number >= 0",
            ));
        }
        if self.batch_size == 0 {
            return Err(MergeError::param(
                MergeParam::BatchSize,
                0,
                "expected an integer >= 1",
            ));
        }
        if self.probe_images == Some(0) {
            return Err(MergeError::param(
                MergeParam::ProbeImages,
                0,
                "the statistics need at least one image",
            ));
        }
        if self.similarity != Similarity::Activation
            && !matches!(self.method, Method::Zipit { .. } | Method::Permute)
        {
            // name the option the user gave (--similarity), not the lambda it implies
            return Err(MergeError::param(
                MergeParam::Similarity,
                self.similarity.name(),
                format!(
                    "the {} similarity applies to zipit and permute, not {}",
                    self.similarity.name(),
                    self.method.label()
                ),
            ));
        }
        check_dual(&self.method, self.similarity.lambda())?;
        if self.path.is_some() && self.method != Method::Permute {
            return Err(MergeError::param(
                MergeParam::Path,
                self.method.label(),
                "a data-flow path runs through models aligned one-to-one: the method must be permute",
            ));
        }
        if self.path.is_some() && self.corrections.any() {
            return Err(MergeError::param(
                MergeParam::Corrections,
                self.corrections.label().trim_start_matches(" + "),
                "the corrections refit a merged network to its merge matrices; a data-flow path is not one",
            ));
        }
        self.corrections.check()
    }

    /// The probe draw (statistics).
    pub fn probe_options(&self) -> ProbeOptions {
        ProbeOptions {
            images: self.probe_images,
            batch_size: self.batch_size,
            augment: self.probe_augment,
            seed: self.seed,
        }
    }

    /// The BN-reset draw ([`ProbeOptions::bn_reset`]): augmented, seeded with `seed + 1`.
    pub fn bn_options(&self) -> ProbeOptions {
        ProbeOptions::bn_reset(self.bn_reset_images, self.batch_size, self.seed)
    }

    /// Whether a merge by `self.method` gets its BN reset.
    pub fn resets_merged(&self) -> bool {
        self.resets_merge_by(&self.method)
    }

    /// Whether a merge by `method` gets its BN reset: there are BN-reset images, and the method
    /// is not Git Re-Basin with `rebasin_bn_reset` off (reference doc §3.5).
    pub fn resets_merge_by(&self, method: &Method) -> bool {
        self.bn_reset_images != Some(0)
            && (self.rebasin_bn_reset || !matches!(method, Method::GitRebasin { .. }))
    }

    /// The draws of this merge: the statistics' probe draw, and the BN-reset draw unless
    /// `bn_reset_images` is `Some(0)`.
    pub fn draws(&self) -> Draws {
        Draws {
            probe: Some(self.probe_options()),
            bn: ProbeOptions::bn_reset_draw(self.bn_reset_images, self.batch_size, self.seed),
        }
    }

    /// Resets the endpoints' BN on `bn` (when asked and there are images), as one phase.
    ///
    /// # Errors
    /// As [`Endpoints::reset_bn`].
    pub fn reset_endpoints(
        &self,
        ep: &mut Endpoints,
        bn: &Batches,
        device: &Runner,
        obs: &mut dyn Observer,
    ) -> Result<bool, MergeError> {
        if !self.endpoint_bn_reset || bn.is_empty() {
            return Ok(false);
        }
        let total = (images(bn) * ep.n()) as u64;
        phase(obs, "endpoint BN", total, |p| ep.reset_bn(bn, device, p))?;
        Ok(true)
    }
}

/// Evaluation of the merged model.
#[derive(Clone, Debug, PartialEq, Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EvalPlan {
    /// Data root whose `test` split is evaluated ([`crate::data::split_dir`]).
    pub root: PathBuf,
    /// Class ids of each task (`None`: each source model's classes).
    pub tasks: Option<Vec<Vec<usize>>>,
}

/// The evaluation of a merge of `ep`, loaded and checked before the long steps: the tasks
/// (the plan's, else each endpoint's classes) and the test split with the images it scores
/// (`None` without evaluation). Shared by [`run`] and the task-vector merge.
pub(crate) struct Evaluation {
    tasks: Vec<Vec<usize>>,
    test: Option<(crate::data::ImageSet, usize)>,
}

impl Evaluation {
    /// Loads the test split of `eval` and checks it against `ep`'s heads and the tasks.
    ///
    /// # Errors
    /// Data errors naming the folder; [`MergeError::Data`] when a task has no test image.
    pub(crate) fn load(
        eval: Option<&EvalPlan>,
        ep: &Endpoints,
        cache_gib: f64,
        obs: &mut dyn Observer,
    ) -> Result<Self, MergeError> {
        let tasks = eval
            .and_then(|e| e.tasks.clone())
            .unwrap_or_else(|| ep.tasks());
        let test = match eval {
            None => None,
            Some(e) => {
                let prep = ep.prep();
                let test = crate::data::load_split(&e.root, "test", prep, cache_gib, None, obs)?;
                let n = crate::eval::runner::check_evaluation(&ep.heads(), &test, &tasks)?;
                Some((test, n))
            }
        };
        Ok(Self { tasks, test })
    }

    /// Joint / per-task accuracy of `sys` as one `eval` phase; `None` without evaluation.
    pub(crate) fn run(
        &self,
        sys: crate::system::System,
        batch_size: usize,
        device: &Runner,
        obs: &mut dyn Observer,
    ) -> Option<Accuracy> {
        let (test, n) = self.test.as_ref()?;
        Some(phase(obs, "eval", *n as u64, |p| {
            crate::eval::runner::evaluate(&[sys], test, &self.tasks, batch_size, device, p)
        }))
    }
}

/// Everything one merge needs ([`crate::ops::merge::run`]).
#[derive(Clone, Debug)]
pub struct MergePlan {
    /// Source model folders (N >= 2).
    pub models: Vec<PathBuf>,
    /// Stop: `7/20`, `layer2`, `full`, ... ([`crate::models::MergeSpec::stop`]).
    pub stop: String,
    /// Method, draws, corrections.
    pub settings: MergeSettings,
    /// Probe folder (an ImageFolder of both tasks' classes; labels unused).
    pub probe_dir: PathBuf,
    /// Evaluation after the merge (none: skipped).
    pub eval: Option<EvalPlan>,
    /// Pixel cache per folder, GiB: folders holding more images are subsampled (seeded;
    /// [`crate::data::images_in_cache`]).
    pub cache_gib: f64,
    /// Compute device.
    pub device: Runner,
    /// Backend name for the provenance (`flex`, `wgpu`, ...).
    pub backend: String,
    /// The command that asked for the merge, for the provenance.
    pub command: String,
}

impl MergePlan {
    /// A plan merging `models` fully with `method` at the reference's settings, probing
    /// `data_root`'s train split and evaluating on its test split, on the CPU.
    pub fn new(models: &[PathBuf], method: Method, data_root: &Path) -> Self {
        Self {
            models: models.to_vec(),
            stop: "full".into(),
            settings: MergeSettings::new(method),
            probe_dir: crate::data::split_dir(data_root, "train"),
            eval: Some(EvalPlan {
                root: data_root.to_path_buf(),
                tasks: None,
            }),
            cache_gib: crate::data::DEFAULT_CACHE_GIB,
            device: Runner::cpu(),
            backend: "flex".into(),
            command: String::new(),
        }
    }
}

/// Everything one task-vector merge needs.
#[derive(Clone, Debug)]
pub struct TaskVectorPlan {
    /// The base model folder every fine-tune starts from.
    pub base: PathBuf,
    /// The fine-tuned model folders (N >= 2).
    pub models: Vec<PathBuf>,
    /// Method, lambda, weights, seed.
    pub settings: TaskVectorSettings,
    /// Images of the merged model's BN reset (`Some(0)`: none, the base's statistics are kept;
    /// `None`: every probe-folder image).
    pub bn_reset_images: Option<usize>,
    /// Images per batch of the BN reset and the evaluation.
    pub batch_size: usize,
    /// Seed of the BN-reset draw.
    pub seed: u64,
    /// Folder of the BN-reset images (labels unused).
    pub probe_dir: PathBuf,
    /// Evaluation after the merge (none: skipped).
    pub eval: Option<EvalPlan>,
    /// Pixel cache per folder, GiB.
    pub cache_gib: f64,
    /// Device of the BN reset and evaluation.
    pub device: Runner,
    /// Backend name, for the report.
    pub backend: String,
    /// The command line, for the report.
    pub command: String,
}

/// A [`TaskVectorError`] as a merge error: options name their flag, a tensor mismatch names
/// the fine-tune's folder (`models`, in the order the error's index counts).
pub(crate) fn tv_error(e: TaskVectorError, models: &[PathBuf]) -> MergeError {
    match e {
        TaskVectorError::Option {
            option,
            value,
            expected,
        } => MergeError::TaskVectorOption {
            option,
            value,
            expected,
        },
        TaskVectorError::NotAFineTune { model, tensor, msg } => MergeError::Endpoint {
            model: models[model].display().to_string(),
            msg: format!("is not a fine-tune of the base: tensor `{tensor}` {msg}"),
        },
        TaskVectorError::NoModels => MergeError::param(
            MergeParam::Models,
            0,
            "a task-vector merge needs fine-tunes",
        ),
    }
}
