//! Winograd convolution (Lavin & Gray, "Fast Algorithms for Convolutional Neural Networks",
//! CVPR 2016) for 3x3 stride-1 pad-1 convs on NHWC activations, in two tile sizes:
//! - **F(2x2, 3x3)**: 2x2 output tiles from 4x4 input tiles, 16 products per tile, 2.25x fewer
//!   multiplies than im2col;
//! - **F(4x4, 3x3)**: 4x4 output tiles from 6x6 input tiles, 36 products per tile, 4x fewer
//!   multiplies (interpolation points 0, +-1, +-2, infinity; the round-off stays ~1e-6
//!   relative at the channel counts of ResNet-20/VGG-11/ResNet-50).
//!
//! Each output tile is `Y = A^T [ sum_ci (G g G^T) . (B^T d B) ] A`; the sum over input
//! channels is one matrix product `[tiles, cin] x [cin, cout]` through `gemm` per transformed
//! position. [`conv3x3`] takes F(4x4) on sides of at least 8 when `cin` is a multiple of 8,
//! F(2x2) otherwise.
//!
//! F(2x2): `B^T = [[1,0,-1,0],[0,1,1,0],[0,-1,1,0],[0,1,0,-1]]`,
//! `G = [[1,0,0],[1/2,1/2,1/2],[1/2,-1/2,1/2],[0,0,1]]`, `A^T = [[1,1,1,0],[0,1,-1,-1]]`.
//!
//! F(4x4): `B^T = [[4,0,-5,0,1,0],[0,-4,-4,1,1,0],[0,4,-4,-1,1,0],[0,-2,-1,2,1,0],
//! [0,2,-1,-2,1,0],[0,4,0,-5,0,1]]`, `G = [[1/4,0,0],[-1/6,-1/6,-1/6],[-1/6,1/6,-1/6],
//! [1/24,1/12,1/6],[1/24,-1/12,1/6],[0,0,1]]`, `A^T = [[1,1,1,1,1,0],[0,1,-1,2,-2,0],
//! [0,1,1,4,4,0],[0,1,-1,8,-8,1]]`.

use std::ops::{Add, Mul, Sub};
use std::sync::OnceLock;

use rayon::prelude::*;

use super::gemm::{add_bias, matmul, Epilogue};
use super::scratch::Scratch;
use super::simd::dispatch;

const G2: [[f64; 3]; 4] = [
    [1.0, 0.0, 0.0],
    [0.5, 0.5, 0.5],
    [0.5, -0.5, 0.5],
    [0.0, 0.0, 1.0],
];
const G4: [[f64; 3]; 6] = [
    [0.25, 0.0, 0.0],
    [-1.0 / 6.0, -1.0 / 6.0, -1.0 / 6.0],
    [-1.0 / 6.0, 1.0 / 6.0, -1.0 / 6.0],
    [1.0 / 24.0, 1.0 / 12.0, 1.0 / 6.0],
    [1.0 / 24.0, -1.0 / 12.0, 1.0 / 6.0],
    [0.0, 0.0, 1.0],
];

/// Transformed weights of a 3x3 conv for one tile size: `u[k]` is `[cin, cout]` for the
/// `(tile + 2)^2` positions k = (tile + 2) * i + j of `G g G^T`.
#[derive(Clone, Debug)]
pub struct WinogradWeights {
    /// Output tile side: 2 for F(2x2, 3x3), 4 for F(4x4, 3x3).
    pub tile: usize,
    /// Input channels.
    pub cin: usize,
    /// Output channels.
    pub cout: usize,
    /// `[(tile + 2)^2, cin, cout]` row-major.
    pub u: Vec<f32>,
}

impl WinogradWeights {
    /// F(2x2, 3x3) weights from PyTorch-layout weights `[cout, cin, 3, 3]`.
    pub fn from_torch(w: &[f32], cout: usize, cin: usize) -> Self {
        Self::new(2, cin, cout, |co, ci, y, x| {
            w[((co * cin + ci) * 3 + y) * 3 + x]
        })
    }

