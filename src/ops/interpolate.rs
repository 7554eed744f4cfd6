//! `zipmerge interpolate`: accuracy and loss along the straight line between two endpoints,
//! `theta_t = (1 - t) theta_A + t pi(theta_B)`, with model B aligned to A first (`pi`: Permute
//! on activations, Git Re-Basin weight matching, or none) — the central plot of Git Re-Basin
//! (Ainsworth et al., ICLR 2023, Fig. 1) and REPAIR (Jordan et al., ICLR 2023, Fig. 1), whose
//! gap to the endpoints' line is the **barrier**.
//!
//! Every point is a merge of the two endpoints through `ops::merge::combine`: the method
//! (W.Avg for `none`) at merge epsilon 0 with the layer-group weights `[1 - t, t]`
//! ([`crate::merge::knobs`]) everywhere, so t = 0 is model A and t = 1 is aligned B, bit for bit
//! before the BN reset. Each point's BN statistics are then reset on the BN-reset images, as
//! REPAIR does for networks with BatchNorm (`--bn-reset-images 0`: the interpolated running
//! statistics are kept). Points are evaluated on the test split: the curve is a diagnostic, not
//! a search.
//!
//! Barriers (Entezari et al., ICLR 2022, Def. 1; Frankle et al., ICML 2020): the loss barrier is
//! `max_t [L(theta_t) - ((1 - t) L(theta_0) + t L(theta_1))]`, the accuracy barrier
//! `max_t [((1 - t) acc_0 + t acc_1) - acc_t]`, with L the mean of the tasks' cross-entropies
//! and acc the joint accuracy.

use std::path::PathBuf;

use serde::Serialize;

use super::merge::{combine, Combined};
use crate::collect::probe::{bn_batches, load_probe, probe_batches};
use crate::error::{ExperimentError, MergeError, MergeParam};
use crate::eval::runner::{check_evaluation, evaluate_on, EvalSet};
use crate::eval::Accuracy;
use crate::merge::knobs::{layer_groups, GroupWeights, Knobs};
use crate::merge::{images, statistics, Endpoints, MergeSettings, Method};
use crate::progress::Observer;
use crate::provenance::{DataFolder, Provenance};
use crate::system::runner::Runner;

/// How model B is aligned to model A before the line is drawn.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Align {
    /// No alignment: the naive average's line.
    None,
    /// Permute (Hungarian matching of activation correlations, reference doc §3.2).
    Permute,
    /// Git Re-Basin weight matching (data-free, reference doc §3.5).
    GitRebasin,
}

impl Align {
    /// The merge method whose clusters align B to A.
    fn method(self, seed: u64) -> Method {
        match self {
            Align::None => Method::WeightAvg,
            Align::Permute => Method::Permute,
            Align::GitRebasin => Method::GitRebasin { seed },
        }
    }
}

/// One interpolation.
#[derive(Clone, Debug)]
pub struct InterpolatePlan {
    /// The two endpoints, A then B.
    pub models: Vec<PathBuf>,
    /// The alignment of B.
    pub align: Align,
    /// Points on `[0, 1]`, ends included (>= 2).
    pub points: usize,
    /// Probe and BN-reset draws, endpoint BN reset, batch size, seed (the method and the merge
    /// epsilon are set per point).
    pub settings: MergeSettings,
    /// Probe folder (statistics of Permute, BN-reset images).
    pub probe_dir: PathBuf,
    /// Data root whose `test/` is evaluated.
    pub test_root: PathBuf,
    /// Pixel cache, GiB.
    pub cache_gib: f64,
    /// Device.
    pub device: Runner,
    /// Backend name.
    pub backend: String,
    /// Command line.
    pub command: String,
}

/// One point of the curve.
#[derive(Clone, Debug, Serialize)]
pub struct Point {
    /// Position on the line (0: model A, 1: aligned model B).
    pub t: f64,
    /// Joint and per-task accuracy and loss on the test split.
    pub accuracy: Accuracy,
    /// Mean of the tasks' cross-entropies (nats).
    pub loss: f64,
}

/// What [`interpolate`] measured (`interpolate.json`).
#[derive(Clone, Debug, Serialize)]
pub struct InterpolateReport {
    /// The alignment.
    pub align: Align,
    /// Every point, t ascending.
    pub points: Vec<Point>,
    /// The loss barrier (module docs), nats.
    pub loss_barrier: f64,
    /// The joint-accuracy barrier (module docs), points.
    pub accuracy_barrier: f64,
    /// The lowest joint accuracy on the curve, percent, and where.
    pub worst_joint: (f64, f64),
    /// Images of each point's BN reset (0: none).
    pub bn_reset_images: usize,
    /// Seconds.
    pub seconds: f64,
    /// How this was made.
    pub provenance: Provenance,
}

