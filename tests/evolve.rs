//! `zipmerge evolve` and the recipe knobs it searches: the same seed gives the same trace, a
//! search resumed from its state gives the uninterrupted search's bits, `best.json` replays to
//! the saved model's bytes, the test folder is not read during the search, a data-flow path of
//! model A alone is model A, one-hot group weights give model A, and bad input is refused in
//! one `error:` line with nothing written.

use std::path::Path;

use serde_json::Value;

mod common;
use common::{poisoned_root, run};

const SAMPLE: &str = "datasets/cifar10-sample";
const A: &str = "models/cifar10-5+5/resnet20x1-a";
const B: &str = "models/cifar10-5+5/resnet20x1-b";

/// Small draws so a search of a few evaluations takes seconds.
const SMALL: [&str; 10] = [
    "--val-images",
    "150",
    "--probe-images",
    "200",
    "--bn-reset-images",
    "200",
    "--batch-size",
    "200",
    "--no-grid",
    "-q",
];

fn evolve(extra: &[&str], out: &Path) -> std::process::Output {
    let mut args: Vec<&str> = vec!["evolve", "--model", A, "--model", B, "--data", SAMPLE];
    args.extend(SMALL);
    args.extend(extra);
    args.extend(["--out", out.to_str().unwrap()]);
    run(&args)
}

fn ok(out: std::process::Output) -> std::process::Output {
    assert!(
        out.status.success(),
        "failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

fn read(p: &Path) -> Vec<u8> {
    std::fs::read(p).unwrap_or_else(|e| panic!("{}: {e}", p.display()))
}

#[test]
fn same_seed_same_search_resume_and_replay() {
    let tmp = tempfile::tempdir().unwrap();
    let (r1, r2) = (tmp.path().join("r1"), tmp.path().join("r2"));
    ok(evolve(&["--budget", "14", "--no-test"], &r1));
    // interrupted after 5 evaluations (mid-generation: the population of 24 genes is 13), then
    // resumed to the same budget
    ok(evolve(&["--budget", "5", "--no-test"], &r2));
    assert_eq!(
        String::from_utf8_lossy(&read(&r2.join("trace.csv")))
            .lines()
            .count(),
        6
    );
    ok(evolve(&["--budget", "14", "--no-test", "--resume"], &r2));
    assert_eq!(read(&r1.join("trace.csv")), read(&r2.join("trace.csv")));
    let trace = String::from_utf8_lossy(&read(&r1.join("trace.csv"))).into_owned();
    assert_eq!(trace.lines().count(), 15);
    assert!(trace.starts_with(
        "generation,evaluation,fitness,joint,avg,stop,alpha[layer1.0.inner],beta[layer1.0.inner]"
    ));
    let model = read(&r1.join("model/model.safetensors"));
    assert_eq!(model, read(&r2.join("model/model.safetensors")));
    // best.json replays to the saved model's bytes
    let replay = tmp.path().join("replay");
    let best = r1.join("best.json");
    ok(run(&[
        "merge",
        "--recipe",
        best.to_str().unwrap(),
        "--out",
        replay.to_str().unwrap(),
        "-q",
    ]));
    assert_eq!(model, read(&replay.join("model.safetensors")));
    // the report names what was searched and how
    let report: Value = serde_json::from_slice(&read(&r1.join("evolve.json"))).unwrap();
    assert_eq!(report["evaluations"], 14);
    assert_eq!(report["population"], 13);
    assert_eq!(report["genes"].as_array().unwrap().len(), 24);
    assert_eq!(report["val_images"], 150);
    assert_eq!(report["results"][0]["label"], "evolved");
    assert!(report["results"][0]["test"].is_null());
    assert!(r1.join("fitness.png").is_file());
    // rerunning into a folder that holds a search needs --resume
    let again = evolve(&["--budget", "14", "--no-test"], &r1);
    assert_eq!(again.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&again.stderr).contains("--resume"));
}

#[test]
fn a_task_vector_search_replays_to_its_bytes() {
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("tv");
    let ft = "models/cifar10-ft";
    let (base, a, b) = (
        format!("{ft}/base"),
        format!("{ft}/resnet20x1-a"),
        format!("{ft}/resnet20x1-b"),
    );
    ok(run(&[
        "evolve",
        "--method",
        "ties",
        "--base",
        &base,
        "--model",
        &a,
        "--model",
        &b,
        "--data",
        SAMPLE,
        "--budget",
        "6",
        "--val-images",
        "150",
        "--bn-reset-images",
        "200",
        "--batch-size",
        "200",
        "--no-test",
        "-q",
        "--out",
        out.to_str().unwrap(),
    ]));
    let report: Value = serde_json::from_slice(&read(&out.join("evolve.json"))).unwrap();
    // density and weight per model per group (5 groups, 2 models) and lambda
    assert_eq!(report["genes"].as_array().unwrap().len(), 21);
    let best: Value = serde_json::from_slice(&read(&out.join("best.json"))).unwrap();
    assert_eq!(best["combine"]["kind"], "task-vector");
    assert_eq!(
        best["combine"]["settings"]["groups"]
            .as_array()
            .unwrap()
            .len(),
        5
    );
    let replay = tmp.path().join("replay");
    ok(run(&[
        "merge",
        "--recipe",
        out.join("best.json").to_str().unwrap(),
        "--out",
        replay.to_str().unwrap(),
        "-q",
    ]));
    assert_eq!(
        read(&out.join("model/model.safetensors")),
        read(&replay.join("model.safetensors"))
    );
    // an alignment option has no effect on a task-vector search: refused
    let r = run(&[
        "evolve",
        "--method",
        "ties",
        "--base",
        &base,
        "--model",
        &a,
        "--model",
        &b,
        "--alpha",
        "0.5",
        "--out",
        tmp.path().join("x").to_str().unwrap(),
    ]);
    assert_eq!(r.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&r.stderr).contains("--alpha"));
}

