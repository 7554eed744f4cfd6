//! `zipmerge distill`: flags -> [`DistillPlan`] -> [`zipmerge::ops::distill::run`] -> model
//! folder with `report.json`.

use std::path::PathBuf;

use anyhow::Result;
use clap::Args;

use zipmerge::distill::{BnHandling, DistillLoss, DistillOptions, Optimizer};
use zipmerge::ops::distill::{run, DistillError, DistillPlan};

use super::common::{
    cache_gib, check_out, command_line, data_error, data_root, engine_choice, finite, non_negative,
    positive, usage, BackendArgs,
};
use super::printer::Printer;

/// Arguments of `zipmerge distill`.
#[derive(Args, Debug)]
pub struct DistillArgs {
    /// The student: a merged, partially zipped or single model folder whose heads correspond
    /// to the teachers (head i scores teacher i's classes).
    #[arg(long)]
    pub student: PathBuf,
    /// A teacher: a single model folder, one per student head, in head order.
    #[arg(long = "teacher", required = true)]
    pub teachers: Vec<PathBuf>,
    /// Data root: `train/` gives each teacher's images (those of its classes; labels are not
    /// read beyond that), `test/` the evaluation. Default $ZIPMERGE_DATA, else the sample.
    #[arg(long)]
    pub data: Option<PathBuf>,
    /// An image folder per teacher, in --teacher order, replacing its task's train images as
    /// its domain (an ImageFolder tree, class names ignored, or CIFAR binary batches): give it
    /// once per teacher or not at all.
    #[arg(long = "unlabeled")]
    pub unlabeled: Vec<PathBuf>,
    /// Use at most N images per teacher (a seeded subset; the low-data regime of FS-Merge).
    #[arg(long, value_parser = positive)]
    pub images: Option<usize>,
    /// Epochs of the full stage (everything trains; the heads' rate decays linearly to 0).
    #[arg(long, default_value_t = 4, value_parser = positive)]
    pub epochs: usize,
    /// Epochs of the head stage before it (only the layers after the stop train; a single
    /// network's final linear layer).
    #[arg(long, default_value_t = 1)]
    pub head_epochs: usize,
    /// Images per batch, all teachers together.
    #[arg(long, default_value_t = 128, value_parser = positive)]
    pub batch_size: usize,
    /// Optimiser: `adamw` (SAM-CLIP's; betas 0.9 / 0.999, eps 1e-5) or `sgd` (momentum 0.9).
    #[arg(long, default_value = "adamw")]
    pub optimizer: String,
    /// Learning rate of the heads.
    #[arg(long, default_value_t = 1e-3, value_parser = non_negative)]
    pub lr: f64,
    /// The trunk's rate in the full stage, as a multiple of --lr (SAM-CLIP: lower).
    #[arg(long, default_value_t = 0.1, value_parser = non_negative)]
    pub trunk_lr_mult: f64,
    /// Weight decay, every parameter (AdamW: decoupled; SGD: added to the gradient).
    #[arg(long, default_value_t = 1e-4, value_parser = non_negative)]
    pub weight_decay: f64,
    /// What the student learns: `joint` (default; the teachers' ensemble over the union of
    /// their classes, every teacher on every image, KL) or `embedding` (SAM-CLIP: each
    /// teacher's outputs on its own images; text heads by cosine distance).
    #[arg(long, default_value = "joint")]
    pub loss: String,
    /// Weight of the feature-reconstruction term (FS-Merge's objective), partially zipped
    /// students only: each head network's features one cut after the stop against its
    /// teacher's at the same cut (squared error over the teacher's squared norm), on the
    /// teacher's own images; 0 (default): off.
    #[arg(long, default_value_t = 0.0, value_parser = non_negative)]
    pub feature_weight: f64,
    /// Temperature of the KL losses (default 4; refused when no KL loss is used: `--loss
    /// embedding` with text heads only).
    #[arg(long, value_parser = finite)]
    pub temperature: Option<f64>,
    /// Share of each batch per teacher, e.g. `1,1` (default equal).
    #[arg(long, value_delimiter = ',')]
    pub mix: Option<Vec<f64>>,
    /// Keep only this share of the first teacher's images (its replay memory; SAM-CLIP keeps
    /// 2,048 : 32), in (0, 1]; default 1 (all).
    #[arg(long, default_value_t = 1.0, value_parser = finite)]
    pub replay_frac: f64,
    /// BN during distillation: `train` (batch statistics, a BN reset at the end) or `frozen`
    /// (the student's running statistics throughout, no reset).
    #[arg(long, default_value = "train")]
    pub bn: String,
    /// Images of the final BN reset (--bn train).
    #[arg(long, default_value_t = 1000, value_parser = positive)]
    pub bn_reset_images: usize,
    /// No augmentation of the distillation images (flip + crop by default).
    #[arg(long)]
    pub no_augment: bool,
    /// Do not read the test split (no before/after/retention figures).
    #[arg(long)]
    pub no_test: bool,
    /// Seed of the draws, subsets and augmentation.
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    /// Continue from OUT.distill-state.
    #[arg(long)]
    pub resume: bool,
    /// Output model folder (report.json inside).
    #[arg(long)]
    pub out: PathBuf,
    #[command(flatten)]
    pub backend: BackendArgs,
}

