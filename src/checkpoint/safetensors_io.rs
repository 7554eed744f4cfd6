//! Reading and writing a [`StateDict`] as a `.safetensors` file (f32, PyTorch layout and names), the
//! format of every zipmerge checkpoint. Writes go to a temporary file in the target folder that is
//! renamed into place, so a failed run never leaves a half-written checkpoint.

use std::path::Path;

use safetensors::tensor::{Dtype, SafeTensors, TensorView};

use crate::error::CheckpointError;
use crate::state::{NamedTensor, StateDict};
use crate::util::write_atomic;

/// Serialises `state` to safetensors bytes (f32, little endian).
pub fn to_bytes(state: &StateDict) -> Result<Vec<u8>, CheckpointError> {
    let raw: Vec<(String, Vec<u8>, Vec<usize>)> = state
        .iter()
        .map(|(k, t)| {
            let bytes: Vec<u8> = t.data.iter().flat_map(|v| v.to_le_bytes()).collect();
            (k.clone(), bytes, t.shape.clone())
        })
        .collect();
    let views: Vec<(String, TensorView<'_>)> = raw
        .iter()
        .map(|(k, b, s)| {
            let v = TensorView::new(Dtype::F32, s.clone(), b).expect("consistent view");
            (k.clone(), v)
        })
        .collect();
    safetensors::serialize(views, None).map_err(|e| CheckpointError::Format {
        file: "<memory>".into(),
        msg: e.to_string(),
    })
}

/// Writes `state` to `path` atomically (temp file + rename).
///
/// # Errors
/// [`CheckpointError::Io`] when the folder is not writable.
pub fn save(state: &StateDict, path: &Path) -> Result<(), CheckpointError> {
    let bytes = to_bytes(state)?;
    write_atomic(path, &bytes).map_err(|e| CheckpointError::Io {
        file: path.display().to_string(),
        msg: e.to_string(),
    })
}

/// A floating-point storage type zipmerge reads (and converts to f32).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FloatKind {
    /// IEEE single precision.
    F32,
    /// IEEE double precision (converted).
    F64,
    /// IEEE half precision (converted).
    F16,
    /// bfloat16 (converted).
    BF16,
}

/// Decodes little-endian `bytes` of `kind` into f32 (the one conversion used by the safetensors
/// and PyTorch readers).
pub fn decode_floats(kind: FloatKind, bytes: &[u8]) -> Vec<f32> {
    match kind {
        FloatKind::F32 => bytes
            .chunks_exact(4)
            .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
            .collect(),
        FloatKind::F64 => bytes
            .chunks_exact(8)
            .map(|c| f64::from_le_bytes(c.try_into().unwrap()) as f32)
            .collect(),
        FloatKind::F16 => bytes
            .chunks_exact(2)
            .map(|c| f16_to_f32(u16::from_le_bytes([c[0], c[1]])))
            .collect(),
        FloatKind::BF16 => bytes
            .chunks_exact(2)
            .map(|c| f32::from_bits((u16::from_le_bytes([c[0], c[1]]) as u32) << 16))
            .collect(),
    }
}

/// Parses safetensors bytes into a [`StateDict`]. f16, bf16 and f64 tensors are converted to f32.
///
/// # Errors
/// [`CheckpointError::Format`] for a truncated or corrupt file or a non-float dtype.
pub fn from_bytes(bytes: &[u8], file: &str) -> Result<StateDict, CheckpointError> {
    from_bytes_noting(bytes, file).map(|(s, _)| s)
}

/// As [`from_bytes`], also returning `name (dtype)` of every tensor converted to f32.
///
/// # Errors
/// As [`from_bytes`].
pub fn from_bytes_noting(
    bytes: &[u8],
    file: &str,
) -> Result<(StateDict, Vec<String>), CheckpointError> {
    let st = SafeTensors::deserialize(bytes).map_err(|e| CheckpointError::Format {
        file: file.to_string(),
        msg: format!("not a valid safetensors file ({e})"),
    })?;
    let mut out = StateDict::new();
    let mut converted = Vec::new();
    for (name, view) in st.tensors() {
        let kind = match view.dtype() {
            Dtype::F32 => FloatKind::F32,
            Dtype::F64 => FloatKind::F64,
            Dtype::F16 => FloatKind::F16,
            Dtype::BF16 => FloatKind::BF16,
            Dtype::I64 if name.ends_with("num_batches_tracked") => continue,
            other => {
                return Err(CheckpointError::Format {
                    file: file.to_string(),
                    msg: format!("tensor `{name}` has dtype {other:?}; expected a float dtype"),
                })
            }
        };
        if kind != FloatKind::F32 {
            converted.push(format!("{name} ({:?})", view.dtype()));
        }
        out.insert(
            name,
            NamedTensor::new(view.shape().to_vec(), decode_floats(kind, view.data())),
        );
    }
    Ok((out, converted))
}

/// Reads a `.safetensors` checkpoint.
///
/// # Errors
/// [`CheckpointError::Io`] if the file is missing, [`CheckpointError::Format`] if it is corrupt.
pub fn load(path: &Path) -> Result<StateDict, CheckpointError> {
    let bytes = std::fs::read(path).map_err(|e| CheckpointError::Io {
        file: path.display().to_string(),
        msg: e.to_string(),
    })?;
    from_bytes(&bytes, &path.display().to_string())
}

/// IEEE half to single precision (bit exact).
pub fn f16_to_f32(h: u16) -> f32 {
    let sign = ((h >> 15) as u32) << 31;
    let exp = ((h >> 10) & 0x1f) as u32;
    let frac = (h & 0x3ff) as u32;
    let bits = if exp == 0 {
        if frac == 0 {
            sign
        } else {
            // subnormal
            let mut e = 127 - 15 + 1;
            let mut f = frac;
            while f & 0x400 == 0 {
                f <<= 1;
                e -= 1;
            }
            sign | ((e as u32) << 23) | ((f & 0x3ff) << 13)
        }
    } else if exp == 31 {
        sign | 0x7f80_0000 | (frac << 13)
    } else {
        sign | ((exp + 127 - 15) << 23) | (frac << 13)
    };
    f32::from_bits(bits)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_is_bit_exact() {
        let mut s = StateDict::new();
        s.insert(
            "a.weight".into(),
            NamedTensor::new(vec![2, 3], vec![1.0, -2.5, 3.25, 0.0, 1e-30, 7.0]),
        );
        s.insert(
            "b".into(),
            NamedTensor::new(vec![1], vec![f32::MIN_POSITIVE]),
        );
        let bytes = to_bytes(&s).unwrap();
        assert_eq!(from_bytes(&bytes, "x").unwrap(), s);
    }

    #[test]
    fn truncated_file_is_an_error() {
        let mut s = StateDict::new();
        s.insert("w".into(), NamedTensor::new(vec![4], vec![1.0; 4]));
        let bytes = to_bytes(&s).unwrap();
        let err = from_bytes(&bytes[..bytes.len() - 3], "m.safetensors").unwrap_err();
        assert!(err.to_string().contains("m.safetensors"), "{err}");
    }

    #[test]
    fn half_precision_conversion() {
        assert_eq!(f16_to_f32(0x3c00), 1.0);
        assert_eq!(f16_to_f32(0xc000), -2.0);
        assert_eq!(f16_to_f32(0x3555), 0.333_251_95);
    }
}
