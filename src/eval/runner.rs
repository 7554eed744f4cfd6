//! Runs models (one, a multi-head model, or an ensemble) over an image set and tallies accuracy
//! with the reference rules of [`super`].

use burn::tensor::{Device, Tensor};

use super::{Accuracy, JointRule, Tally};
use crate::data::{to_tensor, ImageSet};
use crate::engine::{Act, CpuSystem, EngineCtx};
use crate::error::DataError;
use crate::models::head::HeadSpec;
use crate::models::ForwardCtx;
use crate::system::runner::Runner;
use crate::system::System;

/// Which head serves each task: `(system index, head index)`: the head trained on most of the
/// task's classes; on a tie (models of the same classes) the k-th head overall serves task k.
pub fn assign_heads(systems: &[System], tasks: &[Vec<usize>]) -> Vec<(usize, usize)> {
    tasks
        .iter()
        .enumerate()
        .map(|(k, t)| {
            let mut best: Option<((usize, usize), (usize, bool))> = None;
            let mut flat = 0;
            for (i, s) in systems.iter().enumerate() {
                for (j, h) in s.heads.iter().enumerate() {
                    let overlap = h.classes.iter().filter(|c| t.contains(c)).count();
                    let usable = overlap > 0 || matches!(h.spec, HeadSpec::Text { .. });
                    let score = (overlap, flat == k);
                    if usable && best.is_none_or(|(_, b)| score > b) {
                        best = Some(((i, j), score));
                    }
                    flat += 1;
                }
            }
            best.map(|b| b.0).unwrap_or((0, 0))
        })
        .collect()
}

/// The joint-prediction rule for these systems (§5, quirk 13).
pub fn joint_rule(systems: &[System]) -> JointRule {
    let heads: Vec<&HeadSpec> = systems
        .iter()
        .flat_map(|s| s.heads.iter().map(|h| &h.spec))
        .collect();
    if heads.len() == 1 && matches!(heads[0], HeadSpec::Text { .. }) {
        JointRule::Raw
    } else {
        JointRule::TaskSoftmax
    }
}

/// Checks that `data` can evaluate models with these heads (every head of every model, in order) on `tasks` before any image is run: every task
/// class exists in the data (`data.class_names`), every text head has an embedding row for each
/// task class, and the data holds at least one image of the tasks. Returns that image count.
/// `eval`, `merge`, `sweep` and `reproduce` all call it, so they refuse the same data the same
/// way.
/// Call it with [`heads_of`] of the systems.
///
/// # Errors
/// [`DataError::Evaluation`] naming `data.source` (and the head) and the class at fault.
pub fn check_evaluation(
    heads: &[&HeadSpec],
    data: &ImageSet,
    tasks: &[Vec<usize>],
) -> Result<usize, DataError> {
    let classes = data.class_names.len();
    if let Some(c) = tasks.iter().flatten().find(|&&c| c >= classes) {
        return Err(DataError::Evaluation {
            data: data.source.clone(),
            msg: format!("class {c} of the tasks is not in this data ({classes} classes)"),
        });
    }
    for (i, h) in heads.iter().enumerate() {
        if let Some(limit) = h.label_count() {
            if let Some(c) = tasks.iter().flatten().find(|&&c| c >= limit) {
                return Err(DataError::Evaluation {
                    data: format!("head {i}"),
                    msg: format!(
                        "its text head has class embeddings for labels 0..{}, not for class {c} of the tasks",
                        limit.saturating_sub(1)
                    ),
                });
            }
        }
    }
    let n = data
        .labels
        .iter()
        .filter(|l| tasks.iter().any(|t| t.contains(l)))
        .count();
    if n == 0 {
        return Err(DataError::Evaluation {
            data: data.source.clone(),
            msg: format!("no test images of the tasks' classes {tasks:?}"),
        });
    }
    Ok(n)
}

/// Largest normalised test set (f32 bytes) an [`EvalSet`] keeps for all rows of an experiment;
/// bigger sets (ImageNet) are normalised batch by batch, each time.
pub const INPUT_CACHE_BYTES: usize = 1 << 30;

