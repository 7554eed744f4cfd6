//! End-to-end checks of the merge engine on small random networks (reference test ideas T5, T6,
//! T7, T10): a permuted copy is recovered losslessly, self-merges give the model back, return-a
//! reproduces A, and a partial zip of identical models has heads equal to the endpoint.

use std::collections::BTreeMap;

use burn::tensor::{Device, Tensor};
use rand::seq::SliceRandom;
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;

use zipmerge::checkpoint::{ModelManifest, StateDict};
use zipmerge::collect::{probe_batches, ProbeOptions};
use zipmerge::data::{to_tensor, ImageSet};
use zipmerge::merge::{self, Endpoints, Method};
use zipmerge::models::head::HeadSpec;
use zipmerge::models::MergeSpec;
use zipmerge::models::{Arch, ForwardCtx, Net, NetConfig};
use zipmerge::rewrite::bn_reset;
use zipmerge::spec::{LayerKind, Side};
use zipmerge::system::runner::Runner;

mod common;
use common::random_state;

fn sample() -> ImageSet {
    ImageSet::load(
        std::path::Path::new("datasets/cifar10-sample/train"),
        "train",
        zipmerge::data::Preprocess::CIFAR,
    )
    .expect("embedded sample")
}

/// Applies a consistent permutation of every feature space (the test's own implementation,
/// independent of the rewriter): rows of writers, columns of readers, BN vectors.
fn permute_state(spec: &MergeSpec, s: &StateDict, perms: &[Vec<usize>]) -> StateDict {
    let mut out = s.clone();
    for l in &spec.layers {
        for suffix in ["weight", "bias", "running_mean", "running_var"] {
            let key = format!("{}.{suffix}", l.name);
            let Some(t) = s.get(&key) else { continue };
            let rows = t.shape[0];
            let row_len = t.data.len() / rows;
            let inner = if t.shape.len() >= 2 { t.shape[1] } else { 1 };
            let spatial = row_len / inner;
            let pout = match l.output {
                Side::Space(i) => Some(&perms[i]),
                _ => None,
            };
            let pin = match (
                l.input,
                t.shape.len() >= 2 && l.kind != LayerKind::BatchNorm,
            ) {
                (Side::Space(i), true) => Some(&perms[i]),
                _ => None,
            };
            let mut d = vec![0.0; t.data.len()];
            for r in 0..rows {
                let src_r = pout.map_or(r, |p| p[r]);
                for c in 0..inner {
                    let src_c = pin.map_or(c, |p| p[c]);
                    for x in 0..spatial {
                        d[(r * inner + c) * spatial + x] =
                            t.data[(src_r * inner + src_c) * spatial + x];
                    }
                }
            }
            out.get_mut(&key).unwrap().data = d;
        }
    }
    out
}

fn manifest(cfg: &NetConfig, classes: Vec<usize>) -> ModelManifest {
    ModelManifest::single(
        cfg,
        classes,
        HeadSpec::Linear,
        vec![],
        serde_json::Value::Null,
    )
}

fn endpoints(cfg: &NetConfig, states: Vec<StateDict>) -> Endpoints {
    let n = states.len();
    Endpoints {
        dirs: vec![Default::default(); n],
        manifests: vec![manifest(cfg, (0..cfg.out).collect()); n],
        states,
        spec: MergeSpec::of(cfg),
    }
}

fn outputs(sys_outputs: Vec<Tensor<2>>) -> Vec<Vec<f32>> {
    sys_outputs
        .into_iter()
        .map(|t| t.into_data().convert::<f32>().try_to_vec::<f32>().unwrap())
        .collect()
}

fn net_out(cfg: &NetConfig, s: &StateDict, x: &Tensor<4>) -> Vec<f32> {
    let net = Net::from_state(cfg, s, &Device::flex()).unwrap();
    net.forward(x.clone(), &mut ForwardCtx::default())
        .into_data()
        .convert::<f32>()
        .try_to_vec::<f32>()
        .unwrap()
}

