//! PyTorch interop against fixtures made by PyTorch itself (tests/fixtures/make_fixtures.py):
//! imported models reproduce PyTorch's logits, export -> import is bit-identical, and bad files
//! give one clear error each.

mod common;
use common::run;

use std::path::{Path, PathBuf};

use burn::tensor::{Device, Tensor, TensorData};
use zipmerge::checkpoint::{interop, safetensors_io, NamedTensor, StateDict};
use zipmerge::models::{Arch, ForwardCtx, Net, NetConfig};

const FIX: &str = "tests/fixtures";
const TEN: &str = "0,1,2,3,4,5,6,7,8,9";

fn tmp(name: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("zipmerge-interop-{}", std::process::id()));
    std::fs::create_dir_all(&d).unwrap();
    d.join(name)
}

fn expected() -> StateDict {
    safetensors_io::from_bytes(
        &std::fs::read(Path::new(FIX).join("expected.safetensors")).unwrap(),
        "expected.safetensors",
    )
    .unwrap()
}

/// Logits of `state` loaded as `arch` (width inferred by the caller) on `input`.
fn logits(arch: Arch, width: usize, state: &StateDict, input: &NamedTensor) -> Vec<f32> {
    let d = Device::flex();
    let cfg = NetConfig {
        arch,
        width,
        out: 10,
    };
    let net = Net::from_state(&cfg, state, &d).expect("fits");
    let s = &input.shape;
    let x = Tensor::<4>::from_data(
        TensorData::new(input.data.clone(), [s[0], s[1], s[2], s[3]]),
        &d,
    );
    net.forward(x, &mut ForwardCtx::default())
        .into_data()
        .convert::<f32>()
        .try_to_vec::<f32>()
        .unwrap()
}

#[test]
fn imported_models_reproduce_pytorch_logits() {
    let exp = expected();
    // reads `file`, runs it as `arch`/`width` on `input`, compares with `want` (max rel err)
    let check = |file: &str, arch, width, input: &str, want: &str, tol: f64| {
        let (s, notes) = interop::read_checkpoint(&Path::new(FIX).join(file)).unwrap();
        let e = common::max_rel(&logits(arch, width, &s, &exp[input]), &exp[want].data);
        println!("{file} vs {want}: logits rel err {e:.2e}");
        assert!(e <= tol, "{file}: {e}");
        notes
    };
    // ResNet-20 x1, official layout, {"state_dict": {"module.*": ...}} wrapper
    let notes = check(
        "resnet20x1.pt",
        Arch::Resnet20,
        1,
        "resnet20.input",
        "resnet20.logits",
        1e-4,
    );
    assert_eq!(notes.stripped_prefixes, ["state_dict.", "module."]);
    assert!(notes.converted.is_empty());

    // torchvision ResNet-50 (base width 8), {"model": ...} wrapper, .pth.tar
    let notes = check(
        "resnet50w8.pth.tar",
        Arch::Resnet50,
        8,
        "resnet50.input",
        "resnet50.logits",
        1e-4,
    );
    assert_eq!(notes.stripped_prefixes, ["model."]);

    // fp16 weights (converted to f32, reported) give PyTorch's fp16-weight logits
    let notes = check(
        "resnet20x1-fp16.pt",
        Arch::Resnet20,
        1,
        "resnet20.input",
        "resnet20_fp16.logits",
        1e-4,
    );
    assert_eq!(notes.converted.len(), 107); // every float tensor; num_batches_tracked skipped

    // bf16 safetensors: converted; close to the f32 logits (bf16 keeps 8 mantissa bits)
    let notes = check(
        "resnet20x1-bf16.safetensors",
        Arch::Resnet20,
        1,
        "resnet20.input",
        "resnet20.logits",
        0.1,
    );
    assert_eq!(notes.converted.len(), 107);
}

#[test]
fn export_then_import_is_bit_identical() {
    for (file, arch) in [
        ("resnet50w8.pth.tar", "resnet50"),
        ("resnet20x1.pt", "resnet20"),
    ] {
        let m1 = tmp(&format!("{arch}-m1"));
        let st = tmp(&format!("{arch}.safetensors"));
        let m2 = tmp(&format!("{arch}-m2"));
        let from = format!("{FIX}/{file}");
        let o = run(&[
            "import",
            "--from",
            &from,
            "--arch",
            arch,
            "--classes",
            TEN,
            "--out",
            m1.to_str().unwrap(),
        ]);
        assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
        for args in [
            vec![
                "export",
                "--model",
                m1.to_str().unwrap(),
                "--out",
                st.to_str().unwrap(),
            ],
            vec![
                "import",
                "--from",
                st.to_str().unwrap(),
                "--arch",
                arch,
                "--classes",
                TEN,
                "--out",
                m2.to_str().unwrap(),
            ],
        ] {
            let o = run(&args);
            assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
        }
        let a = std::fs::read(m1.join("model.safetensors")).unwrap();
        let b = std::fs::read(m2.join("model.safetensors")).unwrap();
        assert_eq!(a, b, "{arch}: round trip changed the weights");
        // the export carries PyTorch's BN buffers (num_batches_tracked), as strict=True needs
        let (exported, _) = interop::read_checkpoint(&st).unwrap();
        let orig = interop::read_checkpoint(Path::new(&from)).unwrap().0;
        assert_eq!(
            exported, orig,
            "{arch}: exported tensors differ from the PyTorch file"
        );
    }
}

