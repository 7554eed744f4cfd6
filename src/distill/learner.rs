//! The student as the distillation loop trains it, on either path: [`BurnLearner`] (burn's
//! autodiff, any student, any device) or [`EngineLearner`] (the CPU training engine of issue 23,
//! [`crate::engine::train::TrainNet`]: a single network or a partial zip's segments, BN in
//! train mode, ~4x faster).
//!
//! The loop computes each step's loss and `dL/doutput` itself ([`super::grad`]); a learner runs
//! the forward pass, back-propagates that gradient and steps its optimiser, the head group at
//! the head rate and the trunk group at the trunk rate (frozen in the head stage). Both paths
//! use the same optimiser rules, burn's (`burn-optim` 0.22 `adamw.rs`, `sgd.rs` +
//! `momentum.rs`): AdamW `m = b1 m + (1-b1) g`, `v = b2 v + (1-b2) g^2`, `p = p (1 - lr wd) -
//! lr m^ / (sqrt(v^) + eps)` with bias-corrected `m^, v^`, the step count per parameter; SGD
//! `g + wd p`, momentum 0.9 without dampening (PyTorch's).

use std::path::Path;

use burn::module::{Module, ParamId};
use burn::optim::decay::WeightDecayConfig;
use burn::optim::momentum::MomentumConfig;
use burn::optim::{AdamWConfig, GradientsParams, ModuleOptimizer, SgdConfig};
use burn::tensor::{Device, Tensor, TensorData};

use super::settings::{BnHandling, Optimizer};
use super::student::{bn_mode, head_params, param_ranks, take_grads, Student};
use crate::checkpoint::safetensors_io;
use crate::data::{to_tensor, Preprocess};
use crate::engine::train::TrainNet;
use crate::engine::Act;
use crate::models::ForwardCtx;
use crate::state::{NamedTensor, StateDict};

/// AdamW's betas and epsilon (burn's defaults, as the burn path's `AdamWConfig::new()`).
const BETA1: f32 = 0.9;
const BETA2: f32 = 0.999;
const ADAM_EPS: f32 = 1e-5;
/// SGD momentum.
const SGD_MOMENTUM: f32 = 0.9;

/// One forward pass's results.
pub struct Forward {
    /// Per student head, its output `[images, dim]` row-major and `dim`.
    pub outs: Vec<(Vec<f32>, usize)>,
    /// Per head network, its features at the asked cut, `[images, c * h * w]` row-major (NCHW
    /// per image); empty when no cut was asked.
    pub feats: Vec<Vec<f32>>,
}

/// A trainable student.
pub trait Learner {
    /// `training_path` of the report: `engine` or `burn`.
    fn path(&self) -> &'static str;
    /// Forward pass in train mode on `images` (stored bytes, `prep`'s layout); with
    /// `feature_cut`, a partially zipped student's head features at that cut too (the engine
    /// learner returns them when its head networks were split there).
    fn forward(
        &mut self,
        images: &[&[u8]],
        prep: Preprocess,
        feature_cut: Option<usize>,
    ) -> Forward;
    /// Back-propagates `d_outs` (per head, `dL/doutput` of the last forward, same shapes) and
    /// `d_feats` (per head network, `dL/dfeatures`; empty: none), then steps the optimiser: the
    /// head group at `lr_head`, the trunk at `lr_trunk` (`None`: frozen).
    fn step(
        &mut self,
        d_outs: Vec<Vec<f32>>,
        d_feats: Vec<Vec<f32>>,
        lr_head: f64,
        lr_trunk: Option<f64>,
    );
    /// The weights as PyTorch-layout state dicts: the trunk, then each head network.
    fn states(&self) -> (StateDict, Vec<StateDict>);
    /// Writes the optimiser's state into `dir` (a resumable state's file).
    ///
    /// # Errors
    /// The message of a failed write.
    fn save_optimizer(&self, dir: &Path) -> Result<(), String>;
    /// Whether [`Forward::feats`] hold each image's features in NHWC order (the engine's) rather
    /// than NCHW (burn's); the teachers' features must be given in the same order.
    fn features_nhwc(&self) -> bool {
        false
    }
    /// The ids tying a saved optimiser state to its parameters (burn's `ParamId`s, in visiting
    /// order; empty on the engine, whose state is keyed by tensor name).
    fn param_ids(&self) -> Vec<u64> {
        Vec::new()
    }
}

