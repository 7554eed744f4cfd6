//! The CPU inference engine: the forward passes of statistics collection, BN reset, evaluation,
//! prediction and sweeps on the CPU, on channels-last (NHWC) activations with conv + BN +
//! residual add + ReLU fused per layer (kernels in [`kernels`]).
//!
//! A leaf runtime: it imports no model, checkpoint or system. Each architecture lays out its
//! programs with a [`ProgramBuilder`] from weights by PyTorch name, mirroring the module's
//! `forward_segment` (the same taps, in the same order, and the same BN names), and
//! `crate::models::compile` builds the [`CpuNet`]; the engine is checked against burn
//! (`tests/engine.rs`: logits, BN-reset statistics and covariances against burn-flex).
//! Training keeps burn's autodiff path. Whether a forward pass runs here is decided once per
//! plan by its `crate::system::runner::Runner` (the CLI turns the engine off with
//! `ZIPMERGE_ENGINE=burn`, for side-by-side measurements).
//!
//! BN in train mode (BN reset, reference doc §4.4) normalises with the batch's own statistics,
//! computed from the conv output in the same pass, and records the batch mean and unbiased
//! variance per BN layer, like [`crate::models::ForwardCtx::bn`].

pub mod kernels;
pub mod layerwise;
pub mod train;

use burn::tensor::{Device, Tensor, TensorData};

use crate::data::Preprocess;
use crate::error::{ModelError, WeightsProblem};
use crate::state::{NamedTensor, StateDict};
use kernels::{Conv, Epilogue};

/// BatchNorm epsilon (PyTorch's and burn's default, used by every model file).
pub(crate) const BN_EPS: f64 = 1e-5;

/// Channels-last activations of square images: `[batch, side, side, c]`, row-major (one row of
/// `c` values per pixel; rows ordered by image, then y, then x).
#[derive(Clone, Debug)]
pub struct Act {
    /// Images.
    pub batch: usize,
    /// Height = width in pixels (1 for the output cut).
    pub side: usize,
    /// Channels.
    pub c: usize,
    /// `batch * side * side * c` values.
    pub data: Vec<f32>,
}

impl Act {
    /// Normalised network input from u8 RGB images (`side*side*3` bytes each, HWC) with the
    /// mean/std of `prep`: the same values as [`crate::data::to_tensor`], channels last.
    pub fn from_images(images: &[&[u8]], prep: Preprocess) -> Self {
        let px = images.first().map_or(0, |i| i.len() / 3);
        let side = (px as f64).sqrt().round() as usize;
        let (mean, std) = (prep.mean(), prep.std());
        let mut data = vec![0f32; images.len() * px * 3];
        for (n, img) in images.iter().enumerate() {
            let out = &mut data[n * px * 3..(n + 1) * px * 3];
            for (p, (o, i)) in out.chunks_exact_mut(3).zip(img.chunks_exact(3)).enumerate() {
                let _ = p;
                for c in 0..3 {
                    o[c] = (i[c] as f32 / 255.0 - mean[c]) / std[c];
                }
            }
        }
        Self {
            batch: images.len(),
            side,
            c: 3,
            data,
        }
    }

    /// Rows (pixels of all images).
    pub fn rows(&self) -> usize {
        self.batch * self.side * self.side
    }

    /// The output cut as a `[batch, out]` burn tensor on `device`.
    pub fn to_logits(&self, device: &Device) -> Tensor<2> {
        Tensor::from_data(
            TensorData::new(
                self.data.clone(),
                [self.batch, self.c * self.side * self.side],
            ),
            device,
        )
    }

    /// NCHW burn tensor `[batch, c, side, side]` (tests and comparisons).
    pub fn to_nchw(&self, device: &Device) -> Tensor<4> {
        let hw = self.side * self.side;
        let mut v = vec![0f32; self.data.len()];
        for n in 0..self.batch {
            for p in 0..hw {
                for ch in 0..self.c {
                    v[(n * self.c + ch) * hw + p] = self.data[(n * hw + p) * self.c + ch];
                }
            }
        }
        Tensor::from_data(
            TensorData::new(v, [self.batch, self.c, self.side, self.side]),
            device,
        )
    }
}

