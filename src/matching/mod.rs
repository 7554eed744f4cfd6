//! Feature matching: turning a correlation matrix of stacked model features into merge/unmerge
//! matrices for one feature space (reference doc §3).
//!
//! Every matcher receives the `O x O` **correlation** of the features of `N` models stacked along
//! the feature axis (`O = N * Om`; features `m*Om..(m+1)*Om` belong to model `m`) and returns a
//! [`MergeUnmerge`]: a merge matrix `M` (`K x O`) and a binary unmerge matrix `U` (`O x K`) with
//! `K = Om` (the merged width always equals one model's width, reference doc §3).
//!
//! Callers compute the correlation from the (population) covariance with [`correlation`]
//! (reference doc §2). Matchers:
//! - [`ZipIt`]: the ZipIt! greedy matcher (reference doc §3.1);
//! - [`Permute`]: activation matching by linear assignment (reference doc §3.2);
//! - [`Identity`]: weight averaging (reference doc §3.3);
//! - [`ReturnA`]: debug matcher that reproduces model A (reference doc §3.4);
//! - [`cca::cca_merge`]: CCA Merge's dense linear maps (Horoi et al., ICML 2024), from the
//!   covariance rather than the correlation.

pub mod cca;
pub mod dual;
pub mod method;
pub mod npy;
mod permute;
pub mod rebasin;
mod simple;
pub mod spaces;
mod zipit;

pub use permute::Permute;
pub use simple::{Identity, ReturnA};
pub use zipit::ZipIt;

use serde::{Deserialize, Serialize};

/// Default merge-normalisation epsilon of the reference: `merge = (P / (colsum(P) + 1e-5))^T`
/// (reference doc §3 and §9 item 5).
pub const DEFAULT_EPS: f64 = 1e-5;

/// Relative tolerance of the symmetry check done by every matcher: entries `a = rho[i][j]` and
/// `b = rho[j][i]` are accepted when `|a - b| <= 1e-6 * max(1, |a|, |b|)` (NaN counts as `-inf`,
/// equal infinities are equal).
pub const SYMMETRY_TOL: f64 = 1e-6;

pub use crate::error::MatchError;

/// Dense row-major square matrix of `f64` (`n x n`, entry `(i, j)` at `data[i * n + j]`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SquareMatrix {
    /// Side length.
    pub n: usize,
    /// Row-major entries, `n * n` of them.
    pub data: Vec<f64>,
}

impl SquareMatrix {
    /// Builds an `n x n` matrix from row-major data.
    ///
    /// # Errors
    /// [`MatchError::BadLength`] when `data.len() != n * n`.
    pub fn new(n: usize, data: Vec<f64>) -> Result<Self, MatchError> {
        if n.checked_mul(n) != Some(data.len()) {
            return Err(MatchError::BadLength { n, len: data.len() });
        }
        Ok(Self { n, data })
    }

    /// Builds a matrix from a `rows x cols` row-major buffer, checking that it is square.
    ///
    /// # Errors
    /// [`MatchError::NotSquare`] when `rows != cols`; [`MatchError::BadLength`] when
    /// `data.len() != rows * cols`.
    pub fn from_shape(rows: usize, cols: usize, data: Vec<f64>) -> Result<Self, MatchError> {
        if rows != cols {
            return Err(MatchError::NotSquare { rows, cols });
        }
        Self::new(rows, data)
    }

    /// Entry `(i, j)`.
    ///
    /// # Panics
    /// If `i >= n` or `j >= n`.
    #[inline]
    pub fn get(&self, i: usize, j: usize) -> f64 {
        assert!(
            i < self.n && j < self.n,
            "index ({i},{j}) out of {0}x{0}",
            self.n
        );
        self.data[i * self.n + j]
    }
}

