//! Backward kernels of engine training on channels-last (NHWC) activations: conv input
//! gradients (a "same" stride-1 conv through the forward kernels with the rotated, transposed
//! kernel, so 3x3 convs go through Winograd; strided convs by `gemm` + col2im), conv weight
//! gradients (Winograd for 3x3 stride 1, `gemm` over im2col patches otherwise), BatchNorm in
//! train mode, ReLU masks with the residual fan-out, max pooling and global average pooling +
//! linear.
//!
//! Every reduction over rows runs on a fixed partition ([`PARTS`] parts, summed in order), so
//! the bits do not depend on the thread count. The formulas are PyTorch's (the autograd
//! derivatives of `conv2d`, `batch_norm` in training, `max_pool2d` and `linear`).

use rayon::prelude::*;

use super::conv::{conv_forward, im2col, Conv};
use super::gemm::{matmul, Epilogue};
use super::scratch::Scratch;

/// Number of fixed parts of a reduction over rows (or images).
const PARTS: usize = 8;

/// Bytes of one im2col block of the weight gradient.
const BLOCK_BYTES: usize = 1 << 22;

/// Output rows per product of the strided input gradient (whole images).
const COL2IM_ROWS: usize = 1024;

/// `dx = dL/dx (+ acc)` of `z = conv(x)` (no bias, no epilogue) for `dz: [batch, os, os,
/// cout]`, into `dx: [batch, side, side, cin]` (overwritten; `acc`, the gradient `x` already
/// has from its other readers, is added in the same pass).
///
/// Stride-1 convs with "same" padding (`2 * pad == k - 1`: 3x3 pad 1, 1x1 pad 0) are the forward
/// conv of `dz` with the kernel rotated by 180 degrees and its channels swapped (and take the
/// forward's Winograd and direct kernels; `winograd: false` keeps them off Winograd); the others go
/// through `cols = dz W^T` and a scatter-add of `cols` into `dx` (col2im), a fixed group of
/// whole images per task.
pub fn conv_backward_data(
    conv: &Conv,
    dz: &[f32],
    batch: usize,
    side: usize,
    dx: &mut [f32],
    acc: Option<&[f32]>,
    winograd: bool,
) {
    let os = conv.out_side(side);
    let (k, cin, cout, s, p) = (conv.k, conv.cin, conv.cout, conv.stride, conv.pad);
    debug_assert_eq!(dz.len(), batch * os * os * cout);
    debug_assert_eq!(dx.len(), batch * side * side * cin);
    if s == 1 && 2 * p + 1 == k {
        let epi = Epilogue {
            residual: acc,
            ..Epilogue::none()
        };
        conv_forward(&rotated(conv, winograd), dz, batch, os, dx, &epi);
        return;
    }
    let kk = k * k * cin;
    let n = os * os;
    // images per task: enough rows for an efficient product, a fixed partition
    let per = (COL2IM_ROWS / n).clamp(1, batch.max(1));
    dx.par_chunks_mut(per * side * side * cin)
        .enumerate()
        .for_each_init(Scratch::default, |cols, (gi, dxg)| {
            let images = dxg.len() / (side * side * cin);
            let b0 = gi * per;
            match acc {
                Some(a) => dxg.copy_from_slice(&a[b0 * side * side * cin..][..dxg.len()]),
                None => dxg.fill(0.0),
            }
            let cols = cols.slice(images * n * kk);
            // SAFETY: lhs dz rows of images b0.. ([images * n, cout]); rhs W^T [cout, kk] with
            // W [kk, cout] row-major (element (co, r) at r * cout + co); cols [images * n, kk].
            unsafe {
                matmul(
                    images * n,
                    kk,
                    cout,
                    cols.as_mut_ptr(),
                    kk,
                    dz[b0 * n * cout..].as_ptr(),
                    (cout, 1),
                    conv.weight.as_ptr(),
                    (1, cout),
                    false,
                );
            }
            for (bi, dxi) in dxg.chunks_exact_mut(side * side * cin).enumerate() {
                let cols = &cols[bi * n * kk..(bi + 1) * n * kk];
                col2im(cols, dxi, k, cin, s, p, side, os);
            }
        });
}

