//! Training (`src/train/`): the learning-rate schedule against the reference's points, one seed
//! giving one set of weights, and `--resume` after an interrupted run giving the bits of an
//! uninterrupted one (the optimizer's momentum included). The interrupted runs panic on purpose
//! (`(expected)` in the output).

use std::panic::{catch_unwind, AssertUnwindSafe};
use std::path::{Path, PathBuf};

use burn::tensor::Device;
use zipmerge::checkpoint::safetensors_io;
use zipmerge::models::head::HeadChoice;
use zipmerge::models::Arch;
use zipmerge::ops::train::{run, TaskChoice, TrainPlan};
use zipmerge::progress::{Observer, Silent};
use zipmerge::train::lr_multiplier;

/// Reference doc §6: a per-iteration multiplier, piecewise linear through (0 -> 0),
/// (5 epochs -> 1), (E epochs -> 0); the points and their midpoints, for E = 100.
#[test]
fn the_schedule_is_linear_warm_up_then_linear_decay() {
    for (t, want) in [
        (0.0, 0.0),
        (1.0, 0.2),
        (2.5, 0.5),
        (5.0, 1.0),
        (52.5, 0.5),
        (90.5, 0.1),
        (100.0, 0.0),
    ] {
        let got = lr_multiplier(t, 5.0, 100.0);
        assert!((got - want).abs() < 1e-12, "t {t}: {got}, expected {want}");
    }
    // no warm-up: full rate at the start
    assert_eq!(lr_multiplier(0.0, 0.0, 10.0), 1.0);
}

/// Stops the run (a panic, as a kill would) when epoch `at` starts.
struct StopAt(&'static str);

impl Observer for StopAt {
    fn begin(&mut self, label: &str, _total: u64) {
        assert_ne!(label, self.0, "(expected) the test stops the run here");
    }
}

fn plan(out: &Path, resume: bool) -> TrainPlan {
    plan_on(out, resume, true)
}

/// [`plan`] on the CPU engine's training path (`engine`) or burn's autodiff.
fn plan_on(out: &Path, resume: bool, engine: bool) -> TrainPlan {
    TrainPlan {
        arch: Arch::Resnet20,
        width: 1,
        head: HeadChoice::Linear,
        task: TaskChoice::Classes("0,1".into()),
        data_root: "datasets/cifar10-sample".into(),
        limit: Some(40),
        epochs: 3,
        warmup: 1.0,
        batch_size: 16,
        lr: 0.05,
        weight_decay: 5e-4,
        seed: 7,
        out: out.to_path_buf(),
        resume,
        init: None,
        cutout: None,
        cache_gib: 1.0,
        device: Device::flex(),
        engine,
        backend: "flex".into(),
        command: String::new(),
    }
}

fn weights(dir: &Path) -> zipmerge::checkpoint::StateDict {
    safetensors_io::load(&dir.join("model.safetensors")).unwrap()
}

#[test]
fn resume_after_an_interrupted_run_gives_the_same_weights() {
    // on both training paths
    for engine in [true, false] {
        resume_on(engine);
    }
}

fn resume_on(engine: bool) {
    let tmp = tempfile::tempdir().unwrap();
    let (full, cut): (PathBuf, PathBuf) = (tmp.path().join("full"), tmp.path().join("cut"));
    run(&plan_on(&full, false, engine), &mut Silent).unwrap();

    // killed when epoch 3 starts: two epochs are saved in the training state
    let stopped = catch_unwind(AssertUnwindSafe(|| {
        run(&plan_on(&cut, false, engine), &mut StopAt("epoch 3"))
    }));
    assert!(stopped.is_err(), "the run was not stopped");
    assert!(!cut.exists(), "an interrupted run wrote its model folder");
    let state = PathBuf::from(format!("{}.train-state", cut.display()));
    let info: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(state.join("resume.json")).unwrap()).unwrap();
    assert_eq!(info["epochs_done"], 2);

    // burn's path: a state whose parameter ids are missing (written before they were saved) or
    // do not fit the network is refused, naming its resume.json, instead of resuming without
    // momentum (the engine keys its momentum by tensor name, `momentum.safetensors`)
    let json = state.join("resume.json");
    let saved: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&json).unwrap()).unwrap();
    let bad_ids = if engine {
        vec![]
    } else {
        vec![serde_json::Value::Null, serde_json::json!([1, 2, 3])]
    };
    for ids in bad_ids {
        let mut edited = saved.clone();
        edited["param_ids"] = ids;
        std::fs::write(&json, edited.to_string()).unwrap();
        let e = run(&plan_on(&cut, true, engine), &mut Silent)
            .unwrap_err()
            .to_string();
        assert!(e.contains("resume.json"), "{e}");
        assert!(e.contains("parameter ids"), "{e}");
    }
    std::fs::write(&json, saved.to_string()).unwrap();

    // --resume trains epoch 3 only: the weights are the uninterrupted run's, bit for bit
    let r = run(&plan_on(&cut, true, engine), &mut StopAt("epoch 1")).unwrap();
    assert_eq!(r.epochs_log.len(), 3, "the log of all three epochs is kept");
    let (a, b) = (weights(&full), weights(&cut));
    assert_eq!(a.keys().collect::<Vec<_>>(), b.keys().collect::<Vec<_>>());
    for (k, t) in &a {
        assert!(t.data == b[k].data, "tensor `{k}` differs after resuming");
    }

    // the finished run keeps its state; a run without --resume is refused, not restarted
    let e = run(&plan_on(&cut, false, engine), &mut StopAt("epoch 1"))
        .unwrap_err()
        .to_string();
    assert!(e.contains("--resume"), "{e}");
}

