//! The experiment recipes as library calls: [`sweep`] (every stop of one method), [`grid`]
//! (the paper's alpha/beta search) and [`table1`] (the ZipIt! Table 1 layout over endpoint
//! groups), each returning a serde report, and the writers of their output files. Statistics
//! are collected once per endpoint group; every space is matched once per method.

use std::path::{Path, PathBuf};
use std::time::Instant;

use burn::tensor::Device;
use serde::Serialize;

use super::table::{aggregate, csv, markdown, Line};
use super::{match_all, Context, Counters, Row};
use crate::correct::Corrections;
use crate::data::{ImageSet, SparseSet};
use crate::error::{ExperimentError, MergeError, MergeParam};
use crate::merge::{self, images, Batches, Endpoints, MergeSettings, Method, Statistics};
use crate::progress::{phase, Observer};
use crate::util::write_atomic;

/// Where an experiment reads its images and runs.
#[derive(Clone, Debug)]
pub struct Inputs {
    /// Probe folder (statistics and BN reset).
    pub probe_dir: PathBuf,
    /// Data root whose `test` split is evaluated.
    pub test_root: PathBuf,
    /// Pixel cache per folder, GiB ([`crate::data::images_in_cache`]).
    pub cache_gib: f64,
    /// Compute device.
    pub device: Device,
}

/// One endpoint group after the endpoint BN reset and the statistics pass.
pub struct Prepared {
    /// The endpoints (BN reset).
    pub ep: Endpoints,
    /// BN-reset batches.
    pub bn: Batches,
    /// Probe batches.
    pub probe: Batches,
    /// Each endpoint's task.
    pub tasks: Vec<Vec<usize>>,
    /// Statistics of every feature space.
    pub stats: Statistics,
}

/// Loads and checks one group of endpoints for every method the experiment will run (e.g. Git
/// Re-Basin needs exactly two models), before any image is decoded.
///
/// # Errors
/// As [`Endpoints::load`] and [`merge::check_method`].
pub fn load_endpoints(
    models: &[PathBuf],
    methods: &[Method],
    eps: f64,
) -> Result<Endpoints, MergeError> {
    let ep = Endpoints::load(models)?;
    for m in methods {
        merge::check_method(&ep, m, eps)?;
    }
    Ok(ep)
}

/// The probe set and the test set of `inputs`, prepared for the endpoints `ep`.
///
/// # Errors
/// [`MergeError::Data`] naming the folder.
pub fn load_data(
    inputs: &Inputs,
    s: &MergeSettings,
    ep: &Endpoints,
    obs: &mut dyn Observer,
) -> Result<(SparseSet, ImageSet), MergeError> {
    let prep = ep.spec.net.preprocess();
    let train = s.load_probe(&inputs.probe_dir, prep, inputs.cache_gib, obs)?;
    let test =
        crate::data::load_split(&inputs.test_root, "test", prep, inputs.cache_gib, None, obs)?;
    Ok((train, test))
}

/// The task (class ids of the first head) of each endpoint, checked against the test set: every
/// class must be in it and have images, as evaluation requires.
///
/// # Errors
/// [`MergeError::Data`] naming the missing class.
pub fn tasks_checked(ep: &Endpoints, test: &ImageSet) -> Result<Vec<Vec<usize>>, MergeError> {
    let tasks = ep.tasks();
    crate::eval::runner::check_evaluation(&ep.heads(), test, &tasks)?;
    Ok(tasks)
}

/// Resets the endpoints' BN and collects the statistics of every space on the probe draw.
///
/// # Errors
/// As [`merge::statistics`].
pub fn prepare(
    mut ep: Endpoints,
    tasks: Vec<Vec<usize>>,
    s: &MergeSettings,
    train: &SparseSet,
    device: &Device,
    obs: &mut dyn Observer,
    counters: &mut Counters,
) -> Result<Prepared, MergeError> {
    let bn = s.bn_batches(train)?;
    let probe = s.probe_batches(train, obs)?;
    s.reset_endpoints(&mut ep, &bn, device, obs)?;
    let stats = phase(obs, "statistics", images(&probe) as u64, |p| {
        merge::statistics(&ep, &probe, device, p)
    })?;
    counters.statistics_passes += stats.passes;
    merge::warn_dead_units(&stats, &ep.spec.spaces, obs);
    Ok(Prepared {
        ep,
        bn,
        probe,
        tasks,
        stats,
    })
}

