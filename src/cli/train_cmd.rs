//! `zipmerge train`: train an endpoint on a class subset and write checkpoint + manifest.

use std::path::PathBuf;

use anyhow::{bail, Context, Result};
use clap::Args;

use zipmerge::data::tasks::{format_tasks, parse_classes, random_split};
use zipmerge::models::{param_count, Arch, NetConfig};
use zipmerge::train::{self, EpochLog, TrainObserver, TrainOptions};

use super::common::{
    arch_parser, build_head, command_line, data_error, data_root, load_split_classes, non_negative,
    parse_head, positive, usage, BackendArgs, UsageExt,
};
use zipmerge::data::{split_dir, ImageSet};
use zipmerge::progress::Observer;

use super::printer::Printer;

/// Arguments of `zipmerge train`.
#[derive(Args, Debug)]
pub struct TrainArgs {
    /// Architecture.
    #[arg(long, default_value = "resnet20", value_parser = arch_parser())]
    pub arch: Arch,
    /// Width multiplier (>= 1).
    #[arg(long, default_value_t = 1)]
    pub width: usize,
    /// Head: `linear`, or `text[:FILE]` (frozen class embeddings; default file
    /// datasets/class-text-embeddings.json, a copy of the shared CIFAR-10 embedding file).
    #[arg(long, default_value = "text")]
    pub head: String,
    /// Data root holding train/ and test/ (ImageFolder or CIFAR binary); default $ZIPMERGE_DATA,
    /// else datasets/cifar10-sample.
    #[arg(long)]
    pub data: Option<PathBuf>,
    /// Task classes, e.g. `0,1,2,3,4`.
    #[arg(long, conflicts_with = "split")]
    pub classes: Option<String>,
    /// Seeded random disjoint split, e.g. `5+5` (use with --split-seed and --part).
    #[arg(long)]
    pub split: Option<String>,
    /// Seed of --split.
    #[arg(long, default_value_t = 0)]
    pub split_seed: u64,
    /// Which part of --split to train on (0-based).
    #[arg(long, default_value_t = 0)]
    pub part: usize,
    /// Epochs.
    #[arg(long, default_value_t = 100, value_parser = positive)]
    pub epochs: usize,
    /// Warm-up epochs (linear from 0, then linear decay to 0).
    #[arg(long, default_value_t = 5.0, value_parser = non_negative)]
    pub warmup: f64,
    /// Mini-batch size.
    #[arg(long, default_value_t = 500, value_parser = positive)]
    pub batch_size: usize,
    /// Peak learning rate (SGD, momentum 0.9, weight decay 5e-4).
    #[arg(long, default_value_t = 0.4, value_parser = non_negative)]
    pub lr: f64,
    /// Weight decay.
    #[arg(long, default_value_t = 5e-4, value_parser = non_negative)]
    pub weight_decay: f64,
    /// Seed of initial weights, shuffling and augmentation.
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    /// Use only N training images of the task, a subset drawn with --seed (for quick runs);
    /// default all.
    #[arg(long, value_parser = positive)]
    pub limit: Option<usize>,
    /// Output model folder.
    #[arg(long)]
    pub out: PathBuf,
    /// Resume from OUT.train-state if present.
    #[arg(long)]
    pub resume: bool,
    #[command(flatten)]
    pub backend: BackendArgs,
}

/// Training progress on the printer: a bar per epoch, one line per finished epoch.
struct Bars<'a>(&'a mut Printer);

impl TrainObserver for Bars<'_> {
    fn epoch_start(&mut self, epoch: usize, steps: usize) {
        self.0.begin(&format!("epoch {epoch}"), steps as u64);
    }
    fn step(&mut self, loss: f64, acc: f64) {
        self.0.status(&format!("loss {loss:.3} acc {acc:.1}%"));
        self.0.advance(1);
    }
    fn epoch_end(&mut self, l: &EpochLog) {
        self.0.end();
        self.0.info(&format!(
            "epoch {:>3}: loss {:.4}  train acc {:.2}%  test task acc {:.2}%  ({:.1}s)",
            l.epoch, l.loss, l.train_accuracy, l.test_accuracy, l.seconds
        ));
    }
}

