//! The training loop on the CPU engine ([`crate::engine::train::TrainNet`]): the same recipe,
//! batches, augmentation and learning-rate schedule as burn's loop in [`super::train`] (the
//! same ChaCha8 streams, so both paths see the same images in the same order), with the batch
//! of the next step assembled on a producer thread while the current one trains, the loss
//! from [`super::head_loss`], PyTorch's SGD and BN running statistics, and a resumable state
//! of its own (`weights.safetensors`, `momentum.safetensors`, `resume.json` marked `engine`).

use std::path::Path;
use std::sync::mpsc::sync_channel;

use burn::tensor::Device;
use rand::seq::SliceRandom;
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;

use super::head_loss::head_loss;
use super::options::{lr_multiplier, EpochLog, TrainObserver, TrainOptions};
use super::run_state::{extension_note, read_info, state_err, write_err, write_info, ResumeInfo};
use crate::checkpoint::safetensors_io;
use crate::data::augment::{augment_for, CutoutBox};
use crate::data::ImageSet;
use crate::engine::train::TrainNet;
use crate::engine::{Act, EngineCtx};
use crate::error::ModelError;
use crate::models::compile::compile_state;
use crate::models::init_state;
use crate::state::{NamedTensor, StateDict};

/// Files of an engine training state besides `resume.json`.
const ENGINE_FILES: [&str; 3] = ["resume.json", "weights.safetensors", "momentum.safetensors"];

/// One assembled batch: normalised NHWC images and labels (index into the task's classes).
struct Batch {
    x: Act,
    labels: Vec<usize>,
}

/// Trains on the engine; arguments and results as [`super::train`].
pub(crate) fn train_engine(
    opts: &TrainOptions,
    init: Option<&StateDict>,
    train: &ImageSet,
    test: &ImageSet,
    device: &Device,
    state_dir: Option<&Path>,
    obs: &mut dyn TrainObserver,
) -> Result<(StateDict, Vec<EpochLog>), ModelError> {
    let mut start_epoch = 0;
    let mut log = Vec::new();
    let resumed = match state_dir {
        Some(d) => read_info(d, opts, "engine", &ENGINE_FILES)?,
        None => None,
    };
    let (mut state, momentum) = match (&resumed, state_dir) {
        (Some(info), Some(dir)) => {
            let file = dir.join("weights.safetensors");
            let state = safetensors_io::load(&file)?;
            crate::state::check_finite(&state, &file.display().to_string())?;
            let m = safetensors_io::load(&dir.join("momentum.safetensors"))?;
            start_epoch = info.epochs_done;
            log = info.log.clone();
            if info.options.epochs != opts.epochs {
                obs.note(&extension_note(info, opts));
            }
            (state, Some(m))
        }
        _ => (
            match init {
                Some(s) => s.clone(),
                None => init_state(&opts.net, opts.seed),
            },
            None,
        ),
    };
    let compiled = compile_state(opts.net.arch, &state).map_err(|e| match state_dir {
        Some(d) if resumed.is_some() => {
            state_err(d, "weights.safetensors", format!("not this network's: {e}"))
        }
        _ => e,
    })?;
    let mut net = TrainNet::new(&compiled);
    if let (Some(m), Some(dir)) = (momentum, state_dir) {
        for p in net.params_mut() {
            match m.get(&p.name) {
                Some(t) if t.data.len() == p.value.len() => p.momentum = Some(t.data.clone()),
                _ => {
                    return Err(state_err(
                        dir,
                        "momentum.safetensors",
                        format!(
                            "has no momentum buffer of {} values for {}",
                            p.value.len(),
                            p.name
                        ),
                    ))
                }
            }
        }
    }
    let remap: Vec<usize> = train
        .labels
        .iter()
        .map(|y| opts.classes.iter().position(|c| c == y).unwrap_or(0))
        .collect();
    let steps = train.len().div_ceil(opts.batch_size);
    let nb = train.prep.side().pow(2) * 3;
    for epoch in start_epoch..opts.epochs {
        obs.epoch_start(epoch + 1, steps);
        let t0 = std::time::Instant::now();
        let (mut loss_sum, mut correct, mut seen) = (0.0, 0usize, 0usize);
        std::thread::scope(|scope| {
            let (tx, rx) = sync_channel::<Batch>(2);
            let remap = &remap;
            scope.spawn(move || {
                let mut rng = ChaCha8Rng::seed_from_u64(opts.seed ^ ((epoch as u64 + 1) << 32));
                let mut order: Vec<usize> = (0..train.len()).collect();
                order.shuffle(&mut rng);
                for chunk in order.chunks(opts.batch_size) {
                    let mut buf = vec![0u8; chunk.len() * nb];
                    let mut boxes = Vec::new();
                    for (n, &i) in chunk.iter().enumerate() {
                        let out = &mut buf[n * nb..(n + 1) * nb];
                        augment_for(train.prep, train.side, train.image(i), out, &mut rng);
                        if let Some(size) = opts.cutout {
                            boxes.push(CutoutBox::draw(train.prep.side(), size, &mut rng));
                        }
                    }
                    let imgs: Vec<&[u8]> = buf.chunks_exact(nb).collect();
                    let mut x = Act::from_images(&imgs, train.prep);
                    let px = x.side * x.side * x.c;
                    for (b, img) in boxes.iter().zip(x.data.chunks_exact_mut(px)) {
                        b.zero(img, train.prep.side(), 3, true);
                    }
                    let batch = Batch {
                        x,
                        labels: chunk.iter().map(|&i| remap[i]).collect(),
                    };
                    if tx.send(batch).is_err() {
                        return;
                    }
                }
            });
            for (s, batch) in rx.iter().enumerate() {
                let y = net.forward(batch.x);
                let h = head_loss(&opts.head, &opts.classes, &y, &batch.labels);
                net.backward(h.grad);
                let t = epoch as f64 + (s as f64) / steps as f64;
                let lr = opts.lr * lr_multiplier(t, opts.warmup_epochs, opts.epochs as f64);
                net.sgd_step(lr as f32, opts.momentum as f32, opts.weight_decay as f32);
                correct += h
                    .predicted
                    .iter()
                    .zip(&batch.labels)
                    .filter(|(p, y)| p == y)
                    .count();
                seen += batch.labels.len();
                loss_sum += h.loss * batch.labels.len() as f64;
                obs.step(loss_sum / seen as f64, 100.0 * correct as f64 / seen as f64);
            }
        });
        let secs = t0.elapsed().as_secs_f64();
        net.write_state(&mut state);
        let test_acc = engine_task_accuracy(&state, opts, test, device)?;
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
            save_engine_state(dir, &net, &state, epoch + 1, opts, &log)?;
        }
    }
    Ok((state, log))
}

