//! A merge as data: the [`Recipe`] every `report.json` records (under `recipe`) and
//! `zipmerge merge --recipe FILE` replays. It holds what decides the merged weights (the source
//! models, the stop, the probe folder, the method with its hyper-parameters, the probe and
//! BN-reset draws, the corrections, the batch size and the seed) and the evaluation; it does
//! not hold where the result goes, the device or the pixel cache. The same recipe on the same
//! backend gives the same `model.safetensors` bytes (tested in `tests/recipe.rs`).
//!
//! A recipe file is untrusted input: it is parsed strictly (`deny_unknown_fields`, versioned by
//! [`RECIPE_VERSION`]) and checked like the command line's options ([`MergeSettings::check`]).

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use super::plan::{EvalPlan, MergePlan, MergeSettings};
use crate::error::{MergeError, MergeParam};

/// The version of the recipe format this build reads and writes.
pub const RECIPE_VERSION: u32 = 1;

/// One merge, replayable ([`Recipe::plan`]).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Recipe {
    /// Format version ([`RECIPE_VERSION`]).
    pub recipe_version: u32,
    /// Source model folders (N >= 2), as given.
    pub models: Vec<PathBuf>,
    /// Stop: `7/20`, `layer2`, `full`, ...
    pub stop: String,
    /// Probe folder (statistics and BN-reset images).
    pub probe_dir: PathBuf,
    /// Method, draws, corrections, batch size, seed.
    pub settings: MergeSettings,
    /// Evaluation after the merge (`None`: skipped).
    pub eval: Option<EvalPlan>,
}

impl Recipe {
    /// The recipe of `plan`.
    pub fn of(plan: &MergePlan) -> Self {
        Self {
            recipe_version: RECIPE_VERSION,
            models: plan.models.clone(),
            stop: plan.stop.clone(),
            probe_dir: plan.probe_dir.clone(),
            settings: plan.settings.clone(),
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
        self.settings.check()
    }

    /// The plan that replays this recipe on `device` (`backend` names it for the provenance),
    /// with a pixel cache of `cache_gib` GiB per folder; `command` is recorded.
    pub fn plan(
        &self,
        cache_gib: f64,
        device: crate::system::runner::Runner,
        backend: &str,
        command: String,
    ) -> MergePlan {
        MergePlan {
            models: self.models.clone(),
            stop: self.stop.clone(),
            settings: self.settings.clone(),
            probe_dir: self.probe_dir.clone(),
            eval: self.eval.clone(),
            cache_gib,
            device,
            backend: backend.to_string(),
            command,
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
            stop: "13/20".into(),
            probe_dir: "d/train".into(),
            settings: s,
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
        let Similarity::Dual(l) = back.settings.similarity else {
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
        v["settings"]["alpah"] = 1.into();
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