fn import_err(from: &str, extra: &[&str]) -> String {
    let out = tmp("bad-out");
    let mut args = vec![
        "import",
        "--from",
        from,
        "--classes",
        TEN,
        "--out",
        out.to_str().unwrap(),
    ];
    args.extend_from_slice(extra);
    let o = run(&args);
    assert!(!o.status.success(), "{from} {extra:?} was accepted");
    assert!(!out.exists(), "{from}: output written despite the error");
    let e = String::from_utf8_lossy(&o.stderr).into_owned();
    assert_eq!(e.trim().lines().count(), 1, "{e}");
    assert!(!e.contains("panicked"), "{e}");
    e
}

#[test]
fn bad_files_give_one_clear_error() {
    let dir = tmp("bad");
    std::fs::create_dir_all(&dir).unwrap();
    // truncated zip
    let bytes = std::fs::read(format!("{FIX}/resnet20x1.pt")).unwrap();
    let trunc = dir.join("truncated.pt");
    std::fs::write(&trunc, &bytes[..bytes.len() / 2]).unwrap();
    let e = import_err(trunc.to_str().unwrap(), &["--arch", "resnet20"]);
    assert!(
        e.contains("truncated.pt") && e.contains("truncated or corrupt"),
        "{e}"
    );
    // truncated safetensors
    let st = std::fs::read(format!("{FIX}/resnet20x1-bf16.safetensors")).unwrap();
    let trunc_st = dir.join("truncated.safetensors");
    std::fs::write(&trunc_st, &st[..st.len() - 1000]).unwrap();
    let e = import_err(trunc_st.to_str().unwrap(), &["--arch", "resnet20"]);
    assert!(e.contains("truncated.safetensors"), "{e}");

    // wrong width: names the first mismatching key and both shapes
    let r20 = format!("{FIX}/resnet20x1.pt");
    let e = import_err(&r20, &["--arch", "resnet20", "--width", "2"]);
    assert!(
        e.contains("`conv1.weight`") && e.contains("[16, 3, 3, 3]") && e.contains("[32, 3, 3, 3]"),
        "{e}"
    );
    // wrong architecture: told from the tensor names
    let e = import_err(&r20, &["--arch", "vgg11", "--width", "1"]);
    assert!(
        e.contains("holds a resnet20 state_dict") && e.contains("not a vgg11"),
        "{e}"
    );
    let e = import_err(
        &format!("{FIX}/resnet50w8.pth.tar"),
        &["--arch", "resnet20", "--width", "1"],
    );
    assert!(e.contains("holds a resnet50 state_dict"), "{e}");
    // a file of some other network
    let e = import_err(&format!("{FIX}/legacy-small.pt"), &[]);
    assert!(e.contains("cannot tell the architecture"), "{e}");
    // not a checkpoint at all
    let txt = dir.join("notes.pt");
    std::fs::write(&txt, "hello\n").unwrap();
    let e = import_err(txt.to_str().unwrap(), &[]);
    assert!(e.contains("not a PyTorch checkpoint"), "{e}");
    let e = import_err(dir.join("missing.safetensors").to_str().unwrap(), &[]);
    assert!(e.contains("no such file"), "{e}");

    // unknown keys
    let (mut s, _) = interop::read_checkpoint(Path::new(&r20)).unwrap();
    s.insert("extra.weight".into(), NamedTensor::zeros(vec![2]));
    let extra = dir.join("extra.safetensors");
    std::fs::write(&extra, safetensors_io::to_bytes(&s).unwrap()).unwrap();
    let e = import_err(extra.to_str().unwrap(), &["--arch", "resnet20"]);
    assert!(e.contains("unknown tensor `extra.weight`"), "{e}");

    // a pickle that would run os.system: refused before anything is unpickled
    let marker = Path::new("/tmp/zipmerge-pwned");
    let _ = std::fs::remove_file(marker);
    let e = import_err(
        &format!("{FIX}/pickle-with-code.pt"),
        &["--arch", "resnet20"],
    );
    assert!(e.contains("posix.system") && e.contains("refused"), "{e}");
    assert!(!marker.exists());

    // the same in the legacy (non-zip) format, and pickles edited to hide the call from a
    // naive scanner (each one runs the command in torch.load(weights_only=False))
    for (f, g) in [
        ("legacy-evil.pt", "posix.system"),
        ("evil-memo.pt", "posix.system"),
        ("evil-binunicode8.pt", "posix.system"),
        ("evil-nested.pt", "torch.storage._load_from_bytes"),
        ("evil-legacy-keys.pt", "posix.system"),
        ("evil-zip-case.pt", "posix.system"),
        ("evil-zip-unicode-path.pt", "posix.system"),
        ("evil-zip-duplicate.pt", "repeated entry names"),
        ("evil-tar.pt", "tar-format"),
    ] {
        let e = import_err(&format!("{FIX}/{f}"), &["--arch", "resnet20"]);
        assert!(
            e.contains(g) && (e.contains("refused") || e.contains("not supported")),
            "{f}: {e}"
        );
        assert!(!marker.exists());
    }

    // integer weights
    let e = import_err(&format!("{FIX}/int-weights.pt"), &["--arch", "resnet20"]);
    assert!(e.contains("`conv1.weight`") && e.contains("I32"), "{e}");

    // layout that does not fit the architecture
    let e = import_err(&r20, &["--arch", "resnet20", "--layout", "torchvision"]);
    assert!(e.contains("--layout torchvision"), "{e}");

    // an --out folder that is not a model folder is never replaced
    let keep = dir.join("precious");
    std::fs::create_dir_all(&keep).unwrap();
    std::fs::write(keep.join("notes.txt"), "x").unwrap();
    let o = run(&["import", "--from", &r20, "--out", keep.to_str().unwrap()]);
    assert!(!o.status.success());
    assert!(String::from_utf8_lossy(&o.stderr).contains("not a zipmerge model folder"));
    assert!(keep.join("notes.txt").exists());
}