impl InterpolateReport {
    /// The curve as CSV: `t,joint,avg,loss,task_<i>_acc...,task_<i>_loss...`.
    pub fn csv(&self) -> String {
        let n = self.points.first().map_or(0, |p| p.accuracy.tasks.len());
        let mut c = String::from("t,joint,avg,loss");
        for i in 0..n {
            c.push_str(&format!(",task{i}_acc,task{i}_loss"));
        }
        c.push('\n');
        for p in &self.points {
            c.push_str(&format!(
                "{:.4},{:.4},{:.4},{:.6}",
                p.t, p.accuracy.joint, p.accuracy.avg, p.loss
            ));
            for t in &p.accuracy.tasks {
                c.push_str(&format!(",{:.4},{:.6}", t.accuracy, t.loss));
            }
            c.push('\n');
        }
        c
    }
}

/// The barriers of a curve of `(t, loss, joint)` points (module docs): (loss, accuracy).
pub fn barriers(curve: &[(f64, f64, f64)]) -> (f64, f64) {
    let (Some(first), Some(last)) = (curve.first(), curve.last()) else {
        return (0.0, 0.0);
    };
    let mut lb = f64::MIN;
    let mut ab = f64::MIN;
    for &(t, l, a) in curve {
        lb = lb.max(l - ((1.0 - t) * first.1 + t * last.1));
        ab = ab.max((1.0 - t) * first.2 + t * last.2 - a);
    }
    (lb, ab)
}

/// Runs the interpolation (module docs).
///
/// # Errors
/// [`MergeError::Param`] for fewer than 2 points or a model count other than two; the merge's
/// errors naming the model, folder or option.
pub fn interpolate(
    plan: &InterpolatePlan,
    obs: &mut dyn Observer,
) -> Result<InterpolateReport, MergeError> {
    let t0 = std::time::Instant::now();
    if plan.points < 2 {
        return Err(MergeError::param(
            MergeParam::Points,
            plan.points,
            "an interpolation needs at least 2 points (its ends)",
        ));
    }
    if plan.models.len() != 2 {
        return Err(MergeError::param(
            MergeParam::Models,
            plan.models.len(),
            "an interpolation runs between exactly two models",
        ));
    }
    let mut base = plan.settings.clone();
    base.method = plan.align.method(base.seed);
    base.merge_eps = 0.0;
    base.check()?;
    let mut ep = Endpoints::load(&plan.models)?;
    let stop = ep.spec.stop("full")?;
    let prep = ep.prep();
    let draws = base.draws();
    let probe = load_probe(&plan.probe_dir, prep, plan.cache_gib, &draws, obs)?;
    let test = crate::data::load_split(&plan.test_root, "test", prep, plan.cache_gib, None, obs)?;
    let tasks = ep.tasks();
    check_evaluation(&ep.heads(), &test, &tasks)?;
    let probe_b = if base.method.needs_statistics() {
        probe_batches(&probe, &base.probe_options(), obs)?
    } else {
        vec![]
    };
    let bn_b = bn_batches(&probe, draws.bn.as_ref())?;
    base.reset_endpoints(&mut ep, &bn_b, &plan.device, obs)?;
    let stats = if base.method.needs_statistics() {
        Some(statistics(&ep, &probe_b, &plan.device, &mut |_| {})?)
    } else {
        None
    };
    let groups = layer_groups(&ep.spec);
    let set = EvalSet::new(&test, &tasks, base.batch_size, &plan.device, true);
    let mut points = Vec::new();
    obs.begin("interpolate", plan.points as u64);
    for i in 0..plan.points {
        let t = i as f64 / (plan.points - 1) as f64;
        let s = MergeSettings {
            knobs: Knobs {
                space_alpha_beta: vec![],
                group_weights: groups
                    .iter()
                    .map(|g| GroupWeights {
                        group: g.clone(),
                        weights: vec![1.0 - t, t],
                    })
                    .collect(),
            },
            ..base.clone()
        };
        let mut quiet = crate::progress::Silent;
        let Combined { merged, .. } = combine(
            &ep,
            stats.as_ref(),
            &probe_b,
            &bn_b,
            &stop,
            &s,
            &plan.device,
            serde_json::Value::Null,
            &mut quiet,
            &mut |_, _| {},
        )?;
        let sys = merged.system(&plan.device)?;
        let accuracy = evaluate_on(&set, &[sys], &plan.device, &mut |_| {}, None);
        let loss =
            accuracy.tasks.iter().map(|t| t.loss).sum::<f64>() / accuracy.tasks.len().max(1) as f64;
        points.push(Point { t, accuracy, loss });
        obs.advance(i as u64 + 1);
    }
    obs.end();
    let curve: Vec<(f64, f64, f64)> = points
        .iter()
        .map(|p| (p.t, p.loss, p.accuracy.joint))
        .collect();
    let (loss_barrier, accuracy_barrier) = barriers(&curve);
    let worst = points
        .iter()
        .map(|p| (p.accuracy.joint, p.t))
        .fold((f64::MAX, 0.0), |a, b| if b.0 < a.0 { b } else { a });
    let provenance = Provenance::new(
        &plan.command,
        &plan.backend,
        vec![
            DataFolder {
                role: "probe",
                path: plan.probe_dir.display().to_string(),
                images: probe.total,
            },
            DataFolder::test_split(&plan.test_root, set.len()),
        ],
        &serde_json::json!({
            "models": plan.models,
            "align": plan.align,
            "points": plan.points,
            "settings": base,
        }),
    );
    Ok(InterpolateReport {
        align: plan.align,
        points,
        loss_barrier,
        accuracy_barrier,
        worst_joint: worst,
        bn_reset_images: images(&bn_b),
        seconds: t0.elapsed().as_secs_f64(),
        provenance,
    })
}

