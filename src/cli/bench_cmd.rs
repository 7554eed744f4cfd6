//! `zipmerge bench`: flags -> [`zipmerge::ops::bench`] -> the figures as JSON.

use anyhow::Result;
use clap::Args;

use zipmerge::models::{Arch, NetConfig};
use zipmerge::ops::bench::{bench, BenchPlan};

use super::common::{arch_parser, positive, BackendArgs};
use super::printer::Printer;

/// Arguments of `zipmerge bench`.
#[derive(Args, Debug)]
pub struct BenchArgs {
    /// Architecture.
    #[arg(long, default_value = "resnet20", value_parser = arch_parser())]
    pub arch: Arch,
    /// Width multiplier.
    #[arg(long, default_value_t = 1)]
    pub width: usize,
    /// Images per measurement (the embedded sample, repeated as needed).
    #[arg(long, default_value_t = 1000, value_parser = positive)]
    pub images: usize,
    /// Batch size.
    #[arg(long, default_value_t = 250, value_parser = positive)]
    pub batch_size: usize,
    /// Matcher size: features per model (O = 2 x this).
    #[arg(long, default_value_t = 512, value_parser = positive)]
    pub match_width: usize,
    #[command(flatten)]
    pub backend: BackendArgs,
}

/// Runs `zipmerge bench`.
pub fn exec(a: BenchArgs, p: &mut Printer) -> Result<()> {
    let plan = BenchPlan {
        cfg: NetConfig {
            arch: a.arch,
            width: a.width,
            out: 10,
        },
        images: a.images,
        batch_size: a.batch_size,
        match_width: a.match_width,
        sample_dir: zipmerge::util::shipped("datasets/cifar10-sample/train"),
        device: a.backend.runner(p)?,
        backend: a.backend.backend.to_string(),
    };
    let report = bench(&plan)?;
    let text = serde_json::to_string_pretty(&report)? + "\n";
    p.emit(&report, &text, None)
}
