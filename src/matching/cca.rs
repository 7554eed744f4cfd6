//! CCA Merge (Horoi et al., ICML 2024, "Harmony in Diversity: Merging Neural Networks with
//! Canonical Correlation Analysis"): per feature space, a linear map (not a permutation) from
//! every model's features into model A's, found by regularised canonical correlation analysis
//! on the covariance blocks the statistics pass already collects; the merged feature is the
//! average of A's feature and the mapped features of the others (the paper's multi-model
//! variant: every model is mapped to the reference model A).
//!
//! For models A and B with covariance blocks `S_AA`, `S_BB`, `S_AB` (`[Om, Om]` each), the
//! regularised blocks are `S~ = S + reg * (tr(S) / Om) * I` (a ridge relative to the mean
//! variance, so `reg` has no units). With `S~_AA^{-1/2} S_AB S~_BB^{-1/2} = U diag(rho) V^T`
//! (SVD), the canonical directions are `P_A = S~_AA^{-1/2} U`, `P_B = S~_BB^{-1/2} V`, and B's
//! features map into A's space by `T = P_A^{-T} P_B^T = S~_AA^{1/2} U V^T S~_BB^{-1/2}`
//! (canonical variables of B written in A's basis). Then, with N models,
//! `M = (1/N) [I, T_1, ..., T_{N-1}]` (`[Om, N*Om]`) and `U = [I; T_1^{-1}; ...]` with
//! `T^{-1} = S~_BB^{1/2} V U^T S~_AA^{-1/2}` (exact, no matrix inversion), so `M U = I`.
//! If B's features are an invertible linear map `L` of A's (and `reg = 0`), `T = L^{-1}`.
//!
//! Eigenvalues of a covariance block at most `1e-12` times its largest (dead units with
//! `reg = 0`) are treated as zero in the inverse square root.

use nalgebra::{DMatrix, SymmetricEigen};

use super::{MatchError, MergeUnmerge, SquareMatrix};

/// Default `reg` of [`cca_merge`]: a ridge of 1e-4 times the mean variance of the space (small
/// enough to leave well-conditioned spaces unchanged, large enough to make dead units harmless).
pub const DEFAULT_CCA_REG: f64 = 1e-4;

/// `S^{1/2}` and `S^{-1/2}` of a symmetric positive semi-definite matrix.
fn sqrt_and_inv_sqrt(s: &DMatrix<f64>) -> (DMatrix<f64>, DMatrix<f64>) {
    let eig = SymmetricEigen::new(s.clone());
    let top = eig.eigenvalues.iter().copied().fold(0.0f64, f64::max);
    let q = &eig.eigenvectors;
    let f = |inv: bool| {
        let d: Vec<f64> = eig
            .eigenvalues
            .iter()
            .map(|&l| {
                if l <= 1e-12 * top || l <= 0.0 {
                    0.0
                } else if inv {
                    1.0 / l.sqrt()
                } else {
                    l.sqrt()
                }
            })
            .collect();
        q * DMatrix::from_diagonal(&nalgebra::DVector::from_vec(d)) * q.transpose()
    };
    (f(false), f(true))
}

