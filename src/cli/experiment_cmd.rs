//! `zipmerge sweep` (every stop of one method) and `zipmerge reproduce table1` (the ZipIt!
//! Table 1 layout over endpoint pairs). Statistics are collected once per pair.

use std::path::{Path, PathBuf};
use std::time::Instant;

use anyhow::{bail, Context, Result};
use clap::{Args, Subcommand};
use serde_json::json;

use zipmerge::correct::Corrections;
use zipmerge::data::{ImageSet, SparseSet};
use zipmerge::experiments::table::{aggregate, csv, markdown};
use zipmerge::experiments::{match_all, Context as Exp, Counters, Row};
use zipmerge::merge::{self, Endpoints, Method, Statistics};
use zipmerge::util::write_atomic;

use super::common::{
    bar, check_out_not_input, data_root, load_split, merge_error, preprocess_of, usage,
    warn_dead_units, BackendArgs,
};
use super::merge_cmd::MergeSettings;

/// Data and output options shared by the experiment commands.
#[derive(Args, Debug, Clone)]
pub struct ExperimentIo {
    /// Data root with train/ (probe and BN-reset images) and test/ (evaluation); default
    /// $ZIPMERGE_DATA, else datasets/cifar10-sample.
    #[arg(long)]
    pub data: Option<PathBuf>,
    /// Evaluate on this root's test/ folder instead of --data's.
    #[arg(long)]
    pub eval_data: Option<PathBuf>,
    /// Output folder for tables/reports.
    #[arg(long)]
    pub out: Option<PathBuf>,
    /// Print JSON only.
    #[arg(long)]
    pub json: bool,
    /// No progress bars.
    #[arg(long, short)]
    pub quiet: bool,
}

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
    pub io: ExperimentIo,
    #[command(flatten)]
    pub backend: BackendArgs,
}

/// `zipmerge reproduce ...`.
#[derive(Args, Debug)]
pub struct ReproduceArgs {
    /// What to reproduce.
    #[command(subcommand)]
    pub what: Reproduce,
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
}

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
    #[arg(
        long,
        value_delimiter = ',',
        default_value = "1,0.5,0.3,0.1,0.01,0.0001"
    )]
    pub alphas: Vec<f64>,
    /// Beta values (the paper's grid by default).
    #[arg(
        long,
        value_delimiter = ',',
        default_value = "1,0.25,0.125,0.075,0.0375,0"
    )]
    pub betas: Vec<f64>,
    /// Evaluate each cell on this many test images (seeded subset; `all` = every image).
    #[arg(long, default_value = "all")]
    pub eval_images: String,
    #[command(flatten)]
    pub settings: MergeSettings,
    #[command(flatten)]
    pub io: ExperimentIo,
    #[command(flatten)]
    pub backend: BackendArgs,
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
    #[command(flatten)]
    pub settings: MergeSettings,
    #[command(flatten)]
    pub io: ExperimentIo,
    #[command(flatten)]
    pub backend: BackendArgs,
}

/// Computes one table row, reporting evaluation progress.
type RowFn<'a> = dyn FnMut(&mut dyn FnMut(usize)) -> Result<Row, zipmerge::error::MergeError> + 'a;

/// Loaded inputs of one pair.
struct Prepared {
    ep: Endpoints,
    bn: Vec<Vec<Vec<u8>>>,
    probe: Vec<Vec<Vec<u8>>>,
    tasks: Vec<Vec<usize>>,
}

/// Checks `--out` before any work: not a file, not one of the input models, and creatable (its
/// nearest existing ancestor is a folder). Nothing is created until the results are written.
fn check_out(io: &ExperimentIo, inputs: &[PathBuf]) -> Result<()> {
    let Some(out) = &io.out else { return Ok(()) };
    check_out_not_input(out, inputs)?;
    let mut at = out.as_path();
    while !at.as_os_str().is_empty() && !at.exists() {
        at = at.parent().unwrap_or(Path::new(""));
    }
    if !at.as_os_str().is_empty() && !at.is_dir() {
        return Err(usage(format!(
            "--out {}: {} is a file, so the folder cannot be created",
            out.display(),
            at.display()
        )));
    }
    Ok(())
}