/// The evaluation images of `tasks` (those whose label is in a task), batched once, with their
/// labels and, on the CPU engine when they fit [`INPUT_CACHE_BYTES`], the normalised input
/// batches `[batch, side, side, 3]` (NHWC f32): an experiment that evaluates many rows on the
/// same test set normalises it once (issue 14, item 4).
pub struct EvalSet<'a> {
    data: &'a ImageSet,
    tasks: &'a [Vec<usize>],
    chunks: Vec<Vec<usize>>,
    inputs: Vec<Act>,
}

impl<'a> EvalSet<'a> {
    /// Batches `data` for `tasks` (`batch` images per batch, at least 1); `keep_inputs` keeps
    /// the normalised batches when `device` runs on the CPU engine and they fit the budget.
    pub fn new(
        data: &'a ImageSet,
        tasks: &'a [Vec<usize>],
        batch: usize,
        runner: &Runner,
        keep_inputs: bool,
    ) -> Self {
        let idx: Vec<usize> = (0..data.len())
            .filter(|&i| tasks.iter().any(|t| t.contains(&data.labels[i])))
            .collect();
        let chunks: Vec<Vec<usize>> = idx.chunks(batch.max(1)).map(<[usize]>::to_vec).collect();
        let px = data.pixels.len();
        let inputs = if keep_inputs
            && !idx.is_empty()
            && runner.engine()
            && px.saturating_mul(4) <= INPUT_CACHE_BYTES
        {
            chunks.iter().map(|c| Self::normalise(data, c)).collect()
        } else {
            Vec::new()
        };
        Self {
            data,
            tasks,
            chunks,
            inputs,
        }
    }

    fn normalise(data: &ImageSet, chunk: &[usize]) -> Act {
        let imgs: Vec<&[u8]> = chunk.iter().map(|&i| data.image(i)).collect();
        Act::from_images(&imgs, data.prep)
    }

    /// Images evaluated.
    pub fn len(&self) -> usize {
        self.chunks.iter().map(Vec::len).sum()
    }

