//! `zipmerge sweep` (every stop of one method), `zipmerge reproduce table1` (the ZipIt!
//! Table 1 layout over endpoint groups) and `reproduce grid`: flags -> plan ->
//! [`zipmerge::experiments`] -> files and printed tables.

use std::path::PathBuf;

use anyhow::Result;
use clap::{Args, Subcommand};

use zipmerge::experiments::prepare::{find_groups, rows_markdown, FoundGroups};
use zipmerge::ops::grid::GridPlan;
use zipmerge::ops::sweep::SweepPlan;
use zipmerge::ops::table1::Table1Plan;

use super::common::{
    check_out, count, default_out, experiment_error, first_given, merge_error, usage, Count,
};
use super::merge_args::{DataArgs, MergeSettings};
use super::printer::Printer;
use zipmerge::progress::Observer;

/// Arguments of `zipmerge sweep`.
#[derive(Args, Debug)]
pub struct SweepArgs {
    /// Source models (two or more).
    #[arg(long = "model", required = true)]
    pub models: Vec<PathBuf>,
    /// Stops: `all` or a comma list (`7/20,13/20`).
    #[arg(long, default_value = "all")]
    pub stops: String,
    #[command(flatten)]
    pub settings: MergeSettings,
    #[command(flatten)]
    pub data: DataArgs,
    /// Output folder for tables/reports.
    #[arg(long)]
    pub out: Option<PathBuf>,
}

/// Reproducible experiments.
#[derive(Subcommand, Debug)]
pub enum Reproduce {
    /// ZipIt! Table 1 layout: Model A, Model B, W.Avg, Git Re-Basin, Permute, ZipIt!20/20,
    /// Ensemble, ZipIt!13/20, ZipIt!7/20.
    Table1(Table1Args),
    /// The paper's alpha/beta grid search at one stop (statistics collected once): grid.csv,
    /// grid.png heat map, best (alpha, beta) by joint accuracy.
    Grid(GridArgs),
    /// The TIES paper's vision table on fine-tunes of one base: base, fine-tunes, their
    /// average, Task Arithmetic / TIES / DARE-TIES (chosen on a validation split of the train
    /// folder), TIES defaults, ZipIt! and Permute; 2..N tasks.
    Tasks(TasksArgs),
}

/// Task Arithmetic's lambda grid (the TIES repository's 0.1 ... 1.0).
const TA_LAMBDAS: [f64; 10] = [0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 1.0];
/// TIES's lambda grid (the paper's 0.8 ... 3.0, coarser).
const TIES_LAMBDAS: [f64; 7] = [0.8, 1.0, 1.2, 1.5, 2.0, 2.5, 3.0];
/// TIES's density grid (the paper's).
const DENSITIES: [f64; 3] = [0.1, 0.2, 0.3];
/// DARE-TIES's drop grid.
const DROPS: [f64; 2] = [0.5, 0.9];
/// DARE-TIES's lambda grid.
const DARE_LAMBDAS: [f64; 4] = [0.6, 0.8, 1.0, 1.2];

/// Refuses a search grid with a value that is not a finite number >= 0, naming `flag`.
fn check_grid(flag: &str, grid: &[f64]) -> Result<()> {
    if grid.iter().any(|v| !v.is_finite() || *v < 0.0) {
        return Err(usage(format!("{flag}: expected finite numbers >= 0")));
    }
    Ok(())
}

