//! ResNet-18 in torchvision's layout (`torchvision.models.resnet18`; the benchmark network of
//! REPAIR and PLeaS): stem conv7x7(3->b, stride 2, pad 3)+BN+ReLU, MaxPool 3x3 stride 2 pad 1,
//! four stages of two BasicBlocks with widths b, 2b, 4b, 8b (stride 2 on the first conv of
//! stages 2-4), a **conv1x1(stride s)+BN** `downsample` where the shape changes, global average
//! pooling and `fc: Linear(8b -> out)`.
//!
//! `b` is the base width in channels (`--width`): torchvision's ResNet-18 is b = 64; smaller
//! values give narrow copies with the same names (the test fixture). Field names follow the
//! PyTorch checkpoint (`conv1`, `layer2.0.downsample.0`, `fc`, ...; see
//! [`crate::models::bridge`]). The merge spec follows the official ZipIt! graph of
//! `graphs/resnet_graph.py::resnet18` (its ResNet-50 graph on BasicBlocks): layer1 has no
//! downsample, so the stem writes stage 1's residual stream; every block has one inner space.

use burn::module::Module;
use burn::nn::conv::Conv2d;
use burn::nn::{BatchNorm, Linear};
use burn::tensor::activation::relu;
use burn::tensor::{Device, Tensor};

use super::layers::{bn, conv, conv3x3, linear, pool_linear, stem_max_pool, ConvBn, ForwardCtx};

/// Blocks per stage of ResNet-18.
pub const RESNET18_BLOCKS: [usize; 4] = [2, 2, 2, 2];

/// conv3x3(stride s) -> BN -> ReLU -> conv3x3 -> BN, + shortcut, ReLU.
#[derive(Module, Debug)]
pub struct BasicBlock {
    /// 3x3 stride s, cin -> width.
    pub conv1: Conv2d,
    /// BN after conv1.
    pub bn1: BatchNorm,
    /// 3x3, width -> width.
    pub conv2: Conv2d,
    /// BN after conv2.
    pub bn2: BatchNorm,
    /// Present where the shape changes: conv1x1 with stride s, no bias, then BN.
    pub downsample: Option<ConvBn>,
}

/// ResNet-18 with base width b.
#[derive(Module, Debug)]
pub struct ResNet18 {
    /// Stem conv 7x7 stride 2, 3 -> b.
    pub conv1: Conv2d,
    /// Stem BN.
    pub bn1: BatchNorm,
    /// Stage 1 (b).
    pub layer1: Vec<BasicBlock>,
    /// Stage 2 (2b, stride 2).
    pub layer2: Vec<BasicBlock>,
    /// Stage 3 (4b, stride 2).
    pub layer3: Vec<BasicBlock>,
    /// Stage 4 (8b, stride 2).
    pub layer4: Vec<BasicBlock>,
    /// Classifier 8b -> out.
    pub fc: Linear,
}

impl BasicBlock {
    fn new(cin: usize, width: usize, stride: usize, device: &Device) -> Self {
        let downsample = (stride != 1 || cin != width).then(|| ConvBn {
            conv: conv(cin, width, 1, stride, 0, device),
            bn: bn(width, device),
        });
        Self {
            conv1: conv3x3(cin, width, stride, false, device),
            bn1: bn(width, device),
            conv2: conv3x3(width, width, 1, false, device),
            bn2: bn(width, device),
            downsample,
        }
    }

    /// `x: [batch, cin, H, W] -> [batch, width, H/s, W/s]`. Taps the inner feature (input of
    /// conv2, post-ReLU).
    fn forward(&self, name: &str, x: Tensor<4>, ctx: &mut ForwardCtx) -> Tensor<4> {
        let h = relu(ctx.bn(
            &format!("{name}.bn1"),
            &self.bn1,
            self.conv1.forward(x.clone()),
        ));
        ctx.tap(&h);
        let h = ctx.bn(&format!("{name}.bn2"), &self.bn2, self.conv2.forward(h));
        let s = match &self.downsample {
            Some(d) => d.forward(&format!("{name}.downsample"), x, ctx),
            None => x,
        };
        relu(h + s)
    }
}

impl ResNet18 {
    /// Builds the module tree for base width `b` and `out` outputs. Weights are zero until
    /// loaded.
    pub fn new(b: usize, out: usize, device: &Device) -> Self {
        let mut cin = b;
        let mut stages = RESNET18_BLOCKS.iter().enumerate().map(|(s, &n)| {
            let width = b << s;
            let blocks: Vec<BasicBlock> = (0..n)
                .map(|i| {
                    let stride = if s > 0 && i == 0 { 2 } else { 1 };
                    let blk = BasicBlock::new(cin, width, stride, device);
                    cin = width;
                    blk
                })
                .collect();
            blocks
        });
        let (layer1, layer2, layer3, layer4) = (
            stages.next().unwrap_or_default(),
            stages.next().unwrap_or_default(),
            stages.next().unwrap_or_default(),
            stages.next().unwrap_or_default(),
        );
        Self {
            conv1: conv(3, b, 7, 2, 3, device),
            bn1: bn(b, device),
            layer1,
            layer2,
            layer3,
            layer4,
            fc: linear(8 * b, out, device),
        }
    }

