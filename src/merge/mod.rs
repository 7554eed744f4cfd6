//! The merge pipeline (reference doc §1.1): endpoints -> (optional endpoint BN reset) ->
//! statistics -> per-space matching -> rewriting at a stop -> BN reset -> merged model. Each step
//! is a separate function so that `sweep` can collect statistics once and rewrite per stop.

use std::path::{Path, PathBuf};

use burn::tensor::Device;
use serde::Serialize;

use crate::checkpoint::{self, HeadManifest, ModelManifest, StateDict};
use crate::collect::{self, CovAccumulator};
use crate::error::{MergeError, MergeParam};
use crate::matching::{MergeUnmerge, SquareMatrix};
use crate::models::head::HeadSpec;
use crate::models::MergeSpec;
use crate::models::Net;
use crate::progress::Observer;
use crate::rewrite::{self, bn_reset, Zipped};
use crate::spec::Stop;
use crate::system::runner::Runner;

pub mod knobs;
mod plan;
pub mod recipe;
pub use crate::matching::method::{check_dual, check_dual_lambda, match_matrix, Method};
pub use knobs::Knobs;
pub(crate) use plan::tv_error;
pub(crate) use plan::Evaluation;
pub use plan::{images, Batches, EvalPlan, MergePlan, MergeSettings, Similarity, TaskVectorPlan};
pub use recipe::{Combine, Recipe, RecipePlan};

/// The source models of a merge.
#[derive(Clone, Debug)]
pub struct Endpoints {
    /// Model folders.
    pub dirs: Vec<PathBuf>,
    /// Manifests.
    pub manifests: Vec<ModelManifest>,
    /// Weights.
    pub states: Vec<StateDict>,
    /// The shared merge spec.
    pub spec: MergeSpec,
}

impl Endpoints {
    /// Loads N >= 2 single models and checks they can be merged.
    ///
    /// # Errors
    /// [`MergeError::Param`] for fewer than two folders; [`MergeError`] naming the file and the
    /// mismatch (architecture, width, head kind or dimension, multi-head inputs, a tensor the
    /// merge spec does not cover).
    pub fn load(dirs: &[PathBuf]) -> Result<Self, MergeError> {
        if dirs.len() < 2 {
            return Err(MergeError::param(
                MergeParam::Models,
                dirs.len(),
                "merging needs at least two model folders",
            ));
        }
        let mut manifests = Vec::new();
        let mut states = Vec::new();
        let mut first_net = None;
        for d in dirs {
            let d = checkpoint::model_dir(d);
            let m = checkpoint::read_manifest(&d)?;
            if m.is_multi_head() {
                return Err(MergeError::Endpoint {
                    model: d.display().to_string(),
                    msg: "is a multi-head model; merge single models".into(),
                });
            }
            let s = checkpoint::read_weights(&d, &m.weights)?;
            // check the weights fit before anything else runs
            let net = Net::from_state(&m.net_config(), &s, &Device::flex()).map_err(|e| {
                MergeError::Endpoint {
                    model: d.join(&m.weights).display().to_string(),
                    msg: e.to_string(),
                }
            })?;
            first_net.get_or_insert(net);
            manifests.push(m);
            states.push(s);
        }
        let a = &manifests[0];
        for (m, d) in manifests.iter().zip(dirs).skip(1) {
            let differ = |differs: String, first: String, expected| MergeError::Incompatible {
                model: d.display().to_string(),
                differs,
                first: format!("{} {first}", dirs[0].display()),
                expected,
            };
            if (m.arch, m.width) != (a.arch, a.width) {
                return Err(differ(
                    format!("is {} x{} but", m.arch, m.width),
                    format!("is {} x{}", a.arch, a.width),
                    "models must share architecture and width",
                ));
            }
            let (hm, ha) = (m.heads[0].head.kind(), a.heads[0].head.kind());
            if hm != ha {
                return Err(differ(
                    format!("has a {hm} head but"),
                    format!("has a {ha} head"),
                    "models must share the head kind",
                ));
            }
            let (om, oa) = (m.net_config().out, a.net_config().out);
            if om != oa {
                return Err(differ(
                    format!("has {om} outputs but"),
                    format!("has {oa}"),
                    "models must share the output dimension",
                ));
            }
            if m.prep() != a.prep() {
                return Err(differ(
                    format!("takes inputs as: {}; but", m.prep().describe()),
                    format!("takes: {}", a.prep().describe()),
                    "models must share their preprocessing (one probe batch feeds them all)",
                ));
            }
        }
        let spec = MergeSpec::of(&a.net_config());
        if let Some(net) = &first_net {
            spec.check_taps(net)?;
        }
        for (s, d) in states.iter().zip(dirs) {
            spec.check_covers(s.keys())
                .and_then(|()| spec.check_widths(s))
                .map_err(|e| MergeError::InModel {
                    model: d.display().to_string(),
                    source: Box::new(e),
                })?;
        }
        Ok(Self {
            dirs: dirs.to_vec(),
            manifests,
            states,
            spec,
        })
    }

