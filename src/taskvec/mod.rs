//! Task-vector merging of models fine-tuned from one base: Task Arithmetic (Ilharco et al.,
//! ICLR 2023), TIES-Merging (Yadav et al., NeurIPS 2023) and DARE (Yu et al., ICML 2024), on
//! weights only (no statistics, no matching; `merging-methods-reference.md` §A).
//!
//! A task vector is `tau_t = theta_t - theta_base` over the *trainable* tensors only (conv and
//! linear weights and biases, BN weight and bias; [`is_task_vector_tensor`]); BN running
//! statistics are not task vectors: the merge takes the base's, and the caller resets them
//! (every zipmerge merge gets a BN reset). The trainable tensors are flattened in sorted-name
//! order (the official TIES code's `state_dict_to_vector` sorts the keys), so a global trim ranks
//! every entry of the model together.
//!
//! Every formula here is written against the official code (reference doc §A.1-A.4):
//! - trim ([`trim_global`], TIES `topk_values_mask`): keep `|tau| >= kth`, `kth` the
//!   `(d - floor(k d))`-th smallest magnitude (1-based, as `torch.kthvalue`); ties at the
//!   threshold are kept; `k = 1` keeps everything;
//! - sign election ([`elect_sign`], `resolve_sign`, `mass`): `gamma = sign(sum_t tau_t)`, a zero
//!   takes the sign of `sum_p gamma_p` (the "majority" sign); `count` elects `sign(sum_t
//!   sign(tau_t))` (mergekit's `count`) with the same zero rule;
//! - disjoint merge ([`disjoint_merge`], `disjoint_merge`): keep `tau_t[p]` where
//!   `gamma[p] > 0 ? tau_t[p] > 0 : tau_t[p] < 0` (zeros never count); `mean` divides the kept
//!   sum by `max(1, #kept)`, `sum` does not, `max` takes the largest kept magnitude times `gamma`;
//! - DARE ([`dare`], MergeLM `mask_input_with_mask_rate`): per tensor, each entry dropped with
//!   probability `p` and the kept ones scaled by `1 / (1 - p)`.

use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use serde::{Deserialize, Serialize};

use crate::state::StateDict;

/// Whether the tensor `name` holds trainable parameters (a task-vector tensor): every tensor but
/// BN running statistics and counters (`running_mean`, `running_var`, `num_batches_tracked`).
pub fn is_task_vector_tensor(name: &str) -> bool {
    !(name.ends_with("running_mean")
        || name.ends_with("running_var")
        || name.ends_with("num_batches_tracked"))
}

/// How TIES trims each task vector.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Trim {
    /// Top-k by magnitude over the whole flattened model (the official TIES code).
    Global,
    /// Top-k by magnitude in each tensor, exactly `floor(k * numel)` entries, ties broken by
    /// position (mergekit's `magnitude`).
    PerTensor,
}

/// How the sign of each coordinate is elected.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum SignRule {
    /// The sign of the sum of the (trimmed) values (`mass`, the official default).
    Mass,
    /// The sign of the sum of the values' signs (mergekit's `count`).
    Count,
}

/// How the entries that agree with the elected sign are combined.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Disjoint {
    /// Their mean (`dis-mean`, the official default).
    Mean,
    /// Their sum (`dis-sum`).
    Sum,
    /// The largest magnitude, with the elected sign (`dis-max`).
    Max,
}

/// A task-vector merge method with its knobs.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "method", rename_all = "kebab-case")]
pub enum TaskVectorMethod {
    /// `theta = theta_base + lambda * sum_t w_t tau_t` (Ilharco et al.; `w_t = 1` by default).
    TaskArithmetic,
    /// Trim, elect sign, disjoint merge, then `theta_base + lambda * tau_m` (Yadav et al.).
    Ties {
        /// Share of each task vector kept by the trim, in (0, 1] (default 0.2).
        density: f64,
        /// Global (official) or per-tensor (mergekit) trim.
        trim: Trim,
        /// Sign election.
        sign: SignRule,
        /// Disjoint merge.
        disjoint: Disjoint,
    },
    /// DARE drop-and-rescale of each task vector, then TIES's election and disjoint merge on
    /// the weighted, rescaled vectors (no magnitude trim unless `density < 1`).
    DareTies {
        /// Drop probability p in [0, 1).
        drop: f64,
        /// Share kept by a global magnitude trim after the drop (1: none).
        density: f64,
        /// Sign election.
        sign: SignRule,
        /// Disjoint merge.
        disjoint: Disjoint,
    },
    /// DARE drop-and-rescale, then `theta_base + lambda * sum_t w_t tau_hat_t`.
    DareLinear {
        /// Drop probability p in [0, 1).
        drop: f64,
    },
}

