//! Bad and hostile inputs, one or more cases per family of issue 10, run through the release
//! binary on the shipped ResNet-20 x1 pair and the embedded sample. Every refusal asserts:
//! the exit code (1 runtime, 2 usage), exactly one stderr line starting with `error:` that names
//! the file/option/field, no `panicked`, and a file system left exactly as it was (every file
//! of the sandbox byte for byte, no new file, no `.zipmerge-tmp-*` left). A few inputs that
//! used to be refused or silently misread must now succeed (with a note or a warning).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde_json::Value;

const SAMPLE: &str = "datasets/cifar10-sample";
const PAIR: &str = "models/cifar10-5+5";
/// A quick merge: no evaluation, 50 probe and BN-reset images.
const FAST: &[&str] = &[
    "--no-eval",
    "--probe-images",
    "50",
    "--bn-reset-images",
    "50",
    "--batch-size",
    "50",
    "-q",
];

mod common;
use common::run;

/// A scratch folder holding copies of the shipped pair (`a/`, `b/`) and a `victim.safetensors`
/// that no command may touch.
struct Sandbox {
    dir: tempfile::TempDir,
}

impl Sandbox {
    fn new() -> Self {
        let dir = tempfile::tempdir().unwrap();
        for m in ["a", "b"] {
            let to = dir.path().join(m);
            std::fs::create_dir_all(&to).unwrap();
            for f in ["manifest.json", "model.safetensors"] {
                std::fs::copy(
                    Path::new(PAIR).join(format!("resnet20x1-{m}")).join(f),
                    to.join(f),
                )
                .unwrap();
            }
        }
        std::fs::write(dir.path().join("victim.safetensors"), b"precious").unwrap();
        Self { dir }
    }
    fn p(&self, rel: &str) -> String {
        self.dir.path().join(rel).to_str().unwrap().to_string()
    }
    /// A copy of model `a` named `name` whose manifest is edited by `f`.
    fn model_with(&self, name: &str, f: impl FnOnce(&mut Value)) -> String {
        let to = self.dir.path().join(name);
        std::fs::create_dir_all(&to).unwrap();
        std::fs::copy(
            self.dir.path().join("a/model.safetensors"),
            to.join("model.safetensors"),
        )
        .unwrap();
        let mut m: Value = serde_json::from_slice(
            &std::fs::read(self.dir.path().join("a/manifest.json")).unwrap(),
        )
        .unwrap();
        f(&mut m);
        std::fs::write(to.join("manifest.json"), m.to_string()).unwrap();
        to.to_str().unwrap().to_string()
    }
    /// `merge --model a --model b` followed by `rest`.
    fn merge_ab(&self, rest: &[&str]) -> Vec<String> {
        let (a, b) = (self.p("a"), self.p("b"));
        let mut v: Vec<String> = ["merge", "--model", &a, "--model", &b]
            .iter()
            .map(|x| x.to_string())
            .collect();
        v.extend(rest.iter().map(|x| x.to_string()));
        v
    }
    /// Every file under the sandbox with its bytes (symlinks as their target).
    fn snapshot(&self) -> BTreeMap<PathBuf, Vec<u8>> {
        fn walk(d: &Path, out: &mut BTreeMap<PathBuf, Vec<u8>>) {
            for e in std::fs::read_dir(d).unwrap() {
                let p = e.unwrap().path();
                let meta = std::fs::symlink_metadata(&p).unwrap();
                if meta.file_type().is_symlink() {
                    let t = std::fs::read_link(&p).unwrap();
                    out.insert(p, t.to_string_lossy().as_bytes().to_vec());
                } else if meta.is_dir() {
                    out.insert(p.clone(), b"<dir>".to_vec());
                    walk(&p, out);
                } else if meta.is_file() {
                    out.insert(p.clone(), std::fs::read(&p).unwrap());
                } else {
                    // a FIFO or device node: never read (it would block); its kind is kept
                    let kind = format!("<special {:?}>", meta.file_type());
                    out.insert(p.clone(), kind.into_bytes());
                }
            }
        }
        let mut m = BTreeMap::new();
        walk(self.dir.path(), &mut m);
        m
    }
    /// Runs `args`, asserting a refusal with exit `code`, one `error:` line containing
    /// `needle`, no panic, and an untouched sandbox.
    fn refuses(&self, args: &[impl AsRef<str>], code: i32, needle: &str) {
        let args: Vec<&str> = args.iter().map(AsRef::as_ref).collect();
        let args = args.as_slice();
        let before = self.snapshot();
        let o = run(args);
        let err = String::from_utf8_lossy(&o.stderr);
        assert_eq!(o.status.code(), Some(code), "{args:?}: exit code\n{err}");
        assert!(!err.contains("panicked"), "{args:?}: panic\n{err}");
        let lines: Vec<&str> = err.lines().filter(|l| l.starts_with("error:")).collect();
        assert_eq!(lines.len(), 1, "{args:?}: expected one error line\n{err}");
        assert!(
            !err.lines()
                .any(|l| l.starts_with("  ") || l.starts_with("Caused")),
            "{args:?}: multi-line error\n{err}"
        );
        assert!(
            lines[0].contains(needle),
            "{args:?}: `{}` lacks `{needle}`",
            lines[0]
        );
        let after = self.snapshot();
        assert_eq!(
            before.keys().collect::<Vec<_>>(),
            after.keys().collect::<Vec<_>>(),
            "{args:?}: files created or removed"
        );
        assert!(before == after, "{args:?}: a file changed");
    }
}

