//! The target a corrected layer is fitted to: the merge matrix of the feature space it writes,
//! or the average of the N models at the network output (reference: REPAIR and the refit both
//! project the sources' features through `M`).

use crate::engine::layerwise::Site;
use crate::matching::MergeUnmerge;

/// The target of one layer's output space: the merge matrix of a feature space, or the average
/// of the N models at the network output.
pub enum Target<'a> {
    /// A feature space's merge/unmerge matrices (`M`: `K x N*Om`).
    Space(&'a MergeUnmerge),
    /// The network output: `(1/N) sum_m z_m`.
    Average(usize),
}

impl Target<'_> {
    /// `M_m` as `[Om, K]` (transposed, row-major) for `x M_m^T` products.
    pub fn block_t(&self, m: usize, n: usize, om: usize) -> Vec<f32> {
        match self {
            Target::Space(mu) => {
                let b = mu.merge_block(m, n); // K x Om
                let k = mu.k;
                let mut t = vec![0f32; om * k];
                for c in 0..k {
                    for o in 0..om {
                        t[o * k + c] = b[c * om + o] as f32;
                    }
                }
                t
            }
            Target::Average(n) => {
                let mut t = vec![0f32; om * om];
                for o in 0..om {
                    t[o * om + o] = 1.0 / *n as f32;
                }
                t
            }
        }
    }

    /// Merged width `K`.
    pub fn k(&self, om: usize) -> usize {
        match self {
            Target::Space(mu) => mu.k,
            Target::Average(_) => om,
        }
    }

    /// Whether every entry of `M` is `>= 0` (zip clusters, permutations, averages; not CCA).
    pub fn non_negative(&self) -> bool {
        match self {
            Target::Space(mu) => mu.merge.iter().all(|&v| v >= 0.0),
            Target::Average(_) => true,
        }
    }

    /// `sum_m (a_m [+ r_m]) M_m^T`: the projected features `[rows, K]` of the sources'
    /// branch outputs, with their residuals when `with_residual`.
    pub fn project(&self, site: &Site, with_residual: bool) -> Vec<f32> {
        let n = site.sources.len();
        let om = site.sources[0].c;
        let k = self.k(om);
        let rows = site.sources[0].rows();
        let mut acc = vec![0f32; rows * k];
        for m in 0..n {
            let mut z = site.sources[m].data.clone();
            if with_residual {
                if let Some(r) = site.source_residuals[m] {
                    z.iter_mut().zip(&r.data).for_each(|(a, b)| *a += b);
                }
            }
            let p = crate::engine::kernels::matmul_rows(&z, om, &self.block_t(m, n, om), k);
            acc.iter_mut().zip(&p).for_each(|(a, b)| *a += b);
        }
        acc
    }
}