#[test]
fn the_test_folder_is_not_read_during_the_search() {
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path().join("data");
    poisoned_root(&root, SAMPLE);
    let data = root.to_str().unwrap();
    let go = |extra: &[&str], out: &Path| {
        let mut args: Vec<&str> = vec!["evolve", "--model", A, "--model", B, "--data", data];
        args.extend(SMALL);
        args.extend(["--budget", "4"]);
        args.extend(extra);
        args.extend(["--out", out.to_str().unwrap()]);
        run(&args)
    };
    // without the final test evaluation the search never touches test/
    let clean = tmp.path().join("clean");
    ok(go(&["--no-test"], &clean));
    // with it, the search and its files are complete before the one read of test/ fails
    let out_dir = tmp.path().join("out");
    let out = go(&[], &out_dir);
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{err}");
    let errors: Vec<&str> = err.lines().filter(|l| l.starts_with("error:")).collect();
    assert_eq!(errors.len(), 1, "{err}");
    assert!(errors[0].contains("test"), "{err}");
    let trace = String::from_utf8_lossy(&read(&out_dir.join("trace.csv"))).into_owned();
    assert_eq!(trace.lines().count(), 5);
    assert!(out_dir.join("best.json").is_file());
}

/// A recipe of the shipped pair on the sample with no BN reset anywhere, so the merged weights
/// are the rewrite alone.
fn recipe(settings_extra: Value) -> Value {
    let mut settings = serde_json::json!({
        "method": {"name": "permute"}, "merge_eps": 0.0, "similarity": "activation",
        "corrections": {"repair": false, "refit_ridge": null}, "probe_images": 200,
        "probe_augment": true, "bn_reset_images": 0, "endpoint_bn_reset": false,
        "rebasin_bn_reset": true, "batch_size": 200, "seed": 0
    });
    for (k, v) in settings_extra.as_object().unwrap() {
        settings[k] = v.clone();
    }
    serde_json::json!({
        "recipe_version": 1,
        "models": [A, B],
        "probe_dir": format!("{SAMPLE}/train"),
        "combine": {"kind": "align", "stop": "full", "settings": settings},
        "eval": null
    })
}

fn merge_recipe(r: &Value, dir: &Path) -> std::process::Output {
    let f = dir.with_extension("json");
    std::fs::write(&f, r.to_string()).unwrap();
    run(&[
        "merge",
        "--recipe",
        f.to_str().unwrap(),
        "--out",
        dir.to_str().unwrap(),
        "-q",
    ])
}

fn weights(dir: &Path) -> zipmerge::checkpoint::StateDict {
    let m = zipmerge::checkpoint::read_manifest(dir).unwrap();
    zipmerge::checkpoint::read_weights(dir, &m.weights).unwrap()
}

const BLOCKS: [&str; 9] = [
    "layer1.0", "layer1.1", "layer1.2", "layer2.0", "layer2.1", "layer2.2", "layer3.0", "layer3.1",
    "layer3.2",
];

fn path(source: Value, scale_first: f64) -> Value {
    let slots: Vec<Value> = BLOCKS
        .iter()
        .enumerate()
        .map(|(i, b)| {
            serde_json::json!({"block": b, "source": source,
                "scale": if i == 0 { scale_first } else { 1.0 }})
        })
        .collect();
    serde_json::json!({"ends": {"model": 0}, "slots": slots})
}

#[test]
fn a_data_flow_path_of_model_a_is_model_a() {
    let tmp = tempfile::tempdir().unwrap();
    let a = weights(Path::new(A));
    let out = tmp.path().join("path-a");
    ok(merge_recipe(
        &recipe(serde_json::json!({"path": path(serde_json::json!({"model": 0}), 1.0)})),
        &out,
    ));
    // every tensor of A, bit for bit: the network computes A's logits
    assert_eq!(weights(&out), a);
    // an input scale of 2 on the first block doubles its first conv (a power of two: exact)
    let scaled = tmp.path().join("path-a-scaled");
    ok(merge_recipe(
        &recipe(serde_json::json!({"path": path(serde_json::json!({"model": 0}), 2.0)})),
        &scaled,
    ));
    let s = weights(&scaled);
    for (k, t) in &a {
        let want: Vec<f32> = if k == "layer1.0.conv1.weight" {
            t.data.iter().map(|v| v * 2.0).collect()
        } else {
            t.data.clone()
        };
        assert_eq!(s[k].data, want, "{k}");
    }
    // a path of B's aligned blocks differs from A in every block, not in the ends
    let pb = tmp.path().join("path-b");
    ok(merge_recipe(
        &recipe(serde_json::json!({"path": path(serde_json::json!({"model": 1}), 1.0)})),
        &pb,
    ));
    let b = weights(&pb);
    assert_eq!(b["conv1.weight"], a["conv1.weight"]);
    assert_eq!(b["linear.weight"], a["linear.weight"]);
    assert_ne!(b["layer2.1.conv2.weight"], a["layer2.1.conv2.weight"]);
}

