//! Pooling on NHWC activations: max pooling (PyTorch semantics), global average pooling, and
//! global average pooling fused with the linear head.

use rayon::prelude::*;

use super::gemm::matmul;

/// Max pooling (PyTorch semantics: padding with -inf, floor mode) of NHWC `x: [batch, side,
/// side, c]`; returns the output and its side.
pub fn max_pool(
    x: &[f32],
    batch: usize,
    side: usize,
    c: usize,
    k: usize,
    s: usize,
    p: usize,
) -> (Vec<f32>, usize) {
    let os = (side + 2 * p - k) / s + 1;
    let mut out = vec![f32::NEG_INFINITY; batch * os * os * c];
    out.par_chunks_mut(os * os * c)
        .enumerate()
        .for_each(|(b, o)| {
            for oy in 0..os {
                for ox in 0..os {
                    let dst = &mut o[(oy * os + ox) * c..(oy * os + ox + 1) * c];
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
                            let src = ((b * side + iy as usize) * side + ix as usize) * c;
                            dst.iter_mut()
                                .zip(&x[src..src + c])
                                .for_each(|(d, v)| *d = d.max(*v));
                        }
                    }
                }
            }
        });
    (out, os)
}

/// Global average pooling: NHWC `x: [batch, hw, c]` -> `[batch, c]` (f32 sums, then `/ hw`).
pub fn mean_pool(x: &[f32], batch: usize, hw: usize, c: usize) -> Vec<f32> {
    let mut pooled = vec![0f32; batch * c];
    pooled
        .par_chunks_mut(c.max(1))
        .enumerate()
        .for_each(|(b, p)| {
            for px in 0..hw {
                let row = &x[(b * hw + px) * c..(b * hw + px + 1) * c];
                p.iter_mut().zip(row).for_each(|(a, v)| *a += v);
            }
            let inv = 1.0 / hw as f32;
            p.iter_mut().for_each(|v| *v *= inv);
        });
    pooled
}

/// Global average pooling then a linear layer: NHWC `x: [batch, hw, c]` (hw pixels per image),
/// PyTorch weight `[out, c]`, bias `[out]` -> `[batch, out]`.
pub fn pool_linear(
    x: &[f32],
    batch: usize,
    hw: usize,
    c: usize,
    w: &[f32],
    bias: &[f32],
) -> Vec<f32> {
    let out = bias.len();
    let pooled = mean_pool(x, batch, hw, c);
    let mut y = vec![0f32; batch * out];
    for (b, yr) in y.chunks_mut(out).enumerate() {
        yr.copy_from_slice(bias);
        let _ = b;
    }
    // SAFETY: pooled [batch, c], w [out, c] read as its transpose [c, out], y [batch, out].
    unsafe {
        matmul(
            batch,
            out,
            c,
            y.as_mut_ptr(),
            out,
            pooled.as_ptr(),
            (c, 1),
            w.as_ptr(),
            (1, c),
            true,
        );
    }
    y
}
