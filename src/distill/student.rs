//! The trainable student on burn's autodiff: its networks, their forward passes and the
//! parameter groups of the two stages.

use burn::module::{Module, ModuleVisitor, Param, ParamId};
use burn::optim::GradientsParams;
use burn::tensor::Tensor;

use super::settings::BnHandling;
use crate::models::{ForwardCtx, Net};
use crate::state::StateDict;

/// The trainable student: the trunk (the whole network for a model without head networks)
/// and, for a partially zipped model, one network per head from the stop on.
#[derive(Module, Debug)]
pub struct Student {
    /// Runs cuts `0..stop_cut` (all cuts when `heads` is empty).
    pub trunk: Net,
    /// Head networks (cuts `stop_cut..output`), empty for a single network.
    pub heads: Vec<Net>,
}

impl Student {
    /// Per head, its output `[batch, out]` for `x: [batch, 3, side, side]`; a single network
    /// gives its one output to each of `n_heads` heads.
    pub fn forward(
        &self,
        x: Tensor<4>,
        stop_cut: usize,
        n_heads: usize,
        ctx: &mut ForwardCtx,
    ) -> Vec<Tensor<2>> {
        let out_cut = self.trunk.output_cut();
        let flat = |y: Tensor<4>| {
            let [b, o, _, _] = y.dims();
            y.reshape([b, o])
        };
        if self.heads.is_empty() {
            let y = flat(self.trunk.forward_segment(x, 0, out_cut, ctx));
            return vec![y; n_heads];
        }
        let z = self.trunk.forward_segment(x, 0, stop_cut, ctx);
        self.heads
            .iter()
            .map(|h| flat(h.forward_segment(z.clone(), stop_cut, out_cut, ctx)))
            .collect()
    }

    /// As [`Self::forward`] for a partially zipped student, also returning each head network's
    /// features at cut `feature_cut` (`stop_cut < feature_cut < output cut`), `[batch, c, h, w]`.
    pub fn forward_features(
        &self,
        x: Tensor<4>,
        stop_cut: usize,
        feature_cut: usize,
        ctx: &mut ForwardCtx,
    ) -> (Vec<Tensor<2>>, Vec<Tensor<4>>) {
        let out_cut = self.trunk.output_cut();
        let z = self.trunk.forward_segment(x, 0, stop_cut, ctx);
        let mut outs = Vec::new();
        let mut feats = Vec::new();
        for h in &self.heads {
            let f = h.forward_segment(z.clone(), stop_cut, feature_cut, ctx);
            let y = h.forward_segment(f.clone(), feature_cut, out_cut, ctx);
            let [b, o, _, _] = y.dims();
            outs.push(y.reshape([b, o]));
            feats.push(f);
        }
        (outs, feats)
    }

    /// The weights as PyTorch-layout state dicts: the trunk, then each head network.
    pub fn to_states(&self) -> (StateDict, Vec<StateDict>) {
        (
            self.trunk.to_state(),
            self.heads.iter().map(Net::to_state).collect(),
        )
    }
}

/// Float parameter ids of a module with their ranks, in visiting order.
pub(crate) fn param_ranks<M: Module>(m: &M) -> Vec<(ParamId, usize)> {
    struct V(Vec<(ParamId, usize)>);
    impl ModuleVisitor for V {
        fn visit_float<const D: usize>(&mut self, p: &Param<Tensor<D>>) {
            self.0.push((p.id, D));
        }
    }
    let mut v = V(Vec::new());
    m.visit(&mut v);
    v.0
}

/// Moves the gradients of `ids` from `from` into a new set.
pub(crate) fn take_grads(from: &mut GradientsParams, ids: &[(ParamId, usize)]) -> GradientsParams {
    fn mv<const D: usize>(f: &mut GradientsParams, t: &mut GradientsParams, id: ParamId) {
        if let Some(g) = f.remove::<D>(id) {
            t.register::<D>(id, g);
        }
    }
    let mut to = GradientsParams::new();
    for &(id, rank) in ids {
        match rank {
            1 => mv::<1>(from, &mut to, id),
            2 => mv::<2>(from, &mut to, id),
            3 => mv::<3>(from, &mut to, id),
            4 => mv::<4>(from, &mut to, id),
            _ => {}
        }
    }
    to
}

/// The parameters of the head stage: the head networks' of a partially zipped student; for a
/// single network its final linear layer (the last two float parameters: weight `[out, in]`,
/// bias `[out]`, the last module of every architecture).
pub fn head_params(s: &Student) -> Vec<(ParamId, usize)> {
    if !s.heads.is_empty() {
        return s.heads.iter().flat_map(param_ranks).collect();
    }
    let all = param_ranks(&s.trunk);
    all[all.len().saturating_sub(2)..].to_vec()
}

/// The forward's BN behaviour for a BN handling.
pub(crate) fn bn_mode(bn: BnHandling) -> crate::models::layers::BnMode {
    match bn {
        BnHandling::Train => crate::models::layers::BnMode::Module,
        BnHandling::Frozen => crate::models::layers::BnMode::Running,
    }
}