/// Scatter-adds `cols: [os*os, k*k*cin]` (one image's patch gradients) into `dx: [side, side,
/// cin]`.
#[allow(clippy::too_many_arguments)]
fn col2im(
    cols: &[f32],
    dx: &mut [f32],
    k: usize,
    cin: usize,
    s: usize,
    p: usize,
    side: usize,
    os: usize,
) {
    let kk = k * k * cin;
    for oy in 0..os {
        for ox in 0..os {
            let row = &cols[(oy * os + ox) * kk..(oy * os + ox + 1) * kk];
            for ky in 0..k {
                let iy = (oy * s + ky) as isize - p as isize;
                if iy < 0 || iy >= side as isize {
                    continue;
                }
                for kx in 0..k {
                    let ix = (ox * s + kx) as isize - p as isize;
                    if ix < 0 || ix >= side as isize {
                        continue;
                    }
                    let d0 = (iy as usize * side + ix as usize) * cin;
                    let src = &row[(ky * k + kx) * cin..(ky * k + kx + 1) * cin];
                    dx[d0..d0 + cin]
                        .iter_mut()
                        .zip(src)
                        .for_each(|(d, v)| *d += v);
                }
            }
        }
    }
}

/// The conv whose forward is the input gradient of a stride-1 "same" conv: kernel rotated by
/// 180 degrees, input and output channels swapped (`W'[(ky, kx, co), ci] = W[(k-1-ky, k-1-kx,
/// ci), co]`).
fn rotated(conv: &Conv, winograd: bool) -> Conv {
    let (k, cin, cout) = (conv.k, conv.cin, conv.cout);
    let mut w = vec![0f32; k * k * cin * cout];
    for ky in 0..k {
        for kx in 0..k {
            let src_tap = ((k - 1 - ky) * k + (k - 1 - kx)) * cin;
            let dst_tap = (ky * k + kx) * cout;
            for ci in 0..cin {
                let src = &conv.weight[(src_tap + ci) * cout..(src_tap + ci + 1) * cout];
                for (co, v) in src.iter().enumerate() {
                    w[(dst_tap + co) * cin + ci] = *v;
                }
            }
        }
    }
    Conv {
        name: conv.name.clone(),
        cin: cout,
        cout: cin,
        k,
        stride: 1,
        pad: conv.pad,
        weight: w,
        bias: None,
        winograd: (winograd && k == 3 && conv.pad == 1 && cout >= 32)
            .then(|| super::winograd::Winograd::new(cout, cin)),
    }
}

/// `dW = dL/dW` of `z = conv(x)` in the engine's layout `[k*k*cin, cout]` (the sum over output
/// pixels of `patch^T dz`), for `x: [batch, side, side, cin]` and `dz: [batch, os, os, cout]`.
/// 3x3 stride-1 pad-1 convs go through Winograd ([`super::winograd::weight_gradient3x3`];
/// `winograd: false` keeps them off it); the others: images split into [`PARTS`] fixed
/// groups, each summed by `gemm` over im2col blocks (1x1 stride-1 convs read `x` directly),
/// the groups added in order.
pub fn conv_backward_weight(
    conv: &Conv,
    x: &[f32],
    batch: usize,
    side: usize,
    dz: &[f32],
    winograd: bool,
) -> Vec<f32> {
    if winograd && conv.k == 3 && conv.stride == 1 && conv.pad == 1 {
        return super::winograd::weight_gradient3x3(x, dz, batch, side, conv.cin, conv.cout);
    }
    let os = conv.out_side(side);
    let (cin, cout) = (conv.cin, conv.cout);
    let kk = conv.k * conv.k * cin;
    let direct = conv.k == 1 && conv.stride == 1 && conv.pad == 0;
    let per = batch.div_ceil(PARTS).max(1);
    let groups: Vec<usize> = (0..batch.div_ceil(per)).collect();
    let block = (BLOCK_BYTES / (4 * kk)).clamp(32, 4096);
    let parts: Vec<Vec<f32>> = groups
        .par_iter()
        .map(|&g| {
            let mut dw = vec![0f32; kk * cout];
            let mut cols = Scratch::default();
            let r0 = g * per * os * os;
            let r1 = ((g + 1) * per).min(batch) * os * os;
            let mut first = true;
            let mut r = r0;
            while r < r1 {
                let n = block.min(r1 - r);
                let lhs: &[f32] = if direct {
                    &x[r * kk..(r + n) * kk]
                } else {
                    let cols = cols.slice(n * kk);
                    im2col(conv, x, side, os, r, n, cols);
                    cols
                };
                // SAFETY: lhs^T: element (i, j) = lhs[j * kk + i] ([kk, n]); rhs dz rows
                // r..r+n ([n, cout]); dw [kk, cout]; in bounds.
                unsafe {
                    matmul(
                        kk,
                        cout,
                        n,
                        dw.as_mut_ptr(),
                        cout,
                        lhs.as_ptr(),
                        (1, kk),
                        dz[r * cout..].as_ptr(),
                        (cout, 1),
                        !first,
                    );
                }
                first = false;
                r += n;
            }
            dw
        })
        .collect();
    sum_parts(parts, kk * cout)
}

