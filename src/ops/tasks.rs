//! `reproduce tasks`: the TIES paper's vision table on fine-tunes of one base
//! ([`tasks_table`]): the base, each fine-tune, their weight average, Task Arithmetic, TIES and
//! DARE-TIES with their knobs chosen on a validation split carved from the train folder, TIES at
//! its no-validation defaults, and zipmerge's alignment methods (ZipIt!, Permute) on the same
//! fine-tunes; merged for the first 2, 3, ..., N tasks to show how each method scales with the
//! number of tasks (reference doc §A.6).
//!
//! Protocol: the BN-reset images are the merge's usual seeded draw from the train folder; the
//! validation images are a seeded draw from the *other* train images (disjoint from the BN
//! reset), and only they choose lambda and k (the criterion: the average normalized task
//! accuracy on them). The test folder is read once the choices are made, for the reported rows.

use std::path::PathBuf;
use std::time::Instant;

use serde::Serialize;

use crate::checkpoint::{self, StateDict};
use crate::collect::probe_batches;
use crate::data::ImageSet;
use crate::error::{ExperimentError, MergeError};
use crate::eval::runner::evaluate;
use crate::eval::Accuracy;
use crate::experiments::mean_std;
use crate::merge::tv_error;
use crate::merge::{merged_manifest, Batches, Endpoints, Merged, Method};
use crate::progress::{phase, Observer};
use crate::rewrite::Zipped;
use crate::system::runner::Runner;
use crate::taskvec::{self, Disjoint, SignRule, TaskVectorMethod, TaskVectorSettings, Trim};

/// Everything [`tasks_table`] needs.
#[derive(Clone, Debug)]
pub struct TasksPlan {
    /// The base model folder.
    pub base: PathBuf,
    /// The fine-tunes, in task order (N >= 2).
    pub models: Vec<PathBuf>,
    /// Data root with `train/` (BN reset, validation) and `test/`.
    pub data_root: PathBuf,
    /// Validation images carved from the train folder.
    pub val_images: usize,
    /// Seed of the validation draw (fixed across `seeds`).
    pub val_seed: u64,
    /// BN-reset images of every merge.
    pub bn_reset_images: usize,
    /// Seeds of the BN-reset draws and DARE's drops (one table row per method and seed).
    pub seeds: Vec<u64>,
    /// Numbers of tasks merged (the first n fine-tunes), each in `2..=N`.
    pub counts: Vec<usize>,
    /// Task Arithmetic's lambda grid.
    pub ta_lambdas: Vec<f64>,
    /// TIES's lambda grid.
    pub ties_lambdas: Vec<f64>,
    /// TIES's density grid.
    pub densities: Vec<f64>,
    /// DARE-TIES's drop grid.
    pub drops: Vec<f64>,
    /// DARE-TIES's lambda grid.
    pub dare_lambdas: Vec<f64>,
    /// Add ZipIt! and Permute of the fine-tunes (N-model merges).
    pub alignment: bool,
    /// Images per batch.
    pub batch_size: usize,
    /// Pixel cache per folder, GiB.
    pub cache_gib: f64,
    /// Device.
    pub device: Runner,
    /// The command line, recorded.
    pub command: String,
}

/// One row: a method at a number of tasks and a seed.
#[derive(Clone, Debug, Serialize)]
pub struct TaskRow {
    /// Method label.
    pub method: String,
    /// Tasks merged.
    pub tasks_merged: usize,
    /// Seed of the BN-reset draw and DARE's drops.
    pub seed: u64,
    /// The knobs chosen on the validation split (or set), as text.
    pub chosen: String,
    /// Average normalized accuracy on the validation split of the chosen knobs (searched rows).
    pub val_normalized: Option<f64>,
    /// Every candidate of the search with its validation score (searched rows; the test set
    /// scores only the chosen one).
    pub candidates: Vec<(String, f64)>,
    /// Test accuracy: per task, average, joint.
    pub accuracy: Accuracy,
    /// Average normalized test accuracy: mean over tasks of (task accuracy / that fine-tune's).
    pub normalized: f64,
}

