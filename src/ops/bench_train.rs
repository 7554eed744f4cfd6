//! Training throughput (`zipmerge bench --train`): images/s of full SGD steps (train-mode
//! forward, cross-entropy over 10 classes of a linear head, backward, SGD with momentum 0.9 and
//! weight decay 5e-4) at each batch size, on the CPU engine's training runtime or burn's
//! autodiff, on the embedded sample's images (no augmentation: the data side runs on its own
//! thread in `zipmerge train`) and seeded weights. Figures, not tests.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::Instant;

use burn::optim::decay::WeightDecayConfig;
use burn::optim::momentum::MomentumConfig;
use burn::optim::{GradientsParams, SgdConfig};
use burn::tensor::activation::log_softmax;
use burn::tensor::{Int, Tensor, TensorData};
use serde::Serialize;

use crate::data::{to_tensor, ImageSet};
use crate::engine::train::TrainNet;
use crate::engine::Act;
use crate::error::MergeError;
use crate::models::compile::compile_state;
use crate::models::head::HeadSpec;
use crate::models::{init_state, Arch, ForwardCtx, Net, NetConfig};
use crate::system::runner::Runner;
use crate::train::head_loss::head_loss;

/// What to measure.
#[derive(Clone, Debug)]
pub struct TrainBenchPlan {
    /// Architecture and width (10 outputs, linear head).
    pub cfg: NetConfig,
    /// Batch sizes, each timed separately.
    pub batch_sizes: Vec<usize>,
    /// Images trained per measurement (at least two steps are timed).
    pub images: usize,
    /// The sample's train folder.
    pub sample_dir: PathBuf,
    /// Device and path: the engine's training runtime on the CPU engine, burn's autodiff
    /// otherwise.
    pub device: Runner,
    /// Backend name, for the report.
    pub backend: String,
}

/// The figures of one run (`zipmerge bench --train --json`; the keys are a stable interface).
#[derive(Clone, Debug, Serialize)]
pub struct TrainBenchReport {
    /// Backend name.
    pub backend: String,
    /// Architecture.
    pub arch: Arch,
    /// Width multiplier.
    pub width: usize,
    /// `cpu-engine` or `burn`: which training path the figures are of.
    pub engine: &'static str,
    /// Training images/s (forward + backward + SGD step) per batch size.
    pub train_images_per_second: BTreeMap<usize, f64>,
    /// Images timed per batch size (whole steps).
    pub images_timed: BTreeMap<usize, usize>,
    /// Threads available.
    pub threads: usize,
}

/// Measures `plan`: one warm-up step, then whole steps covering at least `plan.images` images
/// (and two steps) per batch size.
///
/// # Errors
/// [`MergeError`] for an invalid configuration or an unreadable sample.
pub fn bench_train(plan: &TrainBenchPlan) -> Result<TrainBenchReport, MergeError> {
    let cfg = NetConfig {
        out: 10,
        ..plan.cfg
    };
    cfg.validate()?;
    let set = ImageSet::load(&plan.sample_dir, "train", cfg.preprocess())?;
    let state = init_state(&cfg, 1);
    let classes: Vec<usize> = (0..10).collect();
    let engine = plan.device.engine();
    let mut rates = BTreeMap::new();
    let mut timed = BTreeMap::new();
    for &bs in &plan.batch_sizes {
        let imgs: Vec<&[u8]> = (0..bs).map(|i| set.image(i % set.len())).collect();
        let labels: Vec<usize> = (0..bs).map(|i| set.labels[i % set.len()]).collect();
        let steps = plan.images.div_ceil(bs).max(2);
        let secs = if engine {
            let mut net = TrainNet::new(&compile_state(cfg.arch, &state)?);
            let mut step = || {
                let y = net.forward(Act::from_images(&imgs, cfg.preprocess()));
                let h = head_loss(&HeadSpec::Linear, &classes, &y, &labels);
                net.backward(h.grad);
                net.sgd_step(0.01, 0.9, 5e-4);
            };
            step();
            let t = Instant::now();
            (0..steps).for_each(|_| step());
            t.elapsed().as_secs_f64()
        } else {
            let ad = plan.device.device().clone().autodiff();
            let mut net = Net::from_state(&cfg, &state, &ad)?;
            let mut optim = SgdConfig::new()
                .with_momentum(Some(MomentumConfig {
                    momentum: 0.9,
                    dampening: 0.0,
                    nesterov: false,
                }))
                .with_weight_decay(Some(WeightDecayConfig::new(5e-4)))
                .init();
            let y: Vec<i64> = labels.iter().map(|&l| l as i64).collect();
            let mut step = || {
                let x = to_tensor(&imgs, cfg.preprocess(), &ad);
                let yt = Tensor::<1, Int>::from_data(TensorData::new(y.clone(), [bs]), &ad);
                let out = net.forward(x, &mut ForwardCtx::default());
                let loss = log_softmax(out, 1)
                    .gather(1, yt.reshape([bs, 1]))
                    .mean()
                    .neg();
                let grads = GradientsParams::from_grads(loss.backward(), &net);
                net = optim.step(0.01, net.clone(), grads);
            };
            step();
            let t = Instant::now();
            (0..steps).for_each(|_| step());
            t.elapsed().as_secs_f64()
        };
        rates.insert(bs, (steps * bs) as f64 / secs);
        timed.insert(bs, steps * bs);
    }
    Ok(TrainBenchReport {
        backend: plan.backend.clone(),
        arch: cfg.arch,
        width: cfg.width,
        engine: if engine { "cpu-engine" } else { "burn" },
        train_images_per_second: rates,
        images_timed: timed,
        threads: rayon::current_num_threads(),
    })
}
