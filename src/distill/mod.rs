//! Merging by multi-teacher distillation with memory replay (SAM-CLIP, Wang et al., 2024, §3;
//! reference doc `merging-methods-reference.md`, SAM-CLIP): a student (a zipped, partially
//! zipped or single model) learns to reproduce each teacher's head outputs on that teacher's
//! own images, every batch mixing the teachers' domains ([`mix`]), first with only the layers
//! after the stop trainable (the head stage), then the whole network with the trunk at a lower
//! rate.
//!
//! Losses ([`loss`]): for text heads the cosine distance of the output embeddings (SAM-CLIP's
//! CLIP loss), for linear heads `T^2 KL` of the temperature-scaled distributions; or the
//! teachers' joint distribution ([`DistillLoss::Joint`]), each computed with its gradient in
//! [`grad`]. Optimiser: AdamW (as SAM-CLIP) or SGD ([`Optimizer`]); BN in train mode (batch
//! statistics, running statistics updated). The student trains on the CPU training engine with
//! BN in train mode on the CPU ([`learner::EngineLearner`]: a single network, or a partial
//! zip's trunk and head-network segments), on burn's autodiff otherwise and for the feature
//! term ([`learner::BurnLearner`]); the teachers run on the CPU engine.

pub mod cache;
pub mod grad;
pub mod learner;
pub mod loss;
pub mod mix;
pub mod settings;
pub mod student;

pub use settings::{BnHandling, DistillLoss, Optimizer};
pub use student::{head_params, Student};

use burn::tensor::Device;
use serde::{Deserialize, Serialize};

use crate::data::augment::augment_for;
use crate::data::{to_tensor, ImageSet};
use crate::engine::{Act, CpuSystem, EngineCtx};
use crate::models::head::HeadSpec;
use crate::models::ForwardCtx;

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