/// Sets each VGG conv's bias so that its pre-activation has mean `0.5 * std` per channel on the
/// probe images (layer by layer): every unit is active on most inputs, none is dead.
fn vgg_positive_biases(cfg: &NetConfig, s: &mut StateDict, batches: &[Vec<Vec<u8>>]) {
    const OFFSET: f32 = 1000.0;
    let refs: Vec<&[u8]> = batches[0].iter().map(|v| v.as_slice()).collect();
    let x = to_tensor(&refs, zipmerge::data::Preprocess::CIFAR, &Device::flex());
    for k in 0..8 {
        let key = format!(
            "features.{}.bias",
            zipmerge::models::vgg11::VGG11_TORCH_INDEX[k]
        );
        s.get_mut(&key)
            .unwrap()
            .data
            .iter_mut()
            .for_each(|v| *v = OFFSET); // ReLU becomes identity
        let net = Net::from_state(cfg, s, &Device::flex()).unwrap();
        let mut ctx = ForwardCtx::with_taps();
        net.forward(x.clone(), &mut ctx);
        let tap = ctx.taps.unwrap()[k].clone();
        let [b, c, h, w] = tap.dims();
        let v = tap
            .swap_dims(0, 1)
            .reshape([c, b * h * w])
            .into_data()
            .convert::<f32>()
            .try_to_vec::<f32>()
            .unwrap();
        let n = b * h * w;
        let bias = &mut s.get_mut(&key).unwrap().data;
        for ch in 0..c {
            let row = &v[ch * n..(ch + 1) * n];
            let mean = row.iter().map(|x| *x as f64).sum::<f64>() / n as f64;
            let var = row.iter().map(|x| (*x as f64 - mean).powi(2)).sum::<f64>() / n as f64;
            bias[ch] = (-(mean - OFFSET as f64) + 0.5 * var.sqrt()) as f32;
        }
    }
}

struct Case {
    cfg: NetConfig,
    a: StateDict,
    b: StateDict,
    batches: Vec<Vec<Vec<u8>>>,
    x: Tensor<4>,
}

/// A seeded random permutation of every feature space.
fn random_perms(spec: &MergeSpec, seed: u64) -> Vec<Vec<usize>> {
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    spec.spaces
        .iter()
        .map(|s| {
            let mut p: Vec<usize> = (0..s.width).collect();
            p.shuffle(&mut rng);
            p
        })
        .collect()
}

fn permuted_case(arch: Arch, width: usize) -> Case {
    let cfg = NetConfig {
        arch,
        width,
        out: 10,
    };
    let spec = MergeSpec::of(&cfg);
    let prep = cfg.preprocess();
    let set = if prep == zipmerge::data::Preprocess::CIFAR {
        sample()
    } else {
        // ResNet-50: the sample upsampled as ImageNet images are prepared (resize, crop 224)
        ImageSet::load(
            std::path::Path::new("datasets/cifar10-sample/test"),
            "test",
            prep,
        )
        .unwrap()
        .subset(&(0..200).map(|i| i * 5).collect::<Vec<_>>())
    };
    let batches = probe_batches(
        &set,
        &ProbeOptions {
            images: Some(200),
            batch_size: 100,
            augment: false,
            seed: 3,
        },
    );
    let mut a = random_state(&cfg, 11);
    // no dead units: ResNet: re-estimate BN statistics on the probe images, so every BN output
    // has a positive mean (beta > 0) on the data; VGG: data-dependent conv biases.
    if arch != Arch::Vgg11 {
        bn_reset::reset(
            &manifest(&cfg, (0..cfg.out).collect()),
            &mut a,
            &mut [],
            &batches,
            &Runner::cpu(),
            &mut |_| {},
        )
        .unwrap();
    } else {
        vgg_positive_biases(&cfg, &mut a, &batches);
    }
    let b = permute_state(&spec, &a, &random_perms(&spec, 5));
    let imgs: Vec<&[u8]> = (0..16).map(|i| set.image(i * 11)).collect();
    let x = to_tensor(&imgs, prep, &Device::flex());
    Case {
        cfg,
        a,
        b,
        batches,
        x,
    }
}

fn merged_output(
    case: &Case,
    method: &Method,
    eps: f64,
    stop: &str,
    states: Vec<StateDict>,
) -> Vec<Vec<f32>> {
    output_of(case, method, eps, stop, states, &Default::default())
}

