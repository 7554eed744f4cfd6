//! Matcher benchmark (release build): ZipIt! and Permute on a 1024x1024 correlation matrix
//! (N = 2 models of 512 features) and on 2048x2048. Target: ZipIt! 1024x1024 in < 100 ms.
//! Run with `cargo bench --bench match`.

use std::time::Instant;

use zipmerge::matching::{correlation, Matcher, Permute, SquareMatrix, ZipIt};

fn random_correlation(o: usize, samples: usize, seed: u64) -> SquareMatrix {
    let mut s = seed;
    let mut next = || {
        s = s
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        (s >> 11) as f64 / (1u64 << 53) as f64 - 0.5
    };
    let x: Vec<f64> = (0..o * samples).map(|_| next()).collect();
    let mut c = vec![0.0; o * o];
    for i in 0..o {
        for j in i..o {
            let v = (0..samples)
                .map(|k| x[i * samples + k] * x[j * samples + k])
                .sum::<f64>()
                / samples as f64;
            c[i * o + j] = v;
            c[j * o + i] = v;
        }
    }
    correlation(&SquareMatrix::new(o, c).expect("square"))
}

fn bench(name: &str, m: &dyn Matcher, c: &SquareMatrix, reps: usize) {
    let mut times = Vec::new();
    for _ in 0..reps {
        let t = Instant::now();
        std::hint::black_box(m.solve(c, 2, 1e-5).expect("solve"));
        times.push(t.elapsed().as_secs_f64() * 1e3);
    }
    times.sort_by(f64::total_cmp);
    println!(
        "{name:<28} median {:>8.2} ms  min {:>8.2} ms  ({reps} runs)",
        times[reps / 2],
        times[0]
    );
}

fn main() {
    for o in [1024, 2048] {
        let c = random_correlation(o, 96, 7);
        bench(
            &format!("zipit {o}x{o}"),
            &ZipIt {
                alpha: 0.3,
                beta: 0.125,
            },
            &c,
            7,
        );
        bench(&format!("permute {o}x{o}"), &Permute, &c, 3);
    }
}
