//! Typed errors of the library layers. Every variant names the file, layer or option at fault and
//! what was expected; the CLI reports them in one line through `anyhow`.

use thiserror::Error;

/// Reading or writing weight files and manifests.
#[derive(Debug, Error)]
pub enum CheckpointError {
    /// The file is missing or unreadable / unwritable.
    #[error("{file}: {msg}")]
    Io {
        /// Path.
        file: String,
        /// Cause.
        msg: String,
    },
    /// An operating-system error whose message already names its path
    /// ([`crate::util::with_path`]).
    #[error("{0}")]
    Os(String),
    /// The file exists but its content is not what was expected.
    #[error("{file}: {msg}")]
    Format {
        /// Path.
        file: String,
        /// What is wrong.
        msg: String,
    },
    /// A tensor holds NaN or infinity.
    #[error("{file}: tensor `{tensor}` holds a NaN or infinite value (at flat index {index}); expected finite weights")]
    NonFinite {
        /// Path.
        file: String,
        /// Tensor name.
        tensor: String,
        /// First bad index.
        index: usize,
    },
}

/// Building models and loading weights into them.
#[derive(Debug, Error)]
pub enum ModelError {
    /// Invalid configuration or option.
    #[error("{0}")]
    Invalid(String),
    /// Weights do not fit the architecture.
    #[error("weights do not fit the model: {0}")]
    Weights(String),
    /// From the checkpoint layer.
    #[error(transparent)]
    Checkpoint(#[from] CheckpointError),
}

/// Reading images and class splits.
#[derive(Debug, Error)]
pub enum DataError {
    /// A missing folder or file.
    #[error("{path}: {msg}")]
    Io {
        /// Path.
        path: String,
        /// Cause.
        msg: String,
    },
    /// An image that cannot be decoded or has the wrong size.
    #[error("{path}: {msg}")]
    Image {
        /// Path.
        path: String,
        /// Cause.
        msg: String,
    },
    /// Invalid class list, split or option.
    #[error("{0}")]
    Invalid(String),
}

/// Errors of the merge engine (statistics, matching, rewriting).
#[derive(Debug, Error)]
pub enum MergeError {
    /// Invalid option or incompatible models.
    #[error("{0}")]
    Invalid(String),
    /// A tensor of a model that no layer of the merge spec covers: merging would keep one
    /// model's copy of it unmerged, so the merge is refused.
    #[error("tensor `{tensor}` is not covered by the merge spec of {arch}: it would keep model A's values unmerged")]
    Uncovered {
        /// Tensor name.
        tensor: String,
        /// Architecture whose spec misses it.
        arch: String,
    },
    /// A matcher failure naming the feature space.
    #[error("feature space `{space}`: {msg}")]
    Space {
        /// Space name.
        space: String,
        /// What went wrong.
        msg: String,
    },
    /// From the model layer.
    #[error(transparent)]
    Model(#[from] ModelError),
    /// From the data layer.
    #[error(transparent)]
    Data(#[from] DataError),
    /// From the checkpoint layer.
    #[error(transparent)]
    Checkpoint(#[from] CheckpointError),
}