/// Result of a matcher for one feature space (reference doc §3).
///
/// - `merge` is `M`, `K x O` row-major: row `c` averages the features of cluster `c`
///   (`M[c, x] = 1 / (|c| + eps)` for `x` in cluster `c`, else 0).
/// - `unmerge` is `U = P`, `O x K` row-major and binary: `U[x, c] = 1` iff feature `x` is in
///   cluster `c`.
/// - `M U = diag(|c| / (|c| + eps))`, i.e. about `I_K`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct MergeUnmerge {
    /// Merged width `K` (number of clusters / columns of `P`).
    pub k: usize,
    /// Total stacked width `O = N * Om`.
    pub o: usize,
    /// `M`, `K x O`, row-major.
    pub merge: Vec<f64>,
    /// `U`, `O x K`, row-major, entries 0 or 1.
    pub unmerge: Vec<f64>,
    /// Cluster `c` (column `c` of `P`): its original feature indices in ascending order.
    pub clusters: Vec<Vec<usize>>,
}

impl MergeUnmerge {
    /// The matrices as JSON (`zipmerge match`): `{"clusters": [...], "merge": [[K x O]],
    /// "unmerge": [[O x K]]}`.
    pub fn to_json(&self) -> serde_json::Value {
        let rows = |v: &[f64], r: usize, c: usize| -> Vec<Vec<f64>> {
            (0..r).map(|i| v[i * c..(i + 1) * c].to_vec()).collect()
        };
        serde_json::json!({
            "clusters": self.clusters,
            "merge": rows(&self.merge, self.k, self.o),
            "unmerge": rows(&self.unmerge, self.o, self.k),
        })
    }

    /// Builds `P` (`O x K`, column `c` = indicator of `clusters[c]`, columns in the given order),
    /// `U = P` and `M = (P / (colsum(P) + eps))^T` (reference doc §3).
    ///
    /// Clusters must be disjoint; they need not cover `0..o` (e.g. [`ReturnA`] leaves model B's
    /// features out). Each cluster's members are sorted ascending in the stored `clusters`.
    ///
    /// # Panics
    /// If an index is `>= o` or appears more than once.
    pub fn from_clusters(clusters: Vec<Vec<usize>>, o: usize, eps: f64) -> Self {
        let k = clusters.len();
        let mut merge = vec![0.0; k * o];
        let mut unmerge = vec![0.0; o * k];
        let mut seen = vec![false; o];
        let mut clusters = clusters;
        for (c, members) in clusters.iter_mut().enumerate() {
            members.sort_unstable();
            let w = 1.0 / (members.len() as f64 + eps);
            for &x in members.iter() {
                assert!(x < o, "cluster member {x} out of range 0..{o}");
                assert!(!seen[x], "feature {x} appears in more than one cluster");
                seen[x] = true;
                unmerge[x * k + c] = 1.0;
                merge[c * o + x] = w;
            }
        }
        Self {
            k,
            o,
            merge,
            unmerge,
            clusters,
        }
    }

    /// `M_m = merge[:, m*Om..(m+1)*Om]`, `K x Om` row-major, with `Om = O / n_models`.
    ///
    /// # Panics
    /// If `n_models == 0`, `O` is not divisible by `n_models`, or `m >= n_models`.
    pub fn merge_block(&self, m: usize, n_models: usize) -> Vec<f64> {
        let om = self.block_width(m, n_models);
        let mut out = Vec::with_capacity(self.k * om);
        for c in 0..self.k {
            let row = &self.merge[c * self.o..(c + 1) * self.o];
            out.extend_from_slice(&row[m * om..(m + 1) * om]);
        }
        out
    }

    /// `U_m = unmerge[m*Om..(m+1)*Om, :]`, `Om x K` row-major, with `Om = O / n_models`.
    ///
    /// # Panics
    /// If `n_models == 0`, `O` is not divisible by `n_models`, or `m >= n_models`.
    pub fn unmerge_block(&self, m: usize, n_models: usize) -> Vec<f64> {
        let om = self.block_width(m, n_models);
        self.unmerge[m * om * self.k..(m + 1) * om * self.k].to_vec()
    }