/// The student on burn's autodiff.
pub struct BurnLearner {
    student: Option<Student>,
    optim: ModuleOptimizer,
    heads: Vec<(ParamId, usize)>,
    trunk: Vec<(ParamId, usize)>,
    stop_cut: usize,
    n_heads: usize,
    bn: BnHandling,
    device: Device,
    outs: Vec<Tensor<2>>,
    feats: Vec<Tensor<4>>,
}

/// The optimiser file of a burn learner's state.
pub const BURN_OPTIMIZER_FILE: &str = "optimizer.bpk";
/// The optimiser file of an engine learner's state.
pub const ENGINE_OPTIMIZER_FILE: &str = "optimizer.safetensors";

impl BurnLearner {
    /// A learner for `student` (on the autodiff `device`) with `n_heads` outputs, the head
    /// networks from cut `stop_cut`; `optimizer_file` restores a saved optimiser state.
    ///
    /// # Errors
    /// The message of an optimiser state that cannot be read.
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        student: Student,
        stop_cut: usize,
        n_heads: usize,
        optimizer: Optimizer,
        weight_decay: f64,
        bn: BnHandling,
        device: Device,
        optimizer_file: Option<&Path>,
    ) -> Result<Self, String> {
        let mut optim = match optimizer {
            // AdamW, as SAM-CLIP: the cosine loss's gradient scales with 1 / |output|, which an
            // adaptive step does not see
            Optimizer::AdamW => AdamWConfig::new()
                .with_weight_decay(weight_decay as f32)
                .init(),
            Optimizer::Sgd => SgdConfig::new()
                .with_momentum(Some(MomentumConfig {
                    momentum: SGD_MOMENTUM as f64,
                    dampening: 0.0,
                    nesterov: false,
                }))
                .with_weight_decay(Some(WeightDecayConfig::new(weight_decay as f32)))
                .init(),
        };
        if let Some(f) = optimizer_file {
            optim = optim
                .load(f)
                .map_err(|e| format!("{}: cannot be read ({e})", f.display()))?;
        }
        let heads = head_params(&student);
        let head_ids: std::collections::HashSet<ParamId> =
            heads.iter().map(|(id, _)| *id).collect();
        let trunk = param_ranks(&student)
            .into_iter()
            .filter(|(id, _)| !head_ids.contains(id))
            .collect();
        Ok(Self {
            student: Some(student),
            optim,
            heads,
            trunk,
            stop_cut,
            n_heads,
            bn,
            device,
            outs: Vec::new(),
            feats: Vec::new(),
        })
    }

    /// The student being trained.
    pub fn student(&self) -> &Student {
        self.student
            .as_ref()
            .expect("the student is held between steps")
    }
}

