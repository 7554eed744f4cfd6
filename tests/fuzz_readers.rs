//! Bounded, seeded fuzzing of every reader that parses untrusted bytes: `manifest.json`
//! (serde + validation), safetensors, `.npy` / JSON matrices, PyTorch pickles (zip and legacy),
//! JPEG/PNG images. Each case mutates a valid seed file (bit flips, byte runs, truncation,
//! insertions, hostile JSON values) and asserts that the reader returns `Ok` or `Err` without
//! panicking, and that every error message is one line. Each reader gets a fixed number of cases
//! and a time cap (whichever comes first), so the test is bounded on a slow CI machine.

use std::panic::{catch_unwind, AssertUnwindSafe};
use std::path::Path;
use std::time::{Duration, Instant};

use zipmerge::checkpoint::safetensors_io;
use zipmerge::state::{NamedTensor, StateDict};

/// xorshift64*: a tiny deterministic generator (no dependency, same cases on every run).
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }
    fn below(&mut self, n: usize) -> usize {
        (self.next() % n.max(1) as u64) as usize
    }
}

/// One random byte-level mutation of `seed`; `hot` limits most edits to the first `hot` bytes
/// (the header of a binary format), where the parser's decisions are made.
fn mutate(seed: &[u8], rng: &mut Rng, hot: usize) -> Vec<u8> {
    let mut b = seed.to_vec();
    let edits = 1 + rng.below(4);
    for _ in 0..edits {
        let span = if rng.below(4) == 0 {
            b.len()
        } else {
            hot.min(b.len())
        };
        let at = rng.below(span.max(1));
        let last = b.len().saturating_sub(1);
        match rng.below(7) {
            0 if !b.is_empty() => b[at.min(last)] ^= 1 << rng.below(8),
            1 if !b.is_empty() => b[at.min(last)] = rng.next() as u8,
            2 => b.truncate(at),
            3 => {
                let run: Vec<u8> = (0..1 + rng.below(16)).map(|_| rng.next() as u8).collect();
                let at = at.min(b.len());
                b.splice(at..at, run);
            }
            4 if !b.is_empty() => {
                let end = (at + 1 + rng.below(32)).min(b.len());
                b.drain(at.min(end)..end);
            }
            5 => {
                // a hostile decimal number where a digit was
                if let Some(p) = b.iter().skip(at).position(u8::is_ascii_digit) {
                    let p = at + p;
                    let n: &[u8] = [
                        &b"18446744073709551615"[..],
                        b"99999999999999999999999",
                        b"1e309",
                        b"-1",
                        b"0",
                        b"1000000000000",
                    ][rng.below(6)];
                    b.splice(p..p + 1, n.iter().copied());
                }
            }
            _ if !b.is_empty() => {
                let v = [0x00, 0xff, b'"', b'[', b'{', b'}', b'\n', b'.', b'/'][rng.below(9)];
                b[at.min(last)] = v;
            }
            _ => {}
        }
    }
    b
}

/// Runs `cases` mutations of `seed` through `read` (at most `cap`), failing on a panic or a
/// multi-line error. Returns (cases run, errors returned).
fn fuzz(
    what: &str,
    seed: &[u8],
    hot: usize,
    cases: usize,
    cap: Duration,
    read: &mut dyn FnMut(&[u8]) -> Result<(), String>,
) -> (usize, usize) {
    let mut rng = Rng(0x9e37_79b9_7f4a_7c15 ^ what.len() as u64);
    let t0 = Instant::now();
    let (mut run, mut errors) = (0, 0);
    while run < cases && t0.elapsed() < cap {
        let input = mutate(seed, &mut rng, hot);
        let r = catch_unwind(AssertUnwindSafe(|| read(&input)));
        match r {
            Ok(Ok(())) => {}
            Ok(Err(msg)) => {
                errors += 1;
                assert!(!msg.trim().is_empty(), "{what} case {run}: empty error");
            }
            Err(_) => {
                let keep = std::env::temp_dir().join(format!("zipmerge-fuzz-{what}-{run}.bin"));
                let _ = std::fs::write(&keep, &input);
                panic!(
                    "{what} case {run}: the reader panicked (input kept in {})",
                    keep.display()
                );
            }
        }
        run += 1;
    }
    eprintln!("{what}: {run} cases, {errors} refused");
    (run, errors)
}

const CAP: Duration = Duration::from_secs(8);

fn fixture(p: &str) -> Vec<u8> {
    std::fs::read(Path::new(env!("CARGO_MANIFEST_DIR")).join(p)).unwrap()
}

#[test]
fn manifest_reader_never_panics() {
    let dir = tempfile::tempdir().unwrap();
    let seed = fixture("models/cifar10-5+5/resnet20x1-a/manifest.json");
    // a shorter seed (two embedding values per row) makes more mutations reach the validation
    let mut v: serde_json::Value = serde_json::from_slice(&seed).unwrap();
    let head = &mut v["heads"][0]["head"];
    head["dim"] = 2.into();
    for row in head["embeddings"].as_array_mut().unwrap() {
        row.as_array_mut().unwrap().truncate(2);
    }
    let small = serde_json::to_vec_pretty(&v).unwrap();
    let path = dir.path().join("manifest.json");
    let (run, errors) = fuzz("manifest", &small, small.len(), 5000, CAP, &mut |b| {
        std::fs::write(&path, b).unwrap();
        zipmerge::checkpoint::read_manifest(dir.path())
            .map(|_| ())
            .map_err(|e| e.to_string())
    });
    assert!(run >= 200 && errors > 0, "{run} cases, {errors} errors");
}

