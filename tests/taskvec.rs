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
