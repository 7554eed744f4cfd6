//! `zipmerge reproduce table1`: the ZipIt! Table 1 layout over endpoint groups ([`table1`]):
//! endpoints, W.Avg, Permute, ZipIt! at its stops, the ensemble, optionally the extended rows,
//! aggregated as mean +- std over groups.

use std::path::{Path, PathBuf};
use std::time::Instant;

use serde::Serialize;

use crate::correct::Corrections;
use crate::error::{ExperimentError, MergeError, MergeParam};
use crate::experiments::prepare::*;
use crate::experiments::table::{aggregate, csv, markdown, Line};
use crate::experiments::{match_all, Counters, Row};
use crate::merge::{self, MergeSettings, Method};
use crate::progress::Observer;

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
    /// Seeds of the probe and BN-reset draws (and Git Re-Basin's order) to run every group
    /// with; the table gives mean +- std over every (group, seed) run. Empty: `settings.seed`.
    pub seeds: Vec<u64>,
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
    /// How this was made: version, commit, command, date, machine, data, every setting.
    pub provenance: crate::provenance::Provenance,
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
    let seeds: Vec<u64> = if plan.seeds.is_empty() {
        vec![s.seed]
    } else {
        plan.seeds.clone()
    };
    // every group is loaded and checked once, before any image is decoded
    let loaded = plan
        .groups
        .iter()
        .map(|(_, m)| merge::Endpoints::load(m))
        .collect::<Result<Vec<_>, _>>()?;
    let resnet20 = loaded
        .iter()
        .all(|ep| ep.spec.net.arch == crate::models::Arch::Resnet20);
    // the paper's numbers are ResNet-20's: never printed beside another architecture's rows
    let paper = plan.paper && resnet20;
    if plan.paper && !resnet20 {
        obs.warn("note: --paper: the paper's CIFAR-10 5+5 numbers are for ResNet-20 x4; they are not shown beside these rows of another architecture");
    }
    let device = &plan.inputs.device;
    let prep = loaded[0].prep();
    if let Some((i, ep)) = loaded.iter().enumerate().find(|(_, ep)| ep.prep() != prep) {
        return Err(MergeError::param(
            MergeParam::Models,
            format!("group {}", i + 1),
            format!(
                "takes inputs as: {}; the first group takes: {}. Every group is evaluated on one decoding of the data: give groups with the same preprocessing",
                ep.prep().describe(),
                prep.describe()
            ),
        ));
    }
    let inputs = &plan.inputs;
    let test =
        crate::data::load_split(&inputs.test_root, "test", prep, inputs.cache_gib, None, obs)?;
    let t0 = Instant::now();
    let mut all_rows: Vec<Vec<Row>> = Vec::new();
    let mut counters = Counters::default();
    let eps = s.merge_eps;
    let mut probe_total = 0;
    for &seed in &seeds {
        let seeded = MergeSettings { seed, ..s.clone() };
        let s = &seeded;
        let rebasin = Method::GitRebasin { seed };
        if seeds.len() > 1 {
            obs.info(&format!("seed {seed}"));
        }
        // each seed resets the endpoints' BN afresh, from the weights as loaded
        let endpoints = loaded.clone();
        let train = crate::collect::probe::load_probe(
            &inputs.probe_dir,
            prep,
            inputs.cache_gib,
            &s.draws(),
            obs,
        )?;
        probe_total = train.total;
        let tasks = endpoints
            .iter()
            .map(|ep| tasks_checked(ep, &test))
            .collect::<Result<Vec<_>, _>>()?;
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
    }
    let lines = aggregate(&all_rows, paper);
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
        provenance: plan.inputs.provenance(
            probe_total,
            test.len(),
            &serde_json::json!({
                "groups": plan.groups,
                "extended": plan.extended,
                "paper": plan.paper,
                "cca_reg": plan.cca_reg,
                "dual_lambda": plan.dual_lambda,
                "refit_ridge": plan.refit_ridge,
                "seeds": seeds,
                "settings": s,
            }),
        ),
        paper_note: paper.then_some("paper numbers: ZipIt! (ICLR 2024) CIFAR-10 5+5, ResNet-20 x4 with CLIP ViT-B/32 text heads, 100 epochs; ours: the models and heads listed above"),
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

/// The operation: [`table1`], then its files written to `out` when given ([`write_table1`]).
///
/// # Errors
/// [`ExperimentError::Merge`] from the runs; [`ExperimentError`] naming an output file.
pub fn run(
    plan: &Table1Plan,
    out: Option<&std::path::Path>,
    obs: &mut dyn Observer,
) -> Result<Table1Report, ExperimentError> {
    let r = table1(plan, obs)?;
    if let Some(out) = out {
        write_table1(out, &r)?;
    }
    Ok(r)
}