/// Arguments of `zipmerge reproduce tasks`.
#[derive(Args, Debug)]
pub struct TasksArgs {
    /// Folder holding `base/` and the fine-tunes `<name>-a`, `<name>-b`, ...
    #[arg(long, default_value = "models/cifar10-ft")]
    pub pairs: PathBuf,
    /// The base model (default: PAIRS/base).
    #[arg(long)]
    pub base: Option<PathBuf>,
    /// Validation images carved from the train folder (seeded, disjoint from the BN-reset
    /// draws); they alone choose lambda and k.
    #[arg(long, default_value_t = 2000, value_parser = super::common::positive)]
    pub val_images: usize,
    /// Seed of the validation draw.
    #[arg(long, default_value_t = 0)]
    pub val_seed: u64,
    /// Seeds of the BN-reset draws and DARE's drops (mean ± std over them).
    #[arg(long, value_delimiter = ',', default_value = "0")]
    pub seeds: Vec<u64>,
    /// Numbers of tasks merged (the first n fine-tunes); default 2..=N.
    #[arg(long, value_delimiter = ',')]
    pub counts: Option<Vec<usize>>,
    /// Task Arithmetic's lambda grid (the TIES repository's 0.1 ... 1.0).
    #[arg(long, value_delimiter = ',', default_values_t = TA_LAMBDAS)]
    pub ta_lambdas: Vec<f64>,
    /// TIES's lambda grid (the paper's 0.8 ... 3.0, coarser).
    #[arg(long, value_delimiter = ',', default_values_t = TIES_LAMBDAS)]
    pub ties_lambdas: Vec<f64>,
    /// TIES's density grid (the paper's 0.1, 0.2, 0.3).
    #[arg(long, value_delimiter = ',', default_values_t = DENSITIES)]
    pub densities: Vec<f64>,
    /// DARE-TIES's drop grid.
    #[arg(long, value_delimiter = ',', default_values_t = DROPS)]
    pub drops: Vec<f64>,
    /// DARE-TIES's lambda grid.
    #[arg(long, value_delimiter = ',', default_values_t = DARE_LAMBDAS)]
    pub dare_lambdas: Vec<f64>,
    /// Leave out ZipIt! and Permute of the fine-tunes.
    #[arg(long)]
    pub no_alignment: bool,
    /// BN-reset images of every merge.
    #[arg(long, default_value_t = 1000, value_parser = super::common::positive)]
    pub bn_reset_images: usize,
    /// Images per batch.
    #[arg(long, default_value_t = 500, value_parser = super::common::positive)]
    pub batch_size: usize,
    /// Data root (train/ and test/).
    #[arg(long)]
    pub data: Option<PathBuf>,
    /// Write tasks.json and tasks.md here.
    #[arg(long)]
    pub out: Option<PathBuf>,
}

/// The paper's alpha grid (reference doc §7).
const PAPER_ALPHAS: &str = "1,0.5,0.3,0.1,0.01,0.0001";
/// The paper's beta grid.
const PAPER_BETAS: &str = "1,0.25,0.125,0.075,0.0375,0";

/// Arguments of `zipmerge reproduce grid`.
#[derive(Args, Debug)]
pub struct GridArgs {
    /// Source models (two).
    #[arg(long = "model", required = true)]
    pub models: Vec<PathBuf>,
    /// Stop of the zip (the reference's grid search uses node 21 = `7/20` for ResNet-20).
    #[arg(long, default_value = "7/20")]
    pub stop: String,
    /// Alpha values (the paper's grid by default).
    #[arg(long, value_delimiter = ',', default_value = PAPER_ALPHAS)]
    pub alphas: Vec<f64>,
    /// Beta values (the paper's grid by default).
    #[arg(long, value_delimiter = ',', default_value = PAPER_BETAS)]
    pub betas: Vec<f64>,
    /// Evaluate the chosen cell, once, on this many test images (seeded subset; `all` = every
    /// image). The cells are scored on `--val-images`.
    #[arg(long, default_value = "all", value_parser = count(1))]
    pub eval_images: Count,
    /// Do not evaluate the chosen cell on the test set (the test folder is not read).
    #[arg(long)]
    pub no_test: bool,
    /// Task-vector methods (`--method task-arithmetic | ties | dare-ties`): the base the
    /// `--model` fine-tunes start from; the grid then searches lambda (and the density or the
    /// drop) on a validation split of the train folder (as `reproduce tasks`).
    #[arg(long)]
    pub base: Option<PathBuf>,
    /// Task-vector methods: the lambda grid (default: the method's grid of `reproduce tasks`).
    #[arg(long, value_delimiter = ',')]
    pub lambdas: Option<Vec<f64>>,
    /// TIES: the density grid (default 0.1,0.2,0.3).
    #[arg(long, value_delimiter = ',')]
    pub densities: Option<Vec<f64>>,
    /// DARE-TIES: the drop grid (default 0.5,0.9).
    #[arg(long, value_delimiter = ',')]
    pub drops: Option<Vec<f64>>,
    /// Validation images carved from the train folder (seeded, disjoint from the probe and
    /// BN-reset draws): every cell is scored on them, and the best is chosen there.
    #[arg(long, default_value_t = 2000, value_parser = super::common::positive)]
    pub val_images: usize,
    #[command(flatten)]
    pub settings: MergeSettings,
    #[command(flatten)]
    pub data: DataArgs,
    /// Output folder for tables/reports.
    #[arg(long)]
    pub out: Option<PathBuf>,
}

