//! Per-space and per-layer-group knobs of an aligning merge: what a merge's single global
//! settings become when a search (`zipmerge evolve`, [`crate::ops::evolve`]) sets them one
//! feature space or one layer group at a time, as Akiba et al. (Evolutionary Optimization of
//! Model Merging Recipes, 2024, §3.1) set TIES/DARE's density and weight per layer.
//!
//! - ZipIt!'s alpha and beta per feature space ([`Knobs::space_alpha_beta`]): each space is
//!   matched with its own pair (reference doc §3.1 for what they do);
//! - the weight of each model in each layer group ([`Knobs::group_weights`]): every merged row
//!   of a layer's merge matrix `M` (a cluster of matched units) becomes the weighted average of
//!   its units, model m's units weighted `w_m`, the row's sum kept (so the merge epsilon acts as
//!   before); the network's output layer in a full zip averages the models with the same
//!   weights. Equal weights are the plain merge. A cluster whose units all come from models of
//!   weight 0 keeps its plain average.
//!
//! Layer groups ([`layer_group`]) follow the module tree: `stem` (layers before the first
//! stage), `layer1`, `layer2`, ... (ResNet stages), `features.<i>` (each VGG conv layer) and
//! `head` (the output layer: `linear`, `fc`, `classifier`).

use serde::{Deserialize, Serialize};

use super::Method;
use crate::error::{MergeError, MergeParam};
use crate::models::MergeSpec;
pub use crate::spec::layer_group;

/// The weights of the models in one layer group.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GroupWeights {
    /// Layer group ([`layer_group`]): `stem`, `layer1`, ..., `head`.
    pub group: String,
    /// Weight of each model (model order; >= 0, not all 0; normalised to sum 1 when applied).
    pub weights: Vec<f64>,
}

/// Per-space and per-layer-group knobs of an aligning merge (module docs). Empty lists mean
/// the merge's global settings.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Knobs {
    /// ZipIt!'s `[alpha, beta]` per feature space, in the spec's order (one per space of the
    /// network; spaces after the stop are not matched). ZipIt! only.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub space_alpha_beta: Vec<[f64; 2]>,
    /// Weight of each model per layer group (groups not listed: equal weights). Cluster
    /// methods only (ZipIt!, Permute, W.Avg, Git Re-Basin, return-a).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub group_weights: Vec<GroupWeights>,
}

impl Knobs {
    /// Whether no knob is set (the merge's global settings apply).
    pub fn is_empty(&self) -> bool {
        self.space_alpha_beta.is_empty() && self.group_weights.is_empty()
    }

    /// Checks the knobs against the merge: its `method`, the network's `spec` and `n` models.
    ///
    /// # Errors
    /// [`MergeError::Param`] naming `knobs`: per-space alpha/beta with a method other than
    /// ZipIt!, a count other than the spaces', an alpha that is not > 0 or a beta outside
    /// [0, 1]; group weights with CCA Merge, for a group the network does not have (the
    /// groups are named), listed twice, with a count other than `n`, negative, non-finite or
    /// all zero.
    pub fn check(&self, method: &Method, spec: &MergeSpec, n: usize) -> Result<(), MergeError> {
        let bad = |v: String, e: String| MergeError::param(MergeParam::Knobs, v, e);
        if !self.space_alpha_beta.is_empty() {
            if !matches!(method, Method::Zipit { .. }) {
                return Err(bad(
                    "space_alpha_beta".into(),
                    format!(
                        "per-space alpha/beta are ZipIt!'s, not {}'s",
                        method.label()
                    ),
                ));
            }
            if self.space_alpha_beta.len() != spec.spaces.len() {
                return Err(bad(
                    format!("{} space_alpha_beta pairs", self.space_alpha_beta.len()),
                    format!("expected one per feature space ({})", spec.spaces.len()),
                ));
            }
            for (sp, [a, b]) in spec.spaces.iter().zip(&self.space_alpha_beta) {
                Method::parse("zipit", *a, *b, 0).map_err(|e| {
                    bad(
                        format!("space {}: [{a}, {b}]", sp.name),
                        format!("{e} (alpha > 0, beta in [0, 1])"),
                    )
                })?;
            }
        }
        if !self.group_weights.is_empty() {
            if matches!(method, Method::Cca { .. }) {
                return Err(bad(
                    "group_weights".into(),
                    "CCA Merge's merge matrices are dense maps, not cluster averages: group weights apply to zipit, permute, weight-avg and git-rebasin".into(),
                ));
            }
            let groups = layer_groups(spec);
            let mut seen = Vec::new();
            for g in &self.group_weights {
                if !groups.contains(&g.group) {
                    return Err(bad(
                        g.group.clone(),
                        format!(
                            "no such layer group; this network has {}",
                            groups.join(", ")
                        ),
                    ));
                }
                if seen.contains(&&g.group) {
                    return Err(bad(g.group.clone(), "the group is listed twice".into()));
                }
                seen.push(&g.group);
                if g.weights.len() != n {
                    return Err(bad(
                        format!("{}: {} weights", g.group, g.weights.len()),
                        format!("expected one per model ({n})"),
                    ));
                }
                if g.weights.iter().any(|w| !(w.is_finite() && *w >= 0.0))
                    || g.weights.iter().sum::<f64>() <= 0.0
                {
                    return Err(bad(
                        format!("{}: {:?}", g.group, g.weights),
                        "expected finite weights >= 0, not all 0".into(),
                    ));
                }
            }
        }
        Ok(())
    }

    /// The method of feature space `s`: ZipIt! with the space's alpha/beta when set, else
    /// `method`.
    pub fn method_of_space(&self, method: &Method, s: usize) -> Method {
        match self.space_alpha_beta.get(s) {
            Some(&[alpha, beta]) if matches!(method, Method::Zipit { .. }) => {
                Method::Zipit { alpha, beta }
            }
            _ => method.clone(),
        }
    }

    /// The model weights of the layer that tensor `key` belongs to (`None`: equal weights).
    pub fn weights_of(&self, key: &str) -> Option<&[f64]> {
        if self.group_weights.is_empty() {
            return None;
        }
        let g = layer_group(key);
        self.group_weights
            .iter()
            .find(|w| w.group == g)
            .map(|w| w.weights.as_slice())
    }
}

/// The layer groups of a network in module order (ResNet-20: `stem`, `layer1`, `layer2`,
/// `layer3`, `head`).
pub fn layer_groups(spec: &MergeSpec) -> Vec<String> {
    let mut out: Vec<String> = Vec::new();
    for l in &spec.layers {
        let g = layer_group(&l.name);
        if !out.contains(&g) {
            out.push(g);
        }
    }
    // the head last, whatever the module order of the spec
    if let Some(i) = out.iter().position(|g| g == "head") {
        let h = out.remove(i);
        out.push(h);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn layer_groups_follow_the_module_path() {
        assert_eq!(layer_group("conv1"), "stem");
        assert_eq!(layer_group("bn1"), "stem");
        assert_eq!(layer_group("layer2.0.shortcut.0"), "layer2");
        assert_eq!(layer_group("layer10.1.conv1"), "layer10");
        assert_eq!(layer_group("layerx.conv"), "stem");
        assert_eq!(layer_group("features.4"), "features.4");
        assert_eq!(layer_group("classifier"), "head");
        assert_eq!(layer_group("linear.weight"), "head");
        assert_eq!(layer_group("fc.bias"), "head");
        assert_eq!(layer_group("conv1.weight"), "stem");
    }
}