    /// Whether no image belongs to the tasks.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// Head outputs of one system over an [`EvalSet`]: per batch, per head, `[batch, out]` (logits,
/// or embeddings for a text head). Kept by experiments so that the Ensemble row reuses the
/// endpoints' outputs instead of running them again.
#[derive(Clone)]
pub struct Outputs(Vec<Vec<Tensor<2>>>);

/// Evaluates `systems` (one model, a multi-head model, or an ensemble when several) on `data`
/// with the given tasks, in batches of `batch` images, calling `progress(images_done)` after
/// each batch. Returns the joint / per-task / average accuracy (reference doc §5).
pub fn evaluate(
    systems: &[System],
    data: &ImageSet,
    tasks: &[Vec<usize>],
    batch: usize,
    runner: &Runner,
    progress: &mut dyn FnMut(usize),
) -> Accuracy {
    let set = EvalSet::new(data, tasks, batch, runner, false);
    evaluate_on(&set, systems, runner, progress, None)
}

/// [`evaluate`] on a prepared [`EvalSet`]. With `cache` (one slot per system), a system whose
/// slot holds [`Outputs`] is not run again, and the outputs of every system run are stored in
/// its slot. Outputs are identical to a fresh run (same weights, same inputs, deterministic
/// kernels).
pub fn evaluate_on(
    set: &EvalSet<'_>,
    systems: &[System],
    runner: &Runner,
    progress: &mut dyn FnMut(usize),
    mut cache: Option<&mut [Option<Outputs>]>,
) -> Accuracy {
    let device: &Device = runner;
    let tasks = set.tasks;
    let assign = assign_heads(systems, tasks);
    let rule = joint_rule(systems);
    let mut tally = Tally::new(tasks.len());
    // which systems already have their outputs (they are neither compiled nor run)
    let cached: Vec<bool> = (0..systems.len())
        .map(|i| {
            cache
                .as_ref()
                .and_then(|c| c.get(i))
                .is_some_and(Option::is_some)
        })
        .collect();
    let need = cached.iter().any(|c| !c);
    // the CPU engine when it applies (falls back to burn if a network does not compile);
    // systems with cached outputs are not compiled
    let cpu: Option<Vec<Option<CpuSystem>>> = runner
        .engine()
        .then(|| {
            systems
                .iter()
                .enumerate()
                .map(|(i, s)| {
                    if cached[i] {
                        Ok(None)
                    } else {
                        s.compile().map(Some)
                    }
                })
                .collect::<Result<_, _>>()
                .ok()
        })
        .flatten();
    let mut fresh: Vec<Vec<Vec<Tensor<2>>>> = vec![Vec::new(); systems.len()];
    for (b, chunk) in set.chunks.iter().enumerate() {
        let labels: Vec<usize> = chunk.iter().map(|&i| set.data.labels[i]).collect();
        let mut outs: Vec<Vec<Tensor<2>>> = Vec::with_capacity(systems.len());
        if need {
            match &cpu {
                Some(cpu) => {
                    let own;
                    let x = match set.inputs.get(b) {
                        Some(x) => x,
                        None => {
                            own = EvalSet::normalise(set.data, chunk);
                            &own
                        }
                    };
                    for c in cpu {
                        outs.push(match c {
                            Some(c) => c
                                .forward_heads(x.clone(), &mut EngineCtx::default())
                                .iter()
                                .map(|y| y.to_logits(device))
                                .collect(),
                            None => Vec::new(),
                        });
                    }
                }
                None => {
                    let imgs: Vec<&[u8]> = chunk.iter().map(|&i| set.data.image(i)).collect();
                    let x = to_tensor(&imgs, set.data.prep, device);
                    for (i, s) in systems.iter().enumerate() {
                        outs.push(if cached[i] {
                            Vec::new()
                        } else {
                            s.forward_heads(x.clone(), &mut ForwardCtx::default())
                        });
                    }
                }
            }
        } else {
            outs.resize(systems.len(), Vec::new());
        }
        for (i, o) in outs.iter_mut().enumerate() {
            if let Some(Some(Outputs(c))) = cache.as_ref().and_then(|c| c.get(i)) {
                *o = c[b].clone();
            } else if cache.is_some() {
                fresh[i].push(o.clone());
            }
        }
        let task_logits: Vec<Vec<Vec<f32>>> = tasks
            .iter()
            .zip(&assign)
            .map(|(t, &(si, hj))| {
                let h = &systems[si].heads[hj];
                let l = h.spec.logits(outs[si][hj].clone(), &h.classes, t);
                rows(l)
            })
            .collect();
        tally.add(tasks, &task_logits, &labels, rule);
        progress(chunk.len());
    }
    if let Some(c) = cache.as_mut() {
        for (i, f) in fresh.into_iter().enumerate() {
            if let Some(slot) = c.get_mut(i) {
                if slot.is_none() {
                    *slot = Some(Outputs(f));
                }
            }
        }
    }
    let flops = systems.iter().map(System::flops).sum();
    tally.accuracy(tasks, flops)
}

/// A `[rows, cols]` tensor as nested vectors.
pub fn rows(t: Tensor<2>) -> Vec<Vec<f32>> {
    let [r, c] = t.dims();
    let v = t
        .into_data()
        .convert::<f32>()
        .try_to_vec::<f32>()
        .unwrap_or_default();
    (0..r).map(|i| v[i * c..(i + 1) * c].to_vec()).collect()
}

/// Every head of `systems`, in order (for [`check_evaluation`]).
pub fn heads_of(systems: &[System]) -> Vec<&HeadSpec> {
    systems
        .iter()
        .flat_map(|s| s.heads.iter().map(|h| &h.spec))
        .collect()
}

/// Default tasks of `systems`: each head's classes, in model/head order, duplicates removed.
pub fn default_tasks(systems: &[System]) -> Vec<Vec<usize>> {
    let mut tasks: Vec<Vec<usize>> = Vec::new();
    for s in systems {
        for h in &s.heads {
            if !tasks.contains(&h.classes) {
                tasks.push(h.classes.clone());
            }
        }
    }
    tasks
}