/// An edit of a manifest.
type Edit = fn(&mut Value);

fn ok(args: &[impl AsRef<str>]) -> String {
    let args: Vec<&str> = args.iter().map(AsRef::as_ref).collect();
    let o = run(&args);
    let err = String::from_utf8_lossy(&o.stderr).into_owned();
    assert!(o.status.success(), "{args:?} failed\n{err}");
    assert!(!err.contains("panicked"), "{err}");
    err
}

// ---- family 1: no write (or read) outside the model folder / --out -------------------------

#[test]
fn family1_manifest_paths_stay_inside_the_model_folder() {
    let s = Sandbox::new();
    let out = s.p("out");
    for (name, weights) in [
        ("dotdot", "../victim.safetensors"),
        ("absolute", s.p("victim.safetensors").leak() as &str),
        ("nested", "sub/model.safetensors"),
        ("hidden", ".model.safetensors"),
    ] {
        let m = s.model_with(name, |v| v["weights"] = weights.into());
        s.refuses(
            &[
                "bn-reset", "--model", &m, "--data", SAMPLE, "--out", &m, "-q",
            ],
            1,
            "manifest.json",
        );
        s.refuses(
            &[
                "bn-reset", "--model", &m, "--data", SAMPLE, "--out", &out, "-q",
            ],
            1,
            "weight file",
        );
        s.refuses(
            &["eval", "--model", &m, "--data", SAMPLE],
            1,
            "manifest.json",
        );
    }
    // a weights file that is a symlink escaping the folder
    #[cfg(unix)]
    {
        let m = s.model_with("symlink", |_| {});
        let w = Path::new(&m).join("model.safetensors");
        std::fs::remove_file(&w).unwrap();
        std::os::unix::fs::symlink(s.p("victim.safetensors"), &w).unwrap();
        s.refuses(
            &[
                "bn-reset", "--model", &m, "--data", SAMPLE, "--out", &m, "-q",
            ],
            1,
            "outside",
        );
    }
}

// ---- family 2: checkpoint contents that used to panic ------------------------------------

#[test]
fn family2_hostile_heads_are_refused_by_every_command() {
    let s = Sandbox::new();
    let b = s.p("b");
    let out = s.p("merged");
    let cases: [(&str, Edit, &str); 6] = [
        (
            "class-out-of-table",
            |v| v["heads"][0]["classes"][0] = 12.into(),
            "class",
        ),
        (
            "few-rows",
            |v| {
                v["heads"][0]["head"]["embeddings"]
                    .as_array_mut()
                    .unwrap()
                    .truncate(3);
            },
            "embedding",
        ),
        (
            "short-row",
            |v| {
                v["heads"][0]["head"]["embeddings"][2]
                    .as_array_mut()
                    .unwrap()
                    .truncate(7);
            },
            "row 2",
        ),
        (
            "huge-dim",
            |v| v["heads"][0]["head"]["dim"] = 1_000_000_000_000u64.into(),
            "dim",
        ),
        (
            "no-classes",
            |v| v["heads"][0]["classes"] = Value::Array(vec![]),
            "classes",
        ),
        (
            "overflowing-value",
            |v| v["heads"][0]["head"]["embeddings"][0][0] = 1e300.into(),
            "finite",
        ),
    ];
    for (name, edit, needle) in cases {
        let m = s.model_with(name, edit);
        s.refuses(&["eval", "--model", &m, "--data", SAMPLE], 1, needle);
        s.refuses(
            &[
                "merge", "--model", &m, "--model", &b, "--data", SAMPLE, "--out", &out, "-q",
            ],
            1,
            needle,
        );
        s.refuses(&["inspect", "--model", &m], 1, "manifest.json");
    }
}

// ---- family 3: options that used to panic -------------------------------------------------

#[test]
fn family3_options_and_headers_that_panicked() {
    let s = Sandbox::new();
    s.refuses(&["bench", "--images", "0"], 2, "--images");
    s.refuses(&["bench", "--batch-size", "0"], 2, "--batch-size");
    s.refuses(
        &["bench", "--backend", "wgpu", "--device", "99"],
        2,
        "--device",
    );
    s.refuses(
        &["bench", "--backend", "flex", "--device", "1"],
        2,
        "--device",
    );
    // a .npy header whose shape product overflows usize
    let npy_file = |name: &str, header: &str| {
        let path = s.dir.path().join(name);
        let mut b = b"\x93NUMPY\x01\x00".to_vec();
        b.extend_from_slice(&(header.len() as u16).to_le_bytes());
        b.extend_from_slice(header.as_bytes());
        std::fs::write(&path, &b).unwrap();
        path
    };
    let npy = npy_file(
        "overflow.npy",
        "{'descr': '<f8', 'fortran_order': False, 'shape': (18446744073709551615, 18446744073709551615), }\n",
    );
    s.refuses(
        &["match", "--cov", npy.to_str().unwrap()],
        1,
        "overflow.npy",
    );
    // a dtype with a newline in the header is quoted, not pasted
    let npy2 = npy_file(
        "dtype.npy",
        "{'descr': '<i\n8', 'fortran_order': False, 'shape': (2, 2), }\n",
    );
    s.refuses(&["match", "--cov", npy2.to_str().unwrap()], 1, "dtype");
}

