//! Forward kernels of the CPU engine on channels-last (NHWC) activations: convolution by
//! im2col + `gemm` (1x1 stride-1 convs read the activations directly) with a fused BN / bias /
//! residual-add / ReLU epilogue, batch statistics of BN in train mode, max pooling, global
//! average pooling + linear, and the streamed second moment of stacked features.
//!
//! Parallelism is rayon over fixed row ranges of the output; every reduction has a fixed
//! partition independent of the thread count, so results are the same bits run to run.

use gemm::Parallelism;
use rayon::prelude::*;

/// `dst = lhs * rhs` (f32, single-threaded `gemm`), `dst: [m, n]` row-major with row stride
/// `dst_rs`; `lhs: [m, k]` and `rhs: [k, n]` given by (row stride, column stride).
///
/// # Safety
/// Every element addressed through the pointers and strides must be in bounds, and `dst`
/// must not overlap the inputs.
#[allow(clippy::too_many_arguments)]
pub(crate) unsafe fn matmul(
    m: usize,
    n: usize,
    k: usize,
    dst: *mut f32,
    dst_rs: usize,
    lhs: *const f32,
    (lhs_rs, lhs_cs): (usize, usize),
    rhs: *const f32,
    (rhs_rs, rhs_cs): (usize, usize),
    accumulate: bool,
) {
    // SAFETY: forwarded from the caller's contract.
    unsafe {
        gemm::gemm(
            m,
            n,
            k,
            dst,
            1,
            dst_rs as isize,
            accumulate,
            lhs,
            lhs_cs as isize,
            lhs_rs as isize,
            rhs,
            rhs_cs as isize,
            rhs_rs as isize,
            if accumulate { 1.0 } else { 0.0 },
            1.0,
            false,
            false,
            false,
            Parallelism::None,
        );
    }
}

/// Target size of one im2col block in bytes (fits the L2 cache of current x86 cores).
const IM2COL_BYTES: usize = 1 << 21;

/// A convolution in the engine's layout.
#[derive(Clone, Debug)]
pub struct Conv {
    /// PyTorch module name (`layer1.0.conv1`), for messages.
    pub name: String,
    /// Input channels.
    pub cin: usize,
    /// Output channels.
    pub cout: usize,
    /// Square kernel side.
    pub k: usize,
    /// Stride.
    pub stride: usize,
    /// Zero padding on every side.
    pub pad: usize,
    /// Weights `[k*k*cin, cout]` row-major: row `(ky*k + kx)*cin + ci`, column `co` (PyTorch's
    /// `[cout, cin, k, k]` transposed).
    pub weight: Vec<f32>,
    /// Bias `[cout]`, if any.
    pub bias: Option<Vec<f32>>,
    /// Winograd forms (F(2x2, 3x3) and F(4x4, 3x3), transformed on first use) for 3x3
    /// stride-1 pad-1 convs with at least 32 input channels (the path [`conv_forward`] takes
    /// for them).
    pub winograd: Option<super::winograd::Winograd>,
}

impl Conv {
    /// Converts a PyTorch-layout weight `[cout, cin, k, k]` (row-major) into a conv.
    pub fn from_torch(
        name: &str,
        w: &[f32],
        shape: &[usize],
        stride: usize,
        pad: usize,
        bias: Option<Vec<f32>>,
    ) -> Self {
        let (cout, cin, k) = (shape[0], shape[1], shape[2]);
        let kk = k * k * cin;
        let mut weight = vec![0f32; kk * cout];
        for co in 0..cout {
            for ci in 0..cin {
                for ky in 0..k {
                    for kx in 0..k {
                        let src = ((co * cin + ci) * k + ky) * k + kx;
                        weight[((ky * k + kx) * cin + ci) * cout + co] = w[src];
                    }
                }
            }
        }
        let winograd = (k == 3 && stride == 1 && pad == 1 && cin >= 32)
            .then(|| super::winograd::Winograd::new(cin, cout));
        Self {
            name: name.to_string(),
            cin,
            cout,
            k,
            stride,
            pad,
            weight,
            bias,
            winograd,
        }
    }

    /// The same conv (name, geometry) with new weights `[k*k*cin, cout]` (engine layout) and
    /// bias `[cout]`; Winograd forms are re-derived on first use.
    ///
    /// # Panics
    /// If `weight` or `bias` has the wrong length.
    pub fn with_weights(&self, weight: Vec<f32>, bias: Option<Vec<f32>>) -> Self {
        assert_eq!(
            weight.len(),
            self.k * self.k * self.cin * self.cout,
            "conv weight size"
        );
        assert!(
            bias.as_ref().is_none_or(|b| b.len() == self.cout),
            "conv bias size"
        );
        Self {
            name: self.name.clone(),
            weight,
            bias,
            winograd: self
                .winograd
                .as_ref()
                .map(|_| super::winograd::Winograd::new(self.cin, self.cout)),
            ..*self
        }
    }