/// [`merged_output`] (eps 0) with post-merge corrections run on the probe batches.
fn corrected_output(
    case: &Case,
    method: &Method,
    stop: &str,
    states: Vec<StateDict>,
    c: &zipmerge::correct::Corrections,
) -> Vec<Vec<f32>> {
    output_of(case, method, 0.0, stop, states, c)
}

/// Head outputs on `case.x` of `states` merged by `method` at `stop`, corrected by `c`.
fn output_of(
    case: &Case,
    method: &Method,
    eps: f64,
    stop: &str,
    states: Vec<StateDict>,
    c: &zipmerge::correct::Corrections,
) -> Vec<Vec<f32>> {
    let ep = endpoints(&case.cfg, states);
    let stop = ep.spec.stop(stop).unwrap();
    let device = Runner::cpu();
    let stats = if method.needs_statistics() {
        Some(merge::statistics(&ep, &case.batches, &device, &mut |_| {}).unwrap())
    } else {
        None
    };
    let t = merge::match_spaces(&ep, method, stats.as_ref(), stop.spaces, eps).unwrap();
    let mut m = merge::build(&ep, &t, &stop, serde_json::Value::Null).unwrap();
    if c.any() {
        let r = zipmerge::correct::apply(
            &mut m.zipped.trunk,
            &ep.states,
            &ep.spec,
            &t,
            &stop,
            &case.batches,
            ep.prep(),
            c,
        )
        .unwrap();
        assert_eq!(r.forward_passes, ep.n() + 1);
    }
    let sys = m.system(&device).unwrap();
    outputs(sys.forward_heads(case.x.clone(), &mut ForwardCtx::default()))
}

/// Issue 12: REPAIR and the closed-form refit of an exact merge (Permute of a model with its
/// permuted copy, eps 0) keep the merged model: REPAIR's targets are the merged channels' own
/// statistics (scale 1, shift 0) and the refit's target is reached by the merged layer itself,
/// which the ridge pulls towards. ResNet-20 fully zipped and in a partial zip's trunk, within
/// 1e-6 relative; VGG-11 fully zipped within 2e-6 (its last convs and classifier see fewer
/// probe pixels than twice their unknowns and are not refit); N = 3. The refit of an
/// unaligned W.Avg of ResNet-20 (whose output is far from A's) moves the output towards A's,
/// the average of the two endpoints' outputs that the refit targets at the network output.
#[test]
fn corrections_keep_an_exact_merge() {
    use zipmerge::correct::Corrections;
    let c = |repair: bool, ridge: Option<f64>| Corrections {
        repair,
        refit_ridge: ridge,
    };
    let default = Some(zipmerge::correct::refit::DEFAULT_REFIT_RIDGE);
    let runs: [(Arch, &[&str], Vec<Corrections>, f64); 2] = [
        (
            Arch::Resnet20,
            &["full", "13/20"],
            vec![c(true, None), c(false, Some(0.0)), c(true, default)],
            1e-6,
        ),
        (
            Arch::Vgg11,
            &["full"],
            vec![c(false, Some(0.0)), c(true, default)],
            2e-6,
        ),
    ];
    for (arch, stops, cs, tol) in runs {
        let case = permuted_case(arch, 1);
        let two = || vec![case.a.clone(), case.b.clone()];
        for stop in stops {
            let plain = merged_output(&case, &Method::Permute, 0.0, stop, two());
            for c in &cs {
                let got = corrected_output(&case, &Method::Permute, stop, two(), c);
                for (h, (g, p)) in got.iter().zip(&plain).enumerate() {
                    let e = common::l2_rel(g, p);
                    assert!(e < tol, "{arch} {stop} {c:?} head {h}: relative change {e}");
                }
            }
        }
    }
    let case = permuted_case(Arch::Resnet20, 1);
    let want = net_out(&case.cfg, &case.a, &case.x);
    let two = || vec![case.a.clone(), case.b.clone()];
    let unaligned = merged_output(&case, &Method::WeightAvg, 0.0, "full", two());
    let refit = corrected_output(&case, &Method::WeightAvg, "full", two(), &c(false, default));
    let (e0, e1) = (
        common::l2_rel(&unaligned[0], &want),
        common::l2_rel(&refit[0], &want),
    );
    assert!(
        e1 < e0 / 2.0,
        "refit of W.Avg: relative error {e1}, before {e0}"
    );
    let spec = MergeSpec::of(&case.cfg);
    let c3 = permute_state(&spec, &case.a, &random_perms(&spec, 77));
    let three = vec![case.a.clone(), case.b.clone(), c3];
    let plain = merged_output(&case, &Method::Permute, 0.0, "full", three.clone());
    let got = corrected_output(&case, &Method::Permute, "full", three, &c(true, default));
    let e = common::l2_rel(&got[0], &plain[0]);
    assert!(e < 1e-6, "3 models, REPAIR + refit: relative change {e}");
}

