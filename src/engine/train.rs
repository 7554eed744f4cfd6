//! Training on the CPU engine: a compiled network ([`CpuNet`]) turned into trainable
//! parameters, a forward pass in train mode that keeps what backward needs (a tape of
//! activations in buffers reused across steps), the backward pass through every op of the
//! program ([`super::kernels::backward`]), and PyTorch's SGD with momentum fused into one pass
//! over the parameters.
//!
//! Semantics are PyTorch's (`torch.optim.SGD`, `nn.BatchNorm2d` in train mode):
//! - BN normalises with the batch mean and biased variance (eps 1e-5) and updates its running
//!   statistics with momentum 0.1 and the *unbiased* batch variance;
//! - SGD: `g = grad + wd * p`; `buf = g` on the first step, else `buf = m * buf + g`
//!   (dampening 0, no Nesterov); `p -= lr * buf`; weight decay on every parameter.
//!
//! The loss and the head's logits live above (`crate::train`): this runtime takes the
//! gradient of the loss with respect to the network output and returns nothing else.

use rayon::prelude::*;

use super::kernels::backward as bw;
use super::kernels::{self, Conv, Epilogue};
use super::{Act, CpuNet, OpKind, Slot, BN_EPS};
use crate::state::{NamedTensor, StateDict};

/// BatchNorm momentum of the running statistics (PyTorch's default).
pub const BN_MOMENTUM: f32 = 0.1;

/// One trainable tensor: PyTorch name, value in the engine's layout, gradient of the last
/// backward pass, SGD momentum buffer (`None` before the first step).
#[derive(Clone, Debug)]
pub struct Param {
    /// PyTorch tensor name (`layer1.0.conv1.weight`).
    pub name: String,
    /// PyTorch shape.
    pub shape: Vec<usize>,
    /// Values; conv weights in the engine's `[k*k*cin, cout]` layout, others as PyTorch's.
    pub value: Vec<f32>,
    /// `dL/dvalue` of the last backward pass (same layout).
    pub grad: Vec<f32>,
    /// Momentum buffer (same layout).
    pub momentum: Option<Vec<f32>>,
    /// A conv kernel, held in the engine's layout (PyTorch's `[cout, cin, k, k]` on export).
    pub conv_kernel: bool,
}

impl Param {
    /// One SGD step of this parameter from its `grad` (PyTorch's semantics, as
    /// [`TrainNet::sgd_step`]).
    pub fn sgd_update(&mut self, lr: f32, momentum: f32, weight_decay: f32) {
        let first = self.momentum.is_none();
        let buf = self
            .momentum
            .get_or_insert_with(|| vec![0.0; self.value.len()]);
        for ((v, g), m) in self.value.iter_mut().zip(&self.grad).zip(buf.iter_mut()) {
            let g = *g + weight_decay * *v;
            *m = if first { g } else { momentum * *m + g };
            *v -= lr * *m;
        }
    }

    /// `v` (this parameter's value or gradient) in PyTorch's layout.
    fn torch(&self, v: &[f32]) -> Vec<f32> {
        if self.conv_kernel {
            engine_to_torch(v, &self.shape)
        } else {
            v.to_vec()
        }
    }
}

#[derive(Clone, Debug)]
struct TrainBn {
    name: String,
    gamma: usize,
    beta: usize,
    running_mean: Vec<f32>,
    running_var: Vec<f32>,
}

#[derive(Clone, Debug)]
#[allow(clippy::large_enum_variant)] // a few dozen ops per network; boxing buys nothing
enum TrainOp {
    Conv {
        /// Geometry and name (no weights: [`TrainNet::params`] holds them).
        conv: Conv,
        weight: usize,
        bias: Option<usize>,
        bn: Option<TrainBn>,
        src: Slot,
        dst: Slot,
        res: Option<Slot>,
        relu: bool,
    },
    MaxPool {
        k: usize,
        s: usize,
        p: usize,
    },
    PoolLinear {
        weight: usize,
        bias: usize,
    },
}

