//! ResNet-50 in torchvision's layout (`torchvision.models.resnet50`, "v1.5": the stride sits on
//! the 3x3 conv; reference doc §1.5): stem conv7x7(3->b, stride 2, pad 3)+BN+ReLU, MaxPool 3x3
//! stride 2 pad 1, four stages of [3, 4, 6, 3] Bottleneck blocks with inner widths b, 2b, 4b, 8b
//! and outputs 4x those, a **conv1x1(stride s)+BN** `downsample` on the first block of every stage,
//! global average pooling and `fc: Linear(32b -> out)`.
//!
//! `b` is the base width in channels (`--width`): torchvision's ResNet-50 is b = 64; smaller
//! values give narrow copies with the same names (used by the test fixtures). Field names follow
//! the PyTorch checkpoint (`conv1`, `layer1.0.conv3`, ...); `downsample.conv`/`downsample.bn`
//! are `downsample.0`/`downsample.1` in PyTorch naming (see [`crate::models::bridge`]).

use burn::module::Module;
use burn::nn::conv::Conv2d;
use burn::nn::{BatchNorm, Linear};
use burn::tensor::activation::relu;
use burn::tensor::{Device, Tensor};

use super::layers::{bn, conv, linear, pool_linear, stem_max_pool, ConvBn, ForwardCtx};

/// Blocks per stage of ResNet-50.
pub const RESNET50_BLOCKS: [usize; 4] = [3, 4, 6, 3];
/// Bottleneck expansion: block output channels = 4 x inner width.
pub const EXPANSION: usize = 4;

/// conv1x1 -> BN -> ReLU -> conv3x3(stride s) -> BN -> ReLU -> conv1x1 -> BN, + shortcut, ReLU.
#[derive(Module, Debug)]
pub struct Bottleneck {
    /// 1x1, cin -> width.
    pub conv1: Conv2d,
    /// BN after conv1.
    pub bn1: BatchNorm,
    /// 3x3 stride s, width -> width.
    pub conv2: Conv2d,
    /// BN after conv2.
    pub bn2: BatchNorm,
    /// 1x1, width -> 4 width.
    pub conv3: Conv2d,
    /// BN after conv3.
    pub bn3: BatchNorm,
    /// Present on the first block of each stage: conv1x1 with stride s, no bias, then BN.
    pub downsample: Option<ConvBn>,
}

/// ResNet-50 with base width b.
#[derive(Module, Debug)]
pub struct ResNet50 {
    /// Stem conv 7x7 stride 2, 3 -> b.
    pub conv1: Conv2d,
    /// Stem BN.
    pub bn1: BatchNorm,
    /// Stage 1 (inner b, out 4b).
    pub layer1: Vec<Bottleneck>,
    /// Stage 2 (inner 2b, out 8b, stride 2).
    pub layer2: Vec<Bottleneck>,
    /// Stage 3 (inner 4b, out 16b, stride 2).
    pub layer3: Vec<Bottleneck>,
    /// Stage 4 (inner 8b, out 32b, stride 2).
    pub layer4: Vec<Bottleneck>,
    /// Classifier 32b -> out.
    pub fc: Linear,
}

impl Bottleneck {
    fn new(cin: usize, width: usize, stride: usize, device: &Device) -> Self {
        let cout = width * EXPANSION;
        let downsample = (stride != 1 || cin != cout).then(|| ConvBn {
            conv: conv(cin, cout, 1, stride, 0, device),
            bn: bn(cout, device),
        });
        Self {
            conv1: conv(cin, width, 1, 1, 0, device),
            bn1: bn(width, device),
            conv2: conv(width, width, 3, stride, 1, device),
            bn2: bn(width, device),
            conv3: conv(width, cout, 1, 1, 0, device),
            bn3: bn(cout, device),
            downsample,
        }
    }

    /// `x: [batch, cin, H, W] -> [batch, 4 width, H/s, W/s]`. Taps the two inner features
    /// (inputs of conv2 and conv3, post-ReLU).
    fn forward(&self, name: &str, x: Tensor<4>, ctx: &mut ForwardCtx) -> Tensor<4> {
        let h = relu(ctx.bn(
            &format!("{name}.bn1"),
            &self.bn1,
            self.conv1.forward(x.clone()),
        ));
        ctx.tap(&h);
        let h = relu(ctx.bn(&format!("{name}.bn2"), &self.bn2, self.conv2.forward(h)));
        ctx.tap(&h);
        let h = ctx.bn(&format!("{name}.bn3"), &self.bn3, self.conv3.forward(h));
        let s = match &self.downsample {
            Some(d) => d.forward(&format!("{name}.downsample"), x, ctx),
            None => x,
        };
        relu(h + s)
    }
}

impl ResNet50 {
    /// Builds the module tree for base width `b` and `out` outputs. Weights are zero until
    /// loaded.
    pub fn new(b: usize, out: usize, device: &Device) -> Self {
        let mut cin = b;
        let mut stages = Vec::new();
        for (s, &n) in RESNET50_BLOCKS.iter().enumerate() {
            let width = b << s;
            let stride = if s == 0 { 1 } else { 2 };
            let blocks: Vec<Bottleneck> = (0..n)
                .map(|i| {
                    let blk = Bottleneck::new(cin, width, if i == 0 { stride } else { 1 }, device);
                    cin = width * EXPANSION;
                    blk
                })
                .collect();
            stages.push(blocks);
        }
        let mut st = stages.into_iter();
        Self {
            conv1: conv(3, b, 7, 2, 3, device),
            bn1: bn(b, device),
            layer1: st.next().unwrap_or_default(),
            layer2: st.next().unwrap_or_default(),
            layer3: st.next().unwrap_or_default(),
            layer4: st.next().unwrap_or_default(),
            fc: linear(cin, out, device),
        }
    }