/// Issue 12, dual-space similarity (MuDSC): lambda 0 gives the activation matching's merge and
/// unmerge matrices bit for bit; weight similarity alone (lambda 1) finds the permutation of a
/// permuted copy from its filters (mapped through the matched input spaces), so Permute gives A
/// back; lambda outside [0, 1] and W.Avg with lambda > 0 are refused.
#[test]
fn dual_space_similarity() {
    let case = permuted_case(Arch::Resnet20, 1);
    let ep = endpoints(&case.cfg, vec![case.a.clone(), case.b.clone()]);
    let device = Runner::cpu();
    let stats = merge::statistics(&ep, &case.batches, &device, &mut |_| {}).unwrap();
    let n = ep.spec.spaces.len();
    for method in [
        Method::Permute,
        Method::Zipit {
            alpha: 0.3,
            beta: 0.125,
        },
    ] {
        let act = merge::match_spaces(&ep, &method, Some(&stats), n, 1e-5).unwrap();
        let dual0 = merge::match_spaces_with(&ep, &method, Some(&stats), n, 1e-5, 0.0).unwrap();
        assert_eq!(
            act, dual0,
            "{method:?}: lambda 0 differs from activation matching"
        );
    }
    let t = merge::match_spaces_with(&ep, &Method::Permute, None, n, 0.0, 1.0).unwrap();
    let stop = ep.spec.stop("full").unwrap();
    let m = merge::build(&ep, &t, &stop, serde_json::Value::Null).unwrap();
    let got = outputs(
        m.system(&device)
            .unwrap()
            .forward_heads(case.x.clone(), &mut ForwardCtx::default()),
    );
    let e = common::l2_rel(&got[0], &net_out(&case.cfg, &case.a, &case.x));
    assert!(
        e < 2e-6,
        "weight-only Permute of a permuted copy: relative error {e}"
    );
    for (method, l) in [
        (Method::Permute, 1.5),
        (Method::Permute, -0.1),
        (Method::WeightAvg, 0.5),
    ] {
        let r = merge::match_spaces_with(&ep, &method, Some(&stats), n, 0.0, l);
        assert!(
            matches!(r, Err(zipmerge::error::MergeError::Param { .. })),
            "{method:?} lambda {l}: {r:?}"
        );
    }
}

