//! Task Arithmetic and TIES against an independent numpy port of the official TIES code
//! (`tests/fixtures/make_taskvec_fixture.py`): a base, three fine-tunes, and the merged
//! weights of each case, to 1e-6.

use zipmerge::checkpoint::{safetensors_io, StateDict};
use zipmerge::taskvec::{merge, Disjoint, SignRule, TaskVectorMethod, TaskVectorSettings, Trim};

fn part(all: &StateDict, prefix: &str) -> StateDict {
    all.iter()
        .filter_map(|(k, v)| {
            k.strip_prefix(&format!("{prefix}."))
                .map(|n| (n.to_string(), v.clone()))
        })
        .collect()
}

fn ties(density: f64, trim: Trim, sign: SignRule, disjoint: Disjoint) -> TaskVectorMethod {
    TaskVectorMethod::Ties {
        density,
        trim,
        sign,
        disjoint,
    }
}

#[test]
fn ties_and_task_arithmetic_match_the_official_code() {
    let all = safetensors_io::load("tests/fixtures/taskvec.safetensors".as_ref()).unwrap();
    let base = part(&all, "base");
    let fts: Vec<StateDict> = (0..3).map(|i| part(&all, &format!("ft{i}"))).collect();
    let fts: Vec<&StateDict> = fts.iter().collect();
    let (g, m, mean) = (Trim::Global, SignRule::Mass, Disjoint::Mean);
    let cases: Vec<(&str, TaskVectorMethod, f64, Option<Vec<f64>>)> = vec![
        ("ties_k0.2_l1", ties(0.2, g, m, mean), 1.0, None),
        (
            "ties_k0.5_l1.3_max",
            ties(0.5, g, m, Disjoint::Max),
            1.3,
            None,
        ),
        (
            "ties_k0.3_l0.8_sum_count",
            ties(0.3, g, SignRule::Count, Disjoint::Sum),
            0.8,
            None,
        ),
        (
            "ties_k0.25_l1_pertensor",
            ties(0.25, Trim::PerTensor, m, mean),
            1.0,
            None,
        ),
        ("ta_l0.7", TaskVectorMethod::TaskArithmetic, 0.7, None),
        (
            "ta_l1_w",
            TaskVectorMethod::TaskArithmetic,
            1.0,
            Some(vec![0.5, 0.25, 1.5]),
        ),
    ];
    for (case, method, lambda, weights) in cases {
        let want = part(&all, case);
        assert_eq!(want.len(), base.len(), "{case}: fixture");
        let s = TaskVectorSettings {
            method,
            lambda,
            weights,
            seed: 0,
            groups: vec![],
        };
        let (got, report) = merge(&base, &fts, &s).unwrap();
        let mut worst = 0f32;
        for (k, w) in &want {
            let g = &got[k];
            assert_eq!(g.shape, w.shape, "{case}: {k}");
            for (a, b) in g.data.iter().zip(&w.data) {
                worst = worst.max((a - b).abs());
            }
        }
        assert!(worst <= 1e-6, "{case}: max abs difference {worst:e}");
        // the trim keeps about the density's share (more with ties at the threshold)
        if case == "ties_k0.2_l1" {
            for f in &report.kept_fraction {
                assert!((0.19..0.21).contains(f), "{case}: kept {f}");
            }
        }
    }
}

/// DARE, derived by hand: with one fine-tune, lambda 1 and drop p, every merged entry minus the
/// base is 0 (dropped) or tau / (1 - p) (kept and rescaled), about 1 - p of them kept; the
/// BN running statistics are the base's. DARE-TIES with one model is the same (one sign).
#[test]
fn dare_drops_and_rescales_each_entry() {
    let all = safetensors_io::load("tests/fixtures/taskvec.safetensors".as_ref()).unwrap();
    let base = part(&all, "base");
    let ft = part(&all, "ft0");
    let p = 0.6;
    for method in [
        TaskVectorMethod::DareLinear { drop: p },
        TaskVectorMethod::DareTies {
            drop: p,
            density: 1.0,
            sign: SignRule::Mass,
            disjoint: Disjoint::Mean,
        },
    ] {
        let s = TaskVectorSettings {
            method,
            lambda: 1.0,
            weights: None,
            seed: 7,
            groups: vec![],
        };
        let (got, _) = merge(&base, &[&ft], &s).unwrap();
        let (mut kept, mut nonzero) = (0usize, 0usize);
        for (k, b) in &base {
            if k.contains("running") {
                assert_eq!(got[k].data, b.data, "{k}: not the base's");
                continue;
            }
            for ((g, b), f) in got[k].data.iter().zip(&b.data).zip(&ft[k].data) {
                let (delta, tau) = ((g - b) as f64, (f - b) as f64);
                if tau == 0.0 {
                    continue;
                }
                nonzero += 1;
                let rescaled = tau / (1.0 - p);
                if delta.abs() > 1e-7 {
                    assert!(
                        (delta - rescaled).abs() < 1e-5,
                        "{k}: {delta} vs {rescaled}"
                    );
                    kept += 1;
                }
            }
        }
        let share = kept as f64 / nonzero as f64;
        assert!((share - (1.0 - p)).abs() < 0.06, "kept {share}");
        // the same seed gives the same bits
        let (again, _) = merge(&base, &[&ft], &s).unwrap();
        assert!(again == got);
    }
}

mod common;

/// The CLI end to end on the shipped fine-tunes (no BN reset, so the weights are the formula's):
/// `merge --method ties` (defaults) and `--method task-arithmetic --lambda 0.5` equal the numpy
/// port of the official code (`tests/fixtures/make_ties_cifar_fixture.py`) to 1e-6.
#[test]
fn the_cli_merge_equals_the_official_code_on_the_shipped_fine_tunes() {
    let want =
        safetensors_io::load("tests/fixtures/ties-cifar-ft-expected.safetensors".as_ref()).unwrap();
    let tmp = tempfile::tempdir().unwrap();
    for (case, args) in [
        ("ties", vec!["--method", "ties"]),
        ("ta", vec!["--method", "task-arithmetic", "--lambda", "0.5"]),
    ] {
        let out = tmp.path().join(case);
        let mut cmd = vec![
            "merge",
            "--base",
            "models/cifar10-ft/base",
            "--model",
            "models/cifar10-ft/resnet20x1-a",
            "--model",
            "models/cifar10-ft/resnet20x1-b",
            "--model",
            "models/cifar10-ft/resnet20x1-c",
            "--bn-reset-images",
            "0",
            "--no-eval",
            "-q",
            "--out",
            out.to_str().unwrap(),
        ];
        cmd.extend(args);
        let o = common::run(&cmd);
        assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
        let got = safetensors_io::load(&out.join("model.safetensors")).unwrap();
        let want = part(&want, case);
        assert_eq!(
            got.keys().collect::<Vec<_>>(),
            want.keys().collect::<Vec<_>>()
        );
        let mut worst = 0f32;
        for (k, w) in &want {
            for (a, b) in got[k].data.iter().zip(&w.data) {
                worst = worst.max((a - b).abs());
            }
        }
        eprintln!("{case}: largest difference to the official code {worst:e}");
        assert!(worst <= 1e-6, "{case}: max abs difference {worst:e}");
    }
}