/// The operation: [`interpolate`] once per alignment in `aligns` (the plan's `align` is
/// replaced), then, with `out`, `interpolate.csv` (an `align` column first),
/// `interpolate.json` and `interpolate.png` (every curve) written there.
///
/// # Errors
/// [`ExperimentError::Merge`] as [`interpolate`]; [`ExperimentError`] naming an output file that
/// cannot be written.
pub fn run(
    plan: &InterpolatePlan,
    aligns: &[Align],
    out: Option<&std::path::Path>,
    obs: &mut dyn Observer,
) -> Result<Vec<InterpolateReport>, ExperimentError> {
    let mut reports = Vec::new();
    for &a in aligns {
        let p = InterpolatePlan {
            align: a,
            ..plan.clone()
        };
        obs.info(&format!("interpolating with --align {}", name(a)));
        reports.push(interpolate(&p, obs)?);
    }
    if let Some(out) = out {
        let mut csv = String::new();
        for (i, r) in reports.iter().enumerate() {
            for (j, line) in r.csv().lines().enumerate() {
                if j == 0 && i > 0 {
                    continue;
                }
                let first = if j == 0 { "align" } else { name(r.align) };
                csv.push_str(&format!("{first},{line}\n"));
            }
        }
        use crate::experiments::prepare::{json_bytes, write};
        write(&out.join("interpolate.csv"), csv.as_bytes())?;
        write(&out.join("interpolate.json"), &json_bytes(&reports)?)?;
        let curves: Vec<crate::experiments::plot::Curve> = reports
            .iter()
            .map(|r| {
                (
                    format!(
                        "{} (barrier {:.1} pts, {:.3} nats)",
                        name(r.align),
                        r.accuracy_barrier,
                        r.loss_barrier
                    ),
                    r.points
                        .iter()
                        .map(|p| (p.t, p.accuracy.joint, p.accuracy.avg, p.loss))
                        .collect(),
                )
            })
            .collect();
        let title = format!(
            "(1-t) A + t pi(B), BN reset on {} images per point",
            reports.first().map_or(0, |r| r.bn_reset_images)
        );
        crate::experiments::plot::interpolation_plot(&curves, &title, &out.join("interpolate.png"))
            .map_err(|e| ExperimentError::plot("the interpolation plot", e))?;
    }
    Ok(reports)
}

/// `none`, `permute` or `git-rebasin`, as `--align` spells it.
pub fn name(a: Align) -> &'static str {
    match a {
        Align::None => "none",
        Align::Permute => "permute",
        Align::GitRebasin => "git-rebasin",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Hand-derived: ends with loss 1 and 3, the middle at 4 against the line's 2: barrier 2;
    /// joint 80 and 60 at the ends, 30 in the middle against 70: barrier 40.
    #[test]
    fn barriers_are_the_largest_gap_to_the_line() {
        let (l, a) = barriers(&[(0.0, 1.0, 80.0), (0.5, 4.0, 30.0), (1.0, 3.0, 60.0)]);
        assert_eq!((l, a), (2.0, 40.0));
        // a convex curve has no barrier beyond the ends (0 at the ends themselves)
        let (l, a) = barriers(&[(0.0, 1.0, 80.0), (0.5, 1.5, 75.0), (1.0, 3.0, 60.0)]);
        assert_eq!((l, a), (0.0, 0.0));
    }
}
