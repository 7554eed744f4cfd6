//! Typed errors of the library layers. Every variant names the file, layer or option at fault and
//! what was expected; the CLI reports them in one line through `anyhow`.

use thiserror::Error;

/// Reading or writing weight files and manifests.
#[derive(Debug, Error)]
pub enum CheckpointError {
    /// The file is missing or unreadable / unwritable.
    #[error("{file}: {msg}")]
    Io {
        /// Path.
        file: String,
        /// Cause.
        msg: String,
    },
    /// An operating-system error whose message already names its path
    /// ([`crate::util::with_path`]).
    #[error("{0}")]
    Os(String),
    /// The file exists but its content is not what was expected.
    #[error("{file}: {msg}")]
    Format {
        /// Path.
        file: String,
        /// What is wrong.
        msg: String,
    },
    /// A tensor holds NaN or infinity.
    #[error("{file}: tensor `{tensor}` holds a NaN or infinite value (at flat index {index}); expected finite weights")]
    NonFinite {
        /// Path.
        file: String,
        /// Tensor name.
        tensor: String,
        /// First bad index.
        index: usize,
    },
}

/// Building models and loading weights into them.
#[derive(Debug, Error)]
pub enum ModelError {
    /// A head option that is not `linear`, `text` or `text:FILE`.
    #[error("head `{given}`: expected linear, text or text:FILE")]
    Head {
        /// The option as given.
        given: String,
    },
    /// A network configuration without outputs.
    #[error("the model needs at least one output")]
    NoOutputs,
    /// A training run that cannot start: no image of the task, or a zero batch size or epoch
    /// count.
    #[error("training: {msg}")]
    Training {
        /// What is wrong.
        msg: &'static str,
    },
    /// Weights do not fit the architecture: what is wrong, and the file when known.
    #[error("weights do not fit the model: {}{problem}", file.as_ref().map(|f| format!("{f}: ")).unwrap_or_default())]
    Weights {
        /// The weights file, when the caller knows it.
        file: Option<String>,
        /// The tensor and what is wrong with it (boxed: errors stay small on the happy path).
        problem: Box<WeightsProblem>,
    },
    /// A width the architecture does not take.
    #[error("{what} {width}: {expected}")]
    Width {
        /// How the caller names the width (`width`, `--width`, a manifest field).
        what: String,
        /// The width given.
        width: usize,
        /// What is accepted.
        expected: String,
    },
    /// A name that is not a registered architecture.
    #[error("unknown architecture `{given}`: expected {names}")]
    UnknownArch {
        /// The name given.
        given: String,
        /// The registered names.
        names: String,
    },
    /// A class-embedding table (a text head's) that cannot be used.
    #[error("{file}: {msg}")]
    Embeddings {
        /// The table's file.
        file: String,
        /// What is wrong.
        msg: String,
    },
    /// The resumable training state (`<out>.train-state/`) cannot be read, written or used.
    #[error("{path}: {msg}")]
    TrainState {
        /// The file or folder.
        path: String,
        /// What is wrong.
        msg: String,
    },
    /// From the checkpoint layer.
    #[error(transparent)]
    Checkpoint(#[from] CheckpointError),
}

/// Reading images and class splits.
#[derive(Debug, Error)]
pub enum DataError {
    /// A missing folder or file.
    #[error("{path}: {msg}")]
    Io {
        /// Path.
        path: String,
        /// Cause.
        msg: String,
    },
    /// An image that cannot be decoded or has the wrong size.
    #[error("{path}: {msg}")]
    Image {
        /// Path.
        path: String,
        /// Cause.
        msg: String,
    },
    /// A class list (`0,1,2`, `0-4`) that cannot be used.
    #[error("{msg}")]
    Classes {
        /// The list as given.
        list: String,
        /// What is wrong (naming the list).
        msg: String,
    },
    /// A test set that cannot evaluate the tasks (a class it lacks, a head without embeddings
    /// for a task's class, no image of the tasks).
    #[error("{data}: {msg}")]
    Evaluation {
        /// The data folder, or the head.
        data: String,
        /// What is wrong.
        msg: String,
    },
    /// A data option with a value it cannot take, named as an option (the CLI names its flag).
    #[error("{param} `{value}`: {expected}")]
    Param {
        /// Which option.
        param: DataParam,
        /// The value given.
        value: String,
        /// What was expected.
        expected: String,
    },
}

/// A data option, as [`DataError::Param`] names it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DataParam {
    /// Evaluation tasks (`0,1,2;3,4`).
    Tasks,
    /// A seeded random class split (`5+5`).
    Split,
    /// Which part of a split.
    Part,
}