    /// Output side for an input side.
    pub fn out_side(&self, side: usize) -> usize {
        (side + 2 * self.pad - self.k) / self.stride + 1
    }

    /// Multiply-accumulates per output pixel.
    pub fn macs_per_pixel(&self) -> usize {
        self.k * self.k * self.cin * self.cout
    }
}

/// Per-channel affine map `y = x * scale + shift` applied after a conv (a BN in eval mode, a
/// BN normalised with batch statistics, or a bias), then `+ residual` and ReLU.
pub struct Epilogue<'a> {
    /// `[cout]`, or `None` for identity.
    pub scale: Option<&'a [f32]>,
    /// `[cout]`, or `None` for zero.
    pub shift: Option<&'a [f32]>,
    /// Residual `[rows, cout]` added after the affine map.
    pub residual: Option<&'a [f32]>,
    /// Apply ReLU last.
    pub relu: bool,
}

impl Epilogue<'_> {
    /// No-op epilogue (raw conv output).
    pub fn none() -> Self {
        Epilogue {
            scale: None,
            shift: None,
            residual: None,
            relu: false,
        }
    }

    /// Applies the epilogue to rows `row0..` of `out: [rows, c]`.
    pub(crate) fn apply(&self, out: &mut [f32], c: usize, row0: usize) {
        if self.scale.is_none() && self.shift.is_none() && self.residual.is_none() && !self.relu {
            return;
        }
        let rows = out.len() / c;
        for r in 0..rows {
            let o = &mut out[r * c..(r + 1) * c];
            if let Some(s) = self.scale {
                o.iter_mut().zip(s).for_each(|(v, s)| *v *= s);
            }
            if let Some(b) = self.shift {
                o.iter_mut().zip(b).for_each(|(v, b)| *v += b);
            }
            if let Some(res) = self.residual {
                let rr = &res[(row0 + r) * c..(row0 + r + 1) * c];
                o.iter_mut().zip(rr).for_each(|(v, a)| *v += a);
            }
            if self.relu {
                o.iter_mut().for_each(|v| *v = v.max(0.0));
            }
        }
    }
}

/// `out = epilogue(conv(x))` for NHWC `x: [batch, side, side, cin]` into `out: [batch, os, os,
/// cout]` (os = [`Conv::out_side`]).
pub fn conv_forward(
    conv: &Conv,
    x: &[f32],
    batch: usize,
    side: usize,
    out: &mut [f32],
    epi: &Epilogue,
) {
    let os = conv.out_side(side);
    let rows = batch * os * os;
    let kk = conv.k * conv.k * conv.cin;
    let cout = conv.cout;
    debug_assert_eq!(out.len(), rows * cout);
    debug_assert_eq!(x.len(), batch * side * side * conv.cin);
    if let Some(wg) = &conv.winograd {
        let w = wg.weights(wg.tile_for(side), &conv.weight);
        return super::winograd::conv3x3(w, conv.bias.as_deref(), x, batch, side, out, epi);
    }
    if conv.stride == 1 && conv.k > 1 {
        return shifted_conv(conv, x, side, out, epi);
    }
    let direct = conv.k == 1 && conv.stride == 1 && conv.pad == 0;
    let block = (IM2COL_BYTES / (4 * kk.max(cout))).clamp(64, 4096);
    out.par_chunks_mut(block * cout)
        .enumerate()
        .for_each_init(Vec::<f32>::new, |buf, (i, o)| {
            let row0 = i * block;
            let n = o.len() / cout;
            let lhs: &[f32] = if direct {
                &x[row0 * kk..(row0 + n) * kk]
            } else {
                buf.resize(n * kk, 0.0);
                im2col(conv, x, side, os, row0, n, buf);
                buf
            };
            // SAFETY: lhs is [n, kk], weight [kk, cout] and o [n, cout], all row-major and
            // in bounds.
            unsafe {
                matmul(
                    n,
                    cout,
                    kk,
                    o.as_mut_ptr(),
                    cout,
                    lhs.as_ptr(),
                    (kk, 1),
                    conv.weight.as_ptr(),
                    (cout, 1),
                    false,
                );
            }
            add_bias(o, conv.bias.as_deref(), cout);
            epi.apply(o, cout, row0);
        });
}

