//! The rewriter: applies per-space merge/unmerge matrices to every layer of N models and builds
//! the zipped trunk and, for a partial zip, one head per source model (reference doc §4.1-4.2,
//! §1.7).
//!
//! For every trunk layer with output space `s_out` and input space `s_in`:
//! `W = sum_m M_m^(s_out) W_m U_m^(s_in)` where `M` is `(1/N) I` on an unmerged output side (the
//! network output) and `U = I` on an unmerged input side (the image). BN vectors (weight, bias,
//! running mean, running var) become `sum_m M_m v_m` (mixed linearly, §4.1; BN is reset
//! afterwards, §4.4). A head m is model m's own network from the stop cut on, with its entry
//! layers' weights replaced by `W_m U_m` (not averaged).

pub mod bn_reset;
pub mod path;

use crate::checkpoint::{NamedTensor, StateDict};
use crate::error::{MergeError, MergeParam};
use crate::matching::MergeUnmerge;
use crate::models::MergeSpec;
use crate::spec::{Side, Stop};

/// A sparse view of the per-model blocks of one space's matrices.
struct Blocks {
    /// Per model: for merged feature u, the `(o, weight)` entries of row u of `M_m`.
    merge_rows: Vec<Vec<Vec<(usize, f64)>>>,
    /// Per model: for input feature i, the merged features u with `U_m[i, u] != 0` and the value.
    unmerge_rows: Vec<Vec<Vec<(usize, f64)>>>,
    k: usize,
}

impl Blocks {
    fn new(mu: &MergeUnmerge, n: usize) -> Self {
        let om = mu.o / n;
        let k = mu.k;
        let mut merge_rows = Vec::new();
        let mut unmerge_rows = Vec::new();
        for m in 0..n {
            let mb = mu.merge_block(m, n); // K x Om
            let ub = mu.unmerge_block(m, n); // Om x K
            merge_rows.push(
                (0..k)
                    .map(|u| {
                        (0..om)
                            .filter_map(|o| (mb[u * om + o] != 0.0).then_some((o, mb[u * om + o])))
                            .collect()
                    })
                    .collect(),
            );
            unmerge_rows.push(
                (0..om)
                    .map(|i| {
                        (0..k)
                            .filter_map(|u| (ub[i * k + u] != 0.0).then_some((u, ub[i * k + u])))
                            .collect()
                    })
                    .collect(),
            );
        }
        Self {
            merge_rows,
            unmerge_rows,
            k,
        }
    }
}

impl Blocks {
    /// The merge rows with model m's entries weighted `w[m]`, each row rescaled to keep its
    /// sum (a weighted average of the cluster's units; [`zip_weighted`]). A row whose weighted
    /// sum is 0 (all its units from models of weight 0) keeps its entries.
    fn weighted_merge_rows(&self, w: &[f64]) -> Vec<Vec<Vec<(usize, f64)>>> {
        let n = self.merge_rows.len();
        let mut out = self.merge_rows.clone();
        for u in 0..self.k {
            let part = |m: usize| -> f64 { self.merge_rows[m][u].iter().map(|e| e.1).sum() };
            let plain: f64 = (0..n).map(part).sum();
            let weighted: f64 = (0..n).map(|m| w[m] * part(m)).sum();
            if weighted == 0.0 {
                continue;
            }
            for (m, rows) in out.iter_mut().enumerate() {
                for e in &mut rows[u] {
                    e.1 *= w[m] * plain / weighted;
                }
            }
        }
        out
    }
}

/// Per row of a sparse matrix: its `(column, value)` entries.
type SparseRows<'a> = &'a [Vec<(usize, f64)>];

