//! Trivial matchers: weight averaging (reference doc §3.3) and the `return_a` debug matcher
//! (reference doc §3.4).

use crate::matching::{validate, MatchError, Matcher, MergeUnmerge, SquareMatrix};

/// Weight averaging `match_tensors_identity` (reference doc §3.3).
///
/// `U_m = I_Om` for every model and `M = [I ... I] / (N + eps)`. Cluster `k` is
/// `[k, Om + k, 2 Om + k, ...]`. The correlation values are ignored, but the input is still
/// validated.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Identity;

impl Matcher for Identity {
    fn name(&self) -> &'static str {
        "identity"
    }

    /// Identity matching (reference doc §3.3), `K = Om`.
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
        let clusters = (0..om)
            .map(|k| (0..n_models).map(|m| m * om + k).collect())
            .collect();
        Ok(MergeUnmerge::from_clusters(clusters, corr.n, eps))
    }
}

/// Debug matcher `match_tensors_return_a` (reference doc §3.4).
///
/// `U = [I; 0; ...]` (only model 0's features are assigned) and `M = (P / (colsum + eps))^T`,
/// so `M_0 = I / (1 + eps)` and `M_m = 0` for `m >= 1`. The merged model reproduces model A
/// (exactly when `eps = 0`). Clusters are `[[0], [1], ..., [Om - 1]]`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ReturnA;

impl Matcher for ReturnA {
    fn name(&self) -> &'static str {
        "return_a"
    }

    /// Return-A matching (reference doc §3.4), `K = Om`.
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
        let clusters = (0..om).map(|k| vec![k]).collect();
        Ok(MergeUnmerge::from_clusters(clusters, corr.n, eps))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::matching::test_util::t1_matrix;

    fn eye(n: usize, v: f64) -> Vec<f64> {
        let mut m = vec![0.0; n * n];
        for i in 0..n {
            m[i * n + i] = v;
        }
        m
    }

    /// Identity gives M = [I I] / (2 + eps) and U = [I; I].
    #[test]
    fn identity_is_weight_averaging() {
        let eps = 1e-5;
        let mu = Identity.solve(&t1_matrix(), 2, eps).unwrap();
        assert_eq!(
            mu.clusters,
            vec![vec![0, 4], vec![1, 5], vec![2, 6], vec![3, 7]]
        );
        let h = 1.0 / (2.0 + eps);
        for m in 0..2 {
            assert_eq!(mu.merge_block(m, 2), eye(4, h));
            assert_eq!(mu.unmerge_block(m, 2), eye(4, 1.0));
        }
        // Full layout: row k of M has 1/(2+eps) at columns k and 4+k.
        for k in 0..4 {
            for x in 0..8 {
                let want = if x == k || x == 4 + k { h } else { 0.0 };
                assert_eq!(mu.merge[k * 8 + x], want);
            }
        }
        // N = 4 (Om = 2): M = [I I I I] / (4 + eps).
        let corr = crate::matching::test_util::sym(8, 1.0, |_, _| 0.0);
        let mu = Identity.solve(&corr, 4, eps).unwrap();
        assert_eq!(mu.clusters, vec![vec![0, 2, 4, 6], vec![1, 3, 5, 7]]);
        assert_eq!(mu.merge_block(3, 4), eye(2, 1.0 / (4.0 + eps)));
    }

    /// ReturnA reproduces A: M_A = I/(1+eps) (exactly I with eps = 0), M_B = 0, U = [I; 0].
    #[test]
    fn return_a_reproduces_a() {
        let eps = 1e-5;
        let mu = ReturnA.solve(&t1_matrix(), 2, eps).unwrap();
        assert_eq!(mu.clusters, vec![vec![0], vec![1], vec![2], vec![3]]);
        assert_eq!(mu.merge_block(0, 2), eye(4, 1.0 / (1.0 + eps)));
        assert_eq!(mu.merge_block(1, 2), vec![0.0; 16]);
        assert_eq!(mu.unmerge_block(0, 2), eye(4, 1.0));
        assert_eq!(mu.unmerge_block(1, 2), vec![0.0; 16]);
        let exact = ReturnA.solve(&t1_matrix(), 2, 0.0).unwrap();
        assert_eq!(exact.merge_block(0, 2), eye(4, 1.0));
        // Applying the merge to A's features x_A (stacked [x_A; x_B]) returns x_A exactly.
        let x: Vec<f64> = (0..8).map(|i| (i as f64) * 1.5 - 2.0).collect();
        let merged: Vec<f64> = (0..4)
            .map(|c| (0..8).map(|i| exact.merge[c * 8 + i] * x[i]).sum())
            .collect();
        assert_eq!(merged, x[..4].to_vec());
    }
}