impl TaskVectorMethod {
    /// Name as `--method` spells it.
    pub fn name(&self) -> &'static str {
        match self {
            TaskVectorMethod::TaskArithmetic => "task-arithmetic",
            TaskVectorMethod::Ties { .. } => "ties",
            TaskVectorMethod::DareTies { .. } => "dare-ties",
            TaskVectorMethod::DareLinear { .. } => "dare-linear",
        }
    }

    /// The knobs as text, e.g. `k=0.2, lambda=1`.
    pub fn knobs(&self, lambda: f64) -> String {
        match self {
            TaskVectorMethod::TaskArithmetic => format!("lambda={lambda}"),
            TaskVectorMethod::Ties { density, .. } => format!("k={density}, lambda={lambda}"),
            TaskVectorMethod::DareTies { drop, .. } | TaskVectorMethod::DareLinear { drop } => {
                format!("p={drop}, lambda={lambda}")
            }
        }
    }

    /// Row label, e.g. `TIES (k=0.2, lambda=1)`.
    pub fn label(&self, lambda: f64) -> String {
        match self {
            TaskVectorMethod::TaskArithmetic => format!("Task Arithmetic (lambda={lambda})"),
            TaskVectorMethod::Ties { density, .. } => {
                format!("TIES (k={density}, lambda={lambda})")
            }
            TaskVectorMethod::DareTies { drop, .. } => {
                format!("DARE-TIES (p={drop}, lambda={lambda})")
            }
            TaskVectorMethod::DareLinear { drop } => {
                format!("DARE-linear (p={drop}, lambda={lambda})")
            }
        }
    }
}

/// A task-vector merge: the method, the scale and the per-model weights.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TaskVectorSettings {
    /// The method.
    pub method: TaskVectorMethod,
    /// `lambda`, the scale of the merged task vector (finite, >= 0; default 1).
    pub lambda: f64,
    /// Weight of each fine-tune's task vector (`None`: 1 each). TIES ignores them unless given
    /// (the official code has none); the DARE methods and Task Arithmetic multiply by them.
    pub weights: Option<Vec<f64>>,
    /// Seed of DARE's drops.
    pub seed: u64,
    /// Per-layer-group density and weights (`zipmerge evolve`'s genome; empty: the global
    /// knobs above apply to every tensor).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub groups: Vec<TaskVectorGroup>,
}

/// The knobs of one layer group ([`crate::spec::layer_group`]) of a task-vector merge: the
/// density and weight of each model's task vector there, as Akiba et al. (Evolutionary
/// Optimization of Model Merging Recipes, 2024, §3.1) set TIES/DARE's per layer. With any
/// group given, every model's task vector is multiplied by its weight of the tensor's group
/// (the global `weights`, else 1, where the group gives none) before the method runs, and TIES /
/// DARE-TIES trim each model's vector **within each group** at that group's density (the
/// method's density where the group gives none), instead of over the whole model.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TaskVectorGroup {
    /// Layer group (`stem`, `layer1`, ..., `head`).
    pub group: String,
    /// Density of each model's task vector in the group, in (0, 1] (TIES and DARE-TIES).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub density: Option<Vec<f64>>,
    /// Weight of each model's task vector in the group (finite).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub weights: Option<Vec<f64>>,
}

/// Why a task-vector merge cannot run. Every message names the option, model or tensor.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum TaskVectorError {
    /// An option outside its range.
    #[error("{option} `{value}`: {expected}")]
    Option {
        /// The option (`--density`, `--drop`, `--lambda`, `--weights`).
        option: &'static str,
        /// Its value.
        value: String,
        /// What was expected.
        expected: &'static str,
    },
    /// A fine-tune whose tensors do not match the base's.
    #[error("model {model} is not a fine-tune of the base: tensor `{tensor}` {msg}")]
    NotAFineTune {
        /// Index of the fine-tune (0-based, in `--model` order).
        model: usize,
        /// The tensor.
        tensor: String,
        /// What differs.
        msg: String,
    },
    /// Fewer than one fine-tune.
    #[error("a task-vector merge needs at least one fine-tune")]
    NoModels,
}

