//! ResNet-20 for CIFAR with a width multiplier, exactly the layout of the official ZipIt! code
//! (`models/resnets.py`; reference doc §1.3): stem conv3x3(3->16w)+BN+ReLU, three stages of three
//! BasicBlocks (16w, 32w, 64w; stride 2 at the start of stages 2 and 3), a shortcut of
//! **conv3x3(stride s)+BN** when the shape changes, global average pooling and `Linear(64w -> out)`.
//!
//! Field names follow the PyTorch checkpoint (`conv1`, `bn1`, `layer1.0.conv2`, ...); the shortcut's
//! `conv`/`bn` are `shortcut.0`/`shortcut.1` in PyTorch naming (see [`crate::models::bridge`]).

use burn::module::Module;
use burn::nn::conv::Conv2d;
use burn::nn::{BatchNorm, Linear};
use burn::tensor::activation::relu;
use burn::tensor::{Device, Tensor};

use super::layers::{bn, conv3x3, linear, pool_linear, ConvBn, ForwardCtx};

/// conv3x3 -> BN -> ReLU -> conv3x3 -> BN, + shortcut, ReLU.
#[derive(Module, Debug)]
pub struct BasicBlock {
    /// First conv (stride s).
    pub conv1: Conv2d,
    /// BN after conv1.
    pub bn1: BatchNorm,
    /// Second conv (stride 1).
    pub conv2: Conv2d,
    /// BN after conv2.
    pub bn2: BatchNorm,
    /// Present when stride != 1 or channels change: conv3x3 with stride s, no bias, then BN.
    pub shortcut: Option<ConvBn>,
}

/// ResNet-20 x w.
#[derive(Module, Debug)]
pub struct ResNet20 {
    /// Stem conv 3 -> 16w.
    pub conv1: Conv2d,
    /// Stem BN.
    pub bn1: BatchNorm,
    /// Stage 1 (16w).
    pub layer1: Vec<BasicBlock>,
    /// Stage 2 (32w, stride 2).
    pub layer2: Vec<BasicBlock>,
    /// Stage 3 (64w, stride 2).
    pub layer3: Vec<BasicBlock>,
    /// Final linear 64w -> out (embedding dim or class count).
    pub linear: Linear,
}

impl BasicBlock {
    fn new(cin: usize, cout: usize, stride: usize, device: &Device) -> Self {
        let shortcut = (stride != 1 || cin != cout).then(|| ConvBn {
            conv: conv3x3(cin, cout, stride, false, device),
            bn: bn(cout, device),
        });
        Self {
            conv1: conv3x3(cin, cout, stride, false, device),
            bn1: bn(cout, device),
            conv2: conv3x3(cout, cout, 1, false, device),
            bn2: bn(cout, device),
            shortcut,
        }
    }

    /// `x: [batch, cin, H, W] -> [batch, cout, H/s, W/s]`. Taps the inner feature (input of conv2).
    fn forward(&self, name: &str, x: Tensor<4>, ctx: &mut ForwardCtx) -> Tensor<4> {
        let h = self.conv1.forward(x.clone());
        let h = relu(ctx.bn(&format!("{name}.bn1"), &self.bn1, h));
        ctx.tap(&h); // inner space: input of conv2 (post-ReLU)
        let h = self.conv2.forward(h);
        let h = ctx.bn(&format!("{name}.bn2"), &self.bn2, h);
        let s = match &self.shortcut {
            Some(sc) => sc.forward(&format!("{name}.shortcut"), x, ctx),
            None => x,
        };
        relu(h + s)
    }
}

impl ResNet20 {
    /// Builds the module tree for width `w` and `out` outputs. Weights are zero until loaded.
    pub fn new(w: usize, out: usize, device: &Device) -> Self {
        let (c1, c2, c3) = (16 * w, 32 * w, 64 * w);
        let stage = |cin: usize, cout: usize, stride: usize| {
            (0..3)
                .map(|i| {
                    if i == 0 {
                        BasicBlock::new(cin, cout, stride, device)
                    } else {
                        BasicBlock::new(cout, cout, 1, device)
                    }
                })
                .collect::<Vec<_>>()
        };
        Self {
            conv1: conv3x3(3, c1, 1, false, device),
            bn1: bn(c1, device),
            layer1: stage(c1, c1, 1),
            layer2: stage(c1, c2, 2),
            layer3: stage(c2, c3, 2),
            linear: linear(c3, out, device),
        }
    }

