//! The genome of a merge-recipe search: which knobs of a merge a vector of genes sets, and how
//! a vector decodes into [`MergeSettings`] and a stop (Akiba et al., Evolutionary Optimization
//! of Model Merging Recipes, 2024: parameter space §3.1, data-flow space §3.2, both §3.3).
//!
//! Every gene lives in `[0, 1]` (CMA-ES searches `R^n`; a value outside is clamped) and maps
//! linearly onto its range; a categorical gene (the stop, REPAIR, a slot's source) takes the
//! choice `floor(x * k)`. The search starts at 0.5 on every gene, "the middle of each gene's
//! range" (issue 26).
//!
//! - **Parameter space** (`ps`): ZipIt!'s alpha and beta per feature space up to the stop;
//!   Permute / W.Avg / Git Re-Basin: the weight of each model per layer group (two models: one
//!   gene, the weight of A, B getting the rest); optionally the stop (`--search-stop`) and
//!   REPAIR on/off (`--search-repair`).
//! - **Data-flow space** (`dfs`): per residual block slot, its source (A, the Permute merge,
//!   B, ...; the middle is the merge) and its input scale in `[0.5, 1.5]` (middle 1).
//! - **Both**: the data-flow genes and the merge's per-group weights.

use serde::Serialize;

use crate::error::{MergeError, MergeParam};
use crate::merge::knobs::{layer_groups, GroupWeights, Knobs};
use crate::merge::{MergeSettings, Method};
use crate::models::MergeSpec;
use crate::rewrite::path::{blocks, DataFlowPath, Slot, Source};
use crate::taskvec::{TaskVectorGroup, TaskVectorMethod, TaskVectorSettings};

/// Range of ZipIt!'s alpha gene.
pub const ALPHA_RANGE: (f64, f64) = (0.01, 1.0);
/// Range of ZipIt!'s beta gene.
pub const BETA_RANGE: (f64, f64) = (0.0, 1.0);
/// Range of a data-flow slot's input scale.
pub const SCALE_RANGE: (f64, f64) = (0.5, 1.5);
/// Range of a task vector's density in a layer group.
pub const DENSITY_RANGE: (f64, f64) = (0.05, 1.0);
/// Range of a task vector's weight in a layer group (middle: 1, the plain merge).
pub const TASK_WEIGHT_RANGE: (f64, f64) = (0.0, 2.0);
/// Range of lambda (middle: 1).
pub const LAMBDA_RANGE: (f64, f64) = (0.0, 2.0);

/// Which knobs a search sets.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum SearchSpace {
    /// Parameter space: the method's knobs per space / layer group.
    Ps,
    /// Data-flow space: a path of blocks through the aligned models and their merge.
    Dfs,
    /// Both.
    Both,
}

impl SearchSpace {
    /// Parses `ps`, `dfs` or `both`.
    ///
    /// # Errors
    /// [`MergeError::Param`] naming the search space.
    pub fn parse(s: &str) -> Result<Self, MergeError> {
        match s {
            "ps" => Ok(Self::Ps),
            "dfs" => Ok(Self::Dfs),
            "both" => Ok(Self::Both),
            o => Err(MergeError::param(
                MergeParam::SearchSpace,
                o,
                "expected ps, dfs or both",
            )),
        }
    }

    /// `PS`, `DFS` or `PS+DFS`, as reports print it.
    pub fn name(self) -> &'static str {
        match self {
            Self::Ps => "PS",
            Self::Dfs => "DFS",
            Self::Both => "PS+DFS",
        }
    }

    /// Whether the data-flow genes are searched.
    pub fn has_path(self) -> bool {
        self != Self::Ps
    }
}

/// What one gene sets.
#[derive(Clone, Debug, PartialEq, Serialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum GeneKind {
    /// ZipIt!'s alpha of a feature space.
    Alpha {
        /// Space index.
        space: usize,
    },
    /// ZipIt!'s beta of a feature space.
    Beta {
        /// Space index.
        space: usize,
    },
    /// Weight of a model in a layer group (two models: the weight of A, B getting `1 - w`).
    Weight {
        /// Layer group.
        group: String,
        /// Model index (`None`: two models, the weight of A).
        model: Option<usize>,
    },
    /// The stop, one of the choices.
    Stop {
        /// Stop names.
        choices: Vec<String>,
    },
    /// REPAIR off / on.
    Repair,
    /// The source of a block slot.
    Source {
        /// Slot index.
        slot: usize,
    },
    /// The input scale of a block slot.
    Scale {
        /// Slot index.
        slot: usize,
    },
    /// A task vector's density in a layer group (TIES, DARE-TIES).
    Density {
        /// Layer group.
        group: String,
        /// Model index.
        model: usize,
    },
    /// A task vector's weight in a layer group.
    TaskWeight {
        /// Layer group.
        group: String,
        /// Model index.
        model: usize,
    },
    /// The scale lambda of the merged task vector.
    Lambda,
}