#[test]
fn one_hot_group_weights_give_the_weighted_model() {
    let tmp = tempfile::tempdir().unwrap();
    let groups = ["stem", "layer1", "layer2", "layer3", "head"];
    let knobs = |w: [f64; 2]| {
        let gw: Vec<Value> = groups
            .iter()
            .map(|g| serde_json::json!({"group": g, "weights": w}))
            .collect();
        serde_json::json!({"knobs": {"group_weights": gw}})
    };
    // all weight on A: each merged row is A's unit (weight 1), the output layer A's: model A
    let out = tmp.path().join("wa");
    ok(merge_recipe(&recipe(knobs([1.0, 0.0])), &out));
    assert_eq!(weights(&out), weights(Path::new(A)));
    // equal weights are the plain Permute merge, bit for bit
    let eq = tmp.path().join("weq");
    ok(merge_recipe(&recipe(knobs([0.5, 0.5])), &eq));
    let plain = tmp.path().join("plain");
    ok(merge_recipe(&recipe(serde_json::json!({})), &plain));
    let (e, p) = (weights(&eq), weights(&plain));
    for (k, t) in &p {
        let d = t
            .data
            .iter()
            .zip(&e[k].data)
            .map(|(x, y)| (x - y).abs() / x.abs().max(1e-6))
            .fold(0.0f32, f32::max);
        assert!(d < 1e-6, "{k}: {d}");
    }
}

#[test]
fn bad_input_is_refused_in_one_line_with_nothing_written() {
    let tmp = tempfile::tempdir().unwrap();
    let out_dir = tmp.path().join("out");
    let refuse = |extra: &[&str], needle: &str| {
        let out = evolve(extra, &out_dir);
        let err = String::from_utf8_lossy(&out.stderr);
        let errors: Vec<&str> = err.lines().filter(|l| l.starts_with("error:")).collect();
        assert_eq!(out.status.code(), Some(2), "{extra:?}: {err}");
        assert_eq!(errors.len(), 1, "{err}");
        assert!(errors[0].contains(needle), "{extra:?}: {err}");
        assert!(!out_dir.exists(), "{extra:?} wrote {}", out_dir.display());
    };
    refuse(&["--budget", "0"], "--budget");
    refuse(&["--population", "1"], "--population");
    refuse(&["--sigma", "0"], "--sigma");
    refuse(&["--val-images", "100000"], "--val-images");
    refuse(&["--space", "dfs", "--alpha", "0.5"], "--alpha");
    refuse(&["--space", "dfs", "--repeat", "2"], "--repeat");
    refuse(&["--method", "cca"], "--space");
    // recipes whose knobs or path do not fit the models
    let bad = |settings_extra: Value, needle: &str| {
        let r = recipe(settings_extra);
        let out = merge_recipe(&r, &out_dir);
        let err = String::from_utf8_lossy(&out.stderr);
        let errors: Vec<&str> = err.lines().filter(|l| l.starts_with("error:")).collect();
        assert_eq!(out.status.code(), Some(2), "{err}");
        assert_eq!(errors.len(), 1, "{err}");
        assert!(errors[0].contains(needle), "{err}");
        assert!(!out_dir.exists());
    };
    bad(
        serde_json::json!({"knobs": {"group_weights": [{"group": "layer4", "weights": [1, 0]}]}}),
        "layer4",
    );
    bad(
        serde_json::json!({"knobs": {"group_weights": [{"group": "stem", "weights": [1, 0, 1]}]}}),
        "one per model",
    );
    bad(
        serde_json::json!({"knobs": {"space_alpha_beta": [[0.3, 0.1]]}}),
        "ZipIt!",
    );
    bad(
        serde_json::json!({"method": {"name": "zipit", "alpha": 0.3, "beta": 0.1},
            "knobs": {"space_alpha_beta": [[0.3, 0.1]]}}),
        "one per feature space",
    );
    bad(
        serde_json::json!({ "path": path(serde_json::json!({"model": 2}), 1.0) }),
        "2 models",
    );
    let mut p = path(serde_json::json!({"model": 0}), 1.0);
    p["slots"][0]["scale"] = (-1.0).into();
    p["slots"][0]["source"] = serde_json::json!("merged");
    bad(serde_json::json!({ "path": p }), "scale");
}
