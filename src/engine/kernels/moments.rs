//! Per-channel reductions on a fixed partition (the bits do not depend on the thread count):
//! batch mean and variance of BN in train mode, the streamed second moment of stacked
//! features, and the finiteness scan.

use rayon::prelude::*;

use super::gemm::matmul;

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
            moment_sums(chunk, &mut s, &mut q);
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

/// Adds the per-channel sums and sums of squares (f64) of `x: [rows, c]` to `s, q: [c]`.
fn moment_sums(x: &[f32], s: &mut [f64], q: &mut [f64]) {
    super::simd::dispatch!(moment_sums_body, (x: &[f32], s: &mut [f64], q: &mut [f64]))
}

#[inline(always)]
fn moment_sums_body(x: &[f32], s: &mut [f64], q: &mut [f64]) {
    for row in x.chunks_exact(s.len()) {
        for ((s, q), v) in s.iter_mut().zip(q.iter_mut()).zip(row) {
            let v = *v as f64;
            *s += v;
            *q += v * v;
        }
    }
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