/// A candidate merge a genome decodes into.
#[derive(Clone, Debug, PartialEq)]
pub enum Candidate {
    /// An aligning merge: its settings (knobs, path) and stop.
    Align {
        /// Settings.
        settings: MergeSettings,
        /// Stop.
        stop: String,
    },
    /// A task-vector merge's settings (per-group density and weights, lambda).
    TaskVector(TaskVectorSettings),
}

/// One gene: its name (`alpha[layer1.0.inner]`), what it sets and its range.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Gene {
    /// Name, as `trace.csv`'s header writes it.
    pub name: String,
    /// What it sets.
    pub kind: GeneKind,
    /// Lower end of the range (categorical genes: 0).
    pub lo: f64,
    /// Upper end of the range (categorical genes: the number of choices).
    pub hi: f64,
}

impl Gene {
    fn new(name: String, kind: GeneKind, (lo, hi): (f64, f64)) -> Self {
        Self { name, kind, lo, hi }
    }

    /// The gene's value in its range for the search coordinate `x` (clamped to `[0, 1]`).
    pub fn value(&self, x: f64) -> f64 {
        let x = if x.is_finite() {
            x.clamp(0.0, 1.0)
        } else {
            0.5
        };
        self.lo + x * (self.hi - self.lo)
    }

    /// The choice `floor(x * k)` of a categorical gene with `k = hi` choices.
    pub fn choice(&self, x: f64) -> usize {
        let k = self.hi as usize;
        ((self.value(x) - self.lo) as usize).min(k.saturating_sub(1))
    }
}

/// The genome of a search: the genes and what they decode into.
#[derive(Clone, Debug, Serialize)]
pub struct Genome {
    /// The genes, in vector order.
    pub genes: Vec<Gene>,
    /// The search space.
    pub space: SearchSpace,
    /// Settings every aligning candidate starts from (method, draws, batch size, seed).
    #[serde(skip)]
    pub base: MergeSettings,
    /// Settings every task-vector candidate starts from (`None`: the aligning family).
    #[serde(skip)]
    pub task_vectors: Option<TaskVectorSettings>,
    /// The stop when it is not a gene.
    pub stop: String,
    /// Ends of a data-flow path (stem and head).
    pub ends: Source,
    /// Residual blocks (data-flow slots).
    pub blocks: Vec<String>,
    /// Models merged.
    pub models: usize,
}

/// The source choices of a data-flow slot, the merge in the middle: `A, M, B, C, ...`.
fn source_choices(n: usize) -> Vec<Source> {
    let mut v = vec![Source::Model(0), Source::Merged];
    v.extend((1..n).map(Source::Model));
    v
}