/// T5: merging a model with a permuted copy of itself reproduces it (permute and zipit within
/// 1e-4 relative at eps = 1e-5 and to float round-off at eps = 0; Git Re-Basin's weight
/// matching, which starts from the identity, to round-off; CCA Merge within 1e-4).
#[test]
fn t5_permuted_copy_is_recovered_resnet20_and_vgg11() {
    for (arch, width) in [(Arch::Resnet20, 1), (Arch::Vgg11, 1)] {
        let case = permuted_case(arch, width);
        let want = net_out(&case.cfg, &case.a, &case.x);
        // sanity: B computes the same function as A (the permutation is consistent)
        assert!(
            common::l2_rel(&net_out(&case.cfg, &case.b, &case.x), &want) < 1e-5,
            "{arch}: permuted copy differs"
        );
        // and averaging A with B unaligned does not (so recovering A is not by chance)
        let unaligned = merged_output(
            &case,
            &Method::WeightAvg,
            0.0,
            "full",
            vec![case.a.clone(), case.b.clone()],
        );
        assert!(
            common::l2_rel(&unaligned[0], &want) > 1e-2,
            "{arch}: W.Avg of the permuted copy already equals A"
        );
        for method in [
            Method::Permute,
            Method::Zipit {
                alpha: 0.3,
                beta: 0.125,
            },
        ] {
            let got = merged_output(
                &case,
                &method,
                1e-5,
                "full",
                vec![case.a.clone(), case.b.clone()],
            );
            let e = common::l2_rel(&got[0], &want);
            assert!(e < 1e-4, "{arch} {method:?} eps 1e-5: relative error {e}");
            let got0 = merged_output(
                &case,
                &method,
                0.0,
                "full",
                vec![case.a.clone(), case.b.clone()],
            );
            let e0 = common::l2_rel(&got0[0], &want);
            assert!(e0 < 2e-6, "{arch} {method:?} eps 0: relative error {e0}");
        }
        // Git Re-Basin's weight matching starts from the identity: recovering A means it found
        // the permutation from the weights alone
        let got = merged_output(
            &case,
            &Method::GitRebasin { seed: 0 },
            0.0,
            "full",
            vec![case.a.clone(), case.b.clone()],
        );
        let e = common::l2_rel(&got[0], &want);
        assert!(e < 2e-6, "{arch} Git Re-Basin: relative error {e}");
        // CCA Merge: the ridge is the same for A and its permuted copy, so the map it finds is
        // the inverse permutation (dense in form, a permutation up to round-off)
        let got = merged_output(
            &case,
            &Method::Cca { reg: 1e-4 },
            0.0,
            "full",
            vec![case.a.clone(), case.b.clone()],
        );
        let e = common::l2_rel(&got[0], &want);
        assert!(e < 1e-4, "{arch} CCA Merge: relative error {e}");
    }
}

/// T5 on torchvision's ResNet-50 (base width 4, 224x224 inputs, all 37 spaces) and ResNet-18
/// (base width 8, all 12 spaces): a permuted copy is recovered by Permute and ZipIt!, fully and
/// when partially zipped at layer2 (both heads equal the endpoint).
#[test]
fn t5_permuted_copy_is_recovered_torchvision_resnets() {
    for (arch, width) in [(Arch::Resnet50, 4), (Arch::Resnet18, 8)] {
        t5_torchvision(arch, width);
    }
}

fn t5_torchvision(arch: Arch, width: usize) {
    let case = permuted_case(arch, width);
    let want = net_out(&case.cfg, &case.a, &case.x);
    assert!(common::l2_rel(&net_out(&case.cfg, &case.b, &case.x), &want) < 1e-5);
    for method in [
        Method::Permute,
        Method::Zipit {
            alpha: 0.3,
            beta: 0.125,
        },
    ] {
        for stop in ["full", "layer2"] {
            let got = merged_output(
                &case,
                &method,
                0.0,
                stop,
                vec![case.a.clone(), case.b.clone()],
            );
            for (h, g) in got.iter().enumerate() {
                let e = common::l2_rel(g, &want);
                println!("{arch} {method:?} stop {stop} head {h}: rel err {e:.2e}");
                assert!(e < 1e-5, "{arch} {method:?} {stop} head {h}: {e}");
            }
        }
    }
}

/// T6/T7: self-merge with every matcher gives the model back; return-a reproduces A.
#[test]
fn t6_t7_self_merge_and_return_a() {
    let case = permuted_case(Arch::Resnet20, 1);
    let want = net_out(&case.cfg, &case.a, &case.x);
    for method in [
        Method::Zipit {
            alpha: 0.3,
            beta: 0.125,
        },
        Method::Permute,
        Method::WeightAvg,
        Method::GitRebasin { seed: 0 },
    ] {
        let got = merged_output(
            &case,
            &method,
            0.0,
            "full",
            vec![case.a.clone(), case.a.clone()],
        );
        let e = common::l2_rel(&got[0], &want);
        assert!(e < 2e-6, "{method:?}: self-merge relative error {e}");
    }
    // return-a (U = [I; 0]) keeps A's features; with separate linear heads (19/20) head A is
    // exactly model A even when B is an unrelated model.
    let other = random_state(&case.cfg, 99);
    let got = merged_output(
        &case,
        &Method::ReturnA,
        0.0,
        "19/20",
        vec![case.a.clone(), other],
    );
    assert!(common::l2_rel(&got[0], &want) < 2e-6);
}

