//! A task-vector merge as one library call ([`run_task_vectors`]): a base and N >= 2 of its
//! fine-tunes -> [`crate::taskvec::merge`] (Task Arithmetic, TIES, DARE; no statistics, no
//! matching) -> the base's BN running statistics reset on the BN-reset images -> evaluation.
//!
//! Heads: text heads share one embedding space, so the whole network (its final projection
//! included) is merged and the result has one head over the tasks' classes. Linear heads over
//! the same classes are merged likewise. Linear heads over different classes stay per model:
//! the merged trunk runs up to the last partial stop, and each task keeps its fine-tune's own
//! layers after it (as Task Arithmetic keeps each task's own head, reference doc §A.3).

use std::collections::BTreeMap;
use std::time::Instant;

use serde::Serialize;

use crate::checkpoint;
use crate::collect::probe::{bn_batches, load_probe, Draws};
use crate::collect::ProbeOptions;
use crate::error::{MergeError, MergeParam};
use crate::eval::Accuracy;
use crate::merge::Evaluation;
use crate::merge::{images, merged_manifest, tv_error, Endpoints, Merged, TaskVectorPlan};
use crate::models::head::HeadSpec;
use crate::progress::{phase, Observer};
use crate::rewrite::Zipped;
use crate::taskvec::{self, TaskVectorReport, TaskVectorSettings};

/// How a task-vector merge was made (`report.json`'s `settings`, the manifest's provenance).
#[derive(Clone, Debug, Serialize)]
pub struct TaskVectorProvenance {
    /// The base model folder.
    pub base: String,
    /// The fine-tunes, in `--model` order.
    pub sources: Vec<String>,
    /// Method and knobs.
    pub task_vectors: TaskVectorSettings,
    /// `merged` (one head) or `per model after stop S` (linear heads over different classes).
    pub heads: String,
    /// The BN-reset folder and images (0: the base's running statistics kept).
    pub probe: String,
    /// Images of the BN reset.
    pub bn_reset_images: usize,
    /// Batch size of BN reset and evaluation (BN statistics are per batch).
    pub batch_size: usize,
    /// Seed of the BN-reset draw.
    pub seed: u64,
    /// Backend.
    pub backend: String,
    /// The command.
    pub command: String,
}

/// What a task-vector merge did and measured (`report.json`).
#[derive(Clone, Debug, Serialize)]
pub struct TaskVectorMergeReport {
    /// Row label, e.g. `TIES (k=0.2, lambda=1)`.
    pub method: String,
    /// The merge as data: `zipmerge merge --recipe report.json` replays it to the same bits.
    pub recipe: crate::merge::Recipe,
    /// How it was made.
    pub settings: TaskVectorProvenance,
    /// The stop of the merged trunk (`20/20`: the whole network).
    pub stop: String,
    /// Multiply-accumulates of one forward pass (one image, all heads).
    pub flops: u64,
    /// Accuracy on the test split (`None` when not evaluated).
    pub accuracy: Option<Accuracy>,
    /// Trim / election figures.
    pub task_vectors: TaskVectorReport,
    /// Seconds per phase (`merge`, `bn_reset`, `eval`, `total`).
    pub timings_seconds: BTreeMap<&'static str, f64>,
    /// Peak resident memory, MB.
    pub peak_rss_mb: Option<f64>,
    /// How this was made: version, commit, command, date, machine, data, every setting.
    pub provenance: crate::provenance::Provenance,
}

impl TaskVectorMergeReport {
    /// The accuracy table titled `title`; empty when not evaluated.
    pub fn table(&self, title: &str) -> String {
        self.accuracy
            .as_ref()
            .map(|a| a.table(title))
            .unwrap_or_default()
    }
}

/// A merged model and its report.
#[derive(Clone, Debug)]
pub struct TaskVectorOutcome {
    /// The merged model.
    pub merged: Merged,
    /// Its report.
    pub report: TaskVectorMergeReport,
}

impl TaskVectorOutcome {
    /// Writes the model folder with `report.json`, atomically.
    ///
    /// # Errors
    /// [`MergeError::Checkpoint`] when the folder cannot be written.
    pub fn save(&self, dir: &std::path::Path) -> Result<(), MergeError> {
        self.merged.save_with_report(dir, &self.report)
    }
}

