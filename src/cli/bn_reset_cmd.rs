//! `zipmerge bn-reset`: re-estimate BatchNorm running statistics of any model
//! ([`zipmerge::rewrite::bn_reset::reset_folder`]).

use std::path::PathBuf;

use anyhow::Result;
use clap::Args;

use zipmerge::collect::ProbeOptions;
use zipmerge::ops::bn_reset::reset_folder;

use super::common::{
    cache_gib, check_out, count, data_root, merge_error, positive, BackendArgs, Count,
};
use super::printer::Printer;

/// Arguments of `zipmerge bn-reset`.
#[derive(Args, Debug)]
pub struct BnResetArgs {
    /// Model folder.
    #[arg(long)]
    pub model: PathBuf,
    /// Data root whose train/ folder gives the images (augmented); default $ZIPMERGE_DATA, else
    /// the embedded sample.
    #[arg(long)]
    pub data: Option<PathBuf>,
    /// Images to use (`all` = every image).
    #[arg(long, default_value = "1000", value_parser = count(1))]
    pub images: Count,
    /// Batch size.
    #[arg(long, default_value_t = 500, value_parser = positive)]
    pub batch_size: usize,
    /// Seed of the subset and augmentation.
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    /// Output folder (may equal --model).
    #[arg(long)]
    pub out: PathBuf,
    #[command(flatten)]
    pub backend: BackendArgs,
}

/// Runs `zipmerge bn-reset`.
pub fn exec(a: BnResetArgs, p: &mut Printer) -> Result<()> {
    check_out(&a.out, &[], true)?;
    let opts = ProbeOptions {
        images: a.images.0,
        batch_size: a.batch_size,
        augment: true,
        seed: a.seed,
    };
    let device = a.backend.runner(p)?;
    let root = data_root(a.data.as_deref());
    let n = reset_folder(&a.model, &root, &opts, cache_gib()?, &a.out, &device, p)
        .map_err(merge_error)?;
    let line = format!("wrote {}\n", a.out.display());
    let value = serde_json::json!({"wrote": a.out, "images": n});
    p.emit(&value, &line, None)
}
