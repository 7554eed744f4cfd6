//! Closed-form refit (zipmerge's own; the idea behind PLeaS, Nasery et al., CVPR 2025, and
//! FS-Merge, Kinderman et al., TMLR 2025, without gradient steps): each merged conv / linear
//! (its BN folded in) is replaced by the ridge least-squares map that best reproduces its
//! target from the merged network's own inputs at that layer on the probe images.
//!
//! For a layer with patches `P` (`[rows, k*k*cin]` plus a column of ones for the bias) of the
//! merged input, merged residual `r` and target `T = sum_m M_m (y_m + r_m)` (the merge-matrix
//! projection of the sources' pre-ReLU outputs, residual included; [`super::Target`]), it solves
//! `min_W ||P W - (T - r)||^2 + lambda ||W_no_bias - W_0||^2` from the normal equations
//! `(P^T P + lambda I) W = P^T (T - r) + lambda W_0`, where `W_0` is the merged layer itself (its
//! BN folded in): the ridge pulls towards the merge, so directions the probe images do not
//! determine keep the merged weights and an exact merge is kept whatever the ridge. The
//! equations are accumulated in f64 over row chunks in one streaming
//! pass (f32 products in blocks of at most 256 rows, [`crate::engine::kernels::second_moment`])
//! and solved by Cholesky. `lambda = ridge * mean(diag(P^T P))` (relative ridge; a floor of
//! `1e-12` of the largest diagonal entry, raised to `1e-9`, `1e-6` or `1e-3` when the equations
//! are not positive definite in floating point, keeps dead or collinear input channels and
//! layers with fewer pixels than unknowns solvable; blocked Cholesky, `linalg.rs`). Layers with
//! more output pixels than [`ROWS_PER_UNKNOWN`] per unknown use an evenly strided subset of
//! them. One step of iterative refinement on the f32 weights follows the solve.

use crate::engine::kernels::{channel_moments, matmul_rows, matmul_tn, patches, second_moment};
use crate::engine::layerwise::{Site, Update};
use crate::error::MergeError;

use super::linalg;
use super::target::Target;

/// Default relative ridge of `--refit-ridge`.
pub const DEFAULT_REFIT_RIDGE: f64 = 1e-4;

/// Rows of the normal equations per unknown of one output channel (`k*k*cin + 1`): layers with
/// more output pixels than this over the probe images use every `stride`-th pixel.
pub const ROWS_PER_UNKNOWN: usize = 256;

/// `(stride, rows used)` of a layer with `rows` output pixels (`side^2` per image) and `width`
/// columns: the smallest stride giving at most [`ROWS_PER_UNKNOWN`] rows per column, made
/// coprime with `side` so that the pixels taken move across the columns of every image.
fn row_sample(rows: usize, width: usize, side: usize) -> (usize, usize) {
    let mut stride = (rows / (ROWS_PER_UNKNOWN * width)).max(1);
    while stride > 1 && gcd(stride, side) != 1 {
        stride += 1;
    }
    (stride, rows.div_ceil(stride))
}

fn gcd(a: usize, b: usize) -> usize {
    if b == 0 {
        a
    } else {
        gcd(b, a % b)
    }
}

/// Layers whose probe pixels number fewer than this many per unknown are not refit: there the
/// least-squares problem is (nearly) under-determined and fits the probe images' noise, e.g.
/// VGG-11's last convs (2 x 2 pixels per image, 9 x 512 + 1 unknowns).
pub const MIN_ROWS_PER_UNKNOWN: usize = 2;

/// The probe images the refit of `site` needs ([`MIN_ROWS_PER_UNKNOWN`] output pixels per
/// unknown, `k*k*cin + 1` unknowns per output channel, `side^2` output pixels per image).
pub fn images_needed(site: &Site) -> usize {
    let conv = site.conv;
    let unknowns = conv.k * conv.k * conv.cin + 1;
    let per_image = (site.output.side * site.output.side).max(1);
    (MIN_ROWS_PER_UNKNOWN * unknowns).div_ceil(per_image)
}