#[test]
fn hostile_manifest_values_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    let seed = fixture("models/cifar10-5+5/resnet20x1-a/manifest.json");
    let base: serde_json::Value = serde_json::from_slice(&seed).unwrap();
    let hostile = [
        ("/width", serde_json::json!(0)),
        ("/width", serde_json::json!(1_000_000_000_000u64)),
        ("/weights", serde_json::json!("../x.safetensors")),
        ("/weights", serde_json::json!("/etc/passwd.safetensors")),
        ("/weights", serde_json::json!(".hidden.safetensors")),
        ("/weights", serde_json::json!("model.bin")),
        ("/heads", serde_json::json!([])),
        ("/heads/0/classes", serde_json::json!([])),
        ("/heads/0/classes", serde_json::json!([0, 0])),
        ("/heads/0/classes", serde_json::json!([0, 99])),
        ("/heads/0/head/dim", serde_json::json!(1_000_000_000_000u64)),
        ("/heads/0/head/dim", serde_json::json!(0)),
        ("/heads/0/head/embeddings", serde_json::json!([[1.0]])),
        ("/heads/0/head/embeddings/0/3", serde_json::json!(1e300)),
        (
            "/heads/0/head/embeddings/0",
            serde_json::json!(vec![0.0; 384]),
        ),
        ("/stop_cut", serde_json::json!(99)),
    ];
    for (ptr, val) in hostile {
        let mut m = base.clone();
        *m.pointer_mut(ptr).unwrap() = val.clone();
        std::fs::write(dir.path().join("manifest.json"), m.to_string()).unwrap();
        let r = catch_unwind(|| zipmerge::checkpoint::read_manifest(dir.path()));
        let e = match r {
            Ok(Err(e)) => e.to_string(),
            Ok(Ok(_)) => panic!("{ptr} = {val} was accepted"),
            Err(_) => panic!("{ptr} = {val}: panic"),
        };
        assert!(
            !e.contains('\n') && e.contains("manifest.json"),
            "{ptr}: {e}"
        );
    }
}

#[test]
fn safetensors_reader_never_panics() {
    let mut st = StateDict::new();
    st.insert(
        "a.weight".into(),
        NamedTensor::new(vec![2, 3], vec![1.0; 6]),
    );
    st.insert("b.bias".into(), NamedTensor::new(vec![4], vec![0.5; 4]));
    let seed = safetensors_io::to_bytes(&st).unwrap();
    let hot = 8 + u64::from_le_bytes(seed[..8].try_into().unwrap()) as usize;
    let (run, errors) = fuzz("safetensors", &seed, hot, 20_000, CAP, &mut |b| {
        safetensors_io::from_bytes(b, "x.safetensors")
            .map(|_| ())
            .map_err(|e| e.to_string())
    });
    assert!(run >= 1000 && errors > 0, "{run} cases, {errors} errors");
}

#[test]
fn matrix_reader_never_panics() {
    let dir = tempfile::tempdir().unwrap();
    let header = "{'descr': '<f8', 'fortran_order': False, 'shape': (2, 2), }";
    let mut npy = b"\x93NUMPY\x01\x00".to_vec();
    let pad = 64 - (10 + header.len() + 1) % 64;
    let h = format!("{header}{}\n", " ".repeat(pad));
    npy.extend_from_slice(&(h.len() as u16).to_le_bytes());
    npy.extend_from_slice(h.as_bytes());
    for v in [1.0f64, 0.5, 0.5, 1.0] {
        npy.extend_from_slice(&v.to_le_bytes());
    }
    let path = dir.path().join("m.npy");
    let ok = |p: &Path| zipmerge::matching::npy::read_matrix(p).map(|_| ());
    std::fs::write(&path, &npy).unwrap();
    ok(&path).unwrap();
    let (run, errors) = fuzz("npy", &npy, 10 + h.len(), 5000, CAP, &mut |b| {
        std::fs::write(&path, b).unwrap();
        ok(&path).map_err(|e| e.to_string())
    });
    assert!(run >= 500 && errors > 0, "{run} cases, {errors} errors");
    let json = b"[[1.0, 0.25], [0.25, 1.0]]";
    fuzz("matrix-json", json, json.len(), 3000, CAP, &mut |b| {
        std::fs::write(&path, b).unwrap();
        ok(&path).map_err(|e| e.to_string())
    });
}

#[test]
fn pytorch_reader_never_panics() {
    let dir = tempfile::tempdir().unwrap();
    for seed in [
        "tests/fixtures/proto4-small.pt",
        "tests/fixtures/legacy-small.pt",
    ] {
        let bytes = fixture(seed);
        let path = dir.path().join("x.pt");
        let (run, errors) = fuzz(seed, &bytes, bytes.len(), 10_000, CAP, &mut |b| {
            std::fs::write(&path, b).unwrap();
            zipmerge::checkpoint::interop::read_checkpoint(&path)
                .map(|_| ())
                .map_err(|e| e.to_string())
        });
        assert!(
            run >= 300 && errors > 0,
            "{seed}: {run} cases, {errors} errors"
        );
    }
}

#[test]
fn image_decoders_never_panic() {
    let jpg = fixture("tests/fixtures/jpeg/0.jpg");
    let (run, _) = fuzz("jpeg", &jpg, jpg.len(), 10_000, CAP, &mut |b| {
        zipmerge::data::imagefolder::decode_bytes(b).map(|_| ())
    });
    assert!(run >= 300);
    let mut png = Vec::new();
    image::RgbImage::from_pixel(8, 8, image::Rgb([9, 8, 7]))
        .write_to(&mut std::io::Cursor::new(&mut png), image::ImageFormat::Png)
        .unwrap();
    fuzz("png", &png, png.len(), 3000, CAP, &mut |b| {
        zipmerge::data::imagefolder::decode_bytes(b).map(|_| ())
    });
}