// ---- family 4: bad values that used to be accepted ----------------------------------------

#[test]
fn family4_bad_values_are_refused() {
    let s = Sandbox::new();
    let out = s.p("never");
    let train = |extra: &[&str]| {
        let mut a = vec!["train", "--data", SAMPLE, "--classes", "0,1", "--out", &out];
        a.extend_from_slice(extra);
        a.into_iter().map(String::from).collect::<Vec<_>>()
    };
    for (flag, val) in [
        ("--lr", "NaN"),
        ("--lr", "-0.1"),
        ("--weight-decay", "inf"),
        ("--epochs", "0"),
        ("--batch-size", "0"),
        ("--warmup", "nan"),
        ("--limit", "0"),
        ("--cutout", "0"),
        ("--cutout", "33"),
        ("--head", "bogus"),
        ("--head", "text:"),
    ] {
        let a = if val.is_empty() {
            train(&[flag])
        } else {
            train(&[flag, val])
        };
        let flag = flag.split('=').next().unwrap();
        let a: Vec<&str> = a.iter().map(String::as_str).collect();
        s.refuses(&a, 2, flag);
    }
    for arg in [
        "--alpha=nan",
        "--beta=inf",
        "--probe-images=0",
        "--cca-reg=-1",
        "--cca-reg=nan",
        "--refit-ridge=-1",
        "--refit-ridge=inf",
        "--refit=gradient",
        "--dual-lambda=2",
        "--dual-lambda=-0.5",
        "--similarity=gradients",
    ] {
        s.refuses(
            &s.merge_ab(&["--out", &out, arg]),
            2,
            arg.split('=').next().unwrap(),
        );
    }
    s.refuses(
        &s.merge_ab(&["--out", &out, "--merge-eps", "-1"]),
        2,
        "--merge-eps",
    );
    s.refuses(
        &s.merge_ab(&[
            "--out",
            &out,
            "--method",
            "weight-avg",
            "--similarity",
            "dual",
        ]),
        2,
        "--similarity `dual`",
    );
    // --eval-data that `eval` would refuse: the tasks' classes have no test image there
    let data = s.dir.path().join("one-class/test/airplane");
    std::fs::create_dir_all(&data).unwrap();
    image::RgbImage::new(32, 32)
        .save(data.join("x.png"))
        .unwrap();
    let root = s.p("one-class");
    s.refuses(
        &["eval", "--model", &s.p("a"), "--data", &root],
        1,
        "one-class",
    );
    s.refuses(
        &s.merge_ab(&["--data", SAMPLE, "--eval-data", &root, "--out", &out, "-q"]),
        1,
        "one-class",
    );
}

// ---- family 5: nothing partial, an existing model survives --------------------------------

#[test]
fn family5_failed_writes_leave_nothing_and_keep_the_old_model() {
    let s = Sandbox::new();
    // the final rename fails (name too long): no .zipmerge-tmp-* left beside it
    let long = s.p(&"n".repeat(300));
    s.refuses(
        &s.merge_ab(&[&["--data", SAMPLE, "--out", &long][..], FAST].concat()),
        1,
        "nnnn",
    );
    // an existing model at --out survives a failed run
    let old = s.p("old");
    ok(&s.merge_ab(&[&["--data", SAMPLE, "--out", &old][..], FAST].concat()));
    s.refuses(
        &s.merge_ab(&["--data", SAMPLE, "--out", &old, "--stop", "99/20"]),
        2,
        "--stop",
    );
    s.refuses(
        &s.merge_ab(&["--data", "/nonexistent-data", "--out", &old, "-q"]),
        1,
        "/nonexistent-data",
    );
    // a folder that is not a model is never replaced
    let notes = s.dir.path().join("notes");
    std::fs::create_dir_all(&notes).unwrap();
    std::fs::write(notes.join("thesis.tex"), b"years of work").unwrap();
    s.refuses(
        &s.merge_ab(&["--data", SAMPLE, "--out", notes.to_str().unwrap()]),
        1,
        "notes",
    );
}

// ---- family 6: clear, one-line messages naming what the user wrote -----------------------

