//! Permutation ("Git Re-Basin style" activation) matching (reference doc §3.2).

use pathfinding::kuhn_munkres::kuhn_munkres;
use pathfinding::matrix::Matrix;

use crate::matching::{validate, MatchError, Matcher, MergeUnmerge, SquareMatrix};

/// Scale applied to correlations before rounding them to `i64` for the Hungarian solver.
pub const PERMUTE_WEIGHT_SCALE: f64 = 1e9;

/// Permutation matcher `match_tensors_permute` (reference doc §3.2).
///
/// For every model `m >= 1` it solves a linear assignment problem on the cross block
/// `rho[0:Om, m*Om:(m+1)*Om]`, **maximising** total correlation. Rows are model-0 features and
/// columns are model-`m` features; the solution is `sigma_m`.
/// - Blocks: `U_0 = I_Om` and `U_m[sigma_m(k), k] = 1`. Merged feature `k` is the average of
///   model 0's feature `k` and model `m`'s feature `sigma_m(k)`, so the merged space uses model
///   0's ordering.
/// - Cluster `k` is `[k, Om + sigma_1(k), 2 Om + sigma_2(k), ...]`.
/// - `M = (P / (N + eps))^T`.
/// - Diagonal blocks and within-model entries are ignored. The symmetry check still covers the
///   whole matrix.
///
/// Solver and precision: `pathfinding::kuhn_munkres` (Hungarian algorithm, `O(Om^3)`) on
/// integer weights.
/// - Each entry becomes `w = round(v * s)` with `s = 1e9 / max(1, max |v|)`, the max taken over
///   the finite entries of the block. So correlations in `[-1, 1]` are resolved to `1e-9`.
/// - The returned assignment is exactly optimal for the rounded weights. Its true total is
///   therefore within `Om * 1e-9 / s'` of the true optimum, with `s' = s / 1e9`.
/// - Assignments whose totals differ by less than that may be swapped relative to scipy's
///   `linear_sum_assignment`. Exact ties are broken in an implementation-defined way, as in the
///   reference.
///
/// Sanitising: NaN and `-inf` entries become `min_finite - 1` (worse than any real pair),
/// `+inf` becomes `max_finite + 1`. An all-non-finite block is all zeros.
///
/// Dead units (rho = 0 with everything) are still paired, because an assignment is forced
/// (reference doc §9 item 1).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Permute;

/// Maximum-weight perfect assignment of an `n x n` row-major block: returns `sigma` with row
/// `r` assigned to column `sigma[r]`. See [`Permute`] for scaling and sanitising.
pub(crate) fn max_assignment(n: usize, block: &[f64]) -> Vec<usize> {
    debug_assert_eq!(block.len(), n * n);
    if n == 0 {
        return Vec::new();
    }
    let finite = block.iter().copied().filter(|v| v.is_finite());
    let (lo, hi) = finite.fold((f64::INFINITY, f64::NEG_INFINITY), |(lo, hi), v| {
        (lo.min(v), hi.max(v))
    });
    let (lo, hi) = if lo <= hi { (lo, hi) } else { (0.0, 0.0) };
    let sane: Vec<f64> = block
        .iter()
        .map(|&v| {
            if v.is_nan() || v == f64::NEG_INFINITY {
                lo - 1.0
            } else if v == f64::INFINITY {
                hi + 1.0
            } else {
                v
            }
        })
        .collect();
    let max_abs = sane.iter().fold(1.0f64, |m, v| m.max(v.abs()));
    let scale = PERMUTE_WEIGHT_SCALE / max_abs;
    let weights: Vec<i64> = sane.iter().map(|v| (v * scale).round() as i64).collect();
    let matrix = Matrix::from_vec(n, n, weights).expect("n*n weights");
    let (_total, sigma) = kuhn_munkres(&matrix);
    sigma
}

