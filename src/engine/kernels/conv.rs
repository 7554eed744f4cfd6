//! Convolution on channels-last (NHWC) activations: im2col + `gemm` (1x1 stride-1 convs read
//! the activations directly), a direct register-blocked kernel for small stride-1 convs, and
//! Winograd for 3x3 stride 1 ([`super::winograd`]), each with the fused [`Epilogue`].

use rayon::prelude::*;

use super::gemm::{add_bias, matmul, Epilogue};
use super::scratch::Scratch;

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
        .for_each_init(Scratch::default, |buf, (i, o)| {
            let row0 = i * block;
            let n = o.len() / cout;
            let lhs: &[f32] = if direct {
                &x[row0 * kk..(row0 + n) * kk]
            } else {
                let buf = buf.slice(n * kk);
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
            || (Scratch::default(), Scratch::default()),
            |(pad, acc), (b, o)| {
                let pad = pad.vec();
                // padded image, plus slack rows read by the dropped columns of the last shifts
                // (k rows) and by the last pixel block of the direct kernel (DIRECT_PX rows)
                let len = (wp * wp + k + DIRECT_PX) * cin;
                if pad.len() == len {
                    // a worker's earlier image of the same shape: only the border is not
                    // overwritten below
                    let row = wp * cin;
                    pad[..p * row].fill(0.0);
                    pad[(p + side) * row..].fill(0.0);
                    for y in p..p + side {
                        pad[y * row..y * row + p * cin].fill(0.0);
                        pad[y * row + (p + side) * cin..(y + 1) * row].fill(0.0);
                    }
                } else {
                    pad.clear();
                    pad.resize(len, 0.0);
                }
                for y in 0..side {
                    let src = &x[(b * side + y) * side * cin..(b * side + y + 1) * side * cin];
                    let d0 = ((y + p) * wp + p) * cin;
                    pad[d0..d0 + side * cin].copy_from_slice(src);
                }
                match direct {
                    // SAFETY: the kernel was chosen for features this CPU has.
                    Some(f) => unsafe { f(pad, wp, k, cin, cout, os, &conv.weight, o) },
                    None => {
                        let acc = acc.slice(grid * cout);
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

/// Patch rows `row0..row0+n` of `x` into `buf: [n, k*k*cin]`.
pub(crate) fn im2col(
    conv: &Conv,
    x: &[f32],
    side: usize,
    os: usize,
    row0: usize,
    n: usize,
    buf: &mut [f32],
) {
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
