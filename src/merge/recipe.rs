//! A merge as data: the [`Recipe`] every `report.json` records (under `recipe`) and
//! `zipmerge merge --recipe FILE` replays. It holds what decides the merged weights (the source
//! models, the probe folder, and the combine step: the stop, method, draws, corrections, batch
//! size and seed of an aligning merge, or the base and task-vector settings of a merge of
//! fine-tunes) and the evaluation; it does not hold where the result goes, the device or the
//! pixel cache. The same recipe on the same
//! backend gives the same `model.safetensors` bytes (tested in `tests/recipe.rs`).
//!
//! A recipe file is untrusted input: it is parsed strictly (`deny_unknown_fields`, versioned by
//! [`RECIPE_VERSION`]) and checked like the command line's options ([`MergeSettings::check`]).

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use super::plan::{tv_error, EvalPlan, MergePlan, MergeSettings, TaskVectorPlan};
use crate::error::{MergeError, MergeParam};
use crate::system::runner::Runner;
use crate::taskvec::TaskVectorSettings;

/// The version of the recipe format this build reads and writes.
pub const RECIPE_VERSION: u32 = 1;

/// One merge, replayable ([`Recipe::plan`]).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Recipe {
    /// Format version ([`RECIPE_VERSION`]).
    pub recipe_version: u32,
    /// Source model folders (N >= 2), as given: the endpoints of an aligning merge, the
    /// fine-tunes of a task-vector merge.
    pub models: Vec<PathBuf>,
    /// Probe folder (statistics and BN-reset images).
    pub probe_dir: PathBuf,
    /// How the models are combined.
    pub combine: Combine,
    /// Evaluation after the merge (`None`: skipped).
    pub eval: Option<EvalPlan>,
}

/// The combine step of a merge: the two families of the field, side by side.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "kebab-case", deny_unknown_fields)]
pub enum Combine {
    /// Models trained apart: statistics -> matching -> rewriting up to a stop (ZipIt!, Permute,
    /// W.Avg, Git Re-Basin, CCA Merge; [`crate::matching::method`]).
    Align {
        /// Stop: `7/20`, `layer2`, `full`, ...
        stop: String,
        /// Method, draws, corrections, batch size, seed.
        settings: MergeSettings,
    },
    /// Fine-tunes of one base: an element-wise combination of their task vectors (Task
    /// Arithmetic, TIES, DARE; [`crate::taskvec`]), then the merged BN reset.
    TaskVector {
        /// The base model folder the fine-tunes start from.
        base: PathBuf,
        /// Method, lambda, weights, DARE's seed.
        settings: TaskVectorSettings,
        /// Images of the merged BN reset (`Some(0)`: the base's statistics are kept).
        bn_reset_images: Option<usize>,
        /// Images per batch of the BN reset and the evaluation.
        batch_size: usize,
        /// Seed of the BN-reset draw.
        seed: u64,
    },
}

/// A recipe made ready to run: the plan of its family.
#[derive(Clone, Debug)]
pub enum RecipePlan {
    /// An aligning merge ([`crate::ops::merge::run`]).
    Align(MergePlan),
    /// A task-vector merge ([`crate::ops::task_vectors::run_task_vectors`]).
    TaskVector(TaskVectorPlan),
}

impl Recipe {
    /// The recipe of an aligning merge's `plan`.
    pub fn of(plan: &MergePlan) -> Self {
        Self {
            recipe_version: RECIPE_VERSION,
            models: plan.models.clone(),
            probe_dir: plan.probe_dir.clone(),
            combine: Combine::Align {
                stop: plan.stop.clone(),
                settings: plan.settings.clone(),
            },
            eval: plan.eval.clone(),
        }
    }

    /// The recipe of a task-vector merge's `plan`.
    pub fn of_task_vectors(plan: &TaskVectorPlan) -> Self {
        Self {
            recipe_version: RECIPE_VERSION,
            models: plan.models.clone(),
            probe_dir: plan.probe_dir.clone(),
            combine: Combine::TaskVector {
                base: plan.base.clone(),
                settings: plan.settings.clone(),
                bn_reset_images: plan.bn_reset_images,
                batch_size: plan.batch_size,
                seed: plan.seed,
            },
            eval: plan.eval.clone(),
        }
    }

    /// Reads a recipe from `path`: a recipe file, or a merge's `report.json` (its `recipe`).
    ///
    /// # Errors
    /// [`MergeError::Param`] naming `--recipe` and the file: unreadable, not JSON, not a
    /// recipe (an unknown or missing field is named), another format version, or settings
    /// out of range.
    pub fn read(path: &Path) -> Result<Self, MergeError> {
        let bad =
            |msg: String| MergeError::param(MergeParam::Recipe, path.display().to_string(), msg);
        let bytes = std::fs::read(path).map_err(|e| bad(format!("cannot be read ({e})")))?;
        let value: serde_json::Value =
            serde_json::from_slice(&bytes).map_err(|e| bad(format!("not JSON ({e})")))?;
        let value = match value {
            serde_json::Value::Object(mut o) if o.contains_key("recipe") => {
                o.remove("recipe").unwrap_or_default()
            }
            v => v,
        };
        if let Some(v) = value.get("recipe_version") {
            if v.as_u64() != Some(RECIPE_VERSION as u64) {
                return Err(bad(format!(
                    "recipe_version {v}: this build reads version {RECIPE_VERSION}"
                )));
            }
        }
        let r: Recipe = serde_json::from_value(value)
            .map_err(|e| bad(format!("not a zipmerge merge recipe ({e})")))?;
        r.check().map_err(|e| bad(e.to_string()))?;
        Ok(r)
    }