/// What [`tasks_table`] measured (`tasks.json`).
#[derive(Clone, Debug, Serialize)]
pub struct TasksReport {
    /// Every row.
    pub rows: Vec<TaskRow>,
    /// Each fine-tune's own test task accuracy (the normalizers), percent.
    pub fine_tune_accuracy: Vec<f64>,
    /// How it was made.
    pub settings: serde_json::Value,
    /// Wall time, seconds.
    pub seconds: f64,
    /// The table at N tasks and the scaling table, as Markdown.
    #[serde(skip)]
    pub markdown: String,
    /// How this was made: version, commit, command, date, machine, data, every setting.
    pub provenance: crate::provenance::Provenance,
}

/// A full model of `state` with the manifest of the first `n` fine-tunes' merge, its BN reset
/// on `bn` (when any).
fn system_of(
    ep: &Endpoints,
    state: StateDict,
    bn: &Batches,
    device: &Runner,
) -> Result<crate::system::System, MergeError> {
    let stop = ep.spec.stop("full")?;
    let manifest = merged_manifest(ep, &stop, serde_json::Value::Null)?;
    let mut m = Merged {
        manifest,
        zipped: Zipped {
            trunk: state,
            heads: vec![],
        },
    };
    if !bn.is_empty() {
        m.reset_bn(bn, device, &mut |_| {})?;
    }
    m.system(device)
}

/// Average normalized accuracy of `acc` against the fine-tunes' `own` task accuracies.
fn normalized(acc: &Accuracy, own: &[f64]) -> f64 {
    let n = acc.tasks.len().max(1) as f64;
    acc.tasks
        .iter()
        .zip(own)
        .map(|(t, o)| t.accuracy / o.max(1e-9))
        .sum::<f64>()
        / n
}

/// The first `n` fine-tunes as endpoints (manifests and states).
fn first(ep: &Endpoints, n: usize) -> Endpoints {
    Endpoints {
        dirs: ep.dirs[..n].to_vec(),
        manifests: ep.manifests[..n].to_vec(),
        states: ep.states[..n].to_vec(),
        spec: ep.spec.clone(),
    }
}

