//! The flags of `zipmerge merge` (and the matcher, probe and data flags sweep, reproduce and
//! match share), with their conversion into the library's settings.

use std::path::{Path, PathBuf};

use anyhow::Result;
use clap::Args;

use zipmerge::experiments::Inputs;
use zipmerge::merge::{self, Method, Similarity};
use zipmerge::taskvec::TaskVectorSettings;

use super::common::{
    cache_gib, count, data_root, finite, merge_error, non_negative, positive, usage, BackendArgs,
    Count,
};
use super::printer::Printer;

/// The matcher's options, shared by merge, sweep, reproduce and match.
#[derive(Args, Debug, Clone)]
pub struct MatcherArgs {
    /// Matching method: zipit, permute, weight-avg, git-rebasin, cca (CCA Merge), return-a.
    #[arg(long, default_value = "zipit")]
    pub method: String,
    /// ZipIt! alpha (> 0): similarity of a merged feature is alpha * min of its parts'
    /// (default 0.3; zipit only).
    #[arg(long, value_parser = finite)]
    pub alpha: Option<f64>,
    /// ZipIt! beta in [0, 1]: budget of same-model merges per model, floor(Om/2) * beta
    /// (default 0.125; zipit only).
    #[arg(long, value_parser = finite)]
    pub beta: Option<f64>,
    /// CCA Merge's ridge, relative to the mean variance of each feature space (>= 0; default
    /// 1e-4; cca only).
    #[arg(long, value_parser = non_negative)]
    pub cca_reg: Option<f64>,
    /// Merge normalisation epsilon: merge = P / (colsum(P) + eps).
    #[arg(long, default_value_t = 1e-5, value_parser = non_negative)]
    pub merge_eps: f64,
}

/// The dual-space similarity's default lambda.
pub const DEFAULT_DUAL_LAMBDA: f64 = 0.5;

/// ZipIt!'s default alpha (reference doc §2).
pub const DEFAULT_ALPHA: f64 = 0.3;
/// ZipIt!'s default beta (reference doc §2).
pub const DEFAULT_BETA: f64 = 0.125;

impl MatcherArgs {
    /// The method of these flags; `seed` is Git Re-Basin's visiting order. A hyper-parameter
    /// given for a method that does not take it is a usage error naming both options (never
    /// silently ignored).
    pub fn method(&self, seed: u64) -> Result<Method> {
        let m = self.method.as_str();
        let given = [
            ("--alpha", self.alpha.is_some(), "zipit"),
            ("--beta", self.beta.is_some(), "zipit"),
            ("--cca-reg", self.cca_reg.is_some(), "cca"),
        ];
        if let Some((flag, _, takes)) = given.iter().find(|(_, on, takes)| *on && m != *takes) {
            return Err(usage(format!(
                "{flag} applies to --method {takes} only; it has no effect with --method {m}"
            )));
        }
        let (alpha, beta) = (
            self.alpha.unwrap_or(DEFAULT_ALPHA),
            self.beta.unwrap_or(DEFAULT_BETA),
        );
        let reg = self
            .cca_reg
            .unwrap_or(zipmerge::matching::cca::DEFAULT_CCA_REG);
        Method::parse(m, alpha, beta, seed)
            .and_then(|m| m.with_cca_reg(reg))
            .map_err(merge_error)
    }
}

/// Options shared by merge, sweep and reproduce: matcher, probe and BN-reset sets.
#[derive(Args, Debug, Clone)]
pub struct MergeSettings {
    #[command(flatten)]
    pub matcher: MatcherArgs,
    /// Probe folder (ImageFolder of both tasks' classes; labels unused); default: the train/
    /// folder of --data.
    #[arg(long)]
    pub probe: Option<PathBuf>,
    /// Probe images (`all` = every image).
    #[arg(long, default_value = "1000", value_parser = count(0))]
    pub probe_images: Count,
    /// Use the probe images without training augmentation (the reference augments).
    #[arg(long)]
    pub no_probe_augment: bool,
    /// Images for the BN reset (`0` = no reset; `all` = every probe-folder image).
    #[arg(long, default_value = "1000", value_parser = count(0))]
    pub bn_reset_images: Count,
    /// Skip the BN reset of the endpoints before merging (the reference resets them).
    #[arg(long)]
    pub no_endpoint_bn_reset: bool,
    /// Skip the BN reset after a Git Re-Basin merge, as one reference script does (its JAX
    /// models use LayerNorm; reference doc §3.5). By default every method's merge is reset, as
    /// the paper states.
    #[arg(long)]
    pub no_rebasin_bn_reset: bool,
    /// Feature similarity of zipit and permute: `activation` (correlation), `weight` (cosine
    /// of the producing filters) or `dual` (MuDSC: (1 - L) * activation + L * weight).
    #[arg(long, default_value = "activation", value_parser = ["activation", "weight", "dual"])]
    pub similarity: String,
    /// L of `--similarity dual`, in [0, 1] (default 0.5; with --similarity dual only).
    #[arg(long, value_parser = finite)]
    pub dual_lambda: Option<f64>,
    /// REPAIR after the merge (Jordan et al., ICLR 2023): reset each merged channel's mean and
    /// std on the probe images to the average of its source channels' (any method; in a partial
    /// zip, the merged trunk).
    #[arg(long)]
    pub repair: bool,
    /// Closed-form refit after the merge: `lstsq` refits every merged conv/linear by ridge
    /// least squares to its merge-matrix target from the merged network's own inputs on the
    /// probe images; `none` skips it.
    #[arg(long, default_value = "none", value_parser = ["none", "lstsq"])]
    pub refit: String,
    /// Relative ridge of `--refit lstsq` (>= 0; times the mean diagonal of the normal equations).
    #[arg(long, default_value_t = zipmerge::correct::refit::DEFAULT_REFIT_RIDGE, value_parser = non_negative)]
    pub refit_ridge: f64,
    /// Batch size of statistics, BN reset and evaluation.
    #[arg(long, default_value_t = 500, value_parser = positive)]
    pub batch_size: usize,
    /// Seed of probe/BN-reset subsets, augmentation and Git Re-Basin's visiting order.
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
}