/// Loads and validates one group of endpoints and checks that every method the experiment will
/// run applies to it (e.g. Git Re-Basin needs exactly two models), before any image is decoded.
fn load_endpoints(models: &[PathBuf], methods: &[Method], eps: f64) -> Result<Endpoints> {
    let ep = Endpoints::load(models).map_err(merge_error)?;
    for m in methods {
        merge::check_method(&ep, m, eps).map_err(merge_error)?;
    }
    Ok(ep)
}

/// The task (class ids of the first head) of each endpoint, checked against the test set: every
/// class must be in it and have images, as `eval` requires.
fn tasks_checked(ep: &Endpoints, test: &ImageSet) -> Result<Vec<Vec<usize>>> {
    let tasks = ep.tasks();
    zipmerge::eval::runner::check_evaluation(&ep.heads(), test, &tasks)?;
    Ok(tasks)
}

fn prepare(
    mut ep: Endpoints,
    tasks: Vec<Vec<usize>>,
    s: &MergeSettings,
    train: &SparseSet,
    device: &burn::tensor::Device,
    quiet: bool,
    counters: &mut Counters,
) -> Result<(Prepared, Statistics)> {
    let bn = s.bn_batches(train)?;
    let probe = s.probe_batches(train)?;
    if !s.no_endpoint_bn_reset && !bn.is_empty() {
        let pb = bar(
            (bn.iter().map(Vec::len).sum::<usize>() * ep.n()) as u64,
            "endpoint BN",
            quiet,
        );
        ep.reset_bn(&bn, device, &mut |k| pb.inc(k as u64))?;
        pb.finish_and_clear();
    }
    let pb = bar(
        probe.iter().map(Vec::len).sum::<usize>() as u64,
        "statistics",
        quiet,
    );
    let stats = merge::statistics(&ep, &probe, device, &mut |k| pb.inc(k as u64))?;
    pb.finish_and_clear();
    counters.statistics_passes += stats.passes;
    warn_dead_units(&stats, &ep.spec.spaces);
    Ok((
        Prepared {
            ep,
            bn,
            probe,
            tasks,
        },
        stats,
    ))
}

impl Prepared {
    /// The experiment context of these endpoints on `test`.
    fn context<'a>(
        &'a self,
        test: &'a ImageSet,
        s: &MergeSettings,
        device: &'a burn::tensor::Device,
    ) -> Exp<'a> {
        Exp::new(
            &self.ep,
            &self.bn,
            test,
            &self.tasks,
            s.batch_size,
            device,
            s.merge_eps,
        )
        .with_probe(&self.probe)
    }
}

fn eval_bar(
    test: &ImageSet,
    tasks: &[Vec<usize>],
    label: &str,
    quiet: bool,
) -> indicatif::ProgressBar {
    let n = (0..test.len())
        .filter(|&i| tasks.iter().any(|t| t.contains(&test.labels[i])))
        .count();
    bar(n as u64, label, quiet)
}

fn print_rows(rows: &[Row]) {
    let lines = aggregate(&[rows.to_vec()], false);
    print!("{}", markdown(&lines));
}