/// T7: weight averaging equals the element-wise average of the weights (times 2/(2+eps)).
#[test]
fn t7_weight_average_is_the_elementwise_mean() {
    let cfg = NetConfig {
        arch: Arch::Vgg11,
        width: 1,
        out: 10,
    };
    let a = random_state(&cfg, 1);
    let b = random_state(&cfg, 2);
    let ep = endpoints(&cfg, vec![a.clone(), b.clone()]);
    let stop = ep.spec.stop("full").unwrap();
    let t = merge::match_spaces(&ep, &Method::WeightAvg, None, stop.spaces, 0.0).unwrap();
    let m = merge::build(&ep, &t, &stop, serde_json::Value::Null).unwrap();
    let mut worst: BTreeMap<String, f32> = BTreeMap::new();
    for (k, ta) in &a {
        let tb = &b[k];
        let tm = &m.zipped.trunk[k];
        let d = ta
            .data
            .iter()
            .zip(&tb.data)
            .zip(&tm.data)
            .map(|((x, y), z)| ((x + y) / 2.0 - z).abs())
            .fold(0.0f32, f32::max);
        worst.insert(k.clone(), d);
    }
    assert!(worst.values().all(|d| *d < 1e-6), "{worst:?}");
}

/// T10: a partial zip of identical models: both heads equal the endpoint.
#[test]
fn t10_partial_zip_of_identical_models_has_equal_heads() {
    let case = permuted_case(Arch::Resnet20, 1);
    let want = net_out(&case.cfg, &case.a, &case.x);
    for stop in ["7/20", "13/20", "19/20"] {
        let got = merged_output(
            &case,
            &Method::Zipit {
                alpha: 0.3,
                beta: 0.125,
            },
            0.0,
            stop,
            vec![case.a.clone(), case.a.clone()],
        );
        assert_eq!(got.len(), 2, "{stop}: two heads");
        for (h, g) in got.iter().enumerate() {
            let e = common::l2_rel(g, &want);
            assert!(e < 2e-6, "{stop} head {h}: relative error {e}");
        }
    }
}

/// Issue 14 item 4: the endpoints' BN reset in one loop over the images gives the same bits as
/// one reset per endpoint, and the Ensemble row built from the endpoint rows' kept outputs
/// equals a fresh ensemble evaluation (the shipped pair, 160 sample images).
#[test]
fn shared_passes_give_the_same_bits() {
    let device = Runner::cpu();
    let data = sample();
    let data = data.subset(&(0..1000).step_by(6).collect::<Vec<_>>());
    let batches = probe_batches(
        &data,
        &ProbeOptions {
            images: Some(96),
            batch_size: 32,
            seed: 3,
            augment: true,
        },
    );
    let dirs =
        ["a", "b"].map(|m| std::path::PathBuf::from(format!("models/cifar10-5+5/resnet20x1-{m}")));
    let mut ep = Endpoints::load(&dirs).unwrap();
    let states = ep.states.clone();
    // one loop for both endpoints
    ep.reset_bn(&batches, &device, &mut |_| {}).unwrap();
    // one reset per endpoint
    for (k, mut s) in states.into_iter().enumerate() {
        let m = ep.manifests[k].clone();
        bn_reset::reset(&m, &mut s, &mut [], &batches, &device, &mut |_| {}).unwrap();
        for (name, t) in &s {
            assert_eq!(t.data, ep.states[k][name].data, "endpoint {k}: {name}");
        }
    }
    // ensemble from kept endpoint outputs == fresh ensemble
    let tasks: Vec<Vec<usize>> = ep
        .manifests
        .iter()
        .map(|m| m.heads[0].classes.clone())
        .collect();
    let exp = zipmerge::experiments::Context::new(&ep, &batches, &data, &tasks, 64, &device, 1e-5);
    let a = exp.endpoint_row(0, "Model A", &mut |_| {}).unwrap();
    exp.endpoint_row(1, "Model B", &mut |_| {}).unwrap();
    let kept = exp.ensemble_row(&mut |_| {}).unwrap();
    let systems: Vec<_> = (0..2)
        .map(|i| {
            let cfg = ep.manifests[i].net_config();
            let net = Net::from_state(&cfg, &ep.states[i], &device).unwrap();
            zipmerge::system::System::single(ep.manifests[i].clone(), net)
        })
        .collect();
    let fresh = zipmerge::eval::runner::evaluate(&systems, &data, &tasks, 64, &device, &mut |_| {});
    assert_eq!(kept.accuracy, fresh);
    let alone =
        zipmerge::eval::runner::evaluate(&systems[..1], &data, &tasks, 64, &device, &mut |_| {});
    assert_eq!(a.accuracy, alone);
    assert_eq!(fresh.images, data.len());
    assert!(
        fresh.joint > 30.0,
        "the shipped ensemble is far above chance: {}",
        fresh.joint
    );
}