/// The refit layer `y = conv(x; W) + b` (BN folded in) for `site`, or `None` when the layer has
/// fewer than [`MIN_ROWS_PER_UNKNOWN`] probe pixels per unknown (it keeps the merged weights).
///
/// # Errors
/// [`MergeError::Space`] naming the layer when the normal equations are not positive definite
/// (non-finite features).
pub fn solve(site: &Site, target: &Target, ridge: f64) -> Result<Option<Update>, MergeError> {
    let conv = site.conv;
    let x = site.input;
    let mut t = target.project(site, true);
    let k = target.k(site.sources[0].c);
    if k != conv.cout {
        return Err(MergeError::Internal(format!(
            "layer `{}`: merged width {k} differs from its {} output channels",
            conv.name, conv.cout
        )));
    }
    if let Some(r) = site.residual {
        t.iter_mut().zip(&r.data).for_each(|(a, b)| *a -= b);
    }
    let kk = conv.k * conv.k * conv.cin;
    let width = kk + 1 + k;
    if t.len() / k.max(1) < MIN_ROWS_PER_UNKNOWN * (kk + 1) {
        return Ok(None);
    }
    let (stride, rows) = row_sample(t.len() / k.max(1), width, site.output.side);
    // the equations are solved for centred columns (patch column (ky, kx, ci) minus the mean of
    // input channel ci, target minus its mean), which the bias absorbs exactly: post-ReLU
    // features have large means that would otherwise dominate the f32 products
    let mu_in: Vec<f32> = channel_moments(&x.data, conv.cin)
        .0
        .iter()
        .map(|&m| m as f32)
        .collect();
    let mu_p: Vec<f32> = (0..kk).map(|i| mu_in[i % conv.cin]).collect();
    let mu_t: Vec<f32> = channel_moments(&t, k).0.iter().map(|&m| m as f32).collect();
    for row in t.chunks_mut(k) {
        row.iter_mut().zip(&mu_t).for_each(|(v, m)| *v -= m);
    }
    let centred = |row0: usize, n: usize| {
        let mut p = patches(conv, &x.data, x.side, row0 * stride, stride, n);
        for row in p.chunks_mut(kk) {
            row.iter_mut().zip(&mu_p).for_each(|(v, m)| *v -= m);
        }
        p
    };
    let chunk = ((1usize << 22) / width).clamp(1024, 65536);
    let mut s = vec![0f64; (kk + 1) * width];
    let mut z = Vec::new();
    let mut row0 = 0;
    while row0 < rows {
        let n = chunk.min(rows - row0);
        let p = centred(row0, n);
        z.clear();
        z.reserve(n * width);
        for r in 0..n {
            let g = (row0 + r) * stride;
            z.extend_from_slice(&p[r * kk..(r + 1) * kk]);
            z.push(1.0);
            z.extend_from_slice(&t[g * k..(g + 1) * k]);
        }
        let (_, xtx) = second_moment(&z, width);
        s.iter_mut()
            .zip(&xtx[..(kk + 1) * width])
            .for_each(|(a, b)| *a += b);
        row0 += n;
    }
    let mean_diag = (0..kk).map(|i| s[i * width + i]).sum::<f64>() / kk.max(1) as f64;
    let nu = kk + 1;
    // the current layer with its BN folded in: the ridge pulls towards it
    let w0 = folded(site);
    let b: Vec<f64> = (0..nu)
        .flat_map(|i| (0..k).map(move |j| (i, j)))
        .map(|(i, j)| s[i * width + kk + 1 + j])
        .collect();
    // the ridge asked for, raised to a floor that keeps rank-deficient inputs (dead or
    // collinear channels, fewer pixels than unknowns) solvable: the first of these floors,
    // relative to the largest diagonal entry, at which the equations are positive definite
    let max_diag = (0..kk).map(|i| s[i * width + i]).fold(0.0, f64::max);
    let mut found = None;
    for floor in [1e-12, 1e-9, 1e-6, 1e-3] {
        let lambda = (ridge * mean_diag).max(floor * max_diag);
        let mut a: Vec<f64> = (0..nu)
            .flat_map(|i| (0..nu).map(move |j| (i, j)))
            .map(|(i, j)| s[i * width + j] + if i == j && i < kk { lambda } else { 0.0 })
            .collect();
        if linalg::cholesky(&mut a, nu) {
            found = Some((a, lambda));
            break;
        }
    }
    let (chol, lambda) = found.ok_or_else(|| MergeError::Space {
        space: conv.name.clone(),
        msg: "refit: the normal equations are not positive definite (non-finite features?)".into(),
    })?;
    let mut w = b;
    w[..kk * k]
        .iter_mut()
        .zip(&w0)
        .for_each(|(a, w0)| *a += lambda * w0);
    linalg::solve(&chol, nu, &mut w, k);
    // one step of iterative refinement on the f32 weights that will run: the Gram's f32 block
    // products limit the first solution on ill-conditioned inputs; the residual's normal
    // equations `P^T (T - P W) - lambda W` recover the rest
    let (weight, bias) = split(&w, kk, k);
    let mut g = vec![0f64; nu * k];
    let mut row0 = 0;
    while row0 < rows {
        let n = chunk.min(rows - row0);
        let p = centred(row0, n);
        let mut r = matmul_rows(&p, kk, &weight, k);
        for (i, rr) in r.chunks_mut(k).enumerate() {
            let g0 = (row0 + i) * stride;
            for (j, v) in rr.iter_mut().enumerate() {
                *v = t[g0 * k + j] - (*v + bias[j]);
            }
        }
        let pr = matmul_tn(&p, kk, &r, k); // [kk, k]
        g[..kk * k]
            .iter_mut()
            .zip(&pr)
            .for_each(|(a, b)| *a += *b as f64);
        for rr in r.chunks(k) {
            g[kk * k..]
                .iter_mut()
                .zip(rr)
                .for_each(|(a, b)| *a += *b as f64);
        }
        row0 += n;
    }
    g[..kk * k]
        .iter_mut()
        .zip(weight.iter().zip(&w0))
        .for_each(|(a, (w, w0))| *a -= lambda * (*w as f64 - w0));
    linalg::solve(&chol, nu, &mut g, k);
    let mut sol: Vec<f64> = weight
        .iter()
        .chain(&bias)
        .zip(&g)
        .map(|(w, d)| *w as f64 + d)
        .collect();
    // back from centred columns: b = b' + mu_T - mu_P^T W
    for j in 0..k {
        let shift: f64 = (0..kk).map(|i| mu_p[i] as f64 * sol[i * k + j]).sum();
        sol[kk * k + j] += mu_t[j] as f64 - shift;
    }
    let (weight, bias) = split(&sol, kk, k);
    Ok(Some(Update::Affine { weight, bias }))
}

