//! The merge methods of the aligning family as data ([`Method`], serde: a recipe names one) and
//! what each does with one feature space ([`Method::space_solver`]): ZipIt!, Permute, W.Avg and
//! return-a solve from the correlation (optionally blended with the weight similarity,
//! [`super::dual`]), CCA Merge from the covariance, and Git Re-Basin matches the whole network's
//! weights at once ([`super::rebasin`]). Reference doc §3 for each.

use serde::{Deserialize, Serialize};

use super::{
    correlation, Identity, MatchError, Matcher, MergeUnmerge, Permute, ReturnA, SquareMatrix, ZipIt,
};
use crate::error::{MergeError, MergeParam};

/// Matching method.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "name", rename_all = "kebab-case", deny_unknown_fields)]
pub enum Method {
    /// ZipIt! greedy zip (reference doc §3.1).
    Zipit {
        /// Repeated-matching discount alpha (> 0).
        alpha: f64,
        /// Same-model merge budget beta in [0, 1].
        beta: f64,
    },
    /// Permute: Hungarian matching on the cross-correlation (§3.2).
    Permute,
    /// Weight averaging (identity, §3.3).
    WeightAvg,
    /// Git Re-Basin weight matching (data-free, §3.5).
    GitRebasin {
        /// Seed of the group visiting order.
        seed: u64,
    },
    /// Model A unchanged (debug, §3.4).
    ReturnA,
    /// CCA Merge (Horoi et al., ICML 2024): dense linear maps of every model into model A's
    /// features by regularised CCA ([`crate::matching::cca`]).
    Cca {
        /// Ridge relative to the mean variance of each space (>= 0).
        reg: f64,
    },
}

impl Method {
    /// Parses `--method` with its hyper-parameters.
    ///
    /// # Errors
    /// [`MergeError::Param`] for an unknown name or invalid alpha/beta.
    pub fn parse(name: &str, alpha: f64, beta: f64, seed: u64) -> Result<Self, MergeError> {
        let m = match name {
            "zipit" => Method::Zipit { alpha, beta },
            "permute" => Method::Permute,
            "weight-avg" | "wavg" => Method::WeightAvg,
            "git-rebasin" => Method::GitRebasin { seed },
            "return-a" => Method::ReturnA,
            "cca" => Method::Cca {
                reg: super::cca::DEFAULT_CCA_REG,
            },
            o => {
                return Err(MergeError::param(
                    MergeParam::Method,
                    o,
                    "expected zipit, permute, weight-avg, git-rebasin, cca or return-a",
                ))
            }
        };
        if let Method::Zipit { alpha, beta } = m {
            ZipIt { alpha, beta }.check_params().map_err(|e| match e {
                MatchError::InvalidAlpha(a) => {
                    MergeError::param(MergeParam::Alpha, a, "expected a finite number > 0")
                }
                MatchError::InvalidBeta(b) => {
                    MergeError::param(MergeParam::Beta, b, "expected a number in [0, 1]")
                }
                e => MergeError::Match(e),
            })?;
        }
        Ok(m)
    }

    /// Sets CCA Merge's regularisation (other methods are returned unchanged).
    ///
    /// # Errors
    /// [`MergeError::Param`] for a negative or non-finite `reg`.
    pub fn with_cca_reg(self, reg: f64) -> Result<Self, MergeError> {
        if !(reg.is_finite() && reg >= 0.0) {
            return Err(MergeError::param(
                MergeParam::CcaReg,
                reg,
                "expected a finite number >= 0",
            ));
        }
        Ok(match self {
            Method::Cca { .. } => Method::Cca { reg },
            m => m,
        })
    }

    /// Whether the method needs feature statistics.
    pub fn needs_statistics(&self) -> bool {
        matches!(
            self,
            Method::Zipit { .. } | Method::Permute | Method::Cca { .. }
        )
    }

    /// The matcher that solves one feature space for this method from a correlation matrix;
    /// `None` for Git Re-Basin, which matches weights, not features (reference doc §3), and for
    /// CCA Merge, which solves from the covariance ([`super::cca::cca_merge`]).
    pub fn matcher(&self) -> Option<Box<dyn Matcher>> {
        Some(match *self {
            Method::Zipit { alpha, beta } => Box::new(ZipIt { alpha, beta }),
            Method::Permute => Box::new(Permute),
            Method::WeightAvg => Box::new(Identity),
            Method::ReturnA => Box::new(ReturnA),
            Method::GitRebasin { .. } | Method::Cca { .. } => return None,
        })
    }

    /// Display name as in the paper's tables.
    pub fn label(&self) -> String {
        match self {
            Method::Zipit { .. } => "ZipIt!".into(),
            Method::Permute => "Permute".into(),
            Method::WeightAvg => "W.Avg".into(),
            Method::GitRebasin { .. } => "Git Re-Basin".into(),
            Method::ReturnA => "Model A".into(),
            Method::Cca { .. } => "CCA Merge".into(),
        }
    }
}

