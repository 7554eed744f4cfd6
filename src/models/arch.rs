//! What an architecture is to zipmerge: the [`Architecture`] trait every model file implements
//! (its facts, FLOPs, initialisation rule, merge-spec builder, CPU-engine program and how its
//! PyTorch state dicts look) and the `architectures!` macro that registers the model files:
//! it generates the [`super::Arch`] name enum, the [`super::Net`] module enum and their
//! dispatch, so adding an architecture is one file plus one registration line in
//! `models/mod.rs`.
//!
//! The contracts between the parts are checked at load and by tests: the spec covers every
//! float tensor exactly once ([`crate::models::MergeSpec::check_covers`]), the widths of each
//! space agree across its layers ([`crate::models::MergeSpec::check_widths`]), and the taps of the
//! forward pass match the spec's spaces in count, order and width
//! ([`crate::models::MergeSpec::check_taps`]); the engine's equality with burn and the lossless
//! permuted copy are tested (`tests/engine.rs`, `tests/merge_engine.rs`).

use crate::data::Preprocess;
use crate::engine::ProgramBuilder;
use crate::error::ModelError;

/// How conv and linear weights are initialised ([`super::init_state`]); BN layers always start
/// at weight 1, bias 0, running mean 0, running variance 1.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum InitRule {
    /// Every conv and linear weight Kaiming-normal (fan_in, gain sqrt 2); biases PyTorch's
    /// default (the ZipIt! ResNet-20, reference doc §1.3).
    KaimingFanIn,
    /// Conv weights Kaiming-normal (fan_out, gain sqrt 2), linear layers PyTorch's default
    /// (torchvision's ResNets).
    KaimingFanOutConvs,
    /// PyTorch's defaults: weights and biases U(+-1/sqrt(fan_in)) (VGG-11, reference doc §1.4).
    PytorchDefault,
}

/// The constant facts of an architecture ([`Architecture::facts`]).
#[derive(Clone, Copy, Debug)]
pub struct ArchFacts {
    /// The name on the command line and in manifests (`resnet20`).
    pub name: &'static str,
    /// Index of the output cut: the number of forward segments (`Net::forward_segment` cuts
    /// `0..=output_cut`).
    pub output_cut: usize,
    /// The image preprocessing it is trained and evaluated with.
    pub preprocess: Preprocess,
    /// Whether `width` is a base width in channels (torchvision's ResNets: 64) rather than a
    /// multiplier of the reference widths.
    pub width_is_channels: bool,
    /// The largest width accepted.
    pub max_width: usize,
    /// Its PyTorch parameter-name layout: `zipit` (the official ZipIt! classes) or
    /// `torchvision`.
    pub layout: &'static str,
    /// The PyTorch name of the final linear layer (`linear`, `fc`, `classifier`).
    pub head_layer: &'static str,
    /// The tensor the width is read from on import and its output channels per unit of width.
    pub width_probe: (&'static str, usize),
    /// How its weights are initialised.
    pub init: InitRule,
}

impl ArchFacts {
    /// The facts shared by torchvision's ResNets named `name` (ImageNet preprocessing, base
    /// width in channels up to 512, torchvision layout, `fc` head, width read off `conv1`,
    /// Kaiming fan-out convs; 4 stages, so output cut 5).
    pub const fn torchvision_resnet(name: &'static str) -> Self {
        Self {
            name,
            output_cut: 5,
            preprocess: Preprocess::IMAGENET,
            width_is_channels: true,
            max_width: 512,
            layout: "torchvision",
            head_layer: "fc",
            width_probe: ("conv1.weight", 1),
            init: InitRule::KaimingFanOutConvs,
        }
    }
}

/// One architecture zipmerge can train, merge, import and export. Implemented by a unit struct
/// in the architecture's model file and registered with `architectures!`.
pub trait Architecture: Sync {
    /// Its constant facts.
    fn facts(&self) -> ArchFacts;

    /// The name on the command line and in manifests.
    fn name(&self) -> &'static str {
        self.facts().name
    }

    /// Index of the output cut.
    fn output_cut(&self) -> usize {
        self.facts().output_cut
    }

    /// The image preprocessing.
    fn preprocess(&self) -> Preprocess {
        self.facts().preprocess
    }

    /// Whether `width` is a base width in channels.
    fn width_is_channels(&self) -> bool {
        self.facts().width_is_channels
    }

    /// The largest width accepted.
    fn max_width(&self) -> usize {
        self.facts().max_width
    }