#[test]
fn family6_messages_name_the_field_and_come_before_the_work() {
    let s = Sandbox::new();
    let (a, b) = (s.p("a"), s.p("b"));
    let m = s.model_with("width0", |v| v["width"] = 0.into());
    s.refuses(
        &["eval", "--model", &m, "--data", SAMPLE],
        1,
        "field `width`",
    );
    // decoder text is not pasted over several lines; the file is named
    let bad = s.dir.path().join("bad-images/test/airplane");
    std::fs::create_dir_all(&bad).unwrap();
    std::fs::write(bad.join("x.jpg"), b"\xff\xd8\xffnot really\na jpeg\n").unwrap();
    s.refuses(
        &[
            "predict",
            "--model",
            &a,
            bad.join("x.jpg").to_str().unwrap(),
        ],
        1,
        "x.jpg",
    );
    // an output file that is a folder, with its path
    let dir_out = s.dir.path().join("a-folder");
    std::fs::create_dir_all(&dir_out).unwrap();
    s.refuses(
        &["export", "--model", &a, "--out", dir_out.to_str().unwrap()],
        2,
        "a-folder",
    );
    // experiments check --out, stops and methods before any image is decoded
    let file_out = s.dir.path().join("victim.safetensors");
    let f = file_out.to_str().unwrap();
    s.refuses(
        &[
            "sweep", "--model", &a, "--model", &b, "--data", SAMPLE, "--out", f,
        ],
        2,
        "--out",
    );
    s.refuses(
        &[
            "reproduce",
            "grid",
            "--model",
            &a,
            "--model",
            &b,
            "--data",
            SAMPLE,
            "--out",
            f,
        ],
        2,
        "--out",
    );
    s.refuses(
        &[
            "reproduce",
            "table1",
            "--pairs",
            PAIR,
            "--data",
            SAMPLE,
            "--out",
            f,
        ],
        2,
        "--out",
    );
    s.refuses(
        &[
            "sweep",
            "--model",
            &a,
            "--model",
            &b,
            "--data",
            "/nonexistent",
            "--stops",
            "5/20",
        ],
        2,
        "5/20",
    );
    s.refuses(
        &s.merge_ab(&[
            "--data",
            "/nonexistent",
            "--out",
            &s.p("x"),
            "--stop",
            "3/20",
        ]),
        2,
        "--stop",
    );
    // usage errors: unknown flag, missing value
    s.refuses(&["merge", "--frobnicate"], 2, "--frobnicate");
    s.refuses(&["eval"], 2, "--model");
}

// ---- family 7: surprises a user would call bugs -------------------------------------------

