//! Feature statistics (reference doc §2): all N models run in eval mode (BN with running
//! statistics, no gradients) on the same probe batch; at every feature space the post-ReLU
//! features of the models are stacked along channels, `X = [X_A; X_B]` of shape `[O, B*H*W]`
//! (every pixel of every image is one sample), NaN/inf set to 0, and the population covariance
//! `Cov = E[x x^T] - mu mu^T` is accumulated streaming, per batch and per space, with f64
//! accumulators weighted by image counts. Memory is O(sum over spaces of O^2), never O(samples).

pub mod bn;
pub mod probe;

use burn::tensor::{Device, Tensor};
use rand::seq::SliceRandom;
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;

use crate::data::augment::augment_for;
use crate::data::{to_tensor, ImageSet, Preprocess};
use crate::error::MergeError;
use crate::matching::SquareMatrix;
use crate::models::{ForwardCtx, Net};
use crate::system::runner::Runner;

/// Streaming covariance of one feature space.
#[derive(Clone, Debug)]
pub struct CovAccumulator {
    /// Stacked width O = N * Om.
    pub o: usize,
    /// Sum of batch image counts.
    pub count: f64,
    /// Sum over batches of `B_t * mean_t` (`[O]`).
    pub sum_mean: Vec<f64>,
    /// Sum over batches of `B_t * X X^T / n_t` (`[O, O]`, row-major).
    pub sum_outer: Vec<f64>,
}

impl CovAccumulator {
    /// Empty accumulator for stacked width `o`.
    pub fn new(o: usize) -> Self {
        Self {
            o,
            count: 0.0,
            sum_mean: vec![0.0; o],
            sum_outer: vec![0.0; o * o],
        }
    }

    /// Adds one batch of `images` images given its per-batch mean `[O]` and second moment
    /// `X X^T / n` (`[O, O]`), both averaged over the batch's `n = B*H*W` samples.
    pub fn update(&mut self, images: usize, mean: &[f32], second: &[f32]) {
        let b = images as f64;
        self.count += b;
        for (a, m) in self.sum_mean.iter_mut().zip(mean) {
            *a += b * *m as f64;
        }
        for (a, s) in self.sum_outer.iter_mut().zip(second) {
            *a += b * *s as f64;
        }
    }

    /// Adds one batch of `images` images from its f64 column sums `[O]` and sum of outer
    /// products `X^T X` (`[O, O]`) over its `n = B*H*W` samples (the engine's path: the
    /// per-batch moments never pass through f32).
    pub fn update_sums(&mut self, images: usize, n: usize, sum: &[f64], outer: &[f64]) {
        let w = images as f64 / n.max(1) as f64;
        self.count += images as f64;
        for (a, s) in self.sum_mean.iter_mut().zip(sum) {
            *a += w * s;
        }
        for (a, s) in self.sum_outer.iter_mut().zip(outer) {
            *a += w * s;
        }
    }

    /// Adds one batch from raw features `x: [O, n]` (row-major) of `images` images, computing
    /// the moments in f64 (the reference path for tests and CPU use). Non-finite values count as 0.
    pub fn update_features(&mut self, images: usize, x: &[f32], n: usize) {
        let o = self.o;
        let clean: Vec<f64> = x
            .iter()
            .map(|v| if v.is_finite() { *v as f64 } else { 0.0 })
            .collect();
        let mean: Vec<f32> = (0..o)
            .map(|i| (clean[i * n..(i + 1) * n].iter().sum::<f64>() / n as f64) as f32)
            .collect();
        let mut second = vec![0f32; o * o];
        for i in 0..o {
            for j in 0..o {
                let s: f64 = (0..n).map(|t| clean[i * n + t] * clean[j * n + t]).sum();
                second[i * o + j] = (s / n as f64) as f32;
            }
        }
        self.update(images, &mean, &second);
    }

    /// Population covariance: `E - mu mu^T`, symmetrised, negative diagonals clamped to 0
    /// (reference doc §9.2).
    ///
    /// # Errors
    /// [`MergeError::NoProbeImages`] when no batch was added.
    pub fn finalize(&self) -> Result<SquareMatrix, MergeError> {
        if self.count == 0.0 {
            return Err(MergeError::NoProbeImages);
        }
        let o = self.o;
        let mu: Vec<f64> = self.sum_mean.iter().map(|v| v / self.count).collect();
        let mut c = vec![0.0; o * o];
        for i in 0..o {
            for j in 0..o {
                c[i * o + j] = self.sum_outer[i * o + j] / self.count - mu[i] * mu[j];
            }
        }
        for i in 0..o {
            for j in (i + 1)..o {
                let v = 0.5 * (c[i * o + j] + c[j * o + i]);
                c[i * o + j] = v;
                c[j * o + i] = v;
            }
            if c[i * o + i] < 0.0 || !c[i * o + i].is_finite() {
                c[i * o + i] = 0.0;
            }
        }
        Ok(SquareMatrix { n: o, data: c })
    }
}