impl Prepared {
    /// The experiment context of these endpoints on `test`.
    pub fn context<'a>(
        &'a self,
        test: &'a ImageSet,
        s: &MergeSettings,
        device: &'a Device,
    ) -> Context<'a> {
        Context::new(
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

    /// Test images of the tasks (what one evaluation runs).
    fn eval_images(&self, test: &ImageSet) -> u64 {
        (0..test.len())
            .filter(|&i| self.tasks.iter().any(|t| t.contains(&test.labels[i])))
            .count() as u64
    }
}

/// Runs `f` as the row phase `label` over the test images of `p`.
fn row(
    obs: &mut dyn Observer,
    p: &Prepared,
    test: &ImageSet,
    label: &str,
    f: impl FnOnce(&mut dyn FnMut(usize)) -> Result<Row, MergeError>,
) -> Result<Row, MergeError> {
    phase(obs, label, p.eval_images(test), f)
}

/// The row of each endpoint alone (`Model A`, `Model B`, ...).
fn endpoint_rows(
    obs: &mut dyn Observer,
    p: &Prepared,
    test: &ImageSet,
    exp: &Context<'_>,
) -> Result<Vec<Row>, MergeError> {
    (0..p.ep.n())
        .map(|i| {
            let label = format!("Model {}", (b'A' + (i % 26) as u8) as char);
            row(obs, p, test, &label, |pr| exp.endpoint_row(i, &label, pr))
        })
        .collect()
}

/// A partial-zip sweep: one method at several stops ([`sweep`]).
#[derive(Clone, Debug)]
pub struct SweepPlan {
    /// Source models (two or more).
    pub models: Vec<PathBuf>,
    /// Stop names (`None`: every stop of the spec).
    pub stops: Option<Vec<String>>,
    /// Method, draws, corrections.
    pub settings: MergeSettings,
    /// Data and device.
    pub inputs: Inputs,
}

/// What [`sweep`] measured (`sweep.json`; the keys are a stable interface).
#[derive(Clone, Debug, Serialize)]
pub struct SweepReport {
    /// The method.
    pub method: Method,
    /// Endpoint rows, one row per stop, the ensemble.
    pub rows: Vec<Row>,
    /// Statistics passes and matching runs.
    pub counters: Counters,
    /// Probe images of the statistics.
    pub probe_images: usize,
    /// Images of the BN resets.
    pub bn_reset_images: usize,
    /// Test images.
    pub test_images: usize,
    /// Seconds from the first forward pass to the last row.
    pub seconds: f64,
    /// Source model folders.
    pub models: Vec<String>,
}

