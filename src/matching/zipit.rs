//! The ZipIt! greedy matcher (reference doc §3.1).

use serde::{Deserialize, Serialize};

use crate::matching::{
    as_similarity, symmetric_pair, validate_shape, MatchError, Matcher, MergeUnmerge, SquareMatrix,
};

/// "No column" marker for the per-row best cache.
const NONE: usize = usize::MAX;

/// The ZipIt! greedy matcher `match_tensors_zipit(metric, r, a = alpha, b = beta)` (reference doc
/// §3.1).
///
/// Semantics (identical to the reference for `alpha > 0`):
/// - `S = (rho + rho^T) / 2` with NaN mapped to `-inf` and `S_ii = -inf`.
/// - Clusters start as singletons `{0}, ..., {O-1}`, labelled with their model `i / Om`.
/// - While there are more than `K = Om` clusters, merge the pair of current clusters with the
///   largest similarity. Ties go to the first maximum in row-major order over the current
///   positions, i.e. the lexicographically smallest `(i, j)` with `i < j`.
/// - The merged cluster keeps position `i` and the label of `i`. Its similarity to every other
///   cluster `k` becomes `alpha * min(S[i,k], S[j,k])`.
/// - Every model starts with the budget [`ZipIt::budget`]. A same-label merge decrements that
///   label's budget. When the budget is then `<= 0`, all pairs of clusters currently carrying that
///   label are set to `-inf`. So `beta = 0` still lets exactly one within-model merge per model
///   through (reference doc §3.1, §9 item 3).
/// - Output columns are the surviving clusters in position order, i.e. ascending by their
///   smallest member. `M = (P / (colsum(P) + eps))^T`, `U = P`.
///
/// Implementation: the full matrix is kept with an "active" mask. Each cluster is represented by
/// its smallest original index, so active representatives in index order are exactly the
/// reference's current positions. A per-row cache holds the best upper-triangle entry of every
/// active row, so each merge costs `O(O)` plus the rows whose cached best was invalidated.
/// Expected total for random inputs is about `O(O^2 log O)` rather than the reference's
/// `O(K O^2)`.
///
/// Deviations from the reference:
/// - `alpha <= 0` (the reference's buggy legacy branch) is rejected with
///   [`MatchError::InvalidAlpha`].
/// - `beta` outside `[0, 1]` is rejected with [`MatchError::InvalidBeta`].
/// - If every remaining similarity is `-inf` (only possible with NaN/`-inf` inputs or heavy
///   blocking), this matcher merges the lexicographically smallest pair of distinct current
///   clusters. The reference's `argmax` would return the diagonal `(0, 0)` and lose cluster 0.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct ZipIt {
    /// Linkage factor `a` (reference default 0.3). Must be finite and `> 0`.
    pub alpha: f64,
    /// Same-model merge budget fraction `b` (reference default 0.125). Must be in `[0, 1]`.
    pub beta: f64,
}

impl Default for ZipIt {
    /// The reference defaults `alpha = 0.3`, `beta = 0.125` (reference doc §3.1).
    fn default() -> Self {
        Self {
            alpha: 0.3,
            beta: 0.125,
        }
    }
}

impl ZipIt {
    /// Validated constructor.
    ///
    /// # Errors
    /// [`MatchError::InvalidAlpha`] unless `alpha` is finite and `> 0`;
    /// [`MatchError::InvalidBeta`] unless `0 <= beta <= 1`.
    pub fn new(alpha: f64, beta: f64) -> Result<Self, MatchError> {
        let z = Self { alpha, beta };
        z.check_params()?;
        Ok(z)
    }

    /// Checks `alpha` and `beta` (see [`ZipIt::new`]).
    ///
    /// # Errors
    /// [`MatchError::InvalidAlpha`] or [`MatchError::InvalidBeta`].
    pub fn check_params(&self) -> Result<(), MatchError> {
        if !(self.alpha.is_finite() && self.alpha > 0.0) {
            return Err(MatchError::InvalidAlpha(self.alpha));
        }
        if !(0.0..=1.0).contains(&self.beta) {
            return Err(MatchError::InvalidBeta(self.beta));
        }
        Ok(())
    }

    /// Initial per-model same-model merge budget (reference doc §3.1):
    /// `int(floor((O - K) / N) * beta + 1e-4)` with `K = Om = O / N`. For `N = 2` this is
    /// `int(floor(Om / 2) * beta + 1e-4)`.
    ///
    /// `o` must be a multiple of `n_models >= 1` (not checked here; [`Matcher::solve`] checks).
    pub fn budget(o: usize, n_models: usize, beta: f64) -> i64 {
        let k = o / n_models;
        let base = ((o - k) / n_models) as f64;
        // `as i64` truncates toward zero like Python's int(); the value is >= 0 for beta >= 0.
        (base * beta + 1e-4) as i64
    }

