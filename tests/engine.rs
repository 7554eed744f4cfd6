//! The CPU engine against burn-flex's forward of the same `Net` (the model files are the
//! definition): logits and every tap on each architecture, BN-reset statistics, covariances
//! against an f64 two-pass reference, multi-head systems, and bit-for-bit reproducibility.

use burn::tensor::{Device, Tensor};

use zipmerge::collect::{
    collect_burn, collect_engine, probe_batches, CovAccumulator, ProbeOptions,
};
use zipmerge::data::{to_tensor, ImageSet, Preprocess};
use zipmerge::engine::{Act, EngineCtx};
use zipmerge::models::{Arch, ForwardCtx, Net, NetConfig};
use zipmerge::system::System;

mod common;
use common::random_state;

fn vec4(t: Tensor<4>) -> Vec<f32> {
    t.into_data().convert::<f32>().try_to_vec::<f32>().unwrap()
}

/// `n` images of side `side`: the embedded sample's pixels, resized by nearest neighbour
/// when the side differs (any real-looking content will do).
fn images(n: usize, side: usize) -> Vec<Vec<u8>> {
    let set = ImageSet::load(
        std::path::Path::new("datasets/cifar10-sample/train"),
        "train",
        Preprocess::CIFAR,
    )
    .expect("embedded sample");
    (0..n)
        .map(|i| {
            let src = set.image(i % set.len());
            let mut out = vec![0u8; side * side * 3];
            for y in 0..side {
                for x in 0..side {
                    let (sy, sx) = (y * 32 / side, x * 32 / side);
                    for c in 0..3 {
                        out[(y * side + x) * 3 + c] = src[(sy * 32 + sx) * 3 + c];
                    }
                }
            }
            out
        })
        .collect()
}

/// (config, input side, images) of each architecture, small enough for CI.
fn cases() -> Vec<(NetConfig, usize, usize)> {
    vec![
        (
            NetConfig {
                arch: Arch::Resnet20,
                width: 1,
                out: 10,
            },
            32,
            12,
        ),
        (
            NetConfig {
                arch: Arch::Resnet20,
                width: 2,
                out: 384,
            },
            32,
            5,
        ),
        (
            NetConfig {
                arch: Arch::Vgg11,
                width: 1,
                out: 7,
            },
            32,
            6,
        ),
        (
            NetConfig {
                arch: Arch::Resnet50,
                width: 4,
                out: 5,
            },
            64,
            3,
        ),
        (
            NetConfig {
                arch: Arch::Resnet18,
                width: 8,
                out: 6,
            },
            64,
            3,
        ),
    ]
}

#[test]
fn logits_and_taps_equal_burn_flex_on_every_architecture() {
    let d = Device::flex();
    for (cfg, side, n) in cases() {
        let net = Net::from_state(&cfg, &random_state(&cfg, 3), &d).unwrap();
        let imgs = images(n, side);
        let refs: Vec<&[u8]> = imgs.iter().map(|v| v.as_slice()).collect();
        let prep = cfg.preprocess();
        let mut bctx = ForwardCtx::with_taps();
        let want = net.forward(to_tensor(&refs, prep, &d), &mut bctx);
        let want = want
            .into_data()
            .convert::<f32>()
            .try_to_vec::<f32>()
            .unwrap();
        let cpu = net.compile().unwrap();
        let mut ectx = EngineCtx {
            taps: Some(Vec::new()),
            ..Default::default()
        };
        let got = cpu.forward(Act::from_images(&refs, prep), &mut ectx);
        let e = common::max_rel(&got.data, &want);
        assert!(e < 1e-5, "{:?}: logits relative error {e}", cfg);
        let (bt, et) = (bctx.taps.unwrap(), ectx.taps.unwrap());
        assert_eq!(bt.len(), et.len(), "{:?}: tap count", cfg);
        for (s, (b, e)) in bt.into_iter().zip(&et).enumerate() {
            let err = common::max_rel(&vec4(e.to_nchw(&d)), &vec4(b));
            assert!(err < 1e-5, "{:?}: space {s} relative error {err}", cfg);
        }
    }
}