    /// The preprocessing all the models share (checked by [`Endpoints::load`]).
    pub fn prep(&self) -> crate::data::Preprocess {
        self.manifests[0].prep()
    }

    /// Number of models N.
    pub fn n(&self) -> usize {
        self.states.len()
    }

    /// Each endpoint's task: the class ids of its (first) head, in model order.
    pub fn tasks(&self) -> Vec<Vec<usize>> {
        self.manifests
            .iter()
            .map(|m| m.heads[0].classes.clone())
            .collect()
    }

    /// Every head of every endpoint, in model order (for
    /// [`crate::eval::runner::check_evaluation`]).
    pub fn heads(&self) -> Vec<&HeadSpec> {
        self.manifests
            .iter()
            .flat_map(|m| m.heads.iter().map(|h| &h.head))
            .collect()
    }

    /// Resets the BN statistics of every endpoint (reference §1.1 step 2), all endpoints in one
    /// loop over the images ([`bn_reset::reset_many`], which merged models share).
    ///
    /// # Errors
    /// As [`bn_reset::reset_many`].
    pub fn reset_bn(
        &mut self,
        batches: &[Vec<Vec<u8>>],
        device: &Runner,
        progress: &mut dyn FnMut(usize),
    ) -> Result<(), MergeError> {
        let mut models: Vec<bn_reset::ModelStates<'_>> = self
            .manifests
            .iter()
            .zip(self.states.iter_mut())
            .map(|(manifest, trunk)| bn_reset::ModelStates {
                manifest,
                trunk,
                heads: &mut [],
            })
            .collect();
        bn_reset::reset_many(&mut models, batches, device, progress)
    }

    /// Runnable networks of the endpoints.
    ///
    /// # Errors
    /// [`MergeError::Model`] if weights do not fit.
    pub fn nets(&self, device: &burn::tensor::Device) -> Result<Vec<Net>, MergeError> {
        self.manifests
            .iter()
            .zip(&self.states)
            .map(|(m, s)| Net::from_state(&m.net_config(), s, device).map_err(Into::into))
            .collect()
    }
}

/// Collected statistics: one covariance per feature space.
#[derive(Clone, Debug)]
pub struct Statistics {
    /// Covariance `[O, O]` per space.
    pub covariances: Vec<SquareMatrix>,
    /// Probe images used.
    pub images: usize,
    /// Passes over the probe set that produced these statistics, counted by the collector
    /// (`statistics` runs exactly one; experiments add these up to show it is done once).
    pub passes: usize,
}

/// Units of one model in one feature space that did not vary on the probe images (dead ReLUs,
/// zeroed channels): they carry no signal to match, so their pairing is arbitrary.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct DeadUnits {
    /// Feature space name.
    pub space: String,
    /// Model index (0 = A).
    pub model: usize,
    /// Units whose variance is zero (at most 1e-12 of the largest variance in the space).
    pub dead: usize,
    /// Units of the model in the space.
    pub width: usize,
}

impl Statistics {
    /// Dead units per (space, model), from the covariance diagonals: a unit counts as dead when
    /// its probe variance is at most `1e-12` times the largest variance of the space (all models
    /// together), so an all-zero endpoint shows every unit dead. `spaces` is the spec's list (the
    /// first `covariances.len()` are read). Only pairs with at least one dead unit are returned.
    pub fn dead_units(&self, spaces: &[crate::spec::Space]) -> Vec<DeadUnits> {
        let mut out = Vec::new();
        for (cov, sp) in self.covariances.iter().zip(spaces) {
            let n = cov.n;
            if sp.width == 0 || n % sp.width != 0 {
                continue;
            }
            let var: Vec<f64> = (0..n).map(|i| cov.get(i, i)).collect();
            let top = var.iter().copied().fold(0.0f64, f64::max);
            for model in 0..n / sp.width {
                let dead = var[model * sp.width..(model + 1) * sp.width]
                    .iter()
                    .filter(|&&v| v.is_nan() || v <= 1e-12 * top)
                    .count();
                if dead > 0 {
                    out.push(DeadUnits {
                        space: sp.name.clone(),
                        model,
                        dead,
                        width: sp.width,
                    });
                }
            }
        }
        out
    }
}

