//! VGG-11 for CIFAR with an integer width multiplier, the layout of the official ZipIt! code
//! (`models/vgg.py`; reference doc §1.4): channels `[64, M, 128, M, 256, 256, M, 512, 512, M, 512,
//! 512, M] x w`, every conv 3x3 pad 1 **with bias** followed by ReLU, no BN, MaxPool 2x2, then
//! `Linear(512w -> out)` (`classifier`). PyTorch names the convs `features.{0,3,6,8,11,13,16,18}`.

use burn::module::Module;
use burn::nn::conv::Conv2d;
use burn::nn::Linear;
use burn::tensor::activation::relu;
use burn::tensor::module::max_pool2d;
use burn::tensor::ops::MaxPoolOptions;
use burn::tensor::{Device, Tensor};

use super::layers::{conv3x3, linear, ForwardCtx};

/// Output channels of the 8 convs (before the width multiplier).
pub const VGG11_CHANNELS: [usize; 8] = [64, 128, 256, 256, 512, 512, 512, 512];
/// Whether a 2x2 max-pool follows conv k.
pub const VGG11_POOL_AFTER: [bool; 8] = [true, true, false, true, false, true, false, true];
/// Index of conv k inside PyTorch's `features` Sequential.
pub const VGG11_TORCH_INDEX: [usize; 8] = [0, 3, 6, 8, 11, 13, 16, 18];

/// VGG-11 x w.
#[derive(Module, Debug)]
pub struct Vgg11 {
    /// The 8 convs (with bias).
    pub features: Vec<Conv2d>,
    /// Final linear 512w -> out.
    pub classifier: Linear,
}

impl Vgg11 {
    /// Builds the module tree for width `w` and `out` outputs. Weights are zero until loaded.
    pub fn new(w: usize, out: usize, device: &Device) -> Self {
        let mut cin = 3;
        let features = VGG11_CHANNELS
            .iter()
            .map(|&c| {
                let conv = conv3x3(cin, c * w, 1, true, device);
                cin = c * w;
                conv
            })
            .collect();
        Self {
            features,
            classifier: linear(512 * w, out, device),
        }
    }

    /// Runs cut segment `from..to`. Cut k in 1..=8 is the post-ReLU output of conv k, *before* its
    /// max-pool (merge point k; reference doc §1.4); cut 0 is the image, cut 9 the output
    /// `[B, out]` (returned as `[B, out, 1, 1]`).
    pub fn forward_segment(
        &self,
        x: Tensor<4>,
        from: usize,
        to: usize,
        ctx: &mut ForwardCtx,
    ) -> Tensor<4> {
        let mut x = x;
        for cut in from..to {
            if cut > 0 && VGG11_POOL_AFTER[cut - 1] {
                x = max_pool2d(
                    x,
                    MaxPoolOptions {
                        kernel_size: [2, 2],
                        stride: [2, 2],
                        padding: [(0, 0), (0, 0)],
                        dilation: [1, 1],
                        ceil_mode: false,
                    },
                );
            }
            x = if cut < 8 {
                let h = relu(self.features[cut].forward(x));
                ctx.tap(&h);
                h
            } else {
                let [b, c, _, _] = x.dims();
                let y = self.classifier.forward(x.reshape([b, c]));
                let o = y.dims()[1];
                y.reshape([b, o, 1, 1])
            };
        }
        x
    }
}

/// The VGG-11 x w architecture (registered in [`crate::models`]).
pub struct Def;

impl super::arch::Architecture for Def {
    fn facts(&self) -> super::arch::ArchFacts {
        super::arch::ArchFacts {
            name: "vgg11",
            output_cut: 9,
            preprocess: crate::data::Preprocess::CIFAR,
            width_is_channels: false,
            max_width: 64,
            layout: "zipit",
            head_layer: "classifier",
            width_probe: ("features.0.weight", 64),
            init: super::arch::InitRule::PytorchDefault,
        }
    }

    /// Conv `k` is `features.k` here and `features.{VGG11_TORCH_INDEX[k]}` in PyTorch's
    /// Sequential (its ReLUs and pools take the other indices).
    fn torch_path(&self, path: &mut [String]) {
        super::bridge::rename_child(path, "features", |k| {
            let k = k.parse::<usize>().ok()?;
            VGG11_TORCH_INDEX.get(k).map(usize::to_string)
        });
    }

    fn detect(&self, has: &dyn Fn(&str) -> bool) -> bool {
        has("features.0.weight") && has("classifier.weight")
    }

    fn flops_segment(&self, width: usize, out: usize, cut: usize) -> u64 {
        let w = width as u64;
        if cut >= 8 {
            return 512 * w * out as u64;
        }
        let cin = if cut == 0 {
            3
        } else {
            VGG11_CHANNELS[cut - 1] as u64 * w
        };
        let pools = VGG11_POOL_AFTER[..cut].iter().filter(|p| **p).count();
        let hw = (32 >> pools) as u64;
        cin * VGG11_CHANNELS[cut] as u64 * w * 9 * hw * hw
    }

    /// Mirrors [`Vgg11::forward_segment`].
    fn program(
        &self,
        p: &crate::engine::ProgramBuilder<'_>,
    ) -> Result<Vec<Vec<crate::engine::Op>>, crate::error::ModelError> {
        let mut cuts = Vec::new();
        for cut in 0..9 {
            let mut ops = Vec::new();
            if cut > 0 && VGG11_POOL_AFTER[cut - 1] {
                ops.push(p.max_pool(2, 2, 0));
            }
            if cut < 8 {
                let name = format!("features.{}", VGG11_TORCH_INDEX[cut]);
                ops.push(p.conv_bias_relu(&name, 1, 1)?);
                ops.push(p.tap(0));
            } else {
                ops.push(p.linear("classifier")?);
            }
            cuts.push(ops);
        }
        Ok(cuts)
    }
}

impl Vgg11 {
    /// Feeds the merge-spec builder from this module tree: feature spaces, and the input and
    /// output space of every weight layer and BN (dispatched by [`super::Net::feed_spec`]).
    pub(crate) fn spec(&self, b: &mut crate::spec::SpecBuilder) {
        let m = self;
        use crate::spec::{LayerKind, Side, SpaceKind};
        // §1.4: every conv output is its own space and a stop
        let mut prev = Side::Input;
        for (k, conv) in m.features.iter().enumerate() {
            b.set_segment(k);
            let name = format!("features.{}", VGG11_TORCH_INDEX[k]);
            let s = b.space(name.clone(), conv.weight.dims()[0], SpaceKind::Inner);
            b.layer(name, LayerKind::Conv, prev, Side::Space(s), true);
            b.set_stop(s, k + 1);
            b.capture(s);
            prev = Side::Space(s);
        }
        b.set_segment(8);
        b.layer("classifier", LayerKind::Linear, prev, Side::Output, true);
    }
}