#[test]
fn bn_reset_statistics_equal_burn_flex() {
    let d = Device::flex();
    for (cfg, side, n) in cases().into_iter().filter(|c| c.0.arch != Arch::Vgg11) {
        let net = Net::from_state(&cfg, &random_state(&cfg, 4), &d).unwrap();
        let imgs = images(n, side);
        let refs: Vec<&[u8]> = imgs.iter().map(|v| v.as_slice()).collect();
        let mut bctx = ForwardCtx::recording_bn();
        let want = net.forward(to_tensor(&refs, cfg.preprocess(), &d), &mut bctx);
        let want = want
            .into_data()
            .convert::<f32>()
            .try_to_vec::<f32>()
            .unwrap();
        let mut ectx = EngineCtx {
            record_bn: true,
            ..Default::default()
        };
        let cpu = net.compile().unwrap();
        let got = cpu.forward(Act::from_images(&refs, cfg.preprocess()), &mut ectx);
        // train-mode outputs agree too
        assert!(
            common::max_rel(&got.data, &want) < 1e-5,
            "{:?}: train-mode logits",
            cfg
        );
        let mut b = bctx.bn_records;
        let mut e = ectx.bn_records;
        b.sort_by(|x, y| x.0.cmp(&y.0));
        e.sort_by(|x, y| x.0.cmp(&y.0));
        assert_eq!(b.len(), e.len());
        // burn computes the batch variance in f32 and both paths round 50 layers of f32 convs
        // differently: ResNet-50's deepest layers drift to ~1e-5, ResNet-20's stay below 1e-5
        let tol = if cfg.arch == Arch::Resnet50 {
            3e-5
        } else {
            1e-5
        };
        for (x, y) in b.iter().zip(&e) {
            assert_eq!(x.0, y.0);
            // means are compared relative to the layer's spread (a mean can be ~0)
            let spread = x.2.iter().map(|v| v.sqrt()).fold(0f32, f32::max) as f64;
            let dm =
                x.1.iter()
                    .zip(&y.1)
                    .map(|(a, b)| (a - b).abs() as f64)
                    .fold(0.0, f64::max);
            assert!(dm / spread.max(1e-12) < tol, "{}: mean error {dm}", x.0);
            let ev = common::max_rel(&y.2, &x.2);
            assert!(ev < tol, "{}: variance relative error {ev}", x.0);
        }
    }
}

/// Relative Frobenius distance of two covariance matrices.
fn frob(a: &[f64], b: &[f64]) -> f64 {
    let d: f64 = a.iter().zip(b).map(|(x, y)| (x - y).powi(2)).sum();
    let n: f64 = b.iter().map(|y| y * y).sum();
    (d / n.max(1e-300)).sqrt()
}

