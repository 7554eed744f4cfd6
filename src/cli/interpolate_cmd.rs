//! `zipmerge interpolate`: flags -> [`InterpolatePlan`] -> [`zipmerge::ops::interpolate::run`]
//! -> the curves' files and a table of the barriers.

use std::path::PathBuf;

use anyhow::Result;
use clap::Args;

use zipmerge::merge::Method;
use zipmerge::ops::interpolate::{name, run, Align, InterpolatePlan};

use super::common::{
    cache_gib, check_out, command_line, count, data_root, experiment_error, positive, usage,
    BackendArgs, Count,
};
use super::printer::Printer;

/// `zipmerge interpolate` flags.
#[derive(Args, Debug, Clone)]
pub struct InterpolateArgs {
    /// The two endpoints, A then B.
    #[arg(long = "model", required = true)]
    pub models: Vec<PathBuf>,
    /// How B is aligned to A first: `permute`, `git-rebasin`, `none`; a comma list draws one
    /// curve each.
    #[arg(long, value_delimiter = ',', default_value = "permute,none", value_parser = ["permute", "git-rebasin", "none"])]
    pub align: Vec<String>,
    /// Points on [0, 1], both ends included.
    #[arg(long, default_value_t = 11, value_parser = positive)]
    pub points: usize,
    /// Probe folder (Permute's statistics, the BN resets); default: the train/ folder of --data.
    #[arg(long)]
    pub probe: Option<PathBuf>,
    /// Probe images of Permute's statistics.
    #[arg(long, default_value = "1000", value_parser = count(1))]
    pub probe_images: Count,
    /// Images of each point's BN reset, and of the endpoints' (`0`: none, the interpolated
    /// running statistics are kept).
    #[arg(long, default_value = "1000", value_parser = count(0))]
    pub bn_reset_images: Count,
    /// Images per batch.
    #[arg(long, default_value_t = 500, value_parser = positive)]
    pub batch_size: usize,
    /// Seed of the draws and of Git Re-Basin's visiting order.
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    /// Data root with train/ and test/ (the points are evaluated on test/); default
    /// $ZIPMERGE_DATA, else datasets/cifar10-sample.
    #[arg(long)]
    pub data: Option<PathBuf>,
    #[command(flatten)]
    pub backend: BackendArgs,
    /// Output folder: interpolate.csv, interpolate.json, interpolate.png.
    #[arg(long)]
    pub out: Option<PathBuf>,
}

/// Runs `zipmerge interpolate`.
pub fn exec(a: InterpolateArgs, p: &mut Printer) -> Result<()> {
    let aligns: Vec<Align> = a
        .align
        .iter()
        .map(|s| match s.as_str() {
            "permute" => Align::Permute,
            "git-rebasin" => Align::GitRebasin,
            _ => Align::None,
        })
        .collect();
    if a.points < 2 {
        return Err(usage(format!(
            "--points {}: expected at least 2 (the ends)",
            a.points
        )));
    }
    if let Some(o) = &a.out {
        check_out(o, &a.models, false)?;
    }
    let root = data_root(a.data.as_deref());
    let mut settings = zipmerge::merge::MergeSettings::new(Method::WeightAvg);
    settings.probe_images = a.probe_images.0;
    settings.bn_reset_images = a.bn_reset_images.0;
    settings.endpoint_bn_reset = a.bn_reset_images.0 != Some(0);
    settings.batch_size = a.batch_size;
    settings.seed = a.seed;
    let plan = InterpolatePlan {
        models: a.models.clone(),
        align: aligns[0],
        points: a.points,
        settings,
        probe_dir: a
            .probe
            .clone()
            .unwrap_or_else(|| zipmerge::data::split_dir(&root, "train")),
        test_root: root,
        cache_gib: cache_gib()?,
        device: a.backend.runner(p)?,
        backend: a.backend.backend.to_string(),
        command: command_line(),
    };
    let reports = run(&plan, &aligns, a.out.as_deref(), p).map_err(experiment_error)?;
    let mut text = String::from(
        "| align | joint at t=0 | worst joint (t) | joint at t=1 | accuracy barrier | loss barrier |\n|---|---|---|---|---|---|\n",
    );
    for r in &reports {
        let (first, last) = (&r.points[0], &r.points[r.points.len() - 1]);
        text.push_str(&format!(
            "| {} | {:.2} | {:.2} ({:.2}) | {:.2} | {:.2} | {:.4} |\n",
            name(r.align),
            first.accuracy.joint,
            r.worst_joint.0,
            r.worst_joint.1,
            last.accuracy.joint,
            r.accuracy_barrier,
            r.loss_barrier
        ));
    }
    let note = a.out.as_ref().map(|o| format!("wrote {}", o.display()));
    p.emit(&reports, &text, note)
}