/// Adds equally long parts in order.
fn sum_parts(parts: Vec<Vec<f32>>, len: usize) -> Vec<f32> {
    let mut it = parts.into_iter();
    let mut acc = it.next().unwrap_or_else(|| vec![0f32; len]);
    for p in it {
        acc.iter_mut().zip(&p).for_each(|(a, v)| *a += v);
    }
    acc
}

/// Rows per part of a per-channel reduction over `rows` rows (a fixed partition).
fn sum_part(rows: usize) -> usize {
    rows.div_ceil(PARTS * 2).max(1)
}

/// Per-channel f64 sums of one part's rows `g: [rows, c]`: `(sum g, sum g * z)` (the second
/// empty without `z`).
fn part_sums(g: &[f32], z: Option<&[f32]>, c: usize) -> (Vec<f64>, Vec<f64>) {
    let mut s = vec![0f64; c];
    let mut q = vec![0f64; if z.is_some() { c } else { 0 }];
    part_sums_into(g, z, &mut s, &mut q);
    (s, q)
}

/// [`part_sums`] into zeroed `s, q: [c]` (`q` empty without `z`), one row at a time.
fn part_sums_into(g: &[f32], z: Option<&[f32]>, s: &mut [f64], q: &mut [f64]) {
    super::simd::dispatch!(
        part_sums_body,
        (g: &[f32], z: Option<&[f32]>, s: &mut [f64], q: &mut [f64])
    )
}

#[inline(always)]
fn part_sums_body(g: &[f32], z: Option<&[f32]>, s: &mut [f64], q: &mut [f64]) {
    let c = s.len();
    match z {
        Some(z) => {
            for (gr, zr) in g.chunks_exact(c).zip(z.chunks_exact(c)) {
                for (((s, q), gv), zv) in s.iter_mut().zip(q.iter_mut()).zip(gr).zip(zr) {
                    *s += *gv as f64;
                    *q += *gv as f64 * *zv as f64;
                }
            }
        }
        None => {
            for gr in g.chunks_exact(c) {
                s.iter_mut().zip(gr).for_each(|(s, v)| *s += *v as f64);
            }
        }
    }
}

/// The parts' sums added in order.
fn add_parts(parts: Vec<(Vec<f64>, Vec<f64>)>) -> (Vec<f64>, Vec<f64>) {
    let mut it = parts.into_iter();
    let (mut s, mut q) = it.next().unwrap_or_default();
    for (ps, pq) in it {
        s.iter_mut().zip(ps).for_each(|(t, v)| *t += v);
        q.iter_mut().zip(pq).for_each(|(t, v)| *t += v);
    }
    (s, q)
}

/// Per-channel sums `[c]` of `x: [rows, c]` (a bias gradient), fixed partition, rounded to f32.
pub fn column_sums(x: &[f32], c: usize) -> Vec<f32> {
    let part = sum_part(x.len() / c.max(1));
    let parts = x
        .par_chunks(part * c)
        .map(|p| part_sums(p, None, c))
        .collect();
    let (s, _) = add_parts(parts);
    let s = if s.is_empty() { vec![0f64; c] } else { s };
    s.iter().map(|&v| v as f32).collect()
}