/// A BatchNorm layer: PyTorch name (`layer1.0.bn1`), affine parameters and running statistics.
#[derive(Clone, Debug)]
struct Bn {
    name: String,
    gamma: Vec<f32>,
    beta: Vec<f32>,
    /// Running mean `[c]` (train mode updates it).
    mean: Vec<f32>,
    /// Running (unbiased) variance `[c]`.
    var: Vec<f32>,
    /// Eval-mode `gamma / sqrt(var + eps)`.
    scale: Vec<f32>,
    /// Eval-mode `beta - mean * scale`.
    shift: Vec<f32>,
}

/// `n / (n - 1)`: the biased variance of `n` values times this is the unbiased one (PyTorch's
/// running-variance rule; 1 for a single value).
pub(crate) fn unbias(n: usize) -> f64 {
    let n = n as f64;
    n / (n - 1.0).max(1.0)
}

/// BatchNorm as a per-channel affine map `y = x * scale + shift` for mean `m` and (biased)
/// variance `v`: `scale = gamma / sqrt(v + eps)`, `shift = beta - m * scale` (computed in f64;
/// running statistics in eval mode, batch statistics in train mode).
fn bn_affine(gamma: &[f32], beta: &[f32], m: &[f64], v: &[f64]) -> (Vec<f32>, Vec<f32>) {
    let scale: Vec<f32> = gamma
        .iter()
        .zip(v)
        .map(|(g, v)| (*g as f64 / (v + BN_EPS).sqrt()) as f32)
        .collect();
    let shift = beta
        .iter()
        .zip(m)
        .zip(&scale)
        .map(|((b, m), s)| (*b as f64 - m * *s as f64) as f32)
        .collect();
    (scale, shift)
}

/// Register holding an activation during a cut's program (0 = the cut's input and output).
pub type Slot = usize;

/// One step of a cut's program, made by [`ProgramBuilder`].
#[derive(Clone, Debug)]
pub struct Op(OpKind);

#[derive(Clone, Debug)]
#[allow(clippy::large_enum_variant)] // a few dozen ops per network; boxing buys nothing
enum OpKind {
    /// `dst = relu?(bn(conv(src)) + res)`.
    Conv {
        conv: Conv,
        bn: Option<Bn>,
        src: Slot,
        dst: Slot,
        res: Option<Slot>,
        relu: bool,
    },
    /// In-place max pooling of slot 0.
    MaxPool { k: usize, s: usize, p: usize },
    /// Feature-space tap of a slot.
    Tap(Slot),
    /// Slot 0 <- linear(mean over pixels(slot 0)); PyTorch name, weight `[out, in]`, bias.
    PoolLinear {
        name: String,
        weight: Vec<f32>,
        bias: Vec<f32>,
    },
}

/// Receives each tapped feature space `(space index, features)` without a copy.
pub type TapSink<'a> = Box<dyn FnMut(usize, &Act) + 'a>;

/// Mutable side channel of one engine forward pass (the engine's [`crate::models::ForwardCtx`]).
#[derive(Default)]
pub struct EngineCtx<'a> {
    /// BN in train mode: normalise with batch statistics and record them.
    pub record_bn: bool,
    /// Recorded `(prefix + name, mean [C], unbiased var [C])`, in forward order.
    pub bn_records: Vec<BnRecord>,
    /// Prefix of recorded names (`trunk:`, `head0:`).
    pub prefix: String,
    /// When `Some`, a copy of the features at every merge point, in feature-space order.
    pub taps: Option<Vec<Act>>,
    /// When `Some`, called with the features at every merge point instead of copying them.
    pub sink: Option<TapSink<'a>>,
    /// Taps seen so far in this pass (the space index given to `sink`).
    pub tapped: usize,
}

/// One BN layer's batch statistics of a forward pass in train mode: `(name, mean [c], biased
/// variance [c])`.
pub type BnRecord = (String, Vec<f32>, Vec<f32>);