#[test]
fn family7_surprises() {
    let s = Sandbox::new();
    let (a, b) = (s.p("a"), s.p("b"));
    // --out equal to an input is refused (before any work), the input untouched
    s.refuses(
        &s.merge_ab(&["--data", SAMPLE, "--out", &a]),
        2,
        "input model",
    );
    s.refuses(
        &[
            "sweep", "--model", &a, "--model", &b, "--data", SAMPLE, "--out", &b,
        ],
        2,
        "input model",
    );
    s.refuses(
        &s.merge_ab(&["--batch-size", "0", "--out", &s.p("x")]),
        2,
        "--batch-size",
    );
    s.refuses(
        &["eval", "--model", &a, "--tasks", "0,1;;2,3"],
        2,
        "--tasks",
    );
    s.refuses(&["eval", "--model", &a, "--tasks", "0,1;2,x"], 2, "--tasks");
    // a probe set smaller than one batch: one smaller batch, with a note
    let out = s.p("small-probe");
    let err = ok(&s.merge_ab(&[
        "--data",
        SAMPLE,
        "--out",
        &out,
        "--no-eval",
        "--probe-images",
        "40",
        "--bn-reset-images",
        "40",
        "--batch-size",
        "500",
        "-q",
    ]));
    assert!(err.contains("one batch of 40"), "{err}");
    // a PNG named .jpg is decoded from its bytes, as PIL does
    let img = s.dir.path().join("png-named.jpg");
    image::RgbImage::from_pixel(32, 32, image::Rgb([200, 30, 30]))
        .save_with_format(&img, image::ImageFormat::Png)
        .unwrap();
    let o = run(&["predict", "--model", &a, "--json", img.to_str().unwrap()]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    // an all-zero endpoint merges with a warning naming the space and the count
    let zero = s.dir.path().join("zero");
    std::fs::create_dir_all(&zero).unwrap();
    std::fs::copy(
        s.dir.path().join("b/manifest.json"),
        zero.join("manifest.json"),
    )
    .unwrap();
    let mut st =
        zipmerge::checkpoint::safetensors_io::load(&s.dir.path().join("b/model.safetensors"))
            .unwrap();
    for (_, t) in st.iter_mut() {
        t.data.iter_mut().for_each(|v| *v = 0.0);
    }
    zipmerge::checkpoint::safetensors_io::save(&st, &zero.join("model.safetensors")).unwrap();
    let out = s.p("with-zero");
    let head = [
        "merge",
        "--model",
        &a,
        "--model",
        zero.to_str().unwrap(),
        "--data",
        SAMPLE,
        "--out",
        &out,
    ];
    let err = ok(&[&head[..], FAST].concat());
    assert!(
        err.lines()
            .any(|l| l.starts_with("warning: feature space `")
                && l.contains("model B has all 16 units dead")),
        "{err}"
    );
}

// ---- issue 30: the newer paths ------------------------------------------------------------

/// A FIFO at `path` (a named pipe: `export` must not replace it or block on it).
fn mkfifo(path: &Path) {
    let c = std::ffi::CString::new(path.to_str().unwrap()).unwrap();
    // SAFETY: a valid NUL-terminated path.
    assert_eq!(unsafe { libc::mkfifo(c.as_ptr(), 0o644) }, 0, "mkfifo");
}

/// A character device node at `path` with `/dev/null`'s numbers, when this process may make
/// one (root); `false` otherwise.
fn mknod_null(path: &Path) -> bool {
    let c = std::ffi::CString::new(path.to_str().unwrap()).unwrap();
    // SAFETY: a valid NUL-terminated path; makedev(1, 3) is /dev/null.
    unsafe { libc::mknod(c.as_ptr(), libc::S_IFCHR | 0o666, libc::makedev(1, 3)) == 0 }
}

#[test]
fn family8_export_out_goes_through_the_output_rules() {
    let s = Sandbox::new();
    let a = s.p("a");
    let refuses =
        |out: &str, needle: &str| s.refuses(&["export", "--model", &a, "--out", out], 2, needle);
    // the input model's own files, and a new file inside it
    refuses(&s.p("a/manifest.json"), "inside the input model");
    refuses(&s.p("a/model.safetensors"), "inside the input model");
    refuses(&s.p("a/extra.safetensors"), "inside the input model");
    // a folder, a FIFO, a device node (a copy of /dev/null's numbers when we may make one)
    std::fs::create_dir_all(s.dir.path().join("folder")).unwrap();
    refuses(&s.p("folder"), "a folder");
    let fifo = s.dir.path().join("pipe");
    mkfifo(&fifo);
    refuses(fifo.to_str().unwrap(), "a FIFO");
    let dev = s.dir.path().join("null-copy");
    if mknod_null(&dev) {
        refuses(dev.to_str().unwrap(), "a character device");
    } else {
        eprintln!("note: mknod not permitted here: the device-node copy case did not run");
    }
    // the system's /dev/null itself is refused (and stays a character device)
    refuses("/dev/null", "a character device");
    {
        use std::os::unix::fs::FileTypeExt;
        let t = std::fs::metadata("/dev/null").unwrap().file_type();
        assert!(t.is_char_device(), "/dev/null was replaced");
    }
    // a parent that is a file
    refuses(&s.p("victim.safetensors/x.safetensors"), "is a file");
    // a symbolic link to the input's weights resolves into the input
    let link = s.dir.path().join("link.safetensors");
    std::os::unix::fs::symlink(s.dir.path().join("a/model.safetensors"), &link).unwrap();
    refuses(link.to_str().unwrap(), "inside the input model");
    // a regular file outside the model is replaced atomically, and the model still loads
    let out = s.p("exported.safetensors");
    std::fs::write(&out, b"old").unwrap();
    ok(&["export", "--model", &a, "--out", &out]);
    assert!(std::fs::metadata(&out).unwrap().len() > 1000);
    ok(&["eval", "--model", &a, "--data", SAMPLE, "-q"]);
}

/// The options of the training runs of family 9 (ResNet-20 x1, linear head, classes 0,1, 40
/// images, 3 epochs), as flags.
const TRAIN: &[&str] = &[
    "train",
    "--head",
    "linear",
    "--classes",
    "0,1",
    "--data",
    SAMPLE,
    "--limit",
    "40",
    "--epochs",
    "3",
    "--warmup",
    "1",
    "--batch-size",
    "20",
    "--lr",
    "0.05",
    "--seed",
    "3",
    "-q",
];

/// An observer that stops the run (by panicking, as a Ctrl-C would end it) when `0` begins.
struct StopAt(&'static str);

impl zipmerge::progress::Observer for StopAt {
    fn begin(&mut self, label: &str, _total: u64) {
        assert_ne!(label, self.0, "(expected) the test stops the run here");
    }
}

/// Leaves the training state of a run of [`TRAIN`] interrupted after 2 epochs at `out`.
fn interrupted_state(out: &Path) -> PathBuf {
    use zipmerge::ops::train::{run, TaskChoice, TrainPlan};
    let plan = TrainPlan {
        arch: zipmerge::models::Arch::Resnet20,
        width: 1,
        head: zipmerge::models::head::HeadChoice::Linear,
        task: TaskChoice::Classes("0,1".into()),
        data_root: SAMPLE.into(),
        limit: Some(40),
        epochs: 3,
        warmup: 1.0,
        batch_size: 20,
        lr: 0.05,
        weight_decay: 5e-4,
        seed: 3,
        out: out.to_path_buf(),
        resume: false,
        init: None,
        cutout: None,
        cache_gib: 1.0,
        device: burn::tensor::Device::flex(),
        engine: true,
        backend: "flex".into(),
        command: String::new(),
    };
    let r = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        run(&plan, &mut StopAt("epoch 3"))
    }));
    assert!(r.is_err(), "the run was not stopped");
    let state = zipmerge::ops::train::state_dir_of(out);
    assert!(state.join("resume.json").is_file());
    state
}