/// BatchNorm in train mode, backward, in place: on entry `g = dL/dy` for `y = gamma * xhat +
/// beta`, `xhat = (z - mean) * invstd` (batch mean, `invstd = 1 / sqrt(biased var + eps)`), all
/// `[rows, c]`, with its per-channel sums `(sum g, sum g * z)` (one pass of
/// [`mask_residual_sums`], with the ReLU mask and the residual fan-out); on exit `g = dL/dz`.
/// Returns `(dgamma, dbeta)` `[c]`: `dbeta = sum g`, `dgamma = sum g * xhat`,
/// `dz = gamma * invstd * (g - dbeta / N - xhat * dgamma / N)` (N = rows).
pub fn bn_backward(
    g: &mut [f32],
    z: &[f32],
    mean: &[f32],
    invstd: &[f32],
    gamma: &[f32],
    (sg, sgz): (Vec<f64>, Vec<f64>),
) -> (Vec<f32>, Vec<f32>) {
    let c = gamma.len();
    let rows = g.len() / c.max(1);
    // sum g * xhat = invstd * (sum g z - mean * sum g)
    let dgamma: Vec<f64> = (0..c)
        .map(|j| invstd[j] as f64 * (sgz[j] - mean[j] as f64 * sg[j]))
        .collect();
    let n = rows.max(1) as f64;
    let a: Vec<f32> = (0..c)
        .map(|j| (gamma[j] as f64 * invstd[j] as f64) as f32)
        .collect();
    let mb: Vec<f32> = sg.iter().map(|v| (v / n) as f32).collect();
    let mg: Vec<f32> = dgamma.iter().map(|v| (v / n) as f32).collect();
    let k = BnBackward {
        mean,
        invstd,
        a: &a,
        mb: &mb,
        mg: &mg,
    };
    g.par_chunks_mut(1024 * c)
        .zip(z.par_chunks(1024 * c))
        .for_each(|(gb, zb)| bn_backward_rows(gb, zb, &k));
    (
        dgamma.iter().map(|&v| v as f32).collect(),
        sg.iter().map(|&v| v as f32).collect(),
    )
}

/// Per-channel constants `[c]` of BN's backward map (see [`bn_backward`]).
struct BnBackward<'a> {
    mean: &'a [f32],
    invstd: &'a [f32],
    a: &'a [f32],
    mb: &'a [f32],
    mg: &'a [f32],
}

/// `g = a * (g - mb - (z - mean) * invstd * mg)` row by row, `g, z: [rows, c]`.
fn bn_backward_rows(g: &mut [f32], z: &[f32], k: &BnBackward) {
    super::simd::dispatch!(bn_backward_body, (g: &mut [f32], z: &[f32], k: &BnBackward))
}

#[inline(always)]
fn bn_backward_body(g: &mut [f32], z: &[f32], k: &BnBackward) {
    let c = k.a.len();
    for (gr, zr) in g.chunks_exact_mut(c).zip(z.chunks_exact(c)) {
        let per_channel = k.mean.iter().zip(k.invstd).zip(k.a).zip(k.mb).zip(k.mg);
        for ((g, z), ((((m, is), a), mb), mg)) in gr.iter_mut().zip(zr).zip(per_channel) {
            let xhat = (z - m) * is;
            *g = a * (*g - mb - xhat * mg);
        }
    }
}

