//! PyTorch interop: reading official ZipIt! `state_dict`s (`.pt`/`.pth`/`.pth.tar` zip-pickle
//! or legacy files, plain or wrapped in `{"state_dict": ...}` / `{"model": ...}`, with or without
//! a DataParallel `module.` prefix; or `.safetensors`) and writing safetensors files that the
//! official PyTorch classes load with `load_state_dict(strict=True)` (BN `num_batches_tracked`
//! buffers included).
//!
//! Pickles are first walked by [`super::pickle_guard`] (files whose pickle references anything
//! but tensor-rebuild functions, storages and plain containers are refused), then parsed by
//! burn's `pytorch-reader` (a Rust pickle reader that never executes code). Half-precision tensors (f16/bf16) and f64 are converted to f32; integer tensors other
//! than `num_batches_tracked` are refused.

use std::path::Path;

use burn::store::pytorch_reader::{DType, PytorchReader};
use safetensors::tensor::{Dtype, TensorView};

use super::safetensors_io::{self, FloatKind};
use super::{NamedTensor, StateDict};
use crate::error::CheckpointError;

/// What an import converted, for the user.
#[derive(Debug, Default, Clone)]
pub struct ImportNotes {
    /// Tensors converted from f16/bf16/f64 to f32.
    pub converted: Vec<String>,
    /// Prefixes removed from every key (`module.`, `state_dict.`, `model.`).
    pub stripped_prefixes: Vec<String>,
    /// Tensors left out because they sit beside the weights in a training checkpoint
    /// (optimizer state, EMA copies, ...).
    pub ignored: Vec<String>,
}

impl ImportNotes {
    /// The `note:` lines for the user: a training checkpoint's other entries ignored, tensors
    /// converted to f32 (of `tensors` in all).
    pub fn lines(&self, tensors: usize) -> Vec<String> {
        let mut out = Vec::new();
        if let Some(first) = self.ignored.first() {
            out.push(format!(
                "note: took the weights entry of a training checkpoint; ignored {} other tensors (e.g. {first})",
                self.ignored.len()
            ));
        }
        if let Some(first) = self.converted.first() {
            out.push(format!(
                "note: converted {} of {tensors} tensors to f32 (e.g. {first})",
                self.converted.len()
            ));
        }
        out
    }
}

/// Entries of a training checkpoint that hold the model weights, most specific first.
const WEIGHT_ENTRIES: [&str; 3] = ["state_dict.", "model_state_dict.", "model."];

/// Picks the weights out of a checkpoint: a training checkpoint
/// (`{"state_dict": ..., "optimizer": ..., "epoch": ...}`, torchvision/ImageNet-example style)
/// keeps only its weight entry; then prefixes shared by every key (`state_dict.`, `model.`,
/// DataParallel's `module.`) are removed.
fn select_weights(mut s: StateDict, notes: &mut ImportNotes) -> StateDict {
    for p in WEIGHT_ENTRIES {
        let n = s.keys().filter(|k| k.starts_with(p)).count();
        if n > 0 && n < s.len() {
            notes.ignored = s.keys().filter(|k| !k.starts_with(p)).cloned().collect();
            s.retain(|k, _| k.starts_with(p));
            break;
        }
    }
    loop {
        let mut changed = false;
        for p in ["state_dict.", "model.", "module."] {
            if !s.is_empty() && s.keys().all(|k| k.starts_with(p)) {
                s = s
                    .into_iter()
                    .map(|(k, v)| (k[p.len()..].to_string(), v))
                    .collect();
                notes.stripped_prefixes.push(p.to_string());
                changed = true;
            }
        }
        if !changed {
            return s;
        }
    }
}

