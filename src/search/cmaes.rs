//! CMA-ES (Hansen, "The CMA Evolution Strategy: A Tutorial", arXiv 1604.00772, and his
//! reference `purecma.py`): a pure ask/tell minimiser over `R^n` with no zipmerge type in it,
//! so the recipe search can drive it and tests can check it on textbook functions.
//!
//! Defaults are the tutorial's (Table 1): population `lambda = 4 + floor(3 ln n)`, parents
//! `mu = floor(lambda / 2)` with log-rank weights, cumulation `cc`, `cs`, rank-one `c1`,
//! rank-mu `cmu`, damping `damps`. The covariance's eigendecomposition is refreshed lazily
//! (every `lambda / (c1 + cmu) / n / 10` evaluations), as `purecma.py` does.
//!
//! Randomness: generation `g`'s samples come from a ChaCha8 stream seeded with `seed` and
//! numbered `g`, so the same seed gives the same search, and a search resumed from its
//! [`Cmaes`] state (serde) continues with the same bits as one never interrupted.

use nalgebra::{DMatrix, DVector, SymmetricEigen};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use serde::{Deserialize, Serialize};

/// Why a search cannot start.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum CmaesError {
    /// No dimension.
    #[error("the search space has no dimension")]
    NoDimension,
    /// A step size that is not a finite number > 0.
    #[error("sigma {0}: expected a finite number > 0")]
    Sigma(f64),
    /// A population below 2 (the update needs at least one parent and one other sample).
    #[error("population {0}: expected at least 2")]
    Population(usize),
    /// A start point with a non-finite coordinate.
    #[error("the start point has a non-finite coordinate")]
    Start,
    /// `tell` got another number of fitness values than `ask` gave samples.
    #[error("tell got {got} fitness values for {asked} samples")]
    Tell {
        /// Values given.
        got: usize,
        /// Samples asked.
        asked: usize,
    },
}

/// The state of one CMA-ES search (serde: written after every generation, read to resume).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Cmaes {
    /// Dimension `n`.
    pub n: usize,
    /// Population `lambda`.
    pub lambda: usize,
    /// Seed of the sample streams.
    pub seed: u64,
    /// Generations told so far.
    pub generation: u64,
    /// Evaluations told so far.
    pub evaluations: u64,
    /// Mean of the search distribution, `[n]`.
    pub mean: Vec<f64>,
    /// Step size.
    pub sigma: f64,
    /// Covariance `[n, n]`, row-major.
    pub cov: Vec<f64>,
    /// Evolution path of the covariance, `[n]`.
    pub pc: Vec<f64>,
    /// Evolution path of the step size, `[n]`.
    pub ps: Vec<f64>,
    /// Best point told so far and its fitness.
    pub best: Option<(Vec<f64>, f64)>,
}

/// The strategy parameters of a dimension and population (tutorial Table 1).
struct Params {
    mu: usize,
    weights: Vec<f64>,
    mueff: f64,
    cc: f64,
    cs: f64,
    c1: f64,
    cmu: f64,
    damps: f64,
    chin: f64,
}

impl Params {
    fn of(n: usize, lambda: usize) -> Self {
        let nf = n as f64;
        let mu = lambda / 2;
        let raw: Vec<f64> = (1..=mu)
            .map(|i| (mu as f64 + 0.5).ln() - (i as f64).ln())
            .collect();
        let sum: f64 = raw.iter().sum();
        let weights: Vec<f64> = raw.iter().map(|w| w / sum).collect();
        let mueff = 1.0 / weights.iter().map(|w| w * w).sum::<f64>();
        let cc = (4.0 + mueff / nf) / (nf + 4.0 + 2.0 * mueff / nf);
        let cs = (mueff + 2.0) / (nf + mueff + 5.0);
        let c1 = 2.0 / ((nf + 1.3).powi(2) + mueff);
        let cmu = (1.0 - c1).min(2.0 * (mueff - 2.0 + 1.0 / mueff) / ((nf + 2.0).powi(2) + mueff));
        let damps = 1.0 + 2.0 * (((mueff - 1.0) / (nf + 1.0)).sqrt() - 1.0).max(0.0) + cs;
        let chin = nf.sqrt() * (1.0 - 1.0 / (4.0 * nf) + 1.0 / (21.0 * nf * nf));
        Self {
            mu,
            weights,
            mueff,
            cc,
            cs,
            c1,
            cmu,
            damps,
            chin,
        }
    }
}

