//! `zipmerge match`: the matcher alone on one covariance or correlation matrix read from a file
//! (JSON or `.npy`, [`crate::matching::npy`]), for study and tests.

use std::path::Path;

use crate::error::MergeError;
use crate::matching::MergeUnmerge;
use crate::merge::Method;

/// Reads the `O x O` matrix `path` of `n` stacked models and runs `method`'s matcher on it
/// ([`crate::merge::match_matrix`]): a covariance (turned into a correlation), or a correlation
/// when `is_correlation`. Returns the merge/unmerge matrices.
///
/// # Errors
/// [`MergeError::Match`] when the file cannot be read or is not a square matrix; as
/// [`crate::merge::match_matrix`] otherwise.
pub fn match_file(
    path: &Path,
    is_correlation: bool,
    n: usize,
    method: &Method,
    merge_eps: f64,
) -> Result<MergeUnmerge, MergeError> {
    let m = crate::matching::npy::read_matrix(path)?;
    crate::merge::match_matrix(&m, is_correlation, n, method, merge_eps)
}
