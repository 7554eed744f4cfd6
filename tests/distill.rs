//! `zipmerge distill` (issue 27): a student equal to its teacher is left as it is, the same seed
//! gives the same bits, the replay share is honoured, and bad input is one `error:` line with
//! nothing written. The losses' values and gradients are checked in `src/distill/loss.rs`, the
//! batch composition in `src/distill/mix.rs`.

mod common;

use common::run;

const SAMPLE: &str = "datasets/cifar10-sample";
const A: &str = "models/cifar10-5+5/resnet20x1-a";
const B: &str = "models/cifar10-5+5/resnet20x1-b";

/// `distill` on the sample with small settings, then `extra`.
fn distill(student: &str, teachers: &[&str], out: &std::path::Path, extra: &[&str]) -> Vec<String> {
    let mut v: Vec<String> = ["distill", "--student", student, "--data", SAMPLE]
        .iter()
        .map(|s| s.to_string())
        .collect();
    for t in teachers {
        v.extend(["--teacher".to_string(), t.to_string()]);
    }
    v.extend(
        [
            "--images",
            "48",
            "--batch-size",
            "24",
            "--epochs",
            "1",
            "--head-epochs",
            "1",
            "--bn-reset-images",
            "48",
            "--out",
            out.to_str().unwrap(),
            "--json",
            "-q",
        ]
        .iter()
        .map(|s| s.to_string()),
    );
    v.extend(extra.iter().map(|s| s.to_string()));
    v
}

fn ok(args: &[String]) -> serde_json::Value {
    let o = run(args);
    assert!(
        o.status.success(),
        "{args:?}: {}",
        String::from_utf8_lossy(&o.stderr)
    );
    serde_json::from_slice(&o.stdout).unwrap()
}

