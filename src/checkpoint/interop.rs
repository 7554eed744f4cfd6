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
}

fn strip_common_prefixes(mut s: StateDict, notes: &mut ImportNotes) -> StateDict {
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
    let state = if is_st {
        let bytes = std::fs::read(path).map_err(|e| CheckpointError::Io {
            file: f.clone(),
            msg: e.to_string(),
        })?;
        let (s, converted) = safetensors_io::from_bytes_noting(&bytes, &f)?;
        notes.converted = converted;
        s
    } else {
        if !path.is_file() {
            return Err(CheckpointError::Io {
                file: f,
                msg: "no such file".into(),
            });
        }
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
    Ok((strip_common_prefixes(state, &mut notes), notes))
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
