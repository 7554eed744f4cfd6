//! Blocked Cholesky factorisation and solves in f64 for the refit's normal equations (up to
//! `9 * 512 + 1` unknowns for VGG-11's widest convs), with the trailing updates and the
//! off-diagonal solves as `gemm` products. Results depend on the sizes alone, not on the
//! thread count.

use gemm::Parallelism;
use rayon::prelude::*;

/// Block size of the factorisation and solves.
const NB: usize = 128;

/// `dst[m, n] (row stride ld_dst) -= lhs * rhs`, where `lhs(i, kk) = lhs[i * ld_l + kk]`, or
/// `lhs[kk * ld_l + i]` when `lhs_t`, and `rhs(kk, j) = rt[j * ld_r + kk]` (the transpose of a
/// row-major `[n, k]` block) when `rhs_t`, else `rt[kk * ld_r + j]`.
///
/// # Safety
/// All three blocks must lie inside their slices; `dst` must not overlap the operands.
unsafe fn sub_mul(
    m: usize,
    n: usize,
    k: usize,
    dst: *mut f64,
    ld_dst: usize,
    (lhs, ld_l, lhs_t): (*const f64, usize, bool),
    (rt, ld_r, rhs_t): (*const f64, usize, bool),
) {
    if m == 0 || n == 0 || k == 0 {
        return;
    }
    let (lcs, lrs) = if lhs_t { (ld_l, 1) } else { (1, ld_l) };
    let (rcs, rrs) = if rhs_t { (ld_r, 1) } else { (1, ld_r) };
    // SAFETY: forwarded from the caller's contract.
    unsafe {
        gemm::gemm(
            m,
            n,
            k,
            dst,
            1,
            ld_dst as isize,
            true,
            lhs,
            lcs as isize,
            lrs as isize,
            rt,
            rcs as isize,
            rrs as isize,
            1.0,
            -1.0,
            false,
            false,
            false,
            Parallelism::Rayon(0),
        );
    }
}

/// In-place lower Cholesky factor `L` (`A = L L^T`) of the symmetric positive definite
/// row-major `a: [n, n]` (the lower triangle is read and overwritten; the upper is scratch).
/// Returns false when `A` is not positive definite in floating point.
pub fn cholesky(a: &mut [f64], n: usize) -> bool {
    assert_eq!(a.len(), n * n, "cholesky: matrix size");
    let mut j0 = 0;
    while j0 < n {
        let jb = NB.min(n - j0);
        // the diagonal block (earlier blocks' contributions already subtracted)
        for j in j0..j0 + jb {
            let mut d = a[j * n + j];
            for k in j0..j {
                d -= a[j * n + k] * a[j * n + k];
            }
            if !(d > 0.0 && d.is_finite()) {
                return false;
            }
            let d = d.sqrt();
            a[j * n + j] = d;
            for i in j + 1..j0 + jb {
                let mut v = a[i * n + j];
                for k in j0..j {
                    v -= a[i * n + k] * a[j * n + k];
                }
                a[i * n + j] = v / d;
            }
        }
        let e = j0 + jb;
        if e < n {
            // panel rows below: L21 = A21 L11^-T, row by row
            let (head, tail) = a.split_at_mut(e * n);
            let diag = &head[j0 * n..];
            tail.par_chunks_mut(n).for_each(|row| {
                for j in j0..e {
                    let mut v = row[j];
                    for k in j0..j {
                        v -= row[k] * diag[(j - j0) * n + k];
                    }
                    row[j] = v / diag[(j - j0) * n + j];
                }
            });
            // trailing update A22 -= L21 L21^T (the full square; only its lower half is used)
            let m = n - e;
            let p = a.as_mut_ptr();
            // SAFETY: dst = a[e.., e..] and lhs = rhs^T = a[e.., j0..e] are disjoint column
            // ranges of the same rows, all inside `a`.
            unsafe {
                sub_mul(
                    m,
                    m,
                    jb,
                    p.add(e * n + e),
                    n,
                    (p.add(e * n + j0), n, false),
                    (p.add(e * n + j0), n, true),
                );
            }
        }
        j0 = e;
    }
    true
}