#[test]
fn family9_training_states_are_untrusted_input() {
    let s = Sandbox::new();
    let out = s.dir.path().join("trained");
    let state = interrupted_state(&out);
    let out_s = out.to_str().unwrap();
    // TRAIN with `--out`, then `extra`: a flag of TRAIN given again in `extra` replaces its value
    let train = |extra: &[&str]| -> Vec<String> {
        let mut v: Vec<String> = TRAIN.iter().map(|x| x.to_string()).collect();
        v.extend(["--out", out_s].iter().map(|x| x.to_string()));
        let mut rest = extra.iter();
        while let Some(x) = rest.next() {
            match v.iter().position(|a| a == x) {
                Some(i) if x.starts_with("--") && x != &"--resume" => {
                    v[i + 1] = rest.next().unwrap().to_string();
                }
                _ => v.push(x.to_string()),
            }
        }
        v
    };
    let json = state.join("resume.json");
    let weights = state.join("weights.safetensors");
    let saved_json = std::fs::read(&json).unwrap();
    let saved_weights = std::fs::read(&weights).unwrap();

    // a rerun without --resume never deletes the state of an earlier run
    s.refuses(&train(&[]), 1, "--resume");
    // another --limit, --data (a different folder) or --epochs: refused, naming each option
    s.refuses(&train(&["--resume", "--limit", "30"]), 1, "--limit");
    let other = s.dir.path().join("sample-copy");
    std::fs::create_dir_all(&other).unwrap();
    std::os::unix::fs::symlink(
        std::fs::canonicalize(SAMPLE).unwrap().join("train"),
        other.join("train"),
    )
    .unwrap();
    std::os::unix::fs::symlink(
        std::fs::canonicalize(SAMPLE).unwrap().join("test"),
        other.join("test"),
    )
    .unwrap();
    s.refuses(
        &train(&["--resume", "--data", other.to_str().unwrap()]),
        1,
        "--data",
    );
    // --epochs may change (an extension), but not to at most the epochs done
    s.refuses(
        &train(&["--resume", "--epochs", "2"]),
        1,
        "--epochs above 2",
    );

    // a NaN in the weights: refused naming the state's weights file and the tensor
    let mut st = zipmerge::checkpoint::safetensors_io::load(&weights).unwrap();
    st.get_mut("conv1.weight").unwrap().data[5] = f32::NAN;
    zipmerge::checkpoint::safetensors_io::save(&st, &weights).unwrap();
    s.refuses(&train(&["--resume"]), 1, "weights.safetensors");
    // weights of another network (a tensor missing): the state file is named
    st.remove("conv1.weight");
    zipmerge::checkpoint::safetensors_io::save(&st, &weights).unwrap();
    s.refuses(&train(&["--resume"]), 1, "weights.safetensors");
    std::fs::write(&weights, &saved_weights).unwrap();

    // resume.json claiming more epochs than the run has, or a log that does not fit
    let info: Value = serde_json::from_slice(&saved_json).unwrap();
    let mut past = info.clone();
    past["epochs_done"] = 5.into();
    std::fs::write(&json, past.to_string()).unwrap();
    s.refuses(&train(&["--resume"]), 1, "epochs_done 5");
    let mut short = info.clone();
    short["log"] = serde_json::json!([]);
    std::fs::write(&json, short.to_string()).unwrap();
    s.refuses(&train(&["--resume"]), 1, "resume.json");
    std::fs::write(&json, "{not json").unwrap();
    s.refuses(&train(&["--resume"]), 1, "resume.json");

    // no resume.json beside the other state files: an error naming it, the state kept
    std::fs::remove_file(&json).unwrap();
    s.refuses(&train(&["--resume"]), 1, "resume.json");
    std::fs::write(&json, &saved_json).unwrap();

    // an optimizer file that is not one: named, in one line without Rust debug text
    let optim: Vec<PathBuf> = std::fs::read_dir(&state)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| {
            let n = p.file_name().unwrap().to_string_lossy().to_string();
            n.starts_with("optimizer") || n.starts_with("momentum")
        })
        .collect();
    assert_eq!(optim.len(), 1, "{optim:?}");
    let saved_optim = std::fs::read(&optim[0]).unwrap();
    std::fs::write(&optim[0], b"garbage").unwrap();
    let optim_name = optim[0].file_name().unwrap().to_string_lossy().to_string();
    s.refuses(&train(&["--resume"]), 1, &optim_name);
    let o = run(&train(&["--resume"])
        .iter()
        .map(String::as_str)
        .collect::<Vec<_>>());
    assert!(!String::from_utf8_lossy(&o.stderr).contains("Io(\""));
    std::fs::write(&optim[0], &saved_optim).unwrap();

    // a state of the engine's training path resumed on burn's: refused, naming both paths
    let o = std::process::Command::new(env!("CARGO_BIN_EXE_zipmerge"))
        .args(train(&["--resume"]))
        .env("ZIPMERGE_ENGINE", "burn")
        .env_remove("ZIPMERGE_DATA")
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&o.stderr);
    assert_eq!(o.status.code(), Some(1), "{err}");
    assert!(
        err.contains("engine training path") && err.contains("burn path"),
        "{err}"
    );

    // the intact state resumes and finishes; the finished run keeps its state for extensions,
    // and a rerun without --resume still refuses to discard it
    ok(&train(&["--resume"]));
    assert!(out.join("model.safetensors").is_file());
    assert!(
        state.join("resume.json").is_file(),
        "the finished run removed its state"
    );
    s.refuses(&train(&[]), 1, "--resume");
    s.refuses(&train(&["--resume"]), 1, "--epochs above 3");
}