/// Reads a PyTorch or safetensors checkpoint into a PyTorch-layout [`StateDict`].
///
/// # Errors
/// [`CheckpointError`] naming the file for unreadable, truncated or unsupported content.
pub fn read_checkpoint(path: &Path) -> Result<(StateDict, ImportNotes), CheckpointError> {
    let f = path.display().to_string();
    let mut notes = ImportNotes::default();
    let is_st = path.extension().is_some_and(|e| e == "safetensors");
    if !path.is_file() {
        return Err(CheckpointError::Io {
            file: f,
            msg: if path.exists() {
                "is not a file".into()
            } else {
                "no such file".into()
            },
        });
    }
    let state = if is_st {
        let bytes = std::fs::read(path).map_err(|e| CheckpointError::Io {
            file: f.clone(),
            msg: e.to_string(),
        })?;
        let (s, converted) = safetensors_io::from_bytes_noting(&bytes, &f)?;
        notes.converted = converted;
        s
    } else {
        super::pickle_guard::check_pytorch_file(path)?;
        let reader = PytorchReader::new(path).map_err(|e| CheckpointError::Format {
            file: f.clone(),
            msg: format!("not a readable PyTorch checkpoint ({e}); only tensors and plain containers are accepted"),
        })?;
        let mut s = StateDict::new();
        for (name, t) in reader.tensors() {
            let bytes = t.read().map_err(|e| CheckpointError::Format {
                file: f.clone(),
                msg: e.to_string(),
            })?;
            // pytorch-reader hands native-endian bytes; zipmerge's targets are little-endian
            let kind = match t.dtype() {
                DType::F32 => FloatKind::F32,
                DType::F64 => FloatKind::F64,
                DType::F16 => FloatKind::F16,
                DType::BF16 => FloatKind::BF16,
                _ if name.ends_with("num_batches_tracked") => continue,
                other => {
                    return Err(CheckpointError::Format {
                        file: f,
                        msg: format!("tensor `{name}` has dtype {other:?}; expected a float dtype"),
                    })
                }
            };
            if kind != FloatKind::F32 {
                notes.converted.push(format!("{name} ({kind:?})"));
            }
            let data = safetensors_io::decode_floats(kind, &bytes);
            let shape = if t.shape().is_empty() {
                vec![1]
            } else {
                t.shape().to_vec()
            };
            s.insert(name.clone(), NamedTensor::new(shape, data));
        }
        if s.is_empty() {
            return Err(CheckpointError::Format {
                file: f,
                msg: "holds no float tensors".into(),
            });
        }
        s
    };
    Ok((select_weights(state, &mut notes), notes))
}

/// The architecture whose official layout `state`'s names follow: `fc` + `layer4` (torchvision
/// ResNet-50), `linear` + `layer3` (ZipIt! ResNet-20), `features.0` + `classifier` (ZipIt!
/// VGG-11); `None` otherwise.
pub fn detect_arch(state: &StateDict) -> Option<crate::models::Arch> {
    let has = |k: &str| state.contains_key(k);
    crate::models::Arch::ALL
        .iter()
        .copied()
        .find(|a| a.def().detect(&has))
}

/// Serialises `state` for PyTorch: f32 tensors plus an int64 scalar `num_batches_tracked` (= 0)
/// for every BatchNorm (a module with `running_mean`), under `prefix`.
///
/// # Errors
/// [`CheckpointError::Format`] if serialisation fails.
pub fn to_pytorch_safetensors(parts: &[(&str, &StateDict)]) -> Result<Vec<u8>, CheckpointError> {
    let mut raw: Vec<(String, Dtype, Vec<u8>, Vec<usize>)> = Vec::new();
    for (prefix, state) in parts {
        for (k, t) in state.iter() {
            raw.push((
                format!("{prefix}{k}"),
                Dtype::F32,
                t.data.iter().flat_map(|v| v.to_le_bytes()).collect(),
                t.shape.clone(),
            ));
            if let Some(base) = k.strip_suffix(".running_mean") {
                raw.push((
                    format!("{prefix}{base}.num_batches_tracked"),
                    Dtype::I64,
                    0i64.to_le_bytes().to_vec(),
                    vec![],
                ));
            }
        }
    }
    let views: Vec<(String, TensorView<'_>)> = raw
        .iter()
        .map(|(k, d, b, s)| {
            (
                k.clone(),
                TensorView::new(*d, s.clone(), b).expect("consistent view"),
            )
        })
        .collect();
    safetensors::serialize(views, None).map_err(|e| CheckpointError::Format {
        file: "<export>".into(),
        msg: e.to_string(),
    })
}
