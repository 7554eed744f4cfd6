//! A flat, named set of f32 tensors in PyTorch layout: the form in which zipmerge reads, rewrites
//! and writes weights.
//!
//! Names follow the official ZipIt! / torchvision `state_dict` names (`layer1.0.conv1.weight`,
//! `bn1.running_var`, `linear.weight`), and shapes follow PyTorch's layout: conv weights
//! `[out, in, kh, kw]`, linear weights `[out, in]`, BN vectors `[channels]`. Conversion to and
//! from burn modules (whose `Linear.weight` is `[in, out]` and BN uses `gamma`/`beta`) happens in
//! [`crate::models::bridge`] only.

use std::collections::BTreeMap;

use crate::error::CheckpointError;

/// One dense f32 tensor, row-major.
#[derive(Clone, Debug, PartialEq)]
pub struct NamedTensor {
    /// Shape, PyTorch layout.
    pub shape: Vec<usize>,
    /// Row-major values; `data.len() == shape.iter().product()`.
    pub data: Vec<f32>,
}

impl NamedTensor {
    /// A tensor from a shape and its row-major values.
    ///
    /// # Panics
    /// Panics if `data.len()` differs from the product of `shape` (a programming error).
    pub fn new(shape: Vec<usize>, data: Vec<f32>) -> Self {
        assert_eq!(
            shape.iter().product::<usize>(),
            data.len(),
            "shape/data mismatch"
        );
        Self { shape, data }
    }

    /// All-zero tensor of the given shape.
    pub fn zeros(shape: Vec<usize>) -> Self {
        let n = shape.iter().product();
        Self {
            shape,
            data: vec![0.0; n],
        }
    }

    /// Size of axis 0 (output channels of a conv or linear, channels of a BN vector).
    pub fn rows(&self) -> usize {
        self.shape[0]
    }

    /// Number of values per axis-0 row.
    pub fn row_len(&self) -> usize {
        self.data.len() / self.shape[0].max(1)
    }
}

/// Weights of one network, keyed by PyTorch-style parameter name (sorted).
pub type StateDict = BTreeMap<String, NamedTensor>;

/// Checks every value of every tensor is finite.
///
/// # Errors
/// [`CheckpointError::NonFinite`] naming the first tensor holding a NaN or infinity.
pub fn check_finite(state: &StateDict, file: &str) -> Result<(), CheckpointError> {
    for (name, t) in state {
        if let Some(i) = t.data.iter().position(|v| !v.is_finite()) {
            return Err(CheckpointError::NonFinite {
                file: file.to_string(),
                tensor: name.clone(),
                index: i,
            });
        }
    }
    Ok(())
}