/// Arguments of `zipmerge reproduce table1`.
#[derive(Args, Debug)]
pub struct Table1Args {
    /// Folder of endpoint pairs: model folders named `<name>-a` / `<name>-b`.
    #[arg(long, default_value = "models/cifar10-5+5")]
    pub pairs: PathBuf,
    /// Only pairs whose name contains this (e.g. `resnet20x1`).
    #[arg(long)]
    pub filter: Option<String>,
    /// Add the paper's published CIFAR-10 5+5 joint accuracies (ResNet-20 x4, CLIP heads).
    #[arg(long)]
    pub paper: bool,
    /// Add issue 12's rows on the same checkpoints and statistics: CCA Merge, and every method
    /// with REPAIR, the closed-form refit (--refit-ridge) and both, at the full zip; ZipIt!
    /// with them at the partial stops.
    #[arg(long)]
    pub extended: bool,
    /// Run every group with each of these seeds (probe and BN-reset draws, Git Re-Basin's
    /// order) and report mean +- std over the runs (instead of `--seed`).
    #[arg(long, value_delimiter = ',')]
    pub seeds: Option<Vec<u64>>,
    #[command(flatten)]
    pub settings: MergeSettings,
    #[command(flatten)]
    pub data: DataArgs,
    /// Output folder for tables/reports.
    #[arg(long)]
    pub out: Option<PathBuf>,
}

/// Runs `zipmerge sweep`.
pub fn exec_sweep(a: SweepArgs, p: &mut Printer) -> Result<()> {
    let m = &a.settings.matcher.method;
    if super::merge_args::TASK_VECTOR_METHODS.contains(&m.as_str()) {
        return Err(usage(format!(
            "--method {m}: a task-vector merge has no stops (the whole network is merged); search its lambda and density with `reproduce grid --method {m} --base BASE` or `reproduce tasks`"
        )));
    }
    let settings = a.settings.library()?;
    let out = a.out.clone().unwrap_or_else(|| default_out("sweep"));
    check_out(&out, &a.models, false)?;
    let plan = SweepPlan {
        models: a.models.clone(),
        stops: (a.stops != "all").then(|| a.stops.split(',').map(str::to_string).collect()),
        inputs: a.data.inputs(&a.settings, p)?,
        settings,
    };
    if a.out.is_none() {
        use zipmerge::progress::Observer;
        p.warn(&format!(
            "note: no --out: writing sweep.csv, sweep.json, sweep.png and sweep.svg to {}",
            out.display()
        ));
    }
    let r = zipmerge::ops::sweep::run(&plan, Some(&out), p).map_err(|e| match e {
        // the sweep's option is --stops
        zipmerge::error::ExperimentError::Merge(zipmerge::error::MergeError::Param {
            param: zipmerge::error::MergeParam::Stop,
            value,
            expected,
        }) => usage(format!("--stops `{value}`: {expected}")),
        e => experiment_error(e),
    })?;
    let note = format!(
        "statistics computed {} time(s), matching run {} time(s); {:.1}s in all",
        r.counters.statistics_passes, r.counters.matching_runs, r.seconds
    );
    p.emit(&r, &rows_markdown(&r.rows), Some(note))
}

/// Runs `zipmerge reproduce`.
pub fn exec_reproduce(a: Reproduce, p: &mut Printer) -> Result<()> {
    match a {
        Reproduce::Table1(a) => exec_table1(a, p),
        Reproduce::Grid(a) => exec_grid(a, p),
        Reproduce::Tasks(a) => exec_tasks(a, p),
    }
}