    /// Its PyTorch parameter-name layout.
    fn layout(&self) -> &'static str {
        self.facts().layout
    }

    /// The PyTorch name of the final linear layer.
    fn head_layer(&self) -> &'static str {
        self.facts().head_layer
    }

    /// The tensor the width is read from on import and its channels per unit of width.
    fn width_probe(&self) -> (&'static str, usize) {
        self.facts().width_probe
    }

    /// How its weights are initialised.
    fn init(&self) -> InitRule {
        self.facts().init
    }

    /// Rewrites the path of one of its burn parameters (field names from the module root) into
    /// its PyTorch module path, in place; `gamma`/`beta` and the linear transpose are handled
    /// for every architecture by [`super::bridge`]. Default: the same path.
    fn torch_path(&self, _path: &mut [String]) {}

    /// Whether a PyTorch state dict (`has(name)`: the tensor exists) is of this architecture.
    fn detect(&self, has: &dyn Fn(&str) -> bool) -> bool;

    /// Multiply-accumulates per input image of cut segment `cut` (conv and linear layers) at
    /// `width` with `out` outputs.
    fn flops_segment(&self, width: usize, out: usize, cut: usize) -> u64;

    /// The CPU-engine program of each cut segment, mirroring `forward_segment` (the same taps
    /// in the same order, the same BN names), from the weights by PyTorch name.
    ///
    /// # Errors
    /// [`ModelError::Weights`] naming a missing tensor.
    fn program(&self, p: &ProgramBuilder<'_>) -> Result<Vec<Vec<crate::engine::Op>>, ModelError>;
}

/// Registers the model files: `Variant => module::Module, module::Def;` per architecture
/// declares `pub mod module;` (the file `models/module.rs`) and generates `Arch` (the names),
/// `Net` (the burn module enum), `Arch::ALL`, `Arch::def` and the dispatch of
/// `Net::forward_segment` and `Net::arch`.
macro_rules! architectures {
    ($($variant:ident => $module:ident :: $ty:ident, $def:path;)+) => {
        $(pub mod $module;)+

        /// The registered architectures (their names; [`Arch::def`] gives the facts).
        #[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
        #[serde(rename_all = "lowercase")]
        pub enum Arch {
            $(
                #[doc = concat!("`", stringify!($module), "` (see [`", stringify!($module), "`]).")]
                $variant,
            )+
        }

        impl Arch {
            /// Every registered architecture, in registration order.
            pub const ALL: &'static [Arch] = &[$(Arch::$variant),+];

            /// The architecture's facts and builders.
            pub fn def(self) -> &'static dyn $crate::models::arch::Architecture {
                match self {
                    $(Arch::$variant => &$def,)+
                }
            }
        }

        /// A network of any registered architecture (a burn module).
        #[derive(burn::module::Module, Debug)]
        #[allow(clippy::large_enum_variant)] // one value per loaded model; boxing buys nothing
        pub enum Net {
            $(
                #[doc = concat!("[`", stringify!($module), "::", stringify!($ty), "`].")]
                $variant($module::$ty),
            )+
        }

        impl Net {
            /// The module tree of `arch` with zero weights (each model type's `new`).
            pub fn build(
                arch: Arch,
                width: usize,
                out: usize,
                device: &burn::tensor::Device,
            ) -> Net {
                match arch {
                    $(Arch::$variant => Net::$variant($module::$ty::new(width, out, device)),)+
                }
            }

            /// Feeds the merge-spec builder from this module tree (each model type's `spec`):
            /// feature spaces, and the input and output space of every weight layer and BN.
            pub fn feed_spec(&self, b: &mut $crate::spec::SpecBuilder) {
                match self {
                    $(Net::$variant(m) => m.spec(b),)+
                }
            }

            /// Architecture of this network.
            pub fn arch(&self) -> Arch {
                match self {
                    $(Net::$variant(_) => Arch::$variant,)+
                }
            }

            /// Runs cut segment `from..to` (cuts as in each model file's `forward_segment`).
            /// The output cut is returned as `[batch, out, 1, 1]`.
            pub fn forward_segment(
                &self,
                x: burn::tensor::Tensor<4>,
                from: usize,
                to: usize,
                ctx: &mut $crate::models::ForwardCtx,
            ) -> burn::tensor::Tensor<4> {
                match self {
                    $(Net::$variant(m) => m.forward_segment(x, from, to, ctx),)+
                }
            }
        }
    };
}

pub(crate) use architectures;