/// Merges at every stop of `plan` from one statistics pass and one matching, and evaluates each
/// with the endpoints and their ensemble (reference doc §5).
///
/// # Errors
/// [`MergeError`] naming the model, stop, setting or folder at fault.
pub fn sweep(plan: &SweepPlan, obs: &mut dyn Observer) -> Result<SweepReport, MergeError> {
    let s = &plan.settings;
    s.check()?;
    let ep = load_endpoints(&plan.models, std::slice::from_ref(&s.method), s.merge_eps)?;
    let stops = match &plan.stops {
        None => ep.spec.stops(),
        Some(v) => v
            .iter()
            .map(|n| ep.spec.stop(n.trim()))
            .collect::<Result<_, _>>()?,
    };
    let (train, test) = load_data(&plan.inputs, s, &ep, obs)?;
    let tasks = tasks_checked(&ep, &test)?;
    let t0 = Instant::now();
    let mut counters = Counters::default();
    let device = &plan.inputs.device;
    let p = prepare(ep, tasks, s, &train, device, obs, &mut counters)?;
    let stats = s.method.needs_statistics().then_some(&p.stats);
    let lambda = s.similarity.lambda();
    let transforms = match_all(&p.ep, &s.method, stats, s.merge_eps, lambda, &mut counters)?;
    let exp = p.context(&test, s, device);
    let mut rows = endpoint_rows(obs, &p, &test, &exp)?;
    let c = &s.corrections;
    for st in &stops {
        let label = format!("{}{}{}", s.method.label(), st.name, c.label());
        rows.push(row(obs, &p, &test, &label, |pr| {
            exp.corrected_row(&label, &transforms, st, s.resets_merged(), c, pr)
        })?);
    }
    rows.push(row(obs, &p, &test, "ensemble", |pr| exp.ensemble_row(pr))?);
    Ok(SweepReport {
        method: s.method.clone(),
        rows,
        counters,
        probe_images: images(&p.probe),
        bn_reset_images: images(&p.bn),
        test_images: test.len(),
        seconds: t0.elapsed().as_secs_f64(),
        models: plan
            .models
            .iter()
            .map(|m| m.display().to_string())
            .collect(),
    })
}

