//! `zipmerge train`: flags -> [`TrainPlan`] -> [`zipmerge::ops::train::run`] -> model folder.

use std::path::PathBuf;

use anyhow::Result;
use clap::Args;

use zipmerge::error::{DataError, ModelError};
use zipmerge::models::Arch;
use zipmerge::ops::train::{run, TaskChoice, TrainError, TrainPlan};

use super::common::{
    arch_parser, cache_gib, check_out, command_line, data_error, data_root, engine_choice,
    non_negative, parse_head, positive, usage, BackendArgs,
};
use super::printer::Printer;

/// Arguments of `zipmerge train`.
#[derive(Args, Debug)]
pub struct TrainArgs {
    /// Architecture.
    #[arg(long, default_value = "resnet20", value_parser = arch_parser())]
    pub arch: Arch,
    /// Width multiplier (>= 1).
    #[arg(long, default_value_t = 1)]
    pub width: usize,
    /// Head: `linear`, or `text[:FILE]` (frozen class embeddings; default file
    /// datasets/class-text-embeddings.json, a copy of the shared CIFAR-10 embedding file).
    #[arg(long, default_value = "text")]
    pub head: String,
    /// Data root holding train/ and test/ (ImageFolder or CIFAR binary); default $ZIPMERGE_DATA,
    /// else datasets/cifar10-sample.
    #[arg(long)]
    pub data: Option<PathBuf>,
    /// Task classes, e.g. `0,1,2,3,4` (or give --split).
    #[arg(long, conflicts_with = "split", required_unless_present = "split")]
    pub classes: Option<String>,
    /// Seeded random disjoint split, e.g. `5+5` (use with --split-seed and --part).
    #[arg(long)]
    pub split: Option<String>,
    /// Seed of --split.
    #[arg(long, default_value_t = 0)]
    pub split_seed: u64,
    /// Which part of --split to train on (0-based).
    #[arg(long, default_value_t = 0)]
    pub part: usize,
    /// Epochs.
    #[arg(long, default_value_t = 100, value_parser = positive)]
    pub epochs: usize,
    /// Warm-up epochs (linear from 0, then linear decay to 0).
    #[arg(long, default_value_t = 5.0, value_parser = non_negative)]
    pub warmup: f64,
    /// Mini-batch size.
    #[arg(long, default_value_t = 500, value_parser = positive)]
    pub batch_size: usize,
    /// Peak learning rate (SGD, momentum 0.9, weight decay 5e-4).
    #[arg(long, default_value_t = 0.4, value_parser = non_negative)]
    pub lr: f64,
    /// Weight decay.
    #[arg(long, default_value_t = 5e-4, value_parser = non_negative)]
    pub weight_decay: f64,
    /// Seed of initial weights, shuffling and augmentation.
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    /// Use only N training images of the task, a subset drawn with --seed (for quick runs);
    /// default all.
    #[arg(long, value_parser = positive)]
    pub limit: Option<usize>,
    /// Output model folder.
    #[arg(long)]
    pub out: PathBuf,
    /// Resume from OUT.train-state if present.
    #[arg(long)]
    pub resume: bool,
    /// Fine-tune: start from this model's weights (same architecture, width and head outputs)
    /// instead of the seeded initialisation; the manifest records its weight file's SHA-256.
    #[arg(long)]
    pub init: Option<PathBuf>,
    /// Cutout (DeVries & Taylor 2017): zero an NxN square, its centre uniform over the image
    /// and clipped at the border, in every training image after flip and crop; default none.
    #[arg(long, value_parser = positive)]
    pub cutout: Option<usize>,
    #[command(flatten)]
    pub backend: BackendArgs,
}

/// Runs `zipmerge train`.
pub fn exec(a: TrainArgs, p: &mut Printer) -> Result<()> {
    check_out(&a.out, a.init.as_slice(), true)?;
    // clap requires one of --classes and --split
    let task = a.classes.clone().map_or_else(
        || TaskChoice::Split {
            spec: a.split.clone().unwrap_or_default(),
            seed: a.split_seed,
            part: a.part,
        },
        TaskChoice::Classes,
    );
    let runner = engine_choice(a.backend.device(p)?);
    let plan = TrainPlan {
        arch: a.arch,
        width: a.width,
        head: parse_head(&a.head)?,
        task,
        data_root: data_root(a.data.as_deref()),
        limit: a.limit,
        epochs: a.epochs,
        warmup: a.warmup,
        batch_size: a.batch_size,
        lr: a.lr,
        weight_decay: a.weight_decay,
        seed: a.seed,
        out: a.out.clone(),
        resume: a.resume,
        init: a.init.clone(),
        cutout: a.cutout,
        cache_gib: cache_gib()?,
        device: runner.device().clone(),
        engine: runner.engine(),
        backend: a.backend.backend.to_string(),
        command: command_line(),
    };
    let r = run(&plan, p).map_err(train_error)?;
    let (acc, n, out) = (r.final_task_accuracy, r.test_images, a.out.display());
    let line = format!("wrote {out} (task accuracy {acc:.2}% on {n} test images)\n");
    p.emit(&r, &line, None)
}

/// A training error as the CLI reports it: a bad task, class list or width is a usage error
/// (exit code 2) naming its flag.
fn train_error(e: TrainError) -> anyhow::Error {
    match e {
        TrainError::Data(d @ DataError::Param { .. }) => data_error(d),
        TrainError::Data(DataError::Classes { msg, .. }) => usage(format!("--classes: {msg}")),
        TrainError::Model(ModelError::Width {
            width, expected, ..
        }) => usage(format!("--width {width}: {expected}")),
        e @ TrainError::Cutout { .. } => usage(e.to_string()),
        e => anyhow::Error::new(e),
    }
}
