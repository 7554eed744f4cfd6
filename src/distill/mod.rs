//! Merging by multi-teacher distillation with memory replay (SAM-CLIP, Wang et al., 2024, §3;
//! reference doc `merging-methods-reference.md`, SAM-CLIP): a student (a zipped, partially
//! zipped or single model) learns to reproduce each teacher's head outputs on that teacher's
//! own images, every batch mixing the teachers' domains ([`mix`]), first with only the layers
//! after the stop trainable (the head stage), then the whole network with the trunk at a lower
//! rate.
//!
//! Losses ([`loss`]): for text heads the cosine distance of the output embeddings (SAM-CLIP's
//! CLIP loss), for linear heads `T^2 KL` of the temperature-scaled distributions; or the
//! teachers' joint distribution ([`DistillLoss::Joint`]). Optimiser: AdamW (as SAM-CLIP) or SGD
//! ([`Optimizer`]); BN in train mode (batch statistics, running statistics updated). Runs on burn's autodiff (the CPU
//! training engine of issue 23 does not exist yet); the teachers run on the CPU engine.

pub mod loss;
pub mod mix;

use burn::module::{Module, ModuleVisitor, Param, ParamId};
use burn::optim::decay::WeightDecayConfig;
use burn::optim::momentum::MomentumConfig;
use burn::optim::{AdamWConfig, GradientsParams, SgdConfig};
use burn::tensor::{Device, Tensor, TensorData};
use serde::{Deserialize, Serialize};

use crate::data::augment::augment_for;
use crate::data::{to_tensor, ImageSet};
use crate::engine::{Act, CpuSystem, EngineCtx};
use crate::models::head::HeadSpec;
use crate::models::{ForwardCtx, Net};
use crate::state::StateDict;

/// The optimiser of a distillation.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Optimizer {
    /// AdamW (betas 0.9 / 0.999, eps 1e-5, decoupled weight decay), as SAM-CLIP.
    AdamW,
    /// SGD, momentum 0.9, weight decay on every parameter (PyTorch semantics, as `train`).
    Sgd,
}

/// What the student is taught.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum DistillLoss {
    /// SAM-CLIP: each teacher's outputs on its own images only (text heads: cosine distance of
    /// the embeddings; linear heads: `T^2 KL` of its classes' distribution). Keeps each task;
    /// says nothing about telling one task's classes from another's.
    Embedding,
    /// The teachers' ensemble over the union of their classes: every teacher scores every
    /// image of the batch, each class's logit from the (first) teacher trained on it (text
    /// heads `100 cos`, as the ensemble's joint rule), and the student's logits over the same
    /// classes learn that distribution (`T^2 KL`): joint accuracy is what it trains.
    Joint,
}

/// BN handling during distillation.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum BnHandling {
    /// Batch statistics while training (running statistics updated), a BN reset at the end.
    Train,
    /// The student's running statistics throughout, kept as they are (no reset).
    Frozen,
}

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

    /// The weights as PyTorch-layout state dicts: the trunk, then each head network.
    pub fn to_states(&self) -> (StateDict, Vec<StateDict>) {
        (
            self.trunk.to_state(),
            self.heads.iter().map(Net::to_state).collect(),
        )
    }
}

/// One teacher as the loop sees it: a compiled single model, its head kind, and where its
/// outputs are in the student's.
pub struct Teacher {
    /// The teacher network.
    pub net: TeacherNet,
    /// Its head kind.
    pub head: HeadSpec,
    /// The student head that learns from it.
    pub student_head: usize,
    /// Linear heads: the student head's output columns of the teacher's classes, in the
    /// teacher's order (text heads compare whole embeddings).
    pub columns: Vec<usize>,
    /// The teacher's classes, in its output order.
    pub classes: Vec<usize>,
}

/// Where a teacher runs.
pub enum TeacherNet {
    /// On the CPU engine (the default: fastest).
    Engine(CpuSystem),
    /// Through burn's forward on a plain device (`ZIPMERGE_ENGINE=burn`; the student's own
    /// kernels).
    Burn(Box<(crate::system::System, Device)>),
}