/// Writes `sweep.svg`, `sweep.png`, `sweep.csv` and `sweep.json` into `out` (the plot first: if
/// drawing fails, no table is left behind either).
///
/// # Errors
/// [`ExperimentError`] naming the file.
pub fn write_sweep(out: &Path, report: &SweepReport) -> Result<(), ExperimentError> {
    let mut c = String::from(
        "label,stop,zipped_layers,total_layers,flops,joint,task_a,task_b,avg,seconds\n",
    );
    for r in &report.rows {
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
    super::plot::sweep_plot(&report.rows, &out.join("sweep.svg"), &out.join("sweep.png"))
        .map_err(|e| ExperimentError::plot("the sweep plot", e))?;
    write(&out.join("sweep.csv"), c.as_bytes())?;
    write(&out.join("sweep.json"), &json_bytes(report)?)
}

fn write(path: &Path, bytes: &[u8]) -> Result<(), ExperimentError> {
    write_atomic(path, bytes).map_err(|e| ExperimentError::output(path, e))
}

fn json_bytes(v: &impl Serialize) -> Result<Vec<u8>, ExperimentError> {
    serde_json::to_vec_pretty(v).map_err(|e| ExperimentError::Output {
        path: "(report)".into(),
        msg: e.to_string(),
    })
}

/// The alpha/beta grid search at one stop ([`grid`]).
#[derive(Clone, Debug)]
pub struct GridPlan {
    /// Source models.
    pub models: Vec<PathBuf>,
    /// Stop of the zip.
    pub stop: String,
    /// Alpha values.
    pub alphas: Vec<f64>,
    /// Beta values.
    pub betas: Vec<f64>,
    /// Evaluate each cell on a seeded subset of this many test images (`None`: all).
    pub eval_images: Option<usize>,
    /// Draws, corrections (the method is ZipIt! with each cell's alpha and beta).
    pub settings: MergeSettings,
    /// Data and device.
    pub inputs: Inputs,
}

/// One cell of the grid.
#[derive(Clone, Debug, Serialize)]
pub struct GridCell {
    /// Alpha.
    pub alpha: f64,
    /// Beta.
    pub beta: f64,
    /// Accuracy.
    pub accuracy: crate::eval::Accuracy,
}

/// The best cell by joint accuracy.
#[derive(Clone, Debug, Serialize)]
pub struct GridBest {
    /// Alpha.
    pub alpha: f64,
    /// Beta.
    pub beta: f64,
    /// Joint accuracy, %.
    pub joint: f64,
}

/// What [`grid`] measured (`grid.json`).
#[derive(Clone, Debug, Serialize)]
pub struct GridReport {
    /// Stop name.
    pub stop: String,
    /// Best cell.
    pub best: GridBest,
    /// Every cell, alpha-major.
    pub cells: Vec<GridCell>,
    /// Statistics passes and matching runs.
    pub counters: Counters,
    /// Test images per cell.
    pub test_images: usize,
    /// Seconds.
    pub seconds: f64,
}

impl GridReport {
    /// The grid as CSV (`alpha,beta,joint,task_a,task_b,avg`).
    pub fn csv(&self) -> String {
        let mut c = String::from("alpha,beta,joint,task_a,task_b,avg\n");
        for g in &self.cells {
            let t = |i: usize| g.accuracy.tasks.get(i).map_or(0.0, |x| x.accuracy);
            c.push_str(&format!(
                "{},{},{:.4},{:.4},{:.4},{:.4}\n",
                g.alpha,
                g.beta,
                g.accuracy.joint,
                t(0),
                t(1),
                g.accuracy.avg
            ));
        }
        c
    }
}

/// Zips at one stop for every (alpha, beta) of the grid from one statistics pass (reference
/// doc §5.2).
///
/// # Errors
/// [`MergeError`]: [`MergeError::Param`] for a bad alpha or beta.
pub fn grid(plan: &GridPlan, obs: &mut dyn Observer) -> Result<GridReport, MergeError> {
    let s = &plan.settings;
    let methods = plan
        .alphas
        .iter()
        .flat_map(|&al| plan.betas.iter().map(move |&be| (al, be)))
        .map(|(al, be)| Method::parse("zipit", al, be, s.seed))
        .collect::<Result<Vec<_>, _>>()?;
    if methods.is_empty() {
        let p = if plan.alphas.is_empty() {
            MergeParam::Alpha
        } else {
            MergeParam::Beta
        };
        return Err(MergeError::param(
            p,
            "",
            "the grid needs at least one value",
        ));
    }
    let s = MergeSettings {
        method: methods[0].clone(),
        ..s.clone()
    };
    s.check()?;
    let ep = load_endpoints(&plan.models, &methods, s.merge_eps)?;
    let stop = ep.spec.stop(&plan.stop)?;
    let (train, mut test) = load_data(&plan.inputs, &s, &ep, obs)?;
    if let Some(n) = plan.eval_images {
        test = test.seeded_subset(n, s.seed);
    }
    let t0 = Instant::now();
    let mut counters = Counters::default();
    let tasks = tasks_checked(&ep, &test)?;
    let device = &plan.inputs.device;
    let p = prepare(ep, tasks, &s, &train, device, obs, &mut counters)?;
    let exp = p.context(&test, &s, device);
    let lambda = s.similarity.lambda();
    let mut cells = Vec::new();
    obs.begin("grid", methods.len() as u64);
    for method in &methods {
        let Method::Zipit { alpha, beta } = *method else {
            unreachable!("grid methods are ZipIt!")
        };
        let t = merge::match_spaces_with(
            &p.ep,
            method,
            Some(&p.stats),
            stop.spaces,
            s.merge_eps,
            lambda,
        )?;
        counters.matching_runs += 1;
        let label = format!("a={alpha} b={beta}");
        let r = exp.corrected_row(&label, &t, &stop, true, &s.corrections, &mut |_| {})?;
        cells.push(GridCell {
            alpha,
            beta,
            accuracy: r.accuracy,
        });
        obs.advance(1);
    }
    obs.end();
    let best = cells
        .iter()
        .max_by(|x, y| x.accuracy.joint.total_cmp(&y.accuracy.joint))
        .map(|c| GridBest {
            alpha: c.alpha,
            beta: c.beta,
            joint: c.accuracy.joint,
        })
        .expect("at least one cell");
    Ok(GridReport {
        stop: stop.name,
        best,
        cells,
        counters,
        test_images: test.len(),
        seconds: t0.elapsed().as_secs_f64(),
    })
}

/// Writes `grid.png` (heat map of joint accuracy), `grid.csv` and `grid.json` into `out`.
///
/// # Errors
/// [`ExperimentError`] naming the file.
pub fn write_grid(
    out: &Path,
    report: &GridReport,
    alphas: &[f64],
    betas: &[f64],
) -> Result<(), ExperimentError> {
    let cells: Vec<(f64, f64, f64)> = report
        .cells
        .iter()
        .map(|c| (c.alpha, c.beta, c.accuracy.joint))
        .collect();
    super::plot::grid_heatmap(&cells, alphas, betas, &out.join("grid.png"))
        .map_err(|e| ExperimentError::plot("the heat map", e))?;
    write(&out.join("grid.csv"), report.csv().as_bytes())?;
    write(&out.join("grid.json"), &json_bytes(report)?)
}

/// The endpoint groups found in a folder ([`find_groups`]).
#[derive(Clone, Debug, Default)]
pub struct FoundGroups {
    /// The complete groups, by name, with their member folders in letter order.
    pub groups: Vec<(String, Vec<PathBuf>)>,
    /// Every member folder or group that cannot be used, with why (one line each): a broken
    /// symbolic link, a member without `manifest.json`, a missing member, a member after a gap,
    /// a group of one.
    pub skipped: Vec<String>,
}

/// Why the entry `path` (named like a member) cannot be a member, if it cannot.
fn member_problem(path: &Path) -> Option<&'static str> {
    let link = std::fs::symlink_metadata(path).is_ok_and(|m| m.file_type().is_symlink());
    match std::fs::metadata(path) {
        Err(_) if link => Some("a broken symbolic link"),
        Err(_) => Some("cannot be read"),
        Ok(m) if !m.is_dir() => Some("not a folder"),
        Ok(_) if !path.join("manifest.json").is_file() => Some("no manifest.json"),
        Ok(_) => None,
    }
}