impl MergeSettings {
    /// The library's settings of these flags, checked.
    pub fn library(&self) -> Result<merge::MergeSettings> {
        let method = self.matcher.method(self.seed)?;
        if self.dual_lambda.is_some() && self.similarity != "dual" {
            return Err(usage(format!(
                "--dual-lambda applies to --similarity dual only; it has no effect with --similarity {}",
                self.similarity
            )));
        }
        let lambda = self.dual_lambda.unwrap_or(DEFAULT_DUAL_LAMBDA);
        let similarity = Similarity::parse(&self.similarity, lambda).map_err(merge_error)?;
        let s = merge::MergeSettings {
            method,
            merge_eps: self.matcher.merge_eps,
            similarity,
            corrections: zipmerge::correct::Corrections {
                repair: self.repair,
                refit_ridge: (self.refit == "lstsq").then_some(self.refit_ridge),
            },
            probe_images: self.probe_images.0,
            probe_augment: !self.no_probe_augment,
            bn_reset_images: self.bn_reset_images.0,
            endpoint_bn_reset: !self.no_endpoint_bn_reset,
            rebasin_bn_reset: !self.no_rebasin_bn_reset,
            batch_size: self.batch_size,
            seed: self.seed,
            knobs: Default::default(),
            path: None,
        };
        s.check().map_err(merge_error)?;
        Ok(s)
    }

    /// The probe folder: `--probe`, else the train split of the data root `root`.
    pub fn probe_dir(&self, root: &Path) -> PathBuf {
        let train = || zipmerge::data::split_dir(root, "train");
        self.probe.clone().unwrap_or_else(train)
    }
}

/// Data and backend options shared by merge, sweep and reproduce.
#[derive(Args, Debug, Clone)]
pub struct DataArgs {
    /// Data root with train/ (probe and BN-reset images) and test/ (evaluation); default
    /// $ZIPMERGE_DATA, else datasets/cifar10-sample.
    #[arg(long)]
    pub data: Option<PathBuf>,
    /// Evaluate on this data root's test/ folder instead of --data's.
    #[arg(long)]
    pub eval_data: Option<PathBuf>,
    #[command(flatten)]
    pub backend: BackendArgs,
}

impl DataArgs {
    /// The run's inputs: the probe folder of `s`, the test root, the pixel cache, the device.
    pub fn inputs(&self, s: &MergeSettings, p: &mut Printer) -> Result<Inputs> {
        let root = data_root(self.data.as_deref());
        Ok(Inputs {
            probe_dir: s.probe_dir(&root),
            test_root: self.eval_data.clone().unwrap_or(root),
            cache_gib: cache_gib()?,
            device: self.backend.runner(p)?,
            backend: self.backend.backend.to_string(),
            command: super::common::command_line(),
        })
    }
}

/// The task-vector methods' options (`--method task-arithmetic | ties | dare-ties |
/// dare-linear`; reference doc §A).
#[derive(Args, Debug, Clone, Default)]
pub struct TaskVectorArgs {
    /// The base model the `--model` fine-tunes start from (task-vector methods only).
    #[arg(long)]
    pub base: Option<PathBuf>,
    /// Scale lambda of the merged task vector (>= 0; default 1).
    #[arg(long, value_parser = non_negative)]
    pub lambda: Option<f64>,
    /// Share of each task vector TIES keeps, by magnitude, in (0, 1] (ties default 0.2,
    /// dare-ties default 1: no trim after the drop).
    #[arg(long, value_parser = finite)]
    pub density: Option<f64>,
    /// DARE's drop probability, in [0, 1) (default 0.9 for dare-ties and dare-linear).
    #[arg(long, value_parser = finite)]
    pub drop: Option<f64>,
    /// Weight of each fine-tune's task vector, in --model order (default 1 each).
    #[arg(long, value_delimiter = ',', value_parser = finite)]
    pub weights: Option<Vec<f64>>,
    /// TIES's trim: `global` (over the whole model, the official code) or `per-tensor`
    /// (mergekit).
    #[arg(long, value_parser = ["global", "per-tensor"])]
    pub trim: Option<String>,
    /// Sign election: `mass` (sign of the sum, official) or `count` (sign of the sign sum).
    #[arg(long, value_parser = ["mass", "count"])]
    pub sign: Option<String>,
    /// Disjoint merge of the agreeing entries: `mean` (official), `sum` or `max`.
    #[arg(long, value_parser = ["mean", "sum", "max"])]
    pub disjoint: Option<String>,
}

