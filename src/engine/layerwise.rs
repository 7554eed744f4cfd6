//! Layer-wise passes for the post-merge corrections of [`crate::correct`] (REPAIR, the
//! closed-form refit): a merged network and its N source networks run op by op over the same
//! probe images, all images at once, so that each merged layer can be corrected from its own
//! inputs (after every earlier layer was corrected) before its output feeds the next layer.
//!
//! One such pass costs N + 1 forward passes of the trunk over the probe images, plus what the
//! correction computes per layer. Activations of every model are held for all images at once
//! (`images * side^2 * channels` f32 per live slot and model).

use std::borrow::Cow;

use super::kernels::{self, Conv, Epilogue};
use super::{Act, CpuNet, EngineCtx, Op, OpKind};
use crate::error::ModelError;

/// One merged layer as a correction sees it: a conv with its BN, or the final linear (as a 1x1
/// conv on the pooled features). "Branch output" is the layer's own output, `bn(conv(x))`,
/// before the residual add and the ReLU.
pub struct Site<'a> {
    /// The merged network's layer: PyTorch name, geometry and current weights.
    pub conv: &'a Conv,
    /// PyTorch name of the BN after the conv, if any.
    pub bn: Option<&'a str>,
    /// Whether this is the final linear layer (input: features averaged over pixels).
    pub linear: bool,
    /// Merged layer input `[images, side, side, cin]` (`[images, 1, 1, cin]` for the linear).
    pub input: &'a Act,
    /// Per-channel `(scale, shift)` of the merged layer's BN in eval mode, if any.
    pub bn_affine: Option<(&'a [f32], &'a [f32])>,
    /// Merged branch output with the current weights, `[images, os, os, cout]`.
    pub output: &'a Act,
    /// Merged residual added to the branch output before the ReLU.
    pub residual: Option<&'a Act>,
    /// Per source model: its branch output at this layer.
    pub sources: Vec<&'a Act>,
    /// Per source model: its residual at this layer.
    pub source_residuals: Vec<Option<&'a Act>>,
}

/// What a correction does to one merged layer.
#[derive(Clone, Debug, PartialEq)]
pub enum Update {
    /// Leave the layer as it is.
    Keep,
    /// Per output channel `y' = y * scale + shift` on the branch output (REPAIR).
    Rescale {
        /// `[cout]`.
        scale: Vec<f32>,
        /// `[cout]`.
        shift: Vec<f32>,
    },
    /// A new branch map `y = conv(x; weight) + bias` with the BN folded in (refit).
    Affine {
        /// `[k*k*cin, cout]`, the layout of [`Conv::weight`].
        weight: Vec<f32>,
        /// `[cout]`.
        bias: Vec<f32>,
    },
}

/// One corrected layer of the merged network, in forward order.
#[derive(Clone, Debug)]
pub struct Corrected {
    /// PyTorch name of the conv / linear.
    pub layer: String,
    /// PyTorch name of its BN, if any.
    pub bn: Option<String>,
    /// Whether it is the final linear layer.
    pub linear: bool,
    /// The update applied.
    pub update: Update,
}

/// Branch output `bn(conv(x))` of `conv` on NHWC `x` with the BN in eval mode given as its
/// per-channel `(scale, shift)`: `[images, os, os, cout]`.
pub fn branch(conv: &Conv, bn: Option<(&[f32], &[f32])>, x: &Act) -> Act {
    let os = conv.out_side(x.side);
    let mut out = vec![0f32; x.batch * os * os * conv.cout];
    let epi = Epilogue {
        scale: bn.map(|b| b.0),
        shift: bn.map(|b| b.1),
        residual: None,
        relu: false,
    };
    kernels::conv_forward(conv, &x.data, x.batch, x.side, &mut out, &epi);
    Act {
        batch: x.batch,
        side: os,
        c: conv.cout,
        data: out,
    }
}

/// Mean over pixels: `[b, s, s, c]` -> `[b, 1, 1, c]` ([`kernels::mean_pool`], as
/// [`kernels::pool_linear`] pools).
fn pool(x: &Act) -> Act {
    Act {
        batch: x.batch,
        side: 1,
        c: x.c,
        data: kernels::mean_pool(&x.data, x.batch, x.side * x.side, x.c),
    }
}

fn mismatch(what: String) -> ModelError {
    ModelError::weights(crate::error::WeightsProblem::Structure { at: what })
}

/// The conv of a layer op: the conv itself (borrowed), or the final linear as a 1x1 conv.
fn layer_conv(op: &Op) -> Option<Cow<'_, Conv>> {
    match &op.0 {
        OpKind::Conv { conv, .. } => Some(Cow::Borrowed(conv)),
        OpKind::PoolLinear { name, weight, bias } => Some(Cow::Owned(Conv::from_torch(
            name,
            weight,
            &[bias.len(), weight.len() / bias.len().max(1), 1, 1],
            1,
            0,
            Some(bias.clone()),
        ))),
        _ => None,
    }
}