/// The default population of a dimension: `4 + floor(3 ln n)`.
pub fn default_population(n: usize) -> usize {
    4 + (3.0 * (n.max(1) as f64).ln()).floor() as usize
}

impl Cmaes {
    /// A search from `start` with step size `sigma` and population `lambda` (`None`: the
    /// default), seeded by `seed`.
    ///
    /// # Errors
    /// [`CmaesError`] for no dimension, a bad sigma or population, or a non-finite start.
    pub fn new(
        start: &[f64],
        sigma: f64,
        lambda: Option<usize>,
        seed: u64,
    ) -> Result<Self, CmaesError> {
        let n = start.len();
        if n == 0 {
            return Err(CmaesError::NoDimension);
        }
        if !(sigma.is_finite() && sigma > 0.0) {
            return Err(CmaesError::Sigma(sigma));
        }
        if start.iter().any(|v| !v.is_finite()) {
            return Err(CmaesError::Start);
        }
        let lambda = lambda.unwrap_or_else(|| default_population(n));
        if lambda < 2 {
            return Err(CmaesError::Population(lambda));
        }
        let mut cov = vec![0.0; n * n];
        for i in 0..n {
            cov[i * n + i] = 1.0;
        }
        Ok(Self {
            n,
            lambda,
            seed,
            generation: 0,
            evaluations: 0,
            mean: start.to_vec(),
            sigma,
            cov,
            pc: vec![0.0; n],
            ps: vec![0.0; n],
            best: None,
        })
    }

    /// The eigendecomposition `C = B diag(d^2) B^T` of the covariance (symmetrised first).
    fn eigen(&self) -> (DMatrix<f64>, DVector<f64>) {
        let n = self.n;
        let c = DMatrix::from_fn(n, n, |i, j| {
            0.5 * (self.cov[i * n + j] + self.cov[j * n + i])
        });
        let e = SymmetricEigen::new(c);
        let d = e.eigenvalues.map(|v| v.max(1e-300).sqrt());
        (e.eigenvectors, d)
    }

    /// The `lambda` samples of the current generation, `[lambda][n]`:
    /// `mean + sigma * B diag(d) z`, `z ~ N(0, I)` from the generation's stream.
    pub fn ask(&self) -> Vec<Vec<f64>> {
        let (b, d) = self.eigen();
        let mut rng = ChaCha8Rng::seed_from_u64(self.seed);
        rng.set_stream(self.generation);
        (0..self.lambda)
            .map(|_| {
                let z = DVector::from_fn(self.n, |i, _| normal(&mut rng) * d[i]);
                let y = &b * z;
                (0..self.n)
                    .map(|i| self.mean[i] + self.sigma * y[i])
                    .collect()
            })
            .collect()
    }