/// Runs the table (module docs).
///
/// # Errors
/// [`MergeError`] naming the model, option or folder at fault.
pub fn tasks_table(plan: &TasksPlan, obs: &mut dyn Observer) -> Result<TasksReport, MergeError> {
    let t0 = Instant::now();
    let n_all = plan.models.len();
    if let Some(&c) = plan.counts.iter().find(|&&c| c < 2 || c > n_all) {
        return Err(MergeError::param(
            crate::error::MergeParam::Models,
            c,
            format!("task counts must lie in 2..={n_all} (the fine-tunes given)"),
        ));
    }
    let ep = Endpoints::load(&plan.models)?;
    if !matches!(
        ep.manifests[0].heads[0].head,
        crate::models::head::HeadSpec::Text { .. }
    ) {
        return Err(MergeError::Endpoint {
            model: plan.models[0].display().to_string(),
            msg: "has a linear head: the tasks table merges whole networks, which needs text heads (one shared output space)".into(),
        });
    }
    let base_dir = checkpoint::model_dir(&plan.base);
    let bm = checkpoint::read_manifest(&base_dir)?;
    let base = checkpoint::read_weights(&base_dir, &bm.weights)?;
    taskvec::check_fine_tunes(&base, &ep.states.iter().collect::<Vec<_>>())
        .map_err(|e| tv_error(e, &plan.models))?;
    let prep = ep.prep();
    let train = crate::data::load_split(&plan.data_root, "train", prep, plan.cache_gib, None, obs)?;
    // the validation images: a seeded draw from the train images no BN-reset draw of any seed
    // uses, so the choice never sees an image the merges' BN statistics came from
    let draws: Vec<crate::collect::ProbeOptions> = plan
        .seeds
        .iter()
        .map(|&seed| bn_options(plan, seed))
        .collect();
    let idx = crate::collect::probe::validation_positions(
        train.len(),
        &draws.iter().collect::<Vec<_>>(),
        plan.val_images,
        plan.val_seed,
    );
    if idx.len() < plan.val_images {
        return Err(MergeError::param(
            crate::error::MergeParam::ProbeImages,
            plan.val_images,
            format!(
                "only {} train images are left for validation after the BN-reset draws",
                idx.len()
            ),
        ));
    }
    let val = train.subset(&idx);
    obs.info(&format!(
        "validation: {} train images disjoint from the BN-reset draws",
        val.len()
    ));
    let test = crate::data::load_split(&plan.data_root, "test", prep, plan.cache_gib, None, obs)?;
    let tasks_all = ep.tasks();
    // the fine-tunes' own accuracies (test and validation): the normalizers
    let own = |set: &ImageSet| -> Result<Vec<f64>, MergeError> {
        (0..n_all)
            .map(|m| {
                let sys = system_of(&ep, ep.states[m].clone(), &vec![], &plan.device)?;
                let acc = evaluate(
                    &[sys],
                    set,
                    &tasks_all[m..m + 1],
                    plan.batch_size,
                    &plan.device,
                    &mut |_| {},
                );
                Ok(acc.tasks[0].accuracy)
            })
            .collect()
    };
    let own_test = own(&test)?;
    let own_val = own(&val)?;
    let mut rows = Vec::new();
    for &n in &plan.counts {
        let ep_n = first(&ep, n);
        let tasks = &tasks_all[..n];
        let fts: Vec<&StateDict> = ep_n.states.iter().collect();
        let test_row =
            |label: &str, chosen: String, val_norm, state: StateDict, bn: &Batches, seed| {
                let sys = system_of(&ep_n, state, bn, &plan.device)?;
                let acc = evaluate(
                    &[sys],
                    &test,
                    tasks,
                    plan.batch_size,
                    &plan.device,
                    &mut |_| {},
                );
                Ok::<_, MergeError>(TaskRow {
                    method: label.to_string(),
                    tasks_merged: n,
                    seed,
                    chosen,
                    val_normalized: val_norm,
                    candidates: vec![],
                    normalized: normalized(&acc, &own_test[..n]),
                    accuracy: acc,
                })
            };
        // the endpoints: the base (no BN reset: its own statistics) and each fine-tune; they
        // do not depend on the seed, so they are evaluated once and listed under every seed
        let mut endpoints = vec![test_row(
            "base",
            "-".into(),
            None,
            base.clone(),
            &vec![],
            0,
        )?];
        for m in 0..n {
            let label = format!("fine-tune {}", (b'a' + m as u8) as char);
            let state = ep_n.states[m].clone();
            endpoints.push(test_row(&label, "-".into(), None, state, &vec![], 0)?);
        }
        for &seed in &plan.seeds {
            let bn = probe_batches(&train, &bn_options(plan, seed));
            rows.extend(endpoints.iter().cloned().map(|r| TaskRow { seed, ..r }));
            let merge_with = |s: &TaskVectorSettings| -> Result<StateDict, MergeError> {
                taskvec::merge(&base, &fts, s)
                    .map(|(st, _)| st)
                    .map_err(|e| tv_error(e, &plan.models))
            };
            let on_val = |state: StateDict| -> Result<f64, MergeError> {
                let sys = system_of(&ep_n, state, &bn, &plan.device)?;
                let acc = evaluate(
                    &[sys],
                    &val,
                    tasks,
                    plan.batch_size,
                    &plan.device,
                    &mut |_| {},
                );
                Ok(normalized(&acc, &own_val[..n]))
            };
            let settings = |method, lambda| TaskVectorSettings {
                method,
                lambda,
                weights: None,
                seed,
                groups: vec![],
            };
            // weight average of the fine-tunes: base + (1/n) sum tau
            let wavg = settings(TaskVectorMethod::TaskArithmetic, 1.0 / n as f64);
            rows.push(test_row(
                "W.Avg (fine-tunes)",
                "lambda=1/n".into(),
                None,
                merge_with(&wavg)?,
                &bn,
                seed,
            )?);
            // searched rows: each candidate merged, BN reset, scored on validation
            let ties = |density| TaskVectorMethod::Ties {
                density,
                trim: Trim::Global,
                sign: SignRule::Mass,
                disjoint: Disjoint::Mean,
            };
            let dare = |drop| TaskVectorMethod::DareTies {
                drop,
                density: 1.0,
                sign: SignRule::Mass,
                disjoint: Disjoint::Mean,
            };
            let mut searches: Vec<(&str, Vec<TaskVectorSettings>)> = vec![(
                "Task Arithmetic (val)",
                plan.ta_lambdas
                    .iter()
                    .map(|&l| settings(TaskVectorMethod::TaskArithmetic, l))
                    .collect(),
            )];
            searches.push((
                "TIES (val)",
                plan.densities
                    .iter()
                    .flat_map(|&k| plan.ties_lambdas.iter().map(move |&l| (k, l)))
                    .map(|(k, l)| settings(ties(k), l))
                    .collect(),
            ));
            searches.push((
                "DARE-TIES (val)",
                plan.drops
                    .iter()
                    .flat_map(|&p| plan.dare_lambdas.iter().map(move |&l| (p, l)))
                    .map(|(p, l)| settings(dare(p), l))
                    .collect(),
            ));
            for (label, grid) in searches {
                let total = grid.len() as u64;
                let mut candidates = Vec::new();
                let best = phase(obs, &format!("{label} n={n}"), total, |p| {
                    let mut best: Option<(f64, TaskVectorSettings)> = None;
                    for s in grid {
                        let v = on_val(merge_with(&s)?)?;
                        candidates.push((s.method.knobs(s.lambda), v));
                        p(1);
                        if best.as_ref().is_none_or(|(b, _)| v > *b) {
                            best = Some((v, s));
                        }
                    }
                    Ok::<_, MergeError>(best)
                })?;
                if let Some((v, s)) = best {
                    let chosen = s.method.knobs(s.lambda);
                    let mut row = test_row(label, chosen, Some(v), merge_with(&s)?, &bn, seed)?;
                    row.candidates = candidates;
                    rows.push(row);
                }
            }
            let defaults = settings(ties(0.2), 1.0);
            rows.push(test_row(
                "TIES (k=0.2, lambda=1)",
                "defaults".into(),
                None,
                merge_with(&defaults)?,
                &bn,
                seed,
            )?);
            if plan.alignment {
                for method in [
                    Method::Zipit {
                        alpha: 0.3,
                        beta: 0.125,
                    },
                    Method::Permute,
                ] {
                    let label = format!("{} (N models, 20/20)", method.label());
                    let mut mp =
                        crate::merge::MergePlan::new(&plan.models[..n], method, &plan.data_root);
                    mp.settings.seed = seed;
                    mp.settings.bn_reset_images = Some(plan.bn_reset_images);
                    mp.settings.batch_size = plan.batch_size;
                    mp.device = plan.device.clone();
                    mp.cache_gib = plan.cache_gib;
                    mp.eval = Some(crate::merge::EvalPlan {
                        root: plan.data_root.clone(),
                        tasks: Some(tasks.to_vec()),
                    });
                    let out = crate::ops::merge::run(&mp, &mut crate::progress::Silent)?;
                    let acc = out.report.accuracy.ok_or_else(|| {
                        MergeError::Internal("the alignment merge was not evaluated".into())
                    })?;
                    rows.push(TaskRow {
                        method: label,
                        tasks_merged: n,
                        seed,
                        chosen: "defaults".into(),
                        val_normalized: None,
                        candidates: vec![],
                        normalized: normalized(&acc, &own_test[..n]),
                        accuracy: acc,
                    });
                }
            }
            obs.info(&format!(
                "{n} tasks, seed {seed}: {} rows so far",
                rows.len()
            ));
        }
    }
    let settings = serde_json::json!({
        "base": plan.base.display().to_string(),
        "models": plan.models.iter().map(|p| p.display().to_string()).collect::<Vec<_>>(),
        "data": plan.data_root.display().to_string(),
        "val_images": val.len(),
        "val_seed": plan.val_seed,
        "validation": "seeded draw from the train folder, disjoint from every BN-reset draw; criterion: average normalized task accuracy",
        "bn_reset_images": plan.bn_reset_images,
        "seeds": plan.seeds,
        "counts": plan.counts,
        "ta_lambdas": plan.ta_lambdas,
        "ties_lambdas": plan.ties_lambdas,
        "densities": plan.densities,
        "dare_drops": plan.drops,
        "dare_lambdas": plan.dare_lambdas,
        "batch_size": plan.batch_size,
        "test_images": test.len(),
        "command": plan.command,
        "zipmerge_version": env!("CARGO_PKG_VERSION"),
    });
    let markdown = markdown(&rows, n_all, &plan.counts);
    let provenance = crate::provenance::Provenance::new(
        &plan.command,
        if plan.device.engine() { "flex" } else { "burn" },
        vec![
            crate::provenance::DataFolder {
                role: "train (BN reset, validation)",
                path: crate::data::split_dir(&plan.data_root, "train")
                    .display()
                    .to_string(),
                images: train.len(),
            },
            crate::provenance::DataFolder {
                role: "validation",
                path: crate::data::split_dir(&plan.data_root, "train")
                    .display()
                    .to_string(),
                images: val.len(),
            },
            crate::provenance::DataFolder {
                role: "test",
                path: crate::data::split_dir(&plan.data_root, "test")
                    .display()
                    .to_string(),
                images: test.len(),
            },
        ],
        &settings,
    );
    Ok(TasksReport {
        provenance,
        rows,
        fine_tune_accuracy: own_test,
        settings,
        seconds: t0.elapsed().as_secs_f64(),
        markdown,
    })
}