/// Collects feature statistics of the endpoints on the probe batches (every feature space).
///
/// # Errors
/// [`MergeError`] for an empty probe set.
pub fn statistics(
    ep: &Endpoints,
    batches: &[Vec<Vec<u8>>],
    device: &Runner,
    progress: &mut dyn FnMut(usize),
) -> Result<Statistics, MergeError> {
    statistics_upto(ep, batches, device, ep.spec.spaces.len(), progress)
}

/// [`statistics`] of the first `spaces` feature spaces only (a partial zip needs the spaces
/// up to its stop; [`collect::collect_upto`]).
///
/// # Errors
/// As [`statistics`].
pub fn statistics_upto(
    ep: &Endpoints,
    batches: &[Vec<Vec<u8>>],
    device: &Runner,
    spaces: usize,
    progress: &mut dyn FnMut(usize),
) -> Result<Statistics, MergeError> {
    let nets = ep.nets(device)?;
    let accs: Vec<CovAccumulator> =
        collect::collect_upto(&nets, ep.prep(), batches, device, spaces, progress)?;
    let covariances = accs
        .iter()
        .map(CovAccumulator::finalize)
        .collect::<Result<_, _>>()?;
    Ok(Statistics {
        covariances,
        images: batches.iter().map(Vec::len).sum(),
        passes: 1,
    })
}

/// Matches the first `spaces` feature spaces.
///
/// # Errors
/// [`MergeError::Space`] naming the space when a matcher fails; [`MergeError::NoProbeImages`]
/// when statistics are needed but missing.
pub fn match_spaces(
    ep: &Endpoints,
    method: &Method,
    stats: Option<&Statistics>,
    spaces: usize,
    eps: f64,
) -> Result<Vec<MergeUnmerge>, MergeError> {
    match_spaces_with(ep, method, stats, spaces, eps, 0.0)
}

/// [`match_spaces`] with dual-space similarity ([`crate::matching::dual`], MuDSC): ZipIt! and
/// Permute match on `(1 - lambda) * correlation + lambda * weight similarity`, the spaces in
/// dependency order; the loop is [`crate::matching::spaces::match_spaces`].
///
/// # Errors
/// As [`match_spaces`]; [`MergeError::Param`] for `lambda` outside `[0, 1]` or a method other
/// than ZipIt! and Permute with `lambda > 0`.
pub fn match_spaces_with(
    ep: &Endpoints,
    method: &Method,
    stats: Option<&Statistics>,
    spaces: usize,
    eps: f64,
    lambda: f64,
) -> Result<Vec<MergeUnmerge>, MergeError> {
    crate::matching::spaces::match_spaces(
        &ep.spec,
        &ep.states,
        method,
        stats.map(|s| s.covariances.as_slice()),
        spaces,
        eps,
        lambda,
    )
}

/// [`match_spaces_with`] with per-space knobs: space `s` is matched by
/// [`knobs::Knobs::method_of_space`] (ZipIt! with the space's own alpha and beta).
///
/// # Errors
/// As [`match_spaces_with`].
pub fn match_spaces_knobs(
    ep: &Endpoints,
    method: &Method,
    knobs: &knobs::Knobs,
    stats: Option<&Statistics>,
    spaces: usize,
    eps: f64,
    lambda: f64,
) -> Result<Vec<MergeUnmerge>, MergeError> {
    crate::matching::spaces::match_spaces_each(
        &ep.spec,
        &ep.states,
        method,
        &|s| knobs.method_of_space(method, s),
        stats.map(|s| s.covariances.as_slice()),
        spaces,
        eps,
        lambda,
    )
}

/// A merged model in memory.
#[derive(Clone, Debug)]
pub struct Merged {
    /// Its manifest.
    pub manifest: ModelManifest,
    /// Rewritten weights.
    pub zipped: Zipped,
}

