//! `zipmerge merge --recipe`: a merge's `report.json` replays to the same `model.safetensors`
//! bytes, flags given beside it override the recipe (and say so), and a recipe file is untrusted
//! input (refused in one `error:` line, nothing written).

use std::path::Path;

use serde_json::Value;

mod common;
use common::run;

const SAMPLE: &str = "datasets/cifar10-sample";
const A: &str = "models/cifar10-5+5/resnet20x1-a";
const B: &str = "models/cifar10-5+5/resnet20x1-b";

fn merge(args: &[&str]) -> std::process::Output {
    let out = run(args);
    assert!(
        out.status.success(),
        "zipmerge {args:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

/// Every weight file of a model folder (`model.safetensors`, or `trunk.safetensors` and the
/// heads' for a partial zip), by name.
fn bytes(dir: &Path) -> Vec<(String, Vec<u8>)> {
    let mut files: Vec<(String, Vec<u8>)> = std::fs::read_dir(dir)
        .unwrap()
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| n.ends_with(".safetensors"))
        .map(|n| (n.clone(), std::fs::read(dir.join(&n)).unwrap()))
        .collect();
    files.sort();
    assert!(!files.is_empty(), "no weights in {}", dir.display());
    files
}

#[test]
fn recipe_from_a_report_replays_to_the_same_bytes() {
    let tmp = tempfile::tempdir().unwrap();
    let first = tmp.path().join("first");
    let f = first.to_str().unwrap();
    // non-default settings everywhere the recipe must carry them: alpha, beta, a partial zip,
    // REPAIR, small draws, another seed
    merge(&[
        "merge",
        "--model",
        A,
        "--model",
        B,
        "--data",
        SAMPLE,
        "--stop",
        "13/20",
        "--alpha",
        "0.7",
        "--beta",
        "0.25",
        "--repair",
        "--probe-images",
        "60",
        "--bn-reset-images",
        "40",
        "--batch-size",
        "20",
        "--seed",
        "3",
        "--out",
        f,
        "-q",
    ]);
    let report: Value =
        serde_json::from_slice(&std::fs::read(first.join("report.json")).unwrap()).unwrap();
    let recipe = &report["recipe"];
    assert_eq!(recipe["recipe_version"], 1);
    assert_eq!(recipe["combine"]["kind"], "align");
    assert_eq!(recipe["combine"]["stop"], "13/20");
    assert_eq!(recipe["combine"]["settings"]["method"]["alpha"], 0.7);
    assert_eq!(recipe["combine"]["settings"]["seed"], 3);

    // replay from the report, no other flag: the same weights, byte for byte
    let again = tmp.path().join("again");
    let out = merge(&[
        "merge",
        "--recipe",
        first.join("report.json").to_str().unwrap(),
        "--out",
        again.to_str().unwrap(),
    ]);
    assert!(
        !String::from_utf8_lossy(&out.stderr).contains("overrides"),
        "a plain replay overrides nothing"
    );
    assert_eq!(bytes(&first), bytes(&again), "replayed weights differ");
    let replayed: Value =
        serde_json::from_slice(&std::fs::read(again.join("report.json")).unwrap()).unwrap();
    assert_eq!(replayed["recipe"], report["recipe"]);
    assert_eq!(replayed["accuracy"], report["accuracy"]);

    // a flag beside the recipe overrides it and says so; the other fields stay
    let other = tmp.path().join("other");
    let out = merge(&[
        "merge",
        "--recipe",
        first.join("report.json").to_str().unwrap(),
        "--alpha",
        "2",
        "--no-eval",
        "--out",
        other.to_str().unwrap(),
    ]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("note: --alpha") && err.contains("overrides the recipe"),
        "{err}"
    );
    let changed: Value =
        serde_json::from_slice(&std::fs::read(other.join("report.json")).unwrap()).unwrap();
    let combine = &changed["recipe"]["combine"];
    assert_eq!(combine["settings"]["method"]["alpha"], 2.0);
    assert_eq!(combine["settings"]["method"]["beta"], 0.25);
    assert_eq!(combine["stop"], "13/20");
    assert_ne!(bytes(&first), bytes(&other));
}

#[test]
fn bad_recipes_are_refused_in_one_line() {
    let tmp = tempfile::tempdir().unwrap();
    let out_dir = tmp.path().join("out");
    let refuse = |recipe: &str, code: i32, needle: &str| {
        let f = tmp.path().join("recipe.json");
        std::fs::write(&f, recipe).unwrap();
        let out = run(&[
            "merge",
            "--recipe",
            f.to_str().unwrap(),
            "--out",
            out_dir.to_str().unwrap(),
        ]);
        let err = String::from_utf8_lossy(&out.stderr);
        let errors: Vec<&str> = err.lines().filter(|l| l.starts_with("error:")).collect();
        assert_eq!(out.status.code(), Some(code), "{recipe}: {err}");
        assert_eq!(errors.len(), 1, "{err}");
        assert!(errors[0].contains(needle), "{recipe}: {err}");
        assert!(!err.contains("panicked"));
        assert!(!out_dir.exists(), "{recipe}: wrote {}", out_dir.display());
    };
    let good = serde_json::json!({
        "recipe_version": 1,
        "models": [A, B],
        "probe_dir": format!("{SAMPLE}/train"),
        "combine": {
            "kind": "align",
            "stop": "full",
            "settings": {
                "method": {"name": "permute"}, "merge_eps": 1e-5, "similarity": "activation",
                "corrections": {"repair": false, "refit_ridge": null}, "probe_images": 20,
                "probe_augment": true, "bn_reset_images": 20, "endpoint_bn_reset": true,
                "rebasin_bn_reset": true, "batch_size": 20, "seed": 0
            }
        },
        "eval": null
    });
    let with = |f: &dyn Fn(&mut Value)| {
        let mut v = good.clone();
        f(&mut v);
        v.to_string()
    };
    refuse("{not json", 2, "--recipe");
    refuse(
        &with(&|v| v["combine"]["settings"]["sead"] = 1.into()),
        2,
        "sead",
    );
    refuse(&with(&|v| v["combine"]["kind"] = "frob".into()), 2, "frob");
    refuse(
        &with(&|v| v["recipe_version"] = 9.into()),
        2,
        "recipe_version 9",
    );
    refuse(
        &with(&|v| v["combine"]["settings"]["method"] = serde_json::json!({"name": "frob"})),
        2,
        "frob",
    );
    refuse(
        &with(&|v| v["combine"]["settings"]["batch_size"] = 0.into()),
        2,
        "--recipe",
    );
    refuse(
        &with(&|v| v["models"] = serde_json::json!([A])),
        2,
        "at least two",
    );
    refuse(
        &with(&|v| v["models"] = serde_json::json!([A, "/nonexistent/m"])),
        1,
        "/nonexistent/m",
    );
    refuse(
        &with(&|v| v["combine"]["stop"] = "99/20".into()),
        2,
        "--stop",
    );
    // a flag that cannot apply to the recipe's method is refused, not ignored
    let f = tmp.path().join("recipe.json");
    std::fs::write(&f, good.to_string()).unwrap();
    let out = run(&[
        "merge",
        "--recipe",
        f.to_str().unwrap(),
        "--alpha",
        "1",
        "--out",
        out_dir.to_str().unwrap(),
    ]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{err}");
    assert!(
        err.contains("--alpha does not apply to the recipe's method Permute"),
        "{err}"
    );
    assert!(!out_dir.exists());
}

/// A task-vector merge (TIES over two fine-tunes of the shipped base) replays to the same
/// bytes; an alignment flag beside its recipe is refused.
#[test]
fn task_vector_recipe_replays_to_the_same_bytes() {
    let tmp = tempfile::tempdir().unwrap();
    let first = tmp.path().join("first");
    let ft = "models/cifar10-ft";
    merge(&[
        "merge",
        "--method",
        "ties",
        "--base",
        &format!("{ft}/base"),
        "--model",
        &format!("{ft}/resnet20x1-a"),
        "--model",
        &format!("{ft}/resnet20x1-b"),
        "--density",
        "0.3",
        "--lambda",
        "0.9",
        "--data",
        SAMPLE,
        "--bn-reset-images",
        "40",
        "--batch-size",
        "20",
        "--seed",
        "5",
        "--no-eval",
        "--out",
        first.to_str().unwrap(),
        "-q",
    ]);
    let report: Value =
        serde_json::from_slice(&std::fs::read(first.join("report.json")).unwrap()).unwrap();
    let combine = &report["recipe"]["combine"];
    assert_eq!(combine["kind"], "task-vector");
    assert_eq!(combine["settings"]["lambda"], 0.9);
    assert_eq!(combine["bn_reset_images"], 40);
    let again = tmp.path().join("again");
    let rec = first.join("report.json");
    merge(&[
        "merge",
        "--recipe",
        rec.to_str().unwrap(),
        "--out",
        again.to_str().unwrap(),
        "-q",
    ]);
    assert_eq!(bytes(&first), bytes(&again), "replayed weights differ");
    let out = run(&[
        "merge",
        "--recipe",
        rec.to_str().unwrap(),
        "--alpha",
        "1",
        "--out",
        tmp.path().join("x").to_str().unwrap(),
    ]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{err}");
    assert!(err.contains("--alpha does not apply to --recipe"), "{err}");
    assert!(!tmp.path().join("x").exists());
}