impl std::fmt::Display for DataParam {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            DataParam::Tasks => "tasks",
            DataParam::Split => "class split",
            DataParam::Part => "part",
        })
    }
}

impl DataError {
    /// [`DataError::Param`] for `param` with `value` and what was `expected`.
    pub fn param(param: DataParam, value: &str, expected: impl Into<String>) -> Self {
        DataError::Param {
            param,
            value: value.to_string(),
            expected: expected.into(),
        }
    }
}

/// Choosing a compute device ([`crate::backend::device`]).
#[derive(Debug, Error)]
pub enum BackendError {
    /// A device was named for a backend that has only one.
    #[error(
        "device `{device}` applies only to the wgpu and cuda backends (the {backend} backend has one device)"
    )]
    DeviceWithoutWgpu {
        /// The device given.
        device: String,
        /// The backend chosen.
        backend: String,
    },
    /// The backend was not compiled in.
    #[error("this build has no {backend} support (cargo feature `{backend}`)")]
    NotBuilt {
        /// The backend.
        backend: &'static str,
    },
    /// wgpu sees no adapter at all.
    #[error("no GPU adapter found (wgpu saw no Vulkan/Metal/DX12/GL device); install a driver, e.g. Mesa's lavapipe (Debian: mesa-vulkan-drivers libvulkan1) for a CPU adapter, or use the flex backend")]
    NoAdapter,
    /// A CPU adapter was asked for and there is none.
    #[error("device `cpu`: no CPU (software) adapter; found: {found}")]
    NoCpuAdapter {
        /// The adapters wgpu sees.
        found: String,
    },
    /// The device is neither a number nor `cpu`.
    #[error("device `{given}`: expected a GPU number or `cpu`")]
    BadDevice {
        /// The device given.
        given: String,
    },
    /// There is no discrete GPU of that number.
    #[error("device {index}: there are {discrete} discrete GPU adapter(s) (numbered from 0); found: {found}")]
    NoSuchGpu {
        /// The number given.
        index: usize,
        /// Discrete GPUs found.
        discrete: usize,
        /// The adapters wgpu sees.
        found: String,
    },
}

/// An option of the merge pipeline, as library errors name it ([`MergeError::Param`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum MergeParam {
    /// The matching method.
    Method,
    /// The merge-normalisation epsilon.
    MergeEps,
    /// CCA Merge's ridge.
    CcaReg,
    /// The source models.
    Models,
    /// The stop of a partial zip.
    Stop,
    /// ZipIt!'s alpha.
    Alpha,
    /// ZipIt!'s beta.
    Beta,
    /// The closed-form refit's ridge.
    RefitRidge,
    /// The dual-space similarity's lambda.
    DualLambda,
    /// The post-merge corrections (REPAIR, refit).
    Corrections,
    /// The feature similarity of ZipIt! and Permute.
    Similarity,
    /// The probe images of the statistics.
    ProbeImages,
    /// The images per batch.
    BatchSize,
    /// A merge recipe file ([`crate::merge::recipe`]).
    Recipe,
    /// Per-space / per-layer-group knobs of a recipe ([`crate::merge::knobs`]).
    Knobs,
    /// A data-flow path of a recipe ([`crate::rewrite::path`]).
    Path,
    /// The evaluation budget of a search.
    Budget,
    /// The population of a search.
    Population,
    /// The initial step size of a search.
    Sigma,
    /// The validation images of a search.
    ValImages,
    /// The search space (`ps`, `dfs`, `both`).
    SearchSpace,
    /// The repeats of a data-flow path's block slots.
    Repeat,
    /// The output folder.
    Out,
    /// Resuming a saved run.
    Resume,
    /// Points of an interpolation.
    Points,
    /// The probe folder.
    Probe,
}

