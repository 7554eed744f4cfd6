//! REPAIR (Jordan et al., ICLR 2023, "REPAIR: REnormalizing Permuted Activations for
//! Interpolation Repair", §3-4): after a merge, each merged channel's mean and standard deviation
//! on the probe images are reset to its target's, by an affine map of the layer's branch output
//! (`bn(conv(x))`, before the residual add and the ReLU) that [`super::write`] folds into the BN's
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

use super::Target;

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