    /// Weights for tile side `tile` (2 or 4) from engine-layout weights `[9 * cin, cout]` (row
    /// `(ky * 3 + kx) * cin + ci`): the same f64 arithmetic, in the same order, as [`Self::new`]
    /// (so the same bits), vectorised over output channels and parallel over input channels
    /// (training transforms every conv's weights at every step).
    pub fn from_engine(tile: usize, cin: usize, cout: usize, weight: &[f32]) -> Self {
        use rayon::prelude::*;
        let gm: &[[f64; 3]] = if tile == 4 { &G4 } else { &G2 };
        let a = gm.len();
        let rows: Vec<Vec<f32>> = (0..cin)
            .into_par_iter()
            .map(|ci| {
                let g = |y: usize, x: usize| &weight[((y * 3 + x) * cin + ci) * cout..][..cout];
                // t[i][x] = sum_y G[i][y] g[y][x], per output channel
                let mut t = vec![0f64; a * 3 * cout];
                for i in 0..a {
                    for x in 0..3 {
                        let dst = &mut t[(i * 3 + x) * cout..(i * 3 + x + 1) * cout];
                        let (g0, g1, g2) = (g(0, x), g(1, x), g(2, x));
                        for co in 0..cout {
                            dst[co] = gm[i][0] * g0[co] as f64
                                + gm[i][1] * g1[co] as f64
                                + gm[i][2] * g2[co] as f64;
                        }
                    }
                }
                let mut out = vec![0f32; a * a * cout];
                for i in 0..a {
                    for j in 0..a {
                        let dst = &mut out[(i * a + j) * cout..(i * a + j + 1) * cout];
                        let tr = |x: usize| &t[(i * 3 + x) * cout..(i * 3 + x + 1) * cout];
                        let (t0, t1, t2) = (tr(0), tr(1), tr(2));
                        for co in 0..cout {
                            dst[co] =
                                (t0[co] * gm[j][0] + t1[co] * gm[j][1] + t2[co] * gm[j][2]) as f32;
                        }
                    }
                }
                out
            })
            .collect();
        let mut u = vec![0f32; a * a * cin * cout];
        for (ci, r) in rows.iter().enumerate() {
            for ij in 0..a * a {
                u[(ij * cin + ci) * cout..(ij * cin + ci + 1) * cout]
                    .copy_from_slice(&r[ij * cout..(ij + 1) * cout]);
            }
        }
        Self { tile, cin, cout, u }
    }

    /// Weights for tile side `tile` (2 or 4) from `g(co, ci, ky, kx)`; the transform is
    /// computed in f64.
    pub fn new(
        tile: usize,
        cin: usize,
        cout: usize,
        g: impl Fn(usize, usize, usize, usize) -> f32,
    ) -> Self {
        let gm: &[[f64; 3]] = if tile == 4 { &G4 } else { &G2 };
        let a = gm.len();
        let mut u = vec![0f32; a * a * cin * cout];
        let mut t = vec![[0f64; 3]; a];
        for co in 0..cout {
            for ci in 0..cin {
                // t = G g  (a x 3), then t G^T (a x a)
                for (i, row) in t.iter_mut().enumerate() {
                    for (x, v) in row.iter_mut().enumerate() {
                        *v = (0..3).map(|y| gm[i][y] * g(co, ci, y, x) as f64).sum();
                    }
                }
                for i in 0..a {
                    for j in 0..a {
                        let v: f64 = (0..3).map(|x| t[i][x] * gm[j][x]).sum();
                        u[((i * a + j) * cin + ci) * cout + co] = v as f32;
                    }
                }
            }
        }
        Self { tile, cin, cout, u }
    }
}

/// The Winograd forms of one 3x3 stride-1 pad-1 conv, each transformed on first use from the
/// conv's `[9 * cin, cout]` weights (so a network run only at small sides never holds the
/// F(4x4) form, and one run only at large sides never holds the F(2x2) one).
#[derive(Clone, Debug)]
pub struct Winograd {
    cin: usize,
    cout: usize,
    f2: OnceLock<WinogradWeights>,
    f4: OnceLock<WinogradWeights>,
}

impl Winograd {
    /// For a conv with `cin` input and `cout` output channels.
    pub fn new(cin: usize, cout: usize) -> Self {
        Self {
            cin,
            cout,
            f2: OnceLock::new(),
            f4: OnceLock::new(),
        }
    }

