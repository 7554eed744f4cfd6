//! Runs models (one, a multi-head model, or an ensemble) over an image set and tallies accuracy
//! with the reference rules of [`super`].

use burn::tensor::{Device, Tensor};

use super::{Accuracy, JointRule, Tally};
use crate::data::{to_tensor, ImageSet};
use crate::engine::{Act, CpuSystem, EngineCtx};
use crate::error::DataError;
use crate::models::head::HeadSpec;
use crate::models::system::System;
use crate::models::ForwardCtx;

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
/// [`DataError::Invalid`] naming `data.source` (and the head) and the class at fault.
pub fn check_evaluation(
    heads: &[&HeadSpec],
    data: &ImageSet,
    tasks: &[Vec<usize>],
) -> Result<usize, DataError> {
    let classes = data.class_names.len();
    if let Some(c) = tasks.iter().flatten().find(|&&c| c >= classes) {
        return Err(DataError::Invalid(format!(
            "{}: class {c} of the tasks is not in this data ({classes} classes)",
            data.source
        )));
    }
    for (i, h) in heads.iter().enumerate() {
        if let Some(limit) = h.label_count() {
            if let Some(c) = tasks.iter().flatten().find(|&&c| c >= limit) {
                return Err(DataError::Invalid(format!(
                    "head {i}: its text head has class embeddings for labels 0..{}, not for class {c} of the tasks",
                    limit.saturating_sub(1)
                )));
            }
        }
    }
    let n = data
        .labels
        .iter()
        .filter(|l| tasks.iter().any(|t| t.contains(l)))
        .count();
    if n == 0 {
        return Err(DataError::Invalid(format!(
            "{}: no test images of the tasks' classes {tasks:?}",
            data.source
        )));
    }
    Ok(n)
}

/// Evaluates `systems` (an ensemble when several) on `data` with the given tasks, in batches of
/// `batch` images, calling `progress(images_done)` after each batch.
pub fn evaluate(
    systems: &[System],
    data: &ImageSet,
    tasks: &[Vec<usize>],
    batch: usize,
    device: &Device,
    progress: &mut dyn FnMut(usize),
) -> Accuracy {
    let assign = assign_heads(systems, tasks);
    let rule = joint_rule(systems);
    let mut tally = Tally::new(tasks.len());
    // the CPU engine when it applies (falls back to burn if a network does not compile)
    let cpu: Option<Vec<CpuSystem>> = crate::engine::applies(device)
        .then(|| {
            systems
                .iter()
                .map(CpuSystem::compile)
                .collect::<Result<_, _>>()
                .ok()
        })
        .flatten();
    let idx: Vec<usize> = (0..data.len())
        .filter(|&i| tasks.iter().any(|t| t.contains(&data.labels[i])))
        .collect();
    for chunk in idx.chunks(batch.max(1)) {
        let imgs: Vec<&[u8]> = chunk.iter().map(|&i| data.image(i)).collect();
        let labels: Vec<usize> = chunk.iter().map(|&i| data.labels[i]).collect();
        let outs: Vec<Vec<Tensor<2>>> = match &cpu {
            Some(cpu) => {
                let x = Act::from_images(&imgs, data.prep);
                cpu.iter()
                    .map(|s| {
                        s.forward_heads(x.clone(), &mut EngineCtx::default())
                            .iter()
                            .map(|y| y.to_logits(device))
                            .collect()
                    })
                    .collect()
            }
            None => {
                let x = to_tensor(&imgs, data.prep, device);
                systems
                    .iter()
                    .map(|s| s.forward_heads(x.clone(), &mut ForwardCtx::default()))
                    .collect()
            }
        };
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
