//! `zipmerge sweep`: every stop of one method over one endpoint group ([`sweep`]), with the
//! endpoints and the ensemble as reference rows; statistics are collected once and every space
//! is matched once, only rewriting, BN reset and evaluation run per stop.

use std::path::{Path, PathBuf};
use std::time::Instant;

use serde::Serialize;

use crate::error::MergeParam;
use crate::error::{ExperimentError, MergeError};
use crate::experiments::prepare::*;
use crate::experiments::{match_all, Counters, Row};
use crate::merge::{images, MergeSettings, Method};
use crate::progress::Observer;

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
    /// How this was made: version, commit, command, date, machine, data, every setting.
    pub provenance: crate::provenance::Provenance,
}

/// Merges at every stop of `plan` from one statistics pass and one matching, and evaluates each
/// with the endpoints and their ensemble (reference doc §5).
///
/// # Errors
/// [`MergeError`] naming the model, stop, setting or folder at fault.
pub fn sweep(plan: &SweepPlan, obs: &mut dyn Observer) -> Result<SweepReport, MergeError> {
    let s = &plan.settings;
    s.check()?;
    let ep = crate::merge::Endpoints::load(&plan.models)?;
    let mut stops: Vec<crate::spec::Stop> = match &plan.stops {
        None => ep.spec.stops(),
        Some(v) => v
            .iter()
            .map(|n| ep.spec.stop(n.trim()))
            .collect::<Result<_, _>>()?,
    };
    // a full zip averages the output layers: undefined for linear heads over different
    // classes. Checked here, before any image is decoded.
    let per_task_heads = matches!(
        ep.manifests[0].heads[0].head,
        crate::models::head::HeadSpec::Linear
    ) && ep
        .manifests
        .iter()
        .any(|m| m.heads[0].classes != ep.manifests[0].heads[0].classes);
    if per_task_heads {
        if let Some(full) = stops.iter().find(|st| st.is_full()) {
            if plan.stops.is_some() {
                return Err(MergeError::param(
                    MergeParam::Stop,
                    &full.name,
                    "a full zip averages the final linear layers, undefined for logit heads over different classes: leave it out of --stops",
                ));
            }
            obs.warn(&format!(
                "note: stop {} skipped: a full zip averages the final linear layers, undefined for these logit heads over different classes",
                full.name
            ));
        }
        stops.retain(|st| !st.is_full());
    }
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
        provenance: plan.inputs.provenance(
            train.total,
            test.len(),
            &serde_json::json!({
                "models": plan.models,
                "stops": plan.stops,
                "settings": s,
            }),
        ),
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
    let title = format!(
        "{} partial zips: accuracy vs FLOPs ({} probe, {} BN-reset, {} test images)",
        report.method.label(),
        report.probe_images,
        report.bn_reset_images,
        report.test_images
    );
    crate::experiments::plot::sweep_plot(
        &report.rows,
        &title,
        &out.join("sweep.svg"),
        &out.join("sweep.png"),
    )
    .map_err(|e| ExperimentError::plot("the sweep plot", e))?;
    write(&out.join("sweep.csv"), c.as_bytes())?;
    write(&out.join("sweep.json"), &json_bytes(report)?)
}

/// The operation: [`sweep`], then its files written to `out` when given ([`write_sweep`]).
///
/// # Errors
/// [`ExperimentError::Merge`] from the runs; [`ExperimentError`] naming an output file.
pub fn run(
    plan: &SweepPlan,
    out: Option<&std::path::Path>,
    obs: &mut dyn Observer,
) -> Result<SweepReport, ExperimentError> {
    let r = sweep(plan, obs)?;
    if let Some(out) = out {
        write_sweep(out, &r)?;
    }
    Ok(r)
}
