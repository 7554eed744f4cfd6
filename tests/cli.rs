//! Command-line behaviour: deterministic training, bad input giving one-line errors (exit code
//! != 0, no panic, no partial output), and the JSON interfaces of eval/predict/match.

use std::path::{Path, PathBuf};
use std::process::Output;
use std::sync::OnceLock;

const SAMPLE: &str = "datasets/cifar10-sample";

mod common;
use common::run;

fn tmp() -> PathBuf {
    let d = std::env::temp_dir().join(format!("zipmerge-cli-{}", std::process::id()));
    std::fs::create_dir_all(&d).unwrap();
    d
}

fn train_tiny(out: &Path, arch: &str, classes: &str, seed: &str) -> Output {
    run(&[
        "train",
        "-q",
        "--data",
        SAMPLE,
        "--arch",
        arch,
        "--classes",
        classes,
        "--epochs",
        "1",
        "--limit",
        "20",
        "--batch-size",
        "10",
        "--lr",
        "0.05",
        "--warmup",
        "0.5",
        "--seed",
        seed,
        "--out",
        out.to_str().unwrap(),
    ])
}

/// Two tiny ResNet-20 endpoints and one VGG-11, trained once for all tests.
fn models() -> &'static (PathBuf, PathBuf, PathBuf) {
    static M: OnceLock<(PathBuf, PathBuf, PathBuf)> = OnceLock::new();
    M.get_or_init(|| {
        let d = tmp();
        let (a, b, v) = (d.join("a"), d.join("b"), d.join("vgg"));
        for (p, arch, c, s) in [
            (&a, "resnet20", "0,1,2,3,4", "1"),
            (&b, "resnet20", "5,6,7,8,9", "2"),
            (&v, "vgg11", "5,6,7,8,9", "3"),
        ] {
            let o = train_tiny(p, arch, c, s);
            assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
        }
        (a, b, v)
    })
}

/// The `label` of every row of a JSON array of rows.
fn row_labels(rows: &serde_json::Value) -> Vec<&str> {
    rows.as_array()
        .unwrap()
        .iter()
        .map(|r| r["label"].as_str().unwrap())
        .collect()
}

/// Asserts a one-line error mentioning `needle`, exit code != 0, no panic, and `out` not created.
fn assert_clean_error(o: &Output, needle: &str, out: Option<&Path>) {
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(!o.status.success(), "expected failure, got success: {err}");
    assert!(!err.contains("panicked"), "panic: {err}");
    let lines: Vec<&str> = err.lines().filter(|l| l.starts_with("error")).collect();
    assert_eq!(lines.len(), 1, "expected one error line: {err}");
    assert!(
        lines[0].contains(needle),
        "error `{}` does not mention `{needle}`",
        lines[0]
    );
    if let Some(p) = out {
        assert!(!p.exists(), "{} was written despite the error", p.display());
    }
}

#[test]
fn same_seed_gives_identical_checkpoint_bytes_on_flex() {
    let d = tmp();
    let (x, y) = (d.join("det1"), d.join("det2"));
    assert!(train_tiny(&x, "resnet20", "0,1", "7").status.success());
    assert!(train_tiny(&y, "resnet20", "0,1", "7").status.success());
    let (bx, by) = (
        std::fs::read(x.join("model.safetensors")).unwrap(),
        std::fs::read(y.join("model.safetensors")).unwrap(),
    );
    assert_eq!(
        bx, by,
        "same seed, same backend: the checkpoint bytes differ"
    );
}

