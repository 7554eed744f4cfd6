//! Forward kernels of the CPU engine on channels-last (NHWC) activations: convolution by
//! im2col + `gemm` (1x1 stride-1 convs read the activations directly) with a fused BN / bias /
//! residual-add / ReLU epilogue, batch statistics of BN in train mode, max pooling, global
//! average pooling + linear, and the streamed second moment of stacked features.
//!
//! Parallelism is rayon over fixed row ranges of the output; every reduction has a fixed
//! partition independent of the thread count, so results are the same bits run to run.

pub mod backward;
pub mod conv;
pub mod gemm;
pub mod moments;
pub mod pool;
mod scratch;
mod simd;
pub mod winograd;

pub use conv::{conv_forward, patches, Conv};
pub(crate) use gemm::matmul;
pub use gemm::{apply_epilogue, apply_epilogue_from, matmul_rows, matmul_tn, Epilogue};
pub use moments::{all_finite, channel_moments, second_moment, second_moment_parts};
pub use pool::{max_pool, mean_pool, pool_linear};

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