/// What backward needs of one op, by tape index of the activations.
#[allow(clippy::large_enum_variant)] // one per op of a step; boxing buys nothing
enum Record {
    Conv {
        op: usize,
        /// The conv with the weights the forward ran (backward reuses it).
        conv: Conv,
        src: usize,
        res: Option<usize>,
        out: usize,
        /// Pre-BN conv output `[rows, cout]` (BN layers only).
        z: Option<Vec<f32>>,
        mean: Vec<f32>,
        invstd: Vec<f32>,
    },
    MaxPool {
        op: usize,
        src: usize,
        out: usize,
    },
    PoolLinear {
        op: usize,
        src: usize,
        out: usize,
    },
}

/// A network being trained on the engine (the whole program, input cut to output cut).
pub struct TrainNet {
    ops: Vec<TrainOp>,
    params: Vec<Param>,
    tape: Vec<Act>,
    records: Vec<Record>,
    free: Pool,
    winograd: bool,
    /// Whether [`Self::backward`] computes the input's gradient too (a segment fed by another).
    input_grad: bool,
    /// `dL/dinput` of the last backward pass (with `input_grad`).
    dinput: Option<Vec<f32>>,
}

impl TrainNet {
    /// The trainable form of `net` (weights, BN affine parameters and running statistics as
    /// compiled; taps are dropped).
    pub fn new(net: &CpuNet) -> Self {
        Self::segment(net, 0, net.cuts.len())
    }

    /// The trainable form of cut segment `from..to` of `net` (its input the activation at cut
    /// `from`, `[batch, side, side, c]`; its output the activation at cut `to`), as
    /// [`Self::new`].
    pub fn segment(net: &CpuNet, from: usize, to: usize) -> Self {
        let mut params = Vec::new();
        let mut add = |name: String, shape: Vec<usize>, value: Vec<f32>| {
            params.push(Param {
                conv_kernel: shape.len() == 4,
                name,
                shape,
                grad: vec![0.0; value.len()],
                value,
                momentum: None,
            });
            params.len() - 1
        };
        let mut ops = Vec::new();
        for op in net.cuts[from..to].iter().flatten() {
            match &op.0 {
                OpKind::Conv {
                    conv,
                    bn,
                    src,
                    dst,
                    res,
                    relu,
                } => {
                    let shape = vec![conv.cout, conv.cin, conv.k, conv.k];
                    let weight = add(format!("{}.weight", conv.name), shape, conv.weight.clone());
                    let bias = conv
                        .bias
                        .as_ref()
                        .map(|b| add(format!("{}.bias", conv.name), vec![b.len()], b.clone()));
                    let bn = bn.as_ref().map(|b| TrainBn {
                        name: b.name.clone(),
                        gamma: add(
                            format!("{}.weight", b.name),
                            vec![b.gamma.len()],
                            b.gamma.clone(),
                        ),
                        beta: add(
                            format!("{}.bias", b.name),
                            vec![b.beta.len()],
                            b.beta.clone(),
                        ),
                        running_mean: b.mean.clone(),
                        running_var: b.var.clone(),
                    });
                    // the op keeps the geometry; the weights live in `params`
                    let geometry = Conv {
                        weight: Vec::new(),
                        bias: None,
                        ..conv.clone()
                    };
                    ops.push(TrainOp::Conv {
                        conv: geometry,
                        weight,
                        bias,
                        bn,
                        src: *src,
                        dst: *dst,
                        res: *res,
                        relu: *relu,
                    });
                }
                OpKind::MaxPool { k, s, p } => ops.push(TrainOp::MaxPool {
                    k: *k,
                    s: *s,
                    p: *p,
                }),
                OpKind::Tap(_) => {}
                OpKind::PoolLinear { name, weight, bias } => {
                    let out = bias.len();
                    let c = weight.len() / out.max(1);
                    let w = add(format!("{name}.weight"), vec![out, c], weight.clone());
                    let b = add(format!("{name}.bias"), vec![out], bias.clone());
                    ops.push(TrainOp::PoolLinear { weight: w, bias: b });
                }
            }
        }
        Self {
            ops,
            params,
            tape: Vec::new(),
            records: Vec::new(),
            free: Pool::default(),
            winograd: true,
            input_grad: false,
            dinput: None,
        }
    }