/// How probe images are drawn.
#[derive(Clone, Debug)]
pub struct ProbeOptions {
    /// Images to use (None = all).
    pub images: Option<usize>,
    /// Batch size.
    pub batch_size: usize,
    /// Apply the training augmentation (the reference does).
    pub augment: bool,
    /// Seed of the subset, order and augmentation.
    pub seed: u64,
}

impl ProbeOptions {
    /// The BN-reset draw of a merge seeded `seed` (reference doc §4.4): `images` images (`None`:
    /// all) in batches of `batch_size`, augmented, seeded with `seed + 1` so it differs from
    /// the statistics' draw.
    pub fn bn_reset(images: Option<usize>, batch_size: usize, seed: u64) -> Self {
        Self {
            images,
            batch_size,
            augment: true,
            seed: seed.wrapping_add(1),
        }
    }

    /// [`ProbeOptions::bn_reset`], or `None` when `images` is `Some(0)` (no BN reset).
    pub fn bn_reset_draw(images: Option<usize>, batch_size: usize, seed: u64) -> Option<Self> {
        (images != Some(0)).then(|| Self::bn_reset(images, batch_size, seed))
    }
}

/// The probe batches: seeded subset and order, optionally augmented (the training
/// augmentation of `set.prep`), as u8 images of the network's input size (ImageNet training
/// images stored at 256x256 are centre-cropped to 224 when not augmented).
pub fn probe_batches(set: &ImageSet, opts: &ProbeOptions) -> Vec<Vec<Vec<u8>>> {
    draw(set, set.len(), &|i| Some(i), opts)
}

/// The positions (into a set of `len` images) a probe draw with `opts` uses: the seeded
/// shuffle and truncation of [`probe_batches`], so a caller can decode only those.
pub fn probe_indices(len: usize, opts: &ProbeOptions) -> Vec<usize> {
    let mut rng = ChaCha8Rng::seed_from_u64(opts.seed);
    shuffled(len, opts, &mut rng)
}

/// [`probe_batches`] of a set of `total` images of which only those at sorted `positions`
/// were decoded, into `sub` (in that order): the same batches, bit for bit, as from the
/// whole set.
///
/// # Errors
/// [`MergeError::Internal`] when the draw needs an image that was not decoded.
pub fn probe_batches_sparse(
    sub: &ImageSet,
    total: usize,
    positions: &[usize],
    opts: &ProbeOptions,
) -> Result<Vec<Vec<Vec<u8>>>, MergeError> {
    let need = probe_indices(total, opts);
    if let Some(i) = need.iter().find(|i| positions.binary_search(i).is_err()) {
        return Err(MergeError::Internal(format!(
            "probe image {i} of {} was not decoded",
            sub.source
        )));
    }
    Ok(draw(
        sub,
        total,
        &|i| positions.binary_search(&i).ok(),
        opts,
    ))
}

fn shuffled(len: usize, opts: &ProbeOptions, rng: &mut ChaCha8Rng) -> Vec<usize> {
    let mut idx: Vec<usize> = (0..len).collect();
    idx.shuffle(rng);
    idx.truncate(opts.images.unwrap_or(len).min(len));
    idx
}

/// The draw of [`probe_batches`] over `total` positions; `slot` maps a position to its image
/// in `set`.
fn draw(
    set: &ImageSet,
    total: usize,
    slot: &dyn Fn(usize) -> Option<usize>,
    opts: &ProbeOptions,
) -> Vec<Vec<Vec<u8>>> {
    let mut rng = ChaCha8Rng::seed_from_u64(opts.seed);
    let idx = shuffled(total, opts, &mut rng);
    idx.chunks(opts.batch_size.max(1))
        .map(|chunk| {
            chunk
                .iter()
                .filter_map(|&p| slot(p))
                .map(|i| {
                    if opts.augment {
                        let mut out = vec![0u8; set.prep.side().pow(2) * 3];
                        augment_for(set.prep, set.side, set.image(i), &mut out, &mut rng);
                        out
                    } else if set.side > set.prep.side() {
                        // ImageNet training storage (256x256): centre crop to the network size
                        let img = image::RgbImage::from_raw(
                            set.side as u32,
                            set.side as u32,
                            set.image(i).to_vec(),
                        )
                        .expect("stored image has side*side*3 bytes");
                        crate::data::preprocess::center_crop(&img, set.prep.side() as u32)
                            .into_raw()
                    } else {
                        set.image(i).to_vec()
                    }
                })
                .collect()
        })
        .collect()
}

