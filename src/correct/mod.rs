//! Post-merge corrections of a merged trunk from the probe images, layer by layer in forward
//! order: REPAIR (Jordan et al., ICLR 2023, [`repair`]) and the closed-form least-squares refit
//! ([`refit`]). Each merged layer is corrected from its own inputs, after every earlier layer
//! was corrected, towards the *target* of its output space: the merge-matrix projection
//! `sum_m M_m z_m` of the source models' features `z_m` at that layer (reference doc §3: the
//! merged feature a cluster stands for), or their average `(1/N) sum_m z_m` at the network
//! output.
//!
//! Both run in one layer-wise pass ([`crate::engine::layerwise`]) of the merged trunk and the N
//! endpoints over the probe images on the CPU engine (whatever `--backend` the rest uses): N + 1
//! forward passes of the trunk. In a partial zip only the merged trunk is corrected; the heads
//! are the source models' own layers.

mod linalg;
pub mod refit;
pub mod repair;
pub mod target;

pub use target::Target;

use std::time::Instant;

use serde::Serialize;

use crate::checkpoint::{NamedTensor, StateDict};
use crate::engine::layerwise::{self, Corrected, Site, Update};
use crate::engine::{Act, BN_EPS};
use crate::error::MergeError;
use crate::matching::MergeUnmerge;
use crate::models::compile::compile_state;
use crate::models::MergeSpec;
use crate::spec::{LayerKind, Side, Stop};

/// Which corrections to run after a merge.
#[derive(Clone, Copy, Debug, Default, PartialEq, Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Corrections {
    /// REPAIR: reset each merged channel's mean and standard deviation to its target's
    /// ([`repair`]).
    pub repair: bool,
    /// Closed-form refit with this relative ridge (`>= 0`), or none ([`refit`]).
    pub refit_ridge: Option<f64>,
}

impl Corrections {
    /// Whether any correction runs.
    pub fn any(&self) -> bool {
        self.repair || self.refit_ridge.is_some()
    }

    /// Row label suffix: ` + REPAIR`, ` + refit`, both, or empty.
    pub fn label(&self) -> String {
        let mut s = String::new();
        if self.repair {
            s.push_str(" + REPAIR");
        }
        if self.refit_ridge.is_some() {
            s.push_str(" + refit");
        }
        s
    }

    /// Checks the options.
    ///
    /// # Errors
    /// [`MergeError::Param`] for a refit ridge that is negative or not finite.
    pub fn check(&self) -> Result<(), MergeError> {
        if let Some(r) = self.refit_ridge {
            if !(r.is_finite() && r >= 0.0) {
                return Err(MergeError::param(
                    crate::error::MergeParam::RefitRidge,
                    r,
                    "expected a finite number >= 0",
                ));
            }
        }
        Ok(())
    }
}

/// What a correction pass did.
#[derive(Clone, Debug, Serialize)]
pub struct CorrectionReport {
    /// The corrections run.
    pub corrections: Corrections,
    /// Merged layers changed (convs and the final linear).
    pub layers: usize,
    /// Layers the refit left as merged: fewer probe pixels than
    /// [`refit::MIN_ROWS_PER_UNKNOWN`] per unknown (REPAIR still applies to them).
    pub refit_skipped: Vec<String>,
    /// Layers the refit was asked to solve (0 without the refit).
    pub refit_layers: usize,
    /// Probe images that would let the refit solve every skipped layer (0: none skipped).
    pub refit_images_needed: usize,
    /// Probe images the pass ran on.
    pub images: usize,
    /// Forward passes of the trunk over those images (N endpoints + the merged trunk).
    pub forward_passes: usize,
    /// Wall time, seconds.
    pub seconds: f64,
}

/// The target of each conv / linear of `spec` by its PyTorch name.
fn target_of<'a>(
    spec: &MergeSpec,
    transforms: &'a [MergeUnmerge],
    n: usize,
    layer: &str,
) -> Result<Target<'a>, MergeError> {
    let l = spec
        .layers
        .iter()
        .find(|l| l.name == layer && l.kind != LayerKind::BatchNorm)
        .ok_or_else(|| spec_err(spec, format!("layer `{layer}` is not in the merge spec")))?;
    match l.output {
        Side::Output => Ok(Target::Average(n)),
        Side::Space(s) => transforms.get(s).map(Target::Space).ok_or_else(|| {
            spec_err(
                spec,
                format!("layer `{layer}` writes feature space {s}, which this stop does not merge"),
            )
        }),
        Side::Input => Err(spec_err(
            spec,
            format!("layer `{layer}` writes the network input"),
        )),
    }
}

/// [`MergeError::Spec`] of `spec`'s architecture.
fn spec_err(spec: &MergeSpec, msg: String) -> MergeError {
    MergeError::Spec {
        arch: spec.net.arch.to_string(),
        msg,
    }
}