    /// Checks what the recipe's fields can say on their own.
    ///
    /// # Errors
    /// [`MergeError::Param`] for fewer than two models or settings out of range.
    pub fn check(&self) -> Result<(), MergeError> {
        if self.models.len() < 2 {
            return Err(MergeError::param(
                MergeParam::Models,
                self.models.len(),
                "a merge needs at least two models",
            ));
        }
        match &self.combine {
            Combine::Align { settings, .. } => settings.check(),
            Combine::TaskVector {
                settings,
                batch_size,
                ..
            } => {
                if *batch_size == 0 {
                    return Err(MergeError::param(
                        MergeParam::BatchSize,
                        0,
                        "expected an integer >= 1",
                    ));
                }
                settings
                    .check(self.models.len())
                    .map_err(|e| tv_error(e, &self.models))
            }
        }
    }

    /// The plan that replays this recipe with the forward path `runner` (`backend` names it
    /// for the provenance) and a pixel cache of `cache_gib` GiB per folder; `command` is
    /// recorded.
    pub fn plan(
        &self,
        cache_gib: f64,
        runner: Runner,
        backend: &str,
        command: String,
    ) -> RecipePlan {
        match &self.combine {
            Combine::Align { stop, settings } => RecipePlan::Align(MergePlan {
                models: self.models.clone(),
                stop: stop.clone(),
                settings: settings.clone(),
                probe_dir: self.probe_dir.clone(),
                eval: self.eval.clone(),
                cache_gib,
                device: runner,
                backend: backend.to_string(),
                command,
            }),
            Combine::TaskVector {
                base,
                settings,
                bn_reset_images,
                batch_size,
                seed,
            } => RecipePlan::TaskVector(TaskVectorPlan {
                base: base.clone(),
                models: self.models.clone(),
                settings: settings.clone(),
                bn_reset_images: *bn_reset_images,
                batch_size: *batch_size,
                seed: *seed,
                probe_dir: self.probe_dir.clone(),
                eval: self.eval.clone(),
                cache_gib,
                device: runner,
                backend: backend.to_string(),
                command,
            }),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::merge::{Method, Similarity};

    fn sample() -> Recipe {
        let mut s = MergeSettings::new(Method::Zipit {
            alpha: 0.3,
            beta: 0.125,
        });
        s.similarity = Similarity::Dual(0.1 + 0.2);
        s.corrections.refit_ridge = Some(1e-3);
        Recipe {
            recipe_version: RECIPE_VERSION,
            models: vec!["a".into(), "b".into()],
            probe_dir: "d/train".into(),
            combine: Combine::Align {
                stop: "13/20".into(),
                settings: s,
            },
            eval: None,
        }
    }

    /// Every field survives JSON, f64 bits included (0.1 + 0.2 is not 0.3).
    #[test]
    fn recipe_round_trips_through_json_bit_for_bit() {
        let r = sample();
        let text = serde_json::to_string_pretty(&r).unwrap();
        let back: Recipe = serde_json::from_str(&text).unwrap();
        assert_eq!(back, r);
        let Combine::Align { settings, .. } = &back.combine else {
            panic!("combine")
        };
        let Similarity::Dual(l) = settings.similarity else {
            panic!("similarity")
        };
        assert_eq!(l.to_bits(), (0.1f64 + 0.2).to_bits());
    }

    /// Unknown fields, other versions and a report without a recipe are refused by name.
    #[test]
    fn recipe_read_refuses_what_it_does_not_know() {
        let dir = std::env::temp_dir().join(format!("zipmerge-recipe-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let f = dir.join("r.json");
        let mut v = serde_json::to_value(sample()).unwrap();
        v["combine"]["settings"]["alpah"] = 1.into();
        std::fs::write(&f, v.to_string()).unwrap();
        let e = Recipe::read(&f).unwrap_err().to_string();
        assert!(e.contains("recipe `") && e.contains("alpah"), "{e}");
        let mut v = serde_json::to_value(sample()).unwrap();
        v["recipe_version"] = 2.into();
        std::fs::write(&f, v.to_string()).unwrap();
        let e = Recipe::read(&f).unwrap_err().to_string();
        assert!(e.contains("recipe_version 2"), "{e}");
        // a report wrapping the recipe is read; one without it is not a recipe
        let wrapped = serde_json::json!({"method": "ZipIt!", "recipe": sample()});
        std::fs::write(&f, wrapped.to_string()).unwrap();
        assert_eq!(Recipe::read(&f).unwrap(), sample());
        std::fs::write(&f, r#"{"method": "ZipIt!"}"#).unwrap();
        let e = Recipe::read(&f).unwrap_err().to_string();
        assert!(e.contains("not a zipmerge merge recipe"), "{e}");
        let _ = std::fs::remove_dir_all(&dir);
    }
}