#[test]
fn covariances_equal_an_f64_reference_and_burn() {
    let d = Device::flex();
    let cfg = NetConfig {
        arch: Arch::Resnet20,
        width: 1,
        out: 10,
    };
    let nets: Vec<Net> = [5, 6]
        .iter()
        .map(|&s| Net::from_state(&cfg, &random_state(&cfg, s), &d).unwrap())
        .collect();
    let set = ImageSet::load(
        std::path::Path::new("datasets/cifar10-sample/train"),
        "train",
        Preprocess::CIFAR,
    )
    .unwrap();
    let batches = probe_batches(
        &set,
        &ProbeOptions {
            images: Some(24),
            batch_size: 10,
            augment: true,
            seed: 1,
        },
    );
    let engine = collect_engine(&nets, Preprocess::CIFAR, &batches, &mut |_| {}).unwrap();
    let burn = collect_burn(&nets, Preprocess::CIFAR, &batches, &d, &mut |_| {}).unwrap();
    // f64 reference: burn's taps, stacked [O, n], moments by CovAccumulator::update_features
    let mut reference: Vec<CovAccumulator> = Vec::new();
    for batch in &batches {
        let refs: Vec<&[u8]> = batch.iter().map(|v| v.as_slice()).collect();
        let taps: Vec<Vec<Tensor<4>>> = nets
            .iter()
            .map(|m| {
                let mut ctx = ForwardCtx::with_taps();
                m.forward(to_tensor(&refs, Preprocess::CIFAR, &d), &mut ctx);
                ctx.taps.unwrap()
            })
            .collect();
        for s in 0..taps[0].len() {
            let x = Tensor::cat(taps.iter().map(|t| t[s].clone()).collect(), 1);
            let [b, o, h, w] = x.dims();
            let x = vec4(x.swap_dims(0, 1));
            if reference.len() <= s {
                reference.push(CovAccumulator::new(o));
            }
            reference[s].update_features(b, &x, b * h * w);
        }
    }
    assert_eq!(engine.len(), reference.len());
    for (s, ((e, b), r)) in engine.iter().zip(&burn).zip(&reference).enumerate() {
        let (e, b, r) = (
            e.finalize().unwrap(),
            b.finalize().unwrap(),
            r.finalize().unwrap(),
        );
        let er = frob(&e.data, &r.data);
        assert!(er < 1e-6, "space {s}: engine vs f64 reference {er}");
        let eb = frob(&e.data, &b.data);
        assert!(eb < 1e-5, "space {s}: engine vs burn {eb}");
    }
    // same inputs -> same bits
    let again = collect_engine(&nets, Preprocess::CIFAR, &batches, &mut |_| {}).unwrap();
    for (a, b) in engine.iter().zip(&again) {
        assert_eq!(a.sum_outer, b.sum_outer);
        assert_eq!(a.sum_mean, b.sum_mean);
    }
}

#[test]
fn multi_head_systems_equal_burn_flex() {
    use zipmerge::checkpoint::ModelManifest;
    use zipmerge::merge::{self, Endpoints, Method};
    use zipmerge::models::head::HeadSpec;
    use zipmerge::models::MergeSpec;
    let d = Device::flex();
    let cfg = NetConfig {
        arch: Arch::Resnet20,
        width: 1,
        out: 5,
    };
    let states = vec![random_state(&cfg, 7), random_state(&cfg, 8)];
    let man = |c: Vec<usize>| {
        ModelManifest::single(&cfg, c, HeadSpec::Linear, vec![], serde_json::Value::Null)
    };
    let ep = Endpoints {
        dirs: vec![Default::default(); 2],
        manifests: vec![man((0..5).collect()), man((5..10).collect())],
        states,
        spec: MergeSpec::of(&cfg),
    };
    let imgs = images(6, 32);
    let batches = vec![imgs.clone()];
    let runner = zipmerge::system::runner::Runner::cpu();
    let stats = merge::statistics(&ep, &batches, &runner, &mut |_| {}).unwrap();
    let stop = ep.spec.stop("13/20").unwrap();
    let method = Method::Zipit {
        alpha: 0.3,
        beta: 0.125,
    };
    let t = merge::match_spaces(&ep, &method, Some(&stats), stop.spaces, 1e-5).unwrap();
    let m = merge::build(&ep, &t, &stop, serde_json::Value::Null).unwrap();
    let sys: System = m.system(&d).unwrap();
    let refs: Vec<&[u8]> = imgs.iter().map(|v| v.as_slice()).collect();
    let want = sys.forward_heads(
        to_tensor(&refs, Preprocess::CIFAR, &d),
        &mut ForwardCtx::default(),
    );
    let cpu = sys.compile().unwrap();
    let got = cpu.forward_heads(
        Act::from_images(&refs, Preprocess::CIFAR),
        &mut EngineCtx::default(),
    );
    assert_eq!(got.len(), 2);
    for (g, w) in got.iter().zip(want) {
        let w = w.into_data().convert::<f32>().try_to_vec::<f32>().unwrap();
        assert!(common::max_rel(&g.data, &w) < 1e-5);
    }
}
