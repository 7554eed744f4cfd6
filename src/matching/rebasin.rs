//! Git Re-Basin weight matching (Ainsworth et al., ICLR 2023; reference doc §3.5): a data-free
//! baseline. One permutation per feature space (the spaces of the merge spec, residual streams
//! included), all starting at the identity. Spaces are visited in a seeded random order; for each,
//! a linear assignment maximises `sum_w <W_A[w], P W_B[w] (other perms)>` over every weight
//! touching the space on its output or input axis (conv/linear weights and biases, BN weight and
//! bias). Passes repeat until one makes no change (at most 100). More than two models:
//! MergeMany (each model matched onto the mean of the others, [`git_rebasin`]).

use rand::seq::SliceRandom;
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;

use crate::error::MergeError;
use crate::matching::MergeUnmerge;
use crate::models::MergeSpec;
use crate::spec::{LayerKind, Side};
use crate::state::StateDict;

/// Maximum number of passes over the spaces (the reference implementation's cap).
pub const MAX_PASSES: usize = 100;

/// Solves a maximising linear assignment on a square cost matrix `c` (`n x n`, row-major):
/// returns `assign[i] = j`. The Hungarian solver, integer scaling and sanitising of
/// [`super::Permute`] (one rule for every matcher).
pub fn lap_max(c: &[f64], n: usize) -> Vec<usize> {
    // one Hungarian solver and one sanitising rule for every matcher
    super::permute::max_assignment(n, c)
}

/// `cost[i * n + j] += sum_k x[i, k] y[j, k]` for row-major `x, y: [n, k]`: one f32 matrix
/// product (as the reference's float32 matmuls), accumulated into the f64 cost.
fn add_gram(cost: &mut [f64], x: &[f32], y: &[f32], n: usize, k: usize) {
    assert!(x.len() >= n * k && y.len() >= n * k && cost.len() == n * n);
    let mut tmp = vec![0f32; n * n];
    // SAFETY: lhs(i, kk) = x[i * k + kk], rhs(kk, j) = y[j * k + kk], both in bounds by the
    // assertion; tmp is [n, n] and does not overlap the inputs.
    unsafe {
        crate::engine::kernels::matmul(
            n,
            n,
            k,
            tmp.as_mut_ptr(),
            n,
            x.as_ptr(),
            (k, 1),
            y.as_ptr(),
            (1, k),
            false,
        );
    }
    cost.iter_mut().zip(&tmp).for_each(|(c, t)| *c += *t as f64);
}