    /// The same network with [`Self::backward`] also computing `dL/dinput`
    /// ([`Self::take_input_grad`]): a segment whose input comes from another trainable one.
    pub fn with_input_grad(mut self) -> Self {
        self.input_grad = true;
        self
    }

    /// `dL/dinput` of the last backward pass (`[batch, side, side, c]` as the input), with
    /// [`Self::with_input_grad`]; `None` otherwise or when the input received no gradient.
    pub fn take_input_grad(&mut self) -> Option<Vec<f32>> {
        self.dinput.take()
    }

    /// Buffers held for reuse by the next steps, and their total capacity in values (the
    /// memory held): bounded over a run (a step takes back what the previous one handed in).
    pub fn pooled(&self) -> (usize, usize) {
        (
            self.free.bufs.len(),
            self.free.bufs.iter().map(Vec::capacity).sum(),
        )
    }

    /// The output activation of the last [`Self::forward`] (its geometry and values).
    pub fn output(&self) -> Option<&Act> {
        self.tape.last()
    }

    /// The same network with its 3x3 convs computed without Winograd (im2col / direct
    /// products, forward and backward): slower, but its rounding is that of a plain
    /// convolution, so comparisons with another implementation are not disturbed by ReLU masks
    /// flipped on pre-activations within Winograd's rounding (~1e-5 relative) of zero.
    pub fn without_winograd(mut self) -> Self {
        self.winograd = false;
        for op in &mut self.ops {
            if let TrainOp::Conv { conv, .. } = op {
                conv.winograd = None;
            }
        }
        self
    }

    /// The trainable parameters, in forward order.
    pub fn params(&self) -> &[Param] {
        &self.params
    }

    /// Mutable parameters (restoring momentum buffers on `--resume`).
    pub fn params_mut(&mut self) -> &mut [Param] {
        &mut self.params
    }

    fn recycle(&mut self) {
        for a in self.tape.drain(..) {
            self.free.put(a.data);
        }
        for r in self.records.drain(..) {
            if let Record::Conv { z: Some(z), .. } = r {
                self.free.put(z);
            }
        }
        self.free.trim();
    }