/// Runs `zipmerge sweep`.
pub fn exec_sweep(a: SweepArgs) -> Result<()> {
    let quiet = a.io.quiet || a.io.json;
    let method = a.settings.method()?;
    let lambda = a.settings.dual_lambda(&method)?;
    let corrections = a.settings.corrections();
    corrections.check().map_err(merge_error)?;
    a.settings.probe_count()?;
    a.settings.bn_count()?;
    check_out(&a.io, &a.models)?;
    let device = a.backend.device(quiet)?;
    let ep = load_endpoints(
        &a.models,
        std::slice::from_ref(&method),
        a.settings.merge_eps,
    )?;
    let stops = if a.stops == "all" {
        ep.spec.stops()
    } else {
        a.stops
            .split(',')
            .map(|s| ep.spec.stop(s.trim()))
            .collect::<Result<_, _>>()
            .map_err(merge_error)?
    };
    let (train, test) = load_data(&a.io, &a.settings, a.models.first(), quiet)?;
    let tasks = tasks_checked(&ep, &test)?;
    let t0 = Instant::now();
    let mut counters = Counters::default();
    let (p, stats) = prepare(
        ep,
        tasks,
        &a.settings,
        &train,
        &device,
        quiet,
        &mut counters,
    )?;
    let transforms = match_all(
        &p.ep,
        &method,
        method.needs_statistics().then_some(&stats),
        a.settings.merge_eps,
        lambda,
        &mut counters,
    )?;
    let exp = p.context(&test, &a.settings, &device);
    let mut rows = Vec::new();
    for i in 0..p.ep.n() {
        let label = format!("Model {}", (b'A' + i as u8) as char);
        let pb = eval_bar(&test, &p.tasks, &label, quiet);
        rows.push(exp.endpoint_row(i, &label, &mut |k| pb.inc(k as u64))?);
        pb.finish_and_clear();
    }
    for st in &stops {
        let label = format!("{}{}{}", method.label(), st.name, corrections.label());
        let pb = eval_bar(&test, &p.tasks, &label, quiet);
        rows.push(
            exp.corrected_row(&label, &transforms, st, true, &corrections, &mut |k| {
                pb.inc(k as u64)
            })?,
        );
        pb.finish_and_clear();
    }
    let pb = eval_bar(&test, &p.tasks, "ensemble", quiet);
    rows.push(exp.ensemble_row(&mut |k| pb.inc(k as u64))?);
    pb.finish_and_clear();
    let report = json!({
        "method": method, "rows": rows, "counters": counters,
        "probe_images": p.probe.iter().map(Vec::len).sum::<usize>(),
        "bn_reset_images": p.bn.iter().map(Vec::len).sum::<usize>(),
        "test_images": test.len(), "seconds": t0.elapsed().as_secs_f64(),
        "models": a.models.iter().map(|m| m.display().to_string()).collect::<Vec<_>>(),
    });
    if let Some(out) = &a.io.out {
        write_sweep(out, &rows, &report)?;
    }
    if a.io.json {
        println!("{}", serde_json::to_string(&report)?);
    } else {
        print_rows(&rows);
        eprintln!(
            "statistics computed {} time(s), matching run {} time(s); {:.1}s in all",
            counters.statistics_passes,
            counters.matching_runs,
            t0.elapsed().as_secs_f64()
        );
    }
    Ok(())
}

fn write_sweep(out: &Path, rows: &[Row], report: &serde_json::Value) -> Result<()> {
    let mut c = String::from(
        "label,stop,zipped_layers,total_layers,flops,joint,task_a,task_b,avg,seconds\n",
    );
    for r in rows {
        let t = |i: usize| {
            r.accuracy
                .tasks
                .get(i)
                .map_or(String::new(), |x| format!("{:.4}", x.accuracy))
        };
        c.push_str(&format!(
            "{},{},{},{},{},{:.4},{},{},{:.4},{:.3}\n",
            r.label,
            r.stop.clone().unwrap_or_default(),
            r.zipped_layers.map_or(String::new(), |z| z.to_string()),
            r.total_layers,
            r.flops,
            r.accuracy.joint,
            t(0),
            t(1),
            r.accuracy.avg,
            r.seconds
        ));
    }
    // plot first: if drawing fails, no table is left behind either
    zipmerge::experiments::plot::sweep_plot(rows, &out.join("sweep.svg"), &out.join("sweep.png"))
        .context("drawing the sweep plot")?;
    write_atomic(&out.join("sweep.csv"), c.as_bytes())?;
    write_atomic(&out.join("sweep.json"), &serde_json::to_vec_pretty(report)?)?;
    Ok(())
}