impl TaskVectorSettings {
    /// Checks the ranges: density in (0, 1], drop in [0, 1), lambda finite and >= 0, one
    /// finite weight per model.
    ///
    /// # Errors
    /// [`TaskVectorError::Option`] naming the option.
    pub fn check(&self, models: usize) -> Result<(), TaskVectorError> {
        let bad = |option, value: f64, expected| {
            Err(TaskVectorError::Option {
                option,
                value: value.to_string(),
                expected,
            })
        };
        if !(self.lambda.is_finite() && self.lambda >= 0.0) {
            return bad("--lambda", self.lambda, "expected a finite number >= 0");
        }
        let density = match &self.method {
            TaskVectorMethod::Ties { density, .. } | TaskVectorMethod::DareTies { density, .. } => {
                Some(*density)
            }
            _ => None,
        };
        if let Some(d) = density {
            if !(d > 0.0 && d <= 1.0) {
                return bad("--density", d, "expected a number in (0, 1]");
            }
        }
        if let TaskVectorMethod::DareTies { drop, .. } | TaskVectorMethod::DareLinear { drop } =
            &self.method
        {
            if !(*drop >= 0.0 && *drop < 1.0) {
                return bad("--drop", *drop, "expected a number in [0, 1)");
            }
        }
        let trims = matches!(
            self.method,
            TaskVectorMethod::Ties { .. } | TaskVectorMethod::DareTies { .. }
        );
        for (i, g) in self.groups.iter().enumerate() {
            let opt = |o: &Option<Vec<f64>>| o.as_ref().map(Vec::len);
            if self.groups[..i].iter().any(|h| h.group == g.group) {
                return Err(TaskVectorError::Option {
                    option: "groups",
                    value: g.group.clone(),
                    expected: "expected each layer group once",
                });
            }
            if opt(&g.density).is_some_and(|n| n != models)
                || opt(&g.weights).is_some_and(|n| n != models)
            {
                return Err(TaskVectorError::Option {
                    option: "groups",
                    value: g.group.clone(),
                    expected: "expected one density and one weight per --model",
                });
            }
            if g.density.is_some() && !trims {
                return Err(TaskVectorError::Option {
                    option: "groups",
                    value: g.group.clone(),
                    expected: "a density per group applies to ties and dare-ties only",
                });
            }
            if let Some(d) = g
                .density
                .iter()
                .flatten()
                .find(|d| !(**d > 0.0 && **d <= 1.0))
            {
                return bad("groups (density)", *d, "expected a number in (0, 1]");
            }
            if let Some(v) = g.weights.iter().flatten().find(|v| !v.is_finite()) {
                return bad("groups (weights)", *v, "expected finite numbers");
            }
        }
        if let Some(w) = &self.weights {
            if w.len() != models {
                return Err(TaskVectorError::Option {
                    option: "--weights",
                    value: format!("{} values", w.len()),
                    expected: "expected one weight per --model",
                });
            }
            if let Some(v) = w.iter().find(|v| !v.is_finite()) {
                return bad("--weights", *v, "expected finite numbers");
            }
        }
        Ok(())
    }
}

/// The group of each tensor of `lay` among `groups` (`None` for a tensor of a group not
/// listed); `None` when no group is given.
///
/// # Errors
/// [`TaskVectorError::Option`] naming a group no tensor belongs to.
fn tensor_groups(
    lay: &[(String, usize, usize)],
    groups: &[TaskVectorGroup],
) -> Result<Option<Vec<Option<usize>>>, TaskVectorError> {
    if groups.is_empty() {
        return Ok(None);
    }
    let of: Vec<String> = lay
        .iter()
        .map(|(name, _, _)| crate::spec::layer_group(name))
        .collect();
    if let Some(g) = groups.iter().find(|g| !of.contains(&g.group)) {
        return Err(TaskVectorError::Option {
            option: "groups",
            value: g.group.clone(),
            expected: "no tensor of the base belongs to this layer group",
        });
    }
    Ok(Some(
        of.iter()
            .map(|name| groups.iter().position(|g| &g.group == name))
            .collect(),
    ))
}

/// TIES's trim of one task vector within each layer group: the entries of group `i`'s tensors
/// (`groups[t]` for tensor `t`) trimmed together at `dens[i]` ([`trim_global`]'s rule), those
/// of a tensor in no listed group at `density`; per tensor at those densities for
/// [`Trim::PerTensor`].
fn trim_grouped(
    tau: &mut [f32],
    lay: &[(String, usize, usize)],
    groups: &[Option<usize>],
    dens: &[f64],
    density: f64,
    trim: Trim,
) {
    let d_of = |g: Option<usize>| g.map_or(density, |i| dens[i]);
    if trim == Trim::PerTensor {
        for ((name, off, len), g) in lay.iter().zip(groups) {
            let one = [(name.clone(), 0usize, *len)];
            trim_per_tensor(&mut tau[*off..off + len], &one, d_of(*g));
        }
        return;
    }
    let mut keys: Vec<Option<usize>> = groups.to_vec();
    keys.sort_unstable();
    keys.dedup();
    for key in keys {
        let members: Vec<(usize, usize)> = lay
            .iter()
            .zip(groups)
            .filter(|(_, g)| **g == key)
            .map(|((_, off, len), _)| (*off, *len))
            .collect();
        let mut v: Vec<f32> = members
            .iter()
            .flat_map(|&(off, len)| tau[off..off + len].iter().copied())
            .collect();
        trim_global(&mut v, d_of(key));
        let mut at = 0;
        for (off, len) in members {
            tau[off..off + len].copy_from_slice(&v[at..at + len]);
            at += len;
        }
    }
}