impl TeacherNet {
    /// The features at cut `cut` of `images`, in eval mode: `[images, h, w, c]` row-major with
    /// `nhwc` (the engine's order), else `[images, c, h, w]` (burn's).
    pub fn features(
        &self,
        images: &[&[u8]],
        prep: crate::data::Preprocess,
        cut: usize,
        nhwc: bool,
    ) -> Vec<f32> {
        let t = match self {
            TeacherNet::Engine(c) => {
                let a = c.trunk().run(
                    Act::from_images(images, prep),
                    0,
                    cut,
                    &mut EngineCtx::default(),
                );
                if nhwc {
                    return a.data;
                }
                a.to_nchw(&Device::flex())
            }
            TeacherNet::Burn(b) => {
                let y = b.0.trunk.forward_segment(
                    to_tensor(images, prep, &b.1),
                    0,
                    cut,
                    &mut ForwardCtx::default(),
                );
                if nhwc {
                    y.permute([0, 2, 3, 1])
                } else {
                    y
                }
            }
        };
        t.into_data()
            .convert::<f32>()
            .try_to_vec::<f32>()
            .unwrap_or_default()
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
    /// Weight of the feature-reconstruction term (FS-Merge's objective; partially zipped
    /// students only): each head network's features one cut after the stop against its
    /// teacher's at the same cut, on the teacher's own images ([`grad::feature_error`]). 0: off.
    #[serde(default)]
    pub feature_weight: f64,
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
    /// Images the teachers ran on in the epoch, summed over teachers (with `--no-augment`
    /// each image once over the run: [`cache::TeacherCache`]).
    #[serde(default)]
    pub teacher_images: usize,
    /// Mean feature-reconstruction error per teacher on its images of the epoch (before the
    /// weight; empty without the feature term).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub feature_loss: Vec<f64>,
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

/// Teacher `i`'s outputs `[rows, dim]` on the batch rows `range` (the loop's provider: on the fly,
/// or from a [`cache::TeacherCache`]).
pub type TeacherOutputs<'a> = dyn FnMut(usize, std::ops::Range<usize>) -> (Vec<f32>, usize) + 'a;

/// [`DistillLoss::Joint`]'s loss on one batch, with its gradient: the student's logits over the
/// union of the teachers' classes (ascending; each class from the first student head holding
/// it) against the probabilities of the teachers' ensemble as its joint rule reads it
/// (reference doc §5, quirk 13: per-task softmax): each teacher's softmax over its classes at
/// temperature `T`, divided by the number of teachers (each class from the first teacher
/// trained on it, every teacher run on every image). Returns the mean loss of each row range
/// of `counts` (per teacher) and per student head `dL/doutput` (of the batch's mean loss).
fn joint_loss(
    teachers: &[Teacher],
    student_heads: &[(HeadSpec, Vec<usize>)],
    outs: &[(Vec<f32>, usize)],
    b: usize,
    teacher_out: &mut TeacherOutputs<'_>,
    temperature: f64,
    counts: &[usize],
) -> (Vec<f64>, Vec<Vec<f32>>) {
    let mut classes: Vec<usize> = teachers.iter().flat_map(|t| t.classes.clone()).collect();
    classes.sort_unstable();
    classes.dedup();
    let c = classes.len();
    let mut target = vec![0f64; b * c];
    let mut filled = vec![false; c];
    let share = 1.0 / teachers.len() as f64;
    for (i, t) in teachers.iter().enumerate() {
        let (data, dim) = teacher_out(i, 0..b);
        let l = grad::head_logits(&t.head, &data, dim, &t.classes, &t.classes);
        let p = grad::softmax(&l, t.classes.len(), temperature);
        for (j, cls) in t.classes.iter().enumerate() {
            let col = classes.binary_search(cls).expect("a teacher class");
            if filled[col] {
                continue;
            }
            filled[col] = true;
            for n in 0..b {
                target[n * c + col] = p[n * t.classes.len() + j] * share;
            }
        }
    }
    // per student head, its logits over the joint classes it owns (one product per head)
    let owner: Vec<usize> = classes
        .iter()
        .map(|cls| {
            student_heads
                .iter()
                .position(|(_, hc)| hc.contains(cls))
                .unwrap_or(0)
        })
        .collect();
    let queries: Vec<Vec<usize>> = (0..student_heads.len())
        .map(|h| {
            classes
                .iter()
                .zip(&owner)
                .filter(|(_, o)| **o == h)
                .map(|(c, _)| *c)
                .collect()
        })
        .collect();
    let logits: Vec<Vec<f32>> = student_heads
        .iter()
        .zip(&queries)
        .enumerate()
        .map(|(h, ((spec, hc), q))| {
            let (y, dim) = &outs[h];
            grad::head_logits(spec, y, *dim, hc, q)
        })
        .collect();
    let mut joint = vec![0f32; b * c];
    let mut at = vec![0usize; student_heads.len()];
    for (col, &h) in owner.iter().enumerate() {
        let q = queries[h].len();
        for n in 0..b {
            joint[n * c + col] = logits[h][n * q + at[h]];
        }
        at[h] += 1;
    }
    let (rows, dl) = grad::kl_to_probs_rows(&joint, &target, c, temperature);
    let mut per = Vec::with_capacity(counts.len());
    let mut row = 0;
    for &k in counts {
        per.push(grad::mean(&rows[row..row + k]));
        row += k;
    }
    // the gradient back through each head's logits
    let mut d_outs: Vec<Vec<f32>> = outs.iter().map(|(y, _)| vec![0f32; y.len()]).collect();
    let mut at = vec![0usize; student_heads.len()];
    let mut dls: Vec<Vec<f32>> = queries.iter().map(|q| vec![0f32; b * q.len()]).collect();
    for (col, &h) in owner.iter().enumerate() {
        let q = queries[h].len();
        for n in 0..b {
            dls[h][n * q + at[h]] = dl[n * c + col];
        }
        at[h] += 1;
    }
    for (h, (spec, hc)) in student_heads.iter().enumerate() {
        if queries[h].is_empty() {
            continue;
        }
        let (y, dim) = &outs[h];
        grad::head_logits_backward(
            spec,
            y,
            *dim,
            hc,
            &queries[h],
            &logits[h],
            &dls[h],
            &mut d_outs[h],
        );
    }
    (per, d_outs)
}

/// [`DistillLoss::Embedding`]'s loss on one batch, with its gradient: per teacher, on its rows
/// of the batch (`counts`, in order), the cosine distance of embeddings (text heads) or `T^2
/// KL` of its classes' logits (linear heads), weighted by its share of the batch. Returns each
/// teacher's mean loss and per student head `dL/doutput`.
fn embedding_loss(
    teachers: &[Teacher],
    outs: &[(Vec<f32>, usize)],
    b: usize,
    teacher_out: &mut TeacherOutputs<'_>,
    temperature: f64,
    counts: &[usize],
) -> (Vec<f64>, Vec<Vec<f32>>) {
    let mut d_outs: Vec<Vec<f32>> = outs.iter().map(|(y, _)| vec![0f32; y.len()]).collect();
    let mut per = vec![0.0; teachers.len()];
    let mut row = 0;
    for (i, t) in teachers.iter().enumerate() {
        let k = counts[i];
        if k == 0 {
            continue;
        }
        // the teacher's output on its own images (no gradient)
        let (target, _) = teacher_out(i, row..row + k);
        let (y, dim) = &outs[t.student_head];
        let rows = &y[row * dim..(row + k) * dim];
        let w = k as f32 / b as f32;
        let d = &mut d_outs[t.student_head][row * dim..(row + k) * dim];
        match &t.head {
            HeadSpec::Text { .. } => {
                let (l, g) = grad::cosine_distance(rows, &target, *dim);
                per[i] = l;
                for (a, g) in d.iter_mut().zip(g) {
                    *a += w * g;
                }
            }
            HeadSpec::Linear => {
                let cols = t.columns.len();
                let sel: Vec<f32> = rows
                    .chunks(*dim)
                    .flat_map(|r| t.columns.iter().map(|&c| r[c]))
                    .collect();
                let (l, g) = grad::kl_temperature(&sel, &target, cols, temperature);
                per[i] = l;
                for (n, gr) in g.chunks(cols).enumerate() {
                    for (&c, &gv) in t.columns.iter().zip(gr) {
                        d[n * dim + c] += w * gv;
                    }
                }
            }
        }
        row += k;
    }
    (per, d_outs)
}

/// Writes a resumable state after an epoch: the learner (weights, optimiser), the epochs done
/// and the log.
pub type SaveState<'a> =
    dyn FnMut(&dyn learner::Learner, usize, &[DistillEpoch]) -> Result<(), String> + 'a;

/// Distils `teachers` into the student held by `learner` on `set` (the union of the teachers'
/// training images): `pools[i]` are the positions of teacher `i`'s images in `set`. Runs
/// epochs `start..head_epochs + epochs` of [`crate::distill::mix::Mixer`] batches, appending
/// to `log` (a resumed run's log of the epochs before `start`); calls `save(learner,
/// epochs_done, log)` after each epoch (a resumable state) and returns the log. With
/// `feature_cut` (a partially zipped student, [`DistillOptions::feature_weight`] > 0), the
/// feature term at that cut is added.
///
/// # Errors
/// The message of a failed `save`.
#[allow(clippy::too_many_arguments)]
pub fn distill(
    learner: &mut dyn learner::Learner,
    teachers: &[Teacher],
    set: &ImageSet,
    pools: Vec<Vec<usize>>,
    o: &DistillOptions,
    student_heads: &[(HeadSpec, Vec<usize>)],
    feature_cut: Option<usize>,
    start: usize,
    mut log: Vec<DistillEpoch>,
    save: &mut SaveState<'_>,
    obs: &mut dyn DistillObserver,
) -> Result<Vec<DistillEpoch>, String> {
    use rand::SeedableRng;
    let n = teachers.len();
    let total = o.head_epochs + o.epochs;
    // without augmentation an image is the same input every epoch: each teacher runs on it once
    // (a resumed run fills its cache again in its first epoch)
    let mut cache = (!o.augment).then(|| cache::TeacherCache::new(n));
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
        let mut teacher_images = 0;
        let mut feature_sums = vec![0.0f64; n];
        let lr0 = lr_at(o, epoch, 0.0);
        for s in 0..steps {
            let picks = mixer.next_batch();
            let imgs = batch_images(set, &picks, o.augment, &mut rng);
            let refs: Vec<&[u8]> = imgs.iter().map(Vec::as_slice).collect();
            if refs.is_empty() {
                continue;
            }
            let ks: Vec<usize> = picks.iter().map(Vec::len).collect();
            let ids: Vec<usize> = picks.iter().flatten().copied().collect();
            let b = refs.len();
            let mut teacher_out = |i: usize, r: std::ops::Range<usize>| match cache.as_mut() {
                Some(c) => {
                    let (out, dim, ran) = c.outputs(i, &ids[r.clone()], &refs[r], |x| {
                        teachers[i].net.outputs(x, set.prep)
                    });
                    teacher_images += ran;
                    (out, dim)
                }
                None => {
                    teacher_images += r.len();
                    teachers[i].net.outputs(&refs[r], set.prep)
                }
            };
            let fwd = learner.forward(&refs, set.prep, feature_cut);
            let outs = fwd.outs;
            let (per, d_outs) = match o.loss {
                DistillLoss::Joint => joint_loss(
                    teachers,
                    student_heads,
                    &outs,
                    b,
                    &mut teacher_out,
                    o.temperature,
                    &ks,
                ),
                DistillLoss::Embedding => {
                    embedding_loss(teachers, &outs, b, &mut teacher_out, o.temperature, &ks)
                }
            };
            for i in 0..n {
                sums[i] += per[i] * ks[i] as f64;
                counts[i] += ks[i];
            }
            let mut d_feats: Vec<Vec<f32>> =
                fwd.feats.iter().map(|f| vec![0f32; f.len()]).collect();
            if let Some(cut) = feature_cut.filter(|_| !fwd.feats.is_empty()) {
                let nhwc = learner.features_nhwc();
                let mut row = 0;
                for (i, t) in teachers.iter().enumerate() {
                    let k = ks[i];
                    if k == 0 {
                        continue;
                    }
                    let feats = &fwd.feats[t.student_head];
                    let fd = feats.len() / b;
                    let target = t.net.features(&refs[row..row + k], set.prep, cut, nhwc);
                    let r = row * fd..(row + k) * fd;
                    let (l, g) = grad::feature_error(&feats[r.clone()], &target, fd);
                    feature_sums[i] += l * k as f64;
                    let w = (o.feature_weight * k as f64 / b as f64) as f32;
                    for (a, g) in d_feats[t.student_head][r].iter_mut().zip(g) {
                        *a += w * g;
                    }
                    row += k;
                }
            }
            let lr = lr_at(o, epoch, s as f64 / steps as f64);
            let trunk_lr = (stage == "all").then_some(lr * o.trunk_lr_mult);
            learner.step(d_outs, d_feats, lr, trunk_lr);
            obs.step(&means(&sums, &counts));
        }
        let entry = DistillEpoch {
            epoch: epoch + 1,
            stage: stage.into(),
            loss: means(&sums, &counts),
            lr: lr0,
            images: counts.iter().sum(),
            teacher_images,
            feature_loss: if feature_cut.is_some() {
                means(&feature_sums, &counts)
            } else {
                Vec::new()
            },
            seconds: t0.elapsed().as_secs_f64(),
        };
        obs.epoch_end(&entry);
        log.push(entry);
        save(&*learner, epoch + 1, &log)?;
    }
    Ok(log)
}