/// Solves `L L^T X = B` in place for the factor of [`cholesky`] and row-major `b: [n, k]`.
pub fn solve(l: &[f64], n: usize, b: &mut [f64], k: usize) {
    assert_eq!(b.len(), n * k, "solve: right-hand side size");
    // forward: L Y = B, by row blocks
    let mut i0 = 0;
    while i0 < n {
        let ib = NB.min(n - i0);
        let (done, rest) = b.split_at_mut(i0 * k);
        // SAFETY: dst = rest[0..ib, :], lhs = l[i0.., 0..i0], rhs = done[0..i0, :].
        unsafe {
            sub_mul(
                ib,
                k,
                i0,
                rest.as_mut_ptr(),
                k,
                (l.as_ptr().add(i0 * n), n, false),
                (done.as_ptr(), k, false),
            );
        }
        for i in 0..ib {
            for kk in 0..i {
                let f = l[(i0 + i) * n + i0 + kk];
                for j in 0..k {
                    rest[i * k + j] -= f * rest[kk * k + j];
                }
            }
            let d = l[(i0 + i) * n + i0 + i];
            rest[i * k..(i + 1) * k].iter_mut().for_each(|v| *v /= d);
        }
        i0 += ib;
    }
    // backward: L^T X = Y, by row blocks from the end
    let mut i1 = n;
    while i1 > 0 {
        let ib = NB.min(i1);
        let i0 = i1 - ib;
        let (head, solved) = b.split_at_mut(i1 * k);
        let cur = &mut head[i0 * k..];
        // rows i0..i1 of L^T times X[i1..]: (L^T)(i, r) = l[r * n + i]
        // SAFETY: dst = cur[0..ib, :], lhs(i, r) = l[(i1 + r) * n + i0 + i] (column stride n),
        // rhs = solved[0..n-i1, :].
        unsafe {
            sub_mul(
                ib,
                k,
                n - i1,
                cur.as_mut_ptr(),
                k,
                (l.as_ptr().add(i1 * n + i0), n, true),
                (solved.as_ptr(), k, false),
            );
        }
        for i in (0..ib).rev() {
            for r in i + 1..ib {
                let f = l[(i0 + r) * n + i0 + i];
                for j in 0..k {
                    cur[i * k + j] -= f * cur[r * k + j];
                }
            }
            let d = l[(i0 + i) * n + i0 + i];
            cur[i * k..(i + 1) * k].iter_mut().for_each(|v| *v /= d);
        }
        i1 = i0;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A 3x3 system with a hand-computed factor: A = L L^T for L = [[2,0,0],[1,3,0],[-1,2,1]],
    /// so A = [[4,2,-2],[2,10,5],[-2,5,6]]; B = A * [1, -1, 2]^T = [-2, 2, 5].
    #[test]
    fn hand_sized_factor_and_solve() {
        let mut a = vec![4.0, 2.0, -2.0, 2.0, 10.0, 5.0, -2.0, 5.0, 6.0];
        assert!(cholesky(&mut a, 3));
        let l = [a[0], a[3], a[4], a[6], a[7], a[8]];
        assert_eq!(l, [2.0, 1.0, 3.0, -1.0, 2.0, 1.0]);
        let mut b = vec![-2.0, 2.0, 5.0];
        solve(&a, 3, &mut b, 1);
        for (x, want) in b.iter().zip([1.0, -1.0, 2.0]) {
            assert!((x - want).abs() < 1e-12, "{x} vs {want}");
        }
        // not positive definite
        let mut bad = vec![1.0, 2.0, 2.0, 1.0];
        assert!(!cholesky(&mut bad, 2));
    }

    /// Blocked (n = 300 > 2 blocks) against the residual: A X = B to round-off for a random
    /// SPD A = G G^T + n I and three right-hand sides.
    #[test]
    fn blocked_solve_has_small_residual() {
        let n = 300;
        let mut seed = 7u64;
        let mut rnd = || {
            seed = seed
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            ((seed >> 11) as f64 / (1u64 << 53) as f64) - 0.5
        };
        let g: Vec<f64> = (0..n * n).map(|_| rnd()).collect();
        let mut a = vec![0.0; n * n];
        for i in 0..n {
            for j in 0..n {
                a[i * n + j] = (0..n).map(|k| g[i * n + k] * g[j * n + k]).sum::<f64>()
                    + if i == j { n as f64 } else { 0.0 };
            }
        }
        let b: Vec<f64> = (0..n * 3).map(|_| rnd()).collect();
        let mut f = a.clone();
        assert!(cholesky(&mut f, n));
        let mut x = b.clone();
        solve(&f, n, &mut x, 3);
        for i in 0..n {
            for j in 0..3 {
                let ax: f64 = (0..n).map(|k| a[i * n + k] * x[k * 3 + j]).sum();
                assert!((ax - b[i * 3 + j]).abs() < 1e-9, "row {i} col {j}: {ax}");
            }
        }
    }
}
