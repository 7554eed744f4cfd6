//! BatchNorm reset (reference doc §4.4, borrowed from REPAIR): forget the running statistics and
//! re-estimate them with one pass over (augmented) images, normalising each batch with its own
//! statistics. The new running mean is the unweighted mean over batches of the per-batch channel
//! means, and the new running variance the unweighted mean of the per-batch **unbiased**
//! variances (PyTorch with `momentum=None`). Applied to the trunk and every head. Networks
//! without BN (VGG) are left unchanged (§9.8).
//!
//! The measurement (the forward passes) lives next to the statistics collector
//! ([`crate::collect::bn`]); this module writes the measured statistics into the weights.

use crate::checkpoint::{ModelManifest, NamedTensor, StateDict};
use crate::collect::bn::{measure_many, BnStats};
use crate::error::MergeError;
use crate::system::runner::Runner;
use crate::system::System;

/// Writes measured statistics into the trunk and head state dicts.
pub fn apply(stats: &BnStats, trunk: &mut StateDict, heads: &mut [StateDict]) {
    for (key, (mean, var)) in stats {
        let (part, name) = key.split_once(':').unwrap_or(("trunk", key));
        let target = match part
            .strip_prefix("head")
            .and_then(|i| i.parse::<usize>().ok())
        {
            Some(i) if i < heads.len() => &mut heads[i],
            Some(_) => continue,
            None => &mut *trunk,
        };
        target.insert(
            format!("{name}.running_mean"),
            NamedTensor::new(vec![mean.len()], mean.iter().map(|&v| v as f32).collect()),
        );
        target.insert(
            format!("{name}.running_var"),
            NamedTensor::new(vec![var.len()], var.iter().map(|&v| v as f32).collect()),
        );
    }
}

/// One model given as state dicts: its manifest, its trunk and its heads (a single model:
/// `heads` empty).
pub struct ModelStates<'a> {
    /// The manifest the states belong to.
    pub manifest: &'a ModelManifest,
    /// Trunk (or whole single model) weights.
    pub trunk: &'a mut StateDict,
    /// Head networks' weights.
    pub heads: &'a mut [StateDict],
}

/// Resets the BN statistics of every model of `models` on `batches` (reference doc §4.4), all
/// of them in one loop over the images ([`crate::collect::bn::measure_many`]): the N
/// endpoints of a merge before matching, or one merged model.
///
/// # Errors
/// [`MergeError`] when the weights do not fit a manifest.
pub fn reset_many(
    models: &mut [ModelStates<'_>],
    batches: &[Vec<Vec<u8>>],
    runner: &Runner,
    progress: &mut dyn FnMut(usize),
) -> Result<(), MergeError> {
    let systems = models
        .iter()
        .map(|m| System::from_parts(m.manifest, m.trunk, m.heads, runner))
        .collect::<Result<Vec<_>, _>>()?;
    let refs: Vec<&System> = systems.iter().collect();
    let stats = measure_many(&refs, batches, runner, progress);
    for (st, m) in stats.iter().zip(models.iter_mut()) {
        apply(st, m.trunk, m.heads);
    }
    Ok(())
}

/// [`reset_many`] of one model given as state dicts (a single model: `heads` empty).
///
/// # Errors
/// [`MergeError`] when the weights do not fit the manifest.
pub fn reset(
    manifest: &ModelManifest,
    trunk: &mut StateDict,
    heads: &mut [StateDict],
    batches: &[Vec<Vec<u8>>],
    runner: &Runner,
    progress: &mut dyn FnMut(usize),
) -> Result<(), MergeError> {
    let mut one = [ModelStates {
        manifest,
        trunk,
        heads,
    }];
    reset_many(&mut one, batches, runner, progress)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// T12 (over batches): the reset statistics are the unweighted means over batches of the
    /// per-batch means and unbiased variances, written to the right state dict.
    #[test]
    fn t12_apply_writes_averaged_statistics() {
        // two batches already averaged by `measure`: means (1 + 3)/2 = 2, vars (0.5 + 1.5)/2 = 1
        let mut stats = BnStats::new();
        stats.insert("trunk:bn1".into(), (vec![2.0], vec![1.0]));
        stats.insert("head1:layer3.0.bn1".into(), (vec![-1.0], vec![4.0]));
        let mut trunk = StateDict::new();
        let mut heads = vec![StateDict::new(), StateDict::new()];
        apply(&stats, &mut trunk, &mut heads);
        assert_eq!(trunk["bn1.running_mean"].data, vec![2.0]);
        assert_eq!(trunk["bn1.running_var"].data, vec![1.0]);
        assert!(heads[0].is_empty());
        assert_eq!(heads[1]["layer3.0.bn1.running_var"].data, vec![4.0]);
    }
}