    /// Forward pass in train mode on `x: [batch, side, side, 3]`: BN with batch statistics
    /// (running statistics updated, PyTorch's rule), the tape kept for [`Self::backward`].
    /// Returns the output activation's values (row-major; `[batch, out]` for a whole network).
    pub fn forward(&mut self, x: Act) -> Vec<f32> {
        self.recycle();
        self.tape.push(x);
        let mut regs: [usize; 4] = [0, usize::MAX, usize::MAX, usize::MAX];
        for i in 0..self.ops.len() {
            let mut running = None;
            match &self.ops[i] {
                TrainOp::Conv {
                    conv,
                    weight,
                    bias,
                    bn,
                    src,
                    dst,
                    res,
                    relu,
                } => {
                    let (src_i, res_i) = (regs[*src], res.map(|r| regs[r]));
                    let (batch, side) = (self.tape[src_i].batch, self.tape[src_i].side);
                    let os = conv.out_side(side);
                    let rows = batch * os * os;
                    let conv = conv.with_weights(
                        self.params[*weight].value.clone(),
                        bias.map(|b| self.params[b].value.clone()),
                    );
                    let mut out = self.free.take(rows * conv.cout);
                    let mut z = bn.as_ref().map(|_| self.free.take(rows * conv.cout));
                    let x = &self.tape[src_i].data;
                    let resid = res_i.map(|r| self.tape[r].data.as_slice());
                    let (mut mean, mut invstd) = (Vec::new(), Vec::new());
                    match (bn, z.as_mut()) {
                        (Some(b), Some(z)) => {
                            kernels::conv_forward(&conv, x, batch, side, z, &Epilogue::none());
                            let (m, v) = kernels::channel_moments(z, conv.cout);
                            let gamma = &self.params[b.gamma].value;
                            let beta = &self.params[b.beta].value;
                            let (scale, shift) = super::bn_affine(gamma, beta, &m, &v);
                            kernels::apply_epilogue_from(
                                z,
                                &mut out,
                                conv.cout,
                                &Epilogue {
                                    scale: Some(&scale),
                                    shift: Some(&shift),
                                    residual: resid,
                                    relu: *relu,
                                },
                            );
                            invstd = v
                                .iter()
                                .map(|v| (1.0 / (v + BN_EPS).sqrt()) as f32)
                                .collect();
                            mean = m.iter().map(|&m| m as f32).collect();
                            running = Some((m, v, rows));
                        }
                        _ => {
                            let epi = Epilogue {
                                scale: None,
                                shift: None,
                                residual: resid,
                                relu: *relu,
                            };
                            kernels::conv_forward(&conv, x, batch, side, &mut out, &epi);
                        }
                    }
                    let c = conv.cout;
                    self.tape.push(Act {
                        batch,
                        side: os,
                        c,
                        data: out,
                    });
                    let out_i = self.tape.len() - 1;
                    self.records.push(Record::Conv {
                        op: i,
                        conv,
                        src: src_i,
                        res: res_i,
                        out: out_i,
                        z,
                        mean,
                        invstd,
                    });
                    regs[*dst] = out_i;
                }
                TrainOp::MaxPool { k, s, p } => {
                    let x = &self.tape[regs[0]];
                    let (data, side) = kernels::max_pool(&x.data, x.batch, x.side, x.c, *k, *s, *p);
                    let a = Act {
                        batch: x.batch,
                        side,
                        c: x.c,
                        data,
                    };
                    self.tape.push(a);
                    let out = self.tape.len() - 1;
                    self.records.push(Record::MaxPool {
                        op: i,
                        src: regs[0],
                        out,
                    });
                    regs[0] = out;
                }
                TrainOp::PoolLinear { weight, bias } => {
                    let x = &self.tape[regs[0]];
                    let (w, b) = (&self.params[*weight].value, &self.params[*bias].value);
                    let y = kernels::pool_linear(&x.data, x.batch, x.side * x.side, x.c, w, b);
                    let a = Act {
                        batch: x.batch,
                        side: 1,
                        c: b.len(),
                        data: y,
                    };
                    self.tape.push(a);
                    let out = self.tape.len() - 1;
                    self.records.push(Record::PoolLinear {
                        op: i,
                        src: regs[0],
                        out,
                    });
                    regs[0] = out;
                }
            }
            if let Some((m, v, rows)) = running {
                self.update_running(i, &m, &v, rows);
            }
        }
        self.tape[regs[0]].data.clone()
    }

    /// PyTorch's running-statistics update of the BN of op `i` from the batch mean `m` and
    /// biased variance `v` over `rows` values per channel.
    fn update_running(&mut self, i: usize, m: &[f64], v: &[f64], rows: usize) {
        if let TrainOp::Conv { bn: Some(b), .. } = &mut self.ops[i] {
            let unbias = super::unbias(rows);
            let k = BN_MOMENTUM;
            for (r, m) in b.running_mean.iter_mut().zip(m) {
                *r = (1.0 - k) * *r + k * *m as f32;
            }
            for (r, v) in b.running_var.iter_mut().zip(v) {
                *r = (1.0 - k) * *r + k * (*v * unbias) as f32;
            }
        }
    }