/// Runs `zipmerge distill`.
pub fn exec(a: DistillArgs, p: &mut Printer) -> Result<()> {
    let mut inputs = vec![a.student.clone()];
    inputs.extend(a.teachers.iter().cloned());
    check_out(&a.out, &inputs, true)?;
    let bn = match a.bn.as_str() {
        "train" => BnHandling::Train,
        "frozen" => BnHandling::Frozen,
        o => return Err(usage(format!("--bn {o}: expected train or frozen"))),
    };
    if bn == BnHandling::Frozen && super::common::given_flags().contains("bn-reset-images") {
        return Err(usage(
            "--bn-reset-images sets the BN reset of --bn train; --bn frozen keeps the statistics",
        ));
    }
    let loss = match a.loss.as_str() {
        "joint" => DistillLoss::Joint,
        "embedding" => DistillLoss::Embedding,
        o => return Err(usage(format!("--loss {o}: expected joint or embedding"))),
    };
    let optimizer = match a.optimizer.as_str() {
        "adamw" => Optimizer::AdamW,
        "sgd" => Optimizer::Sgd,
        o => return Err(usage(format!("--optimizer {o}: expected adamw or sgd"))),
    };
    if !a.unlabeled.is_empty() && a.unlabeled.len() != a.teachers.len() {
        return Err(usage(format!(
            "--unlabeled: given {} times for {} teachers; give one folder per teacher (in --teacher order) or none",
            a.unlabeled.len(),
            a.teachers.len()
        )));
    }
    let mix = a.mix.clone().unwrap_or_else(|| vec![1.0; a.teachers.len()]);
    let device = a.backend.device(p)?;
    let plan = DistillPlan {
        student: a.student.clone(),
        teachers: a.teachers.clone(),
        data_root: data_root(a.data.as_deref()),
        images_per_teacher: a.images,
        unlabeled: a.unlabeled.clone(),
        options: DistillOptions {
            head_epochs: a.head_epochs,
            epochs: a.epochs,
            batch_size: a.batch_size,
            lr: a.lr,
            trunk_lr_mult: a.trunk_lr_mult,
            optimizer,
            weight_decay: a.weight_decay,
            loss,
            temperature: a.temperature.unwrap_or(4.0),
            mix,
            counts: vec![],
            replay_frac: a.replay_frac,
            augment: !a.no_augment,
            seed: a.seed,
            feature_weight: a.feature_weight,
        },
        temperature_given: a.temperature.is_some(),
        bn,
        bn_reset_images: a.bn_reset_images,
        test: !a.no_test,
        cache_gib: cache_gib()?,
        device: engine_choice(device),
        backend: a.backend.backend.to_string(),
        command: command_line(),
        resume: a.resume,
        out: a.out.clone(),
    };
    let r = run(&plan, p).map_err(distill_error)?;
    let line = match &r.after {
        Some(acc) => {
            let tasks: Vec<String> = acc
                .tasks
                .iter()
                .zip(&r.teachers)
                .map(|(t, te)| {
                    format!(
                        "{:.2}% (retention {:.1}%)",
                        t.accuracy,
                        te.retention.unwrap_or(0.0)
                    )
                })
                .collect();
            format!(
                "wrote {} (joint {:.2}%, tasks {}, {} images seen, {:.0}s)\n",
                a.out.display(),
                acc.joint,
                tasks.join(", "),
                r.images_seen,
                r.wall_seconds
            )
        }
        None => format!(
            "wrote {} ({} images seen)\n",
            a.out.display(),
            r.images_seen
        ),
    };
    p.emit(&r, &line, None)
}

/// A distillation error as the CLI reports it: a bad option is a usage error (exit 2).
fn distill_error(e: DistillError) -> anyhow::Error {
    match e {
        DistillError::Option { .. } => usage(e.to_string()),
        DistillError::Data(d @ zipmerge::error::DataError::Param { .. }) => data_error(d),
        e => anyhow::Error::new(e),
    }
}
