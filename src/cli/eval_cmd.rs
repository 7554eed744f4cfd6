//! `zipmerge eval`: Joint / per-task / average accuracy of a model, multi-head model or ensemble
//! ([`zipmerge::eval::runner::evaluate_folders`]).

use std::path::PathBuf;

use anyhow::Result;
use clap::Args;

use zipmerge::eval::runner::evaluate_folders;

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
    let device = a.backend.device(p)?;
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