/// Runs `merged` and `sources` over the images `x` (normalised, `[images, side, side, 3]`)
/// through cuts `0..cuts`, calling `correct` at every conv and at the final linear (when it is
/// inside `cuts`), and returns the update of every layer, in forward order.
///
/// The merged layer's output with the update applied is what its later layers read; the
/// sources run unchanged. The merged network is not modified (apply the updates to its
/// weights).
///
/// # Errors
/// [`ModelError::Weights`] when the networks differ in architecture or program structure;
/// whatever `correct` returns.
pub fn correct<E: From<ModelError>>(
    merged: &CpuNet,
    sources: &[CpuNet],
    x: Act,
    cuts: usize,
    correct: &mut dyn FnMut(&Site) -> Result<Update, E>,
) -> Result<Vec<Corrected>, E> {
    let n = sources.len();
    let cuts = cuts.min(merged.cuts.len());
    for s in sources {
        let same = s.arch == merged.arch
            && s.cuts.len() == merged.cuts.len()
            && s.cuts[..cuts]
                .iter()
                .zip(&merged.cuts[..cuts])
                .all(|(a, b)| a.len() == b.len());
        if !same {
            return Err(mismatch("the program length".into()).into());
        }
    }
    // regs[j]: model j's slots (j = n: the merged network)
    let mut regs: Vec<Vec<Option<Act>>> = (0..=n)
        .map(|_| vec![Some(x.clone()), None, None, None])
        .collect();
    drop(x);
    let mut done = Vec::new();
    let mut ctx = EngineCtx::default();
    for cut in 0..cuts {
        for (i, op) in merged.cuts[cut].iter().enumerate() {
            let op_of = |j: usize| {
                if j == n {
                    op
                } else {
                    &sources[j].cuts[cut][i]
                }
            };
            let Some(mconv) = layer_conv(op) else {
                for (j, r) in regs.iter_mut().enumerate() {
                    super::run_op(op_of(j), r, &mut ctx);
                }
                continue;
            };
            let (src, dst, res, relu, bn) = match &op.0 {
                OpKind::Conv {
                    src,
                    dst,
                    res,
                    relu,
                    bn,
                    ..
                } => (*src, *dst, *res, *relu, bn.as_ref()),
                _ => (0, 0, None, false, None),
            };
            let linear = matches!(op.0, OpKind::PoolLinear { .. });
            // every model's input and branch output
            let mut inputs = Vec::with_capacity(n + 1);
            let mut outs = Vec::with_capacity(n + 1);
            for (j, r) in regs.iter().enumerate() {
                let opj = op_of(j);
                let conv = layer_conv(opj).filter(|c| c.name == mconv.name);
                let conv = conv.ok_or_else(|| mismatch(format!("layer `{}`", mconv.name)))?;
                let input = r[src]
                    .as_ref()
                    .ok_or_else(|| mismatch(format!("the input of `{}`", mconv.name)))?;
                let input = if linear {
                    Cow::Owned(pool(input))
                } else {
                    Cow::Borrowed(input)
                };
                let bnj = match &opj.0 {
                    OpKind::Conv { bn: Some(b), .. } => {
                        Some((b.scale.as_slice(), b.shift.as_slice()))
                    }
                    _ => None,
                };
                if input.c != conv.cin {
                    return Err(mismatch(format!("the input channels of `{}`", mconv.name)).into());
                }
                outs.push(branch(&conv, bnj, &input));
                inputs.push(input);
            }
            let residual = |j: usize| res.and_then(|r| regs[j][r].as_ref());
            let update = {
                let site = Site {
                    conv: &mconv,
                    bn: bn.map(|b| b.name.as_str()),
                    linear,
                    input: &inputs[n],
                    bn_affine: bn.map(|b| (b.scale.as_slice(), b.shift.as_slice())),
                    output: &outs[n],
                    residual: residual(n),
                    sources: outs[..n].iter().collect(),
                    source_residuals: (0..n).map(residual).collect(),
                };
                correct(&site)?
            };
            // the merged branch output with the update
            match &update {
                Update::Keep => {}
                Update::Rescale { scale, shift } => {
                    let epi = Epilogue {
                        scale: Some(scale),
                        shift: Some(shift),
                        residual: None,
                        relu: false,
                    };
                    kernels::apply_epilogue(&mut outs[n].data, mconv.cout, &epi);
                }
                Update::Affine { weight, bias } => {
                    let c = mconv.with_weights(weight.clone(), Some(bias.clone()));
                    outs[n] = branch(&c, None, &inputs[n]);
                }
            }
            drop(inputs);
            for (j, mut y) in outs.into_iter().enumerate() {
                let epi = Epilogue {
                    scale: None,
                    shift: None,
                    residual: res
                        .and_then(|r| regs[j][r].as_ref())
                        .map(|a| a.data.as_slice()),
                    relu,
                };
                kernels::apply_epilogue(&mut y.data, y.c, &epi);
                regs[j][dst] = Some(y);
            }
            done.push(Corrected {
                layer: mconv.name.clone(),
                bn: bn.map(|b| b.name.clone()),
                linear,
                update,
            });
        }
    }
    Ok(done)
}