impl std::fmt::Display for MergeParam {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            MergeParam::Method => "method",
            MergeParam::MergeEps => "merge epsilon",
            MergeParam::CcaReg => "CCA regularisation",
            MergeParam::Models => "models",
            MergeParam::Stop => "stop",
            MergeParam::Alpha => "ZipIt! alpha",
            MergeParam::Beta => "ZipIt! beta",
            MergeParam::RefitRidge => "refit ridge",
            MergeParam::DualLambda => "dual-space lambda",
            MergeParam::Corrections => "corrections",
            MergeParam::Similarity => "feature similarity",
            MergeParam::ProbeImages => "probe images",
            MergeParam::BatchSize => "batch size",
            MergeParam::Recipe => "recipe",
            MergeParam::Knobs => "knobs",
            MergeParam::Path => "data-flow path",
            MergeParam::Budget => "budget",
            MergeParam::Population => "population",
            MergeParam::Sigma => "sigma",
            MergeParam::ValImages => "validation images",
            MergeParam::SearchSpace => "search space",
            MergeParam::Repeat => "repeat",
            MergeParam::Out => "output folder",
            MergeParam::Resume => "resume",
            MergeParam::Points => "points",
            MergeParam::Probe => "probe folder",
        })
    }
}

impl MergeError {
    /// [`MergeError::Param`] for `param` with `value` and what was `expected`.
    pub fn param(
        param: MergeParam,
        value: impl std::fmt::Display,
        expected: impl Into<String>,
    ) -> Self {
        MergeError::Param {
            param,
            value: value.to_string(),
            expected: expected.into(),
        }
    }
}

