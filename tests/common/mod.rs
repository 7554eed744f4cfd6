//! Helpers shared by the integration tests.

use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

use zipmerge::checkpoint::StateDict;
use zipmerge::models::{init_state, NetConfig};

/// Random network with no dead units: BN shifts and conv biases positive, running statistics
/// moderate, so every ReLU is active on some inputs.
#[allow(dead_code)] // not every test crate uses every helper
pub fn random_state(cfg: &NetConfig, seed: u64) -> StateDict {
    let mut s = init_state(cfg, seed);
    let mut rng = ChaCha8Rng::seed_from_u64(seed ^ 0xabcdef);
    for (k, t) in s.iter_mut() {
        if k.starts_with("features") && k.ends_with(".weight") {
            // He-scaled weights (std sqrt(2/fan_in)) so activations are not bias-dominated
            t.data.iter_mut().for_each(|v| *v *= 6f32.sqrt());
        } else if k.starts_with("features") && k.ends_with(".bias") {
            t.data
                .iter_mut()
                .for_each(|v| *v = rng.gen_range(0.02..0.1));
        } else if k.ends_with(".bias") && (k.contains("bn") || k.contains("shortcut.1")) {
            t.data.iter_mut().for_each(|v| *v = rng.gen_range(0.1..0.5));
        } else if k.ends_with("running_var") {
            t.data.iter_mut().for_each(|v| *v = rng.gen_range(0.5..2.0));
        } else if k.ends_with("running_mean") {
            t.data
                .iter_mut()
                .for_each(|v| *v = rng.gen_range(-0.2..0.2));
        } else if k.ends_with(".weight") && t.shape.len() == 1 {
            t.data.iter_mut().for_each(|v| *v = rng.gen_range(0.5..1.5));
        }
    }
    s
}

/// Runs the zipmerge binary of this build with `args`, ignoring `ZIPMERGE_DATA`. When the
/// environment has no `XDG_RUNTIME_DIR`, one is given: Mesa's Vulkan drivers (lavapipe, as
/// installed by `.ci/run`) print `error: XDG_RUNTIME_DIR is invalid ...` on stderr without it,
/// which the one-error-line assertions would count.
#[allow(dead_code)] // used by the command-line test crates only
pub fn run<S: AsRef<std::ffi::OsStr>>(args: &[S]) -> std::process::Output {
    let mut cmd = std::process::Command::new(env!("CARGO_BIN_EXE_zipmerge"));
    cmd.args(args).env_remove("ZIPMERGE_DATA");
    if std::env::var_os("XDG_RUNTIME_DIR").is_none() {
        cmd.env("XDG_RUNTIME_DIR", std::env::temp_dir());
    }
    cmd.output().expect("run zipmerge")
}

/// [`run`] that must succeed (else the test fails with its stderr), with its stdout parsed as
/// JSON (for `--json` commands).
#[allow(dead_code)] // used by the command-line test crates only
pub fn run_json(args: &[&str]) -> serde_json::Value {
    let out = run(args);
    assert!(
        out.status.success(),
        "{args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).unwrap()
}

/// A data root at `dir` whose `train/` links to `sample`'s and whose `test/` holds, per class
/// folder of `sample`'s test split, only an unreadable image: any read of the test split fails.
#[allow(dead_code)] // used by the protocol test crates only
pub fn poisoned_root(dir: &std::path::Path, sample: &str) {
    use std::path::Path;
    std::fs::create_dir_all(dir).unwrap();
    let train = std::fs::canonicalize(Path::new(sample).join("train")).unwrap();
    std::os::unix::fs::symlink(train, dir.join("train")).unwrap();
    for c in std::fs::read_dir(Path::new(sample).join("test")).unwrap() {
        let d = dir.join("test").join(c.unwrap().file_name());
        std::fs::create_dir_all(&d).unwrap();
        std::fs::write(d.join("0.jpg"), b"not a jpeg").unwrap();
    }
}

/// Checks `net`'s logits for the PyTorch-layout batch `x` (`[batch, 3, side, side]`, NCHW)
/// against PyTorch's `want`, through burn and through the CPU engine (NHWC input): the largest
/// difference must be below `tol` times the largest `|want|`. Returns the compiled engine.
#[allow(dead_code)] // used by the PyTorch-fixture test crates only
pub fn check_pytorch_logits(
    net: &zipmerge::models::Net,
    x: &[f32],
    (batch, side): (usize, usize),
    want: &[f32],
    tol: f64,
) -> zipmerge::engine::CpuNet {
    use burn::tensor::{Device, Tensor, TensorData};
    let device = Device::flex();
    let xt = Tensor::<4>::from_data(TensorData::new(x.to_vec(), [batch, 3, side, side]), &device);
    let got: Vec<f32> = net
        .forward(xt, &mut zipmerge::models::ForwardCtx::default())
        .into_data()
        .convert::<f32>()
        .try_to_vec::<f32>()
        .unwrap();
    let err = |got: &[f32]| max_rel(got, want);
    println!("burn vs PyTorch: {:.2e} of the largest logit", err(&got));
    assert!(err(&got) < tol, "burn vs PyTorch: {}", err(&got));
    let px = side * side;
    let mut nhwc = vec![0f32; x.len()];
    for n in 0..batch {
        for c in 0..3 {
            for p in 0..px {
                nhwc[(n * px + p) * 3 + c] = x[(n * 3 + c) * px + p];
            }
        }
    }
    let act = zipmerge::engine::Act {
        batch,
        side,
        c: 3,
        data: nhwc,
    };
    let engine = net.compile().unwrap();
    let out = engine.forward(act, &mut zipmerge::engine::EngineCtx::default());
    println!(
        "engine vs PyTorch: {:.2e} of the largest logit",
        err(&out.data)
    );
    assert!(
        err(&out.data) < tol,
        "engine vs PyTorch: {}",
        err(&out.data)
    );
    engine
}

/// The largest absolute difference between `got` and `want`, relative to the largest `|want|`.
#[allow(dead_code)] // not every test crate uses every helper
pub fn max_rel(got: &[f32], want: &[f32]) -> f64 {
    assert_eq!(got.len(), want.len());
    let d = got.iter().zip(want).map(|(x, y)| (x - y).abs() as f64);
    let m = want.iter().map(|v| v.abs() as f64).fold(0.0, f64::max);
    d.fold(0.0, f64::max) / m.max(1e-12)
}

/// The L2 norm of `got - want`, relative to the L2 norm of `want`.
#[allow(dead_code)] // not every test crate uses every helper
pub fn l2_rel(got: &[f32], want: &[f32]) -> f64 {
    assert_eq!(got.len(), want.len());
    let n: f64 = got
        .iter()
        .zip(want)
        .map(|(x, y)| ((x - y) as f64).powi(2))
        .sum();
    let d: f64 = want.iter().map(|y| (*y as f64).powi(2)).sum();
    n.sqrt() / d.sqrt().max(1e-30)
}