/// Runs the corrections `c` on the merged trunk `trunk` (built from the N `sources` with
/// `transforms` at `stop`; all of `spec`'s architecture) over the probe images `batches`, and
/// writes the corrected weights into `trunk`.
///
/// # Errors
/// [`MergeError::Param`] for invalid options; [`MergeError::Model`] when the weights do not
/// fit; [`MergeError::Space`] naming the layer when a refit's normal equations cannot be solved.
#[allow(clippy::too_many_arguments)]
pub fn apply(
    trunk: &mut StateDict,
    sources: &[StateDict],
    spec: &MergeSpec,
    transforms: &[MergeUnmerge],
    stop: &Stop,
    batches: &[Vec<Vec<u8>>],
    prep: crate::data::Preprocess,
    c: &Corrections,
) -> Result<CorrectionReport, MergeError> {
    c.check()?;
    let t0 = Instant::now();
    let images: Vec<&[u8]> = batches.iter().flatten().map(Vec::as_slice).collect();
    if !c.any() {
        return Ok(CorrectionReport {
            corrections: *c,
            layers: 0,
            refit_skipped: vec![],
            refit_layers: 0,
            refit_images_needed: 0,
            images: 0,
            forward_passes: 0,
            seconds: 0.0,
        });
    }
    if images.is_empty() {
        return Err(MergeError::param(
            crate::error::MergeParam::ProbeImages,
            0,
            format!(
                "{} needs probe images (none given)",
                c.label().trim_start_matches(" + ")
            ),
        ));
    }
    let arch = spec.net.arch;
    let compiled = sources
        .iter()
        .map(|s| compile_state(arch, s))
        .collect::<Result<Vec<_>, _>>()?;
    let mnet = compile_state(arch, trunk)?;
    let x = Act::from_images(&images, prep);
    let n = sources.len();
    let mut refit_skipped = Vec::new();
    let (mut refit_layers, mut refit_images_needed) = (0, 0);
    let done = layerwise::correct(&mnet, &compiled, x, stop.cut, &mut |site: &Site| {
        let target = target_of(spec, transforms, n, &site.conv.name)?;
        let before = refit_skipped.len();
        let update = correct_site(site, &target, c, &mut refit_skipped)?;
        if c.refit_ridge.is_some() {
            refit_layers += 1;
            if refit_skipped.len() > before {
                refit_images_needed = refit_images_needed.max(refit::images_needed(site));
            }
        }
        Ok::<_, MergeError>(update)
    })?;
    if refit_layers > 0 && refit_skipped.len() == refit_layers {
        return Err(MergeError::param(
            crate::error::MergeParam::ProbeImages,
            images.len(),
            format!(
                "the refit can solve none of the {refit_layers} merged layers with so few probe images (it needs {} probe pixels per unknown): use at least {refit_images_needed} probe images",
                refit::MIN_ROWS_PER_UNKNOWN
            ),
        ));
    }
    let mut layers = 0;
    for d in &done {
        if d.update != Update::Keep {
            write(trunk, d)?;
            layers += 1;
        }
    }
    Ok(CorrectionReport {
        corrections: *c,
        layers,
        refit_skipped,
        refit_layers,
        refit_images_needed,
        images: images.len(),
        forward_passes: n + 1,
        seconds: t0.elapsed().as_secs_f64(),
    })
}

/// The update of one layer: refit, then REPAIR on the refit layer's output (both when asked).
fn correct_site(
    site: &Site,
    target: &Target,
    c: &Corrections,
    skipped: &mut Vec<String>,
) -> Result<Update, MergeError> {
    let mut update = Update::Keep;
    if let Some(ridge) = c.refit_ridge {
        match refit::solve(site, target, ridge)? {
            Some(u) => update = u,
            None => skipped.push(site.conv.name.clone()),
        }
    }
    if c.repair && !site.linear {
        let Update::Affine { weight, bias } = &update else {
            return Ok(repair::rescale(site, target, site.output));
        };
        // REPAIR on the refit layer's own output
        let conv = site.conv.with_weights(weight.clone(), Some(bias.clone()));
        let out = layerwise::branch(&conv, None, site.input);
        let Update::Rescale { scale, shift } = repair::rescale(site, target, &out) else {
            return Ok(update);
        };
        let cout = conv.cout;
        let w = weight
            .iter()
            .enumerate()
            .map(|(i, v)| v * scale[i % cout])
            .collect();
        let b = bias
            .iter()
            .zip(scale.iter().zip(&shift))
            .map(|(b, (s, t))| b * s + t)
            .collect();
        update = Update::Affine { weight: w, bias: b };
    }
    Ok(update)
}

fn tensor<'a>(s: &'a mut StateDict, name: &str) -> Result<&'a mut NamedTensor, MergeError> {
    s.get_mut(name).ok_or_else(|| MergeError::Tensor {
        tensor: name.to_string(),
        msg: "missing from the merged trunk".into(),
    })
}

