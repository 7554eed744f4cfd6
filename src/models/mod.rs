//! Model definitions (ResNet-20 x w, VGG-11 x w, torchvision ResNet-18 and ResNet-50), their initialisation, weight bridge to
//! PyTorch-layout state dicts, parameter and FLOP counts, and output heads.

pub mod arch;
pub mod bridge;
pub mod compile;
pub mod head;
pub mod layers;
pub mod merge_spec;

use std::fmt;
use std::str::FromStr;

use burn::tensor::{Device, Tensor};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use serde::{Deserialize, Serialize};

use crate::error::{ModelError, WeightsProblem};
use crate::state::StateDict;
use arch::InitRule;
pub use layers::ForwardCtx;
pub use merge_spec::{spec_of, MergeSpec};

// One line per architecture: its model file (`models/<module>.rs`), module type and `Def`.
arch::architectures! {
    Resnet20 => resnet20::ResNet20, resnet20::Def;
    Vgg11 => vgg11::Vgg11, vgg11::Def;
    Resnet50 => resnet50::ResNet50, resnet50::Def;
    Resnet18 => resnet18::ResNet18, resnet18::Def;
}

impl Arch {
    /// Index of the output cut (number of forward segments): 4 for ResNet-20, 9 for VGG-11, 5
    /// for ResNet-18 and ResNet-50.
    pub fn output_cut(self) -> usize {
        self.def().output_cut()
    }

    /// The image preprocessing the architecture is trained and evaluated with: CIFAR for
    /// ResNet-20 / VGG-11, ImageNet for ResNet-18 / ResNet-50.
    pub fn preprocess(self) -> crate::data::Preprocess {
        self.def().preprocess()
    }

    /// The registered names, for messages: `resnet20, vgg11, resnet50 or resnet18`.
    pub fn names() -> String {
        let n: Vec<&str> = Arch::ALL.iter().map(|a| a.def().name()).collect();
        match n.split_last() {
            Some((last, rest)) if !rest.is_empty() => format!("{} or {last}", rest.join(", ")),
            _ => n.join(""),
        }
    }
}

impl fmt::Display for Arch {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.def().name())
    }
}

impl FromStr for Arch {
    type Err = ModelError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Arch::ALL
            .iter()
            .copied()
            .find(|a| a.def().name() == s)
            .ok_or_else(|| ModelError::UnknownArch {
                given: s.to_string(),
                names: Arch::names(),
            })
    }
}

/// Shape of a network: architecture, width multiplier and output dimension.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct NetConfig {
    /// Architecture.
    pub arch: Arch,
    /// Width: the multiplier w (>= 1) for ResNet-20 / VGG-11; the base width in channels for
    /// ResNet-50 (torchvision: 64).
    pub width: usize,
    /// Outputs of the final linear layer (embedding dim for text heads, class count for linear).
    pub out: usize,
}

impl NetConfig {
    /// Validates the configuration.
    ///
    /// # Errors
    /// [`ModelError::Width`] for width 0 or above the maximum, [`ModelError::NoOutputs`] for no
    /// output.
    pub fn validate(&self) -> Result<(), ModelError> {
        self.check("width")
    }

    /// [`NetConfig::validate`] naming the width as `what` (`--width`, or a manifest field).
    ///
    /// # Errors
    /// As [`NetConfig::validate`].
    pub fn check(&self, what: &str) -> Result<(), ModelError> {
        let def = self.arch.def();
        let err = |expected: String| ModelError::Width {
            what: what.to_string(),
            width: self.width,
            expected,
        };
        if self.width == 0 {
            return Err(err(if def.width_is_channels() {
                "the base width (channels of the stem; torchvision: 64) must be >= 1".into()
            } else {
                "the width multiplier must be >= 1".into()
            }));
        }
        let max = def.max_width();
        if self.width > max {
            return Err(err(format!(
                "widths above {max} are not supported for {}",
                self.arch
            )));
        }
        if self.out == 0 {
            return Err(ModelError::NoOutputs);
        }
        Ok(())
    }

    /// The width as users read it: `x4` (multiplier) or `base width 64` (ResNet-50).
    pub fn width_label(&self) -> String {
        if self.arch.def().width_is_channels() {
            format!("base width {}", self.width)
        } else {
            format!("x{}", self.width)
        }
    }