/// Builds the merged model at `stop` from matched spaces.
///
/// # Errors
/// [`MergeError`] for incompatible weights or a full zip of linear heads over different classes.
pub fn build(
    ep: &Endpoints,
    transforms: &[MergeUnmerge],
    stop: &Stop,
    provenance: serde_json::Value,
) -> Result<Merged, MergeError> {
    build_knobs(ep, transforms, stop, &knobs::Knobs::default(), provenance)
}

/// [`build`] with per-layer-group model weights ([`knobs::Knobs::group_weights`],
/// [`rewrite::zip_weighted`]).
///
/// # Errors
/// As [`build`].
pub fn build_knobs(
    ep: &Endpoints,
    transforms: &[MergeUnmerge],
    stop: &Stop,
    knobs: &knobs::Knobs,
    provenance: serde_json::Value,
) -> Result<Merged, MergeError> {
    let zipped = rewrite::zip_weighted(&ep.spec, &ep.states, transforms, stop, &|key| {
        knobs.weights_of(key).map(<[f64]>::to_vec)
    })?;
    let manifest = merged_manifest(ep, stop, provenance)?;
    Ok(Merged { manifest, zipped })
}

/// Each endpoint in model A's features: model A itself, and model i rewritten with the
/// one-to-one `transforms` (Permute) of a full zip weighted on model i alone (exact when the
/// merge epsilon is 0: every merged row then holds one unit per model, weight 1/N). What a
/// data-flow path ([`rewrite::path`]) takes its blocks from.
///
/// # Errors
/// As [`rewrite::zip_weighted`].
pub fn aligned_states(
    ep: &Endpoints,
    transforms: &[MergeUnmerge],
    stop: &Stop,
) -> Result<Vec<StateDict>, MergeError> {
    let n = ep.n();
    let mut out = vec![ep.states[0].clone()];
    for i in 1..n {
        let w: Vec<f64> = (0..n).map(|m| if m == i { 1.0 } else { 0.0 }).collect();
        let z =
            rewrite::zip_weighted(&ep.spec, &ep.states, transforms, stop, &|_| Some(w.clone()))?;
        out.push(z.trunk);
    }
    Ok(out)
}

/// The manifest of a model merged from `ep` at `stop`: a full zip has one head over the
/// tasks' classes (text heads: their union; linear heads: the shared classes), a partial zip
/// one head per source model (`head<i>.safetensors`).
///
/// # Errors
/// [`MergeError::Param`] for a full zip of linear heads over different classes.
pub fn merged_manifest(
    ep: &Endpoints,
    stop: &Stop,
    provenance: serde_json::Value,
) -> Result<ModelManifest, MergeError> {
    let a = &ep.manifests[0];
    let heads = if stop.is_full() {
        let mut classes: Vec<usize> = ep.tasks().concat();
        if let HeadSpec::Linear = a.heads[0].head {
            if ep
                .manifests
                .iter()
                .any(|m| m.heads[0].classes != a.heads[0].classes)
            {
                return Err(MergeError::param(
                    MergeParam::Stop,
                    "full",
                    "a full zip averages the final linear layers, which is undefined for logit heads over different classes: use a partial zip (e.g. stop 19/20)",
                ));
            }
            classes = a.heads[0].classes.clone();
        } else {
            classes.sort_unstable();
            classes.dedup();
        }
        vec![HeadManifest {
            weights: None,
            classes,
            head: a.heads[0].head.clone(),
        }]
    } else {
        ep.manifests
            .iter()
            .enumerate()
            .map(|(i, m)| HeadManifest {
                weights: Some(format!("head{i}.safetensors")),
                ..m.heads[0].clone()
            })
            .collect()
    };
    Ok(ModelManifest {
        format: checkpoint::FORMAT.into(),
        arch: a.arch,
        width: a.width,
        weights: if stop.is_full() {
            "model.safetensors".into()
        } else {
            "trunk.safetensors".into()
        },
        stop_cut: stop.cut,
        stop: Some(stop.name.clone()),
        heads,
        class_names: a.class_names.clone(),
        preprocess: a.preprocess,
        provenance,
        zipmerge_version: env!("CARGO_PKG_VERSION").into(),
    })
}

impl Merged {
    /// Resets BN statistics of trunk and heads on the given batches (reference §4.4).
    ///
    /// # Errors
    /// As [`bn_reset::reset`].
    pub fn reset_bn(
        &mut self,
        batches: &[Vec<Vec<u8>>],
        device: &Runner,
        progress: &mut dyn FnMut(usize),
    ) -> Result<(), MergeError> {
        bn_reset::reset(
            &self.manifest,
            &mut self.zipped.trunk,
            &mut self.zipped.heads,
            batches,
            device,
            progress,
        )
    }