/// Finds `<name>-a`/`<name>-b` pairs of model folders.
/// The train (probe) and test splits of `--data` (test: `--eval-data` when given), prepared for the architecture of
/// `model` (an experiment's first endpoint; CIFAR preprocessing when there is none).
fn load_data(
    io: &ExperimentIo,
    s: &MergeSettings,
    model: Option<&PathBuf>,
    quiet: bool,
) -> Result<(SparseSet, ImageSet)> {
    let root = data_root(io.data.as_deref());
    let prep = match model {
        Some(m) => preprocess_of(m)?,
        None => Default::default(),
    };
    let train = s.load_probe(&root, prep, quiet)?;
    let test = load_split(
        io.eval_data.as_deref().unwrap_or(&root),
        "test",
        prep,
        quiet,
    )?;
    Ok((train, test))
}

fn find_pairs(dir: &Path, filter: Option<&str>) -> Result<Vec<(String, Vec<PathBuf>)>> {
    let mut names: Vec<String> = std::fs::read_dir(dir)
        .with_context(|| format!("{}: cannot list endpoint pairs", dir.display()))?
        .filter_map(|e| e.ok())
        .filter(|e| e.path().join("manifest.json").is_file())
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    let mut pairs = Vec::new();
    for n in &names {
        if let Some(base) = n.strip_suffix("-a") {
            if filter.is_some_and(|f| !base.contains(f)) {
                continue;
            }
            // the group: <base>-a, <base>-b, <base>-c, ... while the next letter exists
            let group: Vec<PathBuf> = ('a'..='z')
                .map(|l| format!("{base}-{l}"))
                .take_while(|m| names.contains(m))
                .map(|m| dir.join(m))
                .collect();
            if group.len() >= 2 {
                pairs.push((base.to_string(), group));
            }
        }
    }
    if pairs.is_empty() {
        bail!(
            "{}: no endpoint groups (model folders named <name>-a, <name>-b, ...)",
            dir.display()
        );
    }
    if pairs.iter().any(|(_, g)| g.len() != pairs[0].1.len()) {
        bail!(
            "{}: the endpoint groups differ in size (use --filter to pick groups of one size)",
            dir.display()
        );
    }
    Ok(pairs)
}

/// Runs `zipmerge reproduce`.
pub fn exec_reproduce(a: ReproduceArgs) -> Result<()> {
    match a.what {
        Reproduce::Table1(a) => exec_table1(a),
        Reproduce::Grid(a) => exec_grid(a),
    }
}