    /// Runs cut segment `from..to`. Cuts: 0 = image `[B,3,H,W]` (224x224 for ImageNet),
    /// 1..=4 = end of layer1..layer4 (`[B, b 2^(k-1), H/2^(k+1), W/2^(k+1)]`), 5 = output
    /// `[B,out]` (returned as `[B,out,1,1]`).
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
                0..=3 => {
                    let h = if cut == 0 {
                        stem_max_pool(&self.conv1, &self.bn1, x, ctx)
                    } else {
                        x
                    };
                    let (name, blocks) = match cut {
                        0 => ("layer1", &self.layer1),
                        1 => ("layer2", &self.layer2),
                        2 => ("layer3", &self.layer3),
                        _ => ("layer4", &self.layer4),
                    };
                    let h = blocks
                        .iter()
                        .enumerate()
                        .fold(h, |h, (i, b)| b.forward(&format!("{name}.{i}"), h, ctx));
                    ctx.tap(&h); // the stage's residual stream
                    h
                }
                _ => pool_linear(&self.fc, x),
            };
        }
        x
    }
}

/// The torchvision ResNet-18 architecture at base width b (registered in [`crate::models`]).
pub struct Def;

impl super::arch::Architecture for Def {
    fn facts(&self) -> super::arch::ArchFacts {
        super::arch::ArchFacts::torchvision_resnet("resnet18")
    }

    /// BasicBlocks in layer4, two blocks in layer1 (not ResNet-34's three, not ResNet-50's
    /// Bottlenecks).
    /// `downsample.conv` / `downsample.bn` here, `Sequential` `downsample.0` / `downsample.1` in PyTorch.
    fn torch_path(&self, path: &mut [String]) {
        super::bridge::rename_child(path, "downsample", super::bridge::conv_bn_index);
    }

    fn detect(&self, has: &dyn Fn(&str) -> bool) -> bool {
        has("fc.weight")
            && has("layer4.1.conv2.weight")
            && !has("layer4.0.conv3.weight")
            && !has("layer1.2.conv1.weight")
    }

    /// MACs of cut segment `cut` (0..=4, see [`ResNet18::forward_segment`]) at 224x224.
    fn flops_segment(&self, width: usize, out: usize, cut: usize) -> u64 {
        let b = width as u64;
        let conv = |cin: u64, cout: u64, k: u64, hw: u64| cin * cout * k * k * hw * hw;
        if cut >= 4 {
            return 8 * b * out as u64;
        }
        let w = b << cut;
        let hw = 56 >> cut;
        let (stem, cin) = if cut == 0 {
            (conv(3, b, 7, 112), b)
        } else {
            (0, w / 2)
        };
        let downsample = if cut == 0 { 0 } else { conv(cin, w, 1, hw) };
        stem + conv(cin, w, 3, hw) + 3 * conv(w, w, 3, hw) + downsample
    }

    /// Mirrors [`ResNet18::forward_segment`].
    fn program(
        &self,
        p: &crate::engine::ProgramBuilder<'_>,
    ) -> Result<Vec<Vec<crate::engine::Op>>, crate::error::ModelError> {
        let mut cuts = Vec::new();
        for (stage, &blocks) in RESNET18_BLOCKS.iter().enumerate() {
            let mut ops = Vec::new();
            if stage == 0 {
                ops.push(p.conv_bn("conv1", "bn1", 2, 3, 0, 0, None, true)?);
                ops.push(p.max_pool(3, 2, 1));
            }
            for i in 0..blocks {
                let stride = if stage > 0 && i == 0 { 2 } else { 1 };
                // the downsample is a 1x1 conv (no padding)
                let name = format!("layer{}.{i}", stage + 1);
                ops.extend(p.basic_block(&name, stride, "downsample", 0)?);
            }
            ops.push(p.tap(0));
            cuts.push(ops);
        }
        cuts.push(vec![p.linear("fc")?]);
        Ok(cuts)
    }
}

impl ResNet18 {
    /// Feeds the merge-spec builder from this module tree: feature spaces, and the input and
    /// output space of every weight layer and BN (dispatched by [`super::Net::feed_spec`]).
    pub(crate) fn spec(&self, b: &mut crate::spec::SpecBuilder) {
        let m = self;
        use crate::spec::{channels, BlockDesc};
        let stages = [&m.layer1, &m.layer2, &m.layer3, &m.layer4].map(|blocks| {
            blocks
                .iter()
                .map(|blk| BlockDesc {
                    projection: blk
                        .downsample
                        .as_ref()
                        .map(|p| ("downsample", channels(&p.bn))),
                    inner: vec![channels(&blk.bn1)],
                })
                .collect()
        });
        b.resnet(channels(&m.bn1), &stages, "fc");
    }
}