/// What a task-vector merge reads, loaded and checked: the fine-tunes, the base, and the stop
/// the merged trunk runs to (full; the last partial stop for linear heads over different
/// classes).
pub(crate) struct TaskVectorInputs {
    /// The fine-tunes.
    pub ep: Endpoints,
    /// The base's weights.
    pub base: checkpoint::StateDict,
    /// The merged trunk's stop.
    pub stop: crate::spec::Stop,
    /// Linear heads over different classes: each task keeps its own head after `stop`.
    pub linear_per_model: bool,
}

/// Loads and checks the inputs of `plan` ([`run_task_vectors`]'s first half).
///
/// # Errors
/// As [`run_task_vectors`] before any image is decoded.
pub(crate) fn load_inputs(plan: &TaskVectorPlan) -> Result<TaskVectorInputs, MergeError> {
    let s = &plan.settings;
    s.check(plan.models.len())
        .map_err(|e| tv_error(e, &plan.models))?;
    if plan.batch_size == 0 {
        return Err(MergeError::param(
            MergeParam::BatchSize,
            0,
            "expected an integer >= 1",
        ));
    }
    let ep = Endpoints::load(&plan.models)?;
    let base_dir = checkpoint::model_dir(&plan.base);
    let bm = checkpoint::read_manifest(&base_dir)?;
    let a = &ep.manifests[0];
    let incompatible = |differs: String, first: String| MergeError::Incompatible {
        model: plan.base.display().to_string(),
        differs,
        first: format!("{} {first}", plan.models[0].display()),
        expected: "--base must be the model the fine-tunes start from",
    };
    if bm.is_multi_head() {
        return Err(MergeError::Endpoint {
            model: base_dir.display().to_string(),
            msg: "is a multi-head model; the base must be a single model".into(),
        });
    }
    if bm.arch != a.arch || bm.width != a.width {
        return Err(incompatible(
            format!("(--base) is {} x{} but", bm.arch, bm.width),
            format!("is {} x{}", a.arch, a.width),
        ));
    }
    let kind = |h: &HeadSpec| matches!(h, HeadSpec::Text { .. });
    if kind(&bm.heads[0].head) != kind(&a.heads[0].head) {
        return Err(incompatible(
            "(--base) has another head kind than".into(),
            "(text vs linear)".into(),
        ));
    }
    let base = checkpoint::read_weights(&base_dir, &bm.weights)?;
    // a model that is not a fine-tune is refused here, before any image is decoded
    taskvec::check_fine_tunes(&base, &ep.states.iter().collect::<Vec<_>>())
        .map_err(|e| tv_error(e, &plan.models))?;
    let linear_per_model = matches!(a.heads[0].head, HeadSpec::Linear)
        && ep
            .manifests
            .iter()
            .any(|m| m.heads[0].classes != a.heads[0].classes);
    let stop = if linear_per_model {
        ep.spec
            .stops()
            .into_iter()
            .filter(|s| !s.is_full())
            .max_by_key(|s| s.zipped)
            .ok_or_else(|| MergeError::Spec {
                arch: a.arch.to_string(),
                msg: "no partial stop to keep per-model heads after".into(),
            })?
    } else {
        ep.spec.stop("full")?
    };
    Ok(TaskVectorInputs {
        ep,
        base,
        stop,
        linear_per_model,
    })
}