/// Task accuracy (percent) of the weights `state` on `test`, through the engine's eval-mode
/// forward (running BN statistics) and the head's logits.
pub(crate) fn engine_task_accuracy(
    state: &StateDict,
    opts: &TrainOptions,
    test: &ImageSet,
    device: &Device,
) -> Result<f64, ModelError> {
    let net = compile_state(opts.net.arch, state)?;
    let mut correct = 0;
    let idx: Vec<usize> = (0..test.len()).collect();
    for chunk in idx.chunks(500) {
        let imgs: Vec<&[u8]> = chunk.iter().map(|&i| test.image(i)).collect();
        let out = net.forward(
            Act::from_images(&imgs, test.prep),
            &mut EngineCtx::default(),
        );
        let logits = opts
            .head
            .logits(out.to_logits(device), &opts.classes, &opts.classes);
        let l = crate::eval::runner::rows(logits);
        correct += chunk
            .iter()
            .zip(&l)
            .filter(|(&i, r)| opts.classes[crate::eval::argmax(r)] == test.labels[i])
            .count();
    }
    Ok(100.0 * correct as f64 / test.len().max(1) as f64)
}

fn save_engine_state(
    dir: &Path,
    net: &TrainNet,
    state: &StateDict,
    done: usize,
    opts: &TrainOptions,
    log: &[EpochLog],
) -> Result<(), ModelError> {
    std::fs::create_dir_all(dir).map_err(|e| write_err(dir, e))?;
    safetensors_io::save(state, &dir.join("weights.safetensors"))?;
    let momentum: StateDict = net
        .params()
        .iter()
        .filter_map(|p| {
            p.momentum.as_ref().map(|m| {
                let t = NamedTensor {
                    shape: vec![m.len()],
                    data: m.clone(),
                };
                (p.name.clone(), t)
            })
        })
        .collect();
    safetensors_io::save(&momentum, &dir.join("momentum.safetensors"))?;
    let info = ResumeInfo {
        epochs_done: done,
        options: opts.clone(),
        log: log.to_vec(),
        param_ids: None,
        path: Some("engine".into()),
    };
    write_info(dir, &info)
}
