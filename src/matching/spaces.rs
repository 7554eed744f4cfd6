//! The per-space loop of a merge: every feature space up to a stop solved by the method's
//! [`super::method::SpaceSolver`] (in dependency order when the weight similarity is blended in, as MuDSC
//! does), or the whole network at once for Git Re-Basin. Takes the spec and the models'
//! states, nothing of the pipeline above.

use super::method::{check_dual, Method, SpaceInput};
use super::{MergeUnmerge, SquareMatrix};
use crate::error::MergeError;
use crate::models::MergeSpec;
use crate::state::StateDict;

/// Matches the first `spaces` feature spaces of the `states` (N models of `spec`) with
/// `method`: from the covariances `covariances[s]` (`[N*O, N*O]`, when collected), blended with
/// the weight similarity at share `lambda` (dual-space matching, [`super::dual`], MuDSC;
/// `lambda = 0` reads no weights). Reference doc §3.
///
/// # Errors
/// [`MergeError::Param`] for `lambda` outside `[0, 1]` or `lambda > 0` with a method other than
/// ZipIt! and Permute; [`MergeError::NoProbeImages`] when statistics are needed and missing;
/// [`MergeError::Space`] naming the space when its solver fails.
pub fn match_spaces(
    spec: &MergeSpec,
    states: &[StateDict],
    method: &Method,
    covariances: Option<&[SquareMatrix]>,
    spaces: usize,
    eps: f64,
    lambda: f64,
) -> Result<Vec<MergeUnmerge>, MergeError> {
    match_spaces_each(
        spec,
        states,
        method,
        &|_| method.clone(),
        covariances,
        spaces,
        eps,
        lambda,
    )
}

/// [`match_spaces`] with a method per feature space: space `s` is solved by `method_of(s)`
/// (ZipIt! with that space's alpha and beta, [`crate::merge::knobs`]); `method` is the merge's
/// method, which decides the family (statistics, dual-space blend, Git Re-Basin's whole-network
/// matching).
///
/// # Errors
/// As [`match_spaces`].
#[allow(clippy::too_many_arguments)]
pub fn match_spaces_each(
    spec: &MergeSpec,
    states: &[StateDict],
    method: &Method,
    method_of: &dyn Fn(usize) -> Method,
    covariances: Option<&[SquareMatrix]>,
    spaces: usize,
    eps: f64,
    lambda: f64,
) -> Result<Vec<MergeUnmerge>, MergeError> {
    check_dual(method, lambda)?;
    let n = states.len();
    if method.space_solver().is_none() {
        let Method::GitRebasin { seed } = method else {
            return Err(MergeError::Internal(format!(
                "{} has no space solver",
                method.label()
            )));
        };
        return super::rebasin::git_rebasin(spec, states, *seed, eps);
    }
    if method.needs_statistics() && lambda < 1.0 && covariances.is_none_or(|c| c.len() < spaces) {
        return Err(MergeError::NoProbeImages);
    }
    let order: Vec<usize> = if lambda > 0.0 {
        super::dual::order(spec, spaces)
    } else {
        (0..spaces).collect()
    };
    let mut done: Vec<Option<MergeUnmerge>> = vec![None; spec.spaces.len()];
    for s in order {
        let space = &spec.spaces[s];
        let weight_similarity = (lambda > 0.0)
            .then(|| super::dual::weight_similarity(spec, states, s, &done))
            .flatten();
        let input = SpaceInput {
            n,
            width: space.width,
            covariance: covariances.and_then(|c| c.get(s)),
            weight_similarity,
            lambda,
            eps,
        };
        let solver = method_of(s)
            .space_solver()
            .ok_or_else(|| MergeError::Internal(format!("space {} has no solver", space.name)))?;
        let r = solver.solve_space(input).map_err(|e| MergeError::Space {
            space: space.name.clone(),
            msg: e.to_string(),
        })?;
        done[s] = Some(r);
    }
    done.into_iter()
        .take(spaces)
        .map(|r| r.ok_or_else(|| MergeError::Internal("a space was not matched".into())))
        .collect()
}