/// The trainable tensors of `base` in sorted-name order with their offsets in the flattened
/// vector: `(name, offset, len)`.
fn layout(base: &StateDict) -> Vec<(String, usize, usize)> {
    let mut off = 0;
    base.iter()
        .filter(|(k, _)| is_task_vector_tensor(k))
        .map(|(k, t)| {
            let e = (k.clone(), off, t.data.len());
            off += t.data.len();
            e
        })
        .collect()
}

/// Checks that every model of `fine_tunes` is a fine-tune of `base`: the same tensor names
/// and shapes. Reads no values, so callers can refuse bad inputs before any other work.
///
/// # Errors
/// [`TaskVectorError::NoModels`] for an empty list; [`TaskVectorError::NotAFineTune`] naming
/// the model and the tensor when a fine-tune misses a tensor of the base, has one the base
/// lacks, or has another shape.
pub fn check_fine_tunes(
    base: &StateDict,
    fine_tunes: &[&StateDict],
) -> Result<(), TaskVectorError> {
    if fine_tunes.is_empty() {
        return Err(TaskVectorError::NoModels);
    }
    for (m, ft) in fine_tunes.iter().enumerate() {
        let err = |tensor: &str, msg: String| TaskVectorError::NotAFineTune {
            model: m,
            tensor: tensor.to_string(),
            msg,
        };
        if let Some(k) = ft.keys().find(|k| !base.contains_key(*k)) {
            return Err(err(k, "is not in the base".into()));
        }
        for (name, t) in base {
            let Some(f) = ft.get(name) else {
                return Err(err(name, "is missing".into()));
            };
            if f.shape != t.shape {
                return Err(err(
                    name,
                    format!("has shape {:?}, the base {:?}", f.shape, t.shape),
                ));
            }
        }
    }
    Ok(())
}

/// The flattened task vectors `tau_t = theta_t - theta_base` (f32, as PyTorch subtracts), one
/// per fine-tune, over the trainable tensors of `base` in sorted-name order.
///
/// # Errors
/// As [`check_fine_tunes`].
pub fn task_vectors(
    base: &StateDict,
    fine_tunes: &[&StateDict],
) -> Result<Vec<Vec<f32>>, TaskVectorError> {
    check_fine_tunes(base, fine_tunes)?;
    let d = layout(base).last().map_or(0, |(_, o, l)| o + l);
    Ok(fine_tunes
        .iter()
        .map(|ft| {
            let mut tau = Vec::with_capacity(d);
            for (name, t) in base.iter().filter(|(k, _)| is_task_vector_tensor(k)) {
                tau.extend(ft[name].data.iter().zip(&t.data).map(|(a, b)| a - b));
            }
            tau
        })
        .collect())
}

/// TIES's global trim of one task vector (official `topk_values_mask`): with `d` entries and
/// `k = floor(d * density)`, the threshold is the `(d - k)`-th smallest magnitude (1-based,
/// `torch.kthvalue`), and every entry with `|tau| >= threshold` is kept (ties at the threshold
/// too, so more than `k` entries may stay); the others become 0. `density = 1` keeps all.
pub fn trim_global(tau: &mut [f32], density: f64) {
    let d = tau.len();
    let k = (d as f64 * density) as usize; // Python's int(): truncation
    if k >= d || d == 0 {
        return;
    }
    let rank = d - k; // 1-based rank of the threshold (>= 1)
    let mut mags: Vec<f32> = tau.iter().map(|v| v.abs()).collect();
    let (_, kth, _) = mags.select_nth_unstable_by(rank - 1, f32::total_cmp);
    let kth = *kth;
    tau.iter_mut()
        .filter(|v| v.abs() < kth)
        .for_each(|v| *v = 0.0);
}

/// mergekit's per-tensor magnitude trim: in each tensor of `layout`, exactly
/// `floor(density * numel)` entries of largest magnitude are kept (ties broken by the lower
/// position), the others become 0.
fn trim_per_tensor(tau: &mut [f32], lay: &[(String, usize, usize)], density: f64) {
    for (_, off, len) in lay {
        let t = &mut tau[*off..off + len];
        let keep = (density * *len as f64) as usize;
        if keep >= t.len() {
            continue;
        }
        let mut idx: Vec<usize> = (0..t.len()).collect();
        idx.sort_by(|&a, &b| t[b].abs().total_cmp(&t[a].abs()).then(a.cmp(&b)));
        for &i in &idx[keep..] {
            t[i] = 0.0;
        }
    }
}