#[test]
fn bad_training_input_gives_one_line_errors() {
    let d = tmp();
    let out = d.join("never");
    assert_clean_error(
        &run(&[
            "train",
            "--data",
            "/nonexistent/data",
            "--classes",
            "0",
            "--out",
            out.to_str().unwrap(),
        ]),
        "/nonexistent/data",
        Some(&out),
    );
    assert_clean_error(
        &run(&[
            "train",
            "--data",
            SAMPLE,
            "--classes",
            "0,10",
            "--out",
            out.to_str().unwrap(),
        ]),
        "out of range",
        Some(&out),
    );
    assert_clean_error(
        &run(&[
            "train",
            "--data",
            SAMPLE,
            "--classes",
            "0",
            "--width",
            "0",
            "--out",
            out.to_str().unwrap(),
        ]),
        "--width 0",
        Some(&out),
    );
    // an unreadable image inside an ImageFolder tree
    let bad = d.join("badfolder/train/cls");
    std::fs::create_dir_all(&bad).unwrap();
    std::fs::write(bad.join("x.jpg"), b"not a jpeg").unwrap();
    assert_clean_error(
        &run(&[
            "train",
            "--data",
            d.join("badfolder").to_str().unwrap(),
            "--classes",
            "0",
            "--out",
            out.to_str().unwrap(),
        ]),
        "x.jpg",
        Some(&out),
    );
}

#[test]
fn corrupt_checkpoint_is_reported_with_its_path() {
    let (a, _, _) = models();
    let d = tmp().join("corrupt");
    std::fs::create_dir_all(&d).unwrap();
    std::fs::copy(a.join("manifest.json"), d.join("manifest.json")).unwrap();
    let w = std::fs::read(a.join("model.safetensors")).unwrap();
    std::fs::write(d.join("model.safetensors"), &w[..w.len() / 2]).unwrap();
    assert_clean_error(
        &run(&["eval", "--model", d.to_str().unwrap(), "--data", SAMPLE]),
        "model.safetensors",
        None,
    );
}

#[test]
fn bad_merge_input_gives_one_line_errors() {
    let (a, b, v) = models();
    let (a, b, v) = (
        a.to_str().unwrap(),
        b.to_str().unwrap(),
        v.to_str().unwrap(),
    );
    let out = tmp().join("merged-never");
    let o = out.to_str().unwrap();
    let base = |extra: &[&str]| {
        let mut args = vec![
            "merge",
            "--model",
            a,
            "--model",
            b,
            "--data",
            SAMPLE,
            "--out",
            o,
            "--no-eval",
            "-q",
        ];
        args.extend_from_slice(extra);
        run(&args)
    };
    assert_clean_error(
        &run(&[
            "merge", "--model", a, "--model", v, "--data", SAMPLE, "--out", o,
        ]),
        "architecture",
        Some(&out),
    );
    assert_clean_error(&base(&["--alpha", "0"]), "alpha", Some(&out));
    assert_clean_error(&base(&["--beta", "1.5"]), "beta", Some(&out));
    assert_clean_error(&base(&["--stop", "26"]), "--stop `26`", Some(&out));
    let empty = tmp().join("empty-probe");
    std::fs::create_dir_all(empty.join("cls")).unwrap();
    assert_clean_error(
        &base(&["--probe", empty.to_str().unwrap()]),
        "empty-probe",
        Some(&out),
    );
    // NaN in the weights
    let nan = tmp().join("nan-model");
    std::fs::create_dir_all(&nan).unwrap();
    std::fs::copy(
        Path::new(a).join("manifest.json"),
        nan.join("manifest.json"),
    )
    .unwrap();
    let mut st =
        zipmerge::checkpoint::safetensors_io::load(&Path::new(a).join("model.safetensors"))
            .unwrap();
    st.get_mut("layer1.0.conv1.weight").unwrap().data[3] = f32::NAN;
    zipmerge::checkpoint::safetensors_io::save(&st, &nan.join("model.safetensors")).unwrap();
    assert_clean_error(
        &run(&[
            "merge",
            "--model",
            a,
            "--model",
            nan.to_str().unwrap(),
            "--data",
            SAMPLE,
            "--out",
            o,
        ]),
        "layer1.0.conv1.weight",
        Some(&out),
    );
}