/// Runs weight matching (Ainsworth et al. 2023, Algorithm 2) of `b` onto `a` and returns one
/// permutation per space: B's feature `perm[k]` joins A's feature k. `rng` orders the spaces
/// of each pass.
///
/// # Errors
/// [`MergeError::Tensor`] for a tensor whose shape differs between the two models.
#[allow(clippy::needless_range_loop)] // the loop indices drive flat-tensor offsets, not just `perms`
pub fn weight_matching(
    spec: &MergeSpec,
    a: &StateDict,
    b: &StateDict,
    rng: &mut ChaCha8Rng,
) -> Result<Vec<Vec<usize>>, MergeError> {
    let ns = spec.spaces.len();
    let mut perms: Vec<Vec<usize>> = spec.spaces.iter().map(|s| (0..s.width).collect()).collect();
    let space_of = |s: Side| {
        if let Side::Space(i) = s {
            Some(i)
        } else {
            None
        }
    };
    // (tensor key, output space, input space) of every weight in the objective
    let mut tensors: Vec<(String, Option<usize>, Option<usize>)> = Vec::new();
    for l in &spec.layers {
        let names: &[&str] = match l.kind {
            LayerKind::BatchNorm => &["weight", "bias"],
            _ => &["weight", "bias"],
        };
        for n in names {
            let key = format!("{}.{n}", l.name);
            let Some(t) = a.get(&key) else { continue };
            let input = if t.shape.len() >= 2 {
                space_of(l.input)
            } else {
                None
            };
            tensors.push((key, space_of(l.output), input));
        }
    }
    for key in tensors.iter().map(|t| &t.0) {
        if b.get(key).map(|t| &t.shape) != a.get(key).map(|t| &t.shape) {
            return Err(MergeError::Tensor {
                tensor: key.clone(),
                msg: "differs in shape between the two models".into(),
            });
        }
    }
    for _pass in 0..MAX_PASSES {
        let mut order: Vec<usize> = (0..ns).collect();
        order.shuffle(rng);
        let mut changed = false;
        for &s in &order {
            let n = spec.spaces[s].width;
            let mut cost = vec![0.0f64; n * n];
            for (key, out_s, in_s) in &tensors {
                let (ta, tb) = (&a[key], &b[key]);
                let rows = ta.shape[0];
                let inner = if ta.shape.len() >= 2 { ta.shape[1] } else { 1 };
                let spatial = ta.data.len() / (rows * inner).max(1);
                if *out_s == Some(s) && rows == n {
                    // rows of A vs rows of B with B's input axis permuted: A B'^T over
                    // [rows, inner * spatial]
                    let y = match in_s {
                        Some(is) => {
                            let p = &perms[*is];
                            let mut y = Vec::with_capacity(tb.data.len());
                            for j in 0..rows {
                                for c in 0..inner {
                                    let at = (j * inner + p[c]) * spatial;
                                    y.extend_from_slice(&tb.data[at..at + spatial]);
                                }
                            }
                            std::borrow::Cow::Owned(y)
                        }
                        None => std::borrow::Cow::Borrowed(&tb.data[..]),
                    };
                    add_gram(&mut cost, &ta.data, &y, n, inner * spatial);
                }
                if *in_s == Some(s) && ta.shape.len() >= 2 && inner == n {
                    // input columns of A vs input columns of B with B's output axis permuted:
                    // over [inner, rows * spatial]
                    let mut x = Vec::with_capacity(ta.data.len());
                    let mut y = Vec::with_capacity(tb.data.len());
                    for i in 0..inner {
                        for r in 0..rows {
                            let rb = match out_s {
                                Some(os) => perms[*os][r],
                                None => r,
                            };
                            let (pa, pb) = ((r * inner + i) * spatial, (rb * inner + i) * spatial);
                            x.extend_from_slice(&ta.data[pa..pa + spatial]);
                            y.extend_from_slice(&tb.data[pb..pb + spatial]);
                        }
                    }
                    add_gram(&mut cost, &x, &y, n, rows * spatial);
                }
            }
            let new = lap_max(&cost, n);
            let old_score: f64 = (0..n).map(|i| cost[i * n + perms[s][i]]).sum();
            let new_score: f64 = (0..n).map(|i| cost[i * n + new[i]]).sum();
            if new_score > old_score + 1e-12 * old_score.abs().max(1.0) {
                perms[s] = new;
                changed = true;
            }
        }
        if !changed {
            break;
        }
    }
    Ok(perms)
}

/// Model `state` with its features permuted by `perms` (one per space; feature `perm[k]`
/// becomes feature k): every tensor the spec covers, its output rows and its input columns.
pub fn permute_state(spec: &MergeSpec, state: &StateDict, perms: &[Vec<usize>]) -> StateDict {
    let space_of = |s: Side| match s {
        Side::Space(i) => Some(i),
        _ => None,
    };
    let mut out = state.clone();
    for (key, l) in spec.covered_tensors() {
        let Some(t) = state.get(&key) else { continue };
        let rows = t.shape[0];
        let inner = if t.shape.len() >= 2 { t.shape[1] } else { 1 };
        let spatial = t.data.len() / (rows * inner).max(1);
        let po = space_of(l.output)
            .map(|s| &perms[s])
            .filter(|p| p.len() == rows);
        let pi = if t.shape.len() >= 2 {
            space_of(l.input)
                .map(|s| &perms[s])
                .filter(|p| p.len() == inner)
        } else {
            None
        };
        if po.is_none() && pi.is_none() {
            continue;
        }
        let mut data = Vec::with_capacity(t.data.len());
        for r in 0..rows {
            let rs = po.map_or(r, |p| p[r]);
            for c in 0..inner {
                let cs = pi.map_or(c, |p| p[c]);
                let at = (rs * inner + cs) * spatial;
                data.extend_from_slice(&t.data[at..at + spatial]);
            }
        }
        out.get_mut(&key).expect("present").data = data;
    }
    out
}

