//! `zipmerge distill`: a student model distilled from one teacher per head on the teachers' own
//! training images ([`crate::distill`]), then BN-reset, evaluated against its teachers and
//! written as a model folder with `report.json`.

use std::path::{Path, PathBuf};

use std::time::Instant;

use serde::{Deserialize, Serialize};
use thiserror::Error;

use crate::checkpoint::{self, ModelManifest, ModelWeights, StateDict};
use crate::distill::learner::{self, BurnLearner, EngineLearner, Learner};
pub use crate::distill::BnHandling;
use crate::distill::{self, DistillEpoch, DistillObserver, DistillOptions, Student, Teacher};
use crate::error::{CheckpointError, DataError, MergeError, ModelError};
use crate::eval::Accuracy;
use crate::models::head::HeadSpec;
use crate::models::Net;
use crate::progress::Observer;
use crate::system::runner::Runner;
use crate::system::System;

/// What `zipmerge distill` was asked.
#[derive(Clone, Debug)]
pub struct DistillPlan {
    /// The student model folder.
    pub student: PathBuf,
    /// One single-model teacher per student head, in head order.
    pub teachers: Vec<PathBuf>,
    /// Data root (its `train` split gives the teachers' images, `test` the evaluation).
    pub data_root: PathBuf,
    /// Per teacher, a seeded subset of this many of its images (`None`: all).
    pub images_per_teacher: Option<usize>,
    /// Per teacher (in order), an image folder replacing its task's train images as its domain
    /// (`--unlabeled`; an ImageFolder tree, class names ignored, or CIFAR binary batches);
    /// empty: the task's train images.
    pub unlabeled: Vec<PathBuf>,
    /// The loop's settings (`counts` is filled in from `mix`).
    pub options: DistillOptions,
    /// Whether the temperature was given (refused when no head is linear).
    pub temperature_given: bool,
    /// BN handling.
    pub bn: BnHandling,
    /// Images of the final BN reset (train mode only).
    pub bn_reset_images: usize,
    /// Evaluate on the test split (before and after).
    pub test: bool,
    /// Pixel cache per split, GiB.
    pub cache_gib: f64,
    /// Device (and whether the CPU engine runs the teachers and evaluations).
    pub device: Runner,
    /// Backend name, for the report.
    pub backend: String,
    /// The command line, for the report.
    pub command: String,
    /// Continue from `<out>.distill-state`.
    pub resume: bool,
    /// Output model folder.
    pub out: PathBuf,
}