/// Engine layout `[k*k*cin, cout]` -> PyTorch `[cout, cin, k, k]`, each output channel divided
/// by `div[co]`.
fn to_torch(w: &[f32], shape: &[usize], div: &[f64]) -> Vec<f32> {
    let (cout, cin) = (shape[0], shape[1]);
    let k = shape.get(2).copied().unwrap_or(1);
    let mut t = vec![0f32; w.len()];
    for co in 0..cout {
        for ci in 0..cin {
            for ky in 0..k {
                for kx in 0..k {
                    let v = w[((ky * k + kx) * cin + ci) * cout + co] as f64 / div[co];
                    t[((co * cin + ci) * k + ky) * k + kx] = v as f32;
                }
            }
        }
    }
    t
}

/// Writes one layer's update into the trunk's PyTorch-named tensors.
///
/// - Rescale with BN: `gamma *= s`, `beta = beta * s + t` (the BN's running statistics stay).
/// - Rescale without BN: the conv's / linear's weight rows `*= s`, `bias = bias * s + t`.
/// - Affine with BN: the BN keeps its statistics and `gamma` (`scale = gamma / sqrt(var +
///   eps)`); the conv weight becomes `W / scale` and `beta = b + mean * scale`. A channel with
///   `scale = 0` gets `gamma = 1`, `mean = 0`, `var = 1 - eps` (scale 1).
/// - Affine without BN: weight `W`, bias `b`.
fn write(s: &mut StateDict, d: &Corrected) -> Result<(), MergeError> {
    let wname = format!("{}.weight", d.layer);
    let shape = tensor(s, &wname)?.shape.clone();
    let cout = shape[0];
    match (&d.update, &d.bn) {
        (Update::Keep, _) => {}
        (Update::Rescale { scale, shift }, Some(bn)) => {
            let g = tensor(s, &format!("{bn}.weight"))?;
            g.data.iter_mut().zip(scale).for_each(|(g, s)| *g *= s);
            let b = tensor(s, &format!("{bn}.bias"))?;
            for ((b, s), t) in b.data.iter_mut().zip(scale).zip(shift) {
                *b = *b * s + t;
            }
        }
        (Update::Rescale { scale, shift }, None) => {
            let w = tensor(s, &wname)?;
            let per = w.data.len() / cout.max(1);
            for (co, row) in w.data.chunks_mut(per.max(1)).enumerate() {
                row.iter_mut().for_each(|v| *v *= scale[co]);
            }
            let b = tensor(s, &format!("{}.bias", d.layer))?;
            for ((b, s), t) in b.data.iter_mut().zip(scale).zip(shift) {
                *b = *b * s + t;
            }
        }
        (Update::Affine { weight, bias }, Some(bn)) => {
            let g = tensor(s, &format!("{bn}.weight"))?.data.clone();
            let m = tensor(s, &format!("{bn}.running_mean"))?.data.clone();
            let v = tensor(s, &format!("{bn}.running_var"))?.data.clone();
            let mut sc: Vec<f64> = g
                .iter()
                .zip(&v)
                .map(|(g, v)| *g as f64 / (*v as f64 + BN_EPS).sqrt())
                .collect();
            let (mut g2, mut m2, mut v2) = (g, m, v);
            for co in 0..cout {
                if sc[co].abs() < 1e-12 || !sc[co].is_finite() {
                    (g2[co], m2[co], v2[co]) = (1.0, 0.0, (1.0 - BN_EPS) as f32);
                    sc[co] = 1.0 / ((1.0 - BN_EPS) as f32 as f64 + BN_EPS).sqrt();
                }
            }
            let beta: Vec<f32> = (0..cout)
                .map(|co| (bias[co] as f64 + m2[co] as f64 * sc[co]) as f32)
                .collect();
            tensor(s, &wname)?.data = to_torch(weight, &shape, &sc);
            tensor(s, &format!("{bn}.weight"))?.data = g2;
            tensor(s, &format!("{bn}.running_mean"))?.data = m2;
            tensor(s, &format!("{bn}.running_var"))?.data = v2;
            tensor(s, &format!("{bn}.bias"))?.data = beta;
        }
        (Update::Affine { weight, bias }, None) => {
            tensor(s, &wname)?.data = to_torch(weight, &shape, &vec![1.0; cout]);
            tensor(s, &format!("{}.bias", d.layer))?.data = bias.clone();
        }
    }
    Ok(())
}

#[cfg(test)]
pub(crate) mod test_site {
    //! Hand-made one-channel sites for the corrections' unit tests.
    use crate::engine::kernels::Conv;
    use crate::engine::Act;

    /// `[rows, 1]` activations of single pixels.
    pub fn act(v: &[f32]) -> Act {
        Act {
            batch: v.len(),
            side: 1,
            c: 1,
            data: v.to_vec(),
        }
    }

    /// A 1x1 conv with one input and one output channel, weight `w`, bias `b`.
    pub fn conv(w: f32, b: f32) -> Conv {
        Conv::from_torch("layer", &[w], &[1, 1, 1, 1], 1, 0, Some(vec![b]))
    }
}
