//! Winograd F(2x2, 3x3) convolution (Lavin & Gray, "Fast Algorithms for Convolutional Neural
//! Networks", CVPR 2016) for 3x3 stride-1 pad-1 convs on NHWC activations: 2.25x fewer
//! multiplies than im2col. Each 2x2 output tile is computed from a 4x4 input tile `d` as
//! `Y = A^T [ sum_ci (G g G^T) . (B^T d B) ] A`; the sum over input channels is 16 matrix
//! products `[tiles, cin] x [cin, cout]` through `gemm`, one per transformed position.
//!
//! `B^T = [[1,0,-1,0],[0,1,1,0],[0,-1,1,0],[0,1,0,-1]]`,
//! `G = [[1,0,0],[1/2,1/2,1/2],[1/2,-1/2,1/2],[0,0,1]]`, `A^T = [[1,1,1,0],[0,1,-1,-1]]`.

use rayon::prelude::*;

use super::kernels::{add_bias, matmul, Epilogue};

/// Transformed weights of a 3x3 conv: `u[k]` is `[cin, cout]` for the 16 positions k = 4*i + j
/// of `G g G^T`.
#[derive(Clone, Debug)]
pub struct WinogradWeights {
    /// Input channels.
    pub cin: usize,
    /// Output channels.
    pub cout: usize,
    /// `[16, cin, cout]` row-major.
    pub u: Vec<f32>,
}

impl WinogradWeights {
    /// From PyTorch-layout weights `[cout, cin, 3, 3]`; the transform is computed in f64.
    pub fn from_torch(w: &[f32], cout: usize, cin: usize) -> Self {
        const G: [[f64; 3]; 4] = [
            [1.0, 0.0, 0.0],
            [0.5, 0.5, 0.5],
            [0.5, -0.5, 0.5],
            [0.0, 0.0, 1.0],
        ];
        let mut u = vec![0f32; 16 * cin * cout];
        for co in 0..cout {
            for ci in 0..cin {
                let g = |y: usize, x: usize| w[((co * cin + ci) * 3 + y) * 3 + x] as f64;
                // t = G g  (4x3), then t G^T (4x4)
                let mut t = [[0f64; 3]; 4];
                for (i, row) in t.iter_mut().enumerate() {
                    for (x, v) in row.iter_mut().enumerate() {
                        *v = (0..3).map(|y| G[i][y] * g(y, x)).sum();
                    }
                }
                for i in 0..4 {
                    for j in 0..4 {
                        let v: f64 = (0..3).map(|x| t[i][x] * G[j][x]).sum();
                        u[((i * 4 + j) * cin + ci) * cout + co] = v as f32;
                    }
                }
            }
        }
        Self { cin, cout, u }
    }
}

/// Output pointer shared by the tasks: each task writes the pixels of its own tiles only.
#[derive(Clone, Copy)]
struct OutPtr(*mut f32);
// SAFETY: tasks write disjoint pixels (distinct tiles), see `conv3x3`.
unsafe impl Send for OutPtr {}
unsafe impl Sync for OutPtr {}

/// `out = epilogue(conv3x3(x) + bias)` for NHWC `x: [batch, side, side, cin]` ->
/// `out: [batch, side, side, cout]` (stride 1, padding 1).
pub fn conv3x3(
    w: &WinogradWeights,
    bias: Option<&[f32]>,
    x: &[f32],
    batch: usize,
    side: usize,
    out: &mut [f32],
    epi: &Epilogue,
) {
    let (cin, cout) = (w.cin, w.cout);
    let tps = side.div_ceil(2); // tiles per side
    let tiles = batch * tps * tps;
    // tiles per task: V and M of a task stay within ~1 MiB
    let block = ((1usize << 20) / (64 * (cin + cout))).clamp(32, 512);
    let ptr = OutPtr(out.as_mut_ptr());
    let n_tasks = tiles.div_ceil(block);
    (0..n_tasks).into_par_iter().for_each_init(
        || (Vec::<f32>::new(), Vec::<f32>::new()),
        |(v, m), task| {
            let t0 = task * block;
            let nt = block.min(tiles - t0);
            v.resize(16 * nt * cin, 0.0);
            m.resize(16 * nt * cout, 0.0);
            input_transform(x, side, tps, cin, t0, nt, v);
            for k in 0..16 {
                // SAFETY: v[k] is [nt, cin], u[k] is [cin, cout], m[k] is [nt, cout].
                unsafe {
                    matmul(
                        nt,
                        cout,
                        cin,
                        m.as_mut_ptr().add(k * nt * cout),
                        cout,
                        v.as_ptr().add(k * nt * cin),
                        (cin, 1),
                        w.u.as_ptr().add(k * cin * cout),
                        (cout, 1),
                        false,
                    );
                }
            }
            let p = ptr;
            output_transform(m, side, tps, cout, t0, nt, bias, epi, p);
        },
    );
}

