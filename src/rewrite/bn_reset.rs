//! BatchNorm reset (reference doc §4.4, borrowed from REPAIR): forget the running statistics and
//! re-estimate them with one pass over (augmented) images, normalising each batch with its own
//! statistics. The new running mean is the unweighted mean over batches of the per-batch channel
//! means, and the new running variance the unweighted mean of the per-batch **unbiased**
//! variances (PyTorch with `momentum=None`). Applied to the trunk and every head. Networks
//! without BN (VGG) are left unchanged (§9.8).

use std::collections::BTreeMap;

use burn::tensor::Device;

use crate::checkpoint::{ModelManifest, NamedTensor, StateDict};
use crate::data::to_tensor;
use crate::error::MergeError;
use crate::models::system::{Head, System};
use crate::models::{ForwardCtx, Net};

/// Averaged statistics: name (`trunk:layer1.0.bn1`, `head1:...`) -> (mean, var).
pub type BnStats = BTreeMap<String, (Vec<f64>, Vec<f64>)>;

/// Runs `sys` over `batches` recording BN batch statistics and averages them over batches.
pub fn measure(
    sys: &System,
    batches: &[Vec<Vec<u8>>],
    device: &Device,
    progress: &mut dyn FnMut(usize),
) -> BnStats {
    measure_many(&[sys], batches, device, progress)
        .pop()
        .unwrap_or_default()
}

/// [`measure`] for several systems in one loop over the images: each batch is normalised once
/// and run through every system (the N endpoints of a merge; issue 14, item 4). `progress`
/// counts images of all systems (`batch.len() * systems.len()` per batch).
pub fn measure_many(
    systems: &[&System],
    batches: &[Vec<Vec<u8>>],
    device: &Device,
    progress: &mut dyn FnMut(usize),
) -> Vec<BnStats> {
    let cpu: Vec<Option<crate::engine::CpuSystem>> = systems
        .iter()
        .map(|sys| {
            crate::engine::applies(device)
                .then(|| crate::engine::CpuSystem::compile(sys).ok())
                .flatten()
        })
        .collect();
    let mut sums: Vec<BnStats> = vec![BTreeMap::new(); systems.len()];
    let Some(prep) = systems.first().map(|s| s.trunk.preprocess()) else {
        return sums;
    };
    let mut count = 0usize;
    for batch in batches {
        let refs: Vec<&[u8]> = batch.iter().map(|v| v.as_slice()).collect();
        let mut act = None;
        let mut tensor = None;
        for ((sys, cpu), sums) in systems.iter().zip(&cpu).zip(sums.iter_mut()) {
            let records = match cpu {
                Some(c) => {
                    let x = act
                        .get_or_insert_with(|| crate::engine::Act::from_images(&refs, prep))
                        .clone();
                    let mut ctx = crate::engine::EngineCtx {
                        record_bn: true,
                        ..Default::default()
                    };
                    c.forward_heads(x, &mut ctx);
                    ctx.bn_records
                }
                None => {
                    let x = tensor
                        .get_or_insert_with(|| to_tensor(&refs, prep, device))
                        .clone();
                    let mut ctx = ForwardCtx::recording_bn();
                    sys.forward_heads(x, &mut ctx);
                    ctx.bn_records
                }
            };
            for (name, mean, var) in records {
                let e = sums
                    .entry(name)
                    .or_insert_with(|| (vec![0.0; mean.len()], vec![0.0; var.len()]));
                for (a, v) in e.0.iter_mut().zip(&mean) {
                    *a += *v as f64;
                }
                for (a, v) in e.1.iter_mut().zip(&var) {
                    *a += *v as f64;
                }
            }
            progress(batch.len());
        }
        count += 1;
    }
    for sums in &mut sums {
        for (m, v) in sums.values_mut() {
            m.iter_mut().for_each(|x| *x /= count.max(1) as f64);
            v.iter_mut().for_each(|x| *x /= count.max(1) as f64);
        }
    }
    sums
}

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

/// Resets BN statistics of a model given as state dicts (a single model: `heads` empty).
///
/// # Errors
/// [`MergeError`] when the weights do not fit the manifest.
pub fn reset(
    manifest: &ModelManifest,
    trunk: &mut StateDict,
    heads: &mut [StateDict],
    batches: &[Vec<Vec<u8>>],
    device: &Device,
    progress: &mut dyn FnMut(usize),
) -> Result<(), MergeError> {
    let sys = build_system(manifest, trunk, heads, device)?;
    let stats = measure(&sys, batches, device, progress);
    apply(&stats, trunk, heads);
    Ok(())
}

/// Builds a runnable [`System`] from a manifest and in-memory weights.
///
/// # Errors
/// [`MergeError::Model`] when the weights do not fit.
pub fn build_system(
    manifest: &ModelManifest,
    trunk: &StateDict,
    heads: &[StateDict],
    device: &Device,
) -> Result<System, MergeError> {
    let net = Net::from_state(&manifest.net_config(), trunk, device)?;
    let mut sys = System::single(manifest.clone(), net);
    for (i, h) in sys.heads.iter_mut().enumerate() {
        if let Some(hs) = heads.get(i) {
            *h = Head {
                net: Some(Net::from_state(&manifest.head_config(i), hs, device)?),
                spec: h.spec.clone(),
                classes: h.classes.clone(),
            };
        }
    }
    Ok(sys)
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