/// The BN-reset draw of `seed` (as every merge draws it: augmented, `seed + 1`).
fn bn_options(plan: &TasksPlan, seed: u64) -> crate::collect::ProbeOptions {
    crate::collect::ProbeOptions::bn_reset(Some(plan.bn_reset_images), plan.batch_size, seed)
}

/// `mean ± std` over seeds (just the mean for one seed).
fn cell(v: &[f64]) -> String {
    let (m, s) = mean_std(v);
    if v.len() > 1 {
        format!("{m:.1} ± {s:.1}")
    } else {
        format!("{m:.1}")
    }
}

/// The methods in row order.
fn methods(rows: &[TaskRow]) -> Vec<String> {
    let mut out: Vec<String> = Vec::new();
    for r in rows {
        if !out.contains(&r.method) {
            out.push(r.method.clone());
        }
    }
    out
}

/// The table at `n_all` tasks (per task, average, normalized, joint; mean ± std over seeds)
/// and the scaling table (average normalized accuracy per number of tasks).
fn markdown(rows: &[TaskRow], n_all: usize, counts: &[usize]) -> String {
    let mut s = String::new();
    let full = counts.iter().copied().max().unwrap_or(n_all);
    let at: Vec<&TaskRow> = rows.iter().filter(|r| r.tasks_merged == full).collect();
    s += &format!("Merging {full} tasks (test accuracy, %; mean ± std over seeds)\n\n| method | chosen on validation |");
    for t in 0..full {
        s += &format!(" task {} |", (b'a' + t as u8) as char);
    }
    s += " avg | normalized | joint |\n|---|---|";
    s += &"---|".repeat(full + 3);
    s += "\n";
    for m in methods(rows) {
        let rs: Vec<&&TaskRow> = at.iter().filter(|r| r.method == m).collect();
        if rs.is_empty() {
            continue;
        }
        s += &format!("| {m} | {} |", rs[0].chosen);
        for t in 0..full {
            let v: Vec<f64> = rs.iter().map(|r| r.accuracy.tasks[t].accuracy).collect();
            s += &format!(" {} |", cell(&v));
        }
        let avg: Vec<f64> = rs.iter().map(|r| r.accuracy.avg).collect();
        let norm: Vec<f64> = rs.iter().map(|r| 100.0 * r.normalized).collect();
        let joint: Vec<f64> = rs.iter().map(|r| r.accuracy.joint).collect();
        s += &format!(" {} | {} | {} |\n", cell(&avg), cell(&norm), cell(&joint));
    }
    if counts.len() > 1 {
        s += "\nAverage normalized accuracy (%) by number of tasks merged (the first n)\n\n| method |";
        for n in counts {
            s += &format!(" {n} |");
        }
        s += "\n|---|";
        s += &"---|".repeat(counts.len());
        s += "\n";
        for m in methods(rows).iter().filter(|m| !m.starts_with("fine-tune")) {
            s += &format!("| {m} |");
            for &n in counts {
                let v: Vec<f64> = rows
                    .iter()
                    .filter(|r| &r.method == m && r.tasks_merged == n)
                    .map(|r| 100.0 * r.normalized)
                    .collect();
                s += &format!(" {} |", if v.is_empty() { "-".into() } else { cell(&v) });
            }
            s += "\n";
        }
    }
    s
}