    /// Index of the output cut (number of segments): 4 for ResNet-20, 9 for VGG-11, 5 for
    /// ResNet-18 and ResNet-50.
    pub fn output_cut(&self) -> usize {
        self.arch.output_cut()
    }

    /// Side of the square input image in pixels: 32 for the CIFAR networks, 224 for ResNet-50
    /// (the side of [`NetConfig::preprocess`]).
    pub fn input_side(&self) -> usize {
        self.preprocess().side()
    }

    /// The image preprocessing the architecture is trained and evaluated with.
    pub fn preprocess(&self) -> crate::data::Preprocess {
        self.arch.preprocess()
    }

    /// Forward multiply-accumulates per input image of [`NetConfig::input_side`] (conv and
    /// linear layers; BN, ReLU, pooling and additions are not counted). Units: MACs per image.
    pub fn flops(&self) -> u64 {
        self.flops_segment(0, self.output_cut())
    }

    /// MACs per image of cut segment `from..to` (see [`Net::forward_segment`]).
    pub fn flops_segment(&self, from: usize, to: usize) -> u64 {
        let def = self.arch.def();
        (from..to)
            .map(|cut| def.flops_segment(self.width, self.out, cut))
            .sum()
    }
}

impl Net {
    /// Builds the module tree with all-zero weights (load a [`StateDict`] next).
    pub fn empty(cfg: &NetConfig, device: &Device) -> Self {
        Net::build(cfg.arch, cfg.width, cfg.out, device)
    }

    /// Builds the network and loads `state` into it, checking every name and shape.
    ///
    /// # Errors
    /// [`ModelError::Weights`] naming the first missing, mismatching or unknown tensor.
    pub fn from_state(
        cfg: &NetConfig,
        state: &StateDict,
        device: &Device,
    ) -> Result<Self, ModelError> {
        cfg.validate()?;
        let def = cfg.arch.def();
        let rename = |p: &mut [String]| def.torch_path(p);
        let (net, rep) = bridge::load_state(Net::empty(cfg, device), state, &rename);
        if let Some((n, e, f)) = rep.mismatched.first() {
            return Err(ModelError::weights(WeightsProblem::Shape {
                tensor: n.clone(),
                found: f.clone(),
                expected: format!(
                    "{e:?} for {} {} with {} outputs",
                    cfg.arch,
                    cfg.width_label(),
                    cfg.out
                ),
            }));
        }
        if let Some(n) = rep.missing.first() {
            return Err(ModelError::weights(WeightsProblem::Missing {
                tensor: n.clone(),
                missing: Some(rep.missing.len()),
            }));
        }
        if let Some(n) = rep.unused.first() {
            return Err(ModelError::weights(WeightsProblem::Unknown {
                tensor: n.clone(),
                arch: cfg.arch.to_string(),
                unknown: rep.unused.len(),
            }));
        }
        Ok(net)
    }

    /// Reads the weights back as a PyTorch-layout state dict.
    pub fn to_state(&self) -> StateDict {
        let def = self.arch().def();
        bridge::to_state(self, &|p: &mut [String]| def.torch_path(p))
    }

    /// The image preprocessing of this network's architecture ([`NetConfig::preprocess`]).
    pub fn preprocess(&self) -> crate::data::Preprocess {
        self.arch().preprocess()
    }

    /// Output cut index of this network.
    pub fn output_cut(&self) -> usize {
        self.arch().output_cut()
    }

    /// Full forward: `x: [batch, 3, side, side]` (normalised; side 32, or 224 for ResNet-50) -> `[batch, out]`.
    pub fn forward(&self, x: Tensor<4>, ctx: &mut ForwardCtx) -> Tensor<2> {
        let y = self.forward_segment(x, 0, self.output_cut(), ctx);
        let [b, o, _, _] = y.dims();
        y.reshape([b, o])
    }
}