/// Stride-1 convolution per zero-padded image (`[(side+2p)^2, cin]`, no im2col): by the direct
/// register-blocked kernel when `cout` is a multiple of 16 and the CPU has FMA, else as `k*k`
/// shifted matrix products: on the padded grid, the input of
/// kernel tap `(ky, kx)` for every output pixel is the same matrix shifted by `ky*(side+2p)+kx`
/// rows, so `out_grid += shift(P) * W[ky, kx]` accumulates the conv on a grid of padded width
/// (whose extra columns are dropped when the epilogue writes the image).
fn shifted_conv(conv: &Conv, x: &[f32], side: usize, out: &mut [f32], epi: &Epilogue) {
    let (k, p, cin, cout) = (conv.k, conv.pad, conv.cin, conv.cout);
    let os = conv.out_side(side);
    let wp = side + 2 * p;
    let grid = os * wp; // output rows on the padded-width grid
    let direct = direct_kernel(cout);
    out.par_chunks_mut(os * os * cout)
        .enumerate()
        .for_each_init(
            || (Vec::<f32>::new(), Vec::<f32>::new()),
            |(pad, acc), (b, o)| {
                // padded image, plus slack rows read by the dropped columns of the last shifts
                // (k rows) and by the last pixel block of the direct kernel (DIRECT_PX rows)
                pad.clear();
                pad.resize((wp * wp + k + DIRECT_PX) * cin, 0.0);
                for y in 0..side {
                    let src = &x[(b * side + y) * side * cin..(b * side + y + 1) * side * cin];
                    let d0 = ((y + p) * wp + p) * cin;
                    pad[d0..d0 + side * cin].copy_from_slice(src);
                }
                match direct {
                    // SAFETY: the kernel was chosen for features this CPU has.
                    Some(f) => unsafe { f(pad, wp, k, cin, cout, os, &conv.weight, o) },
                    None => {
                        acc.resize(grid * cout, 0.0);
                        for ky in 0..k {
                            for kx in 0..k {
                                let shift = (ky * wp + kx) * cin;
                                let wrow = (ky * k + kx) * cin * cout;
                                // SAFETY: rows shift/cin .. shift/cin + grid of `pad` lie within
                                // its rows (slack above); the weight block is [cin, cout]; acc
                                // is [grid, cout].
                                unsafe {
                                    matmul(
                                        grid,
                                        cout,
                                        cin,
                                        acc.as_mut_ptr(),
                                        cout,
                                        pad.as_ptr().add(shift),
                                        (cin, 1),
                                        conv.weight.as_ptr().add(wrow),
                                        (cout, 1),
                                        ky + kx > 0,
                                    );
                                }
                            }
                        }
                        for oy in 0..os {
                            let src = &acc[oy * wp * cout..(oy * wp + os) * cout];
                            o[oy * os * cout..(oy + 1) * os * cout].copy_from_slice(src);
                        }
                    }
                }
                add_bias(o, conv.bias.as_deref(), cout);
                epi.apply(o, cout, b * os * os);
            },
        );
}

/// Adds a per-channel bias `[c]` to every row of `o: [rows, c]`.
pub(crate) fn add_bias(o: &mut [f32], bias: Option<&[f32]>, c: usize) {
    if let Some(bs) = bias {
        for r in o.chunks_exact_mut(c) {
            r.iter_mut().zip(bs).for_each(|(v, b)| *v += b);
        }
    }
}

/// Output pixels per register block of the direct kernel.
const DIRECT_PX: usize = 8;

/// Signature of the direct stride-1 kernel: (padded image, padded width, k, cin, cout, output
/// side, weights `[k*k*cin, cout]`, output `[os*os, cout]`).
type DirectFn = unsafe fn(&[f32], usize, usize, usize, usize, usize, &[f32], &mut [f32]);

/// The direct register-blocked kernel for this CPU, when `cout` is a multiple of 16 and the CPU
/// has FMA (AVX-512 or AVX2); `None` sends the conv to the shifted products.
fn direct_kernel(cout: usize) -> Option<DirectFn> {
    #[cfg(target_arch = "x86_64")]
    {
        if !cout.is_multiple_of(16) {
            return None;
        }
        if std::arch::is_x86_feature_detected!("avx512f") {
            return Some(direct_avx512);
        }
        if std::arch::is_x86_feature_detected!("avx2") && std::arch::is_x86_feature_detected!("fma")
        {
            return Some(direct_avx2);
        }
    }
    let _ = cout;
    None
}

/// The direct kernel compiled for one set of CPU features (the body is inlined into each).
macro_rules! direct_variant {
    ($name:ident, $features:literal) => {
        #[cfg(target_arch = "x86_64")]
        #[allow(clippy::too_many_arguments)]
        #[target_feature(enable = $features)]
        unsafe fn $name(
            pad: &[f32],
            wp: usize,
            k: usize,
            cin: usize,
            cout: usize,
            os: usize,
            w: &[f32],
            o: &mut [f32],
        ) {
            direct_body(pad, wp, k, cin, cout, os, w, o)
        }
    };
}
direct_variant!(direct_avx512, "avx512f,fma");
direct_variant!(direct_avx2, "avx2,fma");