/// One `warning:` line per endpoint group of `--pairs DIR` that cannot be used, and why.
fn warn_skipped(pairs: &std::path::Path, found: &FoundGroups, p: &mut Printer) {
    for why in &found.skipped {
        p.warn(&format!("warning: --pairs {}: {why}", pairs.display()));
    }
}

fn exec_tasks(a: TasksArgs, p: &mut Printer) -> Result<()> {
    use zipmerge::ops::tasks::TasksPlan;
    let mut a = a;
    a.pairs = zipmerge::util::shipped(&a.pairs.to_string_lossy());
    let found = find_groups(&a.pairs, None)?;
    warn_skipped(&a.pairs, &found, p);
    let Some((_, models)) = found.groups.into_iter().next() else {
        return Err(usage("--pairs: no group of fine-tunes"));
    };
    let base = a.base.clone().unwrap_or_else(|| a.pairs.join("base"));
    let grids = [
        ("--ta-lambdas", &a.ta_lambdas),
        ("--ties-lambdas", &a.ties_lambdas),
        ("--densities", &a.densities),
        ("--drops", &a.drops),
        ("--dare-lambdas", &a.dare_lambdas),
    ];
    for (flag, g) in grids {
        if g.is_empty() {
            return Err(usage(format!("{flag}: expected finite numbers >= 0")));
        }
        check_grid(flag, g)?;
    }
    let plan = TasksPlan {
        counts: a
            .counts
            .clone()
            .unwrap_or_else(|| (2..=models.len()).collect()),
        base,
        models: models.clone(),
        data_root: super::common::data_root(a.data.as_deref()),
        val_images: a.val_images,
        val_seed: a.val_seed,
        bn_reset_images: a.bn_reset_images,
        seeds: a.seeds.clone(),
        ta_lambdas: a.ta_lambdas.clone(),
        ties_lambdas: a.ties_lambdas.clone(),
        densities: a.densities.clone(),
        drops: a.drops.clone(),
        dare_lambdas: a.dare_lambdas.clone(),
        alignment: !a.no_alignment,
        batch_size: a.batch_size,
        cache_gib: super::common::cache_gib()?,
        device: super::common::engine_choice(burn::tensor::Device::flex()),
        command: super::common::command_line(),
    };
    run_tasks(plan, a.out.as_deref(), &models, p)
}

/// `reproduce grid --method task-arithmetic | ties | dare-ties --base B`: the method's lambda
/// (and density or drop) grid on a validation split of the train folder, with the base, the
/// fine-tunes, their average and TIES's defaults as references ([`TasksPlan`] with one count,
/// one seed and only this method's grid).
fn exec_grid_task_vectors(a: GridArgs, p: &mut Printer) -> Result<()> {
    use zipmerge::ops::tasks::TasksPlan;
    let m = a.settings.matcher.method.clone();
    if super::common::given_flags().contains("--eval-images") {
        return Err(usage(format!(
            "--eval-images applies to the ZipIt! grid; --method {m} evaluates the chosen knobs on the whole test set"
        )));
    }
    if a.no_test {
        return Err(usage(format!(
            "--no-test applies to the ZipIt! grid; --method {m} reports the chosen knobs' test accuracy with its table"
        )));
    }
    let Some(base) = a.base.clone() else {
        return Err(usage(format!(
            "--method {m} needs --base BASE (the model the --model fine-tunes start from)"
        )));
    };
    let lambdas = |d: &[f64]| a.lambdas.clone().unwrap_or_else(|| d.to_vec());
    let (mut ta, mut ties, mut dens, mut drops, mut dare) =
        (vec![], vec![], vec![], vec![], vec![]);
    let unused: &[(&str, bool)] = match m.as_str() {
        "task-arithmetic" => {
            ta = lambdas(&TA_LAMBDAS);
            &[
                ("--densities", a.densities.is_some()),
                ("--drops", a.drops.is_some()),
            ]
        }
        "ties" => {
            ties = lambdas(&TIES_LAMBDAS);
            dens = a.densities.clone().unwrap_or_else(|| DENSITIES.to_vec());
            &[("--drops", a.drops.is_some())]
        }
        "dare-ties" => {
            dare = lambdas(&DARE_LAMBDAS);
            drops = a.drops.clone().unwrap_or_else(|| DROPS.to_vec());
            &[("--densities", a.densities.is_some())]
        }
        _ => {
            return Err(usage(format!(
                "--method {m}: the grid searches zipit, task-arithmetic, ties or dare-ties"
            )))
        }
    };
    if let Some(flag) = first_given(unused) {
        return Err(usage(format!("{flag} has no effect with --method {m}")));
    }
    if a.stop != "7/20" {
        return Err(usage(format!(
            "--stop has no effect with --method {m}: the whole network is merged"
        )));
    }
    for (flag, g) in [
        ("--lambdas", &ta),
        ("--lambdas", &ties),
        ("--lambdas", &dare),
        ("--densities", &dens),
        ("--drops", &drops),
    ] {
        check_grid(flag, g)?;
    }
    let s = &a.settings;
    let plan = TasksPlan {
        counts: vec![a.models.len()],
        base,
        models: a.models.clone(),
        data_root: super::common::data_root(a.data.data.as_deref()),
        val_images: a.val_images,
        val_seed: 0,
        bn_reset_images: s.bn_reset_images.0.unwrap_or(1000),
        seeds: vec![s.seed],
        ta_lambdas: ta,
        ties_lambdas: ties,
        densities: dens,
        drops,
        dare_lambdas: dare,
        alignment: false,
        batch_size: s.batch_size,
        cache_gib: super::common::cache_gib()?,
        device: a.data.backend.runner(p)?,
        command: super::common::command_line(),
    };
    run_tasks(plan, a.out.as_deref(), &a.models, p)
}