/// Errors of the merge engine (statistics, matching, rewriting).
#[derive(Debug, Error)]
pub enum MergeError {
    /// An invariant of the engine that does not hold (a decoded subset that misses a drawn
    /// image, a transform count that does not fit the stop): a bug in zipmerge, not bad input.
    #[error("internal error (please report): {0}")]
    Internal(String),
    /// A task-vector option (`--density`, `--drop`, `--lambda`, `--weights`) out of range.
    #[error("{option} `{value}`: {expected}")]
    TaskVectorOption {
        /// The option, as the command line spells it.
        option: &'static str,
        /// The value given.
        value: String,
        /// What was expected.
        expected: &'static str,
    },
    /// A merge option with a value it cannot take, named as an option (the CLI names its flag:
    /// `cli::common::flag_of`).
    #[error("{param} `{value}`: {expected}")]
    Param {
        /// Which option.
        param: MergeParam,
        /// The value given.
        value: String,
        /// What was expected.
        expected: String,
    },
    /// A tensor of a model that no layer of the merge spec covers: merging would keep one
    /// model's copy of it unmerged, so the merge is refused.
    #[error("tensor `{tensor}` is not covered by the merge spec of {arch}: it would keep model A's values unmerged")]
    Uncovered {
        /// Tensor name.
        tensor: String,
        /// Architecture whose spec misses it.
        arch: String,
    },
    /// A model folder that cannot be merged as it is (multi-head, weights that do not fit).
    #[error("{model}: {msg}")]
    Endpoint {
        /// The model folder or weight file.
        model: String,
        /// What is wrong.
        msg: String,
    },
    /// Two source models that cannot be merged together (architecture, width, head kind or
    /// output dimension differ).
    #[error("{model} {differs} {first}: {expected}")]
    Incompatible {
        /// The model that differs.
        model: String,
        /// How it differs (`is resnet20 x1 but`).
        differs: String,
        /// The first model and its value (`models/a is resnet20 x4`).
        first: String,
        /// What is required.
        expected: &'static str,
    },
    /// An error about one model folder, keeping the typed cause ([`MergeError::Uncovered`], a
    /// width mismatch).
    #[error("{model}: {source}")]
    InModel {
        /// The model folder.
        model: String,
        /// The cause.
        #[source]
        source: Box<MergeError>,
    },
    /// A tensor the rewriter cannot merge (missing, or of another shape in one model).
    #[error("tensor `{tensor}`: {msg}")]
    Tensor {
        /// The tensor's name.
        tensor: String,
        /// What is wrong.
        msg: String,
    },
    /// An architecture's merge spec that does not fit its module tree or forward pass.
    #[error("merge spec of {arch}: {msg}")]
    Spec {
        /// The architecture.
        arch: String,
        /// What does not fit.
        msg: String,
    },
    /// From a matcher.
    #[error(transparent)]
    Match(#[from] MatchError),
    /// The statistics saw no probe image.
    #[error("the probe set is empty: expected at least one image")]
    NoProbeImages,
    /// A matcher failure naming the feature space.
    #[error("feature space `{space}`: {msg}")]
    Space {
        /// Space name.
        space: String,
        /// What went wrong.
        msg: String,
    },
    /// From the model layer.
    #[error(transparent)]
    Model(#[from] ModelError),
    /// From the data layer.
    #[error(transparent)]
    Data(#[from] DataError),
    /// From the checkpoint layer.
    #[error(transparent)]
    Checkpoint(#[from] CheckpointError),
}

/// Errors of the experiment recipes ([`crate::ops::sweep`], [`crate::ops::grid`], [`crate::ops::table1`]): the merges they run, the
/// endpoint folders they scan and the files they write.
#[derive(Debug, Error)]
pub enum ExperimentError {
    /// From a merge.
    #[error(transparent)]
    Merge(#[from] MergeError),
    /// A folder of endpoint groups that cannot be used.
    #[error("{dir}: {msg}")]
    Groups {
        /// The folder.
        dir: String,
        /// What is wrong.
        msg: String,
    },
    /// An output file that cannot be written.
    #[error("{path}: {msg}")]
    Output {
        /// Path.
        path: String,
        /// Cause.
        msg: String,
    },
    /// A plot that cannot be drawn.
    #[error("drawing {what}: {source}")]
    Plot {
        /// Which plot.
        what: &'static str,
        /// Cause.
        #[source]
        source: PlotError,
    },
}

impl ExperimentError {
    /// [`ExperimentError::Output`] for `path`.
    pub fn output(path: &std::path::Path, e: impl std::fmt::Display) -> Self {
        ExperimentError::Output {
            path: path.display().to_string(),
            msg: e.to_string(),
        }
    }

    /// [`ExperimentError::Plot`] for `what`.
    pub fn plot(what: &'static str, source: PlotError) -> Self {
        ExperimentError::Plot { what, source }
    }
}

/// Error of the plot writer ([`crate::experiments::plot`]): what failed, in words.
#[derive(Debug, thiserror::Error)]
#[error("plot: {0}")]
pub struct PlotError(pub(crate) String);

/// What is wrong with the weights of a model ([`ModelError::Weights`]), naming the tensor by its
/// PyTorch name.
#[derive(Debug, Clone, PartialEq)]
pub enum WeightsProblem {
    /// A tensor the architecture needs is absent (`missing`: how many are, when counted).
    Missing {
        /// The first missing tensor.
        tensor: String,
        /// How many tensors are missing in all, when counted.
        missing: Option<usize>,
    },
    /// A tensor of another shape than the architecture's.
    Shape {
        /// The tensor.
        tensor: String,
        /// Its shape.
        found: Vec<usize>,
        /// What the architecture expects, in words (a shape and the configuration).
        expected: String,
    },
    /// A tensor the architecture does not have.
    Unknown {
        /// The first unknown tensor.
        tensor: String,
        /// The architecture.
        arch: String,
        /// How many tensors are unknown in all.
        unknown: usize,
    },
    /// Networks run side by side (a merged network and its sources) differ in structure.
    Structure {
        /// Where they differ.
        at: String,
    },
}

impl std::fmt::Display for WeightsProblem {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            WeightsProblem::Missing { tensor, missing } => {
                write!(f, "tensor `{tensor}` is missing")?;
                match missing {
                    Some(n) => write!(f, " ({n} missing in all)"),
                    None => Ok(()),
                }
            }
            WeightsProblem::Shape {
                tensor,
                found,
                expected,
            } => write!(
                f,
                "tensor `{tensor}` has shape {found:?}, expected {expected}"
            ),
            WeightsProblem::Unknown {
                tensor,
                arch,
                unknown,
            } => write!(
                f,
                "unknown tensor `{tensor}` for {arch} ({unknown} unknown in all)"
            ),
            WeightsProblem::Structure { at } => write!(
                f,
                "the merged network and its sources differ in structure at {at}"
            ),
        }
    }
}

impl ModelError {
    /// [`ModelError::Weights`] of `problem`, file unknown.
    pub fn weights(problem: WeightsProblem) -> Self {
        ModelError::Weights {
            file: None,
            problem: Box::new(problem),
        }
    }
}

/// Errors of the matching module ([`crate::matching`]).
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum MatchError {
    /// The matrix is not square (`rows != cols`).
    #[error("matrix must be square, got {rows} x {cols}")]
    NotSquare {
        /// Number of rows.
        rows: usize,
        /// Number of columns.
        cols: usize,
    },
    /// A [`crate::matching::SquareMatrix`] whose data length is not `n * n`.
    #[error("square matrix of side {n} needs {} entries, got {len}", n * n)]
    BadLength {
        /// Declared side.
        n: usize,
        /// Actual `data.len()`.
        len: usize,
    },
    /// The correlation matrix is not symmetric (first offending pair in row-major order, `i < j`).
    #[error(
        "correlation matrix is not symmetric: entry ({i},{j}) = {a} but ({j},{i}) = {b} \
         (relative tolerance 1e-6)"
    )]
    NotSymmetric {
        /// Row of the offending upper-triangle entry.
        i: usize,
        /// Column of the offending upper-triangle entry.
        j: usize,
        /// Value at `(i, j)`.
        a: f64,
        /// Value at `(j, i)`.
        b: f64,
    },
    /// `O` is not a positive multiple of the number of models, or fewer than 2 models.
    #[error(
        "cannot split O = {o} stacked features into N = {n} models \
         (need N >= 2 and O a positive multiple of N)"
    )]
    BadModels {
        /// Total number of stacked features.
        o: usize,
        /// Number of models.
        n: usize,
    },
    /// ZipIt! `alpha` must be a finite number `> 0`.
    #[error(
        "invalid ZipIt alpha = {0}: alpha must be finite and > 0 (the reference's alpha <= 0 \
         branch writes -inf into shifting current positions, making S asymmetric; that buggy \
         legacy path is rejected, see reference doc §3.1)"
    )]
    InvalidAlpha(f64),
    /// ZipIt! `beta` must lie in `[0, 1]`.
    #[error("invalid ZipIt beta = {0}: expected a value in [0, 1]")]
    InvalidBeta(f64),
    /// Any other unsupported input (e.g. a negative or non-finite `eps`).
    #[error("unsupported: {0}")]
    Unsupported(String),
}
