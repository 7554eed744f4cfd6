//! Resize bit-exact with PIL (`src/data/resize.rs`): pixels and logits made by Pillow 13 and
//! torchvision (`tests/fixtures/make_resize_fixture.py`) are reproduced. The small cases cover
//! downscales (antialiased), upscales and one-axis resizes of a noise image; the photo case is
//! torchvision's evaluation pipeline `Resize(256)`, `CenterCrop(224)` on a 300x227 JPEG, then
//! the ResNet-18 (base width 8) logits of the result.

mod common;

use burn::tensor::Device;
use zipmerge::checkpoint::{interop, safetensors_io};
use zipmerge::data::resize::resize_bilinear;
use zipmerge::data::Preprocess;
use zipmerge::models::{Arch, Net, NetConfig};

const FIX: &str = "tests/fixtures/resize";

fn read(name: &str) -> Vec<u8> {
    std::fs::read(format!("{FIX}/{name}")).unwrap()
}

#[test]
fn small_resizes_match_pillow_byte_for_byte() {
    let small = image::load_from_memory(&read("small.png"))
        .unwrap()
        .to_rgb8();
    assert_eq!(small.dimensions(), (37, 29));
    for (w, h) in [
        (13, 11),
        (80, 61),
        (37, 10),
        (10, 29),
        (5, 5),
        (111, 7),
        (30, 8),
        (36, 12),
        (3, 1),
    ] {
        let got = resize_bilinear(&small, w, h);
        let want = read(&format!("small-{w}x{h}.rgb"));
        let diff = got
            .as_raw()
            .iter()
            .zip(&want)
            .filter(|(a, b)| a != b)
            .count();
        assert_eq!(got.as_raw().len(), want.len(), "{w}x{h}");
        assert_eq!(diff, 0, "{w}x{h}: {diff} bytes differ from PIL");
    }
}

#[test]
fn torchvision_eval_pipeline_gives_pils_pixels_and_pytorchs_logits() {
    let img = zipmerge::data::imagefolder::decode_bytes(&read("photo.jpg")).unwrap();
    assert_eq!(img.dimensions(), (300, 227));
    let px = Preprocess::IMAGENET.prepare(img, false).unwrap();
    let want = read("photo-224.rgb");
    let diff = px.iter().zip(&want).filter(|(a, b)| a != b).count();
    assert_eq!(
        diff,
        0,
        "{diff} of {} bytes differ from torchvision",
        want.len()
    );

    let (state, _) =
        interop::read_checkpoint(std::path::Path::new("tests/fixtures/resnet18w8.pth")).unwrap();
    let cfg = NetConfig {
        arch: Arch::Resnet18,
        width: 8,
        out: 10,
    };
    let device = Device::flex();
    let net = Net::from_state(&cfg, &state, &device).unwrap();
    let x: Vec<f32> = zipmerge::data::to_tensor(&[&px], Preprocess::IMAGENET, &device)
        .into_data()
        .convert::<f32>()
        .try_to_vec::<f32>()
        .unwrap();
    let name = "resize-expected.safetensors";
    let ex = safetensors_io::from_bytes(&read(name), name).unwrap();
    common::check_pytorch_logits(&net, &x, (1, 224), &ex["logits"].data, 1e-5);
}

/// The logits `zipmerge predict --json` prints for the photo through the model folder `model`.
fn predicted_logits(model: &std::path::Path) -> Vec<f32> {
    let v = common::run_json(&[
        "predict",
        "--model",
        model.to_str().unwrap(),
        "--json",
        &format!("{FIX}/photo.jpg"),
    ]);
    let p = if v.is_array() {
        &v[0]
    } else {
        &v["predictions"][0]
    };
    serde_json::from_value(p["logits"].clone()).unwrap()
}