/// Direct stride-1 convolution of one zero-padded image: for each block of [`DIRECT_PX`]
/// output pixels and 16 output channels, `acc[p][j] += x[p, tap, ci] * w[tap, ci, j]` over every
/// kernel tap and input channel, accumulators held in registers (fused multiply-adds).
#[allow(clippy::too_many_arguments)]
#[inline(always)]
fn direct_body(
    pad: &[f32],
    wp: usize,
    k: usize,
    cin: usize,
    cout: usize,
    os: usize,
    w: &[f32],
    o: &mut [f32],
) {
    for oy in 0..os {
        for cb in (0..cout).step_by(16) {
            let mut ox0 = 0;
            while ox0 < os {
                let np = DIRECT_PX.min(os - ox0);
                let mut acc = [[0f32; 16]; DIRECT_PX];
                for ky in 0..k {
                    for kx in 0..k {
                        let xb = ((oy + ky) * wp + ox0 + kx) * cin;
                        let wb = (ky * k + kx) * cin * cout + cb;
                        assert!(xb + DIRECT_PX * cin <= pad.len());
                        assert!(wb + cin * cout <= w.len() + cout - 16);
                        for ci in 0..cin {
                            // SAFETY: in bounds by the two asserts above (ci < cin, p < PX).
                            let wv: [f32; 16] = unsafe {
                                std::ptr::read_unaligned(w.as_ptr().add(wb + ci * cout).cast())
                            };
                            for (p, a) in acc.iter_mut().enumerate() {
                                let xv = unsafe { *pad.get_unchecked(xb + p * cin + ci) };
                                for j in 0..16 {
                                    a[j] = xv.mul_add(wv[j], a[j]);
                                }
                            }
                        }
                    }
                }
                for (p, a) in acc.iter().enumerate().take(np) {
                    let d = ((oy * os) + ox0 + p) * cout + cb;
                    o[d..d + 16].copy_from_slice(a);
                }
                ox0 += DIRECT_PX;
            }
        }
    }
}

/// Patch rows (output pixels in NHWC order) of NHWC `x: [batch, side, side,
/// cin]` for `conv`'s geometry, as `[n, k*k*cin]` (row layout of [`Conv::weight`]).
/// Rows `start, start + stride, ...` (`n` of them) are taken.
pub fn patches(
    conv: &Conv,
    x: &[f32],
    side: usize,
    start: usize,
    stride: usize,
    n: usize,
) -> Vec<f32> {
    let mut buf = vec![0f32; n * conv.k * conv.k * conv.cin];
    let os = conv.out_side(side);
    im2col_rows(conv, x, side, os, n, |r| start + r * stride, &mut buf);
    buf
}

/// `x W` for `x: [rows, k]` and `w: [k, m]` (both row-major): `[rows, m]`, parallel over
/// fixed row blocks.
pub fn matmul_rows(x: &[f32], k: usize, w: &[f32], m: usize) -> Vec<f32> {
    assert_eq!(w.len(), k * m, "matmul_rows: weight size");
    let rows = x.len() / k.max(1);
    let mut out = vec![0f32; rows * m];
    if m == 0 || rows == 0 {
        return out;
    }
    out.par_chunks_mut(1024 * m).enumerate().for_each(|(i, o)| {
        let n = o.len() / m;
        let lhs = &x[i * 1024 * k..(i * 1024 + n) * k];
        // SAFETY: lhs [n, k], w [k, m], o [n, m], row-major and in bounds.
        unsafe {
            matmul(
                n,
                m,
                k,
                o.as_mut_ptr(),
                m,
                lhs.as_ptr(),
                (k, 1),
                w.as_ptr(),
                (m, 1),
                false,
            );
        }
    });
    out
}

/// `A^T B` for `a: [n, p]` and `b: [n, q]` (row-major): `[p, q]`, summed in f32 over the `n`
/// rows.
pub fn matmul_tn(a: &[f32], p: usize, b: &[f32], q: usize) -> Vec<f32> {
    let n = a.len() / p.max(1);
    assert_eq!(b.len(), n * q, "matmul_tn: row counts differ");
    let mut out = vec![0f32; p * q];
    if n == 0 || p == 0 || q == 0 {
        return out;
    }
    // SAFETY: lhs(i, kk) = a[kk * p + i] (a transposed, [p, n]), rhs [n, q], out [p, q].
    unsafe {
        matmul(
            p,
            q,
            n,
            out.as_mut_ptr(),
            q,
            a.as_ptr(),
            (1, p),
            b.as_ptr(),
            (q, 1),
            false,
        );
    }
    out
}