    /// Backward pass of the last [`Self::forward`] from `dout = dL/doutput` (the output's
    /// shape: `[batch, out]` for a whole network): fills every parameter's `grad` (and the
    /// input's gradient with [`Self::with_input_grad`]).
    pub fn backward(&mut self, dout: Vec<f32>) {
        let mut d: Vec<Option<Vec<f32>>> = (0..self.tape.len()).map(|_| None).collect();
        let last = self.tape.len() - 1;
        d[last] = Some(dout);
        let records = std::mem::take(&mut self.records);
        for rec in records.iter().rev() {
            match rec {
                Record::PoolLinear { op, src, out } => {
                    let TrainOp::PoolLinear { weight, bias } = &self.ops[*op] else {
                        unreachable!("record kinds follow op kinds")
                    };
                    let Some(dy) = d[*out].take() else { continue };
                    let x = &self.tape[*src];
                    let (dx, dw, db) = bw::pool_linear_backward(
                        &x.data,
                        x.batch,
                        x.side * x.side,
                        x.c,
                        &self.params[*weight].value,
                        &dy,
                    );
                    self.params[*weight].grad = dw;
                    self.params[*bias].grad = db;
                    accumulate(&mut d[*src], dx);
                }
                Record::MaxPool { op, src, out } => {
                    let TrainOp::MaxPool { k, s, p } = self.ops[*op] else {
                        unreachable!("record kinds follow op kinds")
                    };
                    let Some(dy) = d[*out].take() else { continue };
                    let x = &self.tape[*src];
                    let dx = bw::max_pool_backward(&x.data, &dy, x.batch, x.side, x.c, k, s, p);
                    accumulate(&mut d[*src], dx);
                }
                Record::Conv {
                    op,
                    conv,
                    src,
                    res,
                    out,
                    z,
                    mean,
                    invstd,
                } => {
                    let TrainOp::Conv {
                        weight,
                        bias,
                        bn,
                        relu,
                        ..
                    } = &self.ops[*op]
                    else {
                        unreachable!("record kinds follow op kinds")
                    };
                    let Some(mut g) = d[*out].take() else {
                        continue;
                    };
                    let cout = conv.cout;
                    let y = relu.then(|| self.tape[*out].data.as_slice());
                    let zb = bn.as_ref().and(z.as_deref());
                    // ReLU mask, residual fan-out and BN's sums in one pass over g
                    let sums = match res.map(|r| &mut d[r]) {
                        None => bw::mask_residual_sums(&mut g, y, bw::ResidualGrad::None, zb, cout),
                        Some(Some(acc)) => {
                            bw::mask_residual_sums(&mut g, y, bw::ResidualGrad::Add(acc), zb, cout)
                        }
                        Some(slot) => {
                            let mut copy = self.free.take(g.len());
                            let sums = bw::mask_residual_sums(
                                &mut g,
                                y,
                                bw::ResidualGrad::Copy(&mut copy),
                                zb,
                                cout,
                            );
                            *slot = Some(copy);
                            sums
                        }
                    };
                    if let Some(bi) = bias {
                        // sum g over rows, from the same pass
                        self.params[*bi].grad = sums.0.iter().map(|&v| v as f32).collect();
                    }
                    if let (Some(b), Some(z)) = (bn, z) {
                        let gamma = &self.params[b.gamma].value;
                        let (dgamma, dbeta) = bw::bn_backward(&mut g, z, mean, invstd, gamma, sums);
                        self.params[b.gamma].grad = dgamma;
                        self.params[b.beta].grad = dbeta;
                    }
                    let x = &self.tape[*src];
                    self.params[*weight].grad =
                        bw::conv_backward_weight(conv, &x.data, x.batch, x.side, &g, self.winograd);
                    if *src != 0 || self.input_grad {
                        // dx = conv^T(g) + the gradient the input already has, in one pass
                        let mut dx = self.free.take(x.data.len());
                        let prev = d[*src].take();
                        bw::conv_backward_data(
                            conv,
                            &g,
                            x.batch,
                            x.side,
                            &mut dx,
                            prev.as_deref(),
                            self.winograd,
                        );
                        if let Some(p) = prev {
                            self.free.put(p);
                        }
                        d[*src] = Some(dx);
                    }
                    self.free.put(g);
                }
            }
        }
        self.records = records;
        self.dinput = if self.input_grad { d[0].take() } else { None };
    }