impl Genome {
    /// The genome of a search over `space` for a merge of `n` models of `spec` with `base`
    /// settings at `stop`; `stops` (two or more) makes the stop a gene, `repair` REPAIR.
    /// `spaces_upto` is the number of feature spaces the largest stop matches.
    ///
    /// # Errors
    /// [`MergeError::Param`]: a parameter-space search of CCA Merge (its knobs are not cluster
    /// weights), a data-flow search of a network without residual blocks or with a method
    /// other than Permute.
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        space: SearchSpace,
        spec: &MergeSpec,
        n: usize,
        base: &MergeSettings,
        stop: &str,
        stops: &[String],
        spaces_upto: usize,
        repair: bool,
        ends: Source,
    ) -> Result<Self, MergeError> {
        let mut genes = Vec::new();
        let groups = layer_groups(spec);
        let weight_genes = |genes: &mut Vec<Gene>| {
            for g in &groups {
                if n == 2 {
                    genes.push(Gene::new(
                        format!("w_a[{g}]"),
                        GeneKind::Weight {
                            group: g.clone(),
                            model: None,
                        },
                        (0.0, 1.0),
                    ));
                } else {
                    for m in 0..n {
                        genes.push(Gene::new(
                            format!("w{m}[{g}]"),
                            GeneKind::Weight {
                                group: g.clone(),
                                model: Some(m),
                            },
                            (0.05, 1.0),
                        ));
                    }
                }
            }
        };
        let blocks = blocks(spec);
        if space.has_path() {
            if base.method != Method::Permute {
                return Err(MergeError::param(
                    MergeParam::SearchSpace,
                    "dfs",
                    format!(
                        "the data-flow space aligns the models one-to-one with permute, not {}",
                        base.method.label()
                    ),
                ));
            }
            if blocks.is_empty() {
                return Err(MergeError::param(
                    MergeParam::SearchSpace,
                    "dfs",
                    format!("{} has no residual blocks to route", spec.net.arch),
                ));
            }
            let k = source_choices(n).len() as f64;
            for (i, b) in blocks.iter().enumerate() {
                genes.push(Gene::new(
                    format!("source[{b}]"),
                    GeneKind::Source { slot: i },
                    (0.0, k),
                ));
                genes.push(Gene::new(
                    format!("scale[{b}]"),
                    GeneKind::Scale { slot: i },
                    SCALE_RANGE,
                ));
            }
            if space == SearchSpace::Both {
                weight_genes(&mut genes);
            }
        } else {
            match base.method {
                Method::Zipit { .. } => {
                    for (s, sp) in spec.spaces.iter().enumerate().take(spaces_upto) {
                        genes.push(Gene::new(
                            format!("alpha[{}]", sp.name),
                            GeneKind::Alpha { space: s },
                            ALPHA_RANGE,
                        ));
                        genes.push(Gene::new(
                            format!("beta[{}]", sp.name),
                            GeneKind::Beta { space: s },
                            BETA_RANGE,
                        ));
                    }
                }
                Method::Cca { .. } => {
                    return Err(MergeError::param(
                        MergeParam::SearchSpace,
                        "ps",
                        "CCA Merge has no parameter-space genes (its merge matrices are dense maps, not cluster weights): search zipit, permute, weight-avg or git-rebasin",
                    ))
                }
                _ => weight_genes(&mut genes),
            }
            if stops.len() >= 2 {
                genes.push(Gene::new(
                    "stop".into(),
                    GeneKind::Stop {
                        choices: stops.to_vec(),
                    },
                    (0.0, stops.len() as f64),
                ));
            }
            if repair {
                genes.push(Gene::new("repair".into(), GeneKind::Repair, (0.0, 2.0)));
            }
        }
        Ok(Self {
            genes,
            space,
            base: base.clone(),
            task_vectors: None,
            stop: stop.into(),
            ends,
            blocks,
            models: n,
        })
    }

    /// The genome of a task-vector merge of `n` fine-tunes of a network of `spec` (Akiba et
    /// al.'s parameter space): per layer group, each model's density (TIES, DARE-TIES) and
    /// weight, and lambda. `base` are the settings every candidate starts from.
    pub fn task_vectors(
        spec: &MergeSpec,
        n: usize,
        base: &MergeSettings,
        tv: &TaskVectorSettings,
    ) -> Self {
        let trims = matches!(
            tv.method,
            TaskVectorMethod::Ties { .. } | TaskVectorMethod::DareTies { .. }
        );
        let mut genes = Vec::new();
        for g in layer_groups(spec) {
            for m in 0..n {
                if trims {
                    genes.push(Gene::new(
                        format!("density{m}[{g}]"),
                        GeneKind::Density {
                            group: g.clone(),
                            model: m,
                        },
                        DENSITY_RANGE,
                    ));
                }
                genes.push(Gene::new(
                    format!("weight{m}[{g}]"),
                    GeneKind::TaskWeight {
                        group: g.clone(),
                        model: m,
                    },
                    TASK_WEIGHT_RANGE,
                ));
            }
        }
        genes.push(Gene::new("lambda".into(), GeneKind::Lambda, LAMBDA_RANGE));
        Self {
            genes,
            space: SearchSpace::Ps,
            base: base.clone(),
            task_vectors: Some(tv.clone()),
            stop: "full".into(),
            ends: Source::Model(0),
            blocks: vec![],
            models: n,
        }
    }

    /// The candidate a search vector `x` decodes into.
    pub fn candidate(&self, x: &[f64], spec: &MergeSpec) -> Candidate {
        let Some(tv) = &self.task_vectors else {
            let (settings, stop) = self.decode(x, spec);
            return Candidate::Align { settings, stop };
        };
        let mut tv = tv.clone();
        let mut groups: Vec<TaskVectorGroup> = Vec::new();
        let n = self.models;
        for (g, &xi) in self.genes.iter().zip(x) {
            let entry = |groups: &mut Vec<TaskVectorGroup>, name: &str| -> usize {
                match groups.iter().position(|e| e.group == name) {
                    Some(i) => i,
                    None => {
                        groups.push(TaskVectorGroup {
                            group: name.into(),
                            density: None,
                            weights: None,
                        });
                        groups.len() - 1
                    }
                }
            };
            match &g.kind {
                GeneKind::Density { group, model } => {
                    let i = entry(&mut groups, group);
                    groups[i].density.get_or_insert_with(|| vec![0.0; n])[*model] = g.value(xi);
                }
                GeneKind::TaskWeight { group, model } => {
                    let i = entry(&mut groups, group);
                    groups[i].weights.get_or_insert_with(|| vec![0.0; n])[*model] = g.value(xi);
                }
                GeneKind::Lambda => tv.lambda = g.value(xi),
                _ => {}
            }
        }
        tv.groups = groups;
        Candidate::TaskVector(tv)
    }

    /// Number of genes.
    pub fn len(&self) -> usize {
        self.genes.len()
    }

    /// Whether there is no gene.
    pub fn is_empty(&self) -> bool {
        self.genes.is_empty()
    }

    /// The settings and stop a search vector `x` (one coordinate per gene) decodes into.
    pub fn decode(&self, x: &[f64], spec: &MergeSpec) -> (MergeSettings, String) {
        let mut s = self.base.clone();
        let mut stop = self.stop.clone();
        let (alpha0, beta0) = match s.method {
            Method::Zipit { alpha, beta } => (alpha, beta),
            _ => (0.0, 0.0),
        };
        let mut ab: Vec<[f64; 2]> = Vec::new();
        let mut weights: Vec<GroupWeights> = Vec::new();
        let mut slots: Vec<Slot> = self
            .blocks
            .iter()
            .map(|b| Slot {
                block: b.clone(),
                source: Source::Merged,
                scale: 1.0,
            })
            .collect();
        let choices = source_choices(self.models);
        for (g, &xi) in self.genes.iter().zip(x) {
            match &g.kind {
                GeneKind::Alpha { space } | GeneKind::Beta { space } => {
                    if ab.is_empty() {
                        ab = vec![[alpha0, beta0]; spec.spaces.len()];
                    }
                    let i = usize::from(matches!(g.kind, GeneKind::Beta { .. }));
                    ab[*space][i] = g.value(xi);
                }
                GeneKind::Weight { group, model } => {
                    let entry = match weights.iter_mut().position(|w| &w.group == group) {
                        Some(i) => &mut weights[i],
                        None => {
                            weights.push(GroupWeights {
                                group: group.clone(),
                                weights: vec![0.0; self.models],
                            });
                            weights.last_mut().expect("just pushed")
                        }
                    };
                    match model {
                        None => {
                            let w = g.value(xi);
                            entry.weights = vec![w, 1.0 - w];
                        }
                        Some(m) => entry.weights[*m] = g.value(xi),
                    }
                }
                GeneKind::Stop { choices } => stop = choices[g.choice(xi)].clone(),
                GeneKind::Repair => s.corrections.repair = g.choice(xi) == 1,
                GeneKind::Source { slot } => slots[*slot].source = choices[g.choice(xi)],
                GeneKind::Scale { slot } => slots[*slot].scale = g.value(xi),
                GeneKind::Density { .. } | GeneKind::TaskWeight { .. } | GeneKind::Lambda => {}
            }
        }
        s.knobs = Knobs {
            space_alpha_beta: ab,
            group_weights: weights,
        };
        if self.space.has_path() {
            s.path = Some(DataFlowPath {
                ends: self.ends,
                slots,
            });
        }
        (s, stop)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn genes_map_the_unit_interval_onto_their_range() {
        let g = Gene::new("a".into(), GeneKind::Repair, (0.0, 3.0));
        assert_eq!(g.choice(0.0), 0);
        assert_eq!(g.choice(0.5), 1); // the middle of three choices
        assert_eq!(g.choice(0.999), 2);
        assert_eq!(g.choice(1.0), 2);
        assert_eq!(g.choice(7.0), 2); // clamped
        assert_eq!(g.choice(-1.0), 0);
        let a = Gene::new("s".into(), GeneKind::Scale { slot: 0 }, SCALE_RANGE);
        assert_eq!(a.value(0.5), 1.0);
        assert_eq!(a.value(0.0), 0.5);
        assert_eq!(a.value(2.0), 1.5);
        assert_eq!(source_choices(2)[1], Source::Merged);
    }
}
