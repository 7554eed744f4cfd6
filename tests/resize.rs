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
    let px = Preprocess::ImageNet.prepare(img, false).unwrap();
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
    let x: Vec<f32> = zipmerge::data::to_tensor(&[&px], Preprocess::ImageNet, &device)
        .into_data()
        .convert::<f32>()
        .try_to_vec::<f32>()
        .unwrap();
    let name = "resize-expected.safetensors";
    let ex = safetensors_io::from_bytes(&read(name), name).unwrap();
    common::check_pytorch_logits(&net, &x, (1, 224), &ex["logits"].data, 1e-5);
}
