//! torchvision's ResNet-18 (`src/models/resnet18.rs`): a state dict made by PyTorch
//! (`tests/fixtures/make_resnet18_fixture.py`, torchvision's classes at base width 8) is told
//! from its tensor names, loads, and gives PyTorch's logits on burn and on the CPU engine; the
//! FLOP count equals PyTorch's hook count; the merge spec has ResNet-18's 18 counted layers.

mod common;

use burn::tensor::Device;
use zipmerge::checkpoint::{interop, safetensors_io, StateDict};
use zipmerge::models::MergeSpec;
use zipmerge::models::{Arch, Net, NetConfig};

const FIX: &str = "tests/fixtures";

fn expected() -> StateDict {
    let name = "resnet18-expected.safetensors";
    safetensors_io::from_bytes(&std::fs::read(format!("{FIX}/{name}")).unwrap(), name).unwrap()
}

#[test]
fn pytorch_resnet18_is_detected_and_gives_pytorchs_logits() {
    let (state, _) =
        interop::read_checkpoint(std::path::Path::new(&format!("{FIX}/resnet18w8.pth"))).unwrap();
    assert_eq!(interop::detect_arch(&state), Some(Arch::Resnet18));
    let cfg = NetConfig {
        arch: Arch::Resnet18,
        width: 8,
        out: 10,
    };
    let device = Device::flex();
    let net = Net::from_state(&cfg, &state, &device).unwrap();
    let ex = expected();
    let x = ex["input"].data.clone();
    let engine = common::check_pytorch_logits(&net, &x, (2, 64), &ex["logits"].data, 1e-4);
    // per stage: one inner space per block (two blocks), then the stage stream
    assert_eq!(engine.taps_per_cut(), [3, 3, 3, 3, 0]);
}

#[test]
fn flops_and_spec_match_resnet18() {
    let cfg = NetConfig {
        arch: Arch::Resnet18,
        width: 64,
        out: 1000,
    };
    // MACs of every Conv2d and Linear of torchvision.models.resnet18() at 224x224, counted by
    // forward hooks in PyTorch (the fixture script)
    // (1,814,073,344: a multiple of 128, exact in the fixture's f32)
    let want = expected()["flops_64_1000"].data[0] as f64;
    assert_eq!(cfg.flops() as f64, want);
    let spec = MergeSpec::of(&cfg);
    assert_eq!(spec.total_layers(), 18);
    // stage 1's stream (the stem writes it: layer1 has no downsample), one inner space per
    // block, the streams of stages 2-4
    let names: Vec<&str> = spec.spaces.iter().map(|s| s.name.as_str()).collect();
    assert_eq!(names.len(), 12, "{names:?}");
    assert_eq!(names.iter().filter(|n| n.starts_with("stream")).count(), 4);
    let widths: Vec<usize> = spec.spaces.iter().map(|s| s.width).collect();
    assert_eq!(widths.iter().max(), Some(&512));
    assert_eq!(spec.stops().len(), 5, "four stage ends and the full zip");
}

#[test]
fn resnet18_is_listed_and_parsed() {
    assert_eq!("resnet18".parse::<Arch>().unwrap(), Arch::Resnet18);
    assert!(Arch::names().contains("resnet18"));
    let e = "resnet19".parse::<Arch>().unwrap_err().to_string();
    assert!(e.contains("resnet18") && e.contains("resnet19"), "{e}");
}