/// Initial weights for `cfg` drawn from a ChaCha8 stream seeded with `seed`, in sorted tensor
/// name order, so every backend starts from the same bits.
///
/// ResNet-20 follows the reference (§1.3): Kaiming-normal (fan_in, gain sqrt 2) for conv and
/// linear weights, PyTorch defaults elsewhere (BN weight 1, bias 0, running mean 0 / var 1, linear
/// bias U(+-1/sqrt(fan_in))). VGG-11 uses PyTorch defaults (§1.4): weights and biases
/// U(+-1/sqrt(fan_in)). ResNet-50 follows torchvision: conv weights Kaiming-normal (fan_out,
/// gain sqrt 2), BN weight 1 / bias 0, `fc` PyTorch's default U(+-1/sqrt(fan_in)).
pub fn init_state(cfg: &NetConfig, seed: u64) -> StateDict {
    let device = Device::flex();
    let mut state = Net::empty(cfg, &device).to_state();
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    let rule = cfg.arch.def().init();
    let fan_in_of = |s: &StateDict, name: &str| -> usize {
        let base = name.rsplit_once('.').map(|(b, _)| b).unwrap_or("");
        let w = &s[&format!("{base}.weight")];
        w.row_len()
    };
    let names: Vec<String> = state.keys().cloned().collect();
    for name in names {
        let is_bn = state.contains_key(&format!(
            "{}.running_mean",
            name.rsplit_once('.').map(|(b, _)| b).unwrap_or("")
        ));
        let leaf = name.rsplit('.').next().unwrap_or("");
        let fan_in = if is_bn { 1 } else { fan_in_of(&state, &name) };
        let t = state.get_mut(&name).expect("name");
        let bound = 1.0 / (fan_in as f64).sqrt();
        match (is_bn, leaf) {
            (true, "weight") | (true, "running_var") => t.data.fill(1.0),
            (true, _) => t.data.fill(0.0),
            (false, "weight") if rule == InitRule::KaimingFanOutConvs && t.shape.len() == 4 => {
                let fan_out = t.shape[0] * t.shape[2] * t.shape[3];
                let std = (2.0 / fan_out as f64).sqrt();
                for v in t.data.iter_mut() {
                    *v = (normal(&mut rng) * std) as f32;
                }
            }
            (false, "weight") if rule == InitRule::KaimingFanIn => {
                let std = (2.0f64).sqrt() * bound;
                for v in t.data.iter_mut() {
                    *v = (normal(&mut rng) * std) as f32;
                }
            }
            _ => {
                for v in t.data.iter_mut() {
                    *v = rng.gen_range(-bound..bound) as f32;
                }
            }
        }
    }
    state
}

/// Standard normal draw (Box-Muller).
fn normal(rng: &mut ChaCha8Rng) -> f64 {
    let u1: f64 = rng.gen_range(f64::MIN_POSITIVE..1.0);
    let u2: f64 = rng.gen::<f64>();
    (-2.0 * u1.ln()).sqrt() * (2.0 * std::f64::consts::PI * u2).cos()
}

