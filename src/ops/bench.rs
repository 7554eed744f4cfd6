//! Throughput figures of one architecture on one device (`zipmerge bench`): forward (eval)
//! images/s, statistics images/s, BN-reset (train-mode forward) images/s and matcher times, on
//! the embedded sample's images and seeded random weights. Benchmarks print figures; no test
//! times anything.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::Instant;

use serde::Serialize;

use crate::collect::{collect, probe_batches, ProbeOptions};
use crate::data::{to_tensor, ImageSet};
use crate::engine::{Act, EngineCtx};
use crate::error::MergeError;
use crate::matching::{correlation, Matcher, Permute, SquareMatrix, ZipIt};
use crate::models::{init_state, Arch, ForwardCtx, Net, NetConfig};
use crate::system::runner::Runner;

/// What to measure.
#[derive(Clone, Debug)]
pub struct BenchPlan {
    /// Architecture and width (10 outputs).
    pub cfg: NetConfig,
    /// Images per measurement (the sample's images, repeated as needed).
    pub images: usize,
    /// Batch size.
    pub batch_size: usize,
    /// Matcher size: features per model (O = 2 x this).
    pub match_width: usize,
    /// The sample's train folder.
    pub sample_dir: PathBuf,
    /// Compute device and forward path (the engine's figures need the CPU engine).
    pub device: Runner,
    /// Backend name, for the report.
    pub backend: String,
}

/// The figures of one run (`zipmerge bench --json`; the keys are a stable interface).
#[derive(Clone, Debug, Serialize)]
pub struct BenchReport {
    /// Backend name.
    pub backend: String,
    /// Architecture.
    pub arch: Arch,
    /// Width multiplier.
    pub width: usize,
    /// Images per measurement.
    pub images: usize,
    /// Batch size.
    pub batch_size: usize,
    /// `cpu-engine` or `burn`: which forward the figures are of.
    pub engine: &'static str,
    /// Eval-mode forward, images/s.
    pub forward_images_per_second: f64,
    /// Eval-mode forward, multiply-accumulates/s (direct-convolution count).
    pub forward_macs_per_second: f64,
    /// burn's own forward on the same device, images/s (only when the engine replaced it).
    pub burn_forward_images_per_second: Option<f64>,
    /// Statistics of two networks (taps + covariance), images/s.
    pub statistics_images_per_second: f64,
    /// Train-mode forward with BN statistics, images/s.
    pub bn_reset_images_per_second: f64,
    /// ZipIt! times, ms: on the last space's real correlation and on a random one.
    pub zipit_ms: BTreeMap<String, f64>,
    /// Permute times, ms, on the same matrices.
    pub permute_ms: BTreeMap<String, f64>,
    /// Threads available.
    pub threads: usize,
}

/// Measures `plan`.
///
/// # Errors
/// [`MergeError`] for an invalid configuration or an unreadable sample.
pub fn bench(plan: &BenchPlan) -> Result<BenchReport, MergeError> {
    let (cfg, device) = (plan.cfg, &plan.device);
    cfg.validate()?;
    let set = ImageSet::load(&plan.sample_dir, "train", cfg.preprocess())?;
    let idx: Vec<usize> = (0..plan.images).map(|i| i % set.len()).collect();
    let set = set.subset(&idx);
    let batches = probe_batches(
        &set,
        &ProbeOptions {
            images: None,
            batch_size: plan.batch_size,
            augment: false,
            seed: 0,
        },
    );
    let nets: Vec<Net> = [1, 2]
        .iter()
        .map(|&s| Net::from_state(&cfg, &init_state(&cfg, s), device))
        .collect::<Result<_, _>>()?;
    let engine = device.engine();
    let cpu_net = if engine {
        Some(nets[0].compile()?)
    } else {
        None
    };
    // one forward pass (eval mode) of a batch, on the engine when it applies, else burn
    let forward = |b: &Vec<Vec<u8>>, record: bool, use_engine: bool| {
        let r: Vec<&[u8]> = b.iter().map(|v| v.as_slice()).collect();
        match (&cpu_net, use_engine) {
            (Some(c), true) => {
                let mut ctx = EngineCtx {
                    record_bn: record,
                    ..Default::default()
                };
                let _ = c.forward(Act::from_images(&r, cfg.preprocess()), &mut ctx);
            }
            _ => {
                let mut ctx = if record {
                    ForwardCtx::recording_bn()
                } else {
                    ForwardCtx::default()
                };
                let _ = nets[0]
                    .forward(to_tensor(&r, cfg.preprocess(), device), &mut ctx)
                    .into_data();
            }
        }
    };
    // warm-up (kernel compilation on wgpu, page faults of the first buffers)
    forward(&batches[0], false, engine);
    let timed = |record: bool, use_engine: bool| {
        let t = Instant::now();
        for b in &batches {
            forward(b, record, use_engine);
        }
        plan.images as f64 / t.elapsed().as_secs_f64()
    };
    let fwd = timed(false, engine);
    // burn's own forward on the same device, for the ratio (only when the engine replaced it)
    let burn_fwd = if engine {
        Some(timed(false, false))
    } else {
        None
    };
    let t = Instant::now();
    let accs = collect(&nets, cfg.preprocess(), &batches, device, &mut |_| {})?;
    let stats = plan.images as f64 / t.elapsed().as_secs_f64();
    let t = Instant::now();
    for b in &batches {
        forward(b, true, engine);
    }
    let bn = plan.images as f64 / t.elapsed().as_secs_f64();
    // matchers on a real correlation (last space), and on a random one of the requested size
    let real = correlation(&accs.last().expect("spaces").finalize()?);
    let o = 2 * plan.match_width;
    let mut state = 12345u64;
    let feats: Vec<f64> = (0..o * 64)
        .map(|_| {
            state = state
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            (state >> 11) as f64 / (1u64 << 53) as f64
        })
        .collect();
    let mut cov = vec![0.0; o * o];
    for i in 0..o {
        for j in 0..o {
            cov[i * o + j] = (0..64)
                .map(|k| feats[i * 64 + k] * feats[j * 64 + k])
                .sum::<f64>()
                / 64.0;
        }
    }
    let rand_corr = correlation(&SquareMatrix::new(o, cov)?);
    let time = |m: &dyn Matcher, c: &SquareMatrix| -> Result<f64, MergeError> {
        let t = Instant::now();
        m.solve(c, 2, 1e-5)?;
        Ok(t.elapsed().as_secs_f64() * 1e3)
    };
    let z = ZipIt {
        alpha: 0.3,
        beta: 0.125,
    };
    let random = format!("random_{o}x{o}");
    let real_key = "real_last_space".to_string();
    Ok(BenchReport {
        backend: plan.backend.clone(),
        arch: cfg.arch,
        width: cfg.width,
        images: plan.images,
        batch_size: plan.batch_size,
        engine: if engine { "cpu-engine" } else { "burn" },
        forward_images_per_second: fwd,
        forward_macs_per_second: fwd * cfg.flops() as f64,
        burn_forward_images_per_second: burn_fwd,
        statistics_images_per_second: stats,
        bn_reset_images_per_second: bn,
        zipit_ms: BTreeMap::from([
            (real_key.clone(), time(&z, &real)?),
            (random.clone(), time(&z, &rand_corr)?),
        ]),
        permute_ms: BTreeMap::from([
            (real_key, time(&Permute, &real)?),
            (random, time(&Permute, &rand_corr)?),
        ]),
        threads: std::thread::available_parallelism().map_or(1, |n| n.get()),
    })
}