impl TeacherNet {
    /// The final-layer outputs of `images` (`[images, dim]`, row-major) and `dim`.
    pub fn outputs(&self, images: &[&[u8]], prep: crate::data::Preprocess) -> (Vec<f32>, usize) {
        let n = images.len().max(1);
        let data = match self {
            TeacherNet::Engine(c) => {
                c.forward_heads(Act::from_images(images, prep), &mut EngineCtx::default())
                    .remove(0)
                    .data
            }
            TeacherNet::Burn(b) => {
                b.0.forward_heads(to_tensor(images, prep, &b.1), &mut ForwardCtx::default())
                    .remove(0)
                    .into_data()
                    .convert::<f32>()
                    .try_to_vec::<f32>()
                    .unwrap_or_default()
            }
        };
        let dim = data.len() / n;
        (data, dim)
    }
}

/// Settings of a distillation run (recorded in the report; a resumed run must match).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct DistillOptions {
    /// Epochs of the head stage (only the layers after the stop train).
    pub head_epochs: usize,
    /// Epochs of the full stage (everything trains).
    pub epochs: usize,
    /// Images per batch (all domains together).
    pub batch_size: usize,
    /// Learning rate of the heads; the trunk's is `lr * trunk_lr_mult` in the full stage.
    pub lr: f64,
    /// Trunk learning-rate multiplier of the full stage.
    pub trunk_lr_mult: f64,
    /// The optimiser.
    pub optimizer: Optimizer,
    /// Weight decay, every parameter (AdamW's decoupled; SGD's added to the gradient).
    pub weight_decay: f64,
    /// What the student is taught.
    pub loss: DistillLoss,
    /// Temperature of the KL losses.
    pub temperature: f64,
    /// Per-teacher share of each batch.
    pub mix: Vec<f64>,
    /// Per-teacher images per batch (from `mix`).
    pub counts: Vec<usize>,
    /// Share of the first teacher's images kept (its replay memory), in (0, 1].
    pub replay_frac: f64,
    /// Training augmentation (flip + crop) of the student's and teachers' inputs.
    pub augment: bool,
    /// Seed of the draws and augmentation.
    pub seed: u64,
}

/// One epoch of a distillation run.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct DistillEpoch {
    /// 1-based epoch over both stages.
    pub epoch: usize,
    /// `heads` or `all`.
    pub stage: String,
    /// Mean loss per teacher on its images of the epoch.
    pub loss: Vec<f64>,
    /// Learning rate of the heads at the epoch's start.
    pub lr: f64,
    /// Images the student saw in the epoch.
    pub images: usize,
    /// Seconds of the epoch.
    pub seconds: f64,
}

/// What the loop reports as it goes.
pub trait DistillObserver {
    /// Start of an epoch of `steps` steps.
    fn epoch_start(&mut self, _epoch: usize, _stage: &str, _steps: usize) {}
    /// After each step: the running mean loss per teacher.
    fn step(&mut self, _loss: &[f64]) {}
    /// End of an epoch.
    fn epoch_end(&mut self, _e: &DistillEpoch) {}
}

