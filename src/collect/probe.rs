//! Probe images as the steps receive them: batches of `[side, side, 3]` u8 images (HWC), and
//! their loading from a probe folder: only the images a merge's [`Draws`] use are decoded
//! ([`load_probe`]), then drawn into the statistics' and the BN reset's batches.

use std::path::Path;
use std::time::Instant;

use super::{probe_batches_sparse, probe_indices, ProbeOptions};
use crate::data::{Preprocess, SparseSet};
use crate::error::{DataError, MergeError};
use crate::progress::Observer;

/// Probe or BN-reset images: batches of `[side, side, 3]` u8 images.
pub type Batches = Vec<Vec<Vec<u8>>>;

/// Images in `batches`.
pub fn images(batches: &Batches) -> usize {
    batches.iter().map(Vec::len).sum()
}

/// The draws of one merge from its probe folder: the statistics' probe draw (`None`: no
/// statistics, as a task-vector merge) and the BN-reset draw (`None`: no BN reset).
#[derive(Clone, Debug)]
pub struct Draws {
    /// The probe draw of the statistics.
    pub probe: Option<ProbeOptions>,
    /// The BN-reset draw.
    pub bn: Option<ProbeOptions>,
}

/// Lists the probe folder `dir` (at most as many images as a pixel cache of `cache_gib` GiB
/// holds, [`crate::data::images_in_cache`]) and decodes only the images `draws` use.
///
/// # Errors
/// [`MergeError::Data`] for an unreadable folder or image.
pub fn load_probe(
    dir: &Path,
    prep: Preprocess,
    cache_gib: f64,
    draws: &Draws,
    obs: &mut dyn Observer,
) -> Result<SparseSet, MergeError> {
    let t0 = Instant::now();
    let max_images = crate::data::images_in_cache(prep, true, cache_gib);
    let set = SparseSet::load(dir, "train", prep, max_images, &|n| {
        let mut v = Vec::new();
        for opts in draws.probe.iter().chain(&draws.bn) {
            v.extend(probe_indices(n, opts));
        }
        v
    })?;
    obs.info(&format!(
        "decoded {} of {} probe-folder images from {} in {:.1}s",
        set.set.len(),
        set.total,
        dir.display(),
        t0.elapsed().as_secs_f64()
    ));
    Ok(set)
}

/// The validation positions of a train folder of `total` images: a seeded draw (ChaCha8,
/// `seed`) of `n` from the positions that none of the draws `used` takes, in ascending order
/// (fewer when fewer are free). Hyper-parameter searches choose on these images, never on the
/// test set.
pub fn validation_positions(
    total: usize,
    used: &[&ProbeOptions],
    n: usize,
    seed: u64,
) -> Vec<usize> {
    use rand::{seq::SliceRandom, SeedableRng};
    let used: std::collections::BTreeSet<usize> =
        used.iter().flat_map(|o| probe_indices(total, o)).collect();
    let mut free: Vec<usize> = (0..total).filter(|i| !used.contains(i)).collect();
    free.shuffle(&mut rand_chacha::ChaCha8Rng::seed_from_u64(seed));
    free.truncate(n);
    free.sort_unstable();
    free
}

/// The validation split of the train folder `dir` ([`validation_positions`]): `n` images
/// disjoint from the draws `d`, decoded for evaluation.
///
/// # Errors
/// [`MergeError::Data`] for an unreadable folder or image; [`MergeError::Param`] naming the
/// validation images when fewer than `n` are left after the draws.
pub fn load_validation(
    dir: &Path,
    prep: Preprocess,
    cache_gib: f64,
    d: &Draws,
    n: usize,
    seed: u64,
) -> Result<SparseSet, MergeError> {
    let max = crate::data::images_in_cache(prep, true, cache_gib);
    let val = SparseSet::load(dir, "val", prep, max, &|total| {
        let used: Vec<&ProbeOptions> = d.probe.iter().chain(&d.bn).collect();
        validation_positions(total, &used, n, seed)
    })?;
    if val.set.len() < n {
        return Err(MergeError::param(
            crate::error::MergeParam::ValImages,
            n,
            format!(
                "{} holds {} images and the probe and BN-reset draws use {}: at most {} are left for validation",
                dir.display(),
                val.total,
                val.total - val.set.len(),
                val.set.len()
            ),
        ));
    }
    Ok(val)
}

/// The statistics' batches of `probe` drawn by `opts`, with a note when fewer images than
/// asked (or than one batch) are there.
///
/// # Errors
/// [`MergeError::Data`] for an empty probe set; as [`probe_batches_sparse`].
pub fn probe_batches(
    probe: &SparseSet,
    opts: &ProbeOptions,
    obs: &mut dyn Observer,
) -> Result<Batches, MergeError> {
    if probe.total == 0 {
        return Err(DataError::Io {
            path: probe.set.source.clone(),
            msg: "the probe set holds no image".into(),
        }
        .into());
    }
    let used = opts.images.unwrap_or(probe.total).min(probe.total);
    if let Some(n) = opts.images.filter(|&n| n > probe.total) {
        obs.warn(&format!(
            "note: {n} probe images asked, {} holds {}: using all {}",
            probe.set.source, probe.total, probe.total
        ));
    }
    if used < opts.batch_size {
        obs.warn(&format!(
            "note: the probe set gives {used} images ({} in {}), fewer than the batch size {}: using one batch of {used}",
            probe.total, probe.set.source, opts.batch_size
        ));
    }
    probe_batches_sparse(&probe.set, probe.total, &probe.positions, opts)
}

/// The BN-reset batches of `probe` drawn by `opts` (none without a draw).
///
/// # Errors
/// As [`probe_batches_sparse`].
pub fn bn_batches(probe: &SparseSet, opts: Option<&ProbeOptions>) -> Result<Batches, MergeError> {
    match opts {
        None => Ok(vec![]),
        Some(o) => probe_batches_sparse(&probe.set, probe.total, &probe.positions, o),
    }
}