/// The scaling figure's lines: per method (not the endpoints), its mean and std over seeds of
/// the average normalized accuracy (%) at each number of tasks.
pub fn scaling_series(rows: &[TaskRow]) -> Vec<crate::experiments::plot::TasksSeries> {
    methods(rows)
        .into_iter()
        .filter(|m| !m.starts_with("fine-tune"))
        .map(|m| {
            let mut counts: Vec<usize> = rows
                .iter()
                .filter(|r| r.method == m)
                .map(|r| r.tasks_merged)
                .collect();
            counts.dedup();
            let points = counts
                .into_iter()
                .map(|n| {
                    let v: Vec<f64> = rows
                        .iter()
                        .filter(|r| r.method == m && r.tasks_merged == n)
                        .map(|r| 100.0 * r.normalized)
                        .collect();
                    let (mean, std) = mean_std(&v);
                    (n as f64, mean, std)
                })
                .collect();
            (m, points)
        })
        .collect()
}

/// Writes `tasks.json`, `tasks.md` and the scaling figure `tasks.png` into `out`.
///
/// # Errors
/// [`ExperimentError::Output`] naming the file.
pub fn write_tasks(out: &std::path::Path, r: &TasksReport) -> Result<(), ExperimentError> {
    let json = serde_json::to_vec_pretty(r).map_err(|e| ExperimentError::output(out, e))?;
    let p = out.join("tasks.json");
    crate::util::write_atomic(&p, &json).map_err(|e| ExperimentError::output(&p, e))?;
    let p = out.join("tasks.md");
    crate::util::write_atomic(&p, r.markdown.as_bytes())
        .map_err(|e| ExperimentError::output(&p, e))?;
    let series = scaling_series(&r.rows);
    if series.iter().any(|(_, p)| p.len() > 1) {
        let title = "Merging fine-tunes of one base: normalized accuracy vs tasks merged";
        crate::experiments::plot::tasks_plot(&series, title, &out.join("tasks.png"))
            .map_err(|e| ExperimentError::plot("the scaling figure", e))?;
    }
    Ok(())
}

/// The operation: [`tasks_table`], then its files written to `out` when given ([`write_tasks`]).
///
/// # Errors
/// [`ExperimentError::Merge`] from the runs; [`ExperimentError`] naming an output file.
pub fn run(
    plan: &TasksPlan,
    out: Option<&std::path::Path>,
    obs: &mut dyn Observer,
) -> Result<TasksReport, ExperimentError> {
    let r = tasks_table(plan, obs)?;
    if let Some(out) = out {
        write_tasks(out, &r)?;
    }
    Ok(r)
}
