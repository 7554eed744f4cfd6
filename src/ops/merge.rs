//! `zipmerge merge` as one library call ([`run`]): load and check the endpoints, decode the
//! probe and BN-reset images, reset the endpoints' BN, collect statistics up to the stop,
//! match, rewrite, reset the merged BN, apply the post-merge corrections, evaluate. The CLI's
//! `merge` builds a [`MergePlan`] from its flags (or a [`crate::merge::Recipe`]), calls [`run`]
//! and prints the [`MergeReport`]. Reference doc §1.1 gives the order of the steps.

use std::collections::BTreeMap;
use std::time::Instant;

use serde::Serialize;

use std::path::Path;

use crate::collect::probe::{bn_batches, load_probe, probe_batches};
use crate::correct::{CorrectionReport, Corrections};
use crate::error::MergeError;
use crate::eval::Accuracy;
use crate::merge::{
    aligned_states, build_knobs, images, match_spaces_knobs, statistics_upto, warn_dead_units,
    Batches, DeadUnits, Endpoints, Evaluation, MergePlan, MergeSettings, Merged, Method,
    Statistics,
};
use crate::progress::{phase, Observer};
use crate::spec::Stop;
use crate::state::StateDict;
use crate::system::runner::Runner;

/// The probe folder of a data-free merge (`--probe none`): no image is read.
pub const NO_PROBE: &str = "none";

/// What a merge records in its manifest's provenance and report (`settings`).
#[derive(Clone, Debug, Serialize)]
pub struct MergeProvenance {
    /// Method with its parameters.
    pub method: Method,
    /// ZipIt!'s alpha (`None` for other methods).
    pub alpha: Option<f64>,
    /// ZipIt!'s beta (`None` for other methods).
    pub beta: Option<f64>,
    /// Merge normalisation epsilon.
    pub merge_eps: f64,
    /// Stop name.
    pub stop: String,
    /// Layers zipped.
    pub zipped_layers: usize,
    /// Layers in all.
    pub total_layers: usize,
    /// Source model folders.
    pub sources: Vec<String>,
    /// Probe folder.
    pub probe: String,
    /// Probe images used by the statistics (`None` without statistics).
    pub probe_images: Option<usize>,
    /// Augmented probe.
    pub probe_augment: bool,
    /// Units with zero variance on the probe images.
    pub dead_units: Vec<DeadUnits>,
    /// Images of the BN resets.
    pub bn_reset_images: usize,
    /// The merged model's BN was reset.
    pub merged_bn_reset: bool,
    /// The endpoints' BN was reset first.
    pub endpoint_bn_reset: bool,
    /// Post-merge corrections.
    pub corrections: Corrections,
    /// Feature similarity name.
    pub similarity: &'static str,
    /// Its lambda.
    pub dual_lambda: f64,
    /// Seed.
    pub seed: u64,
    /// Images per batch of statistics, BN reset and evaluation (the BN statistics are per
    /// batch, so this changes the merged weights).
    pub batch_size: usize,
    /// Backend.
    pub backend: String,
    /// Command line.
    pub command: String,
    /// zipmerge's version.
    pub zipmerge_version: &'static str,
}

/// The report of one merge (`report.json`; the keys are a stable interface).
#[derive(Clone, Debug, Serialize)]
pub struct MergeReport {
    /// Method label (`ZipIt!`, `Permute`, ...).
    pub method: String,
    /// The merge as data: `zipmerge merge --recipe report.json` replays it to the same bits.
    pub recipe: crate::merge::Recipe,
    /// The settings as recorded in the manifest.
    pub settings: MergeProvenance,
    /// Stop name.
    pub stop: String,
    /// Layers zipped.
    pub zipped_layers: usize,
    /// Layers in all.
    pub total_layers: usize,
    /// Multiply-accumulates of one forward pass of the merged system (one image, all heads).
    pub flops: u64,
    /// Accuracy on the test split (`None` when not evaluated).
    pub accuracy: Option<Accuracy>,
    /// Seconds per phase (`loading_probe`, `endpoint_bn_reset`, `statistics`, `matching`,
    /// `rewriting`, `bn_reset`, `corrections`, `eval`, `total`).
    pub timings_seconds: BTreeMap<&'static str, f64>,
    /// Passes over the probe images the statistics made (0 or 1).
    pub statistics_passes: usize,
    /// What the corrections did.
    pub correction: Option<CorrectionReport>,
    /// Peak resident memory of the process, MB.
    pub peak_rss_mb: Option<f64>,
    /// How this was made: version, commit, command, date, machine, data, every setting.
    pub provenance: crate::provenance::Provenance,
}