/// T12 (measure over batches): with conv1 made to copy input channel `k % 3` into channel `k`
/// (centre tap 1, all else 0), bn1's train-mode batch statistics are those of the normalised
/// pixels, computed here directly from the bytes: per batch the mean and the unbiased variance
/// over (images, y, x), then the unweighted mean over the batches.
#[test]
fn t12_measure_averages_per_batch_statistics() {
    let device = Runner::cpu();
    let cfg = NetConfig {
        arch: Arch::Resnet20,
        width: 1,
        out: 10,
    };
    let mut state = zipmerge::models::init_state(&cfg, 4);
    let w = state.get_mut("conv1.weight").unwrap(); // [16, 3, 3, 3]
    w.data.iter_mut().for_each(|v| *v = 0.0);
    for k in 0..16 {
        w.data[((k * 3 + k % 3) * 3 + 1) * 3 + 1] = 1.0;
    }
    let m = manifest(&cfg, (0..10).collect());
    let sys = zipmerge::system::System::from_parts(&m, &state, &[], &device).unwrap();
    // two batches of 2 and 3 images with seeded pixels
    let mut rng = ChaCha8Rng::seed_from_u64(9);
    let img = |rng: &mut ChaCha8Rng| -> Vec<u8> {
        use rand::Rng;
        (0..32 * 32 * 3).map(|_| rng.gen::<u8>()).collect()
    };
    let batches: Vec<Vec<Vec<u8>>> = vec![
        (0..2).map(|_| img(&mut rng)).collect(),
        (0..3).map(|_| img(&mut rng)).collect(),
    ];
    let stats = zipmerge::collect::bn::measure(&sys, &batches, &device, &mut |_| {});
    let (mean, var) = &stats["trunk:bn1"];
    let prep = zipmerge::data::Preprocess::CIFAR;
    let (pm, ps) = (prep.mean(), prep.std());
    for k in 0..16 {
        let c = k % 3;
        let (mut want_m, mut want_v) = (0.0f64, 0.0f64);
        for b in &batches {
            let xs: Vec<f64> = b
                .iter()
                .flat_map(|im| im.chunks_exact(3).map(move |px| px[c]))
                .map(|p| ((p as f64 / 255.0) - pm[c] as f64) / ps[c] as f64)
                .collect();
            let n = xs.len() as f64;
            let mu = xs.iter().sum::<f64>() / n;
            let v = xs.iter().map(|x| (x - mu).powi(2)).sum::<f64>() / (n - 1.0);
            want_m += mu / batches.len() as f64;
            want_v += v / batches.len() as f64;
        }
        assert!(
            (mean[k] - want_m).abs() < 1e-5,
            "channel {k}: mean {} vs {want_m}",
            mean[k]
        );
        assert!(
            (var[k] - want_v).abs() < 1e-5 * want_v,
            "channel {k}: var {} vs {want_v}",
            var[k]
        );
    }
}