/// Patch rows `row0..row0+n` of `x` into `buf: [n, k*k*cin]`.
fn im2col(conv: &Conv, x: &[f32], side: usize, os: usize, row0: usize, n: usize, buf: &mut [f32]) {
    im2col_rows(conv, x, side, os, n, |r| row0 + r, buf)
}

/// [`im2col`] of the output pixels `row_of(0..n)`.
#[inline(always)]
fn im2col_rows(
    conv: &Conv,
    x: &[f32],
    side: usize,
    os: usize,
    n: usize,
    row_of: impl Fn(usize) -> usize,
    buf: &mut [f32],
) {
    let (k, cin, s, p) = (conv.k, conv.cin, conv.stride, conv.pad);
    let kk = k * k * cin;
    for r in 0..n {
        let g = row_of(r);
        let b = g / (os * os);
        let rem = g % (os * os);
        let (oy, ox) = (rem / os, rem % os);
        let row = &mut buf[r * kk..(r + 1) * kk];
        for ky in 0..k {
            let iy = (oy * s + ky) as isize - p as isize;
            let seg = &mut row[ky * k * cin..(ky + 1) * k * cin];
            if iy < 0 || iy >= side as isize {
                seg.fill(0.0);
                continue;
            }
            let ix0 = (ox * s) as isize - p as isize;
            let base = (b * side + iy as usize) * side;
            if ix0 >= 0 && ix0 as usize + k <= side {
                // the k pixels of this kernel row are contiguous in NHWC: one copy
                let src = (base + ix0 as usize) * cin;
                seg.copy_from_slice(&x[src..src + k * cin]);
            } else {
                for kx in 0..k {
                    let ix = ix0 + kx as isize;
                    let dst = &mut seg[kx * cin..(kx + 1) * cin];
                    if ix < 0 || ix >= side as isize {
                        dst.fill(0.0);
                    } else {
                        let src = (base + ix as usize) * cin;
                        dst.copy_from_slice(&x[src..src + cin]);
                    }
                }
            }
        }
    }
}

/// Number of fixed parts a row reduction is split into (independent of the thread count, so
/// the result's bits do not depend on it).
const PARTS: usize = 16;

/// Per-channel mean and biased variance of `x: [rows, c]` over its rows: one pass of f64 sums
/// and sums of squares on a fixed partition (`var = E[x^2] - mean^2` in f64, which loses
/// nothing that matters for f32 data). Returns `(mean, biased var)`.
pub fn channel_moments(x: &[f32], c: usize) -> (Vec<f64>, Vec<f64>) {
    let rows = x.len() / c;
    let part = rows.div_ceil(PARTS).max(1);
    let parts: Vec<(Vec<f64>, Vec<f64>)> = x
        .par_chunks(part * c)
        .map(|chunk| {
            let mut s = vec![0f64; c];
            let mut q = vec![0f64; c];
            for row in chunk.chunks_exact(c) {
                for ((s, q), v) in s.iter_mut().zip(q.iter_mut()).zip(row) {
                    let v = *v as f64;
                    *s += v;
                    *q += v * v;
                }
            }
            (s, q)
        })
        .collect();
    let (mut s, mut q) = (vec![0f64; c], vec![0f64; c]);
    for (ps, pq) in parts {
        s.iter_mut().zip(ps).for_each(|(t, v)| *t += v);
        q.iter_mut().zip(pq).for_each(|(t, v)| *t += v);
    }
    let n = rows.max(1) as f64;
    let mean: Vec<f64> = s.iter().map(|v| v / n).collect();
    let var = q
        .iter()
        .zip(&mean)
        .map(|(q, m)| (q / n - m * m).max(0.0))
        .collect();
    (mean, var)
}

/// Applies `epi` in place to `x: [rows, c]` (used after batch statistics are known).
pub fn apply_epilogue(x: &mut [f32], c: usize, epi: &Epilogue) {
    let block = 1024;
    x.par_chunks_mut(block * c)
        .enumerate()
        .for_each(|(i, o)| epi.apply(o, c, i * block));
}

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

/// Column sums `[o]` and the sum of outer products `X^T X` (`[o, o]`, row-major) of stacked
/// features `x: [n, o]` (non-finite values already zeroed): [`second_moment_parts`] of one part.
pub fn second_moment(x: &[f32], o: usize) -> (Vec<f64>, Vec<f64>) {
    second_moment_parts(&[x], o)
}