impl MergeReport {
    /// The row label of this merge: method, corrections and stop (`ZipIt! + REPAIR 13/20`).
    pub fn label(&self) -> String {
        let c = self.settings.corrections.label();
        format!("{}{c} {}", self.method, self.stop)
    }

    /// The accuracy table titled `title` ([`Accuracy::table`]); empty when not evaluated.
    pub fn table(&self, title: &str) -> String {
        let t = self.accuracy.as_ref().map(|a| a.table(title));
        t.unwrap_or_default()
    }

    /// The seconds of every phase, one line each (`  statistics:    1.234 s`).
    pub fn timings_text(&self) -> String {
        self.timings_seconds
            .iter()
            .map(|(phase, secs)| format!("  {phase:>18}: {secs:8.3} s\n"))
            .collect()
    }
}

/// A merged model and its report.
#[derive(Clone, Debug)]
pub struct MergeOutcome {
    /// The merged (or partially zipped multi-head) model.
    pub merged: Merged,
    /// What was done and measured.
    pub report: MergeReport,
}

impl MergeOutcome {
    /// Writes the model folder with `report.json`, atomically: an existing folder is replaced
    /// only once everything is written.
    ///
    /// # Errors
    /// [`MergeError::Checkpoint`] when the folder cannot be written.
    pub fn save(&self, dir: &Path) -> Result<(), MergeError> {
        self.merged.save_with_report(dir, &self.report)
    }
}