/// N = 3 end to end: A and two differently permuted copies of it. ZipIt! over three models and
/// Permute (every model matched to A) must both give A back, fully zipped, and a partial zip
/// must give three heads equal to A. ZipIt! runs with alpha = 1: with alpha < 1 a merged pair's
/// similarity to the third copy drops to alpha (reference doc §3.1), below the within-model
/// correlations that its budget then lets merge first, so the exact copy is not recovered by
/// design.
#[test]
fn three_models_merge_losslessly() {
    let case = permuted_case(Arch::Resnet20, 1);
    let spec = MergeSpec::of(&case.cfg);
    let c = permute_state(&spec, &case.a, &random_perms(&spec, 77));
    let want = net_out(&case.cfg, &case.a, &case.x);
    assert!(common::l2_rel(&net_out(&case.cfg, &c, &case.x), &want) < 1e-5);
    let three = || vec![case.a.clone(), case.b.clone(), c.clone()];
    for method in [
        Method::Permute,
        Method::Zipit {
            alpha: 1.0,
            beta: 0.125,
        },
    ] {
        let got = merged_output(&case, &method, 0.0, "full", three());
        assert_eq!(got.len(), 1, "{method:?}: a full zip has one head");
        let e = common::l2_rel(&got[0], &want);
        assert!(e < 2e-6, "{method:?}, 3 models: relative error {e}");
        let part = merged_output(&case, &method, 0.0, "7/20", three());
        assert_eq!(
            part.len(),
            3,
            "{method:?}: a partial zip has one head per model"
        );
        for (k, h) in part.iter().enumerate() {
            let e = common::l2_rel(h, &want);
            assert!(e < 2e-6, "{method:?} 7/20, head {k}: relative error {e}");
        }
    }
}

/// Issue 11, item 3: a tensor the merge spec does not cover is refused by name, both by a spec
/// that lost a layer and by a state dict that gained a tensor; every shipped architecture's
/// spec covers its own module tree exactly.
#[test]
fn uncovered_tensors_are_refused_by_name() {
    for cfg in [
        NetConfig {
            arch: Arch::Resnet20,
            width: 1,
            out: 10,
        },
        NetConfig {
            arch: Arch::Vgg11,
            width: 1,
            out: 10,
        },
        NetConfig {
            arch: Arch::Resnet50,
            width: 4,
            out: 10,
        },
    ] {
        let s = random_state(&cfg, 1);
        MergeSpec::of(&cfg).check_covers(s.keys()).unwrap();
    }
    let cfg = NetConfig {
        arch: Arch::Resnet20,
        width: 1,
        out: 10,
    };
    let (a, b) = (random_state(&cfg, 1), random_state(&cfg, 2));
    let mut ep = endpoints(&cfg, vec![a, b]);
    let stop = ep.spec.stop("full").unwrap();
    let t = merge::match_spaces(&ep, &Method::WeightAvg, None, stop.spaces, 0.0).unwrap();
    // the spec forgets layer2.0.bn1
    let full = ep.spec.clone();
    ep.spec.layers.retain(|l| l.name != "layer2.0.bn1");
    let e = merge::build(&ep, &t, &stop, serde_json::Value::Null).unwrap_err();
    let msg = e.to_string();
    assert!(msg.contains("`layer2.0.bn1."), "{msg}");
    assert!(msg.contains("not covered by the merge spec"), "{msg}");
    // a layer listed twice
    ep.spec = full.clone();
    let dup = ep.spec.layers[3].clone();
    ep.spec.layers.push(dup.clone());
    let msg = merge::build(&ep, &t, &stop, serde_json::Value::Null)
        .unwrap_err()
        .to_string();
    assert!(msg.contains(&format!("`{}.weight`", dup.name)), "{msg}");
    // a model with an extra tensor
    ep.spec = full;
    ep.states[1].insert(
        "extra.weight".into(),
        zipmerge::checkpoint::NamedTensor::new(vec![2], vec![0.0, 1.0]),
    );
    let msg = merge::build(&ep, &t, &stop, serde_json::Value::Null)
        .unwrap_err()
        .to_string();
    assert!(msg.contains("`extra.weight`"), "{msg}");
}
