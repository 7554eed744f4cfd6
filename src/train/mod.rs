//! Training of endpoint models (reference doc §6, CLIP-head recipe): SGD with momentum 0.9 and
//! weight decay 5e-4 on all parameters, per-iteration learning-rate multiplier piecewise linear
//! through (0 -> 0), (warm-up epochs -> 1), (E -> 0), cross-entropy over the task's classes
//! (labels remapped to their index in the task), train augmentation (flip + pad-4 crop).
//!
//! Determinism: initial weights come from [`crate::models::init_state`] (ChaCha8), the epoch's
//! shuffle and augmentation from ChaCha8(seed, epoch); on the flex backend the same seed gives
//! the same checkpoint bytes. Every epoch writes a resumable state (`train-state/`).

pub mod engine_loop;
pub mod head_loss;
pub mod options;
pub mod run_state;

pub use options::{lr_multiplier, EpochLog, InitFrom, TrainObserver, TrainOptions};
pub use run_state::state_exists;
use run_state::{extension_note, read_info, state_err, write_err, write_info, ResumeInfo};

use std::path::{Path, PathBuf};

use burn::module::{Module, ModuleMapper, ModuleVisitor, Param, ParamId};
use burn::optim::decay::WeightDecayConfig;
use burn::optim::momentum::MomentumConfig;
use burn::optim::{GradientsParams, SgdConfig};
use burn::tensor::activation::log_softmax;
use burn::tensor::{Device, Int, Tensor, TensorData};
use rand::seq::SliceRandom;
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;

use crate::checkpoint::{self, safetensors_io, ModelManifest, StateDict};
use crate::data::augment::{augment_for, CutoutBox};
use crate::data::{to_tensor, ImageSet};
use crate::error::ModelError;
use crate::eval::argmax;
use crate::eval::runner::rows;
use crate::models::{init_state, ForwardCtx, Net};

/// The ids of a module's float parameters, in visiting order (an optimizer state is keyed by
/// them).
pub fn param_ids<M: Module>(net: &M) -> Vec<u64> {
    struct Ids(Vec<u64>);
    impl ModuleVisitor for Ids {
        fn visit_float<const D: usize>(&mut self, p: &Param<Tensor<D>>) {
            self.0.push(p.id.val());
        }
    }
    let mut v = Ids(Vec::new());
    net.visit(&mut v);
    v.0
}

/// `net` with its float parameters' ids set to `ids` (visiting order; [`param_ids`]), so that an
/// optimizer state saved with those ids applies to it.
pub fn with_param_ids<M: Module>(net: M, ids: &[u64]) -> M {
    struct SetIds<'a>(std::slice::Iter<'a, u64>);
    impl ModuleMapper for SetIds<'_> {
        fn map_float<const D: usize>(&mut self, mut p: Param<Tensor<D>>) -> Param<Tensor<D>> {
            if let Some(&id) = self.0.next() {
                p.id = ParamId::from(id);
            }
            p
        }
    }
    net.map(&mut SetIds(ids.iter()))
}