/// Runs `zipmerge train`.
pub fn exec(a: TrainArgs, p: &mut Printer) -> Result<()> {
    let arch = a.arch;
    if a.out.exists() && !a.out.is_dir() {
        return Err(usage(format!(
            "--out {}: exists and is not a folder; choose another --out",
            a.out.display()
        )));
    }
    zipmerge::checkpoint::check_out_dir(&a.out)?;
    NetConfig {
        arch,
        width: a.width,
        out: 1,
    }
    .check("--width")
    .usage()?;
    parse_head(&a.head)?;
    let root = data_root(a.data.as_deref());
    let prep = NetConfig {
        arch,
        width: a.width,
        out: 1,
    }
    .preprocess();
    let n = ImageSet::class_names_of(&split_dir(&root, "train"), "train")
        .context("loading train images")?
        .len();
    let (classes, split_lists) = match (&a.classes, &a.split) {
        (Some(c), _) => (
            parse_classes(c, n).map_err(|e| usage(format!("--classes: {e}")))?,
            None,
        ),
        (None, Some(s)) => {
            let parts = random_split(s, a.split_seed, n).map_err(data_error)?;
            if a.part >= parts.len() {
                return Err(usage(format!(
                    "--part {}: --split {s} has only {} parts",
                    a.part,
                    parts.len()
                )));
            }
            p.info(&format!(
                "split {s} (seed {}): {}",
                a.split_seed,
                format_tasks(&parts)
            ));
            (parts[a.part].clone(), Some(parts))
        }
        (None, None) => {
            return Err(usage(
                "give the task's classes with --classes 0,1,2 or --split 5+5 --split-seed S",
            ))
        }
    };
    let head = build_head(&a.head, &classes)?;
    let net = NetConfig {
        arch,
        width: a.width,
        out: head.net_outputs(classes.len()),
    };
    let mut train_task = load_split_classes(&root, "train", prep, Some(&classes), p)?;
    if let Some(l) = a.limit {
        use rand::{seq::SliceRandom, SeedableRng};
        let mut idx: Vec<usize> = (0..train_task.len()).collect();
        idx.shuffle(&mut rand_chacha::ChaCha8Rng::seed_from_u64(a.seed));
        idx.truncate(l);
        idx.sort_unstable();
        train_task = train_task.subset(&idx);
    }
    let test_task = load_split_classes(&root, "test", prep, Some(&classes), p)?;
    if train_task.is_empty() {
        bail!(
            "{}: no training images of classes {classes:?}",
            root.display()
        );
    }
    let opts = TrainOptions {
        net,
        head,
        classes: classes.clone(),
        epochs: a.epochs,
        warmup_epochs: a.warmup,
        batch_size: a.batch_size,
        lr: a.lr,
        momentum: 0.9,
        weight_decay: a.weight_decay,
        seed: a.seed,
    };
    let device = a.backend.device(p)?;
    p.info(&format!(
        "training {arch} x{} ({} params, {} forward MACs/image) on classes {classes:?}: {} train / {} test images",
        a.width,
        param_count(&net),
        net.flops(),
        train_task.len(),
        test_task.len()
    ));
    let state_dir = PathBuf::from(format!("{}.train-state", a.out.display()));
    if !a.resume && state_dir.exists() {
        std::fs::remove_dir_all(&state_dir).ok();
    }
    let t0 = std::time::Instant::now();
    let mut obs = Bars(p);
    let (state, log) = train::train(
        &opts,
        &train_task,
        &test_task,
        &device,
        Some(&state_dir),
        &mut obs,
    )?;
    let final_acc = log.last().map(|l| l.test_accuracy).unwrap_or(0.0);
    let provenance = serde_json::json!({
        "training": {
            "data": root.display().to_string(),
            "train_images": train_task.len(),
            "test_images": test_task.len(),
            "classes": classes,
            "split": a.split.as_ref().map(|s| serde_json::json!({"spec": s, "seed": a.split_seed, "part": a.part, "lists": split_lists})),
            "seed": a.seed,
            "epochs": a.epochs,
            "warmup_epochs": a.warmup,
            "batch_size": a.batch_size,
            "lr": a.lr,
            "momentum": 0.9,
            "weight_decay": a.weight_decay,
            "optimizer": "SGD (PyTorch semantics: dampening 0), weight decay on all parameters",
            "schedule": "per-iteration linear warm-up from 0, then linear decay to 0",
            "augmentation": match prep {
                zipmerge::data::Preprocess::Cifar => "random horizontal flip + random crop 32 with 4-pixel zero padding",
                zipmerge::data::Preprocess::ImageNet => "RandomResizedCrop(224, scale 0.08-1, ratio 3/4-4/3) of the image stored at 256x256 (resize 256 + centre crop 256) + random horizontal flip; test: resize 256 + centre crop 224; ImageNet mean/std",
            },
            "backend": a.backend.backend.to_string(),
            "command": command_line(),
            "final_task_accuracy": final_acc,
            "wall_seconds": t0.elapsed().as_secs_f64(),
            "epochs_log": log,
        }
    });
    train::write_trained(&a.out, &opts, &state, &train_task.class_names, provenance)
        .with_context(|| format!("writing {}", a.out.display()))?;
    std::fs::remove_dir_all(&state_dir).ok();
    println!(
        "wrote {} (task accuracy {final_acc:.2}% on {} test images)",
        a.out.display(),
        test_task.len()
    );
    Ok(())
}