/// `M W U` for one model's tensor `w` (`[out, in, ...]` or `[C]`), with `m`/`u` optional sparse
/// blocks (None = identity), scaled by `scale`, added into `acc`.
fn accumulate(
    acc: &mut [f64],
    w: &NamedTensor,
    m: Option<&[Vec<(usize, f64)>]>,
    u: Option<(SparseRows<'_>, usize)>,
    scale: f64,
) {
    let rows_in = w.shape[0];
    let inner = if w.shape.len() >= 2 { w.shape[1] } else { 1 };
    let spatial: usize = w.shape.iter().skip(2).product::<usize>().max(1);
    // input side first: W U -> [out, K_in, spatial]
    let (k_in, wu): (usize, Vec<f64>) = match u {
        None => (inner, w.data.iter().map(|&v| v as f64).collect()),
        Some((rows, k)) => {
            let mut t = vec![0.0; rows_in * k * spatial];
            for o in 0..rows_in {
                for (i, targets) in rows.iter().enumerate() {
                    let src = &w.data[(o * inner + i) * spatial..(o * inner + i + 1) * spatial];
                    for &(uu, val) in targets {
                        let dst = &mut t[(o * k + uu) * spatial..(o * k + uu + 1) * spatial];
                        for (d, s) in dst.iter_mut().zip(src) {
                            *d += val * *s as f64;
                        }
                    }
                }
            }
            (k, t)
        }
    };
    let row = k_in * spatial;
    match m {
        None => {
            for (a, v) in acc.iter_mut().zip(&wu) {
                *a += scale * v;
            }
        }
        Some(mrows) => {
            for (uo, entries) in mrows.iter().enumerate() {
                let dst = &mut acc[uo * row..(uo + 1) * row];
                for &(o, val) in entries {
                    let src = &wu[o * row..(o + 1) * row];
                    for (d, s) in dst.iter_mut().zip(src) {
                        *d += scale * val * s;
                    }
                }
            }
        }
    }
}

/// The zipped network: trunk state and, for a partial zip, one state per source model's head.
#[derive(Debug, Clone)]
pub struct Zipped {
    /// Trunk weights (a complete network; layers after the stop are model 0's and unused).
    pub trunk: StateDict,
    /// Head networks (complete networks; only the layers after the stop cut run). Empty for a
    /// full zip.
    pub heads: Vec<StateDict>,
}

/// Applies the matrices of the first `stop.spaces` spaces to `states` (N models).
///
/// # Errors
/// [`MergeError::Param`] for fewer than two models; [`MergeError::Tensor`] when a tensor is
/// missing or shapes differ between models;
/// [`MergeError::Uncovered`] naming a tensor of a model the spec does not cover.
pub fn zip(
    spec: &MergeSpec,
    states: &[StateDict],
    transforms: &[MergeUnmerge],
    stop: &Stop,
) -> Result<Zipped, MergeError> {
    zip_weighted(spec, states, transforms, stop, &|_| None)
}

/// [`zip()`] with the models weighted per tensor: `weights_of(key)` gives the weight of each
/// model in the trunk tensor `key` (`None`: equal weights, the plain zip). A weighted tensor
/// takes each merged row as the weighted average of its cluster's units (model m's entries of
/// `M_m` times `w_m`, the row's sum kept), and the network output layer of a full zip
/// `sum_m w_m W_m U_m / sum_m w_m` instead of the plain mean (`crate::merge::knobs`; the
/// weights need not sum to 1). Heads of a partial zip are not weighted.
///
/// # Errors
/// As [`zip()`]; [`MergeError::Param`] for a weight list whose length is not the model count.
pub fn zip_weighted(
    spec: &MergeSpec,
    states: &[StateDict],
    transforms: &[MergeUnmerge],
    stop: &Stop,
    weights_of: &dyn Fn(&str) -> Option<Vec<f64>>,
) -> Result<Zipped, MergeError> {
    let n = states.len();
    if n < 2 {
        return Err(MergeError::param(
            MergeParam::Models,
            n,
            "merging needs at least two models",
        ));
    }
    if transforms.len() < stop.spaces {
        return Err(MergeError::Internal(format!(
            "{} spaces matched, the stop needs {}",
            transforms.len(),
            stop.spaces
        )));
    }
    // every tensor is rewritten by the loop below, or the merge is refused (no tensor keeps
    // model A's values silently)
    for st in states {
        spec.check_covers(st.keys())?;
    }
    let blocks: Vec<Blocks> = transforms[..stop.spaces]
        .iter()
        .map(|t| Blocks::new(t, n))
        .collect();
    let merged = |s: Side| match s {
        Side::Space(i) if i < stop.spaces => Some(i),
        _ => None,
    };
    let mut trunk = states[0].clone();
    let mut heads: Vec<StateDict> = if stop.is_full() {
        vec![]
    } else {
        states.to_vec()
    };
    for (key, layer) in spec.covered_tensors() {
        let in_trunk = stop.is_full() || layer.segment < stop.cut;
        let Some(w0) = states[0].get(&key) else {
            if key.ends_with(".bias") {
                continue;
            }
            return Err(MergeError::Tensor {
                tensor: key.clone(),
                msg: "model 0 has no such tensor".into(),
            });
        };
        for (mi, s) in states.iter().enumerate() {
            let shape = s.get(&key).map(|t| &t.shape);
            if shape != Some(&w0.shape) {
                return Err(MergeError::Tensor {
                    tensor: key.clone(),
                    msg: format!(
                        "model {mi} has shape {shape:?}, model 0 has {:?}; the models must share one architecture and width",
                        w0.shape
                    ),
                });
            }
        }
        let is_vector = w0.shape.len() == 1;
        // a bias or BN vector only has an output side
        let in_space = if is_vector { None } else { merged(layer.input) };
        let out_space = merged(layer.output);
        if in_trunk {
            let out_rows = out_space.map_or(w0.shape[0], |s| blocks[s].k);
            let per_row = if is_vector {
                1
            } else {
                in_space.map_or(w0.row_len(), |s| blocks[s].k * w0.row_len() / w0.shape[1])
            };
            let mut acc = vec![0.0; out_rows * per_row];
            let w = weights_of(&key);
            if let Some(w) = w.as_ref().filter(|w| w.len() != n) {
                return Err(MergeError::param(
                    MergeParam::Knobs,
                    format!("{key}: {} weights", w.len()),
                    format!("expected one per model ({n})"),
                ));
            }
            let weighted_rows = match (&w, out_space) {
                (Some(w), Some(s)) => Some(blocks[s].weighted_merge_rows(w)),
                _ => None,
            };
            for (mi, st) in states.iter().enumerate() {
                let m = out_space.map(|s| match &weighted_rows {
                    Some(rows) => rows[mi].as_slice(),
                    None => blocks[s].merge_rows[mi].as_slice(),
                });
                let u = in_space.map(|s| (blocks[s].unmerge_rows[mi].as_slice(), blocks[s].k));
                let scale = match (out_space, &w) {
                    (Some(_), _) => 1.0,
                    (None, None) => 1.0 / n as f64,
                    (None, Some(w)) => w[mi] / w.iter().sum::<f64>(),
                };
                accumulate(&mut acc, &st[&key], m, u, scale);
            }
            let mut shape = w0.shape.clone();
            shape[0] = out_rows;
            if let (Some(s), false) = (in_space, is_vector) {
                shape[1] = blocks[s].k;
            }
            trunk.insert(
                key.clone(),
                NamedTensor::new(shape, acc.iter().map(|&v| v as f32).collect()),
            );
        } else if let Some(s) = in_space {
            // head entry layer: W_m U_m for each head
            for (mi, head) in heads.iter_mut().enumerate() {
                let w = &states[mi][&key];
                let mut acc = vec![0.0; w.shape[0] * blocks[s].k * w.row_len() / w.shape[1]];
                accumulate(
                    &mut acc,
                    w,
                    None,
                    Some((blocks[s].unmerge_rows[mi].as_slice(), blocks[s].k)),
                    1.0,
                );
                let mut shape = w.shape.clone();
                shape[1] = blocks[s].k;
                head.insert(
                    key.clone(),
                    NamedTensor::new(shape, acc.iter().map(|&v| v as f32).collect()),
                );
            }
        }
    }
    Ok(Zipped { trunk, heads })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// T8: the zip formula on a hand-built 2-layer case (Om = 2, N = 2, linear layers).
    /// Clusters {A0, B1} and {A1, B0} (eps 0): M_A = [[1/2, 0], [0, 1/2]], M_B = [[0, 1/2], [1/2, 0]],
    /// U_A = I, U_B = [[0, 1], [1, 0]].
    /// Layer 1 (out side merged): W1_A = [[1, 2], [3, 4]], W1_B = [[5, 6], [7, 8]]
    ///   -> M_A W1_A + M_B W1_B = [[0.5, 1], [1.5, 2]] + [[3.5, 4], [2.5, 3]] = [[4, 5], [4, 5]].
    /// Layer 2 (in side merged, out = output, scale 1/2): W2_A = [[1, 0]], W2_B = [[0, 2]]
    ///   -> (W2_A U_A + W2_B U_B) / 2 = ([[1, 0]] + [[2, 0]]) / 2 = [[1.5, 0]].
    #[test]
    fn t8_zip_formula_on_hand_built_clusters() {
        let mu = MergeUnmerge::from_clusters(vec![vec![0, 3], vec![1, 2]], 4, 0.0);
        let b = Blocks::new(&mu, 2);
        let w1 = [
            NamedTensor::new(vec![2, 2], vec![1., 2., 3., 4.]),
            NamedTensor::new(vec![2, 2], vec![5., 6., 7., 8.]),
        ];
        let mut acc = vec![0.0; 4];
        for (m, w) in w1.iter().enumerate() {
            accumulate(&mut acc, w, Some(&b.merge_rows[m]), None, 1.0);
        }
        assert_eq!(acc, vec![4.0, 5.0, 4.0, 5.0]);
        let w2 = [
            NamedTensor::new(vec![1, 2], vec![1., 0.]),
            NamedTensor::new(vec![1, 2], vec![0., 2.]),
        ];
        let mut acc = vec![0.0; 2];
        for (m, w) in w2.iter().enumerate() {
            accumulate(&mut acc, w, None, Some((&b.unmerge_rows[m], b.k)), 0.5);
        }
        assert_eq!(acc, vec![1.5, 0.0]);
    }
}