#[test]
fn family10_endpoint_group_discovery_names_what_it_cannot_use() {
    let s = Sandbox::new();
    let copy = |to: &Path| {
        std::fs::create_dir_all(to).unwrap();
        for f in ["manifest.json", "model.safetensors"] {
            std::fs::copy(s.dir.path().join("a").join(f), to.join(f)).unwrap();
        }
    };
    let table1 = |dir: &Path| {
        vec![
            "reproduce".to_string(),
            "table1".into(),
            "--pairs".into(),
            dir.to_str().unwrap().into(),
            "--data".into(),
            SAMPLE.into(),
            "-q".into(),
        ]
    };
    // a gap: x-a, x-c (no x-b)
    let gap = s.dir.path().join("gap");
    copy(&gap.join("x-a"));
    copy(&gap.join("x-c"));
    s.refuses(
        &table1(&gap),
        1,
        "missing member x-b, so x-c cannot be used",
    );
    // a member that is a broken symbolic link
    let broken = s.dir.path().join("broken");
    copy(&broken.join("x-b"));
    std::os::unix::fs::symlink(s.dir.path().join("nowhere"), broken.join("x-a")).unwrap();
    s.refuses(&table1(&broken), 1, "x-a: a broken symbolic link");
    // a member without manifest.json
    let bare = s.dir.path().join("bare");
    copy(&bare.join("x-a"));
    std::fs::create_dir_all(bare.join("x-b")).unwrap();
    s.refuses(&table1(&bare), 1, "x-b: no manifest.json");
    // a complete pair y beside x-a, x-b, x-d: x is skipped with a warning naming x-d and y runs
    let mixed = s.dir.path().join("mixed");
    for m in ["x-a", "x-b", "x-d", "y-a", "y-b"] {
        copy(&mixed.join(m));
    }
    let mut args = table1(&mixed);
    args.extend(
        [
            "--probe-images",
            "20",
            "--bn-reset-images",
            "20",
            "--batch-size",
            "20",
        ]
        .iter()
        .map(|x| x.to_string()),
    );
    let err = ok(&args);
    let warnings: Vec<&str> = err.lines().filter(|l| l.starts_with("warning:")).collect();
    assert_eq!(warnings.len(), 1, "{err}");
    assert!(
        warnings[0].contains("missing member x-c, so x-d cannot be used"),
        "{err}"
    );
    assert!(err.contains("running the complete groups only: y"), "{err}");
}

#[test]
fn family11_the_refit_says_what_it_skips() {
    let s = Sandbox::new();
    let out = s.p("refit");
    let err = ok(&s.merge_ab(&[
        "--data",
        SAMPLE,
        "--out",
        &out,
        "--no-eval",
        "--refit",
        "lstsq",
        "--probe-images",
        "16",
        "--bn-reset-images",
        "16",
        "--batch-size",
        "16",
        "-q",
    ]));
    let w: Vec<&str> = err
        .lines()
        .filter(|l| l.starts_with("warning: the refit left"))
        .collect();
    assert_eq!(w.len(), 1, "{err}");
    assert!(
        w[0].contains("linear") && w[0].contains("--probe-images"),
        "{err}"
    );
    let report: Value =
        serde_json::from_slice(&std::fs::read(Path::new(&out).join("report.json")).unwrap())
            .unwrap();
    let skipped = report["correction"]["refit_skipped"].as_array().unwrap();
    assert!(
        w[0].contains(&format!("left {} of its", skipped.len())),
        "{err}"
    );
}

#[test]
fn family12_messages_name_the_option_given_and_other_writers_refuse_special_files() {
    let s = Sandbox::new();
    let out = s.p("x");
    s.refuses(
        &s.merge_ab(&["--similarity", "weight", "--method", "cca", "--out", &out]),
        2,
        "--similarity `weight`",
    );
    let e = run(&s
        .merge_ab(&["--similarity", "weight", "--method", "cca", "--out", &out])
        .iter()
        .map(String::as_str)
        .collect::<Vec<_>>());
    assert!(!String::from_utf8_lossy(&e.stderr).contains("--dual-lambda"));
    // merge, train and sweep --out on a FIFO or /dev/null: refused, nothing replaced
    let fifo = s.dir.path().join("pipe");
    mkfifo(&fifo);
    let f = fifo.to_str().unwrap();
    s.refuses(&s.merge_ab(&["--data", SAMPLE, "--out", f]), 2, "--out");
    s.refuses(
        &s.merge_ab(&["--data", SAMPLE, "--out", "/dev/null"]),
        2,
        "--out",
    );
    let mut t: Vec<&str> = TRAIN.to_vec();
    t.extend(["--out", f]);
    s.refuses(&t, 2, "--out");
    let (a, b) = (s.p("a"), s.p("b"));
    s.refuses(
        &[
            "sweep", "--model", &a, "--model", &b, "--data", SAMPLE, "--out", f,
        ],
        2,
        "--out",
    );
}

