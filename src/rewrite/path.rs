//! Data-flow-space merging (Akiba et al., Evolutionary Optimization of Model Merging Recipes,
//! 2024, §3.2) for residual networks: a network assembled block by block from the source models
//! aligned into model A's features (Permute, one-to-one) and their merge, each block slot
//! reading its input scaled by a factor (the paper's `W`, one scalar per transition).
//!
//! Sakana's data-flow space runs a path of layers taken from several models, stem and head
//! from model A; here a path has one slot per residual block of the architecture (`--repeat 1`:
//! the network keeps its depth, so the result is a checkpoint of the same architecture that
//! PyTorch loads as is). The scale is folded into the block's input-reading convolutions (its
//! first conv and its shortcut conv, which have no bias, so `conv(s x) = s conv(x)` exactly);
//! an identity shortcut carries the stream unscaled. The assembled network is not BN-reset:
//! a reset would renormalise the scaled convolutions and undo the scales.

use serde::{Deserialize, Serialize};

use crate::error::{MergeError, MergeParam};
use crate::models::MergeSpec;
use crate::spec::{LayerKind, Side, SpaceKind};
use crate::state::StateDict;

/// Where a piece of a data-flow path comes from.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case", deny_unknown_fields)]
pub enum Source {
    /// Source model `i` (0 = A), aligned into model A's features.
    Model(usize),
    /// The merge of the aligned models.
    Merged,
}

impl Source {
    /// `A`, `B`, ... or `M` (the merge), as paths print.
    pub fn letter(self) -> char {
        match self {
            Source::Model(i) => (b'A' + (i % 26) as u8) as char,
            Source::Merged => 'M',
        }
    }
}

/// One block slot of a path.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Slot {
    /// The block's module name (`layer2.1`).
    pub block: String,
    /// Which network's block runs here.
    pub source: Source,
    /// Scale of the block's input (> 0; 1 = unscaled), folded into its first and shortcut convs.
    pub scale: f64,
}

/// A data-flow path through the aligned source models (module docs).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DataFlowPath {
    /// Source of every layer outside the residual blocks (stem and head).
    pub ends: Source,
    /// One slot per residual block, in network order.
    pub slots: Vec<Slot>,
}

impl DataFlowPath {
    /// The path as letters, one per slot after the ends (`A|AMB|BBA|MMA`: ends A, then the
    /// stages' slots).
    pub fn label(&self) -> String {
        let mut s = String::new();
        s.push(self.ends.letter());
        let mut stage = "";
        for slot in &self.slots {
            let st = slot.block.split('.').next().unwrap_or("");
            if st != stage {
                s.push('|');
                stage = st;
            }
            s.push(slot.source.letter());
        }
        s
    }
}

/// The residual blocks of a network, in module order: the distinct `layerK.B` prefixes of its
/// layers (empty for a network without residual stages, such as VGG).
pub fn blocks(spec: &MergeSpec) -> Vec<String> {
    let mut out: Vec<String> = Vec::new();
    for l in &spec.layers {
        let mut parts = l.name.split('.');
        let (Some(stage), Some(b)) = (parts.next(), parts.next()) else {
            continue;
        };
        let is_stage = stage
            .strip_prefix("layer")
            .is_some_and(|d| !d.is_empty() && d.bytes().all(|c| c.is_ascii_digit()));
        if is_stage && b.bytes().all(|c| c.is_ascii_digit()) {
            let name = format!("{stage}.{b}");
            if !out.contains(&name) {
                out.push(name);
            }
        }
    }
    out
}

/// Checks `path` against the network of `spec` merged from `n` models.
///
/// # Errors
/// [`MergeError::Param`] naming the path: a network without residual blocks, slots that are
/// not the network's blocks in order, a model index `>= n`, a scale that is not finite and > 0.
pub fn check(path: &DataFlowPath, spec: &MergeSpec, n: usize) -> Result<(), MergeError> {
    let bad = |v: String, e: String| MergeError::param(MergeParam::Path, v, e);
    let want = blocks(spec);
    if want.is_empty() {
        return Err(bad(
            spec.net.arch.to_string(),
            "a data-flow path needs a residual network (ResNet-20, -18, -50)".into(),
        ));
    }
    let got: Vec<&str> = path.slots.iter().map(|s| s.block.as_str()).collect();
    if got != want {
        return Err(bad(
            format!("slots {}", got.join(",")),
            format!("expected one slot per block in order: {}", want.join(",")),
        ));
    }
    let sources = std::iter::once(path.ends).chain(path.slots.iter().map(|s| s.source));
    for s in sources {
        if let Source::Model(i) = s {
            if i >= n {
                return Err(bad(
                    format!("model {i}"),
                    format!("the merge has {n} models (0..{})", n - 1),
                ));
            }
        }
    }
    for s in &path.slots {
        if !(s.scale.is_finite() && s.scale > 0.0) {
            return Err(bad(
                format!("{} scale {}", s.block, s.scale),
                "expected a finite number > 0".into(),
            ));
        }
    }
    Ok(())
}

/// The tensors a block reads its input with: its convolutions whose input is a residual
/// stream (the first conv and the shortcut conv), by layer name.
fn input_convs(spec: &MergeSpec, block: &str) -> Vec<String> {
    let prefix = format!("{block}.");
    spec.layers
        .iter()
        .filter(|l| l.name.starts_with(&prefix) && l.kind == LayerKind::Conv)
        .filter(|l| match l.input {
            Side::Space(i) => spec.spaces[i].kind == SpaceKind::Stream,
            Side::Input => true,
            Side::Output => false,
        })
        .map(|l| format!("{}.weight", l.name))
        .collect()
}

/// Assembles the network of `path` (module docs): the ends from their source, each block's
/// tensors from its slot's source with the input scale folded in. `aligned[i]` is model i in
/// model A's features (`aligned[0]` = A), `merged` their merge in the same features.
///
/// # Errors
/// As [`check`]; [`MergeError::Tensor`] when a source lacks a tensor of a block.
pub fn assemble(
    spec: &MergeSpec,
    aligned: &[&StateDict],
    merged: &StateDict,
    path: &DataFlowPath,
) -> Result<StateDict, MergeError> {
    check(path, spec, aligned.len())?;
    let state = |s: Source| match s {
        Source::Model(i) => aligned[i],
        Source::Merged => merged,
    };
    let mut out = state(path.ends).clone();
    for slot in &path.slots {
        let src = state(slot.source);
        let prefix = format!("{}.", slot.block);
        let scaled = input_convs(spec, &slot.block);
        let keys: Vec<&String> = out.keys().filter(|k| k.starts_with(&prefix)).collect();
        let keys: Vec<String> = keys.into_iter().cloned().collect();
        for key in keys {
            let mut t = src
                .get(&key)
                .ok_or_else(|| MergeError::Tensor {
                    tensor: key.clone(),
                    msg: format!("the {:?} source has no such tensor", slot.source),
                })?
                .clone();
            if slot.scale != 1.0 && scaled.contains(&key) {
                let s = slot.scale as f32;
                t.data.iter_mut().for_each(|v| *v *= s);
            }
            out.insert(key, t);
        }
    }
    Ok(out)
}