    /// Runs cut segment `from..to`. Cuts: 0 = image `[B,3,H,W]` (224x224 for ImageNet),
    /// 1 = end of layer1 `[B,4b,H/4,W/4]`, 2 = end of layer2 `[B,8b,H/8,W/8]`, 3 = end of layer3
    /// `[B,16b,H/16,W/16]`, 4 = end of layer4 `[B,32b,H/32,W/32]` (pre-pool), 5 = output
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
                        let h = stem_max_pool(&self.conv1, &self.bn1, x, ctx);
                        ctx.tap(&h); // stem space (reference node 3)
                        h
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
                    ctx.tap(&h); // stage stream (nodes 33, 72, 129, 159)
                    h
                }
                _ => pool_linear(&self.fc, x),
            };
        }
        x
    }
}

/// The torchvision ResNet-50 architecture at base width b (registered in [`crate::models`]).
pub struct Def;

impl super::arch::Architecture for Def {
    fn facts(&self) -> super::arch::ArchFacts {
        super::arch::ArchFacts::torchvision_resnet("resnet50")
    }

    /// `downsample.conv` / `downsample.bn` here, `Sequential` `downsample.0` / `downsample.1` in PyTorch.
    fn torch_path(&self, path: &mut [String]) {
        super::bridge::rename_child(path, "downsample", super::bridge::conv_bn_index);
    }

    fn detect(&self, has: &dyn Fn(&str) -> bool) -> bool {
        has("fc.weight") && has("layer4.0.conv3.weight")
    }

    /// MACs of cut segment `cut` (0..=4, see [`ResNet50::forward_segment`]) at 224x224.
    fn flops_segment(&self, width: usize, out: usize, cut: usize) -> u64 {
        let (b, out) = (width as u64, out as u64);
        let conv = |cin: u64, cout: u64, k: u64, hw: u64| cin * cout * k * k * hw * hw;
        if cut == 4 {
            return 32 * b * out;
        }
        let mut total = if cut == 0 { conv(3, b, 7, 112) } else { 0 };
        let e = EXPANSION as u64;
        // input channels and side of the stage
        let (mut cin, hw_in) = if cut == 0 {
            (b, 56)
        } else {
            ((b * e) << (cut - 1), 56 >> (cut - 1))
        };
        let width = b << cut;
        let hw = if cut == 0 { 56 } else { hw_in / 2 };
        for i in 0..RESNET50_BLOCKS[cut] {
            let h1 = if i == 0 { hw_in } else { hw };
            total +=
                conv(cin, width, 1, h1) + conv(width, width, 3, hw) + conv(width, width * e, 1, hw);
            if i == 0 {
                total += conv(cin, width * e, 1, hw);
            }
            cin = width * e;
        }
        total
    }

    /// Mirrors [`ResNet50::forward_segment`].
    fn program(
        &self,
        p: &crate::engine::ProgramBuilder<'_>,
    ) -> Result<Vec<Vec<crate::engine::Op>>, crate::error::ModelError> {
        let mut cuts = Vec::new();
        for (stage, &blocks) in RESNET50_BLOCKS.iter().enumerate() {
            let mut ops = Vec::new();
            if stage == 0 {
                ops.push(p.conv_bn("conv1", "bn1", 2, 3, 0, 0, None, true)?);
                ops.push(p.max_pool(3, 2, 1));
                ops.push(p.tap(0));
            }
            for i in 0..blocks {
                let n = format!("layer{}.{i}", stage + 1);
                let stride = if stage > 0 && i == 0 { 2 } else { 1 };
                let c = |k: &str| format!("{n}.{k}");
                ops.push(p.conv_bn(&c("conv1"), &c("bn1"), 1, 0, 0, 1, None, true)?);
                ops.push(p.tap(1));
                ops.push(p.conv_bn(&c("conv2"), &c("bn2"), stride, 1, 1, 2, None, true)?);
                ops.push(p.tap(2));
                let res = if p.has(&c("downsample.0.weight")) {
                    let (conv, bn) = (c("downsample.0"), c("downsample.1"));
                    ops.push(p.conv_bn(&conv, &bn, stride, 0, 0, 3, None, false)?);
                    3
                } else {
                    0
                };
                ops.push(p.conv_bn(&c("conv3"), &c("bn3"), 1, 0, 2, 0, Some(res), true)?);
            }
            ops.push(p.tap(0));
            cuts.push(ops);
        }
        cuts.push(vec![p.linear("fc")?]);
        Ok(cuts)
    }
}

impl ResNet50 {
    /// Feeds the merge-spec builder from this module tree: feature spaces, and the input and
    /// output space of every weight layer and BN (dispatched by [`super::Net::feed_spec`]).
    pub(crate) fn spec(&self, b: &mut crate::spec::SpecBuilder) {
        let m = self;
        use crate::spec::{channels, BlockDesc};
        // §1.5: Bottlenecks, two inner spaces each, a 1x1 conv `downsample` on stage starts
        let stages = [&m.layer1, &m.layer2, &m.layer3, &m.layer4].map(|blocks| {
            blocks
                .iter()
                .map(|blk| BlockDesc {
                    projection: blk
                        .downsample
                        .as_ref()
                        .map(|p| ("downsample", channels(&p.bn))),
                    inner: vec![channels(&blk.bn1), channels(&blk.bn2)],
                })
                .collect()
        });
        b.resnet(channels(&m.bn1), &stages, "fc");
    }
}
