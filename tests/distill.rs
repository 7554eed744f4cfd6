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
    let merged = tmp.path().join("zip");
    let o = run(&[
        "merge",
        "--model",
        A,
        "--model",
        B,
        "--data",
        SAMPLE,
        "--probe-images",
        "100",
        "--bn-reset-images",
        "100",
        "--out",
        merged.to_str().unwrap(),
        "-q",
    ]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
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
