//! `zipmerge predict`: top-k classes per image.

use std::path::PathBuf;

use anyhow::{Context, Result};
use clap::Args;

use zipmerge::eval::predict::predict;
use zipmerge::system::System;

use super::common::{merge_error, positive, BackendArgs};
use super::printer::Printer;

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
pub fn exec(a: PredictArgs, p: &mut Printer) -> Result<()> {
    let device = a.backend.device(p)?;
    let sys = System::load(&a.model, &device)
        .with_context(|| format!("loading model {}", a.model.display()))?;
    let preds = predict(&sys, &a.images, a.top, &device).map_err(merge_error)?;
    let text: String = preds.iter().map(|pr| format!("{pr}\n")).collect();
    p.emit(&preds, &text, None)
}
