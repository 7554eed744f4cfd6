//! The resumable training state both paths write after each epoch (`resume.json` beside the
//! weights and the optimizer's state): its record, the checks it passes before anything of it is
//! used (a training state is untrusted input), and the note of an extended run.

use std::path::Path;

use serde::{Deserialize, Serialize};

use super::options::{lr_multiplier, EpochLog, TrainOptions};
use crate::error::ModelError;

/// [`ModelError::TrainState`] for `file` of the training-state folder `dir` (`""`: the folder).
pub(crate) fn state_err(dir: &Path, file: &str, e: impl std::fmt::Display) -> ModelError {
    let path = if file.is_empty() {
        dir.to_path_buf()
    } else {
        dir.join(file)
    };
    ModelError::TrainState {
        path: path.display().to_string(),
        msg: e.to_string(),
    }
}

/// Resumable state written after each epoch.
#[derive(Serialize, Deserialize)]
pub(crate) struct ResumeInfo {
    /// Epochs finished.
    pub(crate) epochs_done: usize,
    /// The options of the run that wrote it.
    pub(crate) options: TrainOptions,
    /// Its per-epoch log.
    pub(crate) log: Vec<EpochLog>,
    /// The ids of the network's float parameters in visiting order: the optimizer's momentum
    /// buffers are keyed by them, so the resumed network takes them back (`None`: a state
    /// written before they were saved, which cannot restore the momentum).
    #[serde(default)]
    pub(crate) param_ids: Option<Vec<u64>>,
    /// The training path that wrote the state (`burn` or `engine`; absent: `burn`): each keeps
    /// its optimizer state in its own file.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(crate) path: Option<String>,
}

/// The note printed when `--resume --epochs N` changes a run's length.
pub(crate) fn extension_note(info: &ResumeInfo, opts: &TrainOptions) -> String {
    let (planned, start_epoch) = (info.options.epochs, info.epochs_done);
    let m = lr_multiplier(start_epoch as f64, opts.warmup_epochs, opts.epochs as f64);
    format!(
        "note: extending a run of {planned} epochs ({start_epoch} done) to {}: the learning-rate schedule is re-planned for {} epochs from epoch {} on ({m:.3} x --lr {} there, linear decay to 0 at epoch {}); epochs 1-{start_epoch} keep the {planned}-epoch schedule they ran with (recorded per epoch as schedule_epochs)",
        opts.epochs,
        opts.epochs,
        start_epoch + 1,
        opts.lr,
        opts.epochs
    )
}

/// Whether the folder `dir` holds anything of a training state (any file at all: a state
/// folder is never silently ignored).
pub fn state_exists(dir: &Path) -> bool {
    std::fs::read_dir(dir).is_ok_and(|mut d| d.next().is_some())
}

/// The checked `resume.json` of the state folder `dir` written by training path `path`
/// (`burn` or `engine`), whose other state files are `files`; `None` when `dir` holds no
/// state. Checks as [`load_resume`] says, and that the same path wrote it.
pub(crate) fn read_info(
    dir: &Path,
    opts: &TrainOptions,
    path: &str,
    files: &[&str],
) -> Result<Option<ResumeInfo>, ModelError> {
    if !state_exists(dir) {
        return Ok(None);
    }
    let missing = |f: &str| {
        state_err(
            dir,
            f,
            "missing: the training state is incomplete and cannot be resumed (remove the folder to start again)",
        )
    };
    if !dir.join("resume.json").is_file() {
        return Err(missing("resume.json"));
    }
    let text = std::fs::read_to_string(dir.join("resume.json"))
        .map_err(|e| state_err(dir, "resume.json", e))?;
    let info: ResumeInfo =
        serde_json::from_str(&text).map_err(|e| state_err(dir, "resume.json", e))?;
    let written = info.path.as_deref().unwrap_or("burn");
    if written != path {
        return Err(state_err(
            dir,
            "resume.json",
            format!(
                "written by the {written} training path, this run trains on the {path} path (resume with the path that started it: ZIPMERGE_ENGINE=burn selects burn's)"
            ),
        ));
    }
    if let Some(f) = files.iter().find(|f| !dir.join(f).is_file()) {
        return Err(missing(f));
    }
    // the run length may change: --resume --epochs N extends (or shortens) the run
    let same_length = TrainOptions {
        epochs: info.options.epochs,
        ..opts.clone()
    };
    let diff = same_length.differences(&info.options);
    if !diff.is_empty() {
        return Err(state_err(
            dir,
            "resume.json",
            format!(
                "cannot resume: written by a run with different options: {}",
                diff.join(", ")
            ),
        ));
    }
    if info.epochs_done == 0 || info.epochs_done > info.options.epochs {
        return Err(state_err(
            dir,
            "resume.json",
            format!(
                "epochs_done {} is outside its run's 1..={} epochs",
                info.epochs_done, info.options.epochs
            ),
        ));
    }
    if info.epochs_done >= opts.epochs {
        return Err(state_err(
            dir,
            "resume.json",
            format!(
                "epochs_done {} leaves nothing to train with --epochs {}: pass --epochs above {} to extend the run",
                info.epochs_done, opts.epochs, info.epochs_done
            ),
        ));
    }
    if info.log.len() != info.epochs_done {
        return Err(state_err(
            dir,
            "resume.json",
            format!(
                "log holds {} epochs, epochs_done says {}",
                info.log.len(),
                info.epochs_done
            ),
        ));
    }
    Ok(Some(info))
}

/// [`ModelError::TrainState`] for a state folder `dir` that cannot be written.
pub(crate) fn write_err(dir: &Path, e: impl std::fmt::Display) -> ModelError {
    state_err(dir, "", format!("cannot write training state ({e})"))
}

/// Writes `info` as `dir/resume.json`, atomically (last, after the weights and the optimizer
/// state: a state folder whose `resume.json` is written is complete).
pub(crate) fn write_info(dir: &Path, info: &ResumeInfo) -> Result<(), ModelError> {
    crate::util::write_atomic(
        &dir.join("resume.json"),
        &serde_json::to_vec_pretty(info).expect("json"),
    )
    .map_err(|e| write_err(dir, e))
}