/// Runs `models` over the probe batches and accumulates the covariance of every feature space.
/// `progress(images)` is called after each batch. Returns one accumulator per space.
///
/// # Errors
/// [`MergeError::NoProbeImages`] when the probe set is empty; [`MergeError::Space`] when the
/// models' feature widths differ.
pub fn collect(
    models: &[Net],
    prep: Preprocess,
    batches: &[Vec<Vec<u8>>],
    device: &Runner,
    progress: &mut dyn FnMut(usize),
) -> Result<Vec<CovAccumulator>, MergeError> {
    collect_upto(models, prep, batches, device, usize::MAX, progress)
}

/// [`collect`] of the first `spaces` feature spaces only (a partial zip needs the spaces up
/// to its stop): on the CPU engine the forward passes stop after the last cut segment holding
/// one of them; through burn every space is computed and the rest dropped.
///
/// # Errors
/// As [`collect`].
pub fn collect_upto(
    models: &[Net],
    prep: Preprocess,
    batches: &[Vec<Vec<u8>>],
    runner: &Runner,
    spaces: usize,
    progress: &mut dyn FnMut(usize),
) -> Result<Vec<CovAccumulator>, MergeError> {
    if runner.engine() {
        return collect_engine_upto(models, prep, batches, spaces, progress);
    }
    let mut accs = collect_burn(models, prep, batches, runner, progress)?;
    accs.truncate(spaces);
    Ok(accs)
}

/// [`collect`] through burn's own forward on any device (the reference for the engine).
///
/// # Errors
/// As [`collect`].
pub fn collect_burn(
    models: &[Net],
    prep: Preprocess,
    batches: &[Vec<Vec<u8>>],
    device: &Device,
    progress: &mut dyn FnMut(usize),
) -> Result<Vec<CovAccumulator>, MergeError> {
    if batches.is_empty() {
        return Err(MergeError::NoProbeImages);
    }
    let mut accs: Vec<CovAccumulator> = Vec::new();
    for batch in batches {
        let refs: Vec<&[u8]> = batch.iter().map(|v| v.as_slice()).collect();
        let x = to_tensor(&refs, prep, device);
        let taps: Vec<Vec<Tensor<4>>> = models
            .iter()
            .map(|m| {
                let mut ctx = ForwardCtx::with_taps();
                m.forward(x.clone(), &mut ctx);
                ctx.taps.unwrap_or_default()
            })
            .collect();
        let spaces = taps[0].len();
        for (s, _) in taps[0].iter().enumerate().take(spaces) {
            let feats: Vec<Tensor<4>> = taps.iter().map(|t| t[s].clone()).collect();
            let [b, c, h, w] = feats[0].dims();
            if feats.iter().any(|f| f.dims()[1] != c) {
                return Err(MergeError::Space {
                    space: s.to_string(),
                    msg: "the models have different widths".into(),
                });
            }
            let stacked = Tensor::cat(feats, 1); // [B, O, H, W]
            let o = c * models.len();
            let n = b * h * w;
            let xs = stacked.swap_dims(0, 1).reshape([o, n]);
            let xs = xs.clone().mask_fill(xs.clone().is_nan(), 0.0);
            let xs = xs.clone().mask_fill(xs.clone().is_inf(), 0.0);
            let mean = xs.clone().mean_dim(1); // [O, 1]
            let second = xs.clone().matmul(xs.transpose()).div_scalar(n as f64); // [O, O]
            if accs.len() <= s {
                accs.push(CovAccumulator::new(o));
            }
            let mean = mean
                .into_data()
                .convert::<f32>()
                .try_to_vec::<f32>()
                .unwrap_or_default();
            let second = second
                .into_data()
                .convert::<f32>()
                .try_to_vec::<f32>()
                .unwrap_or_default();
            accs[s].update(b, &mean, &second);
        }
        progress(batch.len());
    }
    Ok(accs)
}