/// The sign of `v` as `torch.sign` gives it: -1, 0 or +1.
fn sign(v: f64) -> f64 {
    if v > 0.0 {
        1.0
    } else if v < 0.0 {
        -1.0
    } else {
        0.0
    }
}

/// The elected sign per coordinate (official `resolve_sign`): `mass` takes `sign(sum_t
/// tau_t[p])`, `count` takes `sign(sum_t sign(tau_t[p]))`; a coordinate whose sign is 0 takes
/// the majority sign `sign(sum_p gamma_p)` (`resolve_zero_signs(.., "majority")`), which may
/// itself be 0.
pub fn elect_sign(taus: &[Vec<f32>], rule: SignRule) -> Vec<f64> {
    let d = taus.first().map_or(0, Vec::len);
    let mut gamma: Vec<f64> = (0..d)
        .map(|p| {
            sign(match rule {
                SignRule::Mass => taus.iter().map(|t| t[p] as f64).sum(),
                SignRule::Count => taus.iter().map(|t| sign(t[p] as f64)).sum(),
            })
        })
        .collect();
    let majority = sign(gamma.iter().sum());
    gamma
        .iter_mut()
        .filter(|g| **g == 0.0)
        .for_each(|g| *g = majority);
    gamma
}

/// The disjoint merge (official `disjoint_merge`): per coordinate, the entries whose sign
/// agrees with `gamma` (`> 0` where `gamma > 0`, `< 0` elsewhere, so zeros never count) are
/// combined by `how`.
pub fn disjoint_merge(taus: &[Vec<f32>], gamma: &[f64], how: Disjoint) -> Vec<f64> {
    gamma
        .iter()
        .enumerate()
        .map(|(p, &g)| {
            let kept =
                taus.iter().map(|t| t[p] as f64).filter(
                    |&v| {
                        if g > 0.0 {
                            v > 0.0
                        } else {
                            v < 0.0
                        }
                    },
                );
            match how {
                Disjoint::Mean => {
                    let (s, n) = kept.fold((0.0, 0usize), |(s, n), v| (s + v, n + 1));
                    s / n.max(1) as f64
                }
                Disjoint::Sum => kept.sum(),
                Disjoint::Max => kept.map(f64::abs).fold(0.0, f64::max) * g,
            }
        })
        .collect()
}

/// DARE's drop and rescale (MergeLM `mask_input_with_mask_rate` with `use_rescale`), per
/// tensor: each entry is dropped with probability `p` (a Bernoulli draw of
/// `ChaCha8(seed, model, tensor index)`) and the kept ones are multiplied by `1 / (1 - p)`.
/// `p = 0` changes nothing.
pub fn dare(tau: &mut [f32], lay: &[(String, usize, usize)], p: f64, seed: u64, model: usize) {
    if p <= 0.0 {
        return;
    }
    let scale = (1.0 / (1.0 - p)) as f32;
    for (i, (_, off, len)) in lay.iter().enumerate() {
        let stream = ((model as u64) << 32) | i as u64;
        let mut rng = ChaCha8Rng::seed_from_u64(seed ^ stream.wrapping_mul(0x9e37_79b9_7f4a_7c15));
        for v in &mut tau[*off..off + len] {
            if rng.gen::<f64>() < p {
                *v = 0.0;
            } else {
                *v *= scale;
            }
        }
    }
}

/// What a task-vector merge did (`report.json`'s `task_vectors`).
#[derive(Clone, Debug, Serialize)]
pub struct TaskVectorReport {
    /// The settings.
    pub settings: TaskVectorSettings,
    /// Entries per task vector (the trainable parameters).
    pub parameters: usize,
    /// Per fine-tune: share of its task vector's entries that are non-zero after trim / drop.
    pub kept_fraction: Vec<f64>,
    /// Share of coordinates where the fine-tunes' signs disagree (two non-zero entries of
    /// opposite signs), after trim / drop.
    pub sign_conflicts: f64,
    /// L2 norm of each task vector before trim / drop.
    pub norms: Vec<f64>,
    /// L2 norm of the merged task vector (before lambda).
    pub merged_norm: f64,
    /// How BN running statistics were handled.
    pub bn_statistics: &'static str,
}