/// The endpoint groups of a folder: model folders named `<name>-a`, `<name>-b`, ... with
/// consecutive letters from `a` (at least two), those whose name contains `filter` when
/// given. Entries not named `<name>-<letter>` are not members and are passed over. A group
/// with any unusable member (broken link, no manifest), a missing letter (`x-a`, `x-c`: no
/// `x-b`), a member after a gap (`x-d` after `x-a`, `x-b`) or one member only is not run, and
/// is listed in [`FoundGroups::skipped`] with the reason, for the caller to warn about.
///
/// # Errors
/// [`ExperimentError::Groups`] when the folder cannot be listed, holds no complete group (the
/// message then names every skipped member and why), or its groups differ in size.
pub fn find_groups(dir: &Path, filter: Option<&str>) -> Result<FoundGroups, ExperimentError> {
    let groups_err = |msg: &str| ExperimentError::Groups {
        dir: dir.display().to_string(),
        msg: msg.into(),
    };
    let mut members: std::collections::BTreeMap<String, Vec<(char, String)>> =
        std::collections::BTreeMap::new();
    for e in std::fs::read_dir(dir)
        .map_err(|e| groups_err(&format!("cannot list endpoint groups: {e}")))?
        .filter_map(|e| e.ok())
    {
        let name = e.file_name().to_string_lossy().into_owned();
        let Some((base, letter)) = name.rsplit_once('-') else {
            continue;
        };
        let mut chars = letter.chars();
        let (Some(l @ 'a'..='z'), None) = (chars.next(), chars.next()) else {
            continue;
        };
        if base.is_empty() || filter.is_some_and(|f| !base.contains(f)) {
            continue;
        }
        members
            .entry(base.to_string())
            .or_default()
            .push((l, name.clone()));
    }
    let mut found = FoundGroups::default();
    for (base, mut ms) in members {
        ms.sort();
        let mut why: Vec<String> = ms
            .iter()
            .filter_map(|(_, n)| member_problem(&dir.join(n)).map(|p| format!("{n}: {p}")))
            .collect();
        let letters: Vec<char> = ms.iter().map(|(l, _)| *l).collect();
        let run = letters
            .iter()
            .zip('a'..='z')
            .take_while(|(l, want)| *l == want)
            .count();
        if run < letters.len() {
            let gap = char::from(b'a' + run as u8);
            let after: Vec<String> = ms[run..].iter().map(|(_, n)| n.clone()).collect();
            why.push(format!(
                "{base}: missing member {base}-{gap}, so {} cannot be used",
                after.join(", ")
            ));
        } else if letters.len() < 2 {
            why.push(format!("{base}: only one member ({base}-a)"));
        }
        if why.is_empty() {
            let group = ms.iter().map(|(_, n)| dir.join(n)).collect();
            found.groups.push((base, group));
        } else {
            found
                .skipped
                .push(format!("group {base} skipped: {}", why.join("; ")));
        }
    }
    if found.groups.is_empty() {
        let mut msg =
            "no complete endpoint groups (model folders named <name>-a, <name>-b, ...)".to_string();
        if !found.skipped.is_empty() {
            msg += &format!(": {}", found.skipped.join("; "));
        }
        return Err(groups_err(&msg));
    }
    let g0 = &found.groups[0];
    if let Some(g) = found.groups.iter().find(|g| g.1.len() != g0.1.len()) {
        return Err(groups_err(&format!(
            "the endpoint groups differ in size ({} has {}, {} has {}): pick groups of one size with --filter",
            g0.0,
            g0.1.len(),
            g.0,
            g.1.len()
        )));
    }
    Ok(found)
}