/// `--resume --epochs N` extends a finished run: the epochs done are kept as they ran, the new
/// ones follow a schedule re-planned for N epochs, and the extension is deterministic.
#[test]
fn resume_with_more_epochs_extends_a_finished_run() {
    let tmp = tempfile::tempdir().unwrap();
    let (a, b) = (tmp.path().join("a"), tmp.path().join("b"));
    let three_a = run(&plan(&a, false), &mut Silent).unwrap();
    run(&plan(&b, false), &mut Silent).unwrap();
    let before = weights(&a);
    let longer = |out: &Path| TrainPlan {
        epochs: 5,
        ..plan(out, true)
    };
    // epochs 1-3 are not run again
    let r = run(&longer(&a), &mut StopAt("epoch 3")).unwrap();
    assert_eq!(r.epochs_log.len(), 5);
    let plans: Vec<usize> = r.epochs_log.iter().map(|l| l.schedule_epochs).collect();
    assert_eq!(plans, [3, 3, 3, 5, 5]);
    for (x, y) in r.epochs_log.iter().zip(&three_a.epochs_log) {
        assert_eq!(x.loss.to_bits(), y.loss.to_bits(), "epoch {}", x.epoch);
    }
    // the re-planned schedule trains: the weights moved, the same way on a second copy
    let after = weights(&a);
    assert!(before.iter().any(|(k, t)| t.data != after[k].data));
    run(&longer(&b), &mut Silent).unwrap();
    for (k, t) in &after {
        assert!(
            t.data == weights(&b)[k].data,
            "tensor `{k}` differs between two extensions"
        );
    }
    // the manifest records the run as it ran
    let m: serde_json::Value =
        serde_json::from_slice(&std::fs::read(a.join("manifest.json")).unwrap()).unwrap();
    let log = &m["provenance"]["training"]["epochs_log"];
    assert_eq!(log[0]["schedule_epochs"], 3);
    assert_eq!(log[4]["schedule_epochs"], 5);
    // nothing left to train: refused naming the option
    let e = run(&longer(&a), &mut Silent).unwrap_err().to_string();
    assert!(e.contains("--epochs above 5"), "{e}");
}

/// The brief's rule: same seed, same backend, same bits.
#[test]
fn two_runs_with_one_seed_give_the_same_weights() {
    let tmp = tempfile::tempdir().unwrap();
    let (a, b) = (tmp.path().join("a"), tmp.path().join("b"));
    run(&plan(&a, false), &mut Silent).unwrap();
    run(&plan(&b, false), &mut Silent).unwrap();
    let (a, b) = (weights(&a), weights(&b));
    for (k, t) in &a {
        assert!(t.data == b[k].data, "tensor `{k}` differs between two runs");
    }
}
