//! `zipmerge bench`: throughput figures per backend — forward (eval) images/s, statistics
//! collection images/s, BN-reset images/s — and matcher times, so CPU and GPU runs compare.

use std::time::Instant;

use anyhow::Result;
use clap::Args;
use serde_json::json;

use zipmerge::collect::{collect, probe_batches, ProbeOptions};
use zipmerge::data::{to_tensor, ImageSet};
use zipmerge::engine::{Act, CpuNet, EngineCtx};
use zipmerge::matching::{correlation, Matcher, Permute, SquareMatrix, ZipIt};
use zipmerge::models::{init_state, Arch, ForwardCtx, Net, NetConfig};

use super::common::{positive, BackendArgs};

/// Arguments of `zipmerge bench`.
#[derive(Args, Debug)]
pub struct BenchArgs {
    /// Architecture.
    #[arg(long, default_value = "resnet20")]
    pub arch: String,
    /// Width multiplier.
    #[arg(long, default_value_t = 1)]
    pub width: usize,
    /// Images per measurement (the embedded sample, repeated as needed).
    #[arg(long, default_value_t = 1000, value_parser = positive)]
    pub images: usize,
    /// Batch size.
    #[arg(long, default_value_t = 250, value_parser = positive)]
    pub batch_size: usize,
    /// Matcher size: features per model (O = 2 x this).
    #[arg(long, default_value_t = 512, value_parser = positive)]
    pub match_width: usize,
    /// JSON output.
    #[arg(long)]
    pub json: bool,
    #[command(flatten)]
    pub backend: BackendArgs,
}

/// Runs `zipmerge bench`.
pub fn exec(a: BenchArgs) -> Result<()> {
    let device = a.backend.device(a.json)?;
    let arch: Arch = a.arch.parse()?;
    let cfg = NetConfig {
        arch,
        width: a.width,
        out: 10,
    };
    cfg.validate()?;
    let set = ImageSet::load(
        std::path::Path::new("datasets/cifar10-sample/train"),
        "train",
        cfg.preprocess(),
    )?;
    let idx: Vec<usize> = (0..a.images).map(|i| i % set.len()).collect();
    let set = set.subset(&idx);
    let batches = probe_batches(
        &set,
        &ProbeOptions {
            images: None,
            batch_size: a.batch_size,
            augment: false,
            seed: 0,
        },
    );
    let nets: Vec<Net> = [1, 2]
        .iter()
        .map(|&s| Net::from_state(&cfg, &init_state(&cfg, s), &device))
        .collect::<Result<_, _>>()?;
    let engine = zipmerge::engine::applies(&device);
    let cpu_net = if engine {
        Some(CpuNet::compile(&nets[0])?)
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
                    .forward(to_tensor(&r, cfg.preprocess(), &device), &mut ctx)
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
        a.images as f64 / t.elapsed().as_secs_f64()
    };
    let fwd = timed(false, engine);
    // burn's own forward on the same device, for the ratio (only when the engine replaced it)
    let burn_fwd = if engine {
        Some(timed(false, false))
    } else {
        None
    };
    let t = Instant::now();
    let accs = collect(&nets, &batches, &device, &mut |_| {})?;
    let stats = a.images as f64 / t.elapsed().as_secs_f64();
    let t = Instant::now();
    for b in &batches {
        forward(b, true, engine);
    }
    let bn = a.images as f64 / t.elapsed().as_secs_f64();
    // matchers on a real correlation (last space), and on a random one of the requested size
    let real = correlation(&accs.last().expect("spaces").finalize()?);
    let o = 2 * a.match_width;
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
    let time = |m: &dyn Matcher, c: &SquareMatrix| -> Result<f64> {
        let t = Instant::now();
        m.solve(c, 2, 1e-5)?;
        Ok(t.elapsed().as_secs_f64() * 1e3)
    };
    let z = ZipIt {
        alpha: 0.3,
        beta: 0.125,
    };
    let report = json!({
        "backend": a.backend.backend.to_string(), "arch": arch, "width": a.width, "images": a.images, "batch_size": a.batch_size,
        "engine": if engine { "cpu-engine" } else { "burn" },
        "forward_images_per_second": fwd,
        "forward_macs_per_second": fwd * cfg.flops() as f64,
        "burn_forward_images_per_second": burn_fwd,
        "statistics_images_per_second": stats,
        "bn_reset_images_per_second": bn,
        "zipit_ms": {"real_last_space": time(&z, &real)?, format!("random_{o}x{o}"): time(&z, &rand_corr)?},
        "permute_ms": {"real_last_space": time(&Permute, &real)?, format!("random_{o}x{o}"): time(&Permute, &rand_corr)?},
        "threads": std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1),
    });
    if a.json {
        println!("{}", serde_json::to_string(&report)?);
    } else {
        println!("{}", serde_json::to_string_pretty(&report)?);
    }
    Ok(())
}
