//! Output heads: how a network's final-layer output becomes logits over its classes.
//!
//! - `linear`: the final layer's outputs are the logits over the task's classes (cross-entropy).
//! - `text`: the final layer emits a D-dim embedding `e`; the logits are `100 * cos(e, T_c)` for
//!   each class c of the task, with `T` a frozen table of class embeddings (the paper's CLIP-head
//!   protocol; reference doc §5.1, §6).

use std::path::Path;

use burn::tensor::{Tensor, TensorData};
use serde::{Deserialize, Serialize};

use crate::error::ModelError;

/// Largest text-head embedding dimension a manifest may declare.
pub const MAX_HEAD_DIM: usize = 65_536;

/// Temperature of text-embedding heads (reference doc §5.1, §6).
pub const TEXT_TEMPERATURE: f32 = 100.0;

/// The head of a model, stored in its manifest.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "lowercase")]
pub enum HeadSpec {
    /// Logit head: one output per class of `classes`.
    Linear,
    /// Frozen class-embedding head.
    Text {
        /// Embedding dimension D.
        dim: usize,
        /// Where the table came from (file path as given).
        source: String,
        /// One unit-norm row per label id of the data set (row c = class c), `[labels, D]`, so
        /// the head can score any class, not only the ones it was trained on.
        embeddings: Vec<Vec<f32>>,
    },
}

impl HeadSpec {
    /// Short label: `linear` or `text`.
    pub fn kind(&self) -> &'static str {
        match self {
            HeadSpec::Linear => "linear",
            HeadSpec::Text { .. } => "text",
        }
    }

    /// Output width the network's final layer must have for `n_classes` classes.
    pub fn net_outputs(&self, n_classes: usize) -> usize {
        match self {
            HeadSpec::Linear => n_classes,
            HeadSpec::Text { dim, .. } => *dim,
        }
    }

    /// Logits for `query` classes (label ids) from the final-layer output `y: [batch, out]`
    /// -> `[batch, query.len()]`. `trained` lists the classes of a linear head's outputs, in
    /// order; a linear head gives [`NO_LOGIT`] for a class it has no output for. A text head
    /// scores any class with `100 * cos(y, T_c)`.
    pub fn logits(&self, y: Tensor<2>, trained: &[usize], query: &[usize]) -> Tensor<2> {
        let device = y.device();
        match self {
            HeadSpec::Linear => {
                let [b, _] = y.dims();
                let cols: Vec<Tensor<2>> = query
                    .iter()
                    .map(|c| match trained.iter().position(|t| t == c) {
                        Some(i) => y.clone().narrow(1, i, 1),
                        None => Tensor::full([b, 1], NO_LOGIT, &device),
                    })
                    .collect();
                Tensor::cat(cols, 1)
            }
            HeadSpec::Text {
                embeddings, dim, ..
            } => {
                let rows: Vec<f32> = query
                    .iter()
                    // a class without a row (refused earlier by eval::runner::check_evaluation)
                    // scores cos = 0 instead of panicking
                    .flat_map(|&c| match embeddings.get(c) {
                        Some(r) => r.clone(),
                        None => vec![0.0; *dim],
                    })
                    .collect();
                let t = Tensor::<2>::from_data(TensorData::new(rows, [query.len(), *dim]), &device);
                let norm = y
                    .clone()
                    .powf_scalar(2.0)
                    .sum_dim(1)
                    .sqrt()
                    .clamp_min(1e-12);
                let e = y / norm;
                e.matmul(t.transpose()).mul_scalar(TEXT_TEMPERATURE)
            }
        }
    }

    /// Largest label id this head can score + 1 (text heads), or `None` (linear heads).
    pub fn label_count(&self) -> Option<usize> {
        match self {
            HeadSpec::Linear => None,
            HeadSpec::Text { embeddings, .. } => Some(embeddings.len()),
        }
    }
}

/// Logit given by a linear head to a class it has no output for.
pub const NO_LOGIT: f32 = -1.0e9;

/// A class-embedding file (`class-text-embeddings.json`): `{"dim": D, "classes": [...],
/// "embeddings": [[...], ...]}`, rows in label order.
#[derive(Clone, Debug, Deserialize)]
pub struct EmbeddingFile {
    /// Embedding dimension.
    pub dim: usize,
    /// Class names in label order.
    #[serde(default)]
    pub classes: Vec<String>,
    /// One row per label.
    pub embeddings: Vec<Vec<f32>>,
}

