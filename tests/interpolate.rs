//! `zipmerge interpolate`: the ends of the line are the endpoints themselves (no BN reset: the
//! same accuracy and loss as `zipmerge eval`), and aligning B by Permute lowers the barrier of
//! the shipped pair against no alignment.

mod common;
use common::run_json;

const SAMPLE: &str = "datasets/cifar10-sample";
const A: &str = "models/cifar10-5+5/resnet20x1-a";
const B: &str = "models/cifar10-5+5/resnet20x1-b";
const TASKS: &str = "0,5,6,7,9;1,2,3,4,8";

#[test]
fn the_ends_are_the_endpoints_and_permute_lowers_the_barrier() {
    let tmp = tempfile::tempdir().unwrap();
    let r = run_json(&[
        "interpolate",
        "--model",
        A,
        "--model",
        B,
        "--align",
        "none",
        "--points",
        "3",
        "--bn-reset-images",
        "0",
        "--data",
        SAMPLE,
        "--json",
    ]);
    let points = r[0]["points"].as_array().unwrap();
    assert_eq!(points.len(), 3);
    assert_eq!(points[1]["t"], 0.5);
    for (p, m) in [(&points[0], A), (&points[2], B)] {
        let e = run_json(&[
            "eval", "--model", m, "--data", SAMPLE, "--tasks", TASKS, "--json",
        ]);
        assert_eq!(p["accuracy"]["joint"], e["joint"], "{m}");
        for k in 0..2 {
            let (got, want) = (&p["accuracy"]["tasks"][k], &e["tasks"][k]);
            assert_eq!(got["accuracy"], want["accuracy"], "{m} task {k}");
            let d = got["loss"].as_f64().unwrap() - want["loss"].as_f64().unwrap();
            assert!(d.abs() < 1e-9, "{m} task {k}: loss {got} vs {want}");
        }
    }
    // with the BN reset of every point (the default), Permute's barrier is below no alignment's
    let out = tmp.path().join("curves");
    let r = run_json(&[
        "interpolate",
        "--model",
        A,
        "--model",
        B,
        "--align",
        "permute,none",
        "--points",
        "5",
        "--probe-images",
        "300",
        "--bn-reset-images",
        "300",
        "--batch-size",
        "300",
        "--data",
        SAMPLE,
        "--json",
        "--out",
        out.to_str().unwrap(),
    ]);
    let barrier = |i: usize| r[i]["accuracy_barrier"].as_f64().unwrap();
    assert_eq!(r[0]["align"], "permute");
    assert!(barrier(0) < barrier(1), "{} vs {}", barrier(0), barrier(1));
    for f in ["interpolate.csv", "interpolate.json", "interpolate.png"] {
        assert!(out.join(f).is_file(), "{f}");
    }
    let csv = std::fs::read_to_string(out.join("interpolate.csv")).unwrap();
    assert!(csv.starts_with("align,t,joint,avg,loss,task0_acc,task0_loss"));
    assert_eq!(csv.lines().count(), 11);
}