fn exec_grid(a: GridArgs) -> Result<()> {
    let corrections = a.settings.corrections();
    corrections.check().map_err(merge_error)?;
    let quiet = a.io.quiet || a.io.json;
    let eval_images =
        match a.eval_images.as_str() {
            "all" => None,
            n => Some(n.parse::<usize>().ok().filter(|&n| n > 0).ok_or_else(|| {
                usage(format!("--eval-images {n}: expected a number > 0 or `all`"))
            })?),
        };
    if a.alphas.is_empty() || a.betas.is_empty() {
        return Err(usage("--alphas/--betas: expected at least one value each"));
    }
    let methods = a
        .alphas
        .iter()
        .flat_map(|&al| a.betas.iter().map(move |&be| (al, be)))
        .map(|(al, be)| Method::parse("zipit", al, be, a.settings.seed))
        .collect::<Result<Vec<_>, _>>()
        .map_err(merge_error)?;
    let lambda = a.settings.dual_lambda(&Method::Permute)?;
    a.settings.probe_count()?;
    a.settings.bn_count()?;
    check_out(&a.io, &a.models)?;
    let device = a.backend.device(quiet)?;
    let ep = load_endpoints(&a.models, &methods, a.settings.merge_eps)?;
    let stop = ep.spec.stop(&a.stop).map_err(merge_error)?;
    let (train, mut test) = load_data(&a.io, &a.settings, a.models.first(), quiet)?;
    if let Some(n) = eval_images {
        use rand::{seq::SliceRandom, SeedableRng};
        let mut idx: Vec<usize> = (0..test.len()).collect();
        idx.shuffle(&mut rand_chacha::ChaCha8Rng::seed_from_u64(a.settings.seed));
        idx.truncate(n);
        idx.sort_unstable();
        test = test.subset(&idx);
    }
    let t0 = Instant::now();
    let mut counters = Counters::default();
    let tasks = tasks_checked(&ep, &test)?;
    let (p, stats) = prepare(
        ep,
        tasks,
        &a.settings,
        &train,
        &device,
        quiet,
        &mut counters,
    )?;
    let exp = p.context(&test, &a.settings, &device);
    let mut cells = Vec::new();
    let pb = bar((a.alphas.len() * a.betas.len()) as u64, "grid", quiet);
    let mut methods = methods.into_iter();
    for &alpha in &a.alphas {
        for &beta in &a.betas {
            let method = methods.next().expect("one method per cell");
            let t = merge::match_spaces_with(
                &p.ep,
                &method,
                Some(&stats),
                stop.spaces,
                a.settings.merge_eps,
                lambda,
            )?;
            counters.matching_runs += 1;
            let row = exp.corrected_row(
                &format!("a={alpha} b={beta}"),
                &t,
                &stop,
                true,
                &corrections,
                &mut |_| {},
            )?;
            cells.push((alpha, beta, row));
            pb.inc(1);
        }
    }
    pb.finish_and_clear();
    let best = cells
        .iter()
        .max_by(|x, y| x.2.accuracy.joint.total_cmp(&y.2.accuracy.joint))
        .expect("grid");
    let mut c = String::from("alpha,beta,joint,task_a,task_b,avg\n");
    for (al, be, r) in &cells {
        let t = |i: usize| r.accuracy.tasks.get(i).map_or(0.0, |x| x.accuracy);
        c.push_str(&format!(
            "{al},{be},{:.4},{:.4},{:.4},{:.4}\n",
            r.accuracy.joint,
            t(0),
            t(1),
            r.accuracy.avg
        ));
    }
    let report = json!({"stop": stop.name, "best": {"alpha": best.0, "beta": best.1, "joint": best.2.accuracy.joint},
        "cells": cells.iter().map(|(al, be, r)| json!({"alpha": al, "beta": be, "accuracy": r.accuracy})).collect::<Vec<_>>(),
        "counters": counters, "test_images": test.len(), "seconds": t0.elapsed().as_secs_f64()});
    if let Some(out) = &a.io.out {
        let grid: Vec<(f64, f64, f64)> = cells
            .iter()
            .map(|(al, be, r)| (*al, *be, r.accuracy.joint))
            .collect();
        zipmerge::experiments::plot::grid_heatmap(
            &grid,
            &a.alphas,
            &a.betas,
            &out.join("grid.png"),
        )
        .context("drawing the heat map")?;
        write_atomic(&out.join("grid.csv"), c.as_bytes())?;
        write_atomic(&out.join("grid.json"), &serde_json::to_vec_pretty(&report)?)?;
    }
    if a.io.json {
        println!("{}", serde_json::to_string(&report)?);
    } else {
        print!("{c}");
        println!(
            "best: alpha {} beta {} (joint {:.2}%) at {}",
            best.0, best.1, best.2.accuracy.joint, stop.name
        );
    }
    Ok(())
}

