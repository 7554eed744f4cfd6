//! `zipmerge bench`: throughput figures per backend — forward (eval) images/s, statistics
//! collection images/s, BN-reset images/s — and matcher times, so CPU and GPU runs compare.

use std::time::Instant;

use anyhow::Result;
use clap::Args;
use serde_json::json;

use zipmerge::collect::{collect, probe_batches, ProbeOptions};
use zipmerge::data::{to_tensor, ImageSet};
use zipmerge::matching::{correlation, Matcher, Permute, SquareMatrix, ZipIt};
use zipmerge::models::{init_state, Arch, ForwardCtx, Net, NetConfig};

use super::common::BackendArgs;

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
    #[arg(long, default_value_t = 1000)]
    pub images: usize,
    /// Batch size.
    #[arg(long, default_value_t = 250)]
    pub batch_size: usize,
    /// Matcher size: features per model (O = 2 x this).
    #[arg(long, default_value_t = 512)]
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
    // warm-up (kernel compilation on wgpu)
    let warm: Vec<&[u8]> = batches[0].iter().map(|v| v.as_slice()).collect();
    let _ = nets[0]
        .forward(
            to_tensor(&warm, cfg.preprocess(), &device),
            &mut ForwardCtx::default(),
        )
        .into_data();
    let t = Instant::now();
    for b in &batches {
        let r: Vec<&[u8]> = b.iter().map(|v| v.as_slice()).collect();
        let _ = nets[0]
            .forward(
                to_tensor(&r, cfg.preprocess(), &device),
                &mut ForwardCtx::default(),
            )
            .into_data();
    }
    let fwd = a.images as f64 / t.elapsed().as_secs_f64();
    let t = Instant::now();
    let accs = collect(&nets, &batches, &device, &mut |_| {})?;
    let stats = a.images as f64 / t.elapsed().as_secs_f64();
    let t = Instant::now();
    for b in &batches {
        let r: Vec<&[u8]> = b.iter().map(|v| v.as_slice()).collect();
        let mut ctx = ForwardCtx::recording_bn();
        let _ = nets[0]
            .forward(to_tensor(&r, cfg.preprocess(), &device), &mut ctx)
            .into_data();
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
        "forward_images_per_second": fwd,
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