/// The merge of `inp` with `s`: the task-vector merge, the model around it (one head, or each
/// task's own head after the stop) and the BN reset on `bn_b` ([`run_task_vectors`]'s steps,
/// shared with `zipmerge evolve`'s candidates so a recipe replays to the bits a search scored).
///
/// # Errors
/// As [`crate::taskvec::merge`] and the BN reset.
#[allow(clippy::too_many_arguments)]
pub(crate) fn combine_task_vectors(
    inp: &TaskVectorInputs,
    s: &TaskVectorSettings,
    models: &[std::path::PathBuf],
    bn_b: &crate::merge::Batches,
    device: &crate::system::runner::Runner,
    provenance: serde_json::Value,
    obs: &mut dyn Observer,
    timed: &mut dyn FnMut(&'static str, Instant),
) -> Result<(Merged, TaskVectorReport), MergeError> {
    let t = Instant::now();
    let fts: Vec<&checkpoint::StateDict> = inp.ep.states.iter().collect();
    let (state, tv_report) = taskvec::merge(&inp.base, &fts, s).map_err(|e| tv_error(e, models))?;
    timed("merge", t);
    let manifest = merged_manifest(&inp.ep, &inp.stop, provenance)?;
    let heads = if inp.stop.is_full() {
        vec![]
    } else {
        inp.ep.states.clone()
    };
    let mut merged = Merged {
        manifest,
        zipped: Zipped {
            trunk: state,
            heads,
        },
    };
    if !bn_b.is_empty() {
        let t = Instant::now();
        phase(obs, "BN reset", images(bn_b) as u64, |p| {
            merged.reset_bn(bn_b, device, p)
        })?;
        timed("bn_reset", t);
    }
    Ok((merged, tv_report))
}

/// Runs one task-vector merge (module docs). Every input is loaded and checked before the
/// merge: the options, the fine-tunes (with [`Endpoints::load`]'s checks), the base (same
/// architecture, width and head kind; every tensor present with the same shape), the
/// BN-reset folder and the test set.
///
/// # Errors
/// [`MergeError::TaskVectorOption`] naming the option; [`MergeError::Endpoint`] /
/// [`MergeError::Incompatible`] naming the base or fine-tune and the tensor; data and
/// checkpoint errors naming the file.
pub fn run_task_vectors(
    plan: &TaskVectorPlan,
    obs: &mut dyn Observer,
) -> Result<TaskVectorOutcome, MergeError> {
    let s = &plan.settings;
    let inp = load_inputs(plan)?;
    let (ep, stop, linear_per_model) = (&inp.ep, &inp.stop, inp.linear_per_model);
    let prep = ep.prep();
    // the BN-reset draw of a merge, no statistics
    let draws = Draws {
        probe: None,
        bn: ProbeOptions::bn_reset_draw(plan.bn_reset_images, plan.batch_size, plan.seed),
    };
    let bn_b = match &draws.bn {
        Some(bn) => {
            let probe = load_probe(&plan.probe_dir, prep, plan.cache_gib, &draws, obs)?;
            bn_batches(&probe, Some(bn))?
        }
        None => vec![],
    };
    let evaluation = Evaluation::load(plan.eval.as_ref(), ep, plan.cache_gib, obs)?;
    let mut timings = BTreeMap::new();
    let t_all = Instant::now();
    obs.info(&format!(
        "merging {} fine-tunes of {} with {}",
        ep.n(),
        plan.base.display(),
        s.method.label(s.lambda)
    ));
    let heads_note = if linear_per_model {
        format!("per model after stop {}", stop.name)
    } else {
        "merged".to_string()
    };
    let provenance = TaskVectorProvenance {
        base: plan.base.display().to_string(),
        sources: plan
            .models
            .iter()
            .map(|p| p.display().to_string())
            .collect(),
        task_vectors: s.clone(),
        heads: heads_note,
        probe: plan.probe_dir.display().to_string(),
        bn_reset_images: images(&bn_b),
        batch_size: plan.batch_size,
        seed: plan.seed,
        backend: plan.backend.clone(),
        command: plan.command.clone(),
    };
    let prov_json = serde_json::json!({ "task_vector_merge": provenance });
    let mut timed = |k: &'static str, t: Instant| {
        timings.insert(k, t.elapsed().as_secs_f64());
    };
    let (merged, tv_report) = combine_task_vectors(
        &inp,
        s,
        &plan.models,
        &bn_b,
        &plan.device,
        prov_json,
        obs,
        &mut timed,
    )?;
    let sys = merged.system(&plan.device)?;
    let flops = sys.flops();
    let t = Instant::now();
    let accuracy = evaluation.run(sys, plan.batch_size, &plan.device, obs);
    if accuracy.is_some() {
        timings.insert("eval", t.elapsed().as_secs_f64());
    }
    timings.insert("total", t_all.elapsed().as_secs_f64());
    let mut data = vec![crate::provenance::DataFolder {
        role: "base",
        path: plan.base.display().to_string(),
        images: 0,
    }];
    if !bn_b.is_empty() {
        data.push(crate::provenance::DataFolder {
            role: "bn reset",
            path: plan.probe_dir.display().to_string(),
            images: images(&bn_b),
        });
    }
    if let (Some(e), Some(a)) = (&plan.eval, &accuracy) {
        data.push(crate::provenance::DataFolder::test_split(&e.root, a.images));
    }
    let block = crate::provenance::Provenance::new(
        &plan.command,
        &plan.backend,
        data,
        &crate::merge::Recipe::of_task_vectors(plan),
    );
    let report = TaskVectorMergeReport {
        provenance: block,
        method: s.method.label(s.lambda),
        recipe: crate::merge::Recipe::of_task_vectors(plan),
        settings: provenance,
        stop: stop.name.clone(),
        flops,
        accuracy,
        task_vectors: tv_report,
        timings_seconds: timings,
        peak_rss_mb: crate::util::peak_rss_mb(),
    };
    Ok(TaskVectorOutcome { merged, report })
}