fn exec_table1(a: Table1Args) -> Result<()> {
    let quiet = a.io.quiet || a.io.json;
    a.settings.probe_count()?;
    a.settings.bn_count()?;
    let pairs = find_pairs(&a.pairs, a.filter.as_deref())?;
    let inputs: Vec<PathBuf> = pairs.iter().flat_map(|(_, m)| m.iter().cloned()).collect();
    check_out(&a.io, &inputs)?;
    let device = a.backend.device(quiet)?;
    let zipit = Method::Zipit {
        alpha: a.settings.alpha,
        beta: a.settings.beta,
    };
    let n_models = pairs[0].1.len();
    merge::check_dual_lambda(a.settings.dual_lambda).map_err(merge_error)?;
    if a.settings.corrections().any() || a.settings.similarity != "activation" {
        return Err(usage(
            "--repair/--refit/--similarity: `reproduce table1` adds those rows with --extended (--refit-ridge, --dual-lambda set them; its standard rows stay the paper's)",
        ));
    }
    let cca = Method::Cca {
        reg: a.settings.cca_reg,
    };
    let rebasin = Method::GitRebasin {
        seed: a.settings.seed,
    };
    let mut methods = vec![
        zipit.clone(),
        Method::WeightAvg,
        Method::Permute,
        cca.clone(),
    ];
    if n_models == 2 {
        methods.push(rebasin.clone());
    }
    let endpoints = pairs
        .iter()
        .map(|(_, m)| load_endpoints(m, &methods, a.settings.merge_eps))
        .collect::<Result<Vec<_>>>()?;
    let first_model = pairs.first().and_then(|(_, m)| m.first());
    let (train, test) = load_data(&a.io, &a.settings, first_model, quiet)?;
    let tasks = endpoints
        .iter()
        .map(|ep| tasks_checked(ep, &test))
        .collect::<Result<Vec<_>>>()?;
    let root = data_root(a.io.data.as_deref());
    let t0 = Instant::now();
    let mut all_rows: Vec<Vec<Row>> = Vec::new();
    let mut counters = Counters::default();
    for (((name, models), ep), tasks) in pairs.iter().zip(endpoints).zip(tasks) {
        if !quiet {
            eprintln!(
                "pair {name}: {}",
                models
                    .iter()
                    .map(|m| m.display().to_string())
                    .collect::<Vec<_>>()
                    .join(" + ")
            );
        }
        let (p, stats) = prepare(
            ep,
            tasks,
            &a.settings,
            &train,
            &device,
            quiet,
            &mut counters,
        )?;
        let exp = p.context(&test, &a.settings, &device);
        let stops = p.ep.spec.stops();
        let full = stops.last().expect("full").clone();
        let zip_t = match_all(
            &p.ep,
            &zipit,
            Some(&stats),
            a.settings.merge_eps,
            0.0,
            &mut counters,
        )?;
        let mut rows = Vec::new();
        let mut run = |label: &str, f: &mut RowFn<'_>| -> Result<()> {
            let pb = eval_bar(&test, &p.tasks, label, quiet);
            rows.push(f(&mut |k| pb.inc(k as u64))?);
            pb.finish_and_clear();
            Ok(())
        };
        for i in 0..p.ep.n() {
            let label = format!("Model {}", (b'A' + i as u8) as char);
            run(&label.clone(), &mut |pr| exp.endpoint_row(i, &label, pr))?;
        }
        let mut baselines = vec![("W.Avg", Method::WeightAvg)];
        if n_models == 2 {
            baselines.push(("Git Re-Basin", rebasin.clone()));
        }
        baselines.push(("Permute", Method::Permute));
        let mut matched = Vec::new();
        for (label, method) in baselines {
            let t = match_all(
                &p.ep,
                &method,
                Some(&stats),
                a.settings.merge_eps,
                0.0,
                &mut counters,
            )?;
            let reset =
                !a.settings.no_rebasin_bn_reset || !matches!(method, Method::GitRebasin { .. });
            run(label, &mut |pr| {
                exp.merged_row_bn(label, &t, &full, reset, pr)
            })?;
            matched.push((label, t, reset));
        }
        run("ZipIt!20/20", &mut |pr| {
            exp.merged_row(&format!("ZipIt!{}", full.name), &zip_t, &full, pr)
        })?;
        run("Ensemble", &mut |pr| exp.ensemble_row(pr))?;
        // partial zips at the stage ends, deepest first (13/20, 7/20 for ResNet-20)
        let mut partial: Vec<_> = stops
            .iter()
            .filter(|s| !s.is_full() && !s.aliases.is_empty())
            .cloned()
            .collect();
        partial.reverse();
        for st in partial.iter().filter(|s| s.zipped + 1 < s.total) {
            let label = format!("ZipIt!{}", st.name);
            run(&label.clone(), &mut |pr| {
                exp.merged_row(&label, &zip_t, st, pr)
            })?;
        }
        if a.extended {
            // issue 12's rows: every method with REPAIR, the refit and both at the full zip;
            // CCA Merge; ZipIt! with the corrections at the partial stops
            let ridge = Some(a.settings.refit_ridge);
            let variants = [
                Corrections {
                    repair: true,
                    refit_ridge: None,
                },
                Corrections {
                    repair: false,
                    refit_ridge: ridge,
                },
                Corrections {
                    repair: true,
                    refit_ridge: ridge,
                },
            ];
            let cca_t = match_all(
                &p.ep,
                &cca,
                Some(&stats),
                a.settings.merge_eps,
                0.0,
                &mut counters,
            )?;
            run("CCA Merge", &mut |pr| {
                exp.merged_row("CCA Merge", &cca_t, &full, pr)
            })?;
            let zip_label = format!("ZipIt!{}", full.name);
            matched.push(("CCA Merge", cca_t, true));
            matched.push((zip_label.as_str(), zip_t.clone(), true));
            // dual-space ZipIt! (MuDSC) at --dual-lambda
            let dual_t = match_all(
                &p.ep,
                &zipit,
                Some(&stats),
                a.settings.merge_eps,
                a.settings.dual_lambda,
                &mut counters,
            )?;
            let dual_label = format!("ZipIt!{} dual {}", full.name, a.settings.dual_lambda);
            run(&dual_label.clone(), &mut |pr| {
                exp.merged_row(&dual_label, &dual_t, &full, pr)
            })?;
            matched.push((dual_label.as_str(), dual_t, true));
            for (label, t, reset) in &matched {
                for c in &variants {
                    let l = format!("{label}{}", c.label());
                    run(&l.clone(), &mut |pr| {
                        exp.corrected_row(&l, t, &full, *reset, c, pr)
                    })?;
                }
            }
            for st in partial.iter().filter(|s| s.zipped + 1 < s.total) {
                for c in &variants {
                    let l = format!("ZipIt!{}{}", st.name, c.label());
                    run(&l.clone(), &mut |pr| {
                        exp.corrected_row(&l, &zip_t, st, true, c, pr)
                    })?;
                }
            }
        }
        all_rows.push(rows);
    }
    let lines = aggregate(&all_rows, a.paper);
    let md = format!(
        "{}\n{}\n",
        markdown(&lines),
        if a.settings.no_rebasin_bn_reset {
            "BatchNorm is reset after every merge except Git Re-Basin's (--no-rebasin-bn-reset: one reference script's behaviour)."
        } else {
            "BatchNorm is reset after every merge, Git Re-Basin's included, as the paper states (--no-rebasin-bn-reset skips it for Git Re-Basin, as one reference script does)."
        }
    );
    let report = json!({
        "pairs": pairs.iter().map(|(n, m)| json!({"name": n, "models": m})).collect::<Vec<_>>(),
        "lines": lines, "rows": all_rows, "counters": counters,
        "settings": {"alpha": a.settings.alpha, "beta": a.settings.beta, "probe_images": a.settings.probe_images, "bn_reset_images": a.settings.bn_reset_images, "seed": a.settings.seed, "augment_probe": !a.settings.no_probe_augment, "rebasin_bn_reset": !a.settings.no_rebasin_bn_reset},
        "data": root.display().to_string(), "test_images": test.len(), "seconds": t0.elapsed().as_secs_f64(),
        "paper_note": if a.paper { Some("paper numbers: ZipIt! (ICLR 2024) CIFAR-10 5+5, ResNet-20 x4 with CLIP ViT-B/32 text heads, 100 epochs; ours: the models and heads listed above") } else { None },
    });
    if let Some(out) = &a.io.out {
        write_atomic(&out.join("table1.md"), md.as_bytes())?;
        write_atomic(&out.join("table1.csv"), csv(&lines).as_bytes())?;
        write_atomic(
            &out.join("table1.json"),
            &serde_json::to_vec_pretty(&report)?,
        )?;
    }
    if a.io.json {
        println!("{}", serde_json::to_string(&report)?);
    } else {
        print!("{md}");
        eprintln!(
            "{} pair(s), {} test images, {:.1}s",
            pairs.len(),
            test.len(),
            t0.elapsed().as_secs_f64()
        );
    }
    Ok(())
}
