//! Matrix products of the CPU engine through `gemm` (single-threaded calls on fixed row
//! blocks, parallel over blocks with rayon) and the per-channel epilogue applied after them
//! (BN affine / bias, residual add, ReLU). The floor of the kernels: it imports none of them.

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

/// Adds a per-channel bias `[c]` to every row of `o: [rows, c]`.
pub(crate) fn add_bias(o: &mut [f32], bias: Option<&[f32]>, c: usize) {
    if let Some(bs) = bias {
        for r in o.chunks_exact_mut(c) {
            r.iter_mut().zip(bs).for_each(|(v, b)| *v += b);
        }
    }
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

/// `dst = epi(src)` for `src, dst: [rows, c]`: [`apply_epilogue`] without a separate copy pass
/// (a BN affine map in one pass, other epilogues on a copy of each block while in cache;
/// training keeps the raw conv output for BN's backward).
pub fn apply_epilogue_from(src: &[f32], dst: &mut [f32], c: usize, epi: &Epilogue) {
    let block = 1024;
    dst.par_chunks_mut(block * c)
        .zip(src.par_chunks(block * c))
        .enumerate()
        .for_each(|(i, (o, z))| match (epi.scale, epi.shift) {
            (Some(scale), Some(shift)) => {
                let res = epi
                    .residual
                    .map(|r| &r[i * block * c..i * block * c + o.len()]);
                let a = Affine {
                    scale,
                    shift,
                    res,
                    relu: epi.relu,
                };
                affine_from(z, o, &a);
            }
            _ => {
                o.copy_from_slice(z);
                epi.apply(o, c, i * block);
            }
        });
}

/// The BN affine map of a train-mode epilogue: `scale, shift: [c]`, an optional residual
/// `[rows, c]` (the block's rows), ReLU or not.
struct Affine<'a> {
    scale: &'a [f32],
    shift: &'a [f32],
    res: Option<&'a [f32]>,
    relu: bool,
}

/// `o = relu?(z * scale + shift (+ res))` row by row for `z, o: [rows, c]`, in one pass: the
/// operations and their order of [`Epilogue::apply`] on a copy of `z`, so the same bits.
fn affine_from(z: &[f32], o: &mut [f32], a: &Affine) {
    super::simd::dispatch!(affine_from_body, (z: &[f32], o: &mut [f32], a: &Affine))
}

#[inline(always)]
fn affine_from_body(z: &[f32], o: &mut [f32], a: &Affine) {
    if a.relu {
        affine_rows::<true>(z, o, a)
    } else {
        affine_rows::<false>(z, o, a)
    }
}

#[inline(always)]
fn affine_rows<const RELU: bool>(z: &[f32], o: &mut [f32], a: &Affine) {
    let (scale, shift) = (a.scale, a.shift);
    let c = scale.len();
    let act = |v: f32| if RELU { v.max(0.0) } else { v };
    match a.res {
        Some(res) => {
            for ((o, z), r) in o
                .chunks_exact_mut(c)
                .zip(z.chunks_exact(c))
                .zip(res.chunks_exact(c))
            {
                for ((((o, z), s), b), r) in o.iter_mut().zip(z).zip(scale).zip(shift).zip(r) {
                    *o = act(z * s + b + r);
                }
            }
        }
        None => {
            for (o, z) in o.chunks_exact_mut(c).zip(z.chunks_exact(c)) {
                for (((o, z), s), b) in o.iter_mut().zip(z).zip(scale).zip(shift) {
                    *o = act(z * s + b);
                }
            }
        }
    }
}

/// Applies `epi` in place to `x: [rows, c]` (used after batch statistics are known).
pub fn apply_epilogue(x: &mut [f32], c: usize, epi: &Epilogue) {
    let block = 1024;
    x.par_chunks_mut(block * c)
        .enumerate()
        .for_each(|(i, o)| epi.apply(o, c, i * block));
}