/// Number of float parameters of `cfg` (learnable only: BN running statistics excluded).
pub fn param_count(cfg: &NetConfig) -> usize {
    let state = Net::empty(cfg, &Device::flex()).to_state();
    state
        .iter()
        .filter(|(k, _)| !k.ends_with("running_mean") && !k.ends_with("running_var"))
        .map(|(_, t)| t.data.len())
        .sum()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::models::head::HeadSpec;
    use burn::tensor::TensorData;

    #[test]
    fn flops_match_hand_counts() {
        // ResNet-20 x1, 384 outputs: stem 3*16*9*32*32 = 442,368; stage 1: 6 convs 16->16 at
        // 32x32 = 6*2,359,296 = 14,155,776; stage 2: conv1 + shortcut 16->32 at 16x16 =
        // 2*1,179,648, five 32->32 at 16x16 = 5*2,359,296; stage 3 likewise at 8x8 = 2,359,296 +
        // 11,796,480; linear 64*384 = 24,576. Total 42,934,272 MACs.
        let r = NetConfig {
            arch: Arch::Resnet20,
            width: 1,
            out: 384,
        };
        assert_eq!(r.flops(), 42_934_272);
        // VGG-11 x1, 10 outputs: 3*64*9*1024 + 64*128*9*256 + 128*256*9*64 + 256*256*9*64
        // + 256*512*9*16 + 512*512*9*16 + 2*512*512*9*4 + 512*10 = 152,769,536
        let v = NetConfig {
            arch: Arch::Vgg11,
            width: 1,
            out: 10,
        };
        assert_eq!(
            v.flops(),
            1_769_472
                + 18_874_368
                + 18_874_368
                + 37_748_736
                + 18_874_368
                + 37_748_736
                + 2 * 9_437_184
                + 5_120
        );
        assert_eq!(v.flops(), 152_769_536);
        // widths scale quadratically (except the 3-channel stem / fixed outputs)
        let r4 = NetConfig {
            arch: Arch::Resnet20,
            width: 4,
            out: 384,
        };
        assert_eq!(
            r4.flops(),
            442_368 * 4 + (42_934_272 - 442_368 - 24_576) * 16 + 24_576 * 4
        );
    }

    /// torchvision's ResNet-50 at 224x224: 4,089,184,256 conv + fc MACs and 25,557,032
    /// parameters (both counted with PyTorch forward hooks on `torchvision.models.resnet50()`,
    /// torchvision 0.29.2).
    #[test]
    fn resnet50_matches_torchvision_counts() {
        let cfg = NetConfig {
            arch: Arch::Resnet50,
            width: 64,
            out: 1000,
        };
        assert_eq!(cfg.flops(), 4_089_184_256);
        assert_eq!(param_count(&cfg), 25_557_032);
        // a narrow copy runs end to end at 224x224 and at CIFAR size
        let small = NetConfig {
            arch: Arch::Resnet50,
            width: 4,
            out: 7,
        };
        let d = Device::flex();
        let net = Net::from_state(&small, &init_state(&small, 0), &d).unwrap();
        for side in [224, 32] {
            let x = Tensor::<4>::zeros([2, 3, side, side], &d);
            assert_eq!(net.forward(x, &mut ForwardCtx::default()).dims(), [2, 7]);
        }
    }

    #[test]
    fn output_shapes_and_parameter_counts() {
        let d = Device::flex();
        for (arch, out) in [(Arch::Resnet20, 384), (Arch::Vgg11, 5)] {
            let cfg = NetConfig {
                arch,
                width: 1,
                out,
            };
            let net = Net::from_state(&cfg, &init_state(&cfg, 0), &d).unwrap();
            let x = Tensor::<4>::zeros([3, 3, 32, 32], &d);
            assert_eq!(net.forward(x, &mut ForwardCtx::default()).dims(), [3, out]);
        }
        // ResNet-20 x1, 10-way linear head: convs 432 + 6*2,304 + (2*4,608 + 5*9,216)
        // + (2*18,432 + 5*36,864) = 290,736; BN gamma+beta 2*(16 + 6*16 + 7*32 + 7*64) = 1,568;
        // linear 64*10 + 10 = 650. Total 292,954.
        assert_eq!(
            param_count(&NetConfig {
                arch: Arch::Resnet20,
                width: 1,
                out: 10
            }),
            292_954
        );
    }

    #[test]
    fn text_head_logits_are_100_cosines() {
        let d = Device::flex();
        let head = HeadSpec::Text {
            dim: 2,
            source: "t".into(),
            embeddings: vec![vec![1.0, 0.0], vec![0.0, 1.0], vec![0.6, 0.8]],
        };
        // output (3, 4): cosines with rows 0, 2 = 0.6 and 0.6*0.6 + 0.8*0.8 = 1.0
        let y = Tensor::<2>::from_data(TensorData::new(vec![3.0f32, 4.0], [1, 2]), &d);
        let l = head
            .logits(y, &[0, 1], &[0, 2])
            .into_data()
            .convert::<f32>()
            .try_to_vec::<f32>()
            .unwrap();
        assert!(
            (l[0] - 60.0).abs() < 1e-4 && (l[1] - 100.0).abs() < 1e-4,
            "{l:?}"
        );
        // a linear head scores only the classes it has outputs for
        let y = Tensor::<2>::from_data(TensorData::new(vec![1.5f32, -2.0], [1, 2]), &d);
        let l = HeadSpec::Linear
            .logits(y, &[4, 7], &[7, 9])
            .into_data()
            .convert::<f32>()
            .try_to_vec::<f32>()
            .unwrap();
        assert_eq!(l, vec![-2.0, head::NO_LOGIT]);
    }
}
