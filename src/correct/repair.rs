//! REPAIR (Jordan et al., ICLR 2023, "REPAIR: REnormalizing Permuted Activations for
//! Interpolation Repair", §3-4): after a merge, each merged channel's mean and standard deviation
//! on the probe images are reset to its target's, by an affine map of the layer's branch output
//! (`bn(conv(x))`, before the residual add and the ReLU) that `correct::write` folds into the BN's
//! weight and bias, or into the conv's weight and bias when there is no BN (VGG-11).
//!
//! The target statistics of merged channel `c` come from the source channels the merge matrix
//! `M` mixes into it, measured on the same images:
//! - `M >= 0` (ZipIt! clusters, Permute, W.Avg): `mean_c = sum_x M[c, x] mean_x` and
//!   `std_c = sum_x M[c, x] std_x`, the (cluster-weighted) average of its members' statistics
//!   (REPAIR's "average of the endpoints' statistics", not the statistics of the average).
//! - `M` with negative entries (CCA Merge's linear maps): `mean_c = sum_m mean((M_m z_m)_c)` and
//!   `std_c = sum_m std((M_m z_m)_c)`, the sum over models of each model's mapped contribution.

use crate::engine::kernels::{channel_moments, matmul_rows};
use crate::engine::layerwise::{Site, Update};
use crate::engine::Act;

use super::target::Target;

/// The per-channel rescale `y' = y * scale + shift` that gives the merged branch output `out`
/// (`[rows, K]`) its target mean and standard deviation. A channel that does not vary (`std <
/// 1e-8`) is only shifted.
pub fn rescale(site: &Site, target: &Target, out: &Act) -> Update {
    let n = site.sources.len();
    let om = site.sources[0].c;
    let k = target.k(om);
    let (mut mean_t, mut std_t) = (vec![0f64; k], vec![0f64; k]);
    for (m, src) in site.sources.iter().enumerate() {
        let bt = target.block_t(m, n, om); // [Om, K]
        if target.non_negative() {
            let (mean, var) = channel_moments(&src.data, om);
            for o in 0..om {
                let sd = var[o].max(0.0).sqrt();
                for c in 0..k {
                    let w = bt[o * k + c] as f64;
                    mean_t[c] += w * mean[o];
                    std_t[c] += w * sd;
                }
            }
        } else {
            let p = matmul_rows(&src.data, om, &bt, k);
            let (mean, var) = channel_moments(&p, k);
            for c in 0..k {
                mean_t[c] += mean[c];
                std_t[c] += var[c].max(0.0).sqrt();
            }
        }
    }
    let (mean_m, var_m) = channel_moments(&out.data, k);
    let mut scale = vec![1f32; k];
    let mut shift = vec![0f32; k];
    for c in 0..k {
        let sd = var_m[c].max(0.0).sqrt();
        let s = if sd > 1e-8 { std_t[c] / sd } else { 1.0 };
        scale[c] = s as f32;
        shift[c] = (mean_t[c] - s * mean_m[c]) as f32;
    }
    Update::Rescale { scale, shift }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::correct::test_site::{act, conv};
    use crate::matching::MergeUnmerge;

    /// Hand-computed REPAIR targets. Sources `a = [1, 3]` (mean 2, std 1) and `b = [0, 4]`
    /// (mean 2, std 2) matched into one merged channel (`M = [1/2, 1/2]`): target mean 2, std
    /// (1 + 2) / 2 = 1.5. The merged output `[2, 2.5]` (mean 2.25, std 0.25) gets scale 6 and
    /// shift 2 - 6 * 2.25 = -11.5, i.e. `[0.5, 3.5]`. With `M = [1/2, -1/2]` (a CCA-like map)
    /// the target is the sum over models of the mapped parts: mean 1 - 1 = 0, std 0.5 + 1 =
    /// 1.5, so scale 6 and shift -13.5.
    #[test]
    fn hand_computed_targets() {
        let (a, b, merged) = (act(&[1.0, 3.0]), act(&[0.0, 4.0]), act(&[2.0, 2.5]));
        let c = conv(1.0, 0.0);
        let site = Site {
            conv: &c,
            bn: None,
            linear: false,
            input: &merged,
            bn_affine: None,
            output: &merged,
            residual: None,
            sources: vec![&a, &b],
            source_residuals: vec![None, None],
        };
        let mut mu = MergeUnmerge::from_clusters(vec![vec![0, 1]], 2, 0.0);
        assert_eq!(
            rescale(&site, &Target::Space(&mu), &merged),
            Update::Rescale {
                scale: vec![6.0],
                shift: vec![-11.5]
            }
        );
        mu.merge[1] = -0.5;
        assert_eq!(
            rescale(&site, &Target::Space(&mu), &merged),
            Update::Rescale {
                scale: vec![6.0],
                shift: vec![-13.5]
            }
        );
    }
}