/// Runs a [`zipmerge::ops::tasks::TasksPlan`], writes its outputs into `out`, prints.
fn run_tasks(
    plan: zipmerge::ops::tasks::TasksPlan,
    out: Option<&std::path::Path>,
    models: &[PathBuf],
    p: &mut Printer,
) -> Result<()> {
    let mut inputs = models.to_vec();
    inputs.push(plan.base.clone());
    if let Some(o) = out {
        check_out(o, &inputs, false)?;
    }
    let r = zipmerge::ops::tasks::run(&plan, out, p).map_err(experiment_error)?;
    let mut text = r.markdown.clone();
    for row in r.rows.iter().filter(|r| !r.candidates.is_empty()) {
        text += &format!("\n{} (seed {}), validation scores:\n", row.method, row.seed);
        for (knobs, v) in &row.candidates {
            text += &format!("  {knobs}: {:.2}%\n", 100.0 * v);
        }
    }
    let note = format!("{} rows, {:.1}s", r.rows.len(), r.seconds);
    p.emit(&r, &text, Some(note))
}

fn exec_grid(a: GridArgs, p: &mut Printer) -> Result<()> {
    if super::merge_args::TASK_VECTOR_METHODS.contains(&a.settings.matcher.method.as_str()) {
        return exec_grid_task_vectors(a, p);
    }
    if let Some(flag) = first_given(&[
        ("--base", a.base.is_some()),
        ("--lambdas", a.lambdas.is_some()),
        ("--densities", a.densities.is_some()),
        ("--drops", a.drops.is_some()),
    ]) {
        return Err(usage(format!(
            "{flag} applies to the task-vector methods (--method task-arithmetic, ties or dare-ties)"
        )));
    }
    if a.alphas.is_empty() || a.betas.is_empty() {
        return Err(usage("--alphas/--betas: expected at least one value each"));
    }
    let m = &a.settings.matcher;
    if m.method != "zipit" {
        return Err(usage(format!(
            "--method {}: reproduce grid searches ZipIt!'s alpha and beta; it runs zipit only",
            m.method
        )));
    }
    if let Some(flag) = first_given(&[("--alpha", m.alpha.is_some()), ("--beta", m.beta.is_some())])
    {
        return Err(usage(format!(
            "{flag} has no effect: the grid searches --alphas and --betas"
        )));
    }
    let settings = a.settings.library()?;
    let out = a.out.clone().unwrap_or_else(|| default_out("grid"));
    check_out(&out, &a.models, false)?;
    let plan = GridPlan {
        models: a.models.clone(),
        stop: a.stop.clone(),
        alphas: a.alphas.clone(),
        betas: a.betas.clone(),
        val_images: a.val_images,
        eval_images: a.eval_images.0,
        test: !a.no_test,
        inputs: a.data.inputs(&a.settings, p)?,
        settings,
    };
    if a.out.is_none() {
        use zipmerge::progress::Observer;
        p.warn(&format!(
            "note: no --out: writing grid.csv, grid.json and grid.png to {}",
            out.display()
        ));
    }
    let r = zipmerge::ops::grid::run(&plan, Some(&out), p).map_err(experiment_error)?;
    let b = &r.best;
    let test = b
        .test
        .as_ref()
        .map_or("not evaluated on test (--no-test)".into(), |t| {
            format!(
                "test joint {:.2}%, avg {:.2}% ({} images)",
                t.joint, t.avg, r.test_images
            )
        });
    let best = format!(
        "chosen on {} validation images: alpha {} beta {} (validation joint {:.2}%) at {}; {test}\n",
        r.val_images, b.alpha, b.beta, b.joint, r.stop
    );
    p.emit(&r, &(r.csv() + &best), None)
}