#[test]
fn family13_task_vector_options_are_checked_before_any_work() {
    let s = Sandbox::new();
    let (a, b, out) = (s.p("a"), s.p("b"), s.p("tv"));
    let tv = |method: &str, rest: &[&str]| -> Vec<String> {
        let mut v: Vec<String> = [
            "merge", "--method", method, "--model", &a, "--model", &b, "--out", &out,
        ]
        .iter()
        .map(|x| x.to_string())
        .collect();
        v.extend(rest.iter().map(|x| x.to_string()));
        v
    };
    let base = ["--base", a.as_str()];
    // (method, flag, value, what the one error line names)
    let out_of_range = [
        ("ties", "--density", "0", "--density `0`"),
        ("ties", "--density", "1.5", "--density `1.5`"),
        ("dare-linear", "--drop", "1", "--drop `1`"),
        ("dare-ties", "--drop", "-0.1", "--drop `-0.1`"),
        ("ties", "--lambda", "-1", "--lambda"),
        ("ties", "--lambda", "inf", "--lambda"),
    ];
    for (method, flag, value, needle) in out_of_range {
        s.refuses(&tv(method, &[base[0], base[1], flag, value]), 2, needle);
    }
    s.refuses(&tv("ties", &[]), 2, "needs --base");
    // options the method does not take, and task-vector options with an alignment method
    s.refuses(
        &tv(
            "task-arithmetic",
            &[&base[..], &["--density", "0.3"]].concat(),
        ),
        2,
        "--density has no effect with --method task-arithmetic",
    );
    s.refuses(
        &tv("ties", &[&base[..], &["--alpha", "0.5"]].concat()),
        2,
        "--alpha",
    );
    s.refuses(
        &tv("ties", &[&base[..], &["--stop", "13/20"]].concat()),
        2,
        "--stop",
    );
    s.refuses(
        &tv("zipit", &base),
        2,
        "--base applies to the task-vector methods",
    );
    s.refuses(
        &tv("ties", &[&base[..], &["--weights", "1,2,3"]].concat()),
        2,
        "--weights",
    );
    // reproduce grid searches the task-vector methods too, with the same checks
    let grid = |rest: &[&str]| -> Vec<String> {
        let mut v: Vec<String> = ["reproduce", "grid", "--model", &a, "--model", &b]
            .iter()
            .map(|x| x.to_string())
            .collect();
        v.extend(rest.iter().map(|x| x.to_string()));
        v
    };
    s.refuses(&grid(&["--method", "ties"]), 2, "needs --base");
    s.refuses(
        &grid(&["--method", "ties", "--base", &a, "--drops", "0.5"]),
        2,
        "--drops has no effect with --method ties",
    );
    s.refuses(
        &grid(&["--lambdas", "1"]),
        2,
        "--lambdas applies to the task-vector methods",
    );
    // a base of another architecture: named, nothing written
    let r50 = "models/cifar10-5+5-resnet50/resnet50w4-a";
    s.refuses(&tv("ties", &["--base", r50]), 1, "--base");
    // a merge whose base is one of the fine-tunes runs (its task vector is zero)
    ok(&tv(
        "ties",
        &[&base[..], &["--bn-reset-images", "0", "--no-eval", "-q"]].concat(),
    ));
    let report: Value =
        serde_json::from_slice(&std::fs::read(Path::new(&out).join("report.json")).unwrap())
            .unwrap();
    assert_eq!(report["task_vectors"]["kept_fraction"][0], 0.0);
    assert_eq!(report["settings"]["bn_reset_images"], 0);
}

// ---- issue 28 (part): options that would have no effect, and inputs that are a mistake -----

#[test]
fn family14_options_without_effect_are_refused_and_mistakes_warned() {
    let s = Sandbox::new();
    let (a, b, out) = (s.p("a"), s.p("b"), s.p("x"));
    let merge = |rest: &[&str]| s.merge_ab(&[&["--out", out.as_str()][..], rest].concat());
    s.refuses(
        &merge(&["--method", "permute", "--alpha", "0.5"]),
        2,
        "--alpha applies to --method zipit only; it has no effect with --method permute",
    );
    s.refuses(&merge(&["--method", "cca", "--beta", "0.5"]), 2, "--beta");
    s.refuses(
        &merge(&["--cca-reg", "0.1"]),
        2,
        "--cca-reg applies to --method cca",
    );
    s.refuses(
        &merge(&["--dual-lambda", "0.3"]),
        2,
        "--dual-lambda applies to --similarity dual only",
    );
    let exp = |sub: &str, rest: &[&str]| -> Vec<String> {
        let mut v: Vec<String> = ["reproduce", sub, "--data", SAMPLE]
            .iter()
            .map(|x| x.to_string())
            .collect();
        v.extend(rest.iter().map(|x| x.to_string()));
        v
    };
    s.refuses(
        &exp("table1", &["--method", "permute"]),
        2,
        "--method permute",
    );
    s.refuses(
        &exp("table1", &["--cca-reg", "0.1"]),
        2,
        "--cca-reg sets the --extended rows",
    );
    s.refuses(
        &exp(
            "grid",
            &["--model", &a, "--model", &b, "--method", "permute"],
        ),
        2,
        "--method permute",
    );
    s.refuses(
        &exp("grid", &["--model", &a, "--model", &b, "--alpha", "0.5"]),
        2,
        "--alphas",
    );
    // a model given twice, the probe folder evaluated, more probe images than the folder holds
    let err = ok(&[&[
        "merge",
        "--model",
        &a,
        "--model",
        &a,
        "--data",
        &format!("{SAMPLE}/train"),
        "--out",
        &s.p("twice"),
        "--probe-images",
        "5000",
        "--bn-reset-images",
        "50",
        "--no-eval",
        "-q",
    ][..]]
    .concat());
    assert!(err.contains("is given twice"), "{err}");
    assert!(err.contains("note: 5000 probe images asked"), "{err}");
    let err = ok(&s.merge_ab(
        &[
            &[
                "--data",
                &format!("{SAMPLE}/train"),
                "--out",
                &s.p("ontrain"),
            ][..],
            &FAST[1..],
        ]
        .concat(),
    ));
    assert!(err.contains("is the probe folder"), "{err}");
}