impl Learner for BurnLearner {
    fn path(&self) -> &'static str {
        "burn"
    }

    fn forward(
        &mut self,
        images: &[&[u8]],
        prep: Preprocess,
        feature_cut: Option<usize>,
    ) -> Forward {
        let x = to_tensor(images, prep, &self.device);
        let mut ctx = ForwardCtx {
            bn_mode: bn_mode(self.bn),
            ..Default::default()
        };
        let student = self.student.as_ref().expect("held");
        (self.outs, self.feats) = match feature_cut {
            Some(cut) if !student.heads.is_empty() => {
                student.forward_features(x, self.stop_cut, cut, &mut ctx)
            }
            _ => (
                student.forward(x, self.stop_cut, self.n_heads, &mut ctx),
                Vec::new(),
            ),
        };
        Forward {
            outs: self
                .outs
                .iter()
                .map(|y| {
                    let [_, dim] = y.dims();
                    (values(y), dim)
                })
                .collect(),
            feats: self.feats.iter().map(values).collect(),
        }
    }

    fn step(
        &mut self,
        d_outs: Vec<Vec<f32>>,
        d_feats: Vec<Vec<f32>>,
        lr_head: f64,
        lr_trunk: Option<f64>,
    ) {
        // sum_h <out_h, G_h> + sum_h <feat_h, F_h>: its gradient is the chain rule from the
        // given dL/dout and dL/dfeatures
        let mut surrogate: Option<Tensor<1>> = None;
        let mut add = |term: Tensor<1>| {
            surrogate = Some(match surrogate.take() {
                None => term,
                Some(acc) => acc + term,
            });
        };
        for (y, g) in std::mem::take(&mut self.outs).into_iter().zip(d_outs) {
            let dims = y.dims();
            let g = Tensor::<2>::from_data(TensorData::new(g, dims), &self.device);
            add((y * g).sum());
        }
        for (f, g) in std::mem::take(&mut self.feats).into_iter().zip(d_feats) {
            let dims = f.dims();
            let g = Tensor::<4>::from_data(TensorData::new(g, dims), &self.device);
            add((f * g).sum());
        }
        let Some(surrogate) = surrogate else { return };
        let mut student = self.student.take().expect("held");
        let mut grads = GradientsParams::from_grads(surrogate.backward(), &student);
        let head_grads = take_grads(&mut grads, &self.heads);
        student = self.optim.step(lr_head, student, head_grads);
        if let Some(lr) = lr_trunk {
            let trunk_grads = take_grads(&mut grads, &self.trunk);
            student = self.optim.step(lr, student, trunk_grads);
        }
        self.student = Some(student);
    }

    fn states(&self) -> (StateDict, Vec<StateDict>) {
        self.student().valid().to_states()
    }

    fn save_optimizer(&self, dir: &Path) -> Result<(), String> {
        self.optim
            .save(dir.join(BURN_OPTIMIZER_FILE))
            .map_err(|e| e.to_string())
    }

    fn param_ids(&self) -> Vec<u64> {
        crate::train::param_ids(self.student())
    }
}

/// A tensor's values, row-major.
fn values<const D: usize>(t: &Tensor<D>) -> Vec<f32> {
    t.clone()
        .into_data()
        .convert::<f32>()
        .try_to_vec::<f32>()
        .unwrap_or_default()
}

/// AdamW state of one parameter.
#[derive(Clone, Debug, Default)]
struct Adam {
    m: Vec<f32>,
    v: Vec<f32>,
    time: i32,
}

/// One trainable network segment of an engine student with its optimiser state per parameter.
struct EngineNet {
    net: TrainNet,
    adam: Vec<Adam>,
    /// Prefix of its tensors in the optimiser file (`trunk.`, `head0.`, ...).
    prefix: String,
}

impl EngineNet {
    fn new(net: TrainNet, prefix: String) -> Self {
        Self {
            adam: vec![Adam::default(); net.params().len()],
            net,
            prefix,
        }
    }

    /// One optimiser step of the parameters `range` (indices in forward order) at `lr`.
    fn update(&mut self, range: std::ops::Range<usize>, lr: f64, optimizer: Optimizer, wd: f64) {
        use rayon::prelude::*;
        self.net.params_mut()[range.clone()]
            .par_iter_mut()
            .zip(self.adam[range].par_iter_mut())
            .for_each(|(p, st)| match optimizer {
                Optimizer::Sgd => p.sgd_update(lr as f32, SGD_MOMENTUM, wd as f32),
                Optimizer::AdamW => adamw_update(&mut p.value, &p.grad, st, lr, wd),
            });
    }
}

/// `template` (a network's state dict: names, shapes and any entry the engine does not train)
/// with the trained tensors of its segments `segs` written in.
fn written(template: &StateDict, segs: &[EngineNet]) -> StateDict {
    let mut s = template.clone();
    for seg in segs {
        seg.net.write_state(&mut s);
    }
    s
}