    /// The tile side [`conv3x3`] uses at input side `side`: 4 when `side >= 8` and `cin` is a
    /// multiple of 8 (the F(4x4) transforms work on 8 channels at a time), 2 otherwise.
    pub fn tile_for(&self, side: usize) -> usize {
        if side >= 8 && self.cin.is_multiple_of(8) && self.cout.is_multiple_of(8) {
            4
        } else {
            2
        }
    }

    /// The transformed weights for tile side `tile`, from `weight: [9 * cin, cout]` (row
    /// `(ky * 3 + kx) * cin + ci`).
    pub fn weights(&self, tile: usize, weight: &[f32]) -> &WinogradWeights {
        let (cin, cout) = (self.cin, self.cout);
        let make = || WinogradWeights::from_engine(tile, cin, cout, weight);
        if tile == 4 {
            self.f4.get_or_init(make)
        } else {
            self.f2.get_or_init(make)
        }
    }
}

/// Output pointer shared by the tasks: each task writes the pixels of its own tiles only.
#[derive(Clone, Copy)]
struct OutPtr(*mut f32);
// SAFETY: tasks write disjoint pixels (distinct tiles), see `conv3x3`.
unsafe impl Send for OutPtr {}
unsafe impl Sync for OutPtr {}

/// The tiles one task transforms: tiles `t0..t0 + nt` of a batch of `side x side` images cut
/// into `tps x tps` tiles each (image-major, then tile rows, then tile columns).
#[derive(Clone, Copy)]
struct Tiles {
    side: usize,
    tps: usize,
    t0: usize,
    nt: usize,
}

impl Tiles {
    /// (image, tile row, tile column) of the task's `ti`-th tile.
    #[inline(always)]
    fn at(&self, ti: usize) -> (usize, usize, usize) {
        let g = self.t0 + ti;
        let per = self.tps * self.tps;
        (g / per, (g % per) / self.tps, g % self.tps)
    }
}

