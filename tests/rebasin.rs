//! Git Re-Basin for more than two models (MergeMany, Ainsworth et al. 2023, Algorithm 3): three
//! models that are channel permutations of one network are aligned to one basis, so their merge
//! is that network (the same accuracy and loss); and the three shipped 3+3+2+2 endpoints merge.

use std::path::Path;

use rand::seq::SliceRandom;
use rand::SeedableRng;

use zipmerge::checkpoint::{read_manifest, read_weights, write_model};
use zipmerge::matching::rebasin::permute_state;
use zipmerge::models::MergeSpec;

mod common;
use common::{run, run_json};

const SAMPLE: &str = "datasets/cifar10-sample";
const A: &str = "models/cifar10-5+5/resnet20x1-a";

#[test]
fn merge_many_aligns_permuted_copies_back_to_one_network() {
    let tmp = tempfile::tempdir().unwrap();
    let m = read_manifest(Path::new(A)).unwrap();
    let a = read_weights(Path::new(A), &m.weights).unwrap();
    let spec = MergeSpec::of(&m.net_config());
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(7);
    let mut dirs = vec![A.to_string()];
    for name in ["b", "c"] {
        let perms: Vec<Vec<usize>> = spec
            .spaces
            .iter()
            .map(|s| {
                let mut p: Vec<usize> = (0..s.width).collect();
                p.shuffle(&mut rng);
                p
            })
            .collect();
        let st = permute_state(&spec, &a, &perms);
        assert_ne!(st, a);
        let d = tmp.path().join(name);
        write_model(&d, &m, &[(m.weights.clone(), &st)]).unwrap();
        dirs.push(d.to_str().unwrap().to_string());
    }
    let out = tmp.path().join("merged");
    let mut args = vec!["merge", "--method", "git-rebasin"];
    for d in &dirs {
        args.extend(["--model", d.as_str()]);
    }
    args.extend([
        "--bn-reset-images",
        "0",
        "--no-endpoint-bn-reset",
        "--data",
        SAMPLE,
        "--no-eval",
        "-q",
        "--out",
        out.to_str().unwrap(),
    ]);
    let o = run(&args);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let got = run_json(&[
        "eval",
        "--model",
        out.to_str().unwrap(),
        "--data",
        SAMPLE,
        "--json",
    ]);
    let want = run_json(&["eval", "--model", A, "--data", SAMPLE, "--json"]);
    assert_eq!(got["joint"], want["joint"]);
    assert_eq!(got["tasks"][0]["accuracy"], want["tasks"][0]["accuracy"]);
    let d = got["tasks"][0]["loss"].as_f64().unwrap() - want["tasks"][0]["loss"].as_f64().unwrap();
    assert!(d.abs() < 1e-4, "loss differs by {d}");
}

#[test]
fn three_endpoints_merge_by_git_rebasin() {
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("m3");
    let r = run_json(&[
        "merge",
        "--method",
        "git-rebasin",
        "--model",
        "models/cifar10-3+3+2+2/resnet20x1-a",
        "--model",
        "models/cifar10-3+3+2+2/resnet20x1-b",
        "--model",
        "models/cifar10-3+3+2+2/resnet20x1-c",
        "--data",
        SAMPLE,
        "--probe-images",
        "200",
        "--bn-reset-images",
        "200",
        "--batch-size",
        "200",
        "--json",
        "--out",
        out.to_str().unwrap(),
    ]);
    assert_eq!(r["method"], "Git Re-Basin");
    assert_eq!(r["accuracy"]["tasks"].as_array().unwrap().len(), 3);
}