/// Runs one merge (reference doc §1.1): every input is loaded and checked before the first
/// forward pass, so bad models, stops, settings, probe folders or test sets are refused within
/// seconds.
///
/// ```no_run
/// use zipmerge::merge::{Method, MergePlan};
/// use zipmerge::ops::merge::run;
/// let models = ["models/cifar10-5+5/resnet20x1-a".into(), "models/cifar10-5+5/resnet20x1-b".into()];
/// let plan = MergePlan::new(&models, Method::Permute, "datasets/cifar10-sample".as_ref());
/// let outcome = run(&plan, &mut zipmerge::progress::Silent)?;
/// println!("joint {:.1}%", outcome.report.accuracy.unwrap().joint);
/// # Ok::<(), zipmerge::error::MergeError>(())
/// ```
///
/// # Errors
/// [`MergeError`]: [`MergeError::Param`] for a bad setting (naming it), model, data and
/// checkpoint errors naming the file.
pub fn run(plan: &MergePlan, obs: &mut dyn Observer) -> Result<MergeOutcome, MergeError> {
    let s = &plan.settings;
    s.check()?;
    let mut ep = Endpoints::load(&plan.models)?;
    let stop = ep.spec.stop(&plan.stop)?;
    s.knobs.check(&s.method, &ep.spec, ep.n())?;
    if let Some(path) = &s.path {
        if !stop.is_full() {
            return Err(MergeError::param(
                crate::error::MergeParam::Stop,
                &stop.name,
                "a data-flow path assembles whole networks: the stop must be full",
            ));
        }
        crate::rewrite::path::check(path, &ep.spec, ep.n())?;
    }
    let prep = ep.prep();
    let t_load = Instant::now();
    let draws = s.draws();
    let corrections = s.corrections;
    // a data-free merge (no statistics, no corrections, no BN reset) reads no probe image;
    // `--probe none` asks for one
    let data_free = !s.method.needs_statistics() && !corrections.any() && draws.bn.is_none();
    if plan.probe_dir == Path::new(NO_PROBE) && !data_free {
        let why = if s.method.needs_statistics() {
            format!(
                "{} matches on feature statistics of probe images",
                s.method.label()
            )
        } else if corrections.any() {
            "the corrections measure the merged network on probe images".to_string()
        } else {
            "the BN resets need images: add --bn-reset-images 0 (and the endpoints' reset is skipped with it)".to_string()
        };
        return Err(MergeError::param(
            crate::error::MergeParam::Probe,
            NO_PROBE,
            format!("a data-free merge needs a method without statistics (weight-avg, git-rebasin) and no BN reset or correction; {why}"),
        ));
    }
    let probe = if data_free {
        None
    } else {
        Some(load_probe(
            &plan.probe_dir,
            prep,
            plan.cache_gib,
            &draws,
            obs,
        )?)
    };
    let mut timings = BTreeMap::new();
    timings.insert("loading_probe", t_load.elapsed().as_secs_f64());
    let probe_b = match &probe {
        Some(probe) if s.method.needs_statistics() || corrections.any() => {
            probe_batches(probe, &s.probe_options(), obs)?
        }
        _ => vec![],
    };
    let bn_b = match &probe {
        Some(probe) => bn_batches(probe, draws.bn.as_ref())?,
        None => vec![],
    };
    let reset_merged = !bn_b.is_empty() && s.resets_merged();
    // the test set is loaded and checked before the long steps
    let evaluation = Evaluation::load(plan.eval.as_ref(), &ep, plan.cache_gib, obs)?;
    let t_all = Instant::now();
    let mut timed = |key: &'static str, t: Instant| {
        timings.insert(key, t.elapsed().as_secs_f64());
    };
    let t = Instant::now();
    if s.reset_endpoints(&mut ep, &bn_b, &plan.device, obs)? {
        timed("endpoint_bn_reset", t);
    }
    let mut dead_units = Vec::new();
    let stats = if s.method.needs_statistics() {
        let t = Instant::now();
        let st = phase(obs, "statistics", images(&probe_b) as u64, |p| {
            statistics_upto(&ep, &probe_b, &plan.device, stop.spaces, p)
        })?;
        timed("statistics", t);
        dead_units = warn_dead_units(&st, &ep.spec.spaces, obs);
        Some(st)
    } else {
        None
    };
    let (alpha, beta) = match s.method {
        Method::Zipit { alpha, beta } => (Some(alpha), Some(beta)),
        _ => (None, None),
    };
    let provenance = MergeProvenance {
        method: s.method.clone(),
        alpha,
        beta,
        merge_eps: s.merge_eps,
        stop: stop.name.clone(),
        zipped_layers: stop.zipped,
        total_layers: stop.total,
        sources: plan
            .models
            .iter()
            .map(|p| p.display().to_string())
            .collect(),
        probe: probe
            .as_ref()
            .map_or_else(|| "none (data-free)".to_string(), |p| p.set.source.clone()),
        probe_images: stats.as_ref().map(|s| s.images),
        probe_augment: s.probe_augment,
        dead_units,
        bn_reset_images: images(&bn_b),
        merged_bn_reset: reset_merged,
        endpoint_bn_reset: s.endpoint_bn_reset,
        corrections,
        similarity: s.similarity.name(),
        dual_lambda: s.similarity.lambda(),
        seed: s.seed,
        batch_size: s.batch_size,
        backend: plan.backend.clone(),
        command: plan.command.clone(),
        zipmerge_version: env!("CARGO_PKG_VERSION"),
    };
    let prov_json = serde_json::json!({ "merge": provenance });
    let Combined { merged, correction } = combine(
        &ep,
        stats.as_ref(),
        &probe_b,
        &bn_b,
        &stop,
        s,
        &plan.device,
        prov_json,
        obs,
        &mut timed,
    )?;
    let sys = merged.system(&plan.device)?;
    let flops = sys.flops();
    let t = Instant::now();
    let accuracy = evaluation.run(sys, s.batch_size, &plan.device, obs);
    if accuracy.is_some() {
        timed("eval", t);
    }
    timed("total", t_all);
    let mut data: Vec<crate::provenance::DataFolder> = probe
        .iter()
        .map(|p| crate::provenance::DataFolder {
            role: "probe",
            path: plan.probe_dir.display().to_string(),
            images: p.total,
        })
        .collect();
    if let (Some(e), Some(a)) = (&plan.eval, &accuracy) {
        data.push(crate::provenance::DataFolder::test_split(&e.root, a.images));
    }
    let block = crate::provenance::Provenance::new(
        &plan.command,
        &plan.backend,
        data,
        &crate::merge::Recipe::of(plan),
    );
    let report = MergeReport {
        provenance: block,
        method: s.method.label(),
        recipe: crate::merge::Recipe::of(plan),
        settings: provenance,
        stop: stop.name.clone(),
        zipped_layers: stop.zipped,
        total_layers: stop.total,
        flops,
        accuracy,
        timings_seconds: timings,
        statistics_passes: stats.as_ref().map_or(0, |s| s.passes),
        correction,
        peak_rss_mb: crate::util::peak_rss_mb(),
    };
    Ok(MergeOutcome { merged, report })
}