    /// Runs the greedy matcher and returns the clusters (columns in output order, members
    /// ascending). See [`Matcher::solve`] for the checks and errors.
    ///
    /// # Errors
    /// As [`Matcher::solve`].
    pub fn clusters(
        &self,
        corr: &SquareMatrix,
        n_models: usize,
    ) -> Result<Vec<Vec<usize>>, MatchError> {
        self.check_params()?;
        let om = validate_shape(corr, n_models, 0.0)?;
        greedy(
            corr,
            om,
            n_models,
            self.alpha,
            Self::budget(corr.n, n_models, self.beta),
        )
    }
}

impl Matcher for ZipIt {
    fn name(&self) -> &'static str {
        "zipit"
    }

    /// ZipIt! matching (reference doc §3.1), `K = Om` columns.
    ///
    /// # Errors
    /// [`MatchError::InvalidAlpha`], [`MatchError::InvalidBeta`], plus the shared input errors
    /// of [`Matcher::solve`].
    fn solve(
        &self,
        corr: &SquareMatrix,
        n_models: usize,
        eps: f64,
    ) -> Result<MergeUnmerge, MatchError> {
        self.check_params()?;
        let om = validate_shape(corr, n_models, eps)?;
        let clusters = greedy(
            corr,
            om,
            n_models,
            self.alpha,
            Self::budget(corr.n, n_models, self.beta),
        )?;
        Ok(MergeUnmerge::from_clusters(clusters, corr.n, eps))
    }
}

/// Tile side for the cache-friendly transposed setup pass.
const TILE: usize = 32;

/// Symmetrised similarity of an entry pair: `(a + b) / 2` (exactly `a` when `a == b`), NaN mapped
/// to `-inf`.
#[inline]
fn sym_value(a: f64, b: f64) -> f64 {
    as_similarity(if a == b { a } else { 0.5 * (a + b) })
}

/// Greedy state.
struct State {
    o: usize,
    /// Similarities in an `O x O` row-major buffer, upper triangle only: pair `(a, b)` with
    /// `a < b` lives at `s[a * O + b]`. The lower triangle is never touched. Entries involving an
    /// inactive index are stale and never read.
    s: Vec<f64>,
    active: Vec<bool>,
    /// Active representatives in ascending order (= the reference's current positions).
    active_list: Vec<usize>,
    /// Best upper-triangle value of each active row and its column: the first maximum, or the
    /// first active column when all are `-inf`. `NONE` when no active column is to the right.
    best_v: Vec<f64>,
    best_j: Vec<usize>,
}

impl State {
    /// Recomputes the best-cache entry of row `k` over active columns `> k`.
    fn recompute(&mut self, k: usize) {
        let o = self.o;
        let row = &self.s[k * o + k + 1..(k + 1) * o];
        let act = &self.active[k + 1..];
        let mut bv = f64::NEG_INFINITY;
        let mut bj = NONE;
        for (off, (&v, &a)) in row.iter().zip(act).enumerate() {
            if a && v > bv {
                bv = v;
                bj = off;
            }
        }
        if bj == NONE {
            // Only -inf entries: fall back to the first active column.
            bj = act.iter().position(|&a| a).unwrap_or(NONE);
        }
        self.best_v[k] = bv;
        self.best_j[k] = if bj == NONE { NONE } else { k + 1 + bj };
    }

    /// Lexicographically smallest `(i, j)`, `i < j`, among the maxima over active pairs.
    fn argmax(&self) -> (usize, usize) {
        let mut bi = NONE;
        let mut bv = f64::NEG_INFINITY;
        for &k in &self.active_list {
            if self.best_j[k] == NONE {
                continue;
            }
            if bi == NONE || self.best_v[k] > bv {
                bi = k;
                bv = self.best_v[k];
            }
        }
        (bi, self.best_j[bi])
    }
}

/// Builds the upper triangle of `S = (rho + rho^T) / 2` (NaN -> -inf) in one tiled pass, checking
/// symmetry on the way (same rule and error as the shared validation).
fn build_similarity(corr: &SquareMatrix) -> Result<Vec<f64>, MatchError> {
    let o = corr.n;
    let c = &corr.data;
    // Zero-initialised allocation: the untouched lower triangle costs no page faults.
    let mut s = vec![0.0; o * o];
    let mut first: Option<(usize, usize)> = None;
    for bi in (0..o).step_by(TILE) {
        for bj in (bi..o).step_by(TILE) {
            for i in bi..(bi + TILE).min(o) {
                let j0 = if bi == bj { i + 1 } else { bj };
                for j in j0..(bj + TILE).min(o) {
                    let (a, b) = (c[i * o + j], c[j * o + i]);
                    s[i * o + j] = if a == b {
                        a
                    } else {
                        if !symmetric_pair(a, b) && first.is_none_or(|f| (i, j) < f) {
                            first = Some((i, j));
                        }
                        sym_value(a, b)
                    };
                }
            }
        }
        if let Some((i, j)) = first {
            return Err(MatchError::NotSymmetric {
                i,
                j,
                a: c[i * o + j],
                b: c[j * o + i],
            });
        }
    }
    Ok(s)
}