/// The site's current branch map `bn(conv(x))` as weights `[kk, cout]` (f64, BN scale folded
/// in; the bias is not regularised, so it is left out).
fn folded(site: &Site) -> Vec<f64> {
    let c = site.conv;
    let scale = site.bn_affine.map(|(s, _)| s);
    c.weight
        .iter()
        .enumerate()
        .map(|(i, &w)| w as f64 * scale.map_or(1.0, |s| s[i % c.cout] as f64))
        .collect()
}

/// Weights `[kk, k]` and bias `[k]` (the last row) of a solution `[kk + 1, k]`, as f32.
fn split(w: &[f64], kk: usize, k: usize) -> (Vec<f32>, Vec<f32>) {
    let weight = w[..kk * k].iter().map(|&v| v as f32).collect();
    let bias = w[kk * k..].iter().map(|&v| v as f32).collect();
    (weight, bias)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::correct::test_site::{act, conv};
    use crate::matching::MergeUnmerge;

    /// Hand-computed refits of a 1x1 conv from `W_0 = 0` on inputs `x = 0..8` towards the target
    /// `t = 2x + 1` (both sources output it, `M = [1/2, 1/2]`): at ridge 0 the solution is
    /// `w = 2, b = 1`; at relative ridge 1 (lambda = the centred `sum (x - 3.5)^2`) it is
    /// `w = 2 / (1 + 1) = 1` and `b = mean(t) - w mean(x) = 8 - 3.5 = 4.5`. With fewer than
    /// twice as many pixels as unknowns (3 < 2 * 2) the layer is not refit.
    #[test]
    fn hand_computed_solutions() {
        let xs: Vec<f32> = (0..8).map(|i| i as f32).collect();
        let ts: Vec<f32> = xs.iter().map(|x| 2.0 * x + 1.0).collect();
        let (x, t, zero) = (act(&xs), act(&ts), act(&[0.0; 8]));
        let c = conv(0.0, 0.0);
        let mu = MergeUnmerge::from_clusters(vec![vec![0, 1]], 2, 0.0);
        let site = Site {
            conv: &c,
            bn: None,
            linear: false,
            input: &x,
            bn_affine: None,
            output: &zero,
            residual: None,
            sources: vec![&t, &t],
            source_residuals: vec![None, None],
        };
        let close = |u: Option<Update>, w: f32, b: f32| match u {
            Some(Update::Affine { weight, bias }) => {
                assert!((weight[0] - w).abs() < 1e-5, "weight {weight:?}, want {w}");
                assert!((bias[0] - b).abs() < 1e-5, "bias {bias:?}, want {b}");
            }
            other => panic!("expected an affine update, got {other:?}"),
        };
        close(solve(&site, &Target::Space(&mu), 0.0).unwrap(), 2.0, 1.0);
        close(solve(&site, &Target::Space(&mu), 1.0).unwrap(), 1.0, 4.5);
        let (x3, t3) = (act(&xs[..3]), act(&ts[..3]));
        let short = Site {
            input: &x3,
            output: &x3,
            sources: vec![&t3, &t3],
            ..site
        };
        assert_eq!(solve(&short, &Target::Space(&mu), 0.0).unwrap(), None);
    }
}
