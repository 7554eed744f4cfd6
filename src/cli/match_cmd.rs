//! `zipmerge match`: the matcher alone on a covariance or correlation matrix, for study and tests.

use std::path::PathBuf;

use anyhow::{Context, Result};

use super::common::{finite, merge_error, non_negative, positive};
use clap::Args;

use zipmerge::matching::npy::read_matrix;
use zipmerge::merge::Method;

/// Arguments of `zipmerge match`.
#[derive(Args, Debug)]
pub struct MatchArgs {
    /// O x O matrix: a JSON array of arrays, or a 2-D float `.npy` file.
    #[arg(long)]
    pub cov: PathBuf,
    /// Treat the matrix as a correlation matrix (default: covariance, turned into correlation).
    #[arg(long)]
    pub correlation: bool,
    /// Number of models N (O must be divisible by N).
    #[arg(long, default_value_t = 2, value_parser = positive)]
    pub models: usize,
    /// zipit, permute, weight-avg or return-a.
    #[arg(long, default_value = "zipit")]
    pub method: String,
    /// ZipIt! alpha (> 0).
    #[arg(long, default_value_t = 0.3, value_parser = finite)]
    pub alpha: f64,
    /// ZipIt! beta in [0, 1].
    #[arg(long, default_value_t = 0.125, value_parser = finite)]
    pub beta: f64,
    /// Merge normalisation epsilon.
    #[arg(long, default_value_t = 1e-5, value_parser = non_negative)]
    pub merge_eps: f64,
}

/// Runs `zipmerge match`: prints `{"clusters": [...], "merge": [[...]], "unmerge": [[...]]}`.
pub fn exec(a: MatchArgs) -> Result<()> {
    let method = Method::parse(&a.method, a.alpha, a.beta, 0).map_err(merge_error)?;
    let m = read_matrix(&a.cov).with_context(|| format!("reading {}", a.cov.display()))?;
    let r = zipmerge::merge::match_matrix(&m, a.correlation, a.models, &method, a.merge_eps)
        .map_err(merge_error)
        .with_context(|| a.cov.display().to_string())?;
    println!("{}", r.to_json());
    Ok(())
}