/// `o = a - b`, `o = a + b` on channel vectors (written as zips so they vectorise).
#[inline(always)]
fn sub(o: &mut [f32], a: &[f32], b: &[f32]) {
    o.iter_mut()
        .zip(a.iter().zip(b))
        .for_each(|(o, (a, b))| *o = a - b);
}
#[inline(always)]
fn add(o: &mut [f32], a: &[f32], b: &[f32]) {
    o.iter_mut()
        .zip(a.iter().zip(b))
        .for_each(|(o, (a, b))| *o = a + b);
}

/// `V = B^T d B` for tiles `t0..t0+nt` into `v: [16, nt, cin]`.
fn input_transform(
    x: &[f32],
    side: usize,
    tps: usize,
    cin: usize,
    t0: usize,
    nt: usize,
    v: &mut [f32],
) {
    let zeros = vec![0f32; cin];
    let mut t = vec![0f32; 16 * cin];
    for ti in 0..nt {
        let g = t0 + ti;
        let b = g / (tps * tps);
        let (ty, tx) = ((g % (tps * tps)) / tps, g % tps);
        // the 16 input pixels of the tile, read in place (zeros outside the image)
        let px = |k: usize| -> &[f32] {
            let iy = (2 * ty + k / 4) as isize - 1;
            let ix = (2 * tx + k % 4) as isize - 1;
            if iy < 0 || ix < 0 || iy >= side as isize || ix >= side as isize {
                &zeros
            } else {
                let src = ((b * side + iy as usize) * side + ix as usize) * cin;
                &x[src..src + cin]
            }
        };
        // t = B^T d: row i of t from rows of d (each "element" a channel vector)
        {
            let (r, tt) = (px, &mut t);
            for j in 0..4 {
                let (t0s, rest) = tt.split_at_mut(4 * cin);
                let (t1s, rest) = rest.split_at_mut(4 * cin);
                let (t2s, t3s) = rest.split_at_mut(4 * cin);
                let s = j * cin..(j + 1) * cin;
                sub(&mut t0s[s.clone()], r(j), r(8 + j));
                add(&mut t1s[s.clone()], r(4 + j), r(8 + j));
                sub(&mut t2s[s.clone()], r(8 + j), r(4 + j));
                sub(&mut t3s[s], r(4 + j), r(12 + j));
            }
        }
        // V = t B, written to v[k = 4i + j][ti]
        for i in 0..4 {
            let r = |j: usize| &t[(i * 4 + j) * cin..(i * 4 + j + 1) * cin];
            let at = |k: usize| ((k * nt) + ti) * cin;
            let (a0, a1, a2, a3) = (r(0), r(1), r(2), r(3));
            let k = i * 4;
            sub(&mut v[at(k)..at(k) + cin], a0, a2);
            add(&mut v[at(k + 1)..at(k + 1) + cin], a1, a2);
            sub(&mut v[at(k + 2)..at(k + 2) + cin], a2, a1);
            sub(&mut v[at(k + 3)..at(k + 3) + cin], a1, a3);
        }
    }
}