    /// One SGD step with PyTorch's semantics (see the module docs) on every parameter, fused
    /// into one pass: `g = grad + wd * p`, `buf = g` (first step) or `momentum * buf + g`,
    /// `p -= lr * buf`.
    pub fn sgd_step(&mut self, lr: f32, momentum: f32, weight_decay: f32) {
        self.params
            .par_iter_mut()
            .for_each(|p| p.sgd_update(lr, momentum, weight_decay));
    }

    /// Writes the trained tensors into `state` (PyTorch names and layouts: conv weights back to
    /// `[cout, cin, k, k]`, BN running statistics included); other entries are kept.
    pub fn write_state(&self, state: &mut StateDict) {
        for op in &self.ops {
            if let TrainOp::Conv { bn: Some(b), .. } = op {
                for (field, v) in [
                    ("running_mean", &b.running_mean),
                    ("running_var", &b.running_var),
                ] {
                    let t = NamedTensor {
                        shape: vec![v.len()],
                        data: v.clone(),
                    };
                    state.insert(format!("{}.{field}", b.name), t);
                }
            }
        }
        for p in &self.params {
            let t = NamedTensor {
                shape: p.shape.clone(),
                data: p.torch(&p.value),
            };
            state.insert(p.name.clone(), t);
        }
    }

    /// Gradients by PyTorch name and layout (tests and comparisons).
    pub fn grads_torch(&self) -> Vec<(String, Vec<f32>)> {
        self.params
            .iter()
            .map(|p| (p.name.clone(), p.torch(&p.grad)))
            .collect()
    }
}

/// A conv weight `[k*k*cin, cout]` (engine layout) as PyTorch's `[cout, cin, k, k]`.
fn engine_to_torch(w: &[f32], shape: &[usize]) -> Vec<f32> {
    let (cout, cin, k) = (shape[0], shape[1], shape[2]);
    let mut t = vec![0f32; w.len()];
    for co in 0..cout {
        for ci in 0..cin {
            for ky in 0..k {
                for kx in 0..k {
                    t[((co * cin + ci) * k + ky) * k + kx] =
                        w[((ky * k + kx) * cin + ci) * cout + co];
                }
            }
        }
    }
    t
}

fn accumulate(slot: &mut Option<Vec<f32>>, v: Vec<f32>) {
    match slot {
        Some(a) => bw::add_into(a, &v),
        None => *slot = Some(v),
    }
}

/// Buffers reused across steps. A step hands back more buffers than it takes (the caller's
/// input, the head's input gradient, fresh gradients): [`Pool::trim`] keeps as many as the last
/// step took, the largest, so the pool stays bounded over a run (unbounded, it grew by ~3
/// buffers a step: 24 GB after 17 epochs at ResNet-20 x4, killed by the OOM killer).
#[derive(Default)]
struct Pool {
    bufs: Vec<Vec<f32>>,
    taken: usize,
}

impl Pool {
    /// A buffer of `len` values (stale contents: the caller writes every value): the held one
    /// of the smallest capacity at least `len`, set to `len` values, or a new one. Capacity,
    /// not length, decides: a buffer handed out truncated and handed back short still serves
    /// a longer request without reallocating.
    fn take(&mut self, len: usize) -> Vec<f32> {
        self.taken += 1;
        let best = (0..self.bufs.len())
            .filter(|&i| self.bufs[i].capacity() >= len)
            .min_by_key(|&i| self.bufs[i].capacity());
        match best {
            Some(i) => {
                let mut b = self.bufs.swap_remove(i);
                // within capacity: no reallocation; zeros written only past the current length
                b.resize(len, 0.0);
                b
            }
            None => vec![0.0; len],
        }
    }

    /// Hands a buffer back.
    fn put(&mut self, b: Vec<f32>) {
        self.bufs.push(b);
    }

    /// Between steps: keeps the largest buffers, as many as the last step took.
    fn trim(&mut self) {
        if self.taken > 0 && self.bufs.len() > self.taken {
            self.bufs
                .sort_unstable_by_key(|b| std::cmp::Reverse(b.capacity()));
            self.bufs.truncate(self.taken);
        }
        self.taken = 0;
    }
}
