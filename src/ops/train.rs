//! Training one endpoint as a library call ([`run`]): resolve the task's classes (a list, or
//! one part of a seeded random split), load the task's train and test images, train with the
//! reference's recipe ([`crate::train::train`], reference doc §7), write the model folder with a
//! manifest that records data, split, seed, epochs, command and measured accuracy.

use std::path::PathBuf;
use std::time::Instant;

use burn::tensor::Device;
use serde::Serialize;

use crate::data::tasks::{format_tasks, parse_classes, random_split};
use crate::data::{split_dir, Family, ImageSet};
use crate::error::{DataError, DataParam, ModelError};
use crate::models::head::HeadChoice;
use crate::models::{param_count, Arch, NetConfig};
use crate::progress::Observer;
use crate::train::{EpochLog, TrainObserver, TrainOptions};

/// The task's classes.
#[derive(Clone, Debug)]
pub enum TaskChoice {
    /// A class list (`0,1,2`, `0-4`).
    Classes(String),
    /// Part `part` of the seeded random split `spec` (`5+5`) drawn with `seed`.
    Split {
        /// Sizes of the parts.
        spec: String,
        /// Seed of the split.
        seed: u64,
        /// Which part.
        part: usize,
    },
}

/// Everything one training run needs.
#[derive(Clone, Debug)]
pub struct TrainPlan {
    /// Architecture.
    pub arch: Arch,
    /// Width.
    pub width: usize,
    /// Head.
    pub head: HeadChoice,
    /// The task.
    pub task: TaskChoice,
    /// Data root (train/ and test/).
    pub data_root: PathBuf,
    /// Train on a seeded subset of this many of the task's images.
    pub limit: Option<usize>,
    /// Epochs.
    pub epochs: usize,
    /// Warm-up epochs.
    pub warmup: f64,
    /// Mini-batch size.
    pub batch_size: usize,
    /// Peak learning rate.
    pub lr: f64,
    /// Weight decay.
    pub weight_decay: f64,
    /// Seed of the initial weights, shuffling, augmentation and `limit`'s subset.
    pub seed: u64,
    /// Output model folder (the resumable state goes to `<out>.train-state`).
    pub out: PathBuf,
    /// Resume from `<out>.train-state` if present.
    pub resume: bool,
    /// Start from this model's weights (a fine-tune of it) instead of the seeded
    /// initialisation: same architecture, width and head shape.
    pub init: Option<PathBuf>,
    /// Cutout square side, pixels, applied to every training image after flip and crop
    /// (`None`: no Cutout); at most the network's input side.
    pub cutout: Option<usize>,
    /// Pixel cache per split, GiB.
    pub cache_gib: f64,
    /// Device.
    pub device: Device,
    /// Train on the CPU engine (on the flex device; burn's autodiff otherwise or when false).
    pub engine: bool,
    /// Backend name, for the manifest.
    pub backend: String,
    /// The command, for the manifest.
    pub command: String,
}

/// What a training run produced.
#[derive(Clone, Debug, Serialize)]
pub struct TrainReport {
    /// The model folder.
    pub out: PathBuf,
    /// Task accuracy on the task's test images after the last epoch, %.
    pub final_task_accuracy: f64,
    /// Training images used.
    pub train_images: usize,
    /// Test images of the task.
    pub test_images: usize,
    /// Per-epoch log.
    pub epochs_log: Vec<EpochLog>,
}

/// Why a training run failed.
#[derive(Debug, thiserror::Error)]
pub enum TrainError {
    /// From the data (class lists, splits, images).
    #[error(transparent)]
    Data(#[from] DataError),
    /// From the model or the training loop.
    #[error(transparent)]
    Model(#[from] ModelError),
    /// `--cutout` larger than the network's input.
    #[error("--cutout {size}: the square must fit the {side}x{side} input (1 to {side} pixels)")]
    Cutout {
        /// The side asked.
        size: usize,
        /// The input side.
        side: usize,
    },
    /// The model of `--init` cannot start this run.
    #[error("--init {model}: {msg}")]
    Init {
        /// The model folder.
        model: String,
        /// What does not fit.
        msg: String,
    },
    /// A training state of an earlier run is in the way of a run without `--resume`.
    #[error("{0}: holds the training state of an earlier run; pass --resume to continue it, or remove the folder to start again")]
    StateExists(String),
    /// The task has no training images.
    #[error("{root}: no training images of classes {classes:?}")]
    NoImages {
        /// Data root.
        root: String,
        /// The task's classes.
        classes: Vec<usize>,
    },
}

/// Reports training progress to an [`Observer`]: a phase per epoch with the running loss and
/// accuracy as its status, one line per finished epoch.
struct Epochs<'a>(&'a mut dyn Observer);

impl TrainObserver for Epochs<'_> {
    fn epoch_start(&mut self, epoch: usize, steps: usize) {
        self.0.begin(&format!("epoch {epoch}"), steps as u64);
    }
    fn step(&mut self, loss: f64, acc: f64) {
        self.0.status(&format!("loss {loss:.3} acc {acc:.1}%"));
        self.0.advance(1);
    }
    fn epoch_end(&mut self, l: &EpochLog) {
        self.0.end();
        self.0.info(&format!(
            "epoch {:>3}: loss {:.4}  train acc {:.2}%  test task acc {:.2}%  ({:.1}s)",
            l.epoch, l.loss, l.train_accuracy, l.test_accuracy, l.seconds
        ));
    }
    fn note(&mut self, line: &str) {
        self.0.warn(line);
    }
}