/// `Y = A^T M A` for tiles `t0..t0+nt` from `m: [16, nt, cout]`, then bias and the epilogue,
/// written to the output pixels of each tile (pixels past the edge of odd sides are dropped).
#[allow(clippy::too_many_arguments)]
fn output_transform(
    m: &[f32],
    side: usize,
    tps: usize,
    cout: usize,
    t0: usize,
    nt: usize,
    bias: Option<&[f32]>,
    epi: &Epilogue,
    out: OutPtr,
) {
    let mut t = vec![0f32; 8 * cout]; // A^T M: [2, 4, cout]
    let mut y = vec![0f32; cout];
    for ti in 0..nt {
        let mk = |k: usize| &m[(k * nt + ti) * cout..(k * nt + ti + 1) * cout];
        {
            let (ta, tb) = t.split_at_mut(4 * cout);
            for j in 0..4 {
                let s = j * cout..(j + 1) * cout;
                let (m0, m1, m2, m3) = (mk(j), mk(4 + j), mk(8 + j), mk(12 + j));
                ta[s.clone()]
                    .iter_mut()
                    .zip(m0.iter().zip(m1.iter().zip(m2)))
                    .for_each(|(o, (a, (b, c)))| *o = a + b + c);
                tb[s]
                    .iter_mut()
                    .zip(m1.iter().zip(m2.iter().zip(m3)))
                    .for_each(|(o, (a, (b, c)))| *o = a - b - c);
            }
        }
        let g = t0 + ti;
        let b = g / (tps * tps);
        let (ty, tx) = ((g % (tps * tps)) / tps, g % tps);
        for i in 0..2 {
            let oy = 2 * ty + i;
            if oy >= side {
                continue;
            }
            let r = &t[i * 4 * cout..(i + 1) * 4 * cout];
            let (a0, a1, a2, a3) = (
                &r[..cout],
                &r[cout..2 * cout],
                &r[2 * cout..3 * cout],
                &r[3 * cout..],
            );
            for j in 0..2 {
                let ox = 2 * tx + j;
                if ox >= side {
                    continue;
                }
                if j == 0 {
                    y.iter_mut()
                        .zip(a0.iter().zip(a1.iter().zip(a2)))
                        .for_each(|(o, (a, (b, c)))| *o = a + b + c);
                } else {
                    y.iter_mut()
                        .zip(a1.iter().zip(a2.iter().zip(a3)))
                        .for_each(|(o, (a, (b, c)))| *o = a - b - c);
                }
                add_bias(&mut y, bias, cout);
                let row = (b * side + oy) * side + ox;
                epi.apply(&mut y, cout, row);
                // SAFETY: `row` is a pixel of this task's own tile; rows of distinct tiles
                // are distinct, and `row * cout + cout <= out.len()`.
                unsafe {
                    std::ptr::copy_nonoverlapping(y.as_ptr(), out.0.add(row * cout), cout);
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::engine::kernels::{conv_forward, uniform, Conv};

    /// Hand-sized case: a 4x4 single-channel input 1..16 and the kernel with a single 1 at
    /// the centre (identity) gives the input back; the all-ones kernel gives 3x3 box sums
    /// (corner (0,0): 1+2+5+6 = 14; (1,1): 1+2+3+5+6+7+9+10+11 = 54).
    #[test]
    fn hand_sized_4x4_input() {
        let x: Vec<f32> = (1..=16).map(|v| v as f32).collect();
        let mut id = [0f32; 9];
        id[4] = 1.0;
        let w = WinogradWeights::from_torch(&id, 1, 1);
        let mut y = vec![0f32; 16];
        conv3x3(&w, None, &x, 1, 4, &mut y, &Epilogue::none());
        assert_eq!(y, x);
        let w = WinogradWeights::from_torch(&[1.0; 9], 1, 1);
        conv3x3(&w, None, &x, 1, 4, &mut y, &Epilogue::none());
        assert_eq!(y[0], 14.0);
        assert_eq!(y[5], 54.0);
    }

    /// Odd sides, several channels, bias and a fused epilogue: equal to the im2col path.
    #[test]
    fn matches_im2col_on_odd_sizes() {
        let mut rnd = uniform(11);
        for &(b, cin, cout, side) in &[(2, 3, 5, 7), (1, 8, 4, 5), (3, 5, 9, 8), (1, 2, 3, 1)] {
            let x: Vec<f32> = (0..b * side * side * cin).map(|_| rnd()).collect();
            let w: Vec<f32> = (0..cout * cin * 9).map(|_| rnd()).collect();
            let bias: Vec<f32> = (0..cout).map(|_| rnd()).collect();
            let scale: Vec<f32> = (0..cout).map(|_| rnd() + 1.0).collect();
            let res: Vec<f32> = (0..b * side * side * cout).map(|_| rnd()).collect();
            let epi = Epilogue {
                scale: Some(&scale),
                shift: None,
                residual: Some(&res),
                relu: true,
            };
            let mut conv = Conv::from_torch("c", &w, &[cout, cin, 3, 3], 1, 1, Some(bias.clone()));
            conv.winograd = None; // the im2col path
            let mut want = vec![0f32; b * side * side * cout];
            conv_forward(&conv, &x, b, side, &mut want, &epi);
            let wg = WinogradWeights::from_torch(&w, cout, cin);
            let mut got = vec![0f32; want.len()];
            conv3x3(&wg, Some(&bias), &x, b, side, &mut got, &epi);
            for (g, w) in got.iter().zip(&want) {
                assert!((g - w).abs() < 1e-5, "{b} {cin} {cout} {side}: {g} vs {w}");
            }
        }
    }
}