    /// Runnable system.
    ///
    /// # Errors
    /// [`MergeError::Model`] if weights do not fit.
    pub fn system(
        &self,
        device: &burn::tensor::Device,
    ) -> Result<crate::system::System, MergeError> {
        let (m, z) = (&self.manifest, &self.zipped);
        Ok(crate::system::System::from_parts(
            m, &z.trunk, &z.heads, device,
        )?)
    }

    /// Writes the model folder atomically.
    ///
    /// # Errors
    /// [`MergeError::Checkpoint`] when the folder cannot be written.
    pub fn save(&self, dir: &Path) -> Result<(), MergeError> {
        self.save_with(dir, &[])
    }

    /// [`Merged::save`] with extra files (`report.json`) in the same atomic folder write.
    ///
    /// # Errors
    /// As [`Merged::save`].
    pub fn save_with(&self, dir: &Path, extra: &[(String, Vec<u8>)]) -> Result<(), MergeError> {
        let mut files: Vec<(String, &StateDict)> =
            vec![(self.manifest.weights.clone(), &self.zipped.trunk)];
        for (h, s) in self.manifest.heads.iter().zip(&self.zipped.heads) {
            if let Some(f) = &h.weights {
                files.push((f.clone(), s));
            }
        }
        checkpoint::write_model_with(dir, &self.manifest, &files, extra)?;
        Ok(())
    }

    /// [`Merged::save`] with `report` serialised as `report.json` in the same atomic write.
    ///
    /// # Errors
    /// As [`Merged::save`]; [`MergeError::Internal`] when the report does not serialise.
    pub fn save_with_report(&self, dir: &Path, report: &impl Serialize) -> Result<(), MergeError> {
        let report = serde_json::to_vec_pretty(report)
            .map_err(|e| MergeError::Internal(format!("serialising the report: {e}")))?;
        self.save_with(dir, &[("report.json".into(), report)])
    }
}

/// Reports one `warning:` line per (feature space, model) with dead units (zero variance on
/// the probe images; [`Statistics::dead_units`]) and returns them for the report.
pub fn warn_dead_units(
    stats: &Statistics,
    spaces: &[crate::spec::Space],
    obs: &mut dyn Observer,
) -> Vec<DeadUnits> {
    let dead = stats.dead_units(spaces);
    for d in &dead {
        let model = (b'A' + (d.model % 26) as u8) as char;
        obs.warn(&if d.dead == d.width {
            format!(
                "warning: feature space `{}`: model {model} has all {} units dead (zero variance on the probe images: a zero or constant model?)",
                d.space, d.width
            )
        } else {
            format!(
                "warning: feature space `{}`: model {model} has {} dead units of {} (zero variance on the probe images)",
                d.space, d.dead, d.width
            )
        });
    }
    dead
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::matching::SquareMatrix;
    use crate::spec::{Space, SpaceKind};

    fn space(name: &str, width: usize) -> Space {
        Space {
            name: name.into(),
            width,
            kind: SpaceKind::Inner,
            stop_cut: None,
        }
    }

    #[test]
    fn dead_units_are_counted_per_space_and_model() {
        // two models of width 2: model A's unit 1 never varies; in the second space model B is
        // all zero (a zeroed endpoint); the third space is healthy.
        let diag = |d: [f64; 4]| {
            let mut m = vec![0.0; 16];
            for (i, v) in d.iter().enumerate() {
                m[i * 4 + i] = *v;
            }
            SquareMatrix::new(4, m).unwrap()
        };
        let stats = Statistics {
            covariances: vec![
                diag([2.0, 0.0, 1.0, 3.0]),
                diag([1.0, 0.5, 0.0, 1e-15]),
                diag([1.0, 1.0, 1.0, 1.0]),
            ],
            images: 10,
            passes: 1,
        };
        let spaces = [space("s0", 2), space("s1", 2), space("s2", 2)];
        let d = stats.dead_units(&spaces);
        let got: Vec<(&str, usize, usize)> = d
            .iter()
            .map(|u| (u.space.as_str(), u.model, u.dead))
            .collect();
        assert_eq!(got, [("s0", 0, 1), ("s1", 1, 2)]);
    }
}