/// The §3.1 loop on a correlation whose shape was validated. Returns the clusters in output
/// order.
///
/// # Errors
/// [`MatchError::NotSymmetric`].
fn greedy(
    corr: &SquareMatrix,
    om: usize,
    n_models: usize,
    alpha: f64,
    budget0: i64,
) -> Result<Vec<Vec<usize>>, MatchError> {
    let o = corr.n;
    let mut st = State {
        o,
        s: build_similarity(corr)?,
        active: vec![true; o],
        active_list: (0..o).collect(),
        best_v: vec![f64::NEG_INFINITY; o],
        best_j: vec![NONE; o],
    };
    for k in 0..o {
        st.recompute(k);
    }
    let mut members: Vec<Vec<usize>> = (0..o).map(|i| vec![i]).collect();
    // Labels are indexed by representative; a merged cluster keeps label[i].
    let label: Vec<usize> = (0..o).map(|i| i / om).collect();
    let mut budget = vec![budget0; n_models];

    while st.active_list.len() > om {
        let (i, j) = st.argmax();
        debug_assert!(i < j && st.active[i] && st.active[j]);

        // Remove j first; every active k != i then gets
        // S[i,k] <- alpha * min(S[i,k], S[j,k]) (complete linkage scaled by alpha).
        st.active[j] = false;
        let pos = st.active_list.binary_search(&j).expect("j is active");
        st.active_list.remove(pos);
        let moved = std::mem::take(&mut members[j]);
        members[i].extend(moved);
        st.best_j[j] = NONE;

        // One pass over the active positions also refreshes the best cache of the rows whose
        // upper triangle changed: rows k < i (column i rewritten, column j gone) and rows
        // i < k < j (column j gone). Rows k > j are unaffected; row i is recomputed after.
        for idx in 0..st.active_list.len() {
            let k = st.active_list[idx];
            if k < i {
                let (pi, pj) = (k * o + i, k * o + j);
                let (a, b) = (st.s[pi], st.s[pj]);
                let v = alpha * if a < b { a } else { b };
                st.s[pi] = v;
                let bj = st.best_j[k];
                if bj == i || bj == j {
                    st.recompute(k);
                } else if v > st.best_v[k] || (v == st.best_v[k] && i < bj) {
                    st.best_v[k] = v;
                    st.best_j[k] = i;
                }
            } else if k > i {
                let pi = i * o + k;
                let pj = if k < j { k * o + j } else { j * o + k };
                let (a, b) = (st.s[pi], st.s[pj]);
                st.s[pi] = alpha * if a < b { a } else { b };
                if k < j && st.best_j[k] == j {
                    st.recompute(k);
                }
            }
        }
        st.recompute(i);

        // Budget: a same-label merge spends one unit; at <= 0 every pair of clusters currently
        // carrying that label is blocked.
        let (li, lj) = (label[i], label[j]);
        if li == lj {
            budget[li] -= 1;
            if budget[li] <= 0 {
                let rows: Vec<usize> = st
                    .active_list
                    .iter()
                    .copied()
                    .filter(|&u| label[u] == li)
                    .collect();
                for (x, &u) in rows.iter().enumerate() {
                    for &v in &rows[x + 1..] {
                        st.s[u * o + v] = f64::NEG_INFINITY;
                    }
                }
                for &u in &rows {
                    st.recompute(u);
                }
            }
        }
    }

    Ok(st
        .active_list
        .iter()
        .map(|&r| {
            let mut m = std::mem::take(&mut members[r]);
            m.sort_unstable();
            m
        })
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::matching::test_util::{sym, t1_matrix, Rng};

    const EPS: f64 = 1e-5;

    /// Literal port of the reference pseudo-code (reference doc §3.1): physical deletion of rows
    /// and columns, full argmax (first occurrence, row-major). The one intended difference: the
    /// argmax skips the diagonal, which only matters when every entry is -inf (see the
    /// deviations in [`ZipIt`]).
    #[allow(clippy::needless_range_loop)]
    fn naive(corr: &SquareMatrix, n_models: usize, alpha: f64, beta: f64) -> Vec<Vec<usize>> {
        let o = corr.n;
        let om = o / n_models;
        let mut s: Vec<Vec<f64>> = (0..o)
            .map(|i| {
                (0..o)
                    .map(|j| {
                        if i == j {
                            f64::NEG_INFINITY
                        } else {
                            sym_value(corr.get(i, j), corr.get(j, i))
                        }
                    })
                    .collect()
            })
            .collect();
        let mut clusters: Vec<Vec<usize>> = (0..o).map(|i| vec![i]).collect();
        let mut label: Vec<usize> = (0..o).map(|i| i / om).collect();
        let mut budget = vec![ZipIt::budget(o, n_models, beta); n_models];
        while clusters.len() > om {
            let c = clusters.len();
            let (mut p, mut q, mut best) = (usize::MAX, usize::MAX, f64::NEG_INFINITY);
            for (r, row) in s.iter().enumerate() {
                for (col, &v) in row.iter().enumerate() {
                    if r != col && (p == usize::MAX || v > best) {
                        (p, q, best) = (r, col, v);
                    }
                }
            }
            let (i, j) = (p.min(q), p.max(q));
            let cj = clusters.remove(j);
            clusters[i].extend(cj);
            for k in 0..c {
                if k != i && k != j {
                    let v = alpha * s[i][k].min(s[j][k]);
                    s[i][k] = v;
                    s[k][i] = v;
                }
            }
            s.remove(j);
            for row in s.iter_mut() {
                row.remove(j);
            }
            let (li, lj) = (label[i], label[j]);
            label.remove(j);
            if li == lj {
                budget[li] -= 1;
                if budget[li] <= 0 {
                    for u in 0..c - 1 {
                        for v in 0..c - 1 {
                            if label[u] == li && label[v] == li {
                                s[u][v] = f64::NEG_INFINITY;
                            }
                        }
                    }
                }
            }
        }
        for cl in clusters.iter_mut() {
            cl.sort_unstable();
        }
        clusters
    }

    fn check_merge_values(mu: &MergeUnmerge, expected: &[Vec<usize>]) {
        assert_eq!(mu.k, expected.len());
        for (c, cl) in expected.iter().enumerate() {
            for x in 0..mu.o {
                let want = if cl.contains(&x) {
                    1.0 / (cl.len() as f64 + EPS)
                } else {
                    0.0
                };
                assert_eq!(mu.merge[c * mu.o + x], want, "M[{c},{x}]");
                let u = if cl.contains(&x) { 1.0 } else { 0.0 };
                assert_eq!(mu.unmerge[x * mu.k + c], u, "U[{x},{c}]");
            }
        }
    }

    fn run(alpha: f64, beta: f64, corr: &SquareMatrix, n: usize) -> MergeUnmerge {
        ZipIt { alpha, beta }.solve(corr, n, EPS).unwrap()
    }

    /// T1: the alpha/beta grid on the T1 matrix. O = 8, K = 4, so 4 merges. Budget for N = 2,
    /// Om = 4: int(floor(4/2) * beta + 1e-4) = int(2 beta + 1e-4): beta 0 -> 0, 0.125 -> 0,
    /// 0.5 -> 1, 1 -> 2. (Budget 0 and budget 1 both allow exactly one within-model merge:
    /// 0 -> -1 and 1 -> 0 both trigger the block.)
    ///
    /// (a) alpha = 0.5, beta = 0 (budget 0):
    ///   M1: global max 0.96 at (0,2) -> {0,2} at pos 0, A-A: budget_A 0 -> -1 -> block all
    ///       A-labelled pairs among {0,2},1,3: (0,1),(0,3),(1,3) = -inf (kills (1,3)=0.78).
    ///       Row 0: k=4: .5*min(.014,.030)=.007; k=5: .5*min(.90,.70)=.35; k=6: .5*min(.016,.032)
    ///       =.008; k=7: .5*min(.017,.80)=.0085.
    ///   M2: max of remaining: (4,7)=0.92 (> (1,4)=.85 > (3,6)=.75) -> {4,7}, B-B: budget_B -> -1
    ///       -> block B pairs among {4,7},5,6: (4,5),(4,6),(5,6) = -inf.
    ///       Row 4: k=0: .5*min(.007,.0085)=.0035; k=1: .5*min(.85,.025)=.0125;
    ///       k=3: .5*min(.038,.041)=.019.
    ///   M3: finite pairs are A-label x B-label: (0,4)=.0035 (0,5)=.35 (0,6)=.008 (1,4)=.0125
    ///       (1,5)=.30 (1,6)=.024 (3,4)=.019 (3,5)=.039 (3,6)=.75 -> (3,6): {3,6}, label A.
    ///       Row 3: every entry min(..., -inf) = -inf (S[3,0], S[3,1] blocked; S[6,4], S[6,5]
    ///       blocked).
    ///   M4: (0,4)=.0035 (0,5)=.35 (1,4)=.0125 (1,5)=.30 -> (0,5): {0,2,5}.
    ///   Result (columns by smallest member): [{0,2,5}, {1}, {3,6}, {4,7}].
    /// (b) alpha = 0.5, beta = 0.5 (budget 1): M1 takes budget_A 1 -> 0 <= 0 -> same block; M2
    ///   likewise for B; everything else as (a). Result = (a).
    /// (f) alpha = 1, beta = 0: same sequence with alpha = 1: row 0 after M1: k=5 ->
    ///   min(.90,.70)=.70; M2 (4,7)=.92; M3 max(.70, .75, .30, small) = (3,6)=.75; row 3 -inf;
    ///   M4: (0,5)=.70 > (1,5)=.30. Result = (a).
    /// (c) alpha = 0.3, beta = 0.125 (budget int(0.25 + 1e-4) = 0): as (a) but scaled by 0.3:
    ///   M1 (0,2), block A; row 0: k=4: .0042, k=5: .3*.70=.21, k=6: .0048, k=7: .0051.
    ///   M2 (4,7), block B; row 4: k=0: .3*min(.0042,.0051)=.00126, k=1: .3*.025=.0075,
    ///   k=3: .3*.038=.0114.
    ///   M3 (3,6)=.75; row 3 all -inf.
    ///   M4: (0,4)=.00126 (0,5)=.21 (1,4)=.0075 (1,5)=.30 -> (1,5) now wins: {1,5}.
    ///   Result: [{0,2}, {1,5}, {3,6}, {4,7}].
    /// (d) alpha = 0.5, beta = 1 (budget 2):
    ///   M1 (0,2): budget_A 2 -> 1, no block. Row 0: k=1: .5*min(.011,.020)=.0055;
    ///       k=3: .5*min(.013,.029)=.0065; k=4: .007; k=5: .35; k=6: .008; k=7: .0085.
    ///   M2 (4,7)=.92: budget_B 2 -> 1. Row 4: k=0: .0035; k=1: .0125; k=3: .019;
    ///       k=5: .5*min(.047,.057)=.0235; k=6: .5*min(.048,.065)=.024.
    ///   M3: max is (1,3)=.78 (> (3,6)=.75) -> {1,3}, A-A: budget_A 1 -> 0 -> block A-labelled
    ///       {0,2},{1,3}: (0,1) = -inf. Row 1: k=4: .5*min(.0125,.019)=.00625;
    ///       k=5: .5*min(.30,.039)=.0195; k=6: .5*min(.024,.75)=.012.
    ///   M4: (0,4)=.0035 (0,5)=.35 (0,6)=.008 (1,4)=.00625 (1,5)=.0195 (1,6)=.012 (4,5)=.0235
    ///       (4,6)=.024 (5,6)=.50 -> (5,6): {5,6} (B-A merge: budget_B 1 -> 0, block (4,5)).
    ///   Result: [{0,2}, {1,3}, {4,7}, {5,6}] (no cross merge at all).
    /// (e) alpha = 1, beta = 1 (budget 2): as (d) with alpha = 1:
    ///   M1 (0,2); row 0: k=1 .011, k=3 .013, k=4 .014, k=5 min(.90,.70)=.70, k=6 .016, k=7 .017.
    ///   M2 (4,7); M3 (1,3)=.78 (> .75 > .70), block (0,1).
    ///   M4: (0,5)=.70 > (5,6)=.50 -> {0,2,5}.
    ///   Result: [{0,2,5}, {1,3}, {4,7}, {6}].
    #[test]
    fn t1_alpha_beta_grid() {
        let corr = t1_matrix();
        let a = vec![vec![0, 2, 5], vec![1], vec![3, 6], vec![4, 7]];
        let c = vec![vec![0, 2], vec![1, 5], vec![3, 6], vec![4, 7]];
        let d = vec![vec![0, 2], vec![1, 3], vec![4, 7], vec![5, 6]];
        let e = vec![vec![0, 2, 5], vec![1, 3], vec![4, 7], vec![6]];
        let grid: [(f64, f64, &Vec<Vec<usize>>); 6] = [
            (0.5, 0.0, &a),
            (0.5, 0.5, &a),
            (0.3, 0.125, &c),
            (0.5, 1.0, &d),
            (1.0, 1.0, &e),
            (1.0, 0.0, &a),
        ];
        for (alpha, beta, want) in grid {
            let mu = run(alpha, beta, &corr, 2);
            assert_eq!(&mu.clusters, want, "alpha={alpha} beta={beta}");
            check_merge_values(&mu, want);
            assert_eq!(
                &naive(&corr, 2, alpha, beta),
                want,
                "naive alpha={alpha} beta={beta}"
            );
        }
        // Spot check of the block layout for (a): M_A = merge[:, 0..4], a 4x4 block.
        let mu = run(0.5, 0.0, &corr, 2);
        let third = 1.0 / (3.0 + EPS);
        let half = 1.0 / (2.0 + EPS);
        let one = 1.0 / (1.0 + EPS);
        #[rustfmt::skip]
        let ma = vec![
            third, 0.0, third, 0.0,
            0.0,   one, 0.0,   0.0,
            0.0,   0.0, 0.0,   half,
            0.0,   0.0, 0.0,   0.0,
        ];
        assert_eq!(mu.merge_block(0, 2), ma);
        // U_B: B features 4..7 -> rows; 4 -> col 3, 5 -> col 0, 6 -> col 2, 7 -> col 3.
        #[rustfmt::skip]
        let ub = vec![
            0.0, 0.0, 0.0, 1.0,
            1.0, 0.0, 0.0, 0.0,
            0.0, 0.0, 1.0, 0.0,
            0.0, 0.0, 0.0, 1.0,
        ];
        assert_eq!(mu.unmerge_block(1, 2), ub);
    }

    /// T3: within-model correlations dominate (Om = 2, A = {0,1}, B = {2,3}):
    ///   (0,1) = 0.9, (2,3) = 0.8; cross (0,2) = .1, (0,3) = .2, (1,2) = .3, (1,3) = .05.
    /// beta = 0 -> budget int(floor(2/2) * 0 + 1e-4) = 0. K = 2, so 2 merges.
    ///   M1: (0,1)=.9, A-A: budget_A 0 -> -1 -> block A (only one A cluster left: no pair).
    ///       Row 0: k=2: .5*min(.1,.3)=.05, k=3: .5*min(.2,.05)=.025.
    ///   M2: max of (0,2)=.05, (0,3)=.025, (2,3)=.8 -> (2,3), B-B: the second "leak".
    /// Result [{0,1},{2,3}]: beta = 0 still allows one within-model merge per model, and here
    /// the output has no cross-model cluster at all.
    #[test]
    fn t3_beta_zero_leak() {
        let corr = sym(4, 1.0, |i, j| match (i, j) {
            (0, 1) => 0.9,
            (2, 3) => 0.8,
            (0, 2) => 0.1,
            (0, 3) => 0.2,
            (1, 2) => 0.3,
            _ => 0.05,
        });
        assert_eq!(ZipIt::budget(4, 2, 0.0), 0);
        for alpha in [0.3, 0.5, 1.0] {
            let mu = run(alpha, 0.0, &corr, 2);
            assert_eq!(mu.clusters, vec![vec![0, 1], vec![2, 3]]);
            check_merge_values(&mu, &mu.clusters.clone());
        }
    }

    /// T4 (ZipIt part): dead units. The T1 matrix built as a covariance with unit 3 (A) and its
    /// twin 6 (B) zeroed, passed through `correlation`: rho(3,.) = rho(6,.) = 0 everywhere
    /// (diagonal included, 0 / max(0, 1e-7)).
    /// alpha = 0.5, beta = 0:
    ///   M1 (0,2)=.96, block A: (0,1),(0,3),(1,3). Row 0: k=4 .007, k=5 .35, k=6 .5*min(0,0)=0,
    ///      k=7 .0085.
    ///   M2 (4,7)=.92, block B: (4,5),(4,6),(5,6). Row 4: k=0 .0035, k=1 .0125, k=3 0.
    ///   M3: A x B pairs: (0,4)=.0035 (0,5)=.35 (0,6)=0 (1,4)=.0125 (1,5)=.30 (1,6)=0 (dead)
    ///      (3,4)=0 (3,5)=0 (3,6)=0 -> (0,5): {0,2,5}; row 0 -> -inf (B-B blocks).
    ///   M4: (1,4)=.0125 (1,6)=0 (3,4)=0 (3,6)=0 -> (1,4), where position 4 is {4,7}.
    /// Result [{0,2,5},{1,4,7},{3},{6}]: the dead twins stay unpaired singletons while a
    /// 3-member cluster forms from real features.
    #[test]
    fn t4_dead_units_stay_singletons() {
        let mut cov = t1_matrix();
        for x in [3usize, 6] {
            for y in 0..8 {
                cov.data[x * 8 + y] = 0.0;
                cov.data[y * 8 + x] = 0.0;
            }
        }
        let corr = crate::matching::correlation(&cov);
        assert_eq!(corr.get(3, 3), 0.0);
        assert_eq!(corr.get(3, 6), 0.0);
        let mu = run(0.5, 0.0, &corr, 2);
        let want = vec![vec![0, 2, 5], vec![1, 4, 7], vec![3], vec![6]];
        assert_eq!(mu.clusters, want);
        check_merge_values(&mu, &want);
    }

    /// T14: budget arithmetic int(floor((O - K) / N) * beta + 1e-4), K = O / N.
    #[test]
    fn t14_budget_arithmetic() {
        // N = 2: floor(Om / 2) * beta.
        assert_eq!(ZipIt::budget(8, 2, 0.125), 0); // floor(4/2)=2, 2*.125=.25 -> 0
        assert_eq!(ZipIt::budget(30, 2, 0.125), 0); // Om=15: 7*.125=.875 -> 0
        assert_eq!(ZipIt::budget(32, 2, 0.125), 1); // Om=16: 8*.125=1 -> 1
        assert_eq!(ZipIt::budget(128, 2, 0.125), 4); // Om=64: 32*.125=4
        assert_eq!(ZipIt::budget(128, 2, 0.3), 9); // 32*.3=9.6 -> 9
        assert_eq!(ZipIt::budget(10, 2, 1.0), 2); // Om=5: floor(5/2)=2
        assert_eq!(ZipIt::budget(20, 2, 0.5), 2); // Om=10: 5*.5=2.5 -> 2
        assert_eq!(ZipIt::budget(8, 2, 0.0), 0);
        assert_eq!(ZipIt::budget(8, 2, 1.0), 2);
        // The +1e-4 matters: 100 * 0.57 = 56.99999999999999 in f64 -> 57, not 56.
        assert!(std::hint::black_box(100.0f64) * 0.57 < 57.0);
        // Om = 200.
        assert_eq!(ZipIt::budget(400, 2, 0.57), 57);
        // N = 3: O = 12, K = 4, floor(8 / 3) = 2.
        assert_eq!(ZipIt::budget(12, 3, 1.0), 2);
        assert_eq!(ZipIt::budget(12, 3, 0.5), 1);
        // N = 4: O = 16, K = 4, floor(12 / 4) = 3; 3 * 0.34 = 1.02 -> 1.
        assert_eq!(ZipIt::budget(16, 4, 0.34), 1);
    }

    /// T15a: tie-breaking, merge order differs from column order. O = 6, Om = 3 (A = 0..2,
    /// B = 3..5). (2,3) = 0.9; (0,5) = (1,4) = 0.8 (tie); all else 0.1. alpha = .5, beta = 0
    /// (budget int(floor(3/2)*0 + 1e-4) = 0).
    ///   M1: (2,3)=.9 -> {2,3}. Row 2 -> .5*min(.1,.1) = .05 everywhere.
    ///   M2: tie .8 at (0,5) and (1,4): lexicographically smallest is (0,5) (row-major first
    ///       occurrence: flat index 5 < 10) -> {0,5}.
    ///   M3: (1,4)=.8 -> {1,4}.
    /// Columns by smallest member: [{0,5},{1,4},{2,3}] although the merge order was
    /// {2,3},{0,5},{1,4}.
    ///
    /// T15b: all off-diagonal entries equal (0.5), O = 4, Om = 2, alpha = 1, beta = 1
    /// (budget int(1*1 + 1e-4) = 1):
    ///   M1: tie everywhere -> (0,1) -> {0,1}, A-A: budget_A 1 -> 0 -> block A (single cluster).
    ///       Row 0: min(.5,.5) = .5 for k = 2, 3.
    ///   M2: tie .5 at (0,2),(0,3),(2,3) -> (0,2) -> {0,1,2}.
    ///   Result [{0,1,2},{3}].
    /// T15c: a tie created by the linkage: O = 4, Om = 2, (0,1) = .9, (2,3) = .2, (0,2) = .4,
    /// (1,2) = .6, (0,3) = .3, (1,3) = .5, alpha = .5, beta = 1 (budget 1):
    ///   M1: (0,1) -> {0,1}, budget_A -> 0, block A (alone). Row 0: k=2: .5*min(.4,.6)=.2,
    ///       k=3: .5*min(.3,.5)=.15.
    ///   M2: (0,2)=.2 ties (2,3)=.2 -> lexicographically smallest (0,2) -> {0,1,2}.
    ///   Result [{0,1,2},{3}].
    #[test]
    fn t15_tie_breaking_and_column_order() {
        let corr = sym(6, 1.0, |i, j| match (i, j) {
            (2, 3) => 0.9,
            (0, 5) | (1, 4) => 0.8,
            _ => 0.1,
        });
        let mu = run(0.5, 0.0, &corr, 2);
        assert_eq!(mu.clusters, vec![vec![0, 5], vec![1, 4], vec![2, 3]]);

        let corr = sym(4, 1.0, |_, _| 0.5);
        let mu = run(1.0, 1.0, &corr, 2);
        assert_eq!(mu.clusters, vec![vec![0, 1, 2], vec![3]]);
        check_merge_values(&mu, &[vec![0, 1, 2], vec![3]]);

        let corr = sym(4, 1.0, |i, j| match (i, j) {
            (0, 1) => 0.9,
            (2, 3) => 0.2,
            (0, 2) => 0.4,
            (1, 2) => 0.6,
            (0, 3) => 0.3,
            _ => 0.5,
        });
        // Exact tie check: 0.5 * 0.4 == 0.2 in f64.
        assert_eq!(0.5 * 0.4, 0.2);
        let mu = run(0.5, 1.0, &corr, 2);
        assert_eq!(mu.clusters, vec![vec![0, 1, 2], vec![3]]);
    }

    #[test]
    fn parameter_errors() {
        let corr = t1_matrix();
        for alpha in [0.0, -0.5, f64::NAN, f64::INFINITY] {
            let r = ZipIt { alpha, beta: 0.5 }.solve(&corr, 2, EPS);
            assert!(matches!(r, Err(MatchError::InvalidAlpha(_))), "{alpha}");
        }
        for beta in [-0.01, 1.01, f64::NAN] {
            let r = ZipIt { alpha: 0.5, beta }.solve(&corr, 2, EPS);
            assert!(matches!(r, Err(MatchError::InvalidBeta(_))), "{beta}");
        }
        assert!(ZipIt::new(0.5, 0.0).is_ok());
        assert!(ZipIt::new(0.0, 0.0).is_err());
    }

    /// NaN entries act as -inf: never chosen while a finite pair exists; the input is untouched.
    #[test]
    fn nan_entries_are_minus_infinity() {
        // (0,2) = NaN would otherwise be the "argmax" (NaN propagates in torch.argmax).
        let mut corr = sym(4, 1.0, |i, j| match (i, j) {
            (0, 3) => 0.6,
            (1, 2) => 0.5,
            _ => 0.1,
        });
        corr.data[2] = f64::NAN;
        corr.data[8] = f64::NAN;
        let before = corr.clone();
        let mu = run(0.5, 0.0, &corr, 2);
        assert_eq!(mu.clusters, vec![vec![0, 3], vec![1, 2]]);
        assert_eq!(format!("{before:?}"), format!("{corr:?}"));
        // All-NaN off-diagonal: deterministic fallback (smallest pairs), no panic.
        let corr = sym(4, 1.0, |_, _| f64::NAN);
        let mu = run(0.5, 0.0, &corr, 2);
        assert_eq!(mu.clusters, vec![vec![0, 1, 2], vec![3]]);
    }

    /// Randomised equivalence with the literal pseudo-code port, with heavy ties (values on a
    /// coarse grid), negative values, occasional -inf/NaN, N in {2, 3, 4} and several alpha/beta.
    #[test]
    fn matches_naive_reference_on_random_inputs() {
        let mut rng = Rng(12345);
        let mut cases = 0;
        for trial in 0..400 {
            let n_models = 2 + (trial % 3);
            let om = 1 + (rng.next_u64() % 7) as usize;
            let o = om * n_models;
            let levels = 2 + (rng.next_u64() % 9) as usize;
            let with_nan = trial % 5 == 0;
            let mut vals = vec![0.0; o * o];
            for i in 0..o {
                for j in i + 1..o {
                    let mut v =
                        (rng.next_u64() % levels as u64) as f64 / (levels - 1) as f64 * 2.0 - 1.0;
                    if with_nan && rng.uniform() < 0.1 {
                        v = if rng.uniform() < 0.5 {
                            f64::NAN
                        } else {
                            f64::NEG_INFINITY
                        };
                    }
                    vals[i * o + j] = v;
                    vals[j * o + i] = v;
                }
                vals[i * o + i] = 1.0;
            }
            let corr = SquareMatrix::new(o, vals).unwrap();
            for (alpha, beta) in [
                (0.3, 0.125),
                (0.5, 0.0),
                (1.0, 1.0),
                (0.5, 0.5),
                (1.5, 0.25),
            ] {
                let got = ZipIt { alpha, beta }.clusters(&corr, n_models).unwrap();
                let want = naive(&corr, n_models, alpha, beta);
                assert_eq!(
                    got, want,
                    "trial {trial} o={o} n={n_models} a={alpha} b={beta}"
                );
                assert_eq!(got.len(), om);
                let mut all: Vec<usize> = got.concat();
                all.sort_unstable();
                assert_eq!(all, (0..o).collect::<Vec<_>>());
                cases += 1;
            }
        }
        assert_eq!(cases, 2000);
    }

    /// Larger random continuous inputs (no ties) against the naive port.
    #[test]
    fn matches_naive_reference_on_larger_inputs() {
        let mut rng = Rng(99);
        for &(om, n_models) in &[(20usize, 2usize), (13, 3), (32, 2)] {
            let o = om * n_models;
            let corr = sym(o, 1.0, |_, _| rng.uniform() * 2.0 - 1.0);
            for (alpha, beta) in [(0.3, 0.125), (0.5, 1.0), (1.0, 0.0)] {
                let got = ZipIt { alpha, beta }.clusters(&corr, n_models).unwrap();
                assert_eq!(got, naive(&corr, n_models, alpha, beta));
            }
        }
    }

    /// Release-mode timing on a 2048 x 2048 correlation (N = 2, Om = 1024). Run with
    /// `cargo test --release -- --ignored --nocapture zipit_timing`.
    #[test]
    #[ignore = "a timing printout, not a check: cargo test --release -- --ignored --nocapture zipit_timing"]
    fn zipit_timing() {
        use std::time::Instant;
        let om = 1024;
        let o = 2 * om;
        let mut rng = Rng(2024);
        // (1) Uniform random symmetric matrix in [-1, 1].
        let uni = sym(o, 1.0, |_, _| rng.uniform() * 2.0 - 1.0);
        // (2) A real correlation: B = permuted A + noise, 64 samples of random features.
        let samples = 64;
        let a: Vec<Vec<f64>> = (0..om)
            .map(|_| (0..samples).map(|_| rng.uniform() - 0.5).collect())
            .collect();
        let mut rows = a.clone();
        for k in 0..om {
            let src = &a[(k * 7 + 3) % om];
            rows.push(
                src.iter()
                    .map(|x| x + 0.3 * (rng.uniform() - 0.5))
                    .collect(),
            );
        }
        let corr = crate::matching::correlation(&crate::matching::test_util::covariance(&rows));
        let mut rng = Rng(7);
        let small = sym(1024, 1.0, |_, _| rng.uniform() * 2.0 - 1.0);
        for (alpha, beta) in [(0.3, 0.125), (0.5, 0.0), (1.0, 1.0)] {
            let t = Instant::now();
            let mu = ZipIt { alpha, beta }.solve(&small, 2, EPS).unwrap();
            let dt = t.elapsed();
            assert_eq!(mu.k, 512);
            println!(
                "zipit uniform O=1024 alpha={alpha} beta={beta}: {:.1} ms",
                dt.as_secs_f64() * 1e3
            );
        }
        for (name, m) in [("uniform", &uni), ("correlation", &corr)] {
            for (alpha, beta) in [(0.3, 0.125), (0.5, 0.0), (1.0, 1.0)] {
                let z = ZipIt { alpha, beta };
                let t = Instant::now();
                let mu = z.solve(m, 2, EPS).unwrap();
                let dt = t.elapsed();
                assert_eq!(mu.k, om);
                println!(
                    "zipit {name} O={o} alpha={alpha} beta={beta}: {:.1} ms",
                    dt.as_secs_f64() * 1e3
                );
            }
        }
    }
}
