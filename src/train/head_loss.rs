//! The training loss on plain outputs, with its gradient: the head's logits over the task's
//! classes (linear: the outputs themselves; text: `100 * cos(y, T_c)`, reference doc §5.1,
//! §6) and the mean cross-entropy over the batch. The engine training path takes `dL/dy` from
//! here; burn's path builds the same graph from [`HeadSpec::logits`] and `log_softmax`.

use crate::models::head::{HeadSpec, TEXT_TEMPERATURE};

/// Smallest norm a text-head embedding is divided by (as [`HeadSpec::logits`]).
const NORM_FLOOR: f64 = 1e-12;

/// Loss, gradient and predictions of one batch.
#[derive(Clone, Debug)]
pub struct HeadLoss {
    /// Mean cross-entropy over the batch (nats).
    pub loss: f64,
    /// `dL/dy`, `[batch, out]` row-major.
    pub grad: Vec<f32>,
    /// Predicted index into `classes` per image.
    pub predicted: Vec<usize>,
}

/// Mean cross-entropy of the head's logits for outputs `y: [batch, out]` (row-major) against
/// `labels` (index into `classes`, each `< classes.len()`), with `dL/dy`:
/// `dL/dlogits = (softmax - onehot) / batch`; for a text head with `u = y / |y|`,
/// `g = 100 * sum_c dL/dlogit_c T_c` and `dL/dy = (g - (g . u) u) / |y|`.
/// Computed in f64.
///
/// # Panics
/// If `y` is not `labels.len()` rows of the head's output width.
pub fn head_loss(head: &HeadSpec, classes: &[usize], y: &[f32], labels: &[usize]) -> HeadLoss {
    let batch = labels.len();
    let out = head.net_outputs(classes.len());
    assert_eq!(y.len(), batch * out, "head_loss: output size");
    let table: Vec<Vec<f64>> = match head {
        HeadSpec::Linear => Vec::new(),
        HeadSpec::Text {
            embeddings, dim, ..
        } => classes
            .iter()
            .map(|&c| match embeddings.get(c) {
                Some(r) => r.iter().map(|&v| v as f64).collect(),
                None => vec![0.0; *dim],
            })
            .collect(),
    };
    let mut grad = vec![0f32; y.len()];
    let (mut loss, mut predicted) = (0.0, Vec::with_capacity(batch));
    let k = classes.len();
    for (b, &label) in labels.iter().enumerate() {
        let row: Vec<f64> = y[b * out..(b + 1) * out]
            .iter()
            .map(|&v| v as f64)
            .collect();
        let raw = row.iter().map(|v| v * v).sum::<f64>().sqrt();
        let norm = raw.max(NORM_FLOOR);
        let logits: Vec<f64> = if table.is_empty() {
            row.clone()
        } else {
            let t = TEXT_TEMPERATURE as f64;
            table
                .iter()
                .map(|tc| t * tc.iter().zip(&row).map(|(a, b)| a * b).sum::<f64>() / norm)
                .collect()
        };
        let max = logits.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
        let sum: f64 = logits.iter().map(|l| (l - max).exp()).sum();
        let lse = max + sum.ln();
        loss += lse - logits[label];
        predicted.push(crate::eval::argmax(
            &logits.iter().map(|&v| v as f32).collect::<Vec<_>>(),
        ));
        let dl: Vec<f64> = (0..k)
            .map(|c| ((logits[c] - lse).exp() - if c == label { 1.0 } else { 0.0 }) / batch as f64)
            .collect();
        let g_out = &mut grad[b * out..(b + 1) * out];
        if table.is_empty() {
            g_out.iter_mut().zip(&dl).for_each(|(g, d)| *g = *d as f32);
        } else {
            let t = TEXT_TEMPERATURE as f64;
            let mut g = vec![0f64; out];
            for (tc, d) in table.iter().zip(&dl) {
                g.iter_mut().zip(tc).for_each(|(g, v)| *g += t * d * v);
            }
            let gu: f64 = if raw > NORM_FLOOR {
                g.iter().zip(&row).map(|(g, v)| g * v / norm).sum()
            } else {
                0.0 // the norm is the constant floor there
            };
            for ((o, g), v) in g_out.iter_mut().zip(&g).zip(&row) {
                *o = ((g - gu * v / norm) / norm) as f32;
            }
        }
    }
    HeadLoss {
        loss: loss / batch.max(1) as f64,
        grad,
        predicted,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn linear_head_hand_case() {
        // logits (0, ln 3) for label 0: softmax (1/4, 3/4), loss = ln 4, grad (1/4 - 1, 3/4)
        let h = head_loss(&HeadSpec::Linear, &[3, 7], &[0.0, 3f32.ln()], &[0]);
        assert!((h.loss - 4f64.ln()).abs() < 1e-7);
        assert!((h.grad[0] + 0.75).abs() < 1e-7 && (h.grad[1] - 0.75).abs() < 1e-7);
        assert_eq!(h.predicted, vec![1]);
    }

    #[test]
    fn text_head_gradient_matches_finite_differences() {
        let head = HeadSpec::Text {
            dim: 3,
            source: "test".into(),
            embeddings: vec![
                vec![1.0, 0.0, 0.0],
                vec![0.0, 0.6, 0.8],
                vec![0.0, 1.0, 0.0],
            ],
        };
        let classes = [0, 1, 2];
        let y = [0.3f32, -0.2, 0.5, 0.1, 0.4, -0.3];
        let labels = [1, 2];
        let h = head_loss(&head, &classes, &y, &labels);
        for i in 0..y.len() {
            let eps = 1e-3f32;
            let (mut a, mut b) = (y, y);
            a[i] += eps;
            b[i] -= eps;
            let fd = (head_loss(&head, &classes, &a, &labels).loss
                - head_loss(&head, &classes, &b, &labels).loss)
                / (a[i] as f64 - b[i] as f64);
            assert!(
                (fd - h.grad[i] as f64).abs() < 2e-3 * (1.0 + fd.abs()),
                "{i}: fd {fd} vs {}",
                h.grad[i]
            );
        }
    }
}