/// Protocol-4 pickles (memoised module strings fetched with BINGET) pass the guard.
#[test]
fn protocol_4_pickles_are_read() {
    let (s, _) = interop::read_checkpoint(&Path::new(FIX).join("proto4-small.pt")).unwrap();
    assert_eq!(s["conv1.weight"].data[431], 431.0 / 432.0);
}

/// A training checkpoint (`{"state_dict", "optimizer", "best_acc1", ...}`): the weights entry is
/// taken, the rest ignored with a note; the architecture is told from the names.
#[test]
fn training_checkpoints_keep_their_weights_entry() {
    let (w, _) = interop::read_checkpoint(&Path::new(FIX).join("resnet20x1.pt")).unwrap();
    let mut ckpt = StateDict::new();
    for (i, (k, t)) in w.iter().enumerate() {
        ckpt.insert(format!("state_dict.module.{k}"), t.clone());
        ckpt.insert(format!("optimizer.state.{i}.momentum_buffer"), t.clone());
    }
    ckpt.insert("best_acc1".into(), NamedTensor::new(vec![1], vec![76.1]));
    let f = tmp("train-ckpt.safetensors");
    std::fs::write(&f, safetensors_io::to_bytes(&ckpt).unwrap()).unwrap();
    let (s, notes) = interop::read_checkpoint(&f).unwrap();
    assert_eq!(s, w);
    assert_eq!(notes.ignored.len(), w.len() + 1);
    let out = tmp("train-ckpt-model");
    let o = run(&[
        "import",
        "--from",
        f.to_str().unwrap(),
        "--out",
        out.to_str().unwrap(),
    ]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    assert!(String::from_utf8_lossy(&o.stderr).contains("ignored 108 other tensors"));
    let m = std::fs::read_to_string(out.join("manifest.json")).unwrap();
    assert!(m.contains("\"arch\": \"resnet20\""), "{m}");
}

#[test]
fn classes_default_to_the_final_layer_outputs() {
    let out = tmp("default-classes");
    let r20 = format!("{FIX}/resnet20x1.pt");
    let o = run(&[
        "import",
        "--from",
        &r20,
        "--arch",
        "resnet20",
        "--out",
        out.to_str().unwrap(),
    ]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let m: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(out.join("manifest.json")).unwrap()).unwrap();
    assert_eq!(
        m["heads"][0]["classes"],
        serde_json::json!([0, 1, 2, 3, 4, 5, 6, 7, 8, 9])
    );
    // a text head needs the label ids spelled out
    let out2 = tmp("text-no-classes");
    let o = run(&[
        "import",
        "--from",
        &r20,
        "--arch",
        "resnet20",
        "--head",
        "text",
        "--out",
        out2.to_str().unwrap(),
    ]);
    assert!(!o.status.success());
    assert!(String::from_utf8_lossy(&o.stderr).contains("--classes is required"));
}

#[test]
fn legacy_pickle_format_is_read() {
    let (s, _) = interop::read_checkpoint(&Path::new(FIX).join("legacy-small.pt")).unwrap();
    let t = &s["conv1.weight"];
    assert_eq!(t.shape, [16, 3, 3, 3]);
    assert!(t
        .data
        .iter()
        .enumerate()
        .all(|(i, v)| (v - i as f32 / 432.0).abs() < 1e-7));
}

#[test]
fn fp16_import_says_so() {
    let out = tmp("fp16");
    let o = run(&[
        "import",
        "--from",
        &format!("{FIX}/resnet20x1-fp16.pt"),
        "--arch",
        "resnet20",
        "--classes",
        TEN,
        "--out",
        out.to_str().unwrap(),
    ]);
    assert!(o.status.success());
    let e = String::from_utf8_lossy(&o.stderr);
    assert!(e.contains("converted 107 of 107 tensors to f32"), "{e}");
    let m = std::fs::read_to_string(out.join("manifest.json")).unwrap();
    assert!(m.contains("converted_to_f32"));
}

#[test]
fn import_takes_class_names_and_refuses_too_few() {
    let dir = tmp("names");
    std::fs::create_dir_all(&dir).unwrap();
    let names = dir.join("names.txt");
    let ten = [
        "airplane",
        "automobile",
        "bird",
        "cat",
        "deer",
        "dog",
        "frog",
        "horse",
        "ship",
        "truck",
    ];
    std::fs::write(&names, ten.join("\n") + "\n").unwrap();
    let out = dir.join("m");
    let from = format!("{FIX}/resnet20x1.pt");
    let o = run(&[
        "import",
        "--from",
        &from,
        "--arch",
        "resnet20",
        "--classes",
        TEN,
        "--class-names",
        names.to_str().unwrap(),
        "--out",
        out.to_str().unwrap(),
    ]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let m: serde_json::Value =
        serde_json::from_slice(&std::fs::read(out.join("manifest.json")).unwrap()).unwrap();
    assert_eq!(m["class_names"], serde_json::json!(ten));
    std::fs::write(&names, "airplane\nautomobile\n").unwrap();
    let e = import_err(
        &from,
        &[
            "--arch",
            "resnet20",
            "--class-names",
            names.to_str().unwrap(),
        ],
    );
    assert!(
        e.contains("--class-names") && e.contains("names 2 classes"),
        "{e}"
    );
}

#[test]
fn export_of_a_text_head_model_writes_its_heads_beside_the_weights() {
    let dir = tmp("heads");
    std::fs::create_dir_all(&dir).unwrap();
    let out = dir.join("a.safetensors");
    let o = run(&[
        "export",
        "--model",
        "models/cifar10-5+5/resnet20x1-a",
        "--out",
        out.to_str().unwrap(),
    ]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let side = dir.join("a.safetensors.heads.json");
    let h: serde_json::Value = serde_json::from_slice(&std::fs::read(&side).unwrap()).unwrap();
    let m: serde_json::Value = serde_json::from_slice(
        &std::fs::read("models/cifar10-5+5/resnet20x1-a/manifest.json").unwrap(),
    )
    .unwrap();
    // a single model: its one network runs every cut segment
    assert_eq!(
        (h["stop_cut"].as_u64(), h["output_cut"].as_u64()),
        (Some(4), Some(4))
    );
    assert_eq!(h["preprocess"]["input_size"], 32);
    let head = &h["heads"][0];
    assert_eq!(head["kind"], "text");
    assert_eq!(head["classes"], m["heads"][0]["classes"]);
    let rows = head["embeddings"].as_array().unwrap();
    assert_eq!(rows.len(), head["classes"].as_array().unwrap().len());
    // unit-norm rows of the embedding dimension
    for r in rows {
        let v: Vec<f64> = r
            .as_array()
            .unwrap()
            .iter()
            .map(|x| x.as_f64().unwrap())
            .collect();
        assert_eq!(v.len(), head["embedding_dim"].as_u64().unwrap() as usize);
        let n = v.iter().map(|x| x * x).sum::<f64>().sqrt();
        assert!((n - 1.0).abs() < 1e-4, "norm {n}");
    }
}