/// Runs `method`'s matcher alone on one `O x O` matrix of `n` stacked models: a covariance
/// (turned into a correlation; CCA Merge solves from the covariance itself), or a correlation
/// when `is_correlation`.
///
/// # Errors
/// [`MergeError::Param`] for Git Re-Basin (it matches weights, not a matrix); the matcher's
/// error otherwise.
pub fn match_matrix(
    m: &SquareMatrix,
    is_correlation: bool,
    n: usize,
    method: &Method,
    eps: f64,
) -> Result<MergeUnmerge, MergeError> {
    let r = match method {
        Method::GitRebasin { .. } => {
            return Err(MergeError::param(
                MergeParam::Method,
                "git-rebasin",
                "Git Re-Basin matches weights, not a matrix: merge the models",
            ))
        }
        Method::Cca { reg } => super::cca::cca_merge(m, n, *reg),
        _ => {
            let corr = if is_correlation {
                m.clone()
            } else {
                correlation(m)
            };
            let matcher = method.matcher().expect("a matcher for every other method");
            matcher.solve(&corr, n, eps)
        }
    };
    Ok(r?)
}

/// Checks that a dual-space `lambda` lies in `[0, 1]`.
///
/// # Errors
/// [`MergeError::Param`] otherwise (NaN included).
pub fn check_dual_lambda(lambda: f64) -> Result<(), MergeError> {
    if !(0.0..=1.0).contains(&lambda) {
        return Err(MergeError::param(
            MergeParam::DualLambda,
            lambda,
            "expected a number in [0, 1]",
        ));
    }
    Ok(())
}

/// Checks a dual-space `lambda` for `method`.
///
/// # Errors
/// [`MergeError::Param`] for `lambda` outside `[0, 1]` (or NaN), or `lambda > 0` with a method
/// other than ZipIt! and Permute.
pub fn check_dual(method: &Method, lambda: f64) -> Result<(), MergeError> {
    check_dual_lambda(lambda)?;
    if lambda > 0.0 && !matches!(method, Method::Zipit { .. } | Method::Permute) {
        return Err(MergeError::param(
            MergeParam::DualLambda,
            lambda,
            format!(
                "dual-space similarity applies to zipit and permute, not {}",
                method.label()
            ),
        ));
    }
    Ok(())
}

/// What one feature space needs to be solved: its width, the number of models, the
/// covariance of the stacked features (`[N*O, N*O]`, when collected), the weight similarity
/// and its share `lambda` (dual-space matching), and the merge epsilon.
pub struct SpaceInput<'a> {
    /// Models merged (N).
    pub n: usize,
    /// Width of the space in one model (O).
    pub width: usize,
    /// Covariance `[N*O, N*O]` of the stacked features (`None`: not collected).
    pub covariance: Option<&'a SquareMatrix>,
    /// Weight similarity `[N*O, N*O]` (dual-space matching), with its share `lambda`.
    pub weight_similarity: Option<SquareMatrix>,
    /// Share of the weight similarity in [0, 1] (0: features only).
    pub lambda: f64,
    /// Merge normalisation epsilon.
    pub eps: f64,
}

/// How a method solves one feature space into its merge/unmerge matrices.
pub trait SpaceSolver {
    /// Solves one space.
    ///
    /// # Errors
    /// [`MatchError`] from the matcher; [`MatchError::Unsupported`] when the statistics it
    /// needs were not collected.
    fn solve_space(&self, input: SpaceInput<'_>) -> Result<MergeUnmerge, MatchError>;
}

/// The correlation matchers (ZipIt!, Permute, W.Avg, return-a): correlation of the covariance,
/// blended with the weight similarity when `lambda > 0`; W.Avg and return-a read no features (a
/// zero matrix of the right size).
pub struct CorrelationSolver {
    matcher: Box<dyn Matcher>,
    reads_features: bool,
}

impl SpaceSolver for CorrelationSolver {
    fn solve_space(&self, input: SpaceInput<'_>) -> Result<MergeUnmerge, MatchError> {
        let o = input.width * input.n;
        let features = || -> Result<SquareMatrix, MatchError> {
            if !self.reads_features {
                return Ok(SquareMatrix {
                    n: o,
                    data: vec![0.0; o * o],
                });
            }
            input
                .covariance
                .map(correlation)
                .ok_or_else(|| MatchError::Unsupported("no feature statistics".into()))
        };
        let corr = match input.weight_similarity {
            // weight similarity alone reads no features
            Some(w) if input.lambda == 1.0 => w,
            Some(w) => super::dual::blend(&features()?, &w, input.lambda),
            None => features()?,
        };
        self.matcher.solve(&corr, input.n, input.eps)
    }
}

/// CCA Merge: dense maps into model A's features from the covariance ([`super::cca`]).
pub struct CcaSolver {
    /// Ridge relative to the mean variance of the space.
    pub reg: f64,
}

impl SpaceSolver for CcaSolver {
    fn solve_space(&self, input: SpaceInput<'_>) -> Result<MergeUnmerge, MatchError> {
        let cov = input
            .covariance
            .ok_or_else(|| MatchError::Unsupported("no feature statistics".into()))?;
        super::cca::cca_merge(cov, input.n, self.reg)
    }
}

impl Method {
    /// How this method solves one feature space; `None` for Git Re-Basin, which matches the
    /// whole network's weights at once ([`super::rebasin::git_rebasin`], reference doc §3.5).
    pub fn space_solver(&self) -> Option<Box<dyn SpaceSolver>> {
        match self {
            Method::GitRebasin { .. } => None,
            Method::Cca { reg } => Some(Box::new(CcaSolver { reg: *reg })),
            m => Some(Box::new(CorrelationSolver {
                matcher: m.matcher()?,
                reads_features: m.needs_statistics(),
            })),
        }
    }
}