/// Bytes of tapped features held at once by [`collect_engine`]; larger probe batches are run
/// in sub-batches (the statistics are the same: every image weighs the same). Small enough that
/// the tap buffers are not re-faulted for every batch (64 MiB: 512 MiB made the x1 statistics
/// pass ~25% slower), large enough for full-width products.
const TAP_BUDGET_BYTES: usize = 64 << 20;

/// Fewest images per sub-batch, whatever the tap budget (ResNet-50 at 224x224 taps ~34 MB per
/// image of two models: 8 images hold ~270 MB).
const MIN_SUB_BATCH: usize = 8;

/// [`collect`] on the CPU engine: the same statistics, with the second moment of the stacked
/// features formed in f32 blocks of 256 rows and accumulated in f64, straight from each
/// model's taps ([`crate::engine::kernels::second_moment_parts`]).
///
/// # Errors
/// As [`collect`].
pub fn collect_engine(
    models: &[Net],
    prep: Preprocess,
    batches: &[Vec<Vec<u8>>],
    progress: &mut dyn FnMut(usize),
) -> Result<Vec<CovAccumulator>, MergeError> {
    collect_engine_upto(models, prep, batches, usize::MAX, progress)
}

/// [`collect_engine`] of the first `spaces` feature spaces: the forward passes run only the
/// cut segments up to the one holding the last of them.
///
/// # Errors
/// As [`collect`].
pub fn collect_engine_upto(
    models: &[Net],
    prep: Preprocess,
    batches: &[Vec<Vec<u8>>],
    spaces: usize,
    progress: &mut dyn FnMut(usize),
) -> Result<Vec<CovAccumulator>, MergeError> {
    use crate::engine::{Act, CpuNet, EngineCtx};
    if batches.is_empty() {
        return Err(MergeError::NoProbeImages);
    }
    let nets: Vec<CpuNet> = models.iter().map(Net::compile).collect::<Result<_, _>>()?;
    // cut segments to run: the fewest whose taps cover `spaces`
    let per_cut = nets[0].taps_per_cut();
    let mut cuts = 0;
    let mut covered = 0;
    while cuts < per_cut.len() && covered < spaces {
        covered += per_cut[cuts];
        cuts += 1;
    }
    let mut accs: Vec<CovAccumulator> = Vec::new();
    let mut per_image: Option<usize> = None;
    let n_models = nets.len();
    // per space, per model: the tap `[n, C]` (non-finite values set to 0) and C; buffers are
    // reused across sub-batches (a plain copy of each tap: no stacked matrix is formed)
    let mut taps: Vec<(usize, Vec<Vec<f32>>)> = Vec::new();
    for batch in batches {
        let refs: Vec<&[u8]> = batch.iter().map(|v| v.as_slice()).collect();
        let mut start = 0;
        while start < refs.len() {
            // sub-batch size from the tap bytes of one image (known after the first 8 images),
            // never under MIN_SUB_BATCH images (the engine parallelises across images)
            let sub = per_image
                .map(|b| (TAP_BUDGET_BYTES / b.max(1)).max(MIN_SUB_BATCH))
                .unwrap_or(MIN_SUB_BATCH)
                .clamp(1, refs.len() - start);
            let chunk = &refs[start..start + sub];
            start += sub;
            let x = Act::from_images(chunk, prep);
            let mut error: Option<MergeError> = None;
            for (m, net) in nets.iter().enumerate() {
                let mut ctx = EngineCtx {
                    sink: Some(Box::new(|s: usize, t: &Act| {
                        if s >= spaces {
                            return;
                        }
                        if taps.len() <= s {
                            taps.push((t.c, vec![Vec::new(); n_models]));
                        }
                        let (c, bufs) = &mut taps[s];
                        if m == 0 {
                            *c = t.c;
                        }
                        if *c != t.c || (m > 0 && bufs[0].len() != t.data.len()) {
                            error.get_or_insert(MergeError::Space {
                                space: s.to_string(),
                                msg: "the models have different widths".into(),
                            });
                            return;
                        }
                        let finite = crate::engine::kernels::all_finite(&t.data);
                        let clean = |buf: &mut Vec<f32>| {
                            buf.clear();
                            if finite {
                                buf.extend_from_slice(&t.data);
                            } else {
                                buf.extend(
                                    t.data.iter().map(|v| if v.is_finite() { *v } else { 0.0 }),
                                );
                            }
                        };
                        if m + 1 < n_models {
                            clean(&mut bufs[m]);
                            return;
                        }
                        // the last model: its tap is used in place (copied only when it holds
                        // non-finite values) and the space's moments are taken right away
                        if !finite {
                            clean(&mut bufs[m]);
                        }
                        let mut parts: Vec<&[f32]> = bufs[..m].iter().map(Vec::as_slice).collect();
                        parts.push(if finite { &t.data } else { &bufs[m] });
                        let n = t.rows();
                        let (sum, outer) = crate::engine::kernels::second_moment_parts(&parts, *c);
                        if accs.len() <= s {
                            accs.push(CovAccumulator::new(*c * n_models));
                        }
                        accs[s].update_sums(chunk.len(), n, &sum, &outer);
                    })),
                    ..Default::default()
                };
                net.run(x.clone(), 0, cuts, &mut ctx);
            }
            if let Some(e) = error {
                return Err(e);
            }
            let bytes: usize = taps.iter().map(|(_, b)| b[0].len() * 4 * n_models).sum();
            per_image.get_or_insert(bytes / chunk.len().max(1));
        }
        progress(batch.len());
    }
    Ok(accs)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::data::Preprocess;

    /// ImageNet training storage (256x256) becomes 224x224 probe images: centre crop without
    /// augmentation (pixel (16, 16) of the stored image is (0, 0) of the probe), random resized
    /// crop with it.
    #[test]
    fn imagenet_probe_images_have_the_network_size() {
        let side = 256;
        let pixels: Vec<u8> = (0..2 * side * side * 3)
            .map(|i| (i / 3 % 251) as u8)
            .collect();
        let set = ImageSet {
            pixels,
            side,
            prep: Preprocess::IMAGENET,
            labels: vec![0, 1],
            class_names: vec!["a".into(), "b".into()],
            source: "t".into(),
        };
        for augment in [false, true] {
            let b = probe_batches(
                &set,
                &ProbeOptions {
                    images: None,
                    batch_size: 2,
                    augment,
                    seed: 0,
                },
            );
            assert!(b[0].iter().all(|img| img.len() == 224 * 224 * 3));
            if !augment {
                let first = &b[0][0];
                let i = set.labels.len(); // order is shuffled: find which image came first
                let src = (0..i)
                    .map(|k| set.image(k))
                    .find(|s| {
                        s[(16 * side + 16) * 3] == first[0] && s[(16 * side + 17) * 3] == first[3]
                    })
                    .expect("centre crop starts at (16, 16)");
                assert_eq!(src[(16 * side + 16) * 3 + 1], first[1]);
            }
        }
    }

    /// T11: two unequal batches, [C, B*H*W] flattening, NaN/inf -> 0, image-count weighting.
    #[test]
    fn t11_covariance_of_two_unequal_batches() {
        // O = 2 features. Batch 1: 1 image, n = 2 samples: f0 = [1, 3], f1 = [2, 2].
        // Batch 2: 3 images with 1 sample each (n = 3): f0 = [NaN -> 0, 2, 4], f1 = [inf -> 0, 0, 3].
        let mut acc = CovAccumulator::new(2);
        acc.update_features(1, &[1.0, 3.0, 2.0, 2.0], 2);
        acc.update_features(3, &[f32::NAN, 2.0, 4.0, f32::INFINITY, 0.0, 3.0], 3);
        // batch 1: mean = [2, 2], S = [[(1+9)/2, (2+6)/2], [., (4+4)/2]] = [[5, 4], [4, 4]]
        // batch 2: mean = [2, 1], S = [[(0+4+16)/3, (0+0+12)/3], [., 9/3]] = [[20/3, 4], [4, 3]]
        // weights 1 and 3 (images): mu = ([2,2] + 3[2,1]) / 4 = [2, 1.25]
        // E = ([[5,4],[4,4]] + 3[[20/3,4],[4,3]]) / 4 = [[25/4, 4], [4, 13/4]]
        // Cov = E - mu mu^T = [[6.25-4, 4-2.5], [., 3.25-1.5625]] = [[2.25, 1.5], [1.5, 1.6875]]
        let c = acc.finalize().unwrap();
        let want = [2.25, 1.5, 1.5, 1.6875];
        for (g, w) in c.data.iter().zip(want) {
            assert!((g - w).abs() < 1e-6, "{:?}", c.data);
        }
    }

    #[test]
    fn negative_variance_from_roundoff_is_clamped() {
        let mut acc = CovAccumulator::new(1);
        acc.update(1, &[1.0], &[0.999_999]);
        assert_eq!(acc.finalize().unwrap().data[0], 0.0);
        assert!(CovAccumulator::new(3).finalize().is_err());
    }
}