/// The ZipIt! Table 1 layout over every endpoint group of a folder ([`table1`]).
#[derive(Clone, Debug)]
pub struct Table1Plan {
    /// The endpoint groups ([`find_groups`]).
    pub groups: Vec<(String, Vec<PathBuf>)>,
    /// Add the paper's published CIFAR-10 5+5 joint accuracies.
    pub paper: bool,
    /// Add issue 12's rows: CCA Merge, dual-space ZipIt!, every method with REPAIR, the refit
    /// and both at the full zip, ZipIt! with them at the partial stops.
    pub extended: bool,
    /// The refit ridge of the extended rows.
    pub refit_ridge: f64,
    /// The dual-space lambda of the extended rows.
    pub dual_lambda: f64,
    /// CCA Merge's ridge of the extended rows.
    pub cca_reg: f64,
    /// Draws and ZipIt!'s alpha and beta (`settings.method` must be ZipIt!; its corrections
    /// and similarity must be the defaults: the standard rows stay the paper's).
    pub settings: MergeSettings,
    /// Data and device.
    pub inputs: Inputs,
}

/// What [`table1`] measured (`table1.json`).
#[derive(Clone, Debug, Serialize)]
pub struct Table1Report {
    /// The groups, with their model folders.
    pub pairs: Vec<serde_json::Value>,
    /// Aggregated lines (mean and std over groups).
    pub lines: Vec<Line>,
    /// Every row of every group.
    pub rows: Vec<Vec<Row>>,
    /// Statistics passes and matching runs.
    pub counters: Counters,
    /// The settings.
    pub settings: serde_json::Value,
    /// Data root.
    pub data: String,
    /// Test images.
    pub test_images: usize,
    /// Seconds.
    pub seconds: f64,
    /// What the paper's numbers are, with `paper`.
    pub paper_note: Option<&'static str>,
    /// The table as markdown (with its BN-reset note).
    #[serde(skip)]
    pub markdown: String,
}

