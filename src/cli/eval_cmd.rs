//! `zipmerge eval`: joint / per-task / average accuracy of a model, multi-head model or ensemble
//! ([`zipmerge::eval::runner::evaluate_folders`]); `zipmerge predict`: top-k classes per image
//! ([`zipmerge::ops::predict::predict`]).

use std::path::PathBuf;

use anyhow::{Context, Result};
use clap::Args;

use zipmerge::ops::eval::evaluate_folders;
use zipmerge::ops::predict::predict_folder;

use super::common::{cache_gib, data_root, merge_error, positive, tasks_option, BackendArgs};
use super::printer::Printer;

/// Arguments of `zipmerge eval`.
#[derive(Args, Debug)]
pub struct EvalArgs {
    /// Model folder(s); several = an ensemble (reference doc §5.3).
    #[arg(long = "model", required = true)]
    pub models: Vec<PathBuf>,
    /// Data root (its test/ folder is used) or a test folder; default $ZIPMERGE_DATA, else
    /// datasets/cifar10-sample.
    #[arg(long)]
    pub data: Option<PathBuf>,
    /// Tasks, e.g. `0,1,2,3,4;5,6,7,8,9`, or `auto` (the classes of each head).
    #[arg(long, default_value = "auto")]
    pub tasks: String,
    /// Batch size.
    #[arg(long, default_value_t = 500, value_parser = positive)]
    pub batch_size: usize,
    #[command(flatten)]
    pub backend: BackendArgs,
}

/// Runs `zipmerge eval`.
pub fn exec(a: EvalArgs, p: &mut Printer) -> Result<()> {
    let tasks = tasks_option(&a.tasks)?;
    let device = a.backend.runner(p)?;
    let root = data_root(a.data.as_deref());
    let r = evaluate_folders(
        &a.models,
        &root,
        tasks,
        a.batch_size,
        cache_gib()?,
        &device,
        p,
    )
    .map_err(merge_error)?;
    let note = format!("  {:.1}s, {:.0} images/s", r.seconds, r.images_per_second);
    p.emit(&r, &r.accuracy.table(&r.label), Some(note))
}

/// Arguments of `zipmerge predict`.
#[derive(Args, Debug)]
pub struct PredictArgs {
    /// Model folder.
    #[arg(long)]
    pub model: PathBuf,
    /// 32x32 images (.jpg/.png).
    #[arg(required = true)]
    pub images: Vec<PathBuf>,
    /// Classes to show per image.
    #[arg(long, default_value_t = 3, value_parser = positive)]
    pub top: usize,
    #[command(flatten)]
    pub backend: BackendArgs,
}

/// Runs `zipmerge predict`.
pub fn exec_predict(a: PredictArgs, p: &mut Printer) -> Result<()> {
    let device = a.backend.device(p)?;
    let preds = predict_folder(&a.model, &a.images, a.top, &device)
        .map_err(merge_error)
        .with_context(|| format!("predicting with model {}", a.model.display()))?;
    let text: String = preds.iter().map(|pr| format!("{pr}\n")).collect();
    p.emit(&preds, &text, None)
}
