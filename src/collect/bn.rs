//! BatchNorm statistics of a system on images (reference doc §4.4): one train-mode pass that
//! records each BN layer's batch mean and unbiased variance, averaged over batches (PyTorch's
//! `momentum=None`). [`crate::rewrite::bn_reset`] writes them into the weights.

use std::collections::BTreeMap;

use crate::data::to_tensor;
use crate::models::ForwardCtx;
use crate::system::runner::Runner;
use crate::system::System;

/// Averaged statistics: name (`trunk:layer1.0.bn1`, `head1:...`) -> (mean, var).
pub type BnStats = BTreeMap<String, (Vec<f64>, Vec<f64>)>;

/// Runs `sys` over `batches` recording BN batch statistics and averages them over batches.
pub fn measure(
    sys: &System,
    batches: &[Vec<Vec<u8>>],
    device: &Runner,
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
    runner: &Runner,
    progress: &mut dyn FnMut(usize),
) -> Vec<BnStats> {
    let device: &burn::tensor::Device = runner;
    let cpu: Vec<Option<crate::engine::CpuSystem>> = systems
        .iter()
        .map(|sys| runner.engine().then(|| sys.compile().ok()).flatten())
        .collect();
    let mut sums: Vec<BnStats> = vec![BTreeMap::new(); systems.len()];
    let Some(prep) = systems.first().map(|s| s.manifest.prep()) else {
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