/// Checks a class-embedding table of a text head, wherever it comes from (an embedding file,
/// a manifest): `dim` in `1..=MAX_HEAD_DIM`, and every row of `dim` finite values with a
/// non-zero norm whose squares fit f32.
///
/// # Errors
/// What is wrong, as a phrase naming the row (the caller adds the file or head).
pub fn check_embeddings(dim: usize, rows: &[Vec<f32>]) -> Result<(), String> {
    let max = MAX_HEAD_DIM;
    if dim == 0 || dim > max {
        return Err(format!("dim {dim} is out of range (expected 1..={max})"));
    }
    for (r, row) in rows.iter().enumerate() {
        if row.len() != dim {
            return Err(format!(
                "row {r} has {} values, expected dim {dim}",
                row.len()
            ));
        }
        if let Some(j) = row.iter().position(|v| !v.is_finite()) {
            return Err(format!(
                "row {r} value {j} is not a finite f32 (overflow or NaN)"
            ));
        }
        let n = row.iter().map(|v| v * v).sum::<f32>().sqrt();
        if !(n.is_finite() && n > 0.0) {
            return Err(format!(
                "row {r} has norm {n}; expected a non-zero row whose squares fit f32"
            ));
        }
    }
    Ok(())
}

/// Reads an embedding file and builds a text head, L2-normalising rows; checks it has a row for
/// each of `classes` (label ids).
///
/// # Errors
/// [`ModelError::Embeddings`] naming the file when it is missing, malformed, has rows of the wrong
/// length, or lacks a row for one of `classes`.
pub fn text_head(path: &Path, classes: &[usize]) -> Result<HeadSpec, ModelError> {
    let f = path.display().to_string();
    let err = |msg: String| ModelError::Embeddings {
        file: f.clone(),
        msg,
    };
    let raw = std::fs::read_to_string(path)
        .map_err(|e| err(format!("cannot read embedding file ({e})")))?;
    let ef: EmbeddingFile = serde_json::from_str(&raw)
        .map_err(|e| err(format!("not a class-embedding JSON file ({e})")))?;
    if let Some(&c) = classes.iter().find(|&&c| c >= ef.embeddings.len()) {
        return Err(err(format!(
            "has {} class rows, no row for class {c}",
            ef.embeddings.len()
        )));
    }
    check_embeddings(ef.dim, &ef.embeddings).map_err(|e| err(e.to_string()))?;
    let mut embeddings = Vec::new();
    for row in &ef.embeddings {
        let n = row.iter().map(|v| v * v).sum::<f32>().sqrt();
        embeddings.push(row.iter().map(|v| v / n).collect());
    }
    Ok(HeadSpec::Text {
        dim: ef.dim,
        source: f,
        embeddings,
    })
}

/// The class-embedding table a text head uses when no file is given.
pub const DEFAULT_EMBEDDINGS: &str = "datasets/class-text-embeddings.json";

/// Which head a new model gets: `linear`, `text` (the default embedding table) or `text:FILE`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum HeadChoice {
    /// A linear layer over the classes.
    Linear,
    /// Frozen class embeddings read from this table.
    Text(std::path::PathBuf),
}

impl HeadChoice {
    /// Parses `linear`, `text` or `text:FILE`.
    ///
    /// # Errors
    /// [`ModelError::Head`] for anything else.
    pub fn parse(opt: &str) -> Result<Self, ModelError> {
        match opt {
            "linear" => Ok(HeadChoice::Linear),
            "text" => Ok(HeadChoice::Text(crate::util::shipped(DEFAULT_EMBEDDINGS))),
            o => match o.strip_prefix("text:") {
                Some(f) if !f.is_empty() => Ok(HeadChoice::Text(f.into())),
                _ => Err(ModelError::Head { given: o.into() }),
            },
        }
    }

    /// The head for `classes` (a text head reads its table, [`text_head`]).
    ///
    /// # Errors
    /// As [`text_head`].
    pub fn build(&self, classes: &[usize]) -> Result<HeadSpec, ModelError> {
        match self {
            HeadChoice::Linear => Ok(HeadSpec::Linear),
            HeadChoice::Text(file) => text_head(file, classes),
        }
    }
}