/// Float parameter ids of a module with their ranks, in visiting order.
fn param_ranks<M: Module>(m: &M) -> Vec<(ParamId, usize)> {
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
fn take_grads(from: &mut GradientsParams, ids: &[(ParamId, usize)]) -> GradientsParams {
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

/// Learning rate of the heads at `epoch` (0-based over both stages, `t` its fraction done): the
/// head stage at `lr`, the full stage decaying linearly from `lr` to 0.
pub fn lr_at(o: &DistillOptions, epoch: usize, t: f64) -> f64 {
    if epoch < o.head_epochs {
        o.lr
    } else {
        let done = (epoch - o.head_epochs) as f64 + t;
        o.lr * (1.0 - done / o.epochs.max(1) as f64).max(0.0)
    }
}

/// The images of one step: per teacher, the (augmented) stored images of its positions.
fn batch_images(
    set: &ImageSet,
    picks: &[Vec<usize>],
    augment: bool,
    rng: &mut rand_chacha::ChaCha8Rng,
) -> Vec<Vec<u8>> {
    let nb = set.prep.side().pow(2) * 3;
    picks
        .iter()
        .flatten()
        .map(|&i| {
            if augment {
                let mut out = vec![0u8; nb];
                augment_for(set.prep, set.side, set.image(i), &mut out, rng);
                out
            } else {
                set.image(i).to_vec()
            }
        })
        .collect()
}

/// Per teacher, its summed loss over its image count (0 images: 0).
fn means(sums: &[f64], counts: &[usize]) -> Vec<f64> {
    sums.iter()
        .zip(counts)
        .map(|(s, c)| s / (*c).max(1) as f64)
        .collect()
}

/// The value of a one-element tensor.
fn scalar(x: Tensor<1>) -> f64 {
    x.into_data()
        .convert::<f64>()
        .try_to_vec::<f64>()
        .unwrap_or_default()
        .first()
        .copied()
        .unwrap_or(0.0)
}

/// [`DistillLoss::Joint`]'s student logits and teacher target over the union of the teachers'
/// classes (ascending), for every image of the batch: the student's `[batch, classes]` from
/// its heads (each class from the first head holding it); the target `[batch, classes]`
/// probabilities of the teachers' ensemble as its joint rule reads it (reference doc §5, quirk
/// 13: per-task softmax): each teacher's softmax over its classes at temperature `T`, divided
/// by the number of teachers (each class from the first teacher trained on it, every teacher
/// run on every image).
fn joint_logits(
    teachers: &[Teacher],
    student_heads: &[(HeadSpec, Vec<usize>)],
    outs: &[Tensor<2>],
    refs: &[&[u8]],
    prep: crate::data::Preprocess,
    temperature: f64,
    device: &Device,
) -> (Tensor<2>, Tensor<2>) {
    let mut classes: Vec<usize> = teachers.iter().flat_map(|t| t.classes.clone()).collect();
    classes.sort_unstable();
    classes.dedup();
    let b = refs.len();
    let c = classes.len();
    let mut target = vec![0f32; b * c];
    let mut filled = vec![false; c];
    for t in teachers {
        let (data, dim) = t.net.outputs(refs, prep);
        let y = Tensor::<2>::from_data(TensorData::new(data, [b, dim]), &Device::flex());
        let l = crate::eval::runner::rows(burn::tensor::activation::softmax(
            t.head.logits(y, &t.classes, &t.classes) / temperature,
            1,
        ));
        let share = 1.0 / teachers.len() as f32;
        for (j, cls) in t.classes.iter().enumerate() {
            let col = classes.binary_search(cls).expect("a teacher class");
            if filled[col] {
                continue;
            }
            filled[col] = true;
            for (n, r) in l.iter().enumerate() {
                target[n * c + col] = r[j] * share;
            }
        }
    }
    // per student head, its logits over the joint classes it scores (one product per head),
    // then the joint columns in class order
    let owner: Vec<usize> = classes
        .iter()
        .map(|cls| {
            student_heads
                .iter()
                .position(|(_, hc)| hc.contains(cls))
                .unwrap_or(0)
        })
        .collect();
    let per_head: Vec<Option<(Vec<usize>, Tensor<2>)>> = student_heads
        .iter()
        .enumerate()
        .map(|(h, (spec, hc))| {
            let query: Vec<usize> = classes
                .iter()
                .zip(&owner)
                .filter(|(_, o)| **o == h)
                .map(|(c, _)| *c)
                .collect();
            (!query.is_empty()).then(|| {
                let l = spec.logits(outs[h].clone(), hc, &query);
                (query, l)
            })
        })
        .collect();
    let cols: Vec<Tensor<2>> = classes
        .iter()
        .zip(&owner)
        .map(|(cls, &h)| {
            let (query, l) = per_head[h].as_ref().expect("the owner scores it");
            let j = query.iter().position(|c| c == cls).expect("in its query");
            l.clone().narrow(1, j, 1)
        })
        .collect();
    (
        Tensor::cat(cols, 1),
        Tensor::<2>::from_data(TensorData::new(target, [b, c]), device),
    )
}

/// The forward's BN behaviour for a BN handling.
fn bn_mode(bn: BnHandling) -> crate::models::layers::BnMode {
    match bn {
        BnHandling::Train => crate::models::layers::BnMode::Module,
        BnHandling::Frozen => crate::models::layers::BnMode::Running,
    }
}

/// Writes a resumable state after an epoch: the student, the optimizer, the epochs done and the
/// log.
pub type SaveState<'a> = dyn FnMut(&Student, &burn::optim::ModuleOptimizer, usize, &[DistillEpoch]) -> Result<(), String>
    + 'a;

/// A state of the loop to resume from: the student as it was after `epochs_done` epochs, the
/// optimizer's momentum and the log.
pub struct Resume {
    /// Epochs done (over both stages).
    pub epochs_done: usize,
    /// The log of those epochs.
    pub log: Vec<DistillEpoch>,
    /// The optimizer state file (`burn` record).
    pub optimizer: std::path::PathBuf,
}

/// Distils `teachers` into `student` on `set` (the union of the teachers' training images):
/// `pools[i]` are the positions of teacher `i`'s images in `set`. Runs `head_epochs +
/// epochs` epochs of [`crate::distill::mix::Mixer`] batches; calls `save(student, optim,
/// epochs_done, log)` after each epoch (a resumable state) and returns the student and the log.
///
/// # Errors
/// The message of a failed `save` or of an optimizer state that cannot be read.
#[allow(clippy::too_many_arguments)]
pub fn distill(
    mut student: Student,
    stop_cut: usize,
    teachers: &[Teacher],
    set: &ImageSet,
    pools: Vec<Vec<usize>>,
    o: &DistillOptions,
    device: &Device,
    bn: BnHandling,
    student_heads: &[(HeadSpec, Vec<usize>)],
    resume: Option<Resume>,
    save: &mut SaveState<'_>,
    obs: &mut dyn DistillObserver,
) -> Result<(Student, Vec<DistillEpoch>), String> {
    use rand::SeedableRng;
    let n = teachers.len();
    let mut optim = match o.optimizer {
        // AdamW, as SAM-CLIP: the cosine loss's gradient scales with 1 / |output|, which an
        // adaptive step does not see
        Optimizer::AdamW => AdamWConfig::new()
            .with_weight_decay(o.weight_decay as f32)
            .init(),
        // steps proportional to the gradient (near a zero loss, rounding-level gradients move
        // nothing; AdamW's normalised steps would)
        Optimizer::Sgd => SgdConfig::new()
            .with_momentum(Some(MomentumConfig {
                momentum: 0.9,
                dampening: 0.0,
                nesterov: false,
            }))
            .with_weight_decay(Some(WeightDecayConfig::new(o.weight_decay as f32)))
            .init(),
    };
    let (mut start, mut log) = (0, Vec::new());
    if let Some(r) = resume {
        optim = optim
            .load(&r.optimizer)
            .map_err(|e| format!("{}: cannot be read ({e})", r.optimizer.display()))?;
        start = r.epochs_done;
        log = r.log;
    }
    let heads = head_params(&student);
    let head_ids: std::collections::HashSet<ParamId> = heads.iter().map(|(id, _)| *id).collect();
    let trunk: Vec<(ParamId, usize)> = param_ranks(&student)
        .into_iter()
        .filter(|(id, _)| !head_ids.contains(id))
        .collect();
    let total = o.head_epochs + o.epochs;
    let n_heads = teachers
        .iter()
        .map(|t| t.student_head + 1)
        .max()
        .unwrap_or(1);
    for epoch in start..total {
        // every epoch's draws depend on the seed and the epoch only (a resumed run continues
        // with the same batches an uninterrupted one would see)
        let mut mixer = mix::Mixer::new(
            pools.clone(),
            o.counts.clone(),
            o.seed ^ ((epoch as u64 + 1) << 32),
        );
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(o.seed ^ ((epoch as u64 + 1) << 40));
        let stage = if epoch < o.head_epochs {
            "heads"
        } else {
            "all"
        };
        let steps = mixer.steps_per_epoch();
        obs.epoch_start(epoch + 1, stage, steps);
        let t0 = std::time::Instant::now();
        let (mut sums, mut counts) = (vec![0.0f64; n], vec![0usize; n]);
        let lr0 = lr_at(o, epoch, 0.0);
        for s in 0..steps {
            let picks = mixer.next_batch();
            let imgs = batch_images(set, &picks, o.augment, &mut rng);
            let refs: Vec<&[u8]> = imgs.iter().map(Vec::as_slice).collect();
            let x = to_tensor(&refs, set.prep, device);
            let mut ctx = ForwardCtx {
                bn_mode: bn_mode(bn),
                ..Default::default()
            };
            let outs = student.forward(x, stop_cut, n_heads, &mut ctx);
            let mut total_loss: Option<Tensor<1>> = None;
            let mut row = 0;
            let b = refs.len();
            match o.loss {
                DistillLoss::Joint => {
                    let (s_joint, t_joint) = joint_logits(
                        teachers,
                        student_heads,
                        &outs,
                        &refs,
                        set.prep,
                        o.temperature,
                        device,
                    );
                    for (i, p) in picks.iter().enumerate() {
                        let k = p.len();
                        if k > 0 {
                            let l = loss::kl_to_probs(
                                s_joint.clone().narrow(0, row, k),
                                t_joint.clone().narrow(0, row, k),
                                o.temperature,
                            );
                            sums[i] += scalar(l) * k as f64;
                            counts[i] += k;
                            row += k;
                        }
                    }
                    total_loss = Some(loss::kl_to_probs(s_joint, t_joint, o.temperature));
                }
                DistillLoss::Embedding => {
                    for (i, t) in teachers.iter().enumerate() {
                        let k = picks[i].len();
                        if k == 0 {
                            continue;
                        }
                        // the teacher's output on its own images (no gradient)
                        let (data, dim) = t.net.outputs(&refs[row..row + k], set.prep);
                        let target =
                            Tensor::<2>::from_data(TensorData::new(data, [k, dim]), device);
                        let s_out = outs[t.student_head].clone().narrow(0, row, k);
                        let l = match &t.head {
                            HeadSpec::Text { .. } => loss::cosine_distance(s_out, target),
                            HeadSpec::Linear => {
                                let cols: Vec<Tensor<2>> = t
                                    .columns
                                    .iter()
                                    .map(|&c| s_out.clone().narrow(1, c, 1))
                                    .collect();
                                loss::kl_temperature(Tensor::cat(cols, 1), target, o.temperature)
                            }
                        };
                        sums[i] += scalar(l.clone()) * k as f64;
                        counts[i] += k;
                        // the mean over all the batch's images
                        let w = l * (k as f64 / b as f64);
                        total_loss = Some(match total_loss {
                            None => w,
                            Some(acc) => acc + w,
                        });
                        row += k;
                    }
                }
            }
            let Some(total_loss) = total_loss else {
                continue;
            };
            let mut grads = GradientsParams::from_grads(total_loss.backward(), &student);
            let lr = lr_at(o, epoch, s as f64 / steps as f64);
            let head_grads = take_grads(&mut grads, &heads);
            student = optim.step(lr, student, head_grads);
            if stage == "all" {
                let trunk_grads = take_grads(&mut grads, &trunk);
                student = optim.step(lr * o.trunk_lr_mult, student, trunk_grads);
            }
            obs.step(&means(&sums, &counts));
        }
        let entry = DistillEpoch {
            epoch: epoch + 1,
            stage: stage.into(),
            loss: means(&sums, &counts),
            lr: lr0,
            images: counts.iter().sum(),
            seconds: t0.elapsed().as_secs_f64(),
        };
        obs.epoch_end(&entry);
        log.push(entry);
        save(&student, &optim, epoch + 1, &log)?;
    }
    Ok((student, log))
}