/// A network compiled for the engine: one program per cut segment.
#[derive(Clone, Debug)]
pub struct CpuNet {
    arch: String,
    cuts: Vec<Vec<Op>>,
}

impl CpuNet {
    /// A network from the program of each cut segment (an architecture lays them out with a
    /// [`ProgramBuilder`]; `crate::models::compile` does it for every registered one), named
    /// by its architecture.
    pub fn new(arch: impl Into<String>, cuts: Vec<Vec<Op>>) -> Self {
        Self {
            arch: arch.into(),
            cuts,
        }
    }

    /// Name of the architecture the programs were laid out for (`resnet20`, ...).
    pub fn arch(&self) -> &str {
        &self.arch
    }

    /// Number of taps (feature spaces) produced by each cut segment.
    pub fn taps_per_cut(&self) -> Vec<usize> {
        self.cuts
            .iter()
            .map(|ops| ops.iter().filter(|o| matches!(o.0, OpKind::Tap(_))).count())
            .collect()
    }

    /// Runs cut segment `from..to` on `x` (`[batch, side, side, c]` at cut `from`); the output
    /// cut comes back as `[batch, 1, 1, out]`.
    pub fn run(&self, x: Act, from: usize, to: usize, ctx: &mut EngineCtx) -> Act {
        let mut regs: Vec<Option<Act>> = vec![Some(x), None, None, None];
        for ops in &self.cuts[from..to] {
            for op in ops {
                run_op(op, &mut regs, ctx);
            }
        }
        regs[0].take().expect("cut output in slot 0")
    }

    /// Full forward: normalised input -> `[batch, 1, 1, out]`.
    pub fn forward(&self, x: Act, ctx: &mut EngineCtx) -> Act {
        self.run(x, 0, self.cuts.len(), ctx)
    }
}

fn run_op(op: &Op, regs: &mut [Option<Act>], ctx: &mut EngineCtx) {
    match &op.0 {
        OpKind::Conv {
            conv,
            bn,
            src,
            dst,
            res,
            relu,
        } => {
            let x = regs[*src].as_ref().expect("conv input");
            let (batch, side) = (x.batch, x.side);
            let os = conv.out_side(side);
            let mut out = vec![0f32; batch * os * os * conv.cout];
            let resid = res.map(|r| regs[r].as_ref().expect("residual input"));
            match bn {
                Some(bn) if ctx.record_bn => {
                    kernels::conv_forward(conv, &x.data, batch, side, &mut out, &Epilogue::none());
                    let (mean, var_b) = kernels::channel_moments(&out, conv.cout);
                    let unbias = unbias(batch * os * os);
                    ctx.bn_records.push((
                        format!("{}{}", ctx.prefix, bn.name),
                        mean.iter().map(|&m| m as f32).collect(),
                        var_b.iter().map(|&v| (v * unbias) as f32).collect(),
                    ));
                    let (scale, shift) = bn_affine(&bn.gamma, &bn.beta, &mean, &var_b);
                    kernels::apply_epilogue(
                        &mut out,
                        conv.cout,
                        &Epilogue {
                            scale: Some(&scale),
                            shift: Some(&shift),
                            residual: resid.map(|r| r.data.as_slice()),
                            relu: *relu,
                        },
                    );
                }
                _ => {
                    let epi = Epilogue {
                        scale: bn.as_ref().map(|b| b.scale.as_slice()),
                        shift: bn.as_ref().map(|b| b.shift.as_slice()),
                        residual: resid.map(|r| r.data.as_slice()),
                        relu: *relu,
                    };
                    kernels::conv_forward(conv, &x.data, batch, side, &mut out, &epi);
                }
            }
            regs[*dst] = Some(Act {
                batch,
                side: os,
                c: conv.cout,
                data: out,
            });
        }
        OpKind::MaxPool { k, s, p } => {
            let x = regs[0].take().expect("pool input");
            let (data, side) = kernels::max_pool(&x.data, x.batch, x.side, x.c, *k, *s, *p);
            regs[0] = Some(Act { side, data, ..x });
        }
        OpKind::Tap(slot) => {
            let a = regs[*slot].as_ref().expect("tapped slot");
            if let Some(f) = ctx.sink.as_mut() {
                f(ctx.tapped, a);
            }
            if let Some(t) = ctx.taps.as_mut() {
                t.push(a.clone());
            }
            ctx.tapped += 1;
        }
        OpKind::PoolLinear { weight, bias, .. } => {
            let x = regs[0].take().expect("linear input");
            let y = kernels::pool_linear(&x.data, x.batch, x.side * x.side, x.c, weight, bias);
            regs[0] = Some(Act {
                batch: x.batch,
                side: 1,
                c: bias.len(),
                data: y,
            });
        }
    }
}

