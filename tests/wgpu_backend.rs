//! The wgpu path against flex, run in CI on Mesa's lavapipe (a CPU Vulkan adapter). The test is
//! `#[ignore]`d, so that a machine without an adapter reports it as ignored instead of passing
//! it: `.ci/run` installs lavapipe and then runs it explicitly
//! (`cargo test --release --test wgpu_backend -- --ignored`), and fails
//! if it cannot. Checks: forward logits of ResNet-20 and VGG-11 within 1e-3 relative, the covariance of a
//! statistics pass on the embedded sample within 1e-4 relative, identical ZipIt! clusters.

mod common;

use burn::tensor::Device;

use zipmerge::backend::{self, Backend};
use zipmerge::collect::{collect, probe_batches, ProbeOptions};
use zipmerge::data::{to_tensor, ImageSet};
use zipmerge::matching::{correlation, Matcher, ZipIt};
use zipmerge::models::{init_state, Arch, ForwardCtx, Net, NetConfig};
use zipmerge::system::runner::Runner;

fn wgpu_device() -> Device {
    let adapters = backend::wgpu_adapters();
    println!("wgpu adapters: {adapters:?}");
    assert!(
        !adapters.is_empty(),
        "wgpu finds no adapter (install Mesa's lavapipe: mesa-vulkan-drivers, libvulkan1)"
    );
    backend::device(Backend::Wgpu, Some("cpu")).expect("wgpu cpu device")
}

fn sample() -> ImageSet {
    ImageSet::load(
        std::path::Path::new("datasets/cifar10-sample/train"),
        "train",
        zipmerge::data::Preprocess::CIFAR,
    )
    .expect("embedded sample")
}

#[test]
#[ignore = "needs a wgpu adapter (lavapipe): .ci/run runs it with `-- --ignored`"]
fn wgpu_forward_statistics_and_clusters_match_flex() {
    let wg = wgpu_device();
    let flex = Device::flex();
    let set = sample();
    let imgs: Vec<&[u8]> = (0..4).map(|i| set.image(i * 101)).collect();
    // ResNet-50 (base width 4) on the 32x32 images covers the 7x7 stem, the padded max-pool and
    // the strided 1x1 downsample convs
    for (arch, width) in [(Arch::Resnet20, 1), (Arch::Vgg11, 1), (Arch::Resnet50, 4)] {
        let cfg = NetConfig {
            arch,
            width,
            out: 10,
        };
        let s = init_state(&cfg, 3);
        let out = |d: &Device| {
            let net = Net::from_state(&cfg, &s, d).unwrap();
            net.forward(
                to_tensor(&imgs, zipmerge::data::Preprocess::CIFAR, d),
                &mut ForwardCtx::default(),
            )
            .into_data()
            .convert::<f32>()
            .try_to_vec::<f32>()
            .unwrap()
        };
        let (a, b) = (out(&wg), out(&flex));
        let e = common::l2_rel(&a, &b);
        println!("{arch}: wgpu vs flex logits relative error {e:.2e}");
        assert!(e < 1e-3, "{arch}: logits differ by {e}");
    }
    // statistics on the embedded sample: two differently initialised ResNet-20s
    let cfg = NetConfig {
        arch: Arch::Resnet20,
        width: 1,
        out: 10,
    };
    let batches = probe_batches(
        &set,
        &ProbeOptions {
            images: Some(32),
            batch_size: 16,
            augment: false,
            seed: 1,
        },
    );
    let covs = |d: &Device| {
        let nets: Vec<Net> = [1, 2]
            .iter()
            .map(|&seed| Net::from_state(&cfg, &init_state(&cfg, seed), d).unwrap())
            .collect();
        collect(
            &nets,
            zipmerge::data::Preprocess::CIFAR,
            &batches,
            &Runner::new(d.clone(), true),
            &mut |_| {},
        )
        .unwrap()
        .iter()
        .map(|a| a.finalize().unwrap())
        .collect::<Vec<_>>()
    };
    let (cw, cf) = (covs(&wg), covs(&flex));
    for (s, (w, f)) in cw.iter().zip(&cf).enumerate() {
        let wv: Vec<f32> = w.data.iter().map(|v| *v as f32).collect();
        let fv: Vec<f32> = f.data.iter().map(|v| *v as f32).collect();
        let e = common::l2_rel(&wv, &fv);
        assert!(e < 1e-4, "space {s}: covariance differs by {e}");
        let z = ZipIt {
            alpha: 0.3,
            beta: 0.125,
        };
        let (mw, mf) = (
            z.solve(&correlation(w), 2, 1e-5).unwrap(),
            z.solve(&correlation(f), 2, 1e-5).unwrap(),
        );
        assert_eq!(
            mw.clusters, mf.clusters,
            "space {s}: ZipIt! clusters differ between wgpu and flex"
        );
    }
    println!(
        "covariances of {} spaces within 1e-4 relative, identical ZipIt! clusters",
        cw.len()
    );
}
