//! Which images each distillation batch takes from each teacher's domain (SAM-CLIP §3.1:
//! multi-task distillation with memory replay, every batch mixing the domains).
//!
//! Every batch holds `counts[i]` images of domain `i` (the `--mix` proportions of the batch
//! size, rounded by largest remainder, at least one for a positive share). Each domain is drawn
//! without replacement in a seeded order and reshuffled when used up, so a small domain (a
//! replay memory) is repeated while a large one is still being read.

use rand::seq::SliceRandom;
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;

/// Seeded draw of per-domain batch members.
pub struct Mixer {
    /// Per domain: the positions it draws from (indices of its images).
    pools: Vec<Vec<usize>>,
    /// Per domain: images per batch.
    counts: Vec<usize>,
    /// Per domain: the current shuffled order and the next position in it.
    orders: Vec<(Vec<usize>, usize)>,
    rng: ChaCha8Rng,
}

/// Images per batch of each domain: `mix` (non-negative, not all zero) normalised and scaled to
/// `batch`, rounded by largest remainder, every positive share at least 1. `None` when `batch`
/// cannot give each positive share an image.
pub fn batch_counts(mix: &[f64], batch: usize) -> Option<Vec<usize>> {
    let total: f64 = mix.iter().sum();
    let positive = mix.iter().filter(|m| **m > 0.0).count();
    if total.is_nan() || total <= 0.0 || batch < positive {
        return None;
    }
    let want: Vec<f64> = mix.iter().map(|m| m / total * batch as f64).collect();
    let mut counts: Vec<usize> = want
        .iter()
        .zip(mix)
        .map(|(w, m)| {
            if *m > 0.0 {
                (w.floor() as usize).max(1)
            } else {
                0
            }
        })
        .collect();
    // hand out (or take back) the rest by the largest (smallest) remainder
    let mut order: Vec<usize> = (0..mix.len()).filter(|&i| mix[i] > 0.0).collect();
    order.sort_by(|&a, &b| {
        (want[b] - want[b].floor())
            .total_cmp(&(want[a] - want[a].floor()))
            .then(a.cmp(&b))
    });
    let mut k = 0;
    while counts.iter().sum::<usize>() < batch {
        counts[order[k % order.len()]] += 1;
        k += 1;
    }
    let mut k = order.len();
    while counts.iter().sum::<usize>() > batch {
        k = if k == 0 { order.len() - 1 } else { k - 1 };
        if counts[order[k]] > 1 {
            counts[order[k]] -= 1;
        }
    }
    Some(counts)
}

impl Mixer {
    /// A mixer over `pools` (per domain, the image indices it may draw) with `counts` images
    /// of each per batch ([`batch_counts`]), seeded.
    pub fn new(pools: Vec<Vec<usize>>, counts: Vec<usize>, seed: u64) -> Self {
        let mut rng = ChaCha8Rng::seed_from_u64(seed);
        let orders = pools
            .iter()
            .map(|p| {
                let mut o = p.clone();
                o.shuffle(&mut rng);
                (o, 0)
            })
            .collect();
        Self {
            pools,
            counts,
            orders,
            rng,
        }
    }

    /// Per domain, its images per batch.
    pub fn counts(&self) -> &[usize] {
        &self.counts
    }

    /// Batches in one epoch: all the domains' images once, `ceil(sum |pool| / batch)`.
    pub fn steps_per_epoch(&self) -> usize {
        let n: usize = self.pools.iter().map(Vec::len).sum();
        n.div_ceil(self.counts.iter().sum::<usize>().max(1)).max(1)
    }

    /// The next batch: per domain, the indices of its images.
    pub fn next_batch(&mut self) -> Vec<Vec<usize>> {
        let mut out = Vec::with_capacity(self.pools.len());
        for (d, &count) in self.counts.iter().enumerate() {
            let mut picked = Vec::with_capacity(count);
            while picked.len() < count && !self.pools[d].is_empty() {
                let (order, pos) = &mut self.orders[d];
                if *pos == order.len() {
                    order.shuffle(&mut self.rng);
                    *pos = 0;
                }
                picked.push(order[*pos]);
                *pos += 1;
            }
            out.push(picked);
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_follow_the_mix() {
        assert_eq!(batch_counts(&[1.0, 1.0], 128), Some(vec![64, 64]));
        assert_eq!(batch_counts(&[3.0, 1.0], 10), Some(vec![8, 2]));
        // SAM-CLIP's 2,048 : 32 at batch 130: 128 and 2
        assert_eq!(batch_counts(&[2048.0, 32.0], 130), Some(vec![128, 2]));
        // a tiny share still gets one image
        assert_eq!(batch_counts(&[1000.0, 1.0], 16), Some(vec![15, 1]));
        assert_eq!(batch_counts(&[1.0, 1.0, 1.0], 2), None);
        assert_eq!(batch_counts(&[0.0, 0.0], 8), None);
    }

    #[test]
    fn a_small_domain_is_repeated_and_every_image_comes_once_per_pass() {
        let mut m = Mixer::new(
            vec![(0..100).collect(), (100..103).collect()],
            vec![9, 1],
            5,
        );
        let mut seen_a: Vec<usize> = Vec::new();
        let mut seen_b: Vec<usize> = Vec::new();
        for _ in 0..12 {
            let b = m.next_batch();
            assert_eq!((b[0].len(), b[1].len()), (9, 1));
            seen_a.extend(&b[0]);
            seen_b.extend(&b[1]);
        }
        // the first 99 draws of A are distinct; B cycles through its 3 images 4 times
        let mut first: Vec<usize> = seen_a[..99].to_vec();
        first.sort_unstable();
        first.dedup();
        assert_eq!(first.len(), 99);
        for k in 100..103 {
            assert_eq!(seen_b.iter().filter(|&&x| x == k).count(), 4);
        }
        // seeded
        let mut again = Mixer::new(
            vec![(0..100).collect(), (100..103).collect()],
            vec![9, 1],
            5,
        );
        let mut m2 = Mixer::new(
            vec![(0..100).collect(), (100..103).collect()],
            vec![9, 1],
            6,
        );
        let (x, y) = (again.next_batch(), m2.next_batch());
        assert_eq!(x[0], seen_a[..9].to_vec());
        assert_ne!(x, y);
    }
}