/// What [`combine`] made: the merged model (BN reset, path assembled, corrected) and what the
/// corrections did.
pub(crate) struct Combined {
    /// The merged model.
    pub merged: Merged,
    /// The corrections' report.
    pub correction: Option<CorrectionReport>,
}

/// The steps of a merge after the statistics (reference doc §1.1 steps 4-6): matching (per
/// space with the knobs), rewriting (per layer group with the knobs), the merged BN reset, the
/// data-flow path when the settings give one, the post-merge corrections. `stats` must cover
/// the stop's spaces; `timed(phase, start)` records each phase's seconds. [`run`] and
/// `zipmerge evolve`'s candidates share it, so a recipe replays to the bits a search scored.
///
/// # Errors
/// As the steps: [`MergeError`] naming the space, tensor or option at fault.
#[allow(clippy::too_many_arguments)]
pub(crate) fn combine(
    ep: &Endpoints,
    stats: Option<&Statistics>,
    probe_b: &Batches,
    bn_b: &Batches,
    stop: &Stop,
    s: &MergeSettings,
    device: &Runner,
    provenance: serde_json::Value,
    obs: &mut dyn Observer,
    timed: &mut dyn FnMut(&'static str, Instant),
) -> Result<Combined, MergeError> {
    let t = Instant::now();
    let transforms = match_spaces_knobs(
        ep,
        &s.method,
        &s.knobs,
        stats,
        stop.spaces,
        s.merge_eps,
        s.similarity.lambda(),
    )?;
    timed("matching", t);
    let t = Instant::now();
    let mut merged = build_knobs(ep, &transforms, stop, &s.knobs, provenance)?;
    timed("rewriting", t);
    if !bn_b.is_empty() && s.resets_merged() {
        let t = Instant::now();
        phase(obs, "BN reset", images(bn_b) as u64, |p| {
            merged.reset_bn(bn_b, device, p)
        })?;
        timed("bn_reset", t);
    }
    if let Some(path) = &s.path {
        let t = Instant::now();
        let aligned = aligned_states(ep, &transforms, stop)?;
        let refs: Vec<&StateDict> = aligned.iter().collect();
        merged.zipped.trunk =
            crate::rewrite::path::assemble(&ep.spec, &refs, &merged.zipped.trunk, path)?;
        timed("path", t);
    }
    let corrections = s.corrections;
    let correction = if corrections.any() {
        let t = Instant::now();
        obs.info(&format!(
            "correcting the merged trunk ({})",
            corrections.label().trim_start_matches(" + ")
        ));
        let r = crate::correct::apply(
            &mut merged.zipped.trunk,
            &ep.states,
            &ep.spec,
            &transforms,
            stop,
            probe_b,
            ep.prep(),
            &corrections,
        )?;
        if !r.refit_skipped.is_empty() {
            obs.warn(&format!(
                "warning: the refit left {} of its {} layers as merged (fewer than {} probe pixels per unknown on {} probe images): {}; --probe-images {} would refit them all",
                r.refit_skipped.len(),
                r.refit_layers,
                crate::correct::refit::MIN_ROWS_PER_UNKNOWN,
                r.images,
                r.refit_skipped.join(", "),
                r.refit_images_needed
            ));
        }
        timed("corrections", t);
        Some(r)
    } else {
        None
    };
    Ok(Combined { merged, correction })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::merge::MergeSettings;
    use burn::tensor::Device;

    /// `burn`'s `Device::default()` prefers wgpu when it is compiled in; the plan of
    /// [`MergePlan::new`] says it runs on the CPU (flex) and must.
    #[test]
    fn a_new_plan_runs_on_flex() {
        let p = MergePlan::new(&[], Method::Permute, Path::new("data"));
        assert!(*p.device == Device::flex());
        assert_eq!(p.backend, "flex");
        assert!(p.device.engine());
    }

    /// One BN-reset rule for merge, sweep and Table 1: Git Re-Basin skips it only when asked,
    /// and nothing is reset without BN-reset images.
    #[test]
    fn the_merged_bn_reset_rule() {
        let rebasin = Method::GitRebasin { seed: 0 };
        let mut s = MergeSettings::new(rebasin.clone());
        assert!(s.resets_merged() && s.resets_merge_by(&Method::Permute));
        s.rebasin_bn_reset = false;
        assert!(!s.resets_merged() && !s.resets_merge_by(&rebasin));
        assert!(s.resets_merge_by(&Method::Permute));
        s.bn_reset_images = Some(0);
        assert!(!s.resets_merge_by(&Method::Permute));
    }
}