/// The task-vector method names `--method` takes.
pub const TASK_VECTOR_METHODS: [&str; 4] = ["task-arithmetic", "ties", "dare-ties", "dare-linear"];

impl TaskVectorArgs {
    /// The flags given, for messages about options a method does not take.
    pub fn given(&self) -> Vec<&'static str> {
        let pairs: [(&'static str, bool); 8] = [
            ("--base", self.base.is_some()),
            ("--lambda", self.lambda.is_some()),
            ("--density", self.density.is_some()),
            ("--drop", self.drop.is_some()),
            ("--weights", self.weights.is_some()),
            ("--trim", self.trim.is_some()),
            ("--sign", self.sign.is_some()),
            ("--disjoint", self.disjoint.is_some()),
        ];
        pairs
            .iter()
            .filter(|(_, on)| *on)
            .map(|(f, _)| *f)
            .collect()
    }

    /// The library settings of `--method name` with these flags; refuses a flag the method
    /// does not take (never silently ignored).
    pub fn settings(&self, name: &str, seed: u64) -> Result<TaskVectorSettings> {
        use zipmerge::taskvec::{Disjoint, SignRule, TaskVectorMethod as M, Trim};
        let takes: &[&str] = match name {
            "task-arithmetic" => &["--base", "--lambda", "--weights"],
            "ties" => &[
                "--base",
                "--lambda",
                "--density",
                "--weights",
                "--trim",
                "--sign",
                "--disjoint",
            ],
            "dare-ties" => &[
                "--base",
                "--lambda",
                "--density",
                "--drop",
                "--weights",
                "--sign",
                "--disjoint",
            ],
            _ => &["--base", "--lambda", "--drop", "--weights"],
        };
        if let Some(f) = self.given().into_iter().find(|f| !takes.contains(f)) {
            return Err(usage(format!(
                "{f} has no effect with --method {name} (it takes {})",
                takes.join(", ")
            )));
        }
        let sign = match self.sign.as_deref() {
            Some("count") => SignRule::Count,
            _ => SignRule::Mass,
        };
        let disjoint = match self.disjoint.as_deref() {
            Some("sum") => Disjoint::Sum,
            Some("max") => Disjoint::Max,
            _ => Disjoint::Mean,
        };
        let method = match name {
            "task-arithmetic" => M::TaskArithmetic,
            "ties" => M::Ties {
                density: self.density.unwrap_or(0.2),
                trim: match self.trim.as_deref() {
                    Some("per-tensor") => Trim::PerTensor,
                    _ => Trim::Global,
                },
                sign,
                disjoint,
            },
            "dare-ties" => M::DareTies {
                drop: self.drop.unwrap_or(0.9),
                density: self.density.unwrap_or(1.0),
                sign,
                disjoint,
            },
            _ => M::DareLinear {
                drop: self.drop.unwrap_or(0.9),
            },
        };
        Ok(TaskVectorSettings {
            method,
            lambda: self.lambda.unwrap_or(1.0),
            weights: self.weights.clone(),
            seed,
            groups: vec![],
        })
    }
}

/// Arguments of `zipmerge merge`.
#[derive(Args, Debug)]
pub struct MergeArgs {
    /// Source model folders (N >= 2).
    #[arg(long = "model", required_unless_present = "recipe")]
    pub models: Vec<PathBuf>,
    /// Replay a merge: a recipe file, or an earlier merge's `report.json` (its `recipe`). The
    /// recipe gives the models, stop, probe folder, method, draws, corrections, batch size,
    /// seed and evaluation; a flag given beside it overrides that field (and says so).
    #[arg(long)]
    pub recipe: Option<PathBuf>,
    /// Stop point: `7/20` (layer1), `13/20` (layer2), `19/20` (layer3), `20/20` (full) for
    /// ResNet-20; `k/9` for VGG-11.
    #[arg(long, default_value = "full")]
    pub stop: String,
    #[command(flatten)]
    pub settings: MergeSettings,
    #[command(flatten)]
    pub io: DataArgs,
    /// Tasks for evaluation (`0,1,2;3,4`), or `auto` (each source model's classes).
    #[arg(long, default_value = "auto")]
    pub tasks: String,
    /// Skip evaluation.
    #[arg(long)]
    pub no_eval: bool,
    /// Output model folder (gets the weights, manifest.json and report.json).
    #[arg(long)]
    pub out: PathBuf,
    #[command(flatten)]
    pub task_vectors: TaskVectorArgs,
}