/// Class ids of each part of a split.
type SplitParts = Vec<Vec<usize>>;

/// The task's classes and, for a split, all its parts.
fn resolve_task(
    task: &TaskChoice,
    n: usize,
    obs: &mut dyn Observer,
) -> Result<(Vec<usize>, Option<SplitParts>), DataError> {
    match task {
        TaskChoice::Classes(c) => Ok((parse_classes(c, n)?, None)),
        TaskChoice::Split { spec, seed, part } => {
            let parts = random_split(spec, *seed, n)?;
            if *part >= parts.len() {
                return Err(DataError::param(
                    DataParam::Part,
                    &part.to_string(),
                    format!("split {spec} has only {} parts", parts.len()),
                ));
            }
            obs.info(&format!(
                "split {spec} (seed {seed}): {}",
                format_tasks(&parts)
            ));
            Ok((parts[*part].clone(), Some(parts)))
        }
    }
}

/// The starting weights of `train --init DIR`: the model's weights, checked to fit `net`
/// (architecture, width, head outputs), with the record of where they came from.
///
/// # Errors
/// [`TrainError::Init`] naming the folder and what does not fit.
#[allow(clippy::type_complexity)]
fn load_init(
    dir: &std::path::Path,
    net: &NetConfig,
) -> Result<
    (
        crate::train::InitFrom,
        crate::checkpoint::StateDict,
        Option<crate::data::Preprocess>,
    ),
    TrainError,
> {
    use sha2::Digest;
    let err = |msg: String| TrainError::Init {
        model: dir.display().to_string(),
        msg,
    };
    let d = crate::checkpoint::model_dir(dir);
    let m = crate::checkpoint::read_manifest(&d).map_err(|e| err(e.to_string()))?;
    if m.is_multi_head() {
        return Err(err(
            "is a multi-head model; a fine-tune starts from a single model".into(),
        ));
    }
    if m.arch != net.arch || m.width != net.width {
        return Err(err(format!(
            "is {} x{}, the run trains {} x{} (--arch/--width)",
            m.arch, m.width, net.arch, net.width
        )));
    }
    let state = crate::checkpoint::read_weights(&d, &m.weights).map_err(|e| err(e.to_string()))?;
    crate::models::Net::from_state(net, &state, &burn::tensor::Device::flex()).map_err(|e| {
        err(format!(
            "its weights do not fit the network trained here (--head and the task's classes must give the same outputs): {e}"
        ))
    })?;
    let bytes = std::fs::read(d.join(&m.weights)).map_err(|e| err(e.to_string()))?;
    let hash = sha2::Sha256::digest(&bytes);
    let hex: String = hash.iter().map(|b| format!("{b:02x}")).collect();
    let from = crate::train::InitFrom {
        model: dir.display().to_string(),
        weights_sha256: hex,
    };
    Ok((from, state, m.preprocess))
}

/// The training-state folder of the model folder `out`: `<out>.train-state`.
pub fn state_dir_of(out: &std::path::Path) -> PathBuf {
    PathBuf::from(format!("{}.train-state", out.display()))
}