/// Where the gradient of a residual input goes: nowhere, into a fresh copy, or added to the
/// gradient it already has.
pub enum ResidualGrad<'a> {
    /// No residual input.
    None,
    /// The residual input has no gradient yet: `res = g`.
    Copy(&'a mut [f32]),
    /// `res += g`.
    Add(&'a mut [f32]),
}

/// One pass over `g: [rows, c]` (the gradient at a conv's fused output): the ReLU mask (`g = 0`
/// where the output `y` is not positive), the residual fan-out (`res`), and the per-channel f64
/// sums `(sum g, sum g * z)` (the second only when `z` is given; empty otherwise) on a fixed
/// partition: a bias's gradient and BN's backward sums.
pub fn mask_residual_sums(
    g: &mut [f32],
    y: Option<&[f32]>,
    res: ResidualGrad,
    z: Option<&[f32]>,
    c: usize,
) -> (Vec<f64>, Vec<f64>) {
    let part = sum_part(g.len() / c.max(1));
    let nparts = g.len().div_ceil(part * c);
    let (add, res_buf) = match res {
        ResidualGrad::None => (false, None),
        ResidualGrad::Copy(r) => (false, Some(r)),
        ResidualGrad::Add(r) => (true, Some(r)),
    };
    let mut res_parts: Vec<Option<&mut [f32]>> = match res_buf {
        Some(r) => r.chunks_mut(part * c).map(Some).collect(),
        None => (0..nparts).map(|_| None).collect(),
    };
    let parts = g
        .par_chunks_mut(part * c)
        .zip(res_parts.par_iter_mut())
        .enumerate()
        .map(|(i, (gp, rp))| {
            let r0 = i * part * c;
            let y = y.map(|y| &y[r0..r0 + gp.len()]);
            mask_residual(gp, y, rp.as_deref_mut(), add);
            part_sums(gp, z.map(|z| &z[r0..r0 + gp.len()]), c)
        })
        .collect();
    add_parts(parts)
}

/// `g = 0` where `y <= 0` (with `y`), then `res += g` (`add`) or `res = g`.
fn mask_residual(g: &mut [f32], y: Option<&[f32]>, res: Option<&mut [f32]>, add: bool) {
    super::simd::dispatch!(
        mask_residual_body,
        (g: &mut [f32], y: Option<&[f32]>, res: Option<&mut [f32]>, add: bool)
    )
}

#[inline(always)]
fn mask_residual_body(g: &mut [f32], y: Option<&[f32]>, res: Option<&mut [f32]>, add: bool) {
    if let Some(y) = y {
        g.iter_mut()
            .zip(y)
            .for_each(|(g, y)| *g = if *y > 0.0 { *g } else { 0.0 });
    }
    match res {
        Some(r) if add => r.iter_mut().zip(g.iter()).for_each(|(r, g)| *r += g),
        Some(r) => r.copy_from_slice(g),
        None => {}
    }
}

/// `acc += v` elementwise (the residual fan-out and multi-reader activations).
pub fn add_into(acc: &mut [f32], v: &[f32]) {
    acc.par_chunks_mut(1 << 14)
        .zip(v.par_chunks(1 << 14))
        .for_each(|(a, v)| a.iter_mut().zip(v).for_each(|(a, v)| *a += v));
}

/// Max pooling backward: each output's gradient goes to the first maximum of its window
/// (PyTorch's tie rule), for `x: [batch, side, side, c]`, `dy: [batch, os, os, c]`; returns
/// `dx` (padding is never a maximum).
#[allow(clippy::too_many_arguments)]
pub fn max_pool_backward(
    x: &[f32],
    dy: &[f32],
    batch: usize,
    side: usize,
    c: usize,
    k: usize,
    s: usize,
    p: usize,
) -> Vec<f32> {
    let os = (side + 2 * p - k) / s + 1;
    let mut dx = vec![0f32; batch * side * side * c];
    dx.par_chunks_mut(side * side * c)
        .enumerate()
        .for_each(|(b, dxi)| {
            let xi = &x[b * side * side * c..(b + 1) * side * side * c];
            let mut best = vec![f32::NEG_INFINITY; c];
            let mut arg = vec![usize::MAX; c];
            for oy in 0..os {
                for ox in 0..os {
                    best.fill(f32::NEG_INFINITY);
                    arg.fill(usize::MAX);
                    for ky in 0..k {
                        let iy = (oy * s + ky) as isize - p as isize;
                        if iy < 0 || iy >= side as isize {
                            continue;
                        }
                        for kx in 0..k {
                            let ix = (ox * s + kx) as isize - p as isize;
                            if ix < 0 || ix >= side as isize {
                                continue;
                            }
                            let px = iy as usize * side + ix as usize;
                            let row = &xi[px * c..(px + 1) * c];
                            for j in 0..c {
                                if row[j] > best[j] || arg[j] == usize::MAX {
                                    best[j] = row[j];
                                    arg[j] = px;
                                }
                            }
                        }
                    }
                    let g = &dy[((b * os + oy) * os + ox) * c..((b * os + oy) * os + ox + 1) * c];
                    for j in 0..c {
                        if arg[j] != usize::MAX {
                            dxi[arg[j] * c + j] += g[j];
                        }
                    }
                }
            }
        });
    dx
}

/// Backward of `y = W mean_pixels(x) + b` for `x: [batch, hw, c]`, `W: [out, c]` (PyTorch
/// layout), `dy: [batch, out]`: returns `(dx [batch, hw, c], dW [out, c], db [out])`.
pub fn pool_linear_backward(
    x: &[f32],
    batch: usize,
    hw: usize,
    c: usize,
    w: &[f32],
    dy: &[f32],
) -> (Vec<f32>, Vec<f32>, Vec<f32>) {
    let out = w.len() / c.max(1);
    let pooled = super::pool::mean_pool(x, batch, hw, c);
    // dW = dy^T pooled: [out, c]
    let mut dw = vec![0f32; out * c];
    let mut dp = vec![0f32; batch * c];
    // SAFETY: dy^T element (o, b) at b * out + o; pooled [batch, c]; W [out, c]; in bounds.
    unsafe {
        matmul(
            out,
            c,
            batch,
            dw.as_mut_ptr(),
            c,
            dy.as_ptr(),
            (1, out),
            pooled.as_ptr(),
            (c, 1),
            false,
        );
        matmul(
            batch,
            c,
            out,
            dp.as_mut_ptr(),
            c,
            dy.as_ptr(),
            (out, 1),
            w.as_ptr(),
            (c, 1),
            false,
        );
    }
    let db = column_sums(dy, out);
    let inv = 1.0 / hw as f32;
    let mut dx = vec![0f32; batch * hw * c];
    dx.par_chunks_mut(hw * c).enumerate().for_each(|(b, d)| {
        let g: Vec<f32> = dp[b * c..(b + 1) * c].iter().map(|v| v * inv).collect();
        for row in d.chunks_exact_mut(c) {
            row.copy_from_slice(&g);
        }
    });
    (dx, dw, db)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::engine::kernels::uniform;

    /// The input gradient by its definition (NHWC, engine-layout weights), in f64.
    fn naive_dx(conv: &Conv, dz: &[f32], batch: usize, side: usize) -> Vec<f32> {
        let (k, cin, cout, s, p) = (conv.k, conv.cin, conv.cout, conv.stride, conv.pad);
        let os = conv.out_side(side);
        let mut dx = vec![0f64; batch * side * side * cin];
        for b in 0..batch {
            for oy in 0..os {
                for ox in 0..os {
                    for ky in 0..k {
                        for kx in 0..k {
                            let iy = (oy * s + ky) as isize - p as isize;
                            let ix = (ox * s + kx) as isize - p as isize;
                            if iy < 0 || ix < 0 || iy >= side as isize || ix >= side as isize {
                                continue;
                            }
                            for ci in 0..cin {
                                let mut acc = 0f64;
                                for co in 0..cout {
                                    acc += dz[((b * os + oy) * os + ox) * cout + co] as f64
                                        * conv.weight[((ky * k + kx) * cin + ci) * cout + co]
                                            as f64;
                                }
                                dx[((b * side + iy as usize) * side + ix as usize) * cin + ci] +=
                                    acc;
                            }
                        }
                    }
                }
            }
        }
        dx.iter().map(|&v| v as f32).collect()
    }

    fn shapes() -> Vec<(usize, usize, usize, usize, usize, usize, usize)> {
        // (batch, cin, cout, side, k, stride, pad): odd sizes, strides 1/2, padding, and the
        // Winograd (cin/cout >= 32) and direct (multiples of 16) paths of the rotated conv
        vec![
            (2, 3, 5, 7, 3, 1, 1),
            (2, 4, 6, 9, 3, 2, 1),
            (1, 5, 3, 11, 7, 2, 3),
            (2, 6, 4, 5, 1, 2, 0),
            (2, 6, 4, 5, 1, 1, 0),
            (2, 16, 16, 8, 3, 1, 1),
            (2, 32, 32, 16, 3, 1, 1),
            (1, 128, 128, 8, 3, 1, 1),
            (2, 16, 32, 9, 3, 2, 1),
        ]
    }

    #[test]
    fn input_gradient_matches_the_definition() {
        let mut rnd = uniform(3);
        for (b, cin, cout, side, k, s, p) in shapes() {
            let w: Vec<f32> = (0..cout * cin * k * k).map(|_| rnd()).collect();
            let conv = Conv::from_torch("c", &w, &[cout, cin, k, k], s, p, None);
            let os = conv.out_side(side);
            let dz: Vec<f32> = (0..b * os * os * cout).map(|_| rnd()).collect();
            let want = naive_dx(&conv, &dz, b, side);
            let mut got = vec![0f32; want.len()];
            conv_backward_data(&conv, &dz, b, side, &mut got, None, true);
            // with a gradient already there: added
            let acc: Vec<f32> = (0..got.len()).map(|i| (i % 7) as f32 - 3.0).collect();
            let mut sum = vec![0f32; want.len()];
            conv_backward_data(&conv, &dz, b, side, &mut sum, Some(&acc), true);
            for ((sv, gv), av) in sum.iter().zip(&got).zip(&acc) {
                assert!(
                    (sv - (gv + av)).abs() <= 1e-5 * (1.0 + av.abs()),
                    "{b} {cin} {cout} {side} {k} {s} {p}: {sv} vs {gv} + {av}"
                );
            }
            let scale = want.iter().fold(0f32, |m, v| m.max(v.abs()));
            for (i, (g, w)) in got.iter().zip(&want).enumerate() {
                assert!(
                    (g - w).abs() <= 1e-5 * scale.max(1.0),
                    "{b} {cin} {cout} {side} {k} {s} {p} [{i}]: {g} vs {w}"
                );
            }
        }
    }

    #[test]
    fn weight_gradient_matches_the_definition() {
        let mut rnd = uniform(4);
        let mut shapes = shapes();
        shapes.push((3, 16, 32, 7, 3, 1, 1)); // odd side
        shapes.push((9, 32, 16, 5, 5, 1, 2)); // 5x5, more images than parts
        shapes.push((2, 8, 16, 10, 3, 1, 1)); // Winograd F(4x4), a side not a multiple of 4
        shapes.push((20, 16, 24, 8, 3, 1, 1)); // F(4x4), several tasks
        for (b, cin, cout, side, k, s, p) in shapes {
            let w: Vec<f32> = (0..cout * cin * k * k).map(|_| rnd()).collect();
            let conv = Conv::from_torch("c", &w, &[cout, cin, k, k], s, p, None);
            let os = conv.out_side(side);
            let x: Vec<f32> = (0..b * side * side * cin).map(|_| rnd()).collect();
            let dz: Vec<f32> = (0..b * os * os * cout).map(|_| rnd()).collect();
            // dW[(ky, kx, ci), co] = sum over images and output pixels of x[in pixel, ci] dz
            let mut want = vec![0f64; k * k * cin * cout];
            for n in 0..b {
                for oy in 0..os {
                    for ox in 0..os {
                        for ky in 0..k {
                            for kx in 0..k {
                                let iy = (oy * s + ky) as isize - p as isize;
                                let ix = (ox * s + kx) as isize - p as isize;
                                if iy < 0 || ix < 0 || iy >= side as isize || ix >= side as isize {
                                    continue;
                                }
                                let xi = ((n * side + iy as usize) * side + ix as usize) * cin;
                                let di = ((n * os + oy) * os + ox) * cout;
                                for ci in 0..cin {
                                    for co in 0..cout {
                                        want[((ky * k + kx) * cin + ci) * cout + co] +=
                                            x[xi + ci] as f64 * dz[di + co] as f64;
                                    }
                                }
                            }
                        }
                    }
                }
            }
            for winograd in [false, true] {
                let got = conv_backward_weight(&conv, &x, b, side, &dz, winograd);
                let scale = want.iter().fold(0f64, |m, v| m.max(v.abs()));
                for (i, (g, w)) in got.iter().zip(&want).enumerate() {
                    assert!(
                        (*g as f64 - w).abs() <= 1e-5 * scale.max(1.0),
                        "{b} {cin} {cout} {side} {k} {s} {p} winograd {winograd} [{i}]: {g} vs {w}"
                    );
                }
            }
        }
    }
}
