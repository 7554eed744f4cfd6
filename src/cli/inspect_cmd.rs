//! `zipmerge inspect`: [`ModelInfo`] of a model folder, as text or JSON.

use std::path::PathBuf;

use anyhow::Result;
use clap::Args;

use zipmerge::ops::inspect::ModelInfo;

use super::common::merge_error;
use super::printer::Printer;

/// Arguments of `zipmerge inspect`.
#[derive(Args, Debug)]
pub struct InspectArgs {
    /// Model folder.
    #[arg(long)]
    pub model: PathBuf,
}

/// Runs `zipmerge inspect`.
pub fn exec(a: InspectArgs, p: &Printer) -> Result<()> {
    let info = ModelInfo::of(&a.model).map_err(merge_error)?;
    p.emit(&info, &info.describe(), None)
}
