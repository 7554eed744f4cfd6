//! What defines a training run and what it reports: the options (recorded in the state and the
//! manifest), the per-epoch log, the observer, and the learning-rate schedule (reference doc §6).

use serde::{Deserialize, Serialize};

use crate::models::head::HeadSpec;
use crate::models::NetConfig;

/// Everything that defines a training run.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct TrainOptions {
    /// Network shape (out = head outputs).
    pub net: NetConfig,
    /// Head kind.
    pub head: HeadSpec,
    /// Task classes (label ids), in head output order.
    pub classes: Vec<usize>,
    /// Epochs E.
    pub epochs: usize,
    /// Warm-up epochs (linear from 0).
    pub warmup_epochs: f64,
    /// Mini-batch size.
    pub batch_size: usize,
    /// Peak learning rate.
    pub lr: f64,
    /// SGD momentum.
    pub momentum: f64,
    /// Weight decay.
    pub weight_decay: f64,
    /// Seed of initial weights, shuffling and augmentation.
    pub seed: u64,
    /// The data root the training images come from (resolved), so that a state is never
    /// resumed on other data.
    #[serde(default)]
    pub data_root: String,
    /// `--limit`: the size of the seeded training subset (`None`: all the task's images).
    #[serde(default)]
    pub limit: Option<usize>,
    /// Training images used (after `limit`).
    #[serde(default)]
    pub train_images: usize,
    /// The model the weights start from (`train --init`; `None`: the seeded initialisation).
    #[serde(default)]
    pub init: Option<InitFrom>,
    /// The `--init` model's own input preprocessing, carried into the trained model (`None`:
    /// the architecture's).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub preprocess: Option<crate::data::Preprocess>,
    /// `--cutout`: side, pixels, of the Cutout square zeroed in every training image after the
    /// flip and crop ([`crate::data::augment::CutoutBox`]); `None`: no Cutout.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cutout: Option<usize>,
}

/// The starting point of a fine-tune (`train --init BASE`).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct InitFrom {
    /// The base model folder, as given.
    pub model: String,
    /// SHA-256 of the base's weight file, hex.
    pub weights_sha256: String,
}

impl TrainOptions {
    /// The command-line option that sets the [`TrainOptions`] field `field` (for messages).
    fn option_of(field: &str) -> &str {
        match field {
            "net" => "--arch/--width",
            "head" => "--head",
            "classes" => "--classes/--split/--part",
            "epochs" => "--epochs",
            "warmup_epochs" => "--warmup",
            "batch_size" => "--batch-size",
            "lr" => "--lr",
            "weight_decay" => "--weight-decay",
            "seed" => "--seed",
            "data_root" => "--data",
            "limit" => "--limit",
            "train_images" => "the number of training images",
            "init" => "--init",
            "preprocess" => "--init (its preprocessing)",
            "cutout" => "--cutout",
            other => other,
        }
    }

    /// The options (named as on the command line, with both values) in which `saved` differs
    /// from `self`; empty when they agree.
    pub fn differences(&self, saved: &TrainOptions) -> Vec<String> {
        let (Ok(serde_json::Value::Object(now)), Ok(serde_json::Value::Object(then))) =
            (serde_json::to_value(self), serde_json::to_value(saved))
        else {
            return vec!["(options not comparable)".into()];
        };
        let short = |v: Option<&serde_json::Value>| {
            let s = v.map_or_else(|| "none".to_string(), |v| v.to_string());
            let s = if s == "null" { "none".to_string() } else { s };
            if s.chars().count() > 60 {
                format!("{}...", s.chars().take(57).collect::<String>())
            } else {
                s
            }
        };
        now.iter()
            .filter(|(k, v)| then.get(*k) != Some(*v))
            .map(|(k, v)| {
                format!(
                    "{} ({} in the state, {} now)",
                    Self::option_of(k),
                    short(then.get(k)),
                    short(Some(v))
                )
            })
            .collect()
    }
}

/// Learning-rate multiplier at fractional epoch `t` (reference doc §6).
pub fn lr_multiplier(t: f64, warmup: f64, epochs: f64) -> f64 {
    if t < warmup {
        t / warmup
    } else {
        ((epochs - t) / (epochs - warmup).max(1e-9)).clamp(0.0, 1.0)
    }
}

/// Per-epoch record.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct EpochLog {
    /// 1-based epoch.
    pub epoch: usize,
    /// Mean training loss.
    pub loss: f64,
    /// Training accuracy (augmented batches), percent.
    pub train_accuracy: f64,
    /// Task accuracy on the task's test images, percent.
    pub test_accuracy: f64,
    /// Seconds spent in the epoch's training steps.
    pub seconds: f64,
    /// The run length, epochs, the learning-rate schedule of this epoch was planned for: the
    /// run's `--epochs`, or an earlier value for the epochs of a run extended by `--resume
    /// --epochs N` (0: not recorded, a log written before extensions existed).
    #[serde(default)]
    pub schedule_epochs: usize,
}

impl EpochLog {
    /// The record of epoch `epoch` (1-based) from the sums over its steps: `loss_sum` (loss
    /// times images), `correct` and `seen` images.
    pub fn of(
        epoch: usize,
        (loss_sum, correct, seen): (f64, usize, usize),
        test_accuracy: f64,
        seconds: f64,
        schedule_epochs: usize,
    ) -> Self {
        Self {
            epoch,
            loss: loss_sum / seen.max(1) as f64,
            train_accuracy: 100.0 * correct as f64 / seen.max(1) as f64,
            test_accuracy,
            seconds,
            schedule_epochs,
        }
    }
}

/// What the caller sees during training.
pub trait TrainObserver {
    /// Start of an epoch with `steps` steps.
    fn epoch_start(&mut self, _epoch: usize, _steps: usize) {}
    /// After each step: running loss and accuracy.
    fn step(&mut self, _loss: f64, _acc: f64) {}
    /// End of an epoch.
    fn epoch_end(&mut self, _log: &EpochLog) {}
    /// A line about the run (a resumed run whose schedule is re-planned).
    fn note(&mut self, _line: &str) {}
}