/// A student on the CPU training engine: a single network, or a partially zipped one (the
/// trunk's segment up to the stop, then one head network's segment from the stop on per head,
/// each back-propagating into the trunk).
pub struct EngineLearner {
    trunk: EngineNet,
    /// The trunk's state dict, which [`Learner::states`] writes the trained tensors into.
    trunk_state: StateDict,
    /// Per head network, its segments in order (one, stop to output, or two split at the
    /// feature cut: the first one's output is the head's features) and its state dict.
    heads: Vec<(Vec<EngineNet>, StateDict)>,
    optimizer: Optimizer,
    weight_decay: f64,
    /// Single network: first parameter of the head group (the final linear layer: the last
    /// two parameters). A partial zip's head group is its head networks.
    head_from: usize,
    n_heads: usize,
}

impl EngineLearner {
    /// A learner for the trunk `trunk` (with its state dict; a single network, or the segment
    /// up to the stop) and the head networks `heads` (per head, its segments from the stop on,
    /// each built [`TrainNet::with_input_grad`]: one to the output, or two split at the feature
    /// cut; and the head's state dict; empty for a single network, which gives its output to
    /// each of `n_heads` heads); `optimizer_file` restores a saved optimiser state.
    ///
    /// # Errors
    /// The message of an optimiser state that cannot be read or does not fit the network.
    pub fn new(
        trunk: (TrainNet, StateDict),
        heads: Vec<(Vec<TrainNet>, StateDict)>,
        n_heads: usize,
        optimizer: Optimizer,
        weight_decay: f64,
        optimizer_file: Option<&Path>,
    ) -> Result<Self, String> {
        let n = trunk.0.params().len();
        let mut me = Self {
            trunk: EngineNet::new(trunk.0, "trunk.".into()),
            trunk_state: trunk.1,
            heads: heads
                .into_iter()
                .enumerate()
                .map(|(i, (segs, state))| {
                    let segs = segs
                        .into_iter()
                        .map(|n| EngineNet::new(n, format!("head{i}.")))
                        .collect();
                    (segs, state)
                })
                .collect(),
            optimizer,
            weight_decay,
            head_from: n.saturating_sub(2),
            n_heads,
        };
        if let Some(f) = optimizer_file {
            me.load_optimizer(f)?;
        }
        Ok(me)
    }

    fn nets_mut(&mut self) -> impl Iterator<Item = &mut EngineNet> {
        std::iter::once(&mut self.trunk).chain(self.heads.iter_mut().flat_map(|(s, _)| s))
    }

    fn nets(&self) -> impl Iterator<Item = &EngineNet> {
        std::iter::once(&self.trunk).chain(self.heads.iter().flat_map(|(s, _)| s))
    }

    fn load_optimizer(&mut self, file: &Path) -> Result<(), String> {
        let bad = |what: String| format!("{}: {what}", file.display());
        let s = safetensors_io::load(file).map_err(|e| bad(e.to_string()))?;
        let optimizer = self.optimizer;
        for en in self.nets_mut() {
            let prefix = en.prefix.clone();
            for (p, st) in en.net.params_mut().iter_mut().zip(en.adam.iter_mut()) {
                let key = |suffix: &str| format!("{prefix}{}.{suffix}", p.name);
                let get = |suffix: &str| -> Result<Option<Vec<f32>>, String> {
                    match s.get(&key(suffix)) {
                        None => Ok(None),
                        Some(t) if t.data.len() == p.value.len() => Ok(Some(t.data.clone())),
                        Some(t) => Err(bad(format!(
                            "{} holds {} values, the parameter {}",
                            key(suffix),
                            t.data.len(),
                            p.value.len()
                        ))),
                    }
                };
                match optimizer {
                    Optimizer::Sgd => p.momentum = get("momentum")?,
                    Optimizer::AdamW => {
                        let (m, v) = (get("m")?, get("v")?);
                        let time = s
                            .get(&key("time"))
                            .and_then(|t| t.data.first().copied())
                            .unwrap_or(0.0);
                        if let (Some(m), Some(v)) = (m, v) {
                            if !((1.0..1e7).contains(&time) && time.fract() == 0.0) {
                                return Err(bad(format!("{} is not a step count", key("time"))));
                            }
                            *st = Adam {
                                m,
                                v,
                                time: time as i32,
                            };
                        }
                    }
                }
            }
        }
        Ok(())
    }
}