    fn block_width(&self, m: usize, n_models: usize) -> usize {
        assert!(
            n_models > 0 && self.o.is_multiple_of(n_models),
            "O = {} not divisible by {n_models} models",
            self.o
        );
        assert!(m < n_models, "model {m} out of range 0..{n_models}");
        self.o / n_models
    }
}

/// Correlation from a covariance matrix (reference doc §2 and §9 item 2):
/// `rho_ij = C_ij / max(sqrt(C_ii) * sqrt(C_jj), 1e-7)`.
///
/// - The input is symmetrised first (`(C + C^T) / 2` off the diagonal).
/// - Negative diagonal entries (round-off) are clamped to 0 before the square root, so a dead
///   (zero-variance) feature gets `rho = 0` with everything, including itself and its twin.
/// - NaN is propagated (a NaN variance or covariance gives NaN entries); the matchers treat NaN as
///   `-inf` similarity (never chosen while a finite pair exists).
/// - Values may exceed 1 slightly from round-off; they are not clamped (as in the reference).
///
/// Output: `n x n`, symmetric. The input is not modified.
///
/// # Panics
/// If `cov.data.len() != cov.n * cov.n`.
pub fn correlation(cov: &SquareMatrix) -> SquareMatrix {
    let n = cov.n;
    assert_eq!(cov.data.len(), n * n, "covariance must hold n*n entries");
    let sd: Vec<f64> = (0..n)
        .map(|i| {
            let v = cov.data[i * n + i];
            if v < 0.0 {
                0.0
            } else {
                v.sqrt()
            }
        })
        .collect();
    let mut data = vec![0.0; n * n];
    for i in 0..n {
        for j in i..n {
            let c = if i == j {
                let v = cov.data[i * n + i];
                if v < 0.0 {
                    0.0
                } else {
                    v
                }
            } else {
                0.5 * (cov.data[i * n + j] + cov.data[j * n + i])
            };
            let denom = sd[i] * sd[j];
            // Explicit NaN propagation: `f64::max` would silently drop a NaN.
            let denom = if denom.is_nan() {
                f64::NAN
            } else {
                denom.max(1e-7)
            };
            let r = c / denom;
            data[i * n + j] = r;
            data[j * n + i] = r;
        }
    }
    SquareMatrix { n, data }
}

/// A matcher for one feature space (reference doc §3).
pub trait Matcher {
    /// Short stable name (`"zipit"`, `"permute"`, `"identity"`, `"return_a"`).
    fn name(&self) -> &'static str;

    /// Computes merge/unmerge from the `O x O` correlation of `n_models` stacked models.
    ///
    /// `eps` is the merge-normalisation epsilon (reference default [`DEFAULT_EPS`]); `corr` is
    /// never modified.
    ///
    /// # Errors
    /// [`MatchError::BadLength`] (data length not `n*n`), [`MatchError::BadModels`] (`n_models <
    /// 2` or `O` not a positive multiple of `n_models`), [`MatchError::NotSymmetric`],
    /// [`MatchError::Unsupported`] (negative or non-finite `eps`) and matcher-specific
    /// parameter errors.
    fn solve(
        &self,
        corr: &SquareMatrix,
        n_models: usize,
        eps: f64,
    ) -> Result<MergeUnmerge, MatchError>;
}

/// Similarity used by the matchers for a correlation entry: NaN maps to `-inf` (reference doc
/// §9 item 2), everything else is unchanged.
#[inline]
pub(crate) fn as_similarity(x: f64) -> f64 {
    if x.is_nan() {
        f64::NEG_INFINITY
    } else {
        x
    }
}

/// Whether `a = rho[i][j]` and `b = rho[j][i]` agree within [`SYMMETRY_TOL`] (NaN counts as
/// `-inf`; unequal non-finite values never agree).
#[inline]
pub(crate) fn symmetric_pair(a: f64, b: f64) -> bool {
    let (a, b) = (as_similarity(a), as_similarity(b));
    a == b
        || (a.is_finite()
            && b.is_finite()
            && (a - b).abs() <= SYMMETRY_TOL * 1.0f64.max(a.abs()).max(b.abs()))
}