    /// Updates the distribution from the samples of [`Cmaes::ask`] and their fitness (lower is
    /// better; a non-finite fitness ranks last).
    ///
    /// # Errors
    /// [`CmaesError::Tell`] when the counts differ.
    pub fn tell(&mut self, samples: &[Vec<f64>], fitness: &[f64]) -> Result<(), CmaesError> {
        if samples.len() != self.lambda || fitness.len() != self.lambda {
            return Err(CmaesError::Tell {
                got: fitness.len().min(samples.len()),
                asked: self.lambda,
            });
        }
        let n = self.n;
        let p = Params::of(n, self.lambda);
        let key = |f: f64| if f.is_nan() { f64::INFINITY } else { f };
        let mut order: Vec<usize> = (0..self.lambda).collect();
        order.sort_by(|&a, &b| key(fitness[a]).total_cmp(&key(fitness[b])).then(a.cmp(&b)));
        let top = order[0];
        if self
            .best
            .as_ref()
            .is_none_or(|(_, f)| key(fitness[top]) < *f)
        {
            self.best = Some((samples[top].clone(), key(fitness[top])));
        }
        self.evaluations += self.lambda as u64;
        self.generation += 1;
        let old = self.mean.clone();
        let mut mean = vec![0.0; n];
        for (w, &k) in p.weights.iter().zip(&order[..p.mu]) {
            for i in 0..n {
                mean[i] += w * samples[k][i];
            }
        }
        let y: Vec<f64> = (0..n).map(|i| (mean[i] - old[i]) / self.sigma).collect();
        // C^(-1/2) y through the eigendecomposition of the covariance the samples came from
        let (b, d) = self.eigen();
        let yv = DVector::from_vec(y.clone());
        let mut bt_y = b.transpose() * &yv;
        for i in 0..n {
            bt_y[i] /= d[i];
        }
        let inv_sqrt_c_y = &b * bt_y;
        let a = (p.cs * (2.0 - p.cs) * p.mueff).sqrt();
        for i in 0..n {
            self.ps[i] = (1.0 - p.cs) * self.ps[i] + a * inv_sqrt_c_y[i];
        }
        let ps_norm = self.ps.iter().map(|v| v * v).sum::<f64>().sqrt();
        let g = self.evaluations as f64 / self.lambda as f64;
        let hsig = ps_norm / (1.0 - (1.0 - p.cs).powf(2.0 * g)).sqrt() / p.chin
            < 1.4 + 2.0 / (n as f64 + 1.0);
        let hs = if hsig { 1.0 } else { 0.0 };
        let ac = (p.cc * (2.0 - p.cc) * p.mueff).sqrt();
        for (pc, yi) in self.pc.iter_mut().zip(&y) {
            *pc = (1.0 - p.cc) * *pc + hs * ac * yi;
        }
        let steps: Vec<Vec<f64>> = order[..p.mu]
            .iter()
            .map(|&k| {
                (0..n)
                    .map(|i| (samples[k][i] - old[i]) / self.sigma)
                    .collect()
            })
            .collect();
        let c1a = p.c1 * (1.0 - (1.0 - hs) * p.cc * (2.0 - p.cc));
        for i in 0..n {
            for j in 0..n {
                let rank_mu: f64 = p
                    .weights
                    .iter()
                    .zip(&steps)
                    .map(|(w, s)| w * s[i] * s[j])
                    .sum();
                let c = &mut self.cov[i * n + j];
                *c = (1.0 - c1a - p.cmu) * *c + p.c1 * self.pc[i] * self.pc[j] + p.cmu * rank_mu;
            }
        }
        self.sigma *= ((p.cs / p.damps) * (ps_norm / p.chin - 1.0)).min(1.0).exp();
        self.mean = mean;
        Ok(())
    }
}