/// [`second_moment`] of features stacked from per-model parts without forming the stacked
/// matrix: `X = [P_0 | P_1 | ... ]` with every part `[n, c]` (row-major, non-finite values
/// already zeroed), `o = parts.len() * c`. Only the blocks `P_a^T P_b` with `a <= b` are
/// multiplied (the others are their transposes), each over fixed blocks of at most 256 rows in
/// f32 (the covariance keeps a relative error below 1e-6 against an f64 reference:
/// `tests/engine.rs`), accumulated in f64. The partition depends on `(n, c, parts)` alone, so
/// the result is the same bits on any thread count. Returns column sums `[o]` and `X^T X`
/// (`[o, o]`).
///
/// # Panics
/// If the parts differ in length or a length is not a multiple of `c`.
pub fn second_moment_parts(parts: &[&[f32]], c: usize) -> (Vec<f64>, Vec<f64>) {
    let np = parts.len();
    let n = parts.first().map_or(0, |p| p.len() / c.max(1));
    assert!(
        parts.iter().all(|p| p.len() == n * c),
        "second_moment_parts: parts of different sizes"
    );
    let o = np * c;
    const KB: usize = 256;
    // row tiles inside a block for wide spaces; row parts (k splits) for narrow ones
    let (tiles, kparts) = if c <= 256 {
        (1, PARTS.div_ceil(np * (np + 1) / 2).max(2))
    } else {
        (c.div_ceil(128), 1)
    };
    let tile = c.div_ceil(tiles);
    let kpart = n.div_ceil(kparts).max(1);
    let pairs: Vec<(usize, usize)> = (0..np).flat_map(|a| (a..np).map(move |b| (a, b))).collect();
    let tasks: Vec<(usize, usize, usize)> = (0..pairs.len())
        .flat_map(|pi| (0..tiles).flat_map(move |t| (0..kparts).map(move |kp| (pi, t, kp))))
        .collect();
    let results: Vec<Vec<f64>> = tasks
        .par_iter()
        .map(|&(pi, t, kp)| {
            let (a, b) = pairs[pi];
            let i0 = t * tile;
            let m = ((t + 1) * tile).min(c).saturating_sub(i0);
            let mut acc = vec![0f64; m * c];
            let mut tmp = vec![0f32; m * c];
            let (k0, k1) = ((kp * kpart).min(n), ((kp + 1) * kpart).min(n));
            let mut kb0 = k0;
            while kb0 < k1 && m > 0 {
                let kb = KB.min(k1 - kb0);
                let (pa, pb) = (&parts[a][kb0 * c..], &parts[b][kb0 * c..]);
                // SAFETY: lhs(i, kk) = P_a[(kb0+kk)*c + i0 + i], rhs(kk, j) = P_b[(kb0+kk)*c + j],
                // both within rows kb0..kb0+kb of their part; tmp is [m, c].
                unsafe {
                    matmul(
                        m,
                        c,
                        kb,
                        tmp.as_mut_ptr(),
                        c,
                        pa.as_ptr().add(i0),
                        (1, c),
                        pb.as_ptr(),
                        (c, 1),
                        false,
                    );
                }
                acc.iter_mut().zip(&tmp).for_each(|(x, v)| *x += *v as f64);
                kb0 += kb;
            }
            acc
        })
        .collect();
    let mut outer = vec![0f64; o * o];
    for (&(pi, t, _), r) in tasks.iter().zip(results) {
        let (a, b) = pairs[pi];
        let i0 = t * tile;
        for (ii, row) in r.chunks_exact(c).enumerate() {
            let i = a * c + i0 + ii;
            for (j, v) in row.iter().enumerate() {
                outer[i * o + b * c + j] += v;
            }
        }
    }
    // the lower blocks are the transposes of the upper ones
    for a in 0..np {
        for b in a + 1..np {
            for i in 0..c {
                for j in 0..c {
                    outer[(b * c + j) * o + a * c + i] = outer[(a * c + i) * o + b * c + j];
                }
            }
        }
    }
    let mut sum = Vec::with_capacity(o);
    for p in parts {
        sum.extend(channel_sums(p, c).0);
    }
    (sum, outer)
}

/// Whether every value of `x` is finite (no NaN, no infinity): a branch-free scan of the
/// exponent bits, in chunks of 1,024 values.
pub fn all_finite(x: &[f32]) -> bool {
    x.chunks(1024).all(|c| {
        c.iter().fold(0u32, |a, v| {
            a | ((v.to_bits() & 0x7f80_0000 == 0x7f80_0000) as u32)
        }) == 0
    })
}

/// Column sums of `x: [n, o]` in f64 (fixed partition).
fn channel_sums(x: &[f32], o: usize) -> (Vec<f64>, usize) {
    let n = x.len() / o;
    let part = n.div_ceil(PARTS).max(1);
    let parts: Vec<Vec<f64>> = x
        .par_chunks(part * o)
        .map(|chunk| {
            let mut acc = vec![0f64; o];
            for row in chunk.chunks_exact(o) {
                acc.iter_mut().zip(row).for_each(|(a, v)| *a += *v as f64);
            }
            acc
        })
        .collect();
    let mut tot = vec![0f64; o];
    for p in parts {
        tot.iter_mut().zip(p).for_each(|(t, v)| *t += v);
    }
    (tot, n)
}