fn exec_table1(mut a: Table1Args, p: &mut Printer) -> Result<()> {
    a.pairs = zipmerge::util::shipped(&a.pairs.to_string_lossy());
    let s = &a.settings;
    if s.matcher.method != "zipit" {
        return Err(usage(format!(
            "--method {}: reproduce table1 runs its fixed rows (W.Avg, Git Re-Basin, Permute, ZipIt!); --method has no effect",
            s.matcher.method
        )));
    }
    if !a.extended {
        if let Some(flag) = first_given(&[
            ("--cca-reg", s.matcher.cca_reg.is_some()),
            ("--dual-lambda", s.dual_lambda.is_some()),
        ]) {
            return Err(usage(format!(
                "{flag} sets the --extended rows; it has no effect without --extended"
            )));
        }
    }
    let dual_lambda = s
        .dual_lambda
        .unwrap_or(super::merge_args::DEFAULT_DUAL_LAMBDA);
    zipmerge::merge::check_dual_lambda(dual_lambda).map_err(merge_error)?;
    // the standard rows' settings: ZipIt! with the reference's similarity; the extended rows'
    // CCA ridge and dual lambda are taken separately below
    let mut zipit = s.clone();
    zipit.matcher.cca_reg = None;
    zipit.dual_lambda = None;
    let settings = zipit.library()?;
    let found = find_groups(&a.pairs, a.filter.as_deref())?;
    warn_skipped(&a.pairs, &found, p);
    if !found.skipped.is_empty() {
        let names: Vec<&str> = found.groups.iter().map(|(n, _)| n.as_str()).collect();
        p.warn(&format!(
            "note: running the complete groups only: {}",
            names.join(", ")
        ));
    }
    let groups = found.groups;
    let inputs: Vec<PathBuf> = groups.iter().flat_map(|(_, m)| m.iter().cloned()).collect();
    a.out
        .as_deref()
        .map_or(Ok(()), |o| check_out(o, &inputs, false))?;
    if a.seeds.is_some() && super::common::given_flags().contains("--seed") {
        return Err(usage(
            "--seed and --seeds: give one (--seeds runs each seed and reports mean +- std)",
        ));
    }
    let plan = Table1Plan {
        groups,
        seeds: a.seeds.clone().unwrap_or_default(),
        paper: a.paper,
        extended: a.extended,
        refit_ridge: s.refit_ridge,
        dual_lambda,
        cca_reg: s
            .matcher
            .cca_reg
            .unwrap_or(zipmerge::matching::cca::DEFAULT_CCA_REG),
        inputs: a.data.inputs(s, p)?,
        settings,
    };
    let r = zipmerge::ops::table1::run(&plan, a.out.as_deref(), p).map_err(experiment_error)?;
    let seeds = match plan.seeds.len() {
        0 | 1 => String::new(),
        n => format!(
            " x {n} seeds (mean +- std over the {} runs)",
            n * plan.groups.len()
        ),
    };
    let note = format!(
        "{} pair(s){seeds}, {} test images, {:.1}s",
        plan.groups.len(),
        r.test_images,
        r.seconds
    );
    p.emit(&r, &r.markdown, Some(note))
}