/// CCA Merge of one feature space from the **covariance** `cov` (`[N*Om, N*Om]`, models
/// stacked as everywhere in this module) of `n_models` models with ridge `reg` (see the module
/// docs). The merged width is `Om`; `clusters` of the result is empty (the maps are dense).
///
/// # Errors
/// [`MatchError::BadModels`] for fewer than 2 models or a width not divisible by them,
/// [`MatchError::Unsupported`] for a negative or non-finite `reg` or a non-finite covariance.
pub fn cca_merge(
    cov: &SquareMatrix,
    n_models: usize,
    reg: f64,
) -> Result<MergeUnmerge, MatchError> {
    let o = cov.n;
    if n_models < 2 || o == 0 || !o.is_multiple_of(n_models) {
        return Err(MatchError::BadModels { o, n: n_models });
    }
    if !(reg.is_finite() && reg >= 0.0) {
        return Err(MatchError::Unsupported(format!(
            "CCA regularisation {reg}: expected a finite number >= 0"
        )));
    }
    if cov.data.iter().any(|v| !v.is_finite()) {
        return Err(MatchError::Unsupported(
            "the covariance holds non-finite values".into(),
        ));
    }
    let om = o / n_models;
    let block = |a: usize, b: usize| {
        DMatrix::from_fn(om, om, |i, j| {
            let (x, y) = (a * om + i, b * om + j);
            // symmetrised, as the correlation is (module docs of `correlation`)
            0.5 * (cov.data[x * o + y] + cov.data[y * o + x])
        })
    };
    let ridge = |s: DMatrix<f64>| {
        let r = reg * s.trace() / om as f64;
        s + DMatrix::identity(om, om) * r
    };
    let (sa_half, sa_inv_half) = sqrt_and_inv_sqrt(&ridge(block(0, 0)));
    let mut merge = vec![0.0; om * o];
    let mut unmerge = vec![0.0; o * om];
    let inv_n = 1.0 / n_models as f64;
    for i in 0..om {
        merge[i * o + i] = inv_n;
        unmerge[i * om + i] = 1.0;
    }
    for m in 1..n_models {
        let (sb_half, sb_inv_half) = sqrt_and_inv_sqrt(&ridge(block(m, m)));
        let k = &sa_inv_half * block(0, m) * &sb_inv_half;
        let svd = k.svd(true, true);
        let (u, vt) = (
            svd.u.expect("SVD with U requested"),
            svd.v_t.expect("SVD with V^T requested"),
        );
        let t = &sa_half * &u * &vt * &sb_inv_half; // B -> A
        let t_inv = &sb_half * vt.transpose() * u.transpose() * &sa_inv_half; // A -> B
        for r in 0..om {
            for c in 0..om {
                merge[r * o + m * om + c] = inv_n * t[(r, c)];
                unmerge[(m * om + r) * om + c] = t_inv[(r, c)];
            }
        }
    }
    Ok(MergeUnmerge {
        k: om,
        o,
        merge,
        unmerge,
        clusters: vec![],
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::matching::test_util::{self, Rng};

    /// Covariance of samples given as rows `[samples][features]`.
    fn covariance(samples: &[Vec<f64>]) -> SquareMatrix {
        let f = samples[0].len();
        let features: Vec<Vec<f64>> = (0..f)
            .map(|j| samples.iter().map(|r| r[j]).collect())
            .collect();
        test_util::covariance(&features)
    }

    /// Features of B are an invertible linear map of A's, `x_B = L x_A` with a hand-picked
    /// `L = [[2, 1, 0], [0, 1, 0], [1, 0, -1]]`: with `reg = 0` CCA finds `T = L^{-1}`
    /// (`[[0.5, -0.5, 0], [0, 1, 0], [0.5, -0.5, -1]]`, checked by hand: `L T = I`), so the
    /// merged feature `(x_A + T x_B) / 2` is `x_A` and the unmerge gives `x_B = L x_A` back.
    #[test]
    fn recovers_a_linearly_transformed_copy() {
        let l = [[2.0, 1.0, 0.0], [0.0, 1.0, 0.0], [1.0, 0.0, -1.0]];
        let l_inv = [[0.5, -0.5, 0.0], [0.0, 1.0, 0.0], [0.5, -0.5, -1.0]];
        let mut rng = Rng(7);
        let rows: Vec<Vec<f64>> = (0..400)
            .map(|_| {
                let a: Vec<f64> = (0..3).map(|_| rng.uniform() - 0.5).collect();
                let b: Vec<f64> = (0..3)
                    .map(|i| (0..3).map(|j| l[i][j] * a[j]).sum())
                    .collect();
                [a, b].concat()
            })
            .collect();
        let cov = covariance(&rows);
        let r = cca_merge(&cov, 2, 0.0).unwrap();
        assert_eq!((r.k, r.o), (3, 6));
        for i in 0..3 {
            for j in 0..3 {
                // M_A = I / 2, M_B = T / 2
                assert!((r.merge[i * 6 + j] - if i == j { 0.5 } else { 0.0 }).abs() < 1e-9);
                assert!(
                    (r.merge[i * 6 + 3 + j] - 0.5 * l_inv[i][j]).abs() < 1e-6,
                    "T[{i}][{j}]"
                );
                // U_B = T^{-1} = L
                assert!(
                    (r.unmerge[(3 + i) * 3 + j] - l[i][j]).abs() < 1e-6,
                    "L[{i}][{j}]"
                );
            }
        }
    }

    /// A permuted copy gives the permutation (CCA includes Permute's exact case), three models
    /// give three blocks, and the errors name what is wrong.
    #[test]
    fn permuted_copies_and_errors() {
        let perm = [2usize, 0, 1];
        let mut rng = Rng(3);
        let rows: Vec<Vec<f64>> = (0..300)
            .map(|_| {
                let a: Vec<f64> = (0..3).map(|_| rng.uniform()).collect();
                let b: Vec<f64> = perm.iter().map(|&p| a[p]).collect();
                [a.clone(), b, a].concat()
            })
            .collect();
        let r = cca_merge(&covariance(&rows), 3, 0.0).unwrap();
        // T_1 maps B back: T[i][j] = 1 iff perm[j] == i; T_2 = I
        for i in 0..3 {
            for (j, &pj) in perm.iter().enumerate() {
                let t1 = if pj == i { 1.0 / 3.0 } else { 0.0 };
                let t2 = if i == j { 1.0 / 3.0 } else { 0.0 };
                assert!((r.merge[i * 9 + 3 + j] - t1).abs() < 1e-6);
                assert!((r.merge[i * 9 + 6 + j] - t2).abs() < 1e-6);
            }
        }
        let cov = covariance(&rows);
        assert!(matches!(
            cca_merge(&cov, 3, -1.0),
            Err(MatchError::Unsupported(_))
        ));
        assert!(matches!(
            cca_merge(&cov, 2, 0.0),
            Err(MatchError::BadModels { .. })
        ));
        assert!(matches!(
            cca_merge(&cov, 1, 0.0),
            Err(MatchError::BadModels { .. })
        ));
    }
}
