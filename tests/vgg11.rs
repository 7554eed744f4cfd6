//! VGG-11 x1 (`src/models/vgg11.rs`) against PyTorch: the fixture
//! (`tests/fixtures/make_vgg11_fixture.py`, the official ZipIt! layout of reference doc §1.4)
//! holds an input and the logits PyTorch computes for it with weights that are a pure function
//! of each tensor's PyTorch name and flat index. This test computes the same weights bit for bit
//! under the names zipmerge gives its VGG-11, so a wrong name, shape, layout or forward pass
//! shows as different logits, on burn and on the CPU engine.

mod common;

use burn::tensor::Device;
use zipmerge::checkpoint::{interop, safetensors_io, StateDict};
use zipmerge::models::{Arch, Net, NetConfig};
use zipmerge::state::NamedTensor;

/// `hashed` of the fixture script: FNV-1a-32 of the name seeds a 32-bit integer hash of the flat
/// index; the value is uniform in `[-bound, bound)` with one f32 rounding.
fn hashed(name: &str, n: usize, bound: f32) -> Vec<f32> {
    let m = 0xFFFF_FFFFu64;
    let s = name
        .bytes()
        .fold(0x811C_9DC5u64, |h, b| ((h ^ b as u64) * 0x0100_0193) & m);
    (0..n as u64)
        .map(|i| {
            let mut h = (i * 0x9E37_79B1 + s) & m;
            h ^= h >> 15;
            h = (h * 0x2C1B_3C6D) & m;
            h ^= h >> 12;
            h = (h * 0x297A_2D39) & m;
            h ^= h >> 15;
            ((h >> 8) as f32 / 16_777_216.0 * 2.0 - 1.0) * bound
        })
        .collect()
}

#[test]
fn vgg11_gives_pytorchs_logits_on_burn_and_on_the_engine() {
    let name = "vgg11-expected.safetensors";
    let bytes = std::fs::read(format!("tests/fixtures/{name}")).unwrap();
    let ex = safetensors_io::from_bytes(&bytes, name).unwrap();
    // the hash is the script's: the stored input is reproduced exactly
    let x = hashed("input", 2 * 3 * 32 * 32, 1.0);
    assert_eq!(
        x, ex["input"].data,
        "the hash differs from the fixture script's"
    );

    let cfg = NetConfig {
        arch: Arch::Vgg11,
        width: 1,
        out: 10,
    };
    let device = Device::flex();
    // the official names (reference doc §1.4: convs at features.{0,3,6,8,11,13,16,18})
    let mut want: Vec<String> = [0, 3, 6, 8, 11, 13, 16, 18]
        .iter()
        .flat_map(|k| [format!("features.{k}.weight"), format!("features.{k}.bias")])
        .chain(["classifier.weight".into(), "classifier.bias".into()])
        .collect();
    want.sort();
    let shapes = Net::empty(&cfg, &device).to_state();
    assert_eq!(shapes.keys().cloned().collect::<Vec<_>>(), want);
    let mut state = StateDict::new();
    for (k, t) in shapes.iter() {
        let n: usize = t.shape.iter().product();
        let bound = if k.ends_with("weight") {
            (6.0f64 / (n / t.shape[0]) as f64).sqrt() as f32
        } else {
            0.1
        };
        state.insert(
            k.clone(),
            NamedTensor::new(t.shape.clone(), hashed(k, n, bound)),
        );
    }
    assert_eq!(interop::detect_arch(&state), Some(Arch::Vgg11));
    let net = Net::from_state(&cfg, &state, &device).unwrap();
    common::check_pytorch_logits(&net, &x, (2, 32), &ex["logits"].data, 1e-4);
}