/// One AdamW step of `value` from `grad` (burn's arithmetic, see the module docs).
fn adamw_update(value: &mut [f32], grad: &[f32], st: &mut Adam, lr: f64, weight_decay: f64) {
    let (f1, f2) = (1.0 - BETA1, 1.0 - BETA2);
    if st.time == 0 {
        st.m = grad.iter().map(|g| g * f1).collect();
        st.v = grad.iter().map(|g| g * g * f2).collect();
    } else {
        for ((m, v), g) in st.m.iter_mut().zip(st.v.iter_mut()).zip(grad) {
            *m = *m * BETA1 + g * f1;
            *v = *v * BETA2 + g * g * f2;
        }
    }
    st.time += 1;
    let (c1, c2) = (1.0 - BETA1.powi(st.time), 1.0 - BETA2.powi(st.time));
    let decay = lr * weight_decay;
    let keep = (1.0 - decay) as f32;
    let lr = lr as f32;
    for ((p, m), v) in value.iter_mut().zip(&st.m).zip(&st.v) {
        let delta = (m / c1) / ((v / c2).sqrt() + ADAM_EPS);
        let decayed = if decay == 0.0 { *p } else { *p * keep };
        *p = decayed - delta * lr;
    }
}

impl Learner for EngineLearner {
    fn path(&self) -> &'static str {
        "engine"
    }

    fn forward(
        &mut self,
        images: &[&[u8]],
        prep: Preprocess,
        _feature_cut: Option<usize>,
    ) -> Forward {
        let y = self.trunk.net.forward(Act::from_images(images, prep));
        let dim_of = |n: &TrainNet| n.params().last().map_or(0, |p| p.value.len());
        if self.heads.is_empty() {
            let dim = dim_of(&self.trunk.net);
            return Forward {
                outs: vec![(y, dim); self.n_heads],
                feats: Vec::new(),
            };
        }
        let z = self.trunk.net.output().expect("a forward ran");
        let (batch, side, c) = (z.batch, z.side, z.c);
        let (mut outs, mut feats) = (Vec::new(), Vec::new());
        for (segs, _) in &mut self.heads {
            let mut x = Act {
                batch,
                side,
                c,
                data: y.clone(),
            };
            let last = segs.len() - 1;
            for (j, seg) in segs.iter_mut().enumerate() {
                let out = seg.net.forward(x);
                if j == last {
                    outs.push((out, dim_of(&seg.net)));
                    break;
                }
                let a = seg.net.output().expect("a forward ran");
                x = Act {
                    batch: a.batch,
                    side: a.side,
                    c: a.c,
                    data: out.clone(),
                };
                if j == 0 {
                    feats.push(out);
                }
            }
        }
        Forward { outs, feats }
    }

    fn features_nhwc(&self) -> bool {
        true
    }

    fn step(
        &mut self,
        d_outs: Vec<Vec<f32>>,
        d_feats: Vec<Vec<f32>>,
        lr_head: f64,
        lr_trunk: Option<f64>,
    ) {
        let (optimizer, wd) = (self.optimizer, self.weight_decay);
        if self.heads.is_empty() {
            let mut it = d_outs.into_iter();
            let Some(mut dy) = it.next() else { return };
            for g in it {
                for (a, b) in dy.iter_mut().zip(g) {
                    *a += b;
                }
            }
            self.trunk.net.backward(dy);
            let (head_from, all) = (self.head_from, self.trunk.net.params().len());
            self.trunk.update(head_from..all, lr_head, optimizer, wd);
            if let Some(lr) = lr_trunk {
                self.trunk.update(0..head_from, lr, optimizer, wd);
            }
            return;
        }
        // head networks, each segment handing its input gradient to the one before (plus the
        // feature term's gradient at the feature cut) and the first to the trunk
        let mut dz: Option<Vec<f32>> = None;
        let mut d_feats = d_feats.into_iter();
        for ((segs, _), g) in self.heads.iter_mut().zip(d_outs) {
            let mut g = Some(g);
            let d_feat = if segs.len() > 1 { d_feats.next() } else { None };
            for (j, seg) in segs.iter_mut().enumerate().rev() {
                let Some(mut gj) = g.take() else { break };
                if j == 0 {
                    if let Some(df) = &d_feat {
                        gj.iter_mut().zip(df).for_each(|(a, b)| *a += b);
                    }
                }
                seg.net.backward(gj);
                let all = seg.net.params().len();
                seg.update(0..all, lr_head, optimizer, wd);
                g = seg.net.take_input_grad();
            }
            if let Some(gi) = g {
                match dz.as_mut() {
                    None => dz = Some(gi),
                    Some(acc) => acc.iter_mut().zip(gi).for_each(|(a, b)| *a += b),
                }
            }
        }
        if let (Some(lr), Some(dz)) = (lr_trunk, dz) {
            self.trunk.net.backward(dz);
            let all = self.trunk.net.params().len();
            self.trunk.update(0..all, lr, optimizer, wd);
        }
    }

    fn states(&self) -> (StateDict, Vec<StateDict>) {
        (
            written(&self.trunk_state, std::slice::from_ref(&self.trunk)),
            self.heads
                .iter()
                .map(|(segs, state)| written(state, segs))
                .collect(),
        )
    }

    fn save_optimizer(&self, dir: &Path) -> Result<(), String> {
        let mut out = StateDict::new();
        let one = |v: &[f32]| NamedTensor::new(vec![v.len()], v.to_vec());
        for en in self.nets() {
            for (p, st) in en.net.params().iter().zip(&en.adam) {
                let key = |suffix: &str| format!("{}{}.{suffix}", en.prefix, p.name);
                if let Some(m) = &p.momentum {
                    out.insert(key("momentum"), one(m));
                }
                if st.time > 0 {
                    out.insert(key("m"), one(&st.m));
                    out.insert(key("v"), one(&st.v));
                    out.insert(key("time"), one(&[st.time as f32]));
                }
            }
        }
        safetensors_io::save(&out, &dir.join(ENGINE_OPTIMIZER_FILE)).map_err(|e| e.to_string())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn adamw_steps_are_hand_derived() {
        // g = 2 on p = 1, lr 0.1, wd 0.5: m = 0.2, v = 0.004, corrected 2 and 4,
        // delta = 2 / (2 + 1e-5); p = 1 (1 - 0.05) - 0.1 delta
        let mut p = [1.0f32];
        let mut st = Adam::default();
        adamw_update(&mut p, &[2.0], &mut st, 0.1, 0.5);
        let want = 0.95 - 0.1 * 2.0 / (2.0 + 1e-5);
        assert!((p[0] as f64 - want).abs() < 1e-6, "{} vs {want}", p[0]);
        // second step, g = -1: m = 0.9 * 0.2 - 0.1 = 0.08, v = 0.999 * 0.004 + 0.001 = 0.004996
        // m^ = 0.08 / 0.19, v^ = 0.004996 / 0.001999
        let p1 = p[0] as f64;
        adamw_update(&mut p, &[-1.0], &mut st, 0.1, 0.0);
        let (mh, vh) = (0.08 / 0.19, 0.004996 / (1.0 - 0.999f64.powi(2)));
        let want = p1 - 0.1 * mh / (vh.sqrt() + 1e-5);
        assert!((p[0] as f64 - want).abs() < 1e-5, "{} vs {want}", p[0]);
        assert_eq!(st.time, 2);
    }
}