/// Shared input validation of every matcher; returns `Om = O / n_models`.
pub(crate) fn validate(
    corr: &SquareMatrix,
    n_models: usize,
    eps: f64,
) -> Result<usize, MatchError> {
    let om = validate_shape(corr, n_models, eps)?;
    check_symmetric(corr)?;
    Ok(om)
}

/// Shape, model-count and `eps` checks (everything but symmetry); returns `Om`.
pub(crate) fn validate_shape(
    corr: &SquareMatrix,
    n_models: usize,
    eps: f64,
) -> Result<usize, MatchError> {
    let o = corr.n;
    if corr.data.len() != o * o {
        return Err(MatchError::BadLength {
            n: o,
            len: corr.data.len(),
        });
    }
    if n_models < 2 || o == 0 || !o.is_multiple_of(n_models) {
        return Err(MatchError::BadModels { o, n: n_models });
    }
    if !(eps.is_finite() && eps >= 0.0) {
        return Err(MatchError::Unsupported(format!(
            "merge epsilon must be finite and >= 0, got {eps}"
        )));
    }
    Ok(o / n_models)
}

/// Symmetry check within [`SYMMETRY_TOL`]; reports the first offending pair in row-major order.
fn check_symmetric(corr: &SquareMatrix) -> Result<(), MatchError> {
    let o = corr.n;
    // Tiled upper-triangle scan so the transposed reads stay in cache; the first offending pair
    // in row-major order is reported.
    const TILE: usize = 32;
    let mut first: Option<(usize, usize)> = None;
    for bi in (0..o).step_by(TILE) {
        for bj in (bi..o).step_by(TILE) {
            for i in bi..(bi + TILE).min(o) {
                let j0 = if bi == bj { i + 1 } else { bj };
                for j in j0..(bj + TILE).min(o) {
                    let (a, b) = (corr.data[i * o + j], corr.data[j * o + i]);
                    if a != b && !symmetric_pair(a, b) && first.is_none_or(|f| (i, j) < f) {
                        first = Some((i, j));
                    }
                }
            }
        }
        if first.is_some() {
            break;
        }
    }
    if let Some((i, j)) = first {
        return Err(MatchError::NotSymmetric {
            i,
            j,
            a: corr.data[i * o + j],
            b: corr.data[j * o + i],
        });
    }
    Ok(())
}

#[cfg(test)]
pub(crate) mod test_util {
    use super::SquareMatrix;

    /// Tiny deterministic PRNG (SplitMix64) so tests need no extra dependency.
    pub struct Rng(pub u64);

    impl Rng {
        pub fn next_u64(&mut self) -> u64 {
            self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
            let mut z = self.0;
            z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
            z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
            z ^ (z >> 31)
        }
        /// Uniform in [0, 1).
        pub fn uniform(&mut self) -> f64 {
            (self.next_u64() >> 11) as f64 / (1u64 << 53) as f64
        }
    }

    /// Symmetric matrix from an upper-triangle function `f(i, j)` (i < j) and a diagonal value.
    pub fn sym(n: usize, diag: f64, mut f: impl FnMut(usize, usize) -> f64) -> SquareMatrix {
        let mut data = vec![diag; n * n];
        for i in 0..n {
            for j in i + 1..n {
                let v = f(i, j);
                data[i * n + j] = v;
                data[j * n + i] = v;
            }
        }
        SquareMatrix::new(n, data).unwrap()
    }