/// Why a distillation cannot run.
#[derive(Debug, Error)]
pub enum DistillError {
    /// An option value outside its range.
    #[error("--{option} {value}: {expected}")]
    Option {
        /// The option.
        option: &'static str,
        /// Its value.
        value: String,
        /// What it takes.
        expected: String,
    },
    /// Student and teachers do not correspond.
    #[error("{model}: {msg}")]
    Mismatch {
        /// The model folder at fault.
        model: String,
        /// What does not fit.
        msg: String,
    },
    /// A model folder.
    #[error(transparent)]
    Model(#[from] ModelError),
    /// A weight file.
    #[error(transparent)]
    Checkpoint(#[from] CheckpointError),
    /// The data.
    #[error(transparent)]
    Data(#[from] DataError),
    /// BN reset or evaluation.
    #[error(transparent)]
    Merge(#[from] MergeError),
    /// The resumable state.
    #[error("{0}")]
    State(String),
}

/// One teacher in the report.
#[derive(Clone, Debug, Serialize)]
pub struct TeacherReport {
    /// Its folder.
    pub model: String,
    /// Its classes.
    pub classes: Vec<usize>,
    /// Images of its domain used.
    pub images: usize,
    /// Where they came from: the train split (images of its classes) or its `--unlabeled`
    /// folder.
    pub data: String,
    /// Its own task accuracy on the test split, percent.
    pub task_accuracy: Option<f64>,
    /// The student's task accuracy over the teacher's (after distillation), percent.
    pub retention: Option<f64>,
}

/// `report.json` of a distillation.
#[derive(Clone, Debug, Serialize)]
pub struct DistillReport {
    /// How the output was made.
    pub provenance: crate::provenance::Provenance,
    /// The student folder.
    pub student: String,
    /// The teachers.
    pub teachers: Vec<TeacherReport>,
    /// The loop's settings.
    pub options: DistillOptions,
    /// BN handling.
    pub bn: BnHandling,
    /// Images of the final BN reset (0: none).
    pub bn_reset_images: usize,
    /// Per-teacher image cap (`None`: all).
    pub images_per_teacher: Option<usize>,
    /// The student before distillation, on the test split.
    pub before: Option<Accuracy>,
    /// The result, on the test split.
    pub after: Option<Accuracy>,
    /// The teachers as an ensemble, on the test split.
    pub ensemble: Option<Accuracy>,
    /// Forward multiply-accumulates per image of the student.
    pub flops: u64,
    /// Images the student saw (all epochs).
    pub images_seen: usize,
    /// Per epoch.
    pub epochs: Vec<DistillEpoch>,
    /// Seconds of the distillation loop (this run's epochs).
    pub train_seconds: f64,
    /// Seconds of the whole command.
    pub wall_seconds: f64,
    /// Where the student trained: `engine` (the CPU training engine) or `burn` (burn's
    /// autodiff).
    pub training_path: String,
}

/// The training-state folder of `out`: `<out>.distill-state`.
pub fn state_dir_of(out: &Path) -> PathBuf {
    PathBuf::from(format!("{}.distill-state", out.display()))
}

/// Resumable state: the settings it was made with, the epochs done and the log.
#[derive(Serialize, Deserialize)]
struct StateInfo {
    options: DistillOptions,
    student: String,
    teachers: Vec<String>,
    images_per_teacher: Option<usize>,
    #[serde(default)]
    unlabeled: Vec<String>,
    epochs_done: usize,
    log: Vec<DistillEpoch>,
    param_ids: Vec<u64>,
    /// `engine` or `burn` (states before the engine path: `burn`).
    #[serde(default = "burn_path")]
    path: String,
}

fn burn_path() -> String {
    "burn".into()
}

fn opt_err(option: &'static str, value: impl ToString, expected: &str) -> DistillError {
    DistillError::Option {
        option,
        value: value.to_string(),
        expected: expected.to_string(),
    }
}

/// Checks the settings before anything is read.
///
/// # Errors
/// [`DistillError::Option`] naming the option.
pub fn check_options(p: &DistillPlan) -> Result<(), DistillError> {
    let o = &p.options;
    if o.epochs == 0 {
        return Err(opt_err("epochs", 0, "at least 1 epoch of the full stage"));
    }
    if !(o.replay_frac > 0.0 && o.replay_frac <= 1.0) {
        return Err(opt_err(
            "replay-frac",
            o.replay_frac,
            "a share in (0, 1] of the first teacher's images",
        ));
    }
    if o.batch_size == 0 {
        return Err(opt_err("batch-size", 0, "at least 1"));
    }
    if !(o.lr.is_finite() && o.lr > 0.0) {
        return Err(opt_err("lr", o.lr, "a positive number"));
    }
    if !(o.trunk_lr_mult.is_finite() && o.trunk_lr_mult >= 0.0) {
        return Err(opt_err("trunk-lr-mult", o.trunk_lr_mult, "a number >= 0"));
    }
    if !(o.feature_weight.is_finite() && o.feature_weight >= 0.0) {
        return Err(opt_err("feature-weight", o.feature_weight, "a number >= 0"));
    }
    if !(o.temperature.is_finite() && o.temperature > 0.0) {
        return Err(opt_err("temperature", o.temperature, "a positive number"));
    }
    if o.mix.len() != p.teachers.len() {
        return Err(opt_err(
            "mix",
            format!("{:?}", o.mix),
            &format!("one share per teacher ({})", p.teachers.len()),
        ));
    }
    if o.mix.iter().any(|m| !(m.is_finite() && *m > 0.0)) {
        return Err(opt_err(
            "mix",
            format!("{:?}", o.mix),
            "positive shares, one per teacher",
        ));
    }
    if distill::mix::batch_counts(&o.mix, o.batch_size).is_none() {
        return Err(opt_err(
            "batch-size",
            o.batch_size,
            "at least one image per teacher in every batch",
        ));
    }
    if p.images_per_teacher == Some(0) {
        return Err(opt_err("images", 0, "at least 1 image per teacher"));
    }
    Ok(())
}

/// The student head teacher `t` teaches and, for linear heads, the head's output columns of
/// the teacher's classes: the first head of the same kind whose classes hold all the
/// teacher's (a multi-head student's head `i` for teacher `i`, a fully merged text-head
/// student's one joint head for every teacher). The teacher must be a single model with the
/// head's output width (text heads) and the student's preprocessing.
fn match_teacher(
    student: &ModelManifest,
    t: &ModelManifest,
    dir: &Path,
) -> Result<(usize, Vec<usize>), DistillError> {
    let bad = |msg: String| DistillError::Mismatch {
        model: dir.display().to_string(),
        msg,
    };
    if t.is_multi_head() {
        return Err(bad(
            "is a multi-head model; a teacher is a single model (its one head teaches one head of the student)".into(),
        ));
    }
    let th = &t.heads[0];
    let heads: Vec<String> = student
        .heads
        .iter()
        .map(|h| format!("{} {:?}", h.head.kind(), h.classes))
        .collect();
    // a head holding the teacher's classes; else a text head whose class table covers them
    // (a text head scores any class it has a row for: model A's head learns B's classes)
    let holds = |h: &crate::checkpoint::HeadManifest| {
        h.head.kind() == th.head.kind() && th.classes.iter().all(|c| h.classes.contains(c))
    };
    let covers = |h: &crate::checkpoint::HeadManifest| match &h.head {
        crate::models::head::HeadSpec::Text { embeddings, .. } => {
            is_text(&th.head) && th.classes.iter().all(|&c| c < embeddings.len())
        }
        _ => false,
    };
    let found = student
        .heads
        .iter()
        .position(holds)
        .or_else(|| student.heads.iter().position(covers));
    let Some(i) = found else {
        return Err(bad(format!(
            "has a {} head on classes {:?}; no head of the student is a {} head holding them (its heads: {})",
            th.head.kind(),
            th.classes,
            th.head.kind(),
            heads.join("; ")
        )));
    };
    let sh = &student.heads[i];
    let (so, to) = (student.head_config(i).out, t.net_config().out);
    if is_text(&th.head) && so != to {
        return Err(bad(format!(
            "outputs {to}-dimensional embeddings; the student's head {i} outputs {so} (the loss compares them)"
        )));
    }
    let columns = if is_text(&th.head) {
        vec![]
    } else {
        th.classes
            .iter()
            .map(|c| sh.classes.iter().position(|x| x == c).expect("checked"))
            .collect()
    };
    if student.prep() != t.prep() {
        return Err(bad(format!(
            "takes inputs as: {}; the student takes: {}",
            t.prep().describe(),
            student.prep().describe()
        )));
    }
    Ok((i, columns))
}

/// The teachers' `--unlabeled` folders, decoded as `prep` says for training (at most
/// `--images` each, a seeded subset of a larger ImageFolder tree) and stacked into one set:
/// returns it and each teacher's range of positions. Labels are set to `usize::MAX` (never
/// read: a distillation learns the teachers' outputs).
fn load_unlabeled(
    plan: &DistillPlan,
    prep: crate::data::Preprocess,
    obs: &mut dyn Observer,
) -> Result<(crate::data::ImageSet, Vec<std::ops::Range<usize>>), DistillError> {
    let cap = plan.images_per_teacher.unwrap_or(usize::MAX);
    let mut set: Option<crate::data::ImageSet> = None;
    let mut blocks = Vec::new();
    for dir in &plan.unlabeled {
        let s = crate::data::ImageSet::load_at_most(dir, "train", prep, cap, None)?;
        obs.info(&format!(
            "loaded {} unlabeled images from {}",
            s.len(),
            dir.display()
        ));
        let start = set.as_ref().map_or(0, crate::data::ImageSet::len);
        blocks.push(start..start + s.len());
        match &mut set {
            None => {
                let mut s = s;
                s.labels.iter_mut().for_each(|l| *l = usize::MAX);
                set = Some(s);
            }
            Some(all) => {
                all.pixels.extend_from_slice(&s.pixels);
                all.labels.extend(std::iter::repeat_n(usize::MAX, s.len()));
                all.source = format!("{} + {}", all.source, s.source);
            }
        }
    }
    Ok((set.expect("one folder per teacher"), blocks))
}

/// Observer adapter: epochs as progress phases.
struct Progress<'a>(&'a mut dyn Observer);

impl DistillObserver for Progress<'_> {
    fn epoch_start(&mut self, epoch: usize, stage: &str, steps: usize) {
        self.0
            .begin(&format!("epoch {epoch} ({stage})"), steps as u64);
    }
    fn step(&mut self, loss: &[f64]) {
        let l: Vec<String> = loss.iter().map(|l| format!("{l:.4}")).collect();
        self.0.status(&format!("loss per teacher {}", l.join(" ")));
        self.0.advance(1);
    }
    fn epoch_end(&mut self, e: &DistillEpoch) {
        self.0.end();
        let l: Vec<String> = e.loss.iter().map(|l| format!("{l:.4}")).collect();
        let f: Vec<String> = e.feature_loss.iter().map(|l| format!("{l:.4}")).collect();
        let features = if f.is_empty() {
            String::new()
        } else {
            format!("  feature error {}", f.join(" "))
        };
        self.0.info(&format!(
            "epoch {:>3} ({}): loss per teacher {}{features}  lr {:.4}  {} images  ({:.1}s)",
            e.epoch,
            e.stage,
            l.join(" "),
            e.lr,
            e.images,
            e.seconds
        ));
    }
}

/// Runs `zipmerge distill`.
///
/// # Errors
/// [`DistillError`] naming the option, model folder or file at fault; nothing is written to
/// `out` unless the run finishes.
pub fn run(plan: &DistillPlan, obs: &mut dyn Observer) -> Result<DistillReport, DistillError> {
    let t_all = Instant::now();
    check_options(plan)?;
    let sdir = checkpoint::model_dir(&plan.student);
    let ModelWeights {
        manifest: sm,
        trunk,
        heads,
    } = ModelWeights::read(&sdir, checkpoint::read_manifest(&sdir)?)?;
    if plan.temperature_given
        && plan.options.loss == distill::DistillLoss::Embedding
        && sm.heads.iter().all(|h| is_text(&h.head))
    {
        return Err(opt_err(
            "temperature",
            plan.options.temperature,
            "sets the KL loss of linear heads and of --loss joint; with --loss embedding this student's text heads use the cosine distance",
        ));
    }
    // the feature term (FS-Merge) compares head networks with their teachers one cut after
    // the stop: a partially zipped student whose heads hold a cut before the output
    let feature_cut = if plan.options.feature_weight > 0.0 {
        let cut = sm.stop_cut + 1;
        if heads.is_empty() {
            return Err(opt_err(
                "feature-weight",
                plan.options.feature_weight,
                "0 for this student: the feature term needs a partially zipped student (head networks from the stop on); a single network has none",
            ));
        }
        if cut >= sm.net_config().output_cut() {
            return Err(opt_err(
                "feature-weight",
                plan.options.feature_weight,
                &format!(
                    "0 for this student: its stop (cut {}) leaves no cut between the stop and the output for the feature term",
                    sm.stop_cut
                ),
            ));
        }
        Some(cut)
    } else {
        None
    };
    let mut matched = Vec::new();
    let mut tms = Vec::new();
    let mut sm = sm;
    for t in &plan.teachers {
        let m = checkpoint::read_manifest(&checkpoint::model_dir(t))?;
        let (i, columns) = match_teacher(&sm, &m, t)?;
        let extra: Vec<usize> = m.heads[0]
            .classes
            .iter()
            .filter(|c| !sm.heads[i].classes.contains(c))
            .copied()
            .collect();
        if !extra.is_empty() {
            obs.info(&format!(
                "note: the student's text head {i} is taught the classes {extra:?} of {} too (its class table covers them); the distilled model's head scores classes {:?}",
                t.display(),
                [sm.heads[i].classes.clone(), extra.clone()].concat()
            ));
            sm.heads[i].classes.extend(extra);
        }
        matched.push((i, columns));
        tms.push(m);
    }
    let state_dir = state_dir_of(&plan.out);
    let saved = state_dir.join("state.json").exists();
    if !plan.resume && saved {
        return Err(DistillError::State(format!(
            "{}: holds the state of an earlier distillation; pass --resume to continue it, or remove the folder",
            state_dir.display()
        )));
    }
    let device: &burn::tensor::Device = &plan.device;
    let teacher_systems: Vec<System> = plan
        .teachers
        .iter()
        .map(|t| System::load(t, device))
        .collect::<Result<_, _>>()?;

    // data: the union of the teachers' classes; per teacher, its images (seeded caps)
    let prep = sm.prep();
    let classes: Vec<usize> = sm.all_classes();
    let (set, blocks) = if plan.unlabeled.is_empty() {
        let set = crate::data::load_split(
            &plan.data_root,
            "train",
            prep,
            plan.cache_gib,
            Some(&classes),
            obs,
        )?;
        (set, None)
    } else {
        let (set, blocks) = load_unlabeled(plan, prep, obs)?;
        (set, Some(blocks))
    };
    let o = &plan.options;
    let mut pools: Vec<Vec<usize>> = Vec::new();
    for (i, tm) in tms.iter().enumerate() {
        let tc = &tm.heads[0].classes;
        let mut pool: Vec<usize> = match &blocks {
            Some(b) => b[i].clone().collect(),
            None => (0..set.len())
                .filter(|&k| tc.contains(&set.labels[k]))
                .collect(),
        };
        let mut cap = plan
            .images_per_teacher
            .unwrap_or(pool.len())
            .min(pool.len());
        if i == 0 && o.replay_frac < 1.0 {
            cap = ((cap as f64) * o.replay_frac).ceil() as usize;
        }
        if cap < pool.len() {
            use rand::{seq::SliceRandom, SeedableRng};
            let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(o.seed.wrapping_add(7 + i as u64));
            pool.shuffle(&mut rng);
            pool.truncate(cap);
            pool.sort_unstable();
        }
        if pool.is_empty() {
            return Err(DistillError::Mismatch {
                model: plan.teachers[i].display().to_string(),
                msg: match &blocks {
                    Some(_) => format!(
                        "--unlabeled {}: holds no images",
                        plan.unlabeled[i].display()
                    ),
                    None => format!(
                        "{} holds no train images of its classes {:?}",
                        set.source, tc
                    ),
                },
            });
        }
        pools.push(pool);
    }
    let mut options = o.clone();
    options.counts = distill::mix::batch_counts(&o.mix, o.batch_size).expect("checked");

    // the test split: the student before, the teachers (for retention) and their ensemble
    let tasks: Vec<Vec<usize>> = tms.iter().map(|m| m.heads[0].classes.clone()).collect();
    let test = if plan.test {
        Some(crate::data::load_split(
            &plan.data_root,
            "test",
            prep,
            plan.cache_gib,
            Some(&classes),
            obs,
        )?)
    } else {
        None
    };
    let eval = |systems: &[System], obs: &mut dyn Observer| -> Option<Accuracy> {
        test.as_ref().map(|t| {
            crate::progress::phase(obs, "eval", t.len() as u64, |p| {
                crate::eval::runner::evaluate(systems, t, &tasks, 500, &plan.device, &mut |k| p(k))
            })
        })
    };
    let student_sys = System::from_parts(&sm, &trunk, &heads, device)?;
    let resuming = plan.resume && saved;
    let before = if resuming {
        None
    } else {
        eval(std::slice::from_ref(&student_sys), obs)
    };
    let flops = student_sys.flops();
    drop(student_sys);
    let teacher_acc: Vec<Option<f64>> = teacher_systems
        .iter()
        .enumerate()
        .map(|(i, s)| {
            test.as_ref().map(|t| {
                let a = crate::eval::runner::evaluate(
                    std::slice::from_ref(s),
                    t,
                    std::slice::from_ref(&tasks[i]),
                    500,
                    &plan.device,
                    &mut |_| {},
                );
                a.tasks[0].accuracy
            })
        })
        .collect();
    let ensemble = eval(&teacher_systems, obs);
    // the teachers as the loop runs them (the systems move in: evaluation is done with them)
    let teachers: Vec<Teacher> = teacher_systems
        .into_iter()
        .zip(&matched)
        .map(|(s, (head, columns))| {
            let (spec, classes) = (s.heads[0].spec.clone(), s.heads[0].classes.clone());
            Ok(Teacher {
                net: if plan.device.engine() {
                    distill::TeacherNet::Engine(s.compile()?)
                } else {
                    distill::TeacherNet::Burn(Box::new((s, device.clone())))
                },
                head: spec,
                student_head: *head,
                columns: columns.clone(),
                classes,
            })
        })
        .collect::<Result<_, ModelError>>()?;

    // the student: on the CPU training engine when it is a single network trained with BN in
    // train mode on the CPU, on burn's autodiff otherwise
    let n_heads = teachers
        .iter()
        .map(|t| t.student_head + 1)
        .max()
        .unwrap_or(1);
    let engine = plan.device.engine() && plan.bn == BnHandling::Train;
    let path = if engine { "engine" } else { "burn" };
    if !engine && plan.device.engine() {
        obs.info(
            "note: the student trains on burn's autodiff (--bn frozen); the CPU training engine takes --bn train",
        );
    }
    let fingerprint = |log: &[DistillEpoch], done: usize, ids: Vec<u64>| StateInfo {
        options: options.clone(),
        student: plan.student.display().to_string(),
        teachers: plan
            .teachers
            .iter()
            .map(|t| t.display().to_string())
            .collect(),
        images_per_teacher: plan.images_per_teacher,
        unlabeled: plan
            .unlabeled
            .iter()
            .map(|d| d.display().to_string())
            .collect(),
        epochs_done: done,
        log: log.to_vec(),
        param_ids: ids,
        path: path.to_string(),
    };
    let bad = |e: String| DistillError::State(format!("{}: {e}", state_dir.display()));
    let info: Option<StateInfo> = if resuming {
        let text = std::fs::read_to_string(state_dir.join("state.json"))
            .map_err(|e| bad(e.to_string()))?;
        let info: StateInfo =
            serde_json::from_str(&text).map_err(|e| bad(format!("state.json: {e}")))?;
        let now = fingerprint(&info.log, info.epochs_done, info.param_ids.clone());
        if now.options != info.options
            || now.student != info.student
            || now.teachers != info.teachers
            || now.images_per_teacher != info.images_per_teacher
            || now.unlabeled != info.unlabeled
        {
            return Err(bad(
                "state.json: made by a distillation with other models or options; resume with the options it was started with".into(),
            ));
        }
        if info.path != path {
            return Err(bad(format!(
                "state.json: made on the {} path, this run trains on the {path} path; resume it where it was started",
                info.path
            )));
        }
        if info.epochs_done > options.head_epochs + options.epochs
            || info.log.len() != info.epochs_done
        {
            return Err(bad(
                "state.json: epochs_done does not fit the run or its log".into(),
            ));
        }
        obs.info(&format!(
            "resuming after epoch {} of {}",
            info.epochs_done,
            options.head_epochs + options.epochs
        ));
        Some(info)
    } else {
        None
    };
    let (trunk_w, heads_w) = if resuming {
        let t = checkpoint::read_weights(&state_dir, "trunk.safetensors")?;
        let hs = (0..heads.len())
            .map(|i| checkpoint::read_weights(&state_dir, &format!("head{i}.safetensors")))
            .collect::<Result<Vec<_>, _>>()?;
        (t, hs)
    } else {
        (trunk, heads)
    };
    let mut learner: Box<dyn Learner> = if engine {
        let opt_file = resuming.then(|| state_dir.join(learner::ENGINE_OPTIMIZER_FILE));
        use crate::engine::train::TrainNet;
        use crate::models::compile::compile_state;
        let arch = sm.net_config().arch;
        let compiled = compile_state(arch, &trunk_w)?;
        // a partial zip: the trunk up to the stop, each head network from it on (split at the
        // feature cut when the feature term is on)
        let (trunk_net, head_nets) = if heads_w.is_empty() {
            (TrainNet::new(&compiled), Vec::new())
        } else {
            let out = arch.output_cut();
            let bounds: Vec<usize> = match feature_cut {
                Some(c) => vec![sm.stop_cut, c, out],
                None => vec![sm.stop_cut, out],
            };
            let hs = heads_w
                .into_iter()
                .map(|h| {
                    let net = compile_state(arch, &h)?;
                    let segs = bounds
                        .windows(2)
                        .map(|w| TrainNet::segment(&net, w[0], w[1]).with_input_grad())
                        .collect();
                    Ok((segs, h))
                })
                .collect::<Result<Vec<_>, ModelError>>()?;
            (TrainNet::segment(&compiled, 0, sm.stop_cut), hs)
        };
        Box::new(
            EngineLearner::new(
                (trunk_net, trunk_w),
                head_nets,
                n_heads,
                options.optimizer,
                options.weight_decay,
                opt_file.as_deref(),
            )
            .map_err(bad)?,
        )
    } else {
        let ad = device.clone().autodiff();
        let mut student = Student {
            trunk: Net::from_state(&sm.net_config(), &trunk_w, &ad)?,
            heads: heads_w
                .iter()
                .enumerate()
                .map(|(i, h)| Net::from_state(&sm.head_config(i), h, &ad))
                .collect::<Result<_, _>>()?,
        };
        if let Some(info) = &info {
            if info.param_ids.len() != crate::train::param_ids(&student).len() {
                return Err(bad(
                    "state.json: parameter ids do not fit the student".into()
                ));
            }
            student = crate::train::with_param_ids(student, &info.param_ids);
        }
        let opt_file = resuming.then(|| state_dir.join(learner::BURN_OPTIMIZER_FILE));
        Box::new(
            BurnLearner::new(
                student,
                sm.stop_cut,
                n_heads,
                options.optimizer,
                options.weight_decay,
                plan.bn,
                ad,
                opt_file.as_deref(),
            )
            .map_err(DistillError::State)?,
        )
    };
    let mut save = |l: &dyn Learner, done: usize, log: &[DistillEpoch]| -> Result<(), String> {
        std::fs::create_dir_all(&state_dir).map_err(|e| e.to_string())?;
        let (t, hs) = l.states();
        crate::checkpoint::safetensors_io::save(&t, &state_dir.join("trunk.safetensors"))
            .map_err(|e| e.to_string())?;
        for (i, h) in hs.iter().enumerate() {
            crate::checkpoint::safetensors_io::save(
                h,
                &state_dir.join(format!("head{i}.safetensors")),
            )
            .map_err(|e| e.to_string())?;
        }
        l.save_optimizer(&state_dir)?;
        let info = fingerprint(log, done, l.param_ids());
        crate::util::write_atomic(
            &state_dir.join("state.json"),
            &serde_json::to_vec_pretty(&info).expect("json"),
        )
        .map_err(|e| e.to_string())
    };
    let (start, log0) = match info {
        Some(i) => (i.epochs_done, i.log),
        None => (0, Vec::new()),
    };
    let t_train = Instant::now();
    let log = distill::distill(
        learner.as_mut(),
        &teachers,
        &set,
        pools.clone(),
        &options,
        &sm.heads
            .iter()
            .map(|h| (h.head.clone(), h.classes.clone()))
            .collect::<Vec<_>>(),
        feature_cut,
        start,
        log0,
        &mut save,
        &mut Progress(obs),
    )
    .map_err(DistillError::State)?;
    let train_seconds = t_train.elapsed().as_secs_f64();
    let (mut new_trunk, mut new_heads): (StateDict, Vec<StateDict>) = learner.states();
    drop(learner);

    // BN reset on the union of the teachers' images (train mode only), then the result
    let mut manifest = sm.clone();
    let mut bn_reset_images = 0;
    if plan.bn == BnHandling::Train {
        let opts = crate::collect::ProbeOptions::bn_reset(
            Some(plan.bn_reset_images),
            options.batch_size.max(1),
            options.seed,
        );
        let batches = crate::collect::probe_batches(&set, &opts);
        bn_reset_images = crate::collect::probe::images(&batches);
        crate::progress::phase(obs, "BN reset", bn_reset_images as u64, |p| {
            crate::rewrite::bn_reset::reset(
                &manifest,
                &mut new_trunk,
                &mut new_heads,
                &batches,
                &plan.device,
                p,
            )
        })?;
    }
    let result = System::from_parts(&manifest, &new_trunk, &new_heads, device)?;
    let after = eval(std::slice::from_ref(&result), obs);
    let images_seen: usize = log.iter().map(|e| e.images).sum();
    let teachers_report: Vec<TeacherReport> = plan
        .teachers
        .iter()
        .enumerate()
        .map(|(i, t)| {
            let student_task = after.as_ref().map(|a| a.tasks[i].accuracy);
            TeacherReport {
                model: t.display().to_string(),
                classes: tasks[i].clone(),
                images: pools[i].len(),
                data: match plan.unlabeled.get(i) {
                    Some(d) => d.display().to_string(),
                    None => format!(
                        "{} (images of its classes)",
                        crate::data::split_dir(&plan.data_root, "train").display()
                    ),
                },
                task_accuracy: teacher_acc[i],
                retention: match (student_task, teacher_acc[i]) {
                    (Some(s), Some(t)) if t > 0.0 => Some(100.0 * s / t),
                    _ => None,
                },
            }
        })
        .collect();
    let mut folders = match &blocks {
        None => vec![crate::provenance::DataFolder {
            role: "train",
            path: crate::data::split_dir(&plan.data_root, "train")
                .display()
                .to_string(),
            images: set.len(),
        }],
        Some(b) => plan
            .unlabeled
            .iter()
            .zip(b)
            .map(|(d, r)| crate::provenance::DataFolder {
                role: "unlabeled",
                path: d.display().to_string(),
                images: r.len(),
            })
            .collect(),
    };
    if let Some(t) = &test {
        folders.push(crate::provenance::DataFolder::test_split(
            &plan.data_root,
            t.len(),
        ));
    }
    let provenance = crate::provenance::Provenance::new(
        &plan.command,
        &plan.backend,
        folders,
        &serde_json::json!({
            "options": options,
            "bn": plan.bn,
            "bn_reset_images": plan.bn_reset_images,
            "images_per_teacher": plan.images_per_teacher,
            "test": plan.test,
        }),
    );
    let report = DistillReport {
        provenance,
        student: plan.student.display().to_string(),
        teachers: teachers_report,
        options: options.clone(),
        bn: plan.bn,
        bn_reset_images,
        images_per_teacher: plan.images_per_teacher,
        before,
        after,
        ensemble,
        flops,
        images_seen,
        epochs: log,
        train_seconds,
        wall_seconds: t_all.elapsed().as_secs_f64(),
        training_path: path.to_string(),
    };
    manifest.provenance = serde_json::json!({
        "distill": serde_json::to_value(&report).expect("json"),
        "student_provenance": sm.provenance,
    });
    let mut files: Vec<(String, &StateDict)> = vec![(manifest.weights.clone(), &new_trunk)];
    let head_files = manifest.heads.iter().filter_map(|h| h.weights.clone());
    files.extend(head_files.zip(new_heads.iter()));
    checkpoint::write_model_with(
        &plan.out,
        &manifest,
        &files,
        &[(
            "report.json".to_string(),
            serde_json::to_vec_pretty(&report).expect("json"),
        )],
    )?;
    std::fs::remove_dir_all(&state_dir).ok();
    Ok(report)
}

/// Whether `head` is a text head (for messages).
pub fn is_text(head: &HeadSpec) -> bool {
    matches!(head, HeadSpec::Text { .. })
}
