//! `zipmerge eval`: one model folder, or several as their ensemble (reference doc §5.3), on a
//! test split ([`evaluate_folders`]).

use crate::error::{MergeError, MergeParam};
use crate::eval::runner::*;
use crate::eval::Accuracy;
use crate::system::runner::Runner;
use crate::system::System;

/// What `zipmerge eval` measured.
#[derive(Clone, Debug, serde::Serialize)]
pub struct EvalReport {
    /// The accuracy.
    #[serde(flatten)]
    pub accuracy: Accuracy,
    /// Seconds of the evaluation.
    pub seconds: f64,
    /// Images per second.
    pub images_per_second: f64,
    /// `Ensemble of N models`, or the model folder.
    #[serde(skip)]
    pub label: String,
}

/// Evaluates the model folders `models` (several: their ensemble, reference doc §5.3) on the
/// test split of `data_root` (at most as many images as a pixel cache of `cache_gib` GiB holds,
/// [`crate::data::load_split`]) for `tasks` (`None`: each head's classes), `batch` images at a
/// time.
///
/// # Errors
/// [`crate::error::MergeError::Param`] for no model; [`crate::error::MergeError`] naming a model or data folder that cannot
/// be read, or a task class missing from the test set.
pub fn evaluate_folders(
    models: &[std::path::PathBuf],
    data_root: &std::path::Path,
    tasks: Option<Vec<Vec<usize>>>,
    batch: usize,
    cache_gib: f64,
    device: &Runner,
    obs: &mut dyn crate::progress::Observer,
) -> Result<EvalReport, crate::error::MergeError> {
    if models.is_empty() {
        return Err(crate::error::MergeError::param(
            crate::error::MergeParam::Models,
            0,
            "evaluation needs at least one model",
        ));
    }
    let systems: Vec<System> = models
        .iter()
        .map(|m| System::load(m, device))
        .collect::<Result<_, _>>()?;
    let arch0 = (systems[0].manifest.arch, systems[0].manifest.width);
    for (s, m) in systems.iter().zip(models) {
        if (s.manifest.arch, s.manifest.width) != arch0 {
            obs.info(&format!(
                "note: {} is {} x{}, the first model is {} x{}",
                m.display(),
                s.manifest.arch,
                s.manifest.width,
                arch0.0,
                arch0.1
            ));
        }
    }
    let prep = systems[0].manifest.prep();
    if let Some((s, m)) = systems
        .iter()
        .zip(models)
        .find(|(s, _)| s.manifest.prep() != prep)
    {
        return Err(MergeError::param(
            MergeParam::Models,
            m.display(),
            format!(
                "takes inputs as: {}; the first model takes: {}. Models evaluated together share one decoding of the test set: evaluate them separately",
                s.manifest.prep().describe(),
                prep.describe()
            ),
        ));
    }
    let test = crate::data::load_split(data_root, "test", prep, cache_gib, None, obs)?;
    let tasks = tasks.unwrap_or_else(|| default_tasks(&systems));
    let n = check_evaluation(&heads_of(&systems), &test, &tasks)?;
    let t0 = std::time::Instant::now();
    let accuracy = crate::progress::phase(obs, "eval", n as u64, |p| {
        evaluate(&systems, &test, &tasks, batch, device, p)
    });
    let seconds = t0.elapsed().as_secs_f64();
    Ok(EvalReport {
        images_per_second: accuracy.images as f64 / seconds,
        accuracy,
        seconds,
        label: if systems.len() > 1 {
            format!("Ensemble of {} models", systems.len())
        } else {
            models[0].display().to_string()
        },
    })
}
