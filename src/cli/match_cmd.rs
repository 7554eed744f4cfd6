//! `zipmerge match`: the matcher alone on a covariance or correlation matrix, for study and tests.

use std::path::PathBuf;

use anyhow::{Context, Result};

use clap::Args;

use zipmerge::ops::match_matrix::match_file;

use super::common::{merge_error, positive};
use super::merge_args::MatcherArgs;
use super::printer::Printer;

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
    #[command(flatten)]
    pub matcher: MatcherArgs,
}

/// Runs `zipmerge match`: prints `{"clusters": [...], "merge": [[...]], "unmerge": [[...]]}`.
pub fn exec(a: MatchArgs, p: &Printer) -> Result<()> {
    let method = a.matcher.method(0)?;
    let r = match_file(
        &a.cov,
        a.correlation,
        a.models,
        &method,
        a.matcher.merge_eps,
    )
    .map_err(merge_error)
    .with_context(|| a.cov.display().to_string())?;
    let value = r.to_json();
    p.emit(&value, &format!("{value}\n"), None)
}