/// ZipIt! of the shipped pair on the sample up to `stop`, written under `dir`.
fn merge_sample(dir: &std::path::Path, stop: &str) -> std::path::PathBuf {
    let merged = dir.join(format!("zip-{}", stop.replace('/', "of")));
    let o = run(&[
        "merge",
        "--model",
        A,
        "--model",
        B,
        "--data",
        SAMPLE,
        "--stop",
        stop,
        "--probe-images",
        "100",
        "--bn-reset-images",
        "100",
        "--out",
        merged.to_str().unwrap(),
        "-q",
    ]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    merged
}

fn weights(dir: &std::path::Path) -> zipmerge::checkpoint::StateDict {
    zipmerge::checkpoint::safetensors_io::load(&dir.join("model.safetensors")).unwrap()
}

#[test]
fn a_student_equal_to_its_teacher_is_left_as_it_is() {
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("same");
    // BN frozen (no batch statistics, no reset) and no weight decay: only the loss could move
    // the weights. The teacher runs through burn's forward (ZIPMERGE_ENGINE=burn), the
    // student's own kernels: the loss is zero up to f32 rounding (a unit vector's cosine with
    // itself is 1 within 1e-7), and SGD's gradient-sized steps keep the weights within that
    // rounding's reach (AdamW normalises its steps, so it would walk on rounding noise)
    for loss in ["joint", "embedding"] {
        let args = distill(
            A,
            &[A],
            &out,
            &[
                "--bn",
                "frozen",
                "--weight-decay",
                "0",
                "--no-test",
                "--loss",
                loss,
                "--optimizer",
                "sgd",
                "--lr",
                "0.1",
            ],
        );
        let o = std::process::Command::new(env!("CARGO_BIN_EXE_zipmerge"))
            .args(&args)
            .env("ZIPMERGE_ENGINE", "burn")
            .env("XDG_RUNTIME_DIR", std::env::temp_dir())
            .output()
            .unwrap();
        assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
        let r: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
        for e in r["epochs"].as_array().unwrap() {
            let l = e["loss"][0].as_f64().unwrap();
            assert!(l.abs() < 1e-6, "{loss}: loss {l}");
        }
        check_unmoved(&out);
    }
}

/// Every tensor of `out` within 1e-5 (relative to its largest value) of model A's.
fn check_unmoved(out: &std::path::Path) {
    let (before, after) = (weights(std::path::Path::new(A)), weights(out));
    for (k, t) in &before {
        let d = t
            .data
            .iter()
            .zip(&after[k].data)
            .map(|(x, y)| (x - y).abs())
            .fold(0f32, f32::max);
        let m = t.data.iter().map(|x| x.abs()).fold(0f32, f32::max);
        assert!(
            d <= 1e-5 * m.max(1.0),
            "`{k}` moved by {d} (largest value {m})"
        );
    }
}

#[test]
fn the_same_seed_gives_the_same_bits_and_replay_keeps_its_share() {
    let tmp = tempfile::tempdir().unwrap();
    let merged = merge_sample(tmp.path(), "full");
    let m = merged.to_str().unwrap();
    let (x, y) = (tmp.path().join("x"), tmp.path().join("y"));
    let extra = ["--replay-frac", "0.25", "--seed", "3"];
    let rx = ok(&distill(m, &[A, B], &x, &extra));
    ok(&distill(m, &[A, B], &y, &extra));
    let (wx, wy) = (weights(&x), weights(&y));
    for (k, t) in &wx {
        assert!(t.data == wy[k].data, "`{k}` differs between two runs");
    }
    // teacher A keeps a quarter of its 48 images, teacher B all of them
    assert_eq!(rx["teachers"][0]["images"], 12);
    assert_eq!(rx["teachers"][1]["images"], 48);
    // every batch holds 12 + 12 images; an epoch reads (12 + 48) / 24 -> 3 batches
    assert_eq!(rx["options"]["counts"], serde_json::json!([12, 12]));
    assert_eq!(rx["epochs"][0]["images"], 72);
    // a single-network student with BN in train mode trains on the CPU engine
    assert_eq!(rx["training_path"], "engine");
    // the report names the teachers' accuracy and the student's retention
    let t0 = &rx["teachers"][0];
    assert!(t0["task_accuracy"].as_f64().unwrap() > 50.0);
    assert!(t0["retention"].as_f64().is_some());
    assert!(rx["provenance"]["command"]
        .as_str()
        .unwrap()
        .contains("distill"));
    assert!(x.join("report.json").is_file());
}

#[test]
fn without_augmentation_each_teacher_runs_once_per_image() {
    // the joint loss runs both teachers on all 96 images of an epoch (48 per teacher): 192
    // teacher forwards; without augmentation the second epoch reuses them all
    let tmp = tempfile::tempdir().unwrap();
    let (x, y) = (tmp.path().join("x"), tmp.path().join("y"));
    let cached = ok(&distill(A, &[A, B], &x, &["--no-augment"]));
    assert_eq!(cached["epochs"][0]["images"], 96);
    assert_eq!(cached["epochs"][0]["teacher_images"], 192);
    assert_eq!(cached["epochs"][1]["teacher_images"], 0);
    let fresh = ok(&distill(A, &[A, B], &y, &[]));
    assert_eq!(fresh["epochs"][1]["teacher_images"], 192);
}

#[test]
fn a_partial_zip_learns_its_teachers_features() {
    // ZipIt!13/20: the head networks start at layer 3; the feature term compares each with its
    // teacher one cut later and is reported per teacher; both train on the engine
    let tmp = tempfile::tempdir().unwrap();
    let merged = merge_sample(tmp.path(), "13/20");
    let m = merged.to_str().unwrap();
    let (x, y) = (tmp.path().join("x"), tmp.path().join("y"));
    let with = ok(&distill(m, &[A, B], &x, &["--feature-weight", "1"]));
    let without = ok(&distill(m, &[A, B], &y, &[]));
    assert_eq!(with["training_path"], "engine");
    assert_eq!(without["training_path"], "engine");
    let f = with["epochs"][0]["feature_loss"].as_array().unwrap();
    assert_eq!(f.len(), 2);
    assert!(f.iter().all(|v| v.as_f64().unwrap() > 0.0));
    assert!(without["epochs"][0].get("feature_loss").is_none());
    // the head stage trains the head networks, where the feature term acts: other weights
    let head0 = |d: &std::path::Path| {
        zipmerge::checkpoint::safetensors_io::load(&d.join("head0.safetensors")).unwrap()
    };
    assert_ne!(
        head0(&x)["layer3.0.conv1.weight"].data,
        head0(&y)["layer3.0.conv1.weight"].data
    );
}

#[test]
fn bad_input_is_one_error_line_and_nothing_is_written() {
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("never");
    let r50 = "models/cifar10-5+5-resnet50/resnet50w4-a";
    // a linear-head ResNet-20 on two classes (one short epoch)
    let linear = tmp.path().join("linear").display().to_string();
    ok(&[
        "train",
        "--arch",
        "resnet20",
        "--head",
        "linear",
        "--classes",
        "0,5",
        "--data",
        SAMPLE,
        "--limit",
        "16",
        "--epochs",
        "1",
        "--batch-size",
        "16",
        "--out",
        &linear,
        "--json",
        "-q",
    ]
    .map(String::from));
    for (args, code, says) in [
        // a teacher whose head the student does not have (linear vs text)
        (distill(A, &[r50], &out, &[]), 1, "takes inputs as"),
        // a text teacher and a student whose only head is linear (a text head would do: it
        // scores any class of its table, so model A may learn B's classes, SAM-CLIP's start)
        (
            distill(&linear, &[B], &out, &[]),
            1,
            "no head of the student",
        ),
        (
            distill(A, &[A], &out, &["--replay-frac", "0"]),
            2,
            "--replay-frac 0",
        ),
        (
            distill(A, &[A], &out, &["--replay-frac", "1.5"]),
            2,
            "--replay-frac 1.5",
        ),
        (distill(A, &[A], &out, &["--epochs", "0"]), 2, "--epochs"),
        (
            distill(A, &[A, B], &out, &["--unlabeled", SAMPLE]),
            2,
            "--unlabeled: given 1 times for 2 teachers",
        ),
        (distill(A, &[A], &out, &["--mix", "1,1"]), 2, "--mix"),
        // the feature term needs head networks after a stop; a single network has none
        (
            distill(A, &[A], &out, &["--feature-weight", "1"]),
            2,
            "--feature-weight 1",
        ),
        (
            distill(A, &[A], &out, &["--feature-weight", "-1"]),
            2,
            "--feature-weight",
        ),
        (
            distill(
                A,
                &[A],
                &out,
                &["--loss", "embedding", "--temperature", "2"],
            ),
            2,
            "--temperature",
        ),
        (
            distill(
                A,
                &[A],
                &out,
                &["--bn", "frozen", "--bn-reset-images", "10"],
            ),
            2,
            "--bn-reset-images",
        ),
    ] {
        let o = run(&args);
        let err = String::from_utf8_lossy(&o.stderr);
        assert_eq!(o.status.code(), Some(code), "{args:?}: {err}");
        assert_eq!(err.lines().count(), 1, "{err}");
        assert!(
            err.starts_with("error: ") && err.contains(says),
            "{says}: {err}"
        );
        assert!(!out.exists());
        assert!(!zipmerge::ops::distill::state_dir_of(&out).exists());
    }
}

#[test]
fn unlabeled_folders_replace_the_task_images() {
    // each teacher's domain is its own folder (here the sample's test images, classes ignored),
    // capped by --images; the report and provenance name the folders
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("u");
    let folder = format!("{SAMPLE}/test");
    let r = ok(&distill(
        A,
        &[A, B],
        &out,
        &["--unlabeled", &folder, "--unlabeled", &folder, "--no-test"],
    ));
    for t in r["teachers"].as_array().unwrap() {
        assert_eq!(t["images"], 48, "{t}");
        assert_eq!(t["data"], folder.as_str(), "{t}");
    }
    let folders = r["provenance"]["data"].to_string();
    assert!(folders.contains("unlabeled"), "{folders}");
}

/// Largest |a - b| over the largest |b| (0 when both are all zero).
fn rel_inf(a: &[f32], b: &[f32]) -> f32 {
    let d = a.iter().zip(b).fold(0f32, |m, (x, y)| m.max((x - y).abs()));
    let s = b.iter().fold(0f32, |m, y| m.max(y.abs()));
    if s == 0.0 {
        d
    } else {
        d / s
    }
}

#[test]
fn the_engine_learner_follows_the_burn_learner() {
    // the same student, images and dL/doutput through both paths, for a single network and a
    // partial zip (trunk to cut 2, two head networks from it): outputs, then each tensor's
    // change after one SGD step (head group at 1, trunk at 0.5: the change is the gradient
    // times the group's rate), a head-only step leaving the trunk alone, and two AdamW steps
    use burn::tensor::Device;
    use zipmerge::checkpoint::StateDict;
    use zipmerge::data::{ImageSet, Preprocess};
    use zipmerge::distill::learner::{BurnLearner, EngineLearner, Learner};
    use zipmerge::distill::{BnHandling, Optimizer, Student};
    use zipmerge::engine::train::TrainNet;
    use zipmerge::models::compile::compile_state;
    use zipmerge::models::{Arch, Net, NetConfig};
    let cfg = NetConfig {
        arch: Arch::Resnet20,
        width: 1,
        out: 8,
    };
    let state = common::random_state(&cfg, 3);
    let head_states = [common::random_state(&cfg, 4), common::random_state(&cfg, 5)];
    let stop = 2;
    let set = ImageSet::load(
        std::path::Path::new("datasets/cifar10-sample/train"),
        "train",
        Preprocess::CIFAR,
    )
    .unwrap();
    let refs: Vec<&[u8]> = (0..8).map(|i| set.image(i * 3)).collect();
    let d_out: Vec<Vec<f32>> = (0..2)
        .map(|h| {
            (0..64)
                .map(|k| (((k * 7 + h * 5) % 11) as f32 - 5.0) * 0.01)
                .collect()
        })
        .collect();
    let compile = |s: &StateDict, from: usize, to: usize| {
        TrainNet::segment(&compile_state(cfg.arch, s).unwrap(), from, to).without_winograd()
    };
    let make =
        |opt: Optimizer, partial: bool, cut: Option<usize>| -> (BurnLearner, EngineLearner) {
            let ad = Device::flex().autodiff();
            let heads: &[StateDict] = if partial { &head_states } else { &[] };
            let student = Student {
                trunk: Net::from_state(&cfg, &state, &ad).unwrap(),
                heads: heads
                    .iter()
                    .map(|h| Net::from_state(&cfg, h, &ad).unwrap())
                    .collect(),
            };
            let b =
                BurnLearner::new(student, stop, 2, opt, 0.0, BnHandling::Train, ad, None).unwrap();
            let out = cfg.arch.output_cut();
            let trunk = compile(&state, 0, if partial { stop } else { out });
            let bounds: Vec<usize> = match cut {
                Some(c) => vec![stop, c, out],
                None => vec![stop, out],
            };
            let hs = heads
                .iter()
                .map(|h| {
                    let segs = bounds
                        .windows(2)
                        .map(|w| compile(h, w[0], w[1]).with_input_grad())
                        .collect();
                    (segs, h.clone())
                })
                .collect();
            let e = EngineLearner::new((trunk, state.clone()), hs, 2, opt, 0.0, None).unwrap();
            (b, e)
        };
    let compare = |b: &dyn Learner, e: &dyn Learner, tol: f32, what: &str| {
        let ((bt, bh), (et, eh)) = (b.states(), e.states());
        let before = std::iter::once(&state).chain(head_states.iter());
        let mut bad = Vec::new();
        for (k, ((bs, es), before)) in std::iter::once(&bt)
            .chain(&bh)
            .zip(std::iter::once(&et).chain(&eh))
            .zip(before)
            .enumerate()
        {
            for (name, t) in bs {
                // burn's BN updates running variances with the biased batch variance, the
                // engine with PyTorch's unbiased one (checked in tests/engine_train.rs); the
                // distilled model's BN is reset at the end either way
                if name.ends_with("running_var") {
                    continue;
                }
                let b0 = &before[name].data;
                let db: Vec<f32> = t.data.iter().zip(b0).map(|(x, y)| x - y).collect();
                let de: Vec<f32> = es[name].data.iter().zip(b0).map(|(x, y)| x - y).collect();
                let r = rel_inf(&de, &db);
                if r > tol {
                    bad.push(format!(
                        "{what}: network {k}: {name}: relative error {r:.2e}"
                    ));
                }
            }
        }
        assert!(bad.is_empty(), "{}", bad.join("\n"));
    };
    for partial in [false, true] {
        let what = if partial {
            "partial zip"
        } else {
            "single network"
        };
        let (mut b, mut e) = make(Optimizer::Sgd, partial, None);
        let (ob, oe) = (
            b.forward(&refs, Preprocess::CIFAR, None),
            e.forward(&refs, Preprocess::CIFAR, None),
        );
        assert_eq!((ob.outs.len(), oe.outs.len()), (2, 2));
        for (x, y) in oe.outs.iter().zip(&ob.outs) {
            assert!(rel_inf(&x.0, &y.0) < 1e-5, "{what}: outputs differ");
        }
        b.step(d_out.clone(), Vec::new(), 1.0, Some(0.5));
        e.step(d_out.clone(), Vec::new(), 1.0, Some(0.5));
        compare(&b, &e, 1e-4, &format!("{what}, SGD step"));
        // a head-only step on fresh learners: the trunk keeps its values on both paths
        let (mut b, mut e) = make(Optimizer::Sgd, partial, None);
        b.forward(&refs, Preprocess::CIFAR, None);
        e.forward(&refs, Preprocess::CIFAR, None);
        b.step(d_out.clone(), Vec::new(), 1.0, None);
        e.step(d_out.clone(), Vec::new(), 1.0, None);
        let (et, eh) = e.states();
        assert_eq!(et["conv1.weight"].data, state["conv1.weight"].data);
        let moved = eh.first().unwrap_or(&et);
        let first = if partial { &head_states[0] } else { &state };
        assert_ne!(moved["linear.weight"].data, first["linear.weight"].data);
        compare(&b, &e, 1e-4, &format!("{what}, head-only step"));
        // AdamW: its normalised steps; two of them (the second with its moments)
        let (mut b, mut e) = make(Optimizer::AdamW, partial, None);
        for _ in 0..2 {
            b.forward(&refs, Preprocess::CIFAR, None);
            e.forward(&refs, Preprocess::CIFAR, None);
            b.step(d_out.clone(), Vec::new(), 1e-3, Some(1e-3));
            e.step(d_out.clone(), Vec::new(), 1e-3, Some(1e-3));
        }
        compare(&b, &e, 2e-2, &format!("{what}, AdamW steps"));
    }
    // the feature term's path: head networks split at cut 3 (layer 3's output, [8, 64, 8, 8]);
    // the engine gives features in NHWC order, burn in NCHW; one SGD step with a gradient on
    // both the outputs and the features
    let (mut b, mut e) = make(Optimizer::Sgd, true, Some(3));
    let (fb, fe) = (
        b.forward(&refs, Preprocess::CIFAR, Some(3)),
        e.forward(&refs, Preprocess::CIFAR, Some(3)),
    );
    assert!(e.features_nhwc() && !b.features_nhwc());
    let (n, c, hw) = (8, 64, 64);
    let to_nhwc = |v: &[f32]| -> Vec<f32> {
        let mut o = vec![0f32; v.len()];
        for i in 0..n {
            for ch in 0..c {
                for p in 0..hw {
                    o[(i * hw + p) * c + ch] = v[(i * c + ch) * hw + p];
                }
            }
        }
        o
    };
    assert_eq!(fb.feats.len(), 2);
    for (x, y) in fe.feats.iter().zip(&fb.feats) {
        assert_eq!(y.len(), n * c * hw);
        assert!(rel_inf(x, &to_nhwc(y)) < 1e-5, "features differ");
    }
    for (x, y) in fe.outs.iter().zip(&fb.outs) {
        assert!(rel_inf(&x.0, &y.0) < 1e-5, "outputs after the split differ");
    }
    let d_feat: Vec<Vec<f32>> = (0..2)
        .map(|h| {
            (0..n * c * hw)
                .map(|k| (((k * 13 + h * 3) % 17) as f32 - 8.0) * 1e-3)
                .collect()
        })
        .collect();
    b.step(d_out.clone(), d_feat.clone(), 1.0, Some(0.5));
    e.step(
        d_out.clone(),
        d_feat.iter().map(|v| to_nhwc(v)).collect(),
        1.0,
        Some(0.5),
    );
    compare(
        &b,
        &e,
        1e-4,
        "partial zip split at the feature cut, SGD step",
    );
}

#[test]
fn an_interrupted_engine_run_resumes_to_the_same_bits() {
    // model B's weights taught by teacher A on the sample, 1 + 2 epochs of AdamW on the engine:
    // uninterrupted, and stopped after epoch 1 (its state written as `distill` writes it),
    // then resumed from that state by a new learner (without the optimiser file it differs)
    use burn::tensor::Device;
    use zipmerge::checkpoint::{safetensors_io, StateDict};
    use zipmerge::data::{ImageSet, Preprocess};
    use zipmerge::distill::learner::{EngineLearner, Learner, ENGINE_OPTIMIZER_FILE};
    use zipmerge::distill::{
        distill, DistillEpoch, DistillLoss, DistillObserver, DistillOptions, Optimizer, Teacher,
        TeacherNet,
    };
    use zipmerge::engine::train::TrainNet;
    use zipmerge::models::compile::compile_state;
    use zipmerge::system::System;
    struct Quiet;
    impl DistillObserver for Quiet {}
    let dev = Device::flex();
    let ta = System::load(std::path::Path::new(A), &dev).unwrap();
    let head = ta.heads[0].spec.clone();
    let classes = ta.heads[0].classes.clone();
    let teachers = [Teacher {
        net: TeacherNet::Engine(ta.compile().unwrap()),
        head: head.clone(),
        student_head: 0,
        columns: Vec::new(),
        classes: classes.clone(),
    }];
    let student_state = weights(std::path::Path::new(B));
    let arch = zipmerge::models::Arch::Resnet20;
    let learner = |s: &StateDict, opt: Option<&std::path::Path>| {
        let net = TrainNet::new(&compile_state(arch, s).unwrap());
        EngineLearner::new((net, s.clone()), Vec::new(), 1, Optimizer::AdamW, 1e-4, opt).unwrap()
    };
    let set = ImageSet::load(
        std::path::Path::new("datasets/cifar10-sample/train"),
        "train",
        Preprocess::CIFAR,
    )
    .unwrap();
    let pools = vec![(0..set.len().min(32)).collect::<Vec<usize>>()];
    let o = DistillOptions {
        head_epochs: 1,
        epochs: 2,
        batch_size: 16,
        lr: 1e-3,
        trunk_lr_mult: 1.0,
        optimizer: Optimizer::AdamW,
        weight_decay: 1e-4,
        loss: DistillLoss::Joint,
        temperature: 4.0,
        mix: vec![1.0],
        counts: vec![16],
        replay_frac: 1.0,
        augment: true,
        seed: 5,
        feature_weight: 0.0,
    };
    let heads = [(head, classes)];
    let mut keep = |_: &dyn Learner, _: usize, _: &[DistillEpoch]| Ok(());
    let mut run = |l: &mut EngineLearner, start: usize, log: Vec<DistillEpoch>| {
        distill(
            l,
            &teachers,
            &set,
            pools.clone(),
            &o,
            &heads,
            None,
            start,
            log,
            &mut keep,
            &mut Quiet,
        )
        .unwrap()
    };
    let mut full = learner(&student_state, None);
    let log = run(&mut full, 0, Vec::new());
    assert_eq!(log.len(), 3);
    let tmp = tempfile::tempdir().unwrap();
    let mut saved: Option<(StateDict, Vec<DistillEpoch>)> = None;
    let mut stop_after_one = |l: &dyn Learner, done: usize, log: &[DistillEpoch]| {
        l.save_optimizer(tmp.path())?;
        saved = Some((l.states().0, log.to_vec()));
        if done == 1 {
            Err("interrupted".to_string())
        } else {
            Ok(())
        }
    };
    let mut first = learner(&student_state, None);
    let r = distill(
        &mut first,
        &teachers,
        &set,
        pools.clone(),
        &o,
        &heads,
        None,
        0,
        Vec::new(),
        &mut stop_after_one,
        &mut Quiet,
    );
    assert_eq!(r.unwrap_err(), "interrupted");
    let (state1, log1) = saved.take().unwrap();
    // the state as written to disk and read back
    let file = tmp.path().join("trunk.safetensors");
    safetensors_io::save(&state1, &file).unwrap();
    let state1 = safetensors_io::load(&file).unwrap();
    let same = |l: &EngineLearner| {
        let (a, b) = (full.states().0, l.states().0);
        a.iter().all(|(k, t)| t.data == b[k].data)
    };
    let mut resumed = learner(&state1, Some(&tmp.path().join(ENGINE_OPTIMIZER_FILE)));
    let log2 = run(&mut resumed, 1, log1.clone());
    assert_eq!(log2.len(), 3);
    assert!(
        same(&resumed),
        "the resumed run differs from the uninterrupted one"
    );
    for (a, b) in log.iter().zip(&log2) {
        assert_eq!(a.loss, b.loss, "epoch {} loss", a.epoch);
    }
    // the optimiser state matters: without it the run goes elsewhere
    let mut fresh = learner(&state1, None);
    run(&mut fresh, 1, log1);
    assert!(
        !same(&fresh),
        "a resume without the optimiser state gave the same bits"
    );
}