    /// The T1 matrix (8x8, Om = 4, N = 2; A = 0..3, B = 4..7). Strong entries:
    ///   twins (cross): (0,5)=0.90, (1,4)=0.85, (2,7)=0.80, (3,6)=0.75
    ///   within A: (0,2)=0.96 (strong), (1,3)=0.78 (second within pair, only usable with budget)
    ///   within B: (4,7)=0.92 (strong), (5,6)=0.50 (second within pair)
    ///   medium cross: (2,5)=0.70, (1,5)=0.30
    /// Every other off-diagonal entry is weak and distinct: w(i,j) = 0.01 + 0.001 * (8i + j):
    ///   (0,1)=.011 (0,3)=.013 (0,4)=.014 (0,6)=.016 (0,7)=.017 (1,2)=.020 (1,6)=.024
    ///   (1,7)=.025 (2,3)=.029 (2,4)=.030 (2,6)=.032 (3,4)=.038 (3,5)=.039 (3,7)=.041
    ///   (4,5)=.047 (4,6)=.048 (5,7)=.057 (6,7)=.065
    /// Diagonal 1.
    pub fn t1_matrix() -> SquareMatrix {
        sym(8, 1.0, |i, j| match (i, j) {
            (0, 5) => 0.90,
            (1, 4) => 0.85,
            (2, 7) => 0.80,
            (3, 6) => 0.75,
            (0, 2) => 0.96,
            (1, 3) => 0.78,
            (4, 7) => 0.92,
            (5, 6) => 0.50,
            (2, 5) => 0.70,
            (1, 5) => 0.30,
            _ => 0.01 + 0.001 * (8 * i + j) as f64,
        })
    }

    /// Population covariance of `rows` (features x samples).
    pub fn covariance(rows: &[Vec<f64>]) -> SquareMatrix {
        let o = rows.len();
        let s = rows[0].len() as f64;
        let means: Vec<f64> = rows.iter().map(|r| r.iter().sum::<f64>() / s).collect();
        let mut data = vec![0.0; o * o];
        for i in 0..o {
            for j in 0..o {
                let e: f64 = rows[i]
                    .iter()
                    .zip(&rows[j])
                    .map(|(a, b)| a * b)
                    .sum::<f64>()
                    / s;
                data[i * o + j] = e - means[i] * means[j];
            }
        }
        SquareMatrix::new(o, data).unwrap()
    }