#[test]
fn imported_preprocessing_is_recorded_and_used_by_predict() {
    let name = "resize-expected.safetensors";
    let ex = safetensors_io::from_bytes(&read(name), name).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let from = "tests/fixtures/resnet18w8.pth";
    // the architecture's default (resize 256, crop 224, ImageNet mean/std): no manifest entry
    let plain = dir.path().join("plain");
    common::run_json(&[
        "import",
        "--from",
        from,
        "--out",
        plain.to_str().unwrap(),
        "--json",
    ]);
    let m: serde_json::Value =
        serde_json::from_slice(&std::fs::read(plain.join("manifest.json")).unwrap()).unwrap();
    assert!(m.get("preprocess").is_none());
    let got = predicted_logits(&plain);
    assert!(common::max_rel(&got, &ex["logits"].data) < 1e-5);
    // the model's own: recorded in the manifest, and predict gives PyTorch's logits for it
    let own = dir.path().join("own");
    common::run_json(&[
        "import",
        "--from",
        from,
        "--mean",
        "0.5,0.4,0.3",
        "--std",
        "0.25,0.2,0.3",
        "--input-size",
        "160",
        "--resize",
        "176",
        "--out",
        own.to_str().unwrap(),
        "--json",
    ]);
    let m: serde_json::Value =
        serde_json::from_slice(&std::fs::read(own.join("manifest.json")).unwrap()).unwrap();
    assert_eq!(m["preprocess"]["input_size"], 160);
    assert_eq!(m["preprocess"]["resize"], 176);
    let got = predicted_logits(&own);
    let err = common::max_rel(&got, &ex["custom_logits"].data);
    assert!(
        err < 1e-5,
        "custom preprocessing: {err:.2e} of the largest logit"
    );
    // a manifest is untrusted: a broken preprocessing entry is one error line naming it
    let broken = dir.path().join("broken");
    std::fs::create_dir_all(&broken).unwrap();
    std::fs::copy(
        own.join("model.safetensors"),
        broken.join("model.safetensors"),
    )
    .unwrap();
    let text = std::fs::read_to_string(own.join("manifest.json")).unwrap();
    let text = text.replace("\"input_size\": 160", "\"input_size\": 0");
    assert!(text.contains("\"input_size\": 0"));
    std::fs::write(broken.join("manifest.json"), text).unwrap();
    let o = common::run(&[
        "predict",
        "--model",
        broken.to_str().unwrap(),
        &format!("{FIX}/photo.jpg"),
    ]);
    let err = String::from_utf8_lossy(&o.stderr);
    assert_eq!(o.status.code(), Some(1), "{err}");
    assert_eq!(err.lines().count(), 1, "{err}");
    assert!(
        err.contains("manifest.json") && err.contains("preprocess"),
        "{err}"
    );
    // two models that take their inputs differently cannot be merged
    let o = common::run(&[
        "merge",
        "--model",
        plain.to_str().unwrap(),
        "--model",
        own.to_str().unwrap(),
        "--probe",
        "none",
        "--method",
        "permute",
        "--out",
        dir.path().join("m").to_str().unwrap(),
    ]);
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(
        !o.status.success() && err.contains("preprocessing"),
        "{err}"
    );
    assert!(!dir.path().join("m").exists());
    // values torchvision would not take: one usage line naming the option
    for (flag, v, says) in [
        ("--mean", "125.3,122.9,113.9", "0..1 units"),
        ("--std", "0.2,0,0.2", "std"),
        ("--std", "0.2,0.2", "three numbers"),
        ("--input-size", "0", "input-size"),
        ("--resize", "100", "resize"),
    ] {
        let o = common::run(&[
            "import",
            "--from",
            from,
            flag,
            v,
            "--out",
            dir.path().join("bad").to_str().unwrap(),
        ]);
        let err = String::from_utf8_lossy(&o.stderr);
        assert_eq!(o.status.code(), Some(2), "{flag} {v}: {err}");
        assert_eq!(err.lines().count(), 1, "{err}");
        assert!(err.starts_with("error: ") && err.contains(says), "{err}");
        assert!(!dir.path().join("bad").exists());
    }
}