/// A seeded stream of values uniform in [-0.5, 0.5) (an LCG; test inputs only).
#[cfg(test)]
pub(crate) fn uniform(seed: u64) -> impl FnMut() -> f32 {
    let mut st = seed;
    move || {
        st = st
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        ((st >> 40) as f32 / (1u64 << 24) as f32) - 0.5
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Direct convolution in NCHW from PyTorch-layout weights (the definition, written
    /// independently of im2col).
    #[allow(clippy::too_many_arguments)]
    fn naive(
        x: &[f32],
        b: usize,
        cin: usize,
        side: usize,
        w: &[f32],
        cout: usize,
        k: usize,
        s: usize,
        p: usize,
    ) -> (Vec<f32>, usize) {
        let os = (side + 2 * p - k) / s + 1;
        let mut y = vec![0f32; b * cout * os * os];
        for n in 0..b {
            for co in 0..cout {
                for oy in 0..os {
                    for ox in 0..os {
                        let mut acc = 0f64;
                        for ci in 0..cin {
                            for ky in 0..k {
                                for kx in 0..k {
                                    let iy = (oy * s + ky) as isize - p as isize;
                                    let ix = (ox * s + kx) as isize - p as isize;
                                    if iy >= 0
                                        && ix >= 0
                                        && (iy as usize) < side
                                        && (ix as usize) < side
                                    {
                                        acc += x[((n * cin + ci) * side + iy as usize) * side
                                            + ix as usize]
                                            as f64
                                            * w[((co * cin + ci) * k + ky) * k + kx] as f64;
                                    }
                                }
                            }
                        }
                        y[((n * cout + co) * os + oy) * os + ox] = acc as f32;
                    }
                }
            }
        }
        (y, os)
    }

    fn nchw_to_nhwc(x: &[f32], b: usize, c: usize, hw: usize) -> Vec<f32> {
        let mut y = vec![0f32; x.len()];
        for n in 0..b {
            for ch in 0..c {
                for p in 0..hw {
                    y[(n * hw + p) * c + ch] = x[(n * c + ch) * hw + p];
                }
            }
        }
        y
    }

    #[test]
    fn hand_sized_3x3_conv() {
        // 1 image, 1 channel, 3x3 input 1..9, kernel all ones, pad 1: each output is the sum of
        // the 3x3 neighbourhood: centre 45, corner (1+2+4+5) = 12, edge top-middle 1+2+3+4+5+6 = 21.
        let x: Vec<f32> = (1..=9).map(|v| v as f32).collect();
        let conv = Conv::from_torch("c", &[1.0; 9], &[1, 1, 3, 3], 1, 1, None);
        let mut y = vec![0f32; 9];
        conv_forward(&conv, &x, 1, 3, &mut y, &Epilogue::none());
        assert_eq!(
            y,
            vec![12.0, 21.0, 16.0, 27.0, 45.0, 33.0, 24.0, 39.0, 28.0]
        );
    }

    #[test]
    fn odd_sizes_strides_and_padding_match_the_definition() {
        let mut rnd = uniform(7);
        for &(b, cin, cout, side, k, s, p) in &[
            (2, 3, 5, 7, 3, 1, 1),
            (3, 4, 6, 9, 3, 2, 1),
            (1, 5, 3, 11, 7, 2, 3),
            (2, 6, 4, 5, 1, 2, 0),
            (2, 6, 4, 5, 1, 1, 0),
            (1, 2, 3, 4, 3, 1, 0),
            (2, 5, 16, 7, 3, 1, 1), // direct register-blocked path (cout % 16 == 0)
            (1, 3, 32, 6, 3, 1, 1), // direct, two channel blocks
            (1, 4, 16, 9, 5, 1, 2), // direct, 5x5
            (2, 9, 5, 7, 3, 1, 1),  // shifted products
            (1, 16, 8, 8, 3, 1, 1), // shifted products
            (1, 32, 16, 5, 3, 1, 1), // Winograd
        ] {
            let x: Vec<f32> = (0..b * cin * side * side).map(|_| rnd()).collect();
            let w: Vec<f32> = (0..cout * cin * k * k).map(|_| rnd()).collect();
            let (want, os) = naive(&x, b, cin, side, &w, cout, k, s, p);
            let conv = Conv::from_torch("c", &w, &[cout, cin, k, k], s, p, None);
            let xh = nchw_to_nhwc(&x, b, cin, side * side);
            let mut y = vec![0f32; b * os * os * cout];
            conv_forward(&conv, &xh, b, side, &mut y, &Epilogue::none());
            let want = nchw_to_nhwc(&want, b, cout, os * os);
            for (g, w) in y.iter().zip(&want) {
                assert!(
                    (g - w).abs() < 1e-5,
                    "{b} {cin} {cout} {side} {k} {s} {p}: {g} vs {w}"
                );
            }
        }
    }

    #[test]
    fn moments_and_second_moment_against_two_pass_f64() {
        // x: [n=3, o=2] = (1, 2), (3, -1), (5, 0): column sums 9, 1; X^T X =
        // [[1+9+25, 2-3+0], [., 4+1+0]] = [[35, -1], [-1, 5]]
        let x = [1.0f32, 2.0, 3.0, -1.0, 5.0, 0.0];
        let (s, xx) = second_moment(&x, 2);
        assert_eq!(s, vec![9.0, 1.0]);
        assert_eq!(xx, vec![35.0, -1.0, -1.0, 5.0]);
        let (m, v) = channel_moments(&x, 2);
        assert_eq!(m, vec![3.0, 1.0 / 3.0]);
        // var of (1, 3, 5) = 8/3; of (2, -1, 0): mean 1/3, deviations 5/3, -4/3, -1/3 -> 42/27
        assert!((v[0] - 8.0 / 3.0).abs() < 1e-12 && (v[1] - 42.0 / 27.0).abs() < 1e-12);
    }

    #[test]
    fn second_moment_of_parts_equals_the_stacked_one() {
        // hand case: P0 = [(1), (3), (5)], P1 = [(2), (-1), (0)] is the stacked x above
        let (s, xx) = second_moment_parts(&[&[1.0, 3.0, 5.0], &[2.0, -1.0, 0.0]], 1);
        assert_eq!(s, vec![9.0, 1.0]);
        assert_eq!(xx, vec![35.0, -1.0, -1.0, 5.0]);
        // random parts (3 models, c = 5, n = 1300 rows: several 256-row blocks) against the
        // stacked kernel and a plain f64 double loop
        let (np, c, n) = (3, 5, 1300);
        let mut u = uniform(7);
        let parts: Vec<Vec<f32>> = (0..np).map(|_| (0..n * c).map(|_| u()).collect()).collect();
        let o = np * c;
        let mut stacked = vec![0f32; n * o];
        for r in 0..n {
            for (m, p) in parts.iter().enumerate() {
                stacked[r * o + m * c..r * o + (m + 1) * c].copy_from_slice(&p[r * c..(r + 1) * c]);
            }
        }
        let refs: Vec<&[f32]> = parts.iter().map(Vec::as_slice).collect();
        let (s1, x1) = second_moment_parts(&refs, c);
        let (s2, x2) = second_moment(&stacked, o);
        for i in 0..o {
            assert!((s1[i] - s2[i]).abs() < 1e-9);
            for j in 0..o {
                let exact: f64 = (0..n)
                    .map(|r| stacked[r * o + i] as f64 * stacked[r * o + j] as f64)
                    .sum();
                assert!(
                    (x1[i * o + j] - exact).abs() < 1e-4 * (1.0 + exact.abs()),
                    "{i} {j}"
                );
                assert!((x1[i * o + j] - x2[i * o + j]).abs() < 1e-4, "{i} {j}");
                assert_eq!(x1[i * o + j], x1[j * o + i]);
            }
        }
    }

    #[test]
    fn all_finite_finds_every_nan_and_infinity() {
        let mut x = vec![1.5f32; 3000];
        assert!(all_finite(&x));
        assert!(all_finite(&[
            f32::MAX,
            -f32::MAX,
            f32::MIN_POSITIVE,
            0.0,
            -0.0,
            1e-45
        ]));
        for (i, bad) in [
            (0, f32::NAN),
            (1023, f32::INFINITY),
            (1024, f32::NEG_INFINITY),
            (2999, -f32::NAN),
        ] {
            x[i] = bad;
            assert!(!all_finite(&x), "{i}");
            x[i] = 1.5;
        }
    }

    #[test]
    fn max_pool_pads_with_minus_infinity() {
        // 1 image, 1 channel, 3x3 of -1..-9, k3 s2 p1 -> 2x2; top-left window covers
        // (-1, -2, -4, -5) -> -1; the others (-2, -3, -5, -6), (-4, -5, -7, -8), (-5, -6, -8, -9)
        let x: Vec<f32> = (1..=9).map(|v| -(v as f32)).collect();
        let (y, os) = max_pool(&x, 1, 3, 1, 3, 2, 1);
        assert_eq!((os, y), (2, vec![-1.0, -2.0, -4.0, -5.0]));
    }
}