/// Trains one endpoint and writes its model folder (reference doc §7).
///
/// # Errors
/// [`TrainError`] naming the file, option or class at fault.
pub fn run(plan: &TrainPlan, obs: &mut dyn Observer) -> Result<TrainReport, TrainError> {
    let shape = NetConfig {
        arch: plan.arch,
        width: plan.width,
        out: 1,
    };
    shape.validate()?;
    let root = &plan.data_root;
    let n = ImageSet::class_names_of(&split_dir(root, "train"), "train")?.len();
    let (classes, split_lists) = resolve_task(&plan.task, n, obs)?;
    let head = plan.head.build(&classes)?;
    let net = NetConfig {
        out: head.net_outputs(classes.len()),
        ..shape
    };
    let init = match &plan.init {
        Some(dir) => Some(load_init(dir, &net)?),
        None => None,
    };
    // a fine-tune takes its inputs as its base does
    let own_prep = init.as_ref().and_then(|(_, _, p)| *p);
    let prep = own_prep.unwrap_or_else(|| shape.preprocess());
    if let Some(size) = plan.cutout {
        if size == 0 || size > prep.side() {
            let side = prep.side();
            return Err(TrainError::Cutout { size, side });
        }
    }
    let load = |split: &str, obs: &mut dyn Observer| {
        crate::data::load_split(root, split, prep, plan.cache_gib, Some(&classes), obs)
    };
    let mut train_task = load("train", obs)?;
    if let Some(l) = plan.limit {
        train_task = train_task.seeded_subset(l, plan.seed);
    }
    let test_task = load("test", obs)?;
    if train_task.is_empty() {
        return Err(TrainError::NoImages {
            root: root.display().to_string(),
            classes,
        });
    }
    let opts = TrainOptions {
        net,
        head,
        classes: classes.clone(),
        epochs: plan.epochs,
        warmup_epochs: plan.warmup,
        batch_size: plan.batch_size,
        lr: plan.lr,
        momentum: 0.9,
        weight_decay: plan.weight_decay,
        seed: plan.seed,
        data_root: std::fs::canonicalize(root)
            .unwrap_or_else(|_| root.clone())
            .display()
            .to_string(),
        limit: plan.limit,
        train_images: train_task.len(),
        init: init.as_ref().map(|(i, _, _)| i.clone()),
        preprocess: own_prep,
        cutout: plan.cutout,
    };
    obs.info(&format!(
        "training {} {} ({} params, {} forward MACs/image) on classes {classes:?}: {} train / {} test images, on {}",
        plan.arch,
        net.width_label(),
        param_count(&net),
        net.flops(),
        train_task.len(),
        test_task.len(),
        if plan.engine && plan.device == Device::flex() {
            "the CPU engine"
        } else {
            "burn's autodiff"
        }
    ));
    if plan.warmup >= plan.epochs as f64 {
        obs.warn(&format!(
            "warning: --warmup {} >= --epochs {}: the schedule never decays and the learning rate peaks at the end of training (at {3:.3} x --lr {2}); pass a shorter --warmup",
            plan.warmup,
            plan.epochs,
            plan.lr,
            (plan.epochs as f64 / plan.warmup).min(1.0)
        ));
    }
    let state_dir = state_dir_of(&plan.out);
    if !plan.resume && crate::train::state_exists(&state_dir) {
        // never delete a state this run did not write
        return Err(TrainError::StateExists(state_dir.display().to_string()));
    }
    let t0 = Instant::now();
    let (state, log) = crate::train::train(
        &opts,
        init.as_ref().map(|(_, s, _)| s),
        &train_task,
        &test_task,
        &plan.device,
        Some(&state_dir),
        plan.engine,
        &mut Epochs(obs),
    )?;
    let final_acc = log.last().map_or(0.0, |l| l.test_accuracy);
    let split = match &plan.task {
        TaskChoice::Split { spec, seed, part } => Some(
            serde_json::json!({"spec": spec, "seed": seed, "part": part, "lists": split_lists}),
        ),
        TaskChoice::Classes(_) => None,
    };
    let provenance = serde_json::json!({
        "training": {
            "data": root.display().to_string(),
            "train_images": train_task.len(),
            "test_images": test_task.len(),
            "classes": classes,
            "split": split,
            "seed": plan.seed,
            "epochs": plan.epochs,
            "warmup_epochs": plan.warmup,
            "batch_size": plan.batch_size,
            "lr": plan.lr,
            "momentum": 0.9,
            "weight_decay": plan.weight_decay,
            "optimizer": "SGD (PyTorch semantics: dampening 0), weight decay on all parameters",
            "schedule": "per-iteration linear warm-up from 0, then linear decay to 0",
            "augmentation": match prep.family {
                Family::Cifar => "random horizontal flip + random crop 32 with 4-pixel zero padding",
                Family::ImageNet => "RandomResizedCrop(224, scale 0.08-1, ratio 3/4-4/3) of the image stored at 256x256 (resize 256 + centre crop 256) + random horizontal flip; test: resize 256 + centre crop 224; ImageNet mean/std",
            },
            "cutout": plan.cutout.map(|l| format!("Cutout {l}x{l} after normalisation (DeVries & Taylor 2017; centre uniform over the image, clipped at the border, as uoguelph-mlrg/Cutout)")),
            "preprocess": prep,
            "init": opts.init,
            "backend": plan.backend,
            "training_path": if plan.engine && plan.device == Device::flex() {
                "engine (CPU engine kernels; BN running variance unbiased, as PyTorch)"
            } else {
                "burn autodiff (BN running variance biased, burn's rule)"
            },
            "command": plan.command,
            "final_task_accuracy": final_acc,
            "wall_seconds": t0.elapsed().as_secs_f64(),
            "epochs_log": log,
        }
    });
    crate::train::write_trained(
        &plan.out,
        &opts,
        &state,
        &train_task.class_names,
        provenance,
    )?;
    // the finished run's state stays, so that `--resume --epochs N` can extend it
    obs.info(&format!(
        "training state kept in {} (`--resume --epochs N` extends this run; remove the folder when done)",
        state_dir.display()
    ));
    Ok(TrainReport {
        out: plan.out.clone(),
        final_task_accuracy: final_acc,
        train_images: train_task.len(),
        test_images: test_task.len(),
        epochs_log: log,
    })
}