/// Trains a model; returns its final weights and the per-epoch log. The weights start from
/// `init` (a fine-tune: `opts.init` records where they come from) or from the seeded
/// initialisation.
///
/// `train`/`test` must already be restricted to the task's classes. When `state_dir` holds a
/// state from an earlier run with the same options, training resumes from it; a state of a run
/// of another length (`--resume --epochs N`, finished or not) continues to `opts.epochs` epochs
/// with the learning-rate schedule re-planned for them from the next epoch on (each epoch's
/// [`EpochLog::schedule_epochs`] records the plan it ran with; the change is reported through
/// [`TrainObserver::note`]).
///
/// `engine` picks the path on the flex CPU device: the CPU engine's training runtime
/// ([`engine_loop`]; PyTorch's BN running-variance rule) when true, burn's autodiff otherwise
/// (other devices always take burn's). A state is resumed only by the path that wrote it.
///
/// # Errors
/// [`ModelError`] for invalid options or an unreadable resume state.
#[allow(clippy::too_many_arguments)]
pub fn train(
    opts: &TrainOptions,
    init: Option<&StateDict>,
    train: &ImageSet,
    test: &ImageSet,
    device: &Device,
    state_dir: Option<&Path>,
    engine: bool,
    obs: &mut dyn TrainObserver,
) -> Result<(StateDict, Vec<EpochLog>), ModelError> {
    opts.net.validate()?;
    if train.is_empty() {
        return Err(ModelError::Training {
            msg: "no training images of the task's classes",
        });
    }
    if opts.batch_size == 0 || opts.epochs == 0 {
        return Err(ModelError::Training {
            msg: "the batch size and the epochs must be >= 1",
        });
    }
    if engine && *device == Device::flex() {
        return engine_loop::train_engine(opts, init, train, test, device, state_dir, obs);
    }
    let ad = device.clone().autodiff();
    let mut start_epoch = 0;
    let mut log = Vec::new();
    let mut optim = SgdConfig::new()
        .with_momentum(Some(MomentumConfig {
            momentum: opts.momentum,
            dampening: 0.0,
            nesterov: false,
        }))
        .with_weight_decay(Some(WeightDecayConfig::new(opts.weight_decay as f32)))
        .init();
    let mut net = match state_dir.map(|d| load_resume(d, opts, &ad)).transpose()? {
        Some(Some(r)) => {
            optim = optim
                .load(r.dir.join("optimizer.bpk"))
                .map_err(|e| state_err(r.dir, "optimizer.bpk", format!("cannot be read ({e})")))?;
            start_epoch = r.info.epochs_done;
            log = r.info.log.clone();
            if r.info.options.epochs != opts.epochs {
                obs.note(&extension_note(&r.info, opts));
            }
            r.net
        }
        _ => match init {
            Some(state) => Net::from_state(&opts.net, state, &ad)?,
            None => Net::from_state(&opts.net, &init_state(&opts.net, opts.seed), &ad)?,
        },
    };
    let remap: Vec<usize> = train
        .labels
        .iter()
        .map(|y| opts.classes.iter().position(|c| c == y).unwrap_or(0))
        .collect();
    let steps = train.len().div_ceil(opts.batch_size);
    for epoch in start_epoch..opts.epochs {
        obs.epoch_start(epoch + 1, steps);
        let t0 = std::time::Instant::now();
        let mut rng = ChaCha8Rng::seed_from_u64(opts.seed ^ ((epoch as u64 + 1) << 32));
        let mut order: Vec<usize> = (0..train.len()).collect();
        order.shuffle(&mut rng);
        let (mut loss_sum, mut correct, mut seen) = (0.0, 0usize, 0usize);
        let nb = train.prep.side().pow(2) * 3; // bytes of one augmented image
        let mut buf = vec![0u8; opts.batch_size * nb];
        for (s, chunk) in order.chunks(opts.batch_size).enumerate() {
            let mut boxes = Vec::new();
            for (n, &i) in chunk.iter().enumerate() {
                augment_for(
                    train.prep,
                    train.side,
                    train.image(i),
                    &mut buf[n * nb..(n + 1) * nb],
                    &mut rng,
                );
                if let Some(size) = opts.cutout {
                    boxes.push(CutoutBox::draw(train.prep.side(), size, &mut rng));
                }
            }
            let imgs: Vec<&[u8]> = (0..chunk.len())
                .map(|n| &buf[n * nb..(n + 1) * nb])
                .collect();
            let mut x = to_tensor(&imgs, train.prep, &ad);
            if !boxes.is_empty() {
                // Cutout after normalisation: the squares multiplied by 0 (CHW images)
                let side = train.prep.side();
                let mut mask = vec![1f32; boxes.len() * 3 * side * side];
                for (b, img) in boxes.iter().zip(mask.chunks_exact_mut(3 * side * side)) {
                    b.zero(img, side, 3, false);
                }
                let shape = [boxes.len(), 3, side, side];
                x = x.mul(Tensor::from_data(TensorData::new(mask, shape), &ad));
            }
            let y: Vec<i64> = chunk.iter().map(|&i| remap[i] as i64).collect();
            let yt = Tensor::<1, Int>::from_data(TensorData::new(y.clone(), [chunk.len()]), &ad);
            let out = net.forward(x, &mut ForwardCtx::default());
            let logits = opts.head.logits(out, &opts.classes, &opts.classes);
            let lp = log_softmax(logits.clone(), 1);
            let picked = lp.gather(1, yt.reshape([chunk.len(), 1]));
            let loss = picked.mean().neg();
            let t = epoch as f64 + (s as f64) / steps as f64;
            let lr = opts.lr * lr_multiplier(t, opts.warmup_epochs, opts.epochs as f64);
            let grads = GradientsParams::from_grads(loss.backward(), &net);
            net = optim.step(lr, net, grads);
            let lv = loss
                .into_data()
                .convert::<f64>()
                .try_to_vec::<f64>()
                .unwrap_or_default()[0];
            let pred = rows(logits.inner());
            correct += pred
                .iter()
                .zip(&y)
                .filter(|(p, y)| argmax(p) == **y as usize)
                .count();
            seen += chunk.len();
            loss_sum += lv * chunk.len() as f64;
            obs.step(loss_sum / seen as f64, 100.0 * correct as f64 / seen as f64);
        }
        let secs = t0.elapsed().as_secs_f64();
        let test_acc = task_accuracy(&net.valid(), opts, test, device);
        let entry = EpochLog::of(
            epoch + 1,
            (loss_sum, correct, seen),
            test_acc,
            secs,
            opts.epochs,
        );
        obs.epoch_end(&entry);
        log.push(entry);
        if let Some(dir) = state_dir {
            save_resume(dir, &net, &optim, epoch + 1, opts, &log)?;
        }
    }
    Ok((net.valid().to_state(), log))
}