    /// Correlation of two identical copies of `om` random features (`n_models` copies), built
    /// through [`super::correlation`] from a covariance of random data.
    pub fn identical_models_corr(om: usize, n_models: usize, seed: u64) -> SquareMatrix {
        let mut rng = Rng(seed);
        let samples = 400;
        let base: Vec<Vec<f64>> = (0..om)
            .map(|_| (0..samples).map(|_| rng.uniform() - 0.5).collect())
            .collect();
        let rows: Vec<Vec<f64>> = (0..n_models).flat_map(|_| base.clone()).collect();
        super::correlation(&covariance(&rows))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn square_matrix_constructors() {
        assert!(SquareMatrix::new(2, vec![0.0; 4]).is_ok());
        assert_eq!(
            SquareMatrix::new(2, vec![0.0; 3]),
            Err(MatchError::BadLength { n: 2, len: 3 })
        );
        assert_eq!(
            SquareMatrix::from_shape(3, 4, vec![0.0; 12]),
            Err(MatchError::NotSquare { rows: 3, cols: 4 })
        );
        let m = SquareMatrix::new(2, vec![1.0, 2.0, 3.0, 4.0]).unwrap();
        assert_eq!(m.get(1, 0), 3.0);
    }

    #[test]
    fn correlation_basic_dead_and_nan() {
        // C = [[4, 2, 0], [2, 9, 0], [0, 0, 0]]:
        // rho_01 = 2 / (2 * 3) = 1/3; diag = 1, 1, 0 (dead: 0 / max(0, 1e-7) = 0).
        let cov = SquareMatrix::new(3, vec![4.0, 2.0, 0.0, 2.0, 9.0, 0.0, 0.0, 0.0, 0.0]).unwrap();
        let r = correlation(&cov);
        assert!((r.get(0, 1) - 1.0 / 3.0).abs() < 1e-15);
        assert_eq!(r.get(1, 0), r.get(0, 1));
        assert_eq!(r.get(0, 0), 1.0);
        assert_eq!(r.get(2, 2), 0.0);
        assert_eq!(r.get(0, 2), 0.0);
        // Negative diagonal is clamped to 0 (rho_22 = 0, not -1e-9 / 1e-7); asymmetric input is
        // symmetrised:
        // C01 = (1 + 3) / 2 = 2, rho_01 = 2 / (2 * 2) = 0.5; rho_02 = 5 / max(0, 1e-7).
        let cov =
            SquareMatrix::new(3, vec![4.0, 1.0, 5.0, 3.0, 4.0, 0.0, 5.0, 0.0, -1e-9]).unwrap();
        let r = correlation(&cov);
        assert!((r.get(0, 1) - 0.5).abs() < 1e-15);
        assert_eq!(r.get(1, 0), r.get(0, 1));
        assert!((r.get(0, 2) - 5.0 / 1e-7).abs() < 1e-3);
        assert_eq!(r.get(2, 2), 0.0);
        // NaN variance propagates as NaN.
        let cov = SquareMatrix::new(2, vec![f64::NAN, 0.5, 0.5, 1.0]).unwrap();
        let r = correlation(&cov);
        assert!(r.get(0, 1).is_nan() && r.get(1, 0).is_nan());
        assert_eq!(r.get(1, 1), 1.0);
    }

    #[test]
    fn from_clusters_normalisation_and_blocks() {
        let eps = 1e-5;
        // O = 4, two models (Om = 2): clusters [{0,3}, {1}] (feature 2 unused).
        let mu = MergeUnmerge::from_clusters(vec![vec![3, 0], vec![1]], 4, eps);
        assert_eq!(mu.k, 2);
        assert_eq!(mu.clusters, vec![vec![0, 3], vec![1]]);
        let h = 1.0 / (2.0 + eps);
        let s = 1.0 / (1.0 + eps);
        assert_eq!(mu.merge, vec![h, 0.0, 0.0, h, 0.0, s, 0.0, 0.0]);
        assert_eq!(mu.unmerge, vec![1.0, 0.0, 0.0, 1.0, 0.0, 0.0, 1.0, 0.0]);
        assert_eq!(mu.merge_block(0, 2), vec![h, 0.0, 0.0, s]);
        assert_eq!(mu.merge_block(1, 2), vec![0.0, h, 0.0, 0.0]);
        assert_eq!(mu.unmerge_block(0, 2), vec![1.0, 0.0, 0.0, 1.0]);
        assert_eq!(mu.unmerge_block(1, 2), vec![0.0, 0.0, 1.0, 0.0]);
    }

    #[test]
    #[should_panic(expected = "more than one cluster")]
    fn from_clusters_rejects_duplicates() {
        let _ = MergeUnmerge::from_clusters(vec![vec![0, 1], vec![1]], 2, 0.0);
    }

    fn all_matchers() -> Vec<Box<dyn Matcher>> {
        vec![
            Box::new(ZipIt::default()),
            Box::new(Permute),
            Box::new(Identity),
            Box::new(ReturnA),
        ]
    }

    #[test]
    fn validation_errors_for_every_matcher() {
        let good = test_util::sym(4, 1.0, |i, j| 0.1 * (i + j) as f64);
        for m in all_matchers() {
            assert!(m.solve(&good, 2, 1e-5).is_ok(), "{}", m.name());
            // Not square data (public fields bypass the constructor).
            let bad = SquareMatrix {
                n: 3,
                data: vec![0.0; 12],
            };
            assert_eq!(
                m.solve(&bad, 3, 1e-5),
                Err(MatchError::BadLength { n: 3, len: 12 })
            );
            // Asymmetric: (1,2) = 0.3 vs (2,1) = 0.31.
            let mut asym = good.clone();
            asym.data[2 * 4 + 1] = 0.31;
            match m.solve(&asym, 2, 1e-5) {
                Err(MatchError::NotSymmetric { i: 1, j: 2, a, b }) => {
                    assert!((a - 0.3).abs() < 1e-12 && b == 0.31);
                }
                other => panic!("{}: expected NotSymmetric, got {other:?}", m.name()),
            }
            // Tiny relative asymmetry (below 1e-6) is accepted.
            let mut tiny = good.clone();
            tiny.data[2 * 4 + 1] += 1e-9;
            assert!(m.solve(&tiny, 2, 1e-5).is_ok());
            // O not divisible by N, N < 2, O = 0.
            assert_eq!(
                m.solve(&good, 3, 1e-5),
                Err(MatchError::BadModels { o: 4, n: 3 })
            );
            assert_eq!(
                m.solve(&good, 1, 1e-5),
                Err(MatchError::BadModels { o: 4, n: 1 })
            );
            let empty = SquareMatrix::new(0, vec![]).unwrap();
            assert_eq!(
                m.solve(&empty, 2, 1e-5),
                Err(MatchError::BadModels { o: 0, n: 2 })
            );
            // Bad eps.
            assert!(matches!(
                m.solve(&good, 2, -1.0),
                Err(MatchError::Unsupported(_))
            ));
            assert!(matches!(
                m.solve(&good, 2, f64::NAN),
                Err(MatchError::Unsupported(_))
            ));
        }
        // The error messages name the problem.
        let msg = MatchError::InvalidAlpha(0.0).to_string();
        assert!(msg.contains("alpha") && msg.contains("<= 0") && msg.contains("rejected"));
        let msg = MatchError::NotSymmetric {
            i: 1,
            j: 2,
            a: 0.3,
            b: 0.31,
        }
        .to_string();
        assert!(msg.contains("(1,2)") && msg.contains("(2,1)"));
        assert!(MatchError::InvalidBeta(2.0).to_string().contains("[0, 1]"));
        assert!(MatchError::BadModels { o: 5, n: 2 }
            .to_string()
            .contains("O = 5"));
    }

    #[test]
    fn nan_symmetric_pairs_are_accepted() {
        // NaN at both (0,1) and (1,0) is symmetric (treated as -inf); NaN vs a number is not.
        let mut c = test_util::sym(4, 1.0, |i, j| 0.1 * (i + j) as f64);
        c.data[1] = f64::NAN;
        c.data[4] = f64::NAN;
        for m in all_matchers() {
            assert!(m.solve(&c, 2, 1e-5).is_ok(), "{}", m.name());
        }
        c.data[4] = 0.1;
        for m in all_matchers() {
            assert!(
                matches!(
                    m.solve(&c, 2, 1e-5),
                    Err(MatchError::NotSymmetric { i: 0, j: 1, .. })
                ),
                "{}",
                m.name()
            );
        }
    }

    /// T6 (matcher part): self-correlation of identical models gives twin clusters for ZipIt,
    /// Permute and Identity (no dead units: random data, |within-model rho| << alpha).
    #[test]
    fn identical_models_give_twin_clusters() {
        let om = 6;
        let corr = test_util::identical_models_corr(om, 2, 7);
        let twins: Vec<Vec<usize>> = (0..om).map(|k| vec![k, om + k]).collect();
        let matchers: Vec<Box<dyn Matcher>> = vec![
            Box::new(ZipIt::default()),
            Box::new(ZipIt {
                alpha: 0.5,
                beta: 0.0,
            }),
            Box::new(ZipIt {
                alpha: 1.0,
                beta: 1.0,
            }),
            Box::new(Permute),
            Box::new(Identity),
        ];
        for m in &matchers {
            let mu = m.solve(&corr, 2, 1e-5).unwrap();
            assert_eq!(mu.clusters, twins, "{}", m.name());
        }
        // Three identical models: triplets.
        let corr3 = test_util::identical_models_corr(om, 3, 11);
        let triplets: Vec<Vec<usize>> = (0..om).map(|k| vec![k, om + k, 2 * om + k]).collect();
        for m in &matchers {
            let mu = m.solve(&corr3, 3, 1e-5).unwrap();
            assert_eq!(mu.clusters, triplets, "{}", m.name());
        }
    }
}