/// Runs the Table 1 rows for every group: the endpoints, W.Avg, Git Re-Basin (two models),
/// Permute, ZipIt! full, the ensemble, ZipIt! at the stage-end stops (reference doc §5.1).
///
/// # Errors
/// [`MergeError`] naming the model, setting or folder at fault.
pub fn table1(plan: &Table1Plan, obs: &mut dyn Observer) -> Result<Table1Report, MergeError> {
    let s = &plan.settings;
    let Method::Zipit { alpha, beta } = s.method else {
        return Err(MergeError::param(
            MergeParam::Method,
            s.method.label(),
            "Table 1's method is zipit",
        ));
    };
    if s.corrections.any() || s.similarity != merge::Similarity::Activation {
        return Err(MergeError::param(
            MergeParam::Corrections,
            format!("{} similarity{}", s.similarity.name(), s.corrections.label()),
            "Table 1's standard rows use no corrections and activation similarity (the extended rows add them)",
        ));
    }
    if plan.groups.is_empty() {
        return Err(MergeError::param(
            MergeParam::Models,
            0,
            "Table 1 needs at least one endpoint group",
        ));
    }
    s.check()?;
    merge::check_dual_lambda(plan.dual_lambda)?;
    let zipit = s.method.clone();
    let n_models = plan.groups[0].1.len();
    let cca = Method::Cca { reg: plan.cca_reg };
    let rebasin = Method::GitRebasin { seed: s.seed };
    let mut methods = vec![
        zipit.clone(),
        Method::WeightAvg,
        Method::Permute,
        cca.clone(),
    ];
    if n_models == 2 {
        methods.push(rebasin.clone());
    }
    let endpoints = plan
        .groups
        .iter()
        .map(|(_, m)| load_endpoints(m, &methods, s.merge_eps))
        .collect::<Result<Vec<_>, _>>()?;
    let (train, test) = load_data(&plan.inputs, s, &endpoints[0], obs)?;
    let tasks = endpoints
        .iter()
        .map(|ep| tasks_checked(ep, &test))
        .collect::<Result<Vec<_>, _>>()?;
    let device = &plan.inputs.device;
    let t0 = Instant::now();
    let mut all_rows: Vec<Vec<Row>> = Vec::new();
    let mut counters = Counters::default();
    let eps = s.merge_eps;
    for (((name, models), ep), tasks) in plan.groups.iter().zip(endpoints).zip(tasks) {
        obs.info(&format!(
            "pair {name}: {}",
            models
                .iter()
                .map(|m| m.display().to_string())
                .collect::<Vec<_>>()
                .join(" + ")
        ));
        let p = prepare(ep, tasks, s, &train, device, obs, &mut counters)?;
        let exp = p.context(&test, s, device);
        let stops = p.ep.spec.stops();
        let full = stops.last().expect("full").clone();
        let stats = Some(&p.stats);
        let zip_t = match_all(&p.ep, &zipit, stats, eps, 0.0, &mut counters)?;
        let mut rows = endpoint_rows(obs, &p, &test, &exp)?;
        let mut baselines = vec![("W.Avg", Method::WeightAvg)];
        if n_models == 2 {
            baselines.push(("Git Re-Basin", rebasin.clone()));
        }
        baselines.push(("Permute", Method::Permute));
        let mut matched = Vec::new();
        for (label, method) in baselines {
            let t = match_all(&p.ep, &method, stats, eps, 0.0, &mut counters)?;
            let reset = s.resets_merge_by(&method);
            rows.push(row(obs, &p, &test, label, |pr| {
                exp.merged_row_bn(label, &t, &full, reset, pr)
            })?);
            matched.push((label.to_string(), t, reset));
        }
        let zip_label = format!("ZipIt!{}", full.name);
        rows.push(row(obs, &p, &test, &zip_label, |pr| {
            exp.merged_row(&zip_label, &zip_t, &full, pr)
        })?);
        rows.push(row(obs, &p, &test, "Ensemble", |pr| exp.ensemble_row(pr))?);
        // partial zips at the stage ends, deepest first (13/20, 7/20 for ResNet-20)
        let mut partial: Vec<_> = stops
            .iter()
            .filter(|s| !s.is_full() && !s.aliases.is_empty() && s.zipped + 1 < s.total)
            .cloned()
            .collect();
        partial.reverse();
        for st in &partial {
            let label = format!("ZipIt!{}", st.name);
            rows.push(row(obs, &p, &test, &label, |pr| {
                exp.merged_row(&label, &zip_t, st, pr)
            })?);
        }
        if plan.extended {
            let ridge = Some(plan.refit_ridge);
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
            let cca_t = match_all(&p.ep, &cca, stats, eps, 0.0, &mut counters)?;
            rows.push(row(obs, &p, &test, "CCA Merge", |pr| {
                exp.merged_row("CCA Merge", &cca_t, &full, pr)
            })?);
            matched.push(("CCA Merge".into(), cca_t, true));
            matched.push((zip_label.clone(), zip_t.clone(), true));
            // dual-space ZipIt! (MuDSC)
            let lambda = plan.dual_lambda;
            let dual_t = match_all(&p.ep, &zipit, stats, eps, lambda, &mut counters)?;
            let dual_label = format!("ZipIt!{} dual {lambda}", full.name);
            rows.push(row(obs, &p, &test, &dual_label, |pr| {
                exp.merged_row(&dual_label, &dual_t, &full, pr)
            })?);
            matched.push((dual_label, dual_t, true));
            for (label, t, reset) in &matched {
                for c in &variants {
                    let l = format!("{label}{}", c.label());
                    rows.push(row(obs, &p, &test, &l, |pr| {
                        exp.corrected_row(&l, t, &full, *reset, c, pr)
                    })?);
                }
            }
            for st in &partial {
                for c in &variants {
                    let l = format!("ZipIt!{}{}", st.name, c.label());
                    rows.push(row(obs, &p, &test, &l, |pr| {
                        exp.corrected_row(&l, &zip_t, st, true, c, pr)
                    })?);
                }
            }
        }
        all_rows.push(rows);
    }
    let lines = aggregate(&all_rows, plan.paper);
    let markdown = format!(
        "{}\n{}\n",
        markdown(&lines),
        if s.rebasin_bn_reset {
            "BatchNorm is reset after every merge, Git Re-Basin's included, as the paper states (--no-rebasin-bn-reset skips it for Git Re-Basin, as one reference script does)."
        } else {
            "BatchNorm is reset after every merge except Git Re-Basin's (--no-rebasin-bn-reset: one reference script's behaviour)."
        }
    );
    Ok(Table1Report {
        pairs: plan
            .groups
            .iter()
            .map(|(n, m)| serde_json::json!({"name": n, "models": m}))
            .collect(),
        lines,
        rows: all_rows,
        counters,
        settings: serde_json::json!({
            "alpha": alpha, "beta": beta,
            "probe_images": s.probe_images.map_or("all".to_string(), |n| n.to_string()),
            "bn_reset_images": s.bn_reset_images.map_or("all".to_string(), |n| n.to_string()),
            "seed": s.seed, "augment_probe": s.probe_augment,
            "rebasin_bn_reset": s.rebasin_bn_reset,
        }),
        data: plan.inputs.test_root.display().to_string(),
        test_images: test.len(),
        seconds: t0.elapsed().as_secs_f64(),
        paper_note: plan.paper.then_some("paper numbers: ZipIt! (ICLR 2024) CIFAR-10 5+5, ResNet-20 x4 with CLIP ViT-B/32 text heads, 100 epochs; ours: the models and heads listed above"),
        markdown,
    })
}

/// Writes `table1.md`, `table1.csv` and `table1.json` into `out`.
///
/// # Errors
/// [`ExperimentError`] naming the file.
pub fn write_table1(out: &Path, report: &Table1Report) -> Result<(), ExperimentError> {
    write(&out.join("table1.md"), report.markdown.as_bytes())?;
    write(&out.join("table1.csv"), csv(&report.lines).as_bytes())?;
    write(&out.join("table1.json"), &json_bytes(report)?)
}

/// The aggregated markdown table of one group's rows.
pub fn rows_markdown(rows: &[Row]) -> String {
    markdown(&aggregate(&[rows.to_vec()], false))
}