#[test]
fn merge_eval_json_and_match_interfaces() {
    let (a, b, _) = models();
    let out = tmp().join("merged-ok");
    let o = run(&[
        "merge",
        "--model",
        a.to_str().unwrap(),
        "--model",
        b.to_str().unwrap(),
        "--data",
        SAMPLE,
        "--stop",
        "13/20",
        "--probe-images",
        "500",
        "--bn-reset-images",
        "500",
        "--out",
        out.to_str().unwrap(),
        "--json",
    ]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let report: serde_json::Value =
        serde_json::from_slice(&o.stdout).expect("merge --json prints JSON only");
    assert_eq!(report["stop"], "13/20");
    assert!(
        out.join("report.json").is_file()
            && out.join("trunk.safetensors").is_file()
            && out.join("head1.safetensors").is_file()
    );
    let e = run(&[
        "eval",
        "--model",
        out.to_str().unwrap(),
        "--data",
        SAMPLE,
        "--tasks",
        "0,1,2,3,4;5,6,7,8,9",
        "--json",
    ]);
    assert!(e.status.success(), "{}", String::from_utf8_lossy(&e.stderr));
    let v: serde_json::Value = serde_json::from_slice(&e.stdout).unwrap();
    for k in ["joint", "tasks", "avg", "flops", "images"] {
        assert!(v.get(k).is_some(), "eval --json lacks `{k}`: {v}");
    }
    assert_eq!(v["images"], 1000);
    assert_eq!(v["tasks"][0]["classes"], serde_json::json!([0, 1, 2, 3, 4]));
    // the multi-head model's FLOPs: trunk to 13/20 + two heads from there (hand count, x1):
    // trunk 0.442M + 14.156M + 2.359M + 11.796M = 28.754M MACs; each head 2.359M + 11.796M + 64*384
    assert_eq!(
        v["flops"],
        28_753_920 + 2 * (2_359_296 + 11_796_480 + 64 * 384)
    );
    // predict --json
    let p = run(&[
        "predict",
        "--model",
        a.to_str().unwrap(),
        "--json",
        "datasets/cifar10-sample/test/cat/0000.jpg",
    ]);
    let pv: serde_json::Value = serde_json::from_slice(&p.stdout).unwrap();
    assert_eq!(pv[0]["logits"].as_array().unwrap().len(), 5);
    assert!(pv[0]["top"][0]["name"].is_string());
    // match on a hand-made correlation: twins (0,2) and (1,3)
    let m = tmp().join("corr.json");
    std::fs::write(
        &m,
        "[[1,0.1,0.9,0.2],[0.1,1,0.3,0.8],[0.9,0.3,1,0.1],[0.2,0.8,0.1,1]]",
    )
    .unwrap();
    let r = run(&[
        "match",
        "--cov",
        m.to_str().unwrap(),
        "--correlation",
        "--method",
        "zipit",
    ]);
    let rv: serde_json::Value = serde_json::from_slice(&r.stdout).unwrap();
    assert_eq!(rv["clusters"], serde_json::json!([[0, 2], [1, 3]]));
}

#[test]
fn sweep_writes_schema_plot_and_collects_statistics_once() {
    let (a, b, _) = models();
    let out = tmp().join("sweep");
    let o = run(&[
        "sweep",
        "--model",
        a.to_str().unwrap(),
        "--model",
        b.to_str().unwrap(),
        "--data",
        SAMPLE,
        "--stops",
        "7/20,full",
        "--probe-images",
        "500",
        "--bn-reset-images",
        "500",
        "--out",
        out.to_str().unwrap(),
        "--json",
    ]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let v: serde_json::Value =
        serde_json::from_slice(&o.stdout).expect("sweep --json prints JSON only");
    assert_eq!(
        v["counters"]["statistics_passes"], 1,
        "statistics must be collected once for all stops"
    );
    assert_eq!(v["counters"]["matching_runs"], 1);
    let labels = row_labels(&v["rows"]);
    assert_eq!(
        labels,
        [
            "Model A",
            "Model B",
            "ZipIt!7/20",
            "ZipIt!20/20",
            "Ensemble"
        ]
    );
    let csv = std::fs::read_to_string(out.join("sweep.csv")).unwrap();
    assert_eq!(
        csv.lines().next().unwrap(),
        "label,stop,zipped_layers,total_layers,flops,joint,task_a,task_b,avg,seconds"
    );
    assert_eq!(csv.lines().count(), 6);
    assert!(csv
        .lines()
        .nth(3)
        .unwrap()
        .starts_with("ZipIt!7/20,7/20,7,20,"));
    let png = std::fs::read(out.join("sweep.png")).unwrap();
    assert_eq!(&png[..4], b"\x89PNG");
    assert!(std::fs::read_to_string(out.join("sweep.svg"))
        .unwrap()
        .contains("accuracy (%)"));
}

/// Issue 12, item 5: three tiny trained ResNet-20s (classes 0-3, 4-6, 7-9) end to end: `merge`
/// with REPAIR and the refit (one layer-wise pass: 3 endpoints + the merged trunk), `sweep`,
/// and `reproduce table1` on a folder of groups `g-a`, `g-b`, `g-c` (one row per model, no Git
/// Re-Basin row: it merges exactly two).
#[test]
fn three_trained_models_merge_sweep_and_reproduce() {
    let d = tmp().join("three");
    let group = d.join("groups");
    let m: Vec<PathBuf> = ["a", "b", "c"]
        .iter()
        .map(|l| group.join(format!("g-{l}")))
        .collect();
    for (p, c, s) in [
        (&m[0], "0,1,2,3", "4"),
        (&m[1], "4,5,6", "5"),
        (&m[2], "7,8,9", "6"),
    ] {
        let o = train_tiny(p, "resnet20", c, s);
        assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    }
    let small = ["--probe-images", "100", "--bn-reset-images", "100"];
    let mut args = vec![
        "merge", "--data", SAMPLE, "--json", "--repair", "--refit", "lstsq",
    ];
    for p in &m {
        args.extend(["--model", p.to_str().unwrap()]);
    }
    let out = d.join("merged");
    args.extend(["--out", out.to_str().unwrap()]);
    args.extend(small);
    let o = run(&args);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let r: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(r["accuracy"]["tasks"].as_array().unwrap().len(), 3);
    assert_eq!(r["correction"]["forward_passes"], 4);
    assert_eq!(r["correction"]["images"], 100);
    // 19 convs + 2 shortcut convs, each with enough probe pixels (at least 100 images x 8 x 8
    // >= 2 x (9 x 64 + 1)); the final linear sees 100 pooled rows < 2 x (64 + 1), so it keeps
    // the merged weights (REPAIR does not touch it)
    assert_eq!(r["correction"]["layers"], 21);
    assert_eq!(
        r["correction"]["refit_skipped"],
        serde_json::json!(["linear"])
    );
    assert_eq!(r["method"], "ZipIt!");
    let sweep_out = tmp().join("sweep3");
    let mut sweep = vec![
        "sweep",
        "--data",
        SAMPLE,
        "--json",
        "--stops",
        "7/20,full",
        "--out",
        sweep_out.to_str().unwrap(),
    ];
    for p in &m {
        sweep.extend(["--model", p.to_str().unwrap()]);
    }
    sweep.extend(small);
    let o = run(&sweep);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    let labels = row_labels(&v["rows"]);
    assert_eq!(
        labels,
        [
            "Model A",
            "Model B",
            "Model C",
            "ZipIt!7/20",
            "ZipIt!20/20",
            "Ensemble"
        ]
    );
    let mut rep = vec!["reproduce", "table1", "--data", SAMPLE, "--json"];
    rep.extend(["--pairs", group.to_str().unwrap()]);
    rep.extend(small);
    let o = run(&rep);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    let labels = row_labels(&v["rows"][0]);
    assert_eq!(
        labels,
        [
            "Model A",
            "Model B",
            "Model C",
            "W.Avg",
            "Permute",
            "ZipIt!20/20",
            "Ensemble",
            "ZipIt!13/20",
            "ZipIt!7/20"
        ]
    );
}