/// Lays out the programs of an architecture ([`crate::models::arch::Architecture::program`])
/// from a PyTorch-named state dict (names as in the model files).
pub struct ProgramBuilder<'a> {
    s: &'a StateDict,
}

impl<'a> ProgramBuilder<'a> {
    /// A builder over the weights `s` (PyTorch names and layouts).
    pub fn new(s: &'a StateDict) -> Self {
        Self { s }
    }

    fn get(&self, name: &str) -> Result<&NamedTensor, ModelError> {
        self.s.get(name).ok_or_else(|| {
            ModelError::weights(WeightsProblem::Missing {
                tensor: name.to_string(),
                missing: None,
            })
        })
    }

    fn conv(&self, name: &str, stride: usize, pad: usize, bias: bool) -> Result<Conv, ModelError> {
        let w = self.get(&format!("{name}.weight"))?;
        if w.shape.len() != 4 || w.shape[2] != w.shape[3] {
            return Err(ModelError::weights(WeightsProblem::Shape {
                tensor: format!("{name}.weight"),
                found: w.shape.clone(),
                expected: "a square conv kernel".into(),
            }));
        }
        let b = if bias {
            Some(self.get(&format!("{name}.bias"))?.data.clone())
        } else {
            None
        };
        Ok(Conv::from_torch(name, &w.data, &w.shape, stride, pad, b))
    }

    fn bn(&self, name: &str) -> Result<Bn, ModelError> {
        let g = &self.get(&format!("{name}.weight"))?.data;
        let b = &self.get(&format!("{name}.bias"))?.data;
        let m = &self.get(&format!("{name}.running_mean"))?.data;
        let v = &self.get(&format!("{name}.running_var"))?.data;
        let f64s = |t: &[f32]| t.iter().map(|&x| x as f64).collect::<Vec<f64>>();
        let (scale, shift) = bn_affine(g, b, &f64s(m), &f64s(v));
        Ok(Bn {
            name: name.to_string(),
            gamma: g.clone(),
            beta: b.clone(),
            mean: m.clone(),
            var: v.clone(),
            scale,
            shift,
        })
    }

    /// Slot 0 <- the linear layer `name` of the mean over pixels of slot 0 (the head).
    ///
    /// # Errors
    /// [`ModelError::Weights`] naming a missing tensor.
    pub fn linear(&self, name: &str) -> Result<Op, ModelError> {
        Ok(Op(OpKind::PoolLinear {
            name: name.to_string(),
            weight: self.get(&format!("{name}.weight"))?.data.clone(),
            bias: self.get(&format!("{name}.bias"))?.data.clone(),
        }))
    }

    /// `dst = relu?(bn(conv(src)) + res)`: conv `conv` (no bias, square kernel, `stride`,
    /// zero padding `pad`) and BN `bn`, fused.
    ///
    /// # Errors
    /// [`ModelError::Weights`] naming a missing or non-square tensor.
    #[allow(clippy::too_many_arguments)]
    pub fn conv_bn(
        &self,
        conv: &str,
        bn: &str,
        stride: usize,
        pad: usize,
        src: Slot,
        dst: Slot,
        res: Option<Slot>,
        relu: bool,
    ) -> Result<Op, ModelError> {
        Ok(Op(OpKind::Conv {
            conv: self.conv(conv, stride, pad, false)?,
            bn: Some(self.bn(bn)?),
            src,
            dst,
            res,
            relu,
        }))
    }