/// The files of a training state folder.
const STATE_FILES: [&str; 3] = ["resume.json", "weights.safetensors", "optimizer.bpk"];

/// A training state that passed every check of [`load_resume`].
struct Resumed<'a> {
    dir: &'a Path,
    info: ResumeInfo,
    net: Net,
}

/// Reads and validates the training state in `dir` before anything of it is used: a training
/// state is untrusted input. `Ok(None)` when there is no state (no folder, or an empty one).
///
/// Checks, each error naming the state file and the field or tensor: `resume.json` present
/// beside any other state file and parseable; the options equal to `opts` (the differing ones
/// named, data folder and `--limit` included) except the run length `epochs`, which may change
/// (an extension); `epochs_done` within its run and below `opts.epochs` and equal to the log's
/// length; the parameter ids present and fitting the network; the weights present,
/// finite and shaped for the network; the optimizer file present (it is parsed by the caller).
/// Nothing is written or deleted.
fn load_resume<'a>(
    dir: &'a Path,
    opts: &TrainOptions,
    device: &Device,
) -> Result<Option<Resumed<'a>>, ModelError> {
    let Some(info) = read_info(dir, opts, "burn", &STATE_FILES)? else {
        return Ok(None);
    };
    let Some(saved) = info.param_ids.clone() else {
        return Err(state_err(
            dir,
            "resume.json",
            "written by an older zipmerge without parameter ids, so the optimizer's momentum cannot be restored: train again without --resume",
        ));
    };
    let file = dir.join("weights.safetensors");
    let state = safetensors_io::load(&file)?;
    crate::state::check_finite(&state, &file.display().to_string())?;
    let net = Net::from_state(&opts.net, &state, device).map_err(|e| {
        state_err(
            dir,
            "weights.safetensors",
            format!("not this network's: {e}"),
        )
    })?;
    if saved.len() != param_ids(&net).len() {
        return Err(state_err(
            dir,
            "resume.json",
            "parameter ids do not fit the network",
        ));
    }
    Ok(Some(Resumed {
        dir,
        info,
        net: with_param_ids(net, &saved),
    }))
}

fn save_resume(
    dir: &Path,
    net: &Net,
    optim: &burn::optim::ModuleOptimizer,
    done: usize,
    opts: &TrainOptions,
    log: &[EpochLog],
) -> Result<(), ModelError> {
    std::fs::create_dir_all(dir).map_err(|e| write_err(dir, e))?;
    safetensors_io::save(&net.valid().to_state(), &dir.join("weights.safetensors"))?;
    optim
        .save(dir.join("optimizer.bpk"))
        .map_err(|e| write_err(dir, e))?;
    let info = ResumeInfo {
        epochs_done: done,
        options: opts.clone(),
        log: log.to_vec(),
        param_ids: Some(param_ids(net)),
        path: None,
    };
    write_info(dir, &info)
}

/// Task accuracy (percent) of `net` on `test` (images of the task's classes), task known.
pub fn task_accuracy(net: &Net, opts: &TrainOptions, test: &ImageSet, device: &Device) -> f64 {
    let mut correct = 0;
    let idx: Vec<usize> = (0..test.len()).collect();
    for chunk in idx.chunks(500) {
        let imgs: Vec<&[u8]> = chunk.iter().map(|&i| test.image(i)).collect();
        let out = net.forward(
            to_tensor(&imgs, test.prep, device),
            &mut ForwardCtx::default(),
        );
        let l = rows(opts.head.logits(out, &opts.classes, &opts.classes));
        correct += chunk
            .iter()
            .zip(&l)
            .filter(|(&i, r)| opts.classes[argmax(r)] == test.labels[i])
            .count();
    }
    100.0 * correct as f64 / test.len().max(1) as f64
}

/// Writes a trained model folder (weights + manifest) atomically.
///
/// # Errors
/// [`ModelError`] when the folder cannot be written.
pub fn write_trained(
    out: &Path,
    opts: &TrainOptions,
    state: &StateDict,
    class_names: &[String],
    provenance: serde_json::Value,
) -> Result<PathBuf, ModelError> {
    let mut manifest = ModelManifest::single(
        &opts.net,
        opts.classes.clone(),
        opts.head.clone(),
        class_names.to_vec(),
        provenance,
    );
    manifest.preprocess = opts.preprocess;
    checkpoint::write_model(out, &manifest, &[("model.safetensors".into(), state)])?;
    Ok(out.to_path_buf())
}