impl Matcher for Permute {
    fn name(&self) -> &'static str {
        "permute"
    }

    /// Permute matching (reference doc §3.2), `K = Om` columns in model 0's order.
    ///
    /// # Errors
    /// The shared input errors of [`Matcher::solve`].
    fn solve(
        &self,
        corr: &SquareMatrix,
        n_models: usize,
        eps: f64,
    ) -> Result<MergeUnmerge, MatchError> {
        let om = validate(corr, n_models, eps)?;
        let o = corr.n;
        let mut clusters: Vec<Vec<usize>> = (0..om).map(|k| vec![k]).collect();
        let mut block = vec![0.0; om * om];
        for m in 1..n_models {
            for r in 0..om {
                let src = &corr.data[r * o + m * om..r * o + (m + 1) * om];
                block[r * om..(r + 1) * om].copy_from_slice(src);
            }
            let sigma = max_assignment(om, &block);
            for (k, &s) in sigma.iter().enumerate() {
                clusters[k].push(m * om + s);
            }
        }
        Ok(MergeUnmerge::from_clusters(clusters, o, eps))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::matching::test_util::{sym, t1_matrix};

    const EPS: f64 = 1e-5;

    /// T2: Permute on the T1 matrix (see `test_util::t1_matrix`). Cross block rows A = 0..3,
    /// columns B = 4..7 (local 0..3):
    ///   row 0: [.014, .90, .016, .017]
    ///   row 1: [.85, .30, .024, .025]
    ///   row 2: [.030, .70, .032, .80]
    ///   row 3: [.038, .039, .75, .041]
    /// Twin assignment sigma = [1, 0, 3, 2] gives .90 + .85 + .80 + .75 = 3.30.
    ///
    /// Any other assignment gives up a twin. Using (2,5)=.70 or (1,5)=.30 leaves row 0 with at
    /// most .017. Using no twin for some row loses at least .75 - .041 elsewhere. So the twins
    /// are optimal (e.g. .017 + .85 + .70 + .75 = 2.317).
    /// Clusters [[0,5],[1,4],[2,7],[3,6]]; U_A = I; U_B[sigma(k), k] = 1; M = P^T / (2 + eps).
    #[test]
    fn t2_permute_recovers_twins() {
        let corr = t1_matrix();
        let mu = Permute.solve(&corr, 2, EPS).unwrap();
        assert_eq!(
            mu.clusters,
            vec![vec![0, 5], vec![1, 4], vec![2, 7], vec![3, 6]]
        );
        #[rustfmt::skip]
        let eye = vec![
            1.0, 0.0, 0.0, 0.0,
            0.0, 1.0, 0.0, 0.0,
            0.0, 0.0, 1.0, 0.0,
            0.0, 0.0, 0.0, 1.0,
        ];
        assert_eq!(mu.unmerge_block(0, 2), eye);
        // U_B rows are B features 4..7 (local 0..3): local 1 -> col 0, 0 -> 1, 3 -> 2, 2 -> 3.
        #[rustfmt::skip]
        let ub = vec![
            0.0, 1.0, 0.0, 0.0,
            1.0, 0.0, 0.0, 0.0,
            0.0, 0.0, 0.0, 1.0,
            0.0, 0.0, 1.0, 0.0,
        ];
        assert_eq!(mu.unmerge_block(1, 2), ub);
        let h = 1.0 / (2.0 + EPS);
        let ma: Vec<f64> = eye.iter().map(|v| v * h).collect();
        assert_eq!(mu.merge_block(0, 2), ma);
        // M_B = U_B^T / (2 + eps).
        let mut mb = vec![0.0; 16];
        for r in 0..4 {
            for c in 0..4 {
                mb[c * 4 + r] = ub[r * 4 + c] * h;
            }
        }
        assert_eq!(mu.merge_block(1, 2), mb);
    }

    /// T4 (Permute part): the T1 matrix with unit 3 (A) and its twin 6 (B) dead (rho = 0 with
    /// everything, via `correlation` of a zeroed covariance). The cross block becomes
    ///   row 0: [.014, .90, 0, .017]; row 1: [.85, .30, 0, .025];
    ///   row 2: [.030, .70, 0, .80];  row 3: [0, 0, 0, 0].
    /// The twins 0->5, 1->4, 2->7 (2.55) are forced optimal as in T2. Row 3 must take the
    /// remaining column 6, so Permute pairs the dead units: cluster [3, 6].
    #[test]
    fn t4_permute_pairs_dead_units() {
        let mut cov = t1_matrix();
        for x in [3usize, 6] {
            for y in 0..8 {
                cov.data[x * 8 + y] = 0.0;
                cov.data[y * 8 + x] = 0.0;
            }
        }
        let corr = crate::matching::correlation(&cov);
        let mu = Permute.solve(&corr, 2, EPS).unwrap();
        assert_eq!(
            mu.clusters,
            vec![vec![0, 5], vec![1, 4], vec![2, 7], vec![3, 6]]
        );
    }

    /// Known Hungarian optimum: a 4x4 cross block where the greedy choice (0->0, .9) is not
    /// optimal. The expected assignment is computed by enumerating all 24 permutations.
    ///   block = [[.90, .80, .10, .00],
    ///            [.85, .10, .00, .20],
    ///            [.10, .70, .30, .05],
    ///            [.00, .20, .60, .55]]
    /// Best: sigma = [1, 0, 2, 3]: .80 + .85 + .30 + .55 = 2.50. Runner-up: [0, 3, 1, 2]:
    /// .90 + .20 + .70 + .60 = 2.40. Greedy (0->0, then 2->1, 3->2, 1->3) gives 2.40.
    #[test]
    fn hungarian_known_optimum() {
        let block = [
            [0.90, 0.80, 0.10, 0.00],
            [0.85, 0.10, 0.00, 0.20],
            [0.10, 0.70, 0.30, 0.05],
            [0.00, 0.20, 0.60, 0.55],
        ];
        // Enumerate all permutations of 0..4.
        let mut perms = Vec::new();
        for a in 0..4 {
            for b in 0..4 {
                for c in 0..4 {
                    for d in 0..4 {
                        let p = [a, b, c, d];
                        let mut seen = [false; 4];
                        if p.iter().all(|&x| !std::mem::replace(&mut seen[x], true)) {
                            perms.push(p);
                        }
                    }
                }
            }
        }
        assert_eq!(perms.len(), 24);
        let total = |p: &[usize; 4]| (0..4).map(|r| block[r][p[r]]).sum::<f64>();
        let mut scored: Vec<(f64, [usize; 4])> = perms.iter().map(|p| (total(p), *p)).collect();
        scored.sort_by(|x, y| y.0.partial_cmp(&x.0).unwrap());
        let best = scored[0].1;
        assert!(scored[0].0 - scored[1].0 > 1e-6, "unique optimum");
        assert_eq!(best, [1, 0, 2, 3]);
        assert!((scored[0].0 - 2.50).abs() < 1e-12);

        // Embed as the cross block of an 8x8 symmetric matrix (within-model entries arbitrary).
        let corr = sym(8, 1.0, |i, j| {
            if i < 4 && j >= 4 {
                block[i][j - 4]
            } else {
                0.01 * (i + j) as f64
            }
        });
        let mu = Permute.solve(&corr, 2, EPS).unwrap();
        let sigma: Vec<usize> = mu.clusters.iter().map(|c| c[1] - 4).collect();
        assert_eq!(sigma, best.to_vec());
        assert_eq!(max_assignment(4, &block.concat()), best.to_vec());
    }

    /// Three models: one LAP per model m >= 1 against model 0; NaN / inf entries sanitised.
    #[test]
    fn three_models_and_non_finite() {
        // Om = 2, models A = {0,1}, B = {2,3}, C = {4,5}.
        // A-B block [[.1, .9], [.8, .2]] -> sigma_B = [1, 0];
        // A-C block [[.7, NaN], [.3, +inf]] -> NaN is worst, +inf best: sigma_C = [0, 1].
        let corr = sym(6, 1.0, |i, j| match (i, j) {
            (0, 2) => 0.1,
            (0, 3) => 0.9,
            (1, 2) => 0.8,
            (1, 3) => 0.2,
            (0, 4) => 0.7,
            (0, 5) => f64::NAN,
            (1, 4) => 0.3,
            (1, 5) => f64::INFINITY,
            _ => 0.0,
        });
        let mu = Permute.solve(&corr, 3, EPS).unwrap();
        assert_eq!(mu.clusters, vec![vec![0, 3, 4], vec![1, 2, 5]]);
        let t = 1.0 / (3.0 + EPS);
        assert_eq!(mu.merge[0], t);
        assert_eq!(mu.merge[3], t);
        assert_eq!(mu.merge[4], t);
    }
}