/// Git Re-Basin weight matching of N >= 2 models (reference doc §3.5), as (merge, unmerge)
/// pairs per space. Two models: B matched onto A (`U_A = I`, B's feature `perm[k]` joins A's
/// feature k, merge normalised by `2 + eps`). More: **MergeMany** (Ainsworth et al. 2023,
/// Algorithm 3): every model starts unpermuted; in seeded random order, each model is matched
/// onto the mean of the others in their current permutations, until a round changes no
/// permutation (at most [`MAX_PASSES`] rounds); cluster k holds feature k of the common basis
/// from every model.
///
/// # Errors
/// [`MergeError::Param`] for fewer than two models; [`MergeError::Tensor`] for a tensor whose
/// shape differs between models.
pub fn git_rebasin(
    spec: &MergeSpec,
    states: &[StateDict],
    seed: u64,
    eps: f64,
) -> Result<Vec<MergeUnmerge>, MergeError> {
    let n = states.len();
    if n < 2 {
        return Err(MergeError::param(
            crate::error::MergeParam::Method,
            "git-rebasin",
            format!("merges at least 2 models, got {n}"),
        ));
    }
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    let perms: Vec<Vec<Vec<usize>>> = if n == 2 {
        let identity = spec.spaces.iter().map(|s| (0..s.width).collect()).collect();
        vec![
            identity,
            weight_matching(spec, &states[0], &states[1], &mut rng)?,
        ]
    } else {
        merge_many(spec, states, &mut rng)?
    };
    Ok((0..spec.spaces.len())
        .map(|s| {
            let om = spec.spaces[s].width;
            let clusters = (0..om)
                .map(|k| (0..n).map(|m| m * om + perms[m][s][k]).collect())
                .collect();
            MergeUnmerge::from_clusters(clusters, n * om, eps)
        })
        .collect())
}

/// MergeMany's permutations ([`git_rebasin`]): per model, per space.
fn merge_many(
    spec: &MergeSpec,
    states: &[StateDict],
    rng: &mut ChaCha8Rng,
) -> Result<Vec<Vec<Vec<usize>>>, MergeError> {
    let n = states.len();
    let identity: Vec<Vec<usize>> = spec.spaces.iter().map(|s| (0..s.width).collect()).collect();
    let mut perms = vec![identity; n];
    let mut aligned: Vec<StateDict> = states.to_vec();
    for _round in 0..MAX_PASSES {
        let mut order: Vec<usize> = (0..n).collect();
        order.shuffle(rng);
        let mut changed = false;
        for &i in &order {
            // the mean of the other models in the common basis
            let mut mean = aligned[(i + 1) % n].clone();
            for (key, t) in mean.iter_mut() {
                let mut acc: Vec<f64> = vec![0.0; t.data.len()];
                for (_, m) in aligned.iter().enumerate().filter(|(j, _)| *j != i) {
                    for (a, v) in acc.iter_mut().zip(&m[key].data) {
                        *a += *v as f64;
                    }
                }
                t.data = acc.iter().map(|a| (a / (n - 1) as f64) as f32).collect();
            }
            let p = weight_matching(spec, &mean, &states[i], rng)?;
            if p != perms[i] {
                changed = true;
                aligned[i] = permute_state(spec, &states[i], &p);
                perms[i] = p;
            }
        }
        if !changed {
            break;
        }
    }
    Ok(perms)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lap_finds_the_known_optimum() {
        // rows 0..3, best assignment by enumeration: 0->2 (9), 1->0 (8), 2->1 (7) = 24
        let c = [1.0, 2.0, 9.0, 8.0, 1.0, 1.0, 3.0, 7.0, 2.0];
        assert_eq!(lap_max(&c, 3), vec![2, 0, 1]);
    }
}