/// `out = epilogue(conv3x3(x) + bias)` for NHWC `x: [batch, side, side, cin]` ->
/// `out: [batch, side, side, cout]` (stride 1, padding 1), with the tile size of `w`.
pub fn conv3x3(
    w: &WinogradWeights,
    bias: Option<&[f32]>,
    x: &[f32],
    batch: usize,
    side: usize,
    out: &mut [f32],
    epi: &Epilogue,
) {
    let (cin, cout, tile) = (w.cin, w.cout, w.tile);
    let a = tile + 2;
    let pos = a * a;
    let tps = side.div_ceil(tile); // tiles per side
    let tiles = batch * tps * tps;
    // tiles per task: V and M of a task stay within ~4 MiB (1 MiB measured 10-15% slower at
    // ResNet-20 x4: the products get too few rows), and small batches (the statistics pass runs
    // sub-batches of ~20 images) still make at least ~8 tasks, so both cores stay busy. The
    // partition depends on the shapes alone, never on the thread count.
    let budget = ((4usize << 20) / (4 * pos * (cin + cout))).clamp(32, 512);
    let block = budget.min(tiles.div_ceil(8)).max(16);
    let ptr = OutPtr(out.as_mut_ptr());
    let n_tasks = tiles.div_ceil(block);
    let f4 = tile == 4;
    assert!(
        tile == 2 || (f4 && cin.is_multiple_of(8) && cout.is_multiple_of(8)),
        "F(4x4) needs channel counts that are multiples of 8 (Winograd::tile_for)"
    );
    (0..n_tasks).into_par_iter().for_each_init(
        || (Scratch::default(), Scratch::default()),
        |(v, m), task| {
            let t0 = task * block;
            let nt = block.min(tiles - t0);
            let r = Tiles { side, tps, t0, nt };
            let v = v.slice(pos * nt * cin);
            transformed_input(x, r, cin, f4, v);
            let m = m.slice(pos * nt * cout);
            for k in 0..pos {
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
            if f4 {
                output_transform_f4(m, r, cout, bias, epi, p);
            } else {
                output_transform(m, r, cout, bias, epi, p);
            }
        },
    );
}

/// `V = B^T d B` of the task's tiles `r` of `x` into `v: [positions, tiles, cin]` (every value
/// written), F(4x4) when `f4`, else F(2x2).
fn transformed_input(x: &[f32], r: Tiles, cin: usize, f4: bool, v: &mut [f32]) {
    if f4 {
        input_transform_f4(x, r, cin, v);
    } else {
        input_transform(x, r, cin, v);
    }
}

/// `A^T` of F(2x2, 3x3) (`[2, 4]`) and F(4x4, 3x3) (`[4, 6]`).
const AT2: [[f32; 4]; 2] = [[1.0, 1.0, 1.0, 0.0], [0.0, 1.0, -1.0, -1.0]];
const AT4: [[f32; 6]; 4] = [
    [1.0, 1.0, 1.0, 1.0, 1.0, 0.0],
    [0.0, 1.0, -1.0, 2.0, -2.0, 0.0],
    [0.0, 1.0, 1.0, 4.0, 4.0, 0.0],
    [0.0, 1.0, -1.0, 8.0, -8.0, 1.0],
];

/// Weight gradient of a 3x3 stride-1 pad-1 conv through Winograd (the transpose of the
/// forward's algebra: `Y = A^T [(G g G^T) . V] A` is linear in `U = G g G^T`, so
/// `dU = sum over tiles of (A dY A^T) . V` and `dg = G^T dU G`), for NHWC `x: [batch, side,
/// side, cin]` and `dy: [batch, side, side, cout]`; returns `dW` in the engine's layout
/// `[9 * cin, cout]`. The sum over tiles is one product `[cin, tiles] x [tiles, cout]` per
/// transformed position; tasks hold fixed tile ranges, their partial `dU` summed in order.
/// Tile side 4 (F(4x4): 2.25 products per pixel against im2col's 9) when `side >= 8` and
/// the channel counts are multiples of 8, else 2.
pub fn weight_gradient3x3(
    x: &[f32],
    dy: &[f32],
    batch: usize,
    side: usize,
    cin: usize,
    cout: usize,
) -> Vec<f32> {
    let f4 = side >= 8 && cin.is_multiple_of(8) && cout.is_multiple_of(8);
    let tile = if f4 { 4 } else { 2 };
    let a = tile + 2;
    let pos = a * a;
    let tps = side.div_ceil(tile);
    let tiles = batch * tps * tps;
    let budget = ((4usize << 20) / (4 * pos * (cin + cout))).clamp(32, 512);
    let block = budget.min(tiles.div_ceil(8)).max(16);
    let n_tasks = tiles.div_ceil(block);
    // V and Z buffers reused across a worker's tasks (both transforms write every value, as
    // the forward's): fresh zeroed ones per task cost ~10% of an x1 training step in memset
    // and page faults
    let parts: Vec<Vec<f32>> = (0..n_tasks)
        .into_par_iter()
        .map_init(
            || (Scratch::default(), Scratch::default()),
            |(v, z), task| {
                let t0 = task * block;
                let nt = block.min(tiles - t0);
                let r = Tiles { side, tps, t0, nt };
                let v = v.slice(pos * nt * cin);
                transformed_input(x, r, cin, f4, v);
                let z = z.slice(pos * nt * cout);
                if f4 {
                    grad_transform::<4, 6>(dy, r, cout, &AT4, z);
                } else {
                    grad_transform::<2, 4>(dy, r, cout, &AT2, z);
                }
                let mut du = vec![0f32; pos * cin * cout];
                for k in 0..pos {
                    // SAFETY: v[k] is [nt, cin] (read transposed), z[k] is [nt, cout], du[k] is
                    // [cin, cout].
                    unsafe {
                        matmul(
                            cin,
                            cout,
                            nt,
                            du.as_mut_ptr().add(k * cin * cout),
                            cout,
                            v.as_ptr().add(k * nt * cin),
                            (1, cin),
                            z.as_ptr().add(k * nt * cout),
                            (cout, 1),
                            false,
                        );
                    }
                }
                du
            },
        )
        .collect();
    let mut it = parts.into_iter();
    let mut du = it.next().unwrap_or_else(|| vec![0f32; pos * cin * cout]);
    for p in it {
        du.iter_mut().zip(&p).for_each(|(a, b)| *a += b);
    }
    // dW[ky][kx] = sum_ij G[i][ky] dU[i][j] G[j][kx], per (ci, co)
    let gm: &[[f64; 3]] = if f4 { &G4 } else { &G2 };
    let cc = cin * cout;
    let mut dw = vec![0f32; 9 * cc];
    dw.par_chunks_mut(cout).enumerate().for_each(|(row, out)| {
        let (tap, ci) = (row / cin, row % cin);
        let (ky, kx) = (tap / 3, tap % 3);
        let mut acc = vec![0f64; cout];
        for i in 0..a {
            for j in 0..a {
                let c = gm[i][ky] * gm[j][kx];
                if c == 0.0 {
                    continue;
                }
                let src = &du[(i * a + j) * cc + ci * cout..(i * a + j) * cc + (ci + 1) * cout];
                acc.iter_mut()
                    .zip(src)
                    .for_each(|(o, v)| *o += c * *v as f64);
            }
        }
        out.iter_mut().zip(&acc).for_each(|(o, v)| *o = *v as f32);
    });
    dw
}

/// `Z = A dY A^T` (`A = (A^T)^T`, `[a, t]`) of the output-gradient tiles `t0..t0+nt` (`t x t`
/// pixels each, zeros beyond the image) into `z: [a*a, nt, c]`.
fn grad_transform<const T: usize, const A: usize>(
    dy: &[f32],
    r: Tiles,
    c: usize,
    at: &[[f32; A]; T],
    z: &mut [f32],
) {
    let Tiles { side, nt, .. } = r;
    // s[p][j] = sum_q dY[p][q] A^T[q][j]  (t x a channel vectors)
    let mut s = vec![0f32; T * A * c];
    for ti in 0..nt {
        let (b, ty, tx) = r.at(ti);
        s.fill(0.0);
        for p in 0..T {
            let iy = T * ty + p;
            if iy >= side {
                continue;
            }
            for (q, atq) in at.iter().enumerate() {
                let ix = T * tx + q;
                if ix >= side {
                    continue;
                }
                let src = &dy[((b * side + iy) * side + ix) * c..][..c];
                for (j, &w) in atq.iter().enumerate() {
                    if w == 0.0 {
                        continue;
                    }
                    let d = &mut s[(p * A + j) * c..(p * A + j + 1) * c];
                    d.iter_mut().zip(src).for_each(|(d, v)| *d += w * v);
                }
            }
        }
        // Z[i][j] = sum_p A^T[p][i] s[p][j]
        for i in 0..A {
            for j in 0..A {
                let d = &mut z[((i * A + j) * nt + ti) * c..((i * A + j) * nt + ti + 1) * c];
                d.fill(0.0);
                for p in 0..T {
                    let w = at[p][i];
                    if w == 0.0 {
                        continue;
                    }
                    let src = &s[(p * A + j) * c..(p * A + j + 1) * c];
                    d.iter_mut().zip(src).for_each(|(d, v)| *d += w * v);
                }
            }
        }
    }
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
fn input_transform(x: &[f32], r: Tiles, cin: usize, v: &mut [f32]) {
    let Tiles { side, nt, .. } = r;
    let zeros = vec![0f32; cin];
    let mut t = vec![0f32; 16 * cin];
    for ti in 0..nt {
        let (b, ty, tx) = r.at(ti);
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
    r: Tiles,
    cout: usize,
    bias: Option<&[f32]>,
    epi: &Epilogue,
    out: OutPtr,
) {
    let Tiles { side, nt, .. } = r;
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
        let (b, ty, tx) = r.at(ti);
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

/// Eight channels, the unit of the F(4x4) transforms (one AVX register; the arithmetic is
/// written lane by lane so it vectorises for whatever the function is compiled for).
#[derive(Clone, Copy)]
struct L8([f32; 8]);

impl L8 {
    const ZERO: L8 = L8([0.0; 8]);
    /// # Safety
    /// `p..p+8` must be readable.
    #[inline(always)]
    unsafe fn load(p: *const f32) -> L8 {
        // SAFETY: forwarded from the caller.
        L8(unsafe { std::ptr::read_unaligned(p.cast()) })
    }
    /// # Safety
    /// `p..p+8` must be writable.
    #[inline(always)]
    unsafe fn store(self, p: *mut f32) {
        // SAFETY: forwarded from the caller.
        unsafe { std::ptr::write_unaligned(p.cast(), self.0) }
    }
}
impl Add for L8 {
    type Output = L8;
    #[inline(always)]
    fn add(mut self, o: L8) -> L8 {
        for i in 0..8 {
            self.0[i] += o.0[i];
        }
        self
    }
}
impl Sub for L8 {
    type Output = L8;
    #[inline(always)]
    fn sub(mut self, o: L8) -> L8 {
        for i in 0..8 {
            self.0[i] -= o.0[i];
        }
        self
    }
}
impl Mul<f32> for L8 {
    type Output = L8;
    #[inline(always)]
    fn mul(mut self, s: f32) -> L8 {
        for i in 0..8 {
            self.0[i] *= s;
        }
        self
    }
}

/// `B^T d` for one column of six input values (F(4x4)).
#[inline(always)]
fn bt6([d0, d1, d2, d3, d4, d5]: [L8; 6]) -> [L8; 6] {
    [
        d0 * 4.0 - d2 * 5.0 + d4,
        (d3 + d4) - (d1 + d2) * 4.0,
        (d4 - d3) + (d1 - d2) * 4.0,
        (d4 - d2) + (d3 - d1) * 2.0,
        (d4 - d2) + (d1 - d3) * 2.0,
        d1 * 4.0 - d3 * 5.0 + d5,
    ]
}

/// `A^T m` for one column of six transformed products (F(4x4)).
#[inline(always)]
fn at6([m0, m1, m2, m3, m4, m5]: [L8; 6]) -> [L8; 4] {
    let (s12, d12, s34, d34) = (m1 + m2, m1 - m2, m3 + m4, m3 - m4);
    [
        m0 + s12 + s34,
        d12 + d34 * 2.0,
        s12 + s34 * 4.0,
        d12 + d34 * 8.0 + m5,
    ]
}

/// `V = B^T d B` (F(4x4)) for tiles `t0..t0+nt` into `v: [36, nt, cin]`; `cin % 8 == 0`.
fn input_transform_f4(x: &[f32], r: Tiles, cin: usize, v: &mut [f32]) {
    dispatch!(avx2: input_f4_body, (x: &[f32], r: Tiles, cin: usize, v: &mut [f32]));
}

#[inline(always)]
fn input_f4_body(x: &[f32], r: Tiles, cin: usize, v: &mut [f32]) {
    let Tiles { side, nt, .. } = r;
    assert!(cin.is_multiple_of(8) && v.len() >= 36 * nt * cin);
    let zeros = vec![0f32; cin];
    let mut src = [std::ptr::null::<f32>(); 36];
    let mut t = [[L8::ZERO; 6]; 6];
    for ti in 0..nt {
        let (b, ty, tx) = r.at(ti);
        // the 36 input pixels of the tile, read in place (zeros outside the image)
        for (k, s) in src.iter_mut().enumerate() {
            let iy = (4 * ty + k / 6) as isize - 1;
            let ix = (4 * tx + k % 6) as isize - 1;
            *s = if iy < 0 || ix < 0 || iy >= side as isize || ix >= side as isize {
                zeros.as_ptr()
            } else {
                let p = ((b * side + iy as usize) * side + ix as usize) * cin;
                x[p..p + cin].as_ptr()
            };
        }
        let dst = v.as_mut_ptr();
        for c in (0..cin).step_by(8) {
            // SAFETY: every `src[k]` addresses `cin` readable values (a pixel of `x` or
            // `zeros`) and `c + 8 <= cin`; the stores address `v[(k * nt + ti) * cin + c..+8]`
            // with k < 36, ti < nt, inside `v` by the assert above.
            unsafe {
                for j in 0..6 {
                    let col = bt6(std::array::from_fn(|i| L8::load(src[i * 6 + j].add(c))));
                    for (row, v) in t.iter_mut().zip(col) {
                        row[j] = v;
                    }
                }
                for (i, row) in t.iter().enumerate() {
                    let r = bt6(*row);
                    for (j, val) in r.iter().enumerate() {
                        val.store(dst.add(((i * 6 + j) * nt + ti) * cin + c));
                    }
                }
            }
        }
    }
}

/// `Y = A^T M A` (F(4x4)) for tiles `t0..t0+nt` from `m: [36, nt, cout]`, then bias and the
/// epilogue, written to the output pixels of each tile (pixels past the edge are dropped);
/// `cout % 8 == 0`.
#[allow(clippy::too_many_arguments)]
fn output_transform_f4(
    m: &[f32],
    r: Tiles,
    cout: usize,
    bias: Option<&[f32]>,
    epi: &Epilogue,
    out: OutPtr,
) {
    dispatch!(avx2: output_f4_body, (m: &[f32], r: Tiles, cout: usize, bias: Option<&[f32]>, epi: &Epilogue, out: OutPtr));
}

#[allow(clippy::too_many_arguments)]
#[inline(always)]
fn output_f4_body(
    m: &[f32],
    r: Tiles,
    cout: usize,
    bias: Option<&[f32]>,
    epi: &Epilogue,
    out: OutPtr,
) {
    let Tiles { side, nt, .. } = r;
    assert!(cout.is_multiple_of(8) && m.len() >= 36 * nt * cout);
    let mut y = vec![0f32; 16 * cout]; // the tile's 4x4 output pixels, [16, cout]
    let mut t = [[L8::ZERO; 6]; 4];
    let src = m.as_ptr();
    for ti in 0..nt {
        for c in (0..cout).step_by(8) {
            // SAFETY: the loads address `m[(k * nt + ti) * cout + c..+8]` with k < 36, ti < nt,
            // inside `m` by the assert; the stores address `y[p * cout + c..+8]`, p < 16.
            unsafe {
                for j in 0..6 {
                    let col = at6(std::array::from_fn(|i| {
                        L8::load(src.add(((i * 6 + j) * nt + ti) * cout + c))
                    }));
                    for (row, v) in t.iter_mut().zip(col) {
                        row[j] = v;
                    }
                }
                for (i, row) in t.iter().enumerate() {
                    for (j, val) in at6(*row).iter().enumerate() {
                        val.store(y.as_mut_ptr().add((i * 4 + j) * cout + c));
                    }
                }
            }
        }
        add_bias(&mut y, bias, cout);
        let (b, ty, tx) = r.at(ti);
        let npx = 4.min(side - 4 * tx);
        for i in 0..4 {
            let oy = 4 * ty + i;
            if oy >= side {
                break;
            }
            let row = (b * side + oy) * side + 4 * tx;
            let ys = &mut y[i * 4 * cout..(i * 4 + npx) * cout];
            epi.apply(ys, cout, row);
            // SAFETY: pixels `row..row + npx` are this task's own tile's (distinct tiles have
            // distinct pixels) and lie inside `out` (`oy < side`, `4 * tx + npx <= side`).
            unsafe {
                std::ptr::copy_nonoverlapping(ys.as_ptr(), out.0.add(row * cout), npx * cout);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::engine::kernels::{conv_forward, uniform, Conv};

    /// F(2x2) and F(4x4) weights of one PyTorch-layout kernel `[cout, cin, 3, 3]`.
    fn both(w: &[f32], cout: usize, cin: usize) -> [WinogradWeights; 2] {
        [2, 4].map(|t| {
            WinogradWeights::new(t, cin, cout, |co, ci, y, x| {
                w[((co * cin + ci) * 3 + y) * 3 + x]
            })
        })
    }

    /// Hand-sized case: a 4x4 single-channel input 1..16 and the kernel with a single 1 at
    /// the centre (identity) gives the input back; the all-ones kernel gives 3x3 box sums
    /// (corner (0,0): 1+2+5+6 = 14; (1,1): 1+2+3+5+6+7+9+10+11 = 54).
    #[test]
    fn engine_layout_transform_equals_the_reference_one() {
        let mut r = crate::engine::kernels::uniform(5);
        for (tile, cin, cout) in [(2, 3, 8), (4, 16, 24), (4, 40, 64)] {
            let w: Vec<f32> = (0..9 * cin * cout).map(|_| r()).collect();
            let want = WinogradWeights::new(tile, cin, cout, |co, ci, y, x| {
                w[((y * 3 + x) * cin + ci) * cout + co]
            });
            let got = WinogradWeights::from_engine(tile, cin, cout, &w);
            assert_eq!(got.u, want.u, "tile {tile} cin {cin} cout {cout}");
        }
    }

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

    /// F(4x4) by hand: an 8x8 image with 8 channels, pixel (r, c) of channel 0 equal to
    /// 8r + c + 1 and every other channel 0. Output channel 0 is the identity kernel on channel
    /// 0, output channel 1 the all-ones kernel on channel 0 (3x3 box sums: corner (0,0):
    /// 1+2+9+10 = 22; (1,1): 1+2+3+9+10+11+17+18+19 = 90; (7,7): 55+56+63+64 = 238),
    /// and the other 6 output channels are 0.
    #[test]
    fn hand_sized_f4_8x8_input() {
        let (cin, cout, side) = (8, 8, 8);
        let mut x = vec![0f32; side * side * cin];
        for p in 0..side * side {
            x[p * cin] = (p + 1) as f32;
        }
        let mut w = vec![0f32; cout * cin * 9];
        w[4] = 1.0; // co 0, ci 0, centre
        for k in 0..9 {
            w[cin * 9 + k] = 1.0; // co 1, ci 0
        }
        let [_, w4] = both(&w, cout, cin);
        let mut y = vec![0f32; side * side * cout];
        conv3x3(&w4, None, &x, 1, side, &mut y, &Epilogue::none());
        let at = |r: usize, c: usize, co: usize| y[(r * side + c) * cout + co];
        for p in 0..side * side {
            assert!(
                (y[p * cout] - (p + 1) as f32).abs() < 1e-4,
                "identity at pixel {p}"
            );
            for co in 2..cout {
                assert!(y[p * cout + co].abs() < 1e-4);
            }
        }
        assert!((at(0, 0, 1) - 22.0).abs() < 1e-4);
        assert!((at(1, 1, 1) - 90.0).abs() < 1e-3);
        assert!((at(7, 7, 1) - 238.0).abs() < 1e-3);
    }

    /// Odd sides, several channels, bias and a fused epilogue: both tile sizes equal to the
    /// im2col path (F(4x4) on channel counts that are multiples of 8, sides not multiples of
    /// 4 included).
    #[test]
    fn matches_im2col_on_odd_sizes() {
        let mut rnd = uniform(11);
        let cases = [
            (2, 3, 5, 7),
            (1, 8, 4, 5),
            (3, 5, 9, 8),
            (1, 2, 3, 1),
            (2, 8, 16, 9),
            (1, 16, 8, 13),
            (2, 32, 32, 8),
            (1, 64, 24, 6),
        ];
        for &(b, cin, cout, side) in &cases {
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
            let m = want.iter().fold(1f32, |m, v| m.max(v.abs()));
            let both = both(&w, cout, cin);
            for wg in &both {
                if wg.tile == 4 && (cin % 8 != 0 || cout % 8 != 0) {
                    continue;
                }
                let mut got = vec![0f32; want.len()];
                conv3x3(wg, Some(&bias), &x, b, side, &mut got, &epi);
                for (g, w) in got.iter().zip(&want) {
                    assert!(
                        (g - w).abs() < 1e-5 * m,
                        "F({t}x{t}) {b} {cin} {cout} {side}: {g} vs {w}",
                        t = wg.tile
                    );
                }
            }
        }
    }

    /// The conv picks F(4x4) from side 8 on when the channel counts allow it, F(2x2) below.
    #[test]
    fn tile_choice() {
        let wg = Winograd::new(64, 64);
        assert_eq!((wg.tile_for(7), wg.tile_for(8), wg.tile_for(32)), (2, 4, 4));
        assert_eq!(Winograd::new(36, 64).tile_for(32), 2);
    }
}
