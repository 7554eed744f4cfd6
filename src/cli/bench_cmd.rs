//! `zipmerge bench`: flags -> [`zipmerge::ops::bench`] -> the figures as JSON.

use anyhow::Result;
use clap::Args;

use zipmerge::models::{Arch, NetConfig};
use zipmerge::ops::bench::{bench, BenchPlan};
use zipmerge::ops::bench_train::{bench_train, TrainBenchPlan};

use super::common::{arch_parser, positive, usage, BackendArgs};
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
    /// Batch size (default 250; with `--train`, the one batch size timed instead of 128 and
    /// 500).
    #[arg(long, value_parser = positive)]
    pub batch_size: Option<usize>,
    /// Time training instead (forward + backward + SGD step, images/s at batch 128 and 500):
    /// the CPU engine's training runtime, or burn's autodiff with `ZIPMERGE_ENGINE=burn`.
    #[arg(long)]
    pub train: bool,
    /// Matcher size: features per model (O = 2 x this; default 512).
    #[arg(long, value_parser = positive)]
    pub match_width: Option<usize>,
    #[command(flatten)]
    pub backend: BackendArgs,
}

/// Runs `zipmerge bench`.
pub fn exec(a: BenchArgs, p: &mut Printer) -> Result<()> {
    if a.train {
        if a.match_width.is_some() {
            return Err(usage(
                "--match-width times the matchers; it has no meaning with --train",
            ));
        }
        let plan = TrainBenchPlan {
            cfg: NetConfig {
                arch: a.arch,
                width: a.width,
                out: 10,
            },
            batch_sizes: a.batch_size.map_or_else(|| vec![128, 500], |b| vec![b]),
            images: a.images,
            sample_dir: zipmerge::util::shipped("datasets/cifar10-sample/train"),
            device: a.backend.runner(p)?,
            backend: a.backend.backend.to_string(),
        };
        let report = bench_train(&plan)?;
        let text = serde_json::to_string_pretty(&report)? + "\n";
        return p.emit(&report, &text, None);
    }
    let plan = BenchPlan {
        cfg: NetConfig {
            arch: a.arch,
            width: a.width,
            out: 10,
        },
        images: a.images,
        batch_size: a.batch_size.unwrap_or(250),
        match_width: a.match_width.unwrap_or(512),
        sample_dir: zipmerge::util::shipped("datasets/cifar10-sample/train"),
        device: a.backend.runner(p)?,
        backend: a.backend.backend.to_string(),
    };
    let report = bench(&plan)?;
    let text = serde_json::to_string_pretty(&report)? + "\n";
    p.emit(&report, &text, None)
}