    /// Runs cut segment `from..to`. Cuts: 0 = image `[B,3,32,32]`, 1 = end of layer1
    /// `[B,16w,32,32]`, 2 = end of layer2 `[B,32w,16,16]`, 3 = end of layer3 `[B,64w,8,8]`
    /// (pre-pool), 4 = output `[B,out]` (returned flattened as `[B,out,1,1]`).
    pub fn forward_segment(
        &self,
        x: Tensor<4>,
        from: usize,
        to: usize,
        ctx: &mut ForwardCtx,
    ) -> Tensor<4> {
        let mut x = x;
        for cut in from..to {
            x = match cut {
                0 => {
                    let h = relu(ctx.bn("bn1", &self.bn1, self.conv1.forward(x)));
                    let h = self.stage("layer1", &self.layer1, h, ctx);
                    ctx.tap(&h);
                    h
                }
                1 => {
                    let h = self.stage("layer2", &self.layer2, x, ctx);
                    ctx.tap(&h);
                    h
                }
                2 => {
                    let h = self.stage("layer3", &self.layer3, x, ctx);
                    ctx.tap(&h);
                    h
                }
                _ => pool_linear(&self.linear, x),
            };
        }
        x
    }

    fn stage(
        &self,
        name: &str,
        blocks: &[BasicBlock],
        x: Tensor<4>,
        ctx: &mut ForwardCtx,
    ) -> Tensor<4> {
        blocks
            .iter()
            .enumerate()
            .fold(x, |h, (i, b)| b.forward(&format!("{name}.{i}"), h, ctx))
    }
}

/// The ResNet-20 x w architecture (registered in [`crate::models`]).
pub struct Def;

impl super::arch::Architecture for Def {
    fn facts(&self) -> super::arch::ArchFacts {
        super::arch::ArchFacts {
            name: "resnet20",
            output_cut: 4,
            preprocess: crate::data::Preprocess::CIFAR,
            width_is_channels: false,
            max_width: 64,
            layout: "zipit",
            head_layer: "linear",
            width_probe: ("conv1.weight", 16),
            init: super::arch::InitRule::KaimingFanIn,
        }
    }

    /// `shortcut.conv` / `shortcut.bn` here, `Sequential` `shortcut.0` / `shortcut.1` in PyTorch.
    fn torch_path(&self, path: &mut [String]) {
        super::bridge::rename_child(path, "shortcut", super::bridge::conv_bn_index);
    }

    fn detect(&self, has: &dyn Fn(&str) -> bool) -> bool {
        has("linear.weight") && has("layer3.0.conv2.weight")
    }

    fn flops_segment(&self, width: usize, out: usize, cut: usize) -> u64 {
        let w = width as u64;
        let conv = |cin: u64, cout: u64, hw: u64| cin * cout * 9 * hw * hw;
        match cut {
            0 => conv(3, 16 * w, 32) + 6 * conv(16 * w, 16 * w, 32),
            // block 0: conv1 stride 2, conv2, shortcut conv stride 2; blocks 1, 2
            1 => conv(16 * w, 32 * w, 16) * 2 + conv(32 * w, 32 * w, 16) * 5,
            2 => conv(32 * w, 64 * w, 8) * 2 + conv(64 * w, 64 * w, 8) * 5,
            _ => 64 * w * out as u64,
        }
    }

    /// Mirrors [`ResNet20::forward_segment`].
    fn program(
        &self,
        p: &crate::engine::ProgramBuilder<'_>,
    ) -> Result<Vec<Vec<crate::engine::Op>>, crate::error::ModelError> {
        let mut cuts = Vec::new();
        for stage in 1..=3 {
            let mut ops = Vec::new();
            if stage == 1 {
                ops.push(p.conv_bn("conv1", "bn1", 1, 1, 0, 0, None, true)?);
            }
            for i in 0..3 {
                let stride = if stage > 1 && i == 0 { 2 } else { 1 };
                // the shortcut is a 3x3 conv (padding 1)
                ops.extend(p.basic_block(&format!("layer{stage}.{i}"), stride, "shortcut", 1)?);
            }
            ops.push(p.tap(0));
            cuts.push(ops);
        }
        cuts.push(vec![p.linear("linear")?]);
        Ok(cuts)
    }
}

impl ResNet20 {
    /// Feeds the merge-spec builder from this module tree: feature spaces, and the input and
    /// output space of every weight layer and BN (dispatched by [`super::Net::feed_spec`]).
    pub(crate) fn spec(&self, b: &mut crate::spec::SpecBuilder) {
        let m = self;
        use crate::spec::{channels, BlockDesc};
        // §1.3: BasicBlocks, one inner space each, a 3x3 conv `shortcut` on stage starts
        let stages = [&m.layer1, &m.layer2, &m.layer3].map(|blocks| {
            blocks
                .iter()
                .map(|blk| BlockDesc {
                    projection: blk.shortcut.as_ref().map(|p| ("shortcut", channels(&p.bn))),
                    inner: vec![channels(&blk.bn1)],
                })
                .collect()
        });
        b.resnet(channels(&m.bn1), &stages, "linear");
    }
}
