//! Distillation losses, per image averaged over the batch.
//!
//! - Text heads: SAM-CLIP's CLIP distillation loss (Wang et al., 2024, §3.2; reference doc
//!   `merging-methods-reference.md`, SAM-CLIP): the cosine distance `1 - cos(s, t)` between the
//!   student's and the teacher's output embeddings (the head's logits are `100 cos` against
//!   frozen class embeddings, so matching the normalised embedding matches every logit).
//! - Linear heads: knowledge distillation (Hinton et al., 2015): `T^2 KL(softmax(t / T) ||
//!   softmax(s / T))`, the teacher's distribution as the target, scaled by `T^2` so the gradient
//!   size does not depend on the temperature.

use burn::tensor::activation::{log_softmax, softmax};
use burn::tensor::Tensor;

/// Smallest norm a vector is divided by (an all-zero output has cosine 0 to everything).
const EPS: f64 = 1e-12;

/// Mean over the batch of `1 - cos(student_b, teacher_b)`. Shapes `[batch, dim]` both; the
/// result is a one-element tensor, 0 when every pair points the same way, 2 at most.
pub fn cosine_distance(student: Tensor<2>, teacher: Tensor<2>) -> Tensor<1> {
    let unit = |x: Tensor<2>| {
        let n = x.clone().powf_scalar(2.0).sum_dim(1).sqrt().clamp_min(EPS);
        x / n
    };
    let cos = (unit(student) * unit(teacher)).sum_dim(1);
    cos.neg().add_scalar(1.0).mean()
}

/// Mean over the batch of `T^2 sum_c p_c (log p_c - log q_c)` with `p = softmax(teacher / T)`,
/// `q = softmax(student / T)`. Shapes `[batch, classes]` both (the same classes in the same
/// order); one-element result, 0 when the distributions agree.
pub fn kl_temperature(student: Tensor<2>, teacher: Tensor<2>, temperature: f64) -> Tensor<1> {
    let t = temperature;
    let log_q = log_softmax(student / t, 1);
    let log_p = log_softmax(teacher.clone() / t, 1);
    let p = softmax(teacher / t, 1);
    (p * (log_p - log_q)).sum_dim(1).mean() * (t * t)
}

/// Mean over the batch of `T^2 sum_c p_c (log p_c - log q_c)` with the target probabilities `p`
/// given (`[batch, classes]`, rows summing to 1; zeros allowed) and `q = softmax(student / T)`.
pub fn kl_to_probs(student: Tensor<2>, target: Tensor<2>, temperature: f64) -> Tensor<1> {
    let t = temperature;
    let log_q = log_softmax(student / t, 1);
    // p log p with 0 log 0 = 0
    let log_p = target.clone().clamp_min(1e-30).log();
    (target * (log_p - log_q)).sum_dim(1).mean() * (t * t)
}

#[cfg(test)]
mod tests {
    use super::*;
    use burn::tensor::{Device, TensorData};

    fn t2(v: &[f32], cols: usize, d: &Device) -> Tensor<2> {
        Tensor::from_data(TensorData::new(v.to_vec(), [v.len() / cols, cols]), d)
    }

    fn scalar(x: Tensor<1>) -> f64 {
        x.into_data().convert::<f64>().try_to_vec::<f64>().unwrap()[0]
    }

    #[test]
    fn cosine_distance_is_hand_derived() {
        let d = Device::flex();
        // (1, 0) vs (0, 2): cos 0 -> 1; (3, 4) vs (6, 8): cos 1 -> 0; mean 0.5
        let s = t2(&[1.0, 0.0, 3.0, 4.0], 2, &d);
        let t = t2(&[0.0, 2.0, 6.0, 8.0], 2, &d);
        assert!((scalar(cosine_distance(s, t)) - 0.5).abs() < 1e-6);
        // opposite vectors: 2
        let s = t2(&[1.0, 1.0], 2, &d);
        let t = t2(&[-2.0, -2.0], 2, &d);
        assert!((scalar(cosine_distance(s, t)) - 2.0).abs() < 1e-6);
    }

    /// d loss / d student by burn's autodiff against central differences of the loss.
    fn check_gradient(
        f: &dyn Fn(Tensor<2>, Tensor<2>) -> Tensor<1>,
        s: &[f32],
        t: &[f32],
        cols: usize,
    ) {
        let d = Device::flex().autodiff();
        let x = t2(s, cols, &d).require_grad();
        let grads = f(x.clone(), t2(t, cols, &d)).backward();
        let g: Vec<f32> = x
            .grad(&grads)
            .unwrap()
            .into_data()
            .convert::<f32>()
            .try_to_vec::<f32>()
            .unwrap();
        let plain = Device::flex();
        let at = |v: &[f32]| scalar(f(t2(v, cols, &plain), t2(t, cols, &plain)));
        let h = 1e-2f32;
        for k in 0..s.len() {
            let (mut up, mut down) = (s.to_vec(), s.to_vec());
            up[k] += h;
            down[k] -= h;
            let fd = (at(&up) - at(&down)) / (2.0 * h as f64);
            assert!(
                (g[k] as f64 - fd).abs() < 2e-3 * (1.0 + fd.abs()),
                "component {k}: autodiff {} vs finite difference {fd}",
                g[k]
            );
        }
    }

    #[test]
    fn gradients_match_finite_differences() {
        let s = [0.3, -1.2, 0.8, 2.0, 0.1, -0.5];
        let t = [1.0, 0.5, -0.3, -1.0, 0.7, 0.2];
        check_gradient(&|a, b| cosine_distance(a, b), &s, &t, 3);
        check_gradient(&|a, b| kl_temperature(a, b, 2.0), &s, &t, 3);
        check_gradient(&|a, b| kl_temperature(a, b, 0.5), &s, &t, 2);
        // a target of probabilities: (0.5, 0.25, 0.25) per row
        let p = [0.5, 0.25, 0.25, 0.5, 0.25, 0.25];
        check_gradient(
            &|a, _| kl_to_probs(a, t2(&p, 3, &Device::flex().autodiff()), 2.0),
            &s,
            &t,
            3,
        );
    }

    #[test]
    fn kl_to_probs_is_hand_derived_and_skips_zero_targets() {
        let d = Device::flex();
        // p = (1, 0), student (0, 0) at T = 1: KL = 1 ln(1 / 0.5) = ln 2
        let s = t2(&[0.0, 0.0], 2, &d);
        let p = t2(&[1.0, 0.0], 2, &d);
        assert!((scalar(kl_to_probs(s, p, 1.0)) - 2f64.ln()).abs() < 1e-6);
    }

    #[test]
    fn kl_is_hand_derived_and_zero_on_agreement() {
        let d = Device::flex();
        // T = 2: teacher logits (2 ln 3, 0) -> p = (3/4, 1/4); student (0, 0) -> q = (1/2, 1/2)
        // KL = 3/4 ln(3/2) + 1/4 ln(1/2); times T^2 = 4
        let l3 = 3f32.ln();
        let s = t2(&[0.0, 0.0], 2, &d);
        let t = t2(&[2.0 * l3, 0.0], 2, &d);
        let want = 4.0 * (0.75 * 1.5f64.ln() + 0.25 * 0.5f64.ln());
        assert!((scalar(kl_temperature(s, t, 2.0)) - want).abs() < 1e-5);
        let s = t2(&[0.3, -1.0, 2.0], 3, &d);
        assert!(scalar(kl_temperature(s.clone(), s, 4.0)).abs() < 1e-6);
    }
}