/// Merges fine-tunes of `base` with `settings` (module docs give the formulas): returns the
/// merged weights (the base's BN running statistics, every trainable tensor `base + lambda *
/// tau_m` rounded to f32) and a report.
///
/// # Errors
/// [`TaskVectorError`] for options out of range or a model that is not a fine-tune of `base`.
pub fn merge(
    base: &StateDict,
    fine_tunes: &[&StateDict],
    settings: &TaskVectorSettings,
) -> Result<(StateDict, TaskVectorReport), TaskVectorError> {
    settings.check(fine_tunes.len())?;
    let lay = layout(base);
    let mut taus = task_vectors(base, fine_tunes)?;
    let norm = |t: &[f32]| t.iter().map(|v| (*v as f64).powi(2)).sum::<f64>().sqrt();
    let norms: Vec<f64> = taus.iter().map(|t| norm(t)).collect();
    let groups = tensor_groups(&lay, &settings.groups)?;
    let mut weights = settings.weights.clone();
    if let Some(g) = &groups {
        // the per-group weights, multiplied in once (the global ones where a group has none)
        for (m, t) in taus.iter_mut().enumerate() {
            for ((_, off, len), gi) in lay.iter().zip(g) {
                let w = gi
                    .and_then(|i| settings.groups[i].weights.as_ref())
                    .map(|w| w[m])
                    .or_else(|| weights.as_ref().map(|w| w[m]))
                    .unwrap_or(1.0) as f32;
                if w != 1.0 {
                    t[*off..off + len].iter_mut().for_each(|v| *v *= w);
                }
            }
        }
        weights = None;
    }
    let weight = |m: usize| weights.as_ref().map_or(1.0, |w| w[m]);
    let apply_weights = |taus: &mut Vec<Vec<f32>>| {
        if weights.is_some() {
            for (m, t) in taus.iter_mut().enumerate() {
                let w = weight(m) as f32;
                t.iter_mut().for_each(|v| *v *= w);
            }
        }
    };
    // sum_t w_t tau_t per coordinate, in f64
    let weighted_sum = |taus: &[Vec<f32>]| -> Vec<f64> {
        (0..taus[0].len())
            .map(|p| {
                taus.iter()
                    .enumerate()
                    .map(|(m, t)| weight(m) * t[p] as f64)
                    .sum()
            })
            .collect()
    };
    // DARE's drop and rescale of every task vector, each model its own seeded stream
    let dare_all = |taus: &mut Vec<Vec<f32>>, drop: f64| {
        for (m, t) in taus.iter_mut().enumerate() {
            dare(t, &lay, drop, settings.seed, m);
        }
    };
    let ties = |taus: &mut Vec<Vec<f32>>, density: f64, trim, sign_rule, how| {
        for (m, t) in taus.iter_mut().enumerate() {
            match (&groups, trim) {
                (Some(g), _) => {
                    let dens: Vec<f64> = settings
                        .groups
                        .iter()
                        .map(|gr| gr.density.as_ref().map_or(density, |d| d[m]))
                        .collect();
                    trim_grouped(t, &lay, g, &dens, density, trim);
                }
                (None, Trim::Global) => trim_global(t, density),
                (None, Trim::PerTensor) => trim_per_tensor(t, &lay, density),
            }
        }
        let gamma = elect_sign(taus, sign_rule);
        disjoint_merge(taus, &gamma, how)
    };
    let merged: Vec<f64> = match &settings.method {
        TaskVectorMethod::TaskArithmetic => weighted_sum(&taus),
        TaskVectorMethod::Ties {
            density,
            trim,
            sign,
            disjoint,
        } => {
            apply_weights(&mut taus);
            ties(&mut taus, *density, *trim, *sign, *disjoint)
        }
        TaskVectorMethod::DareTies {
            drop,
            density,
            sign,
            disjoint,
        } => {
            dare_all(&mut taus, *drop);
            apply_weights(&mut taus);
            ties(&mut taus, *density, Trim::Global, *sign, *disjoint)
        }
        TaskVectorMethod::DareLinear { drop } => {
            dare_all(&mut taus, *drop);
            weighted_sum(&taus)
        }
    };
    let d = merged.len();
    let kept_fraction = taus
        .iter()
        .map(|t| t.iter().filter(|v| **v != 0.0).count() as f64 / d.max(1) as f64)
        .collect();
    let conflicts = (0..d)
        .filter(|&p| {
            let pos = taus.iter().any(|t| t[p] > 0.0);
            let neg = taus.iter().any(|t| t[p] < 0.0);
            pos && neg
        })
        .count();
    // the base's tensors (its BN running statistics stay), the trainable ones moved by lambda
    let mut out = base.clone();
    for (name, off, len) in &lay {
        let t = out
            .get_mut(name)
            .expect("the layout lists the base's tensors");
        for (v, m) in t.data.iter_mut().zip(&merged[*off..off + len]) {
            *v = (*v as f64 + settings.lambda * m) as f32;
        }
    }
    let report = TaskVectorReport {
        settings: settings.clone(),
        parameters: d,
        kept_fraction,
        sign_conflicts: conflicts as f64 / d.max(1) as f64,
        norms,
        merged_norm: merged.iter().map(|v| v * v).sum::<f64>().sqrt(),
        bn_statistics: "BN running statistics are not task vectors: the base's are taken, then reset on the BN-reset images",
    };
    Ok((out, report))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::state::NamedTensor;

    fn state(pairs: &[(&str, Vec<f32>)]) -> StateDict {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), NamedTensor::new(vec![v.len()], v.clone())))
            .collect()
    }

    /// Hand-derived: magnitudes [1, 3, 2, 2, 0.5], d = 5, density 0.4 -> k = 2, rank 3: the
    /// 3rd smallest magnitude is 2, so both 2s tie at the threshold and stay (3 entries kept).
    #[test]
    fn the_global_trim_keeps_ties_at_the_threshold() {
        let mut t = vec![1.0, -3.0, 2.0, -2.0, 0.5];
        trim_global(&mut t, 0.4);
        assert_eq!(t, vec![0.0, -3.0, 2.0, -2.0, 0.0]);
        let mut all = vec![1.0, -3.0];
        trim_global(&mut all, 1.0);
        assert_eq!(all, vec![1.0, -3.0]);
        // density 0.2 of 5: k = 1, rank 4: threshold 2 -> 3, 2, 2 kept (ties)
        let mut t = vec![1.0, -3.0, 2.0, -2.0, 0.5];
        trim_global(&mut t, 0.2);
        assert_eq!(t, vec![0.0, -3.0, 2.0, -2.0, 0.0]);
    }

    /// Hand-derived: column sums [0, 2, 3] give gamma [0, +1, +1]; the zero takes the majority
    /// sign(0 + 1 + 1) = +1. Sums [0, -2, -3]: the zero takes -1.
    #[test]
    fn a_zero_sum_takes_the_majority_sign() {
        let taus = vec![vec![1.0, 2.0, 1.0], vec![-1.0, 0.0, 2.0]];
        assert_eq!(elect_sign(&taus, SignRule::Mass), vec![1.0, 1.0, 1.0]);
        let taus = vec![vec![1.0, -2.0, -1.0], vec![-1.0, 0.0, -2.0]];
        assert_eq!(elect_sign(&taus, SignRule::Mass), vec![-1.0, -1.0, -1.0]);
        // count: signs [+1 -1 = 0, -1, +1 + -1 = 0] -> majority sign(-1) = -1 for the zeros
        let taus = vec![vec![5.0, -2.0, 3.0], vec![-1.0, 0.0, -1.0]];
        assert_eq!(elect_sign(&taus, SignRule::Count), vec![-1.0, -1.0, -1.0]);
    }

    /// Hand-derived: zeros never count in the mean, entries against the sign are dropped.
    #[test]
    fn the_disjoint_mean_ignores_zeros_and_disagreeing_entries() {
        let taus = vec![
            vec![2.0, 0.0, -1.0],
            vec![4.0, 3.0, 5.0],
            vec![0.0, 0.0, 1.0],
        ];
        let gamma = vec![1.0, 1.0, 1.0];
        assert_eq!(
            disjoint_merge(&taus, &gamma, Disjoint::Mean),
            vec![3.0, 3.0, 3.0]
        );
        assert_eq!(
            disjoint_merge(&taus, &gamma, Disjoint::Sum),
            vec![6.0, 3.0, 6.0]
        );
        assert_eq!(
            disjoint_merge(&taus, &gamma, Disjoint::Max),
            vec![4.0, 3.0, 5.0]
        );
        // gamma 0 (no majority) keeps the negative entries, as the official `torch.where`
        assert_eq!(
            disjoint_merge(&taus, &[0.0, 0.0, 0.0], Disjoint::Mean),
            vec![0.0, 0.0, -1.0]
        );
    }

    /// One fine-tune, lambda 1, density 1: the fine-tune itself, exactly, for every method but
    /// DARE's drops (p = 0).
    #[test]
    fn one_fine_tune_with_lambda_one_returns_it() {
        let base = state(&[
            ("conv.weight", vec![0.5, -1.0, 2.0]),
            ("bn.running_var", vec![1.0]),
        ]);
        let ft = state(&[
            ("conv.weight", vec![0.75, -3.0, 2.0]),
            ("bn.running_var", vec![7.0]),
        ]);
        let methods = [
            TaskVectorMethod::TaskArithmetic,
            TaskVectorMethod::Ties {
                density: 1.0,
                trim: Trim::Global,
                sign: SignRule::Mass,
                disjoint: Disjoint::Mean,
            },
            TaskVectorMethod::DareTies {
                drop: 0.0,
                density: 1.0,
                sign: SignRule::Mass,
                disjoint: Disjoint::Mean,
            },
            TaskVectorMethod::DareLinear { drop: 0.0 },
        ];
        for method in methods {
            let s = TaskVectorSettings {
                method,
                lambda: 1.0,
                weights: None,
                seed: 0,
                groups: vec![],
            };
            let (m, _) = merge(&base, &[&ft], &s).unwrap();
            assert_eq!(m["conv.weight"].data, ft["conv.weight"].data);
            // BN running statistics are the base's
            assert_eq!(m["bn.running_var"].data, vec![1.0]);
        }
    }

    /// DARE's expectation: the mean over many seeded drops is the task vector.
    #[test]
    fn dare_is_unbiased() {
        let lay = vec![("w".to_string(), 0, 4)];
        let tau = vec![1.0f32, -2.0, 0.5, 3.0];
        let mut mean = [0f64; 4];
        let runs = 4000;
        for seed in 0..runs {
            let mut t = tau.clone();
            dare(&mut t, &lay, 0.7, seed, 0);
            for (m, v) in mean.iter_mut().zip(&t) {
                *m += *v as f64 / runs as f64;
            }
        }
        for (m, t) in mean.iter().zip(&tau) {
            assert!((m - *t as f64).abs() < 0.08 * t.abs() as f64, "{mean:?}");
        }
    }

    #[test]
    fn another_base_and_bad_options_are_refused() {
        let base = state(&[("a.weight", vec![0.0, 1.0])]);
        let other = state(&[("a.weight", vec![0.0, 1.0, 2.0])]);
        let e = task_vectors(&base, &[&other]).unwrap_err();
        assert!(e.to_string().contains("`a.weight`"), "{e}");
        let extra = state(&[("a.weight", vec![0.0, 1.0]), ("b.bias", vec![1.0])]);
        assert!(task_vectors(&base, &[&extra]).is_err());
        let mut s = TaskVectorSettings {
            method: TaskVectorMethod::Ties {
                density: 0.0,
                trim: Trim::Global,
                sign: SignRule::Mass,
                disjoint: Disjoint::Mean,
            },
            lambda: 1.0,
            weights: None,
            seed: 0,
            groups: vec![],
        };
        assert!(s.check(2).unwrap_err().to_string().contains("--density"));
        s.method = TaskVectorMethod::DareLinear { drop: 1.0 };
        assert!(s.check(2).unwrap_err().to_string().contains("--drop"));
        s.method = TaskVectorMethod::TaskArithmetic;
        s.lambda = f64::NAN;
        assert!(s.check(2).unwrap_err().to_string().contains("--lambda"));
        s.lambda = -1.0;
        assert!(s.check(2).is_err());
    }

    /// Hand-derived: one fine-tune, TIES with per-group densities. Stem `conv1` tau
    /// [1, -3, 2, 0.5] at density 0.5: k = 2 of 4, threshold the 2nd smallest magnitude (1):
    /// [1, -3, 2, 0]. `layer1` tau [4, 1, -1, 2] at 0.25: k = 1, threshold the 3rd smallest
    /// (2): [4, 0, 0, 2] (a global trim at 0.5 over all 8 would keep 7). With weight 2 on
    /// layer1: [8, 2, -2, 4], threshold 4: [8, 0, 0, 4]. One model: the election and the
    /// disjoint mean keep the trimmed vector; lambda 1.
    #[test]
    fn groups_trim_and_weight_within_each_layer_group() {
        let base = state(&[
            ("conv1.weight", vec![0.0; 4]),
            ("layer1.0.conv1.weight", vec![0.0; 4]),
        ]);
        let ft = state(&[
            ("conv1.weight", vec![1.0, -3.0, 2.0, 0.5]),
            ("layer1.0.conv1.weight", vec![4.0, 1.0, -1.0, 2.0]),
        ]);
        let group = |g: &str, d: f64, w: Option<f64>| TaskVectorGroup {
            group: g.into(),
            density: Some(vec![d]),
            weights: w.map(|w| vec![w]),
        };
        let mut s = TaskVectorSettings {
            method: TaskVectorMethod::Ties {
                density: 0.5,
                trim: Trim::Global,
                sign: SignRule::Mass,
                disjoint: Disjoint::Mean,
            },
            lambda: 1.0,
            weights: None,
            seed: 0,
            groups: vec![group("stem", 0.5, None), group("layer1", 0.25, None)],
        };
        let (m, _) = merge(&base, &[&ft], &s).unwrap();
        assert_eq!(m["conv1.weight"].data, vec![1.0, -3.0, 2.0, 0.0]);
        assert_eq!(m["layer1.0.conv1.weight"].data, vec![4.0, 0.0, 0.0, 2.0]);
        s.groups[1] = group("layer1", 0.25, Some(2.0));
        let (m, _) = merge(&base, &[&ft], &s).unwrap();
        assert_eq!(m["layer1.0.conv1.weight"].data, vec![8.0, 0.0, 0.0, 4.0]);
        s.groups[1].group = "layer7".into();
        let e = merge(&base, &[&ft], &s).unwrap_err().to_string();
        assert!(e.contains("layer7"), "{e}");
    }
}