    /// Slot 0 <- relu(conv(slot 0) + bias): conv `name` with a bias and no BN (VGG-11).
    ///
    /// # Errors
    /// [`ModelError::Weights`] naming a missing or non-square tensor.
    pub fn conv_bias_relu(&self, name: &str, stride: usize, pad: usize) -> Result<Op, ModelError> {
        Ok(Op(OpKind::Conv {
            conv: self.conv(name, stride, pad, true)?,
            bn: None,
            src: 0,
            dst: 0,
            res: None,
            relu: true,
        }))
    }

    /// The ops of the BasicBlock `name` reading slot 0 (ResNet-20, reference doc §1.3;
    /// torchvision's ResNet-18): `conv1` (3x3, `stride`) + BN + ReLU into slot 1 and its tap,
    /// the projection shortcut `{name}.{field}.0` / `.1` (when the weights have one; zero
    /// padding `projection_pad`) into slot 2, then `conv2` + BN + residual + ReLU into slot 0.
    ///
    /// # Errors
    /// [`ModelError::Weights`] naming a missing tensor.
    pub fn basic_block(
        &self,
        name: &str,
        stride: usize,
        field: &str,
        projection_pad: usize,
    ) -> Result<Vec<Op>, ModelError> {
        let c = |k: &str| format!("{name}.{k}");
        let mut ops = vec![
            self.conv_bn(&c("conv1"), &c("bn1"), stride, 1, 0, 1, None, true)?,
            self.tap(1),
        ];
        let res = if self.has(&c(&format!("{field}.0.weight"))) {
            let (conv, bn) = (c(&format!("{field}.0")), c(&format!("{field}.1")));
            ops.push(self.conv_bn(&conv, &bn, stride, projection_pad, 0, 2, None, false)?);
            2
        } else {
            0
        };
        ops.push(self.conv_bn(&c("conv2"), &c("bn2"), 1, 1, 1, 0, Some(res), true)?);
        Ok(ops)
    }

    /// In-place max pooling of slot 0 (kernel `k`, stride `s`, padding `p`).
    pub fn max_pool(&self, k: usize, s: usize, p: usize) -> Op {
        Op(OpKind::MaxPool { k, s, p })
    }

    /// The next feature-space tap, of slot `slot`.
    pub fn tap(&self, slot: Slot) -> Op {
        Op(OpKind::Tap(slot))
    }

    /// Whether the state dict has tensor `name` (an optional shortcut).
    pub fn has(&self, name: &str) -> bool {
        self.s.contains_key(name)
    }
}

/// A `crate::system::System` compiled for the engine: the trunk and one network per head (multi-head).
#[derive(Clone, Debug)]
pub struct CpuSystem {
    trunk: CpuNet,
    heads: Vec<Option<CpuNet>>,
    stop_cut: usize,
    out_cut: usize,
}

impl CpuSystem {
    /// A multi-head network: the trunk up to cut `stop_cut`, then each head (or the trunk's
    /// features themselves for `None`) up to the output cut `out_cut`.
    pub fn new(trunk: CpuNet, heads: Vec<Option<CpuNet>>, stop_cut: usize, out_cut: usize) -> Self {
        Self {
            trunk,
            heads,
            stop_cut,
            out_cut,
        }
    }

    /// The trunk network (the whole network of a single model).
    pub fn trunk(&self) -> &CpuNet {
        &self.trunk
    }

    /// Final-layer outputs of every head (`[batch, 1, 1, out]` each), as
    /// `crate::system::System::forward_heads`; BN records are prefixed `trunk:` / `head{i}:`.
    pub fn forward_heads(&self, x: Act, ctx: &mut EngineCtx) -> Vec<Act> {
        ctx.prefix = "trunk:".into();
        let z = self.trunk.run(x, 0, self.stop_cut, ctx);
        self.heads
            .iter()
            .enumerate()
            .map(|(i, h)| {
                ctx.prefix = format!("head{i}:");
                match h {
                    Some(n) => n.run(z.clone(), self.stop_cut, self.out_cut, ctx),
                    None => z.clone(),
                }
            })
            .collect()
    }
}