/// One standard normal value (Box-Muller on two uniforms in (0, 1]).
fn normal(rng: &mut ChaCha8Rng) -> f64 {
    let u1: f64 = 1.0 - rng.gen::<f64>();
    let u2: f64 = rng.gen::<f64>();
    (-2.0 * u1.ln()).sqrt() * (std::f64::consts::TAU * u2).cos()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Runs a search on `f` for at most `budget` evaluations; returns the best value.
    fn minimise(
        f: &dyn Fn(&[f64]) -> f64,
        start: &[f64],
        sigma: f64,
        budget: u64,
        seed: u64,
    ) -> (f64, Cmaes) {
        let mut es = Cmaes::new(start, sigma, None, seed).unwrap();
        while es.evaluations < budget {
            let xs = es.ask();
            let fs: Vec<f64> = xs.iter().map(|x| f(x)).collect();
            es.tell(&xs, &fs).unwrap();
        }
        (es.best.as_ref().unwrap().1, es)
    }

    /// A sphere centred away from the start: the minimum (0) is found to 1e-10.
    #[test]
    fn finds_the_minimum_of_a_shifted_sphere() {
        let c = [1.5, -2.0, 0.5, 3.0, -1.0];
        let f = |x: &[f64]| x.iter().zip(&c).map(|(a, b)| (a - b).powi(2)).sum::<f64>();
        let (best, es) = minimise(&f, &[0.0; 5], 1.0, 3000, 1);
        assert!(best < 1e-10, "sphere: best {best}");
        for (m, t) in es.mean.iter().zip(&c) {
            assert!((m - t).abs() < 1e-4, "mean {:?}", es.mean);
        }
    }

    /// Rosenbrock in 4 dimensions (minimum 0 at all ones) within 6,000 evaluations.
    #[test]
    fn finds_the_minimum_of_rosenbrock() {
        let f = |x: &[f64]| {
            x.windows(2)
                .map(|w| 100.0 * (w[1] - w[0] * w[0]).powi(2) + (1.0 - w[0]).powi(2))
                .sum::<f64>()
        };
        let (best, _) = minimise(&f, &[0.0; 4], 0.5, 6000, 2);
        assert!(best < 1e-8, "rosenbrock: best {best}");
    }

    /// The same seed gives the same search; a search resumed from its state (through JSON)
    /// continues with the same bits.
    #[test]
    fn same_seed_same_search_and_resume_gives_the_same_bits() {
        let f = |x: &[f64]| x.iter().map(|v| v * v * (1.0 + v.abs())).sum::<f64>();
        let (_, a) = minimise(&f, &[1.0, 2.0, -1.0], 0.3, 300, 7);
        let (_, b) = minimise(&f, &[1.0, 2.0, -1.0], 0.3, 300, 7);
        assert_eq!(a, b);
        let (_, c) = minimise(&f, &[1.0, 2.0, -1.0], 0.3, 300, 8);
        assert_ne!(a, c, "another seed, another search");
        // interrupt after 150 evaluations, write, read, go on
        let (_, half) = minimise(&f, &[1.0, 2.0, -1.0], 0.3, 150, 7);
        let mut resumed: Cmaes =
            serde_json::from_str(&serde_json::to_string(&half).unwrap()).unwrap();
        while resumed.evaluations < 300 {
            let xs = resumed.ask();
            let fs: Vec<f64> = xs.iter().map(|x| f(x)).collect();
            resumed.tell(&xs, &fs).unwrap();
        }
        assert_eq!(resumed, a);
    }

    /// Hand-checked defaults: n = 10 gives lambda 10, mu 5, weights summing to 1.
    #[test]
    fn default_parameters_follow_the_tutorial() {
        assert_eq!(default_population(10), 10);
        assert_eq!(default_population(2), 6);
        let p = Params::of(10, 10);
        assert_eq!(p.mu, 5);
        assert!((p.weights.iter().sum::<f64>() - 1.0).abs() < 1e-12);
        assert!(p.weights.windows(2).all(|w| w[0] > w[1]));
        // mueff of log-rank weights over 5 parents: 1 / sum w^2 = 3.16729928 (by hand, in Python)
        assert!((p.mueff - 3.167_299_281).abs() < 1e-8, "mueff {}", p.mueff);
        assert!(matches!(
            Cmaes::new(&[], 1.0, None, 0),
            Err(CmaesError::NoDimension)
        ));
        assert!(matches!(
            Cmaes::new(&[0.0], 0.0, None, 0),
            Err(CmaesError::Sigma(_))
        ));
        assert!(matches!(
            Cmaes::new(&[0.0], 1.0, Some(1), 0),
            Err(CmaesError::Population(1))
        ));
    }
}
