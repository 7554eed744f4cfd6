//! The distillation losses of [`super::loss`] on plain row-major `f32` buffers, each with its
//! gradient with respect to the student's input (hand-derived below; the tests check them
//! against burn's autodiff of [`super::loss`]). The loop computes every loss here, so both
//! training paths (burn's autodiff and the CPU engine) start their backward pass from the same
//! `dL/doutput`.
//!
//! Derivations (rows `n` of a batch of `B`, mean over the batch):
//! - cosine distance `L = 1/B sum_n (1 - u_n . v_n)`, `u = s / |s|`, `v = t / |t|`:
//!   `dL/ds_n = -(v_n - (u_n . v_n) u_n) / (B |s_n|)`;
//! - `L = T^2/B sum_n sum_c p_nc (log p_nc - log q_nc)`, `q = softmax(s / T)`:
//!   `dL/ds_n = T (q_n - p_n) / B` (rows of `p` summing to 1);
//! - text logits `l_q = 100 u . e_q` (`e_q` the class embedding, [`TEXT_TEMPERATURE`]):
//!   with `G = dL/dl`, `dL/dy = (100 G E - (G . l) u) / |y|`.

use crate::models::head::{HeadSpec, NO_LOGIT, TEXT_TEMPERATURE};

/// Smallest norm a vector is divided by, as [`super::loss`].
const EPS: f64 = 1e-12;

/// The L2 norm of each of the `rows` rows of `x` (clamped at [`EPS`]), in `f64`.
fn norms(x: &[f32], dim: usize) -> Vec<f64> {
    x.chunks(dim)
        .map(|r| {
            r.iter()
                .map(|&v| (v as f64) * (v as f64))
                .sum::<f64>()
                .sqrt()
                .max(EPS)
        })
        .collect()
}

/// Mean cosine distance of `student` to `teacher` (both `[rows, dim]`) and its gradient with
/// respect to `student` (`[rows, dim]`); `(0, [])` for no rows.
pub fn cosine_distance(student: &[f32], teacher: &[f32], dim: usize) -> (f64, Vec<f32>) {
    let rows = student.len() / dim.max(1);
    if rows == 0 {
        return (0.0, Vec::new());
    }
    let (ns, nt) = (norms(student, dim), norms(teacher, dim));
    let mut grad = vec![0f32; student.len()];
    let mut loss = 0.0;
    for n in 0..rows {
        let (s, t) = (
            &student[n * dim..(n + 1) * dim],
            &teacher[n * dim..(n + 1) * dim],
        );
        let cos: f64 = s
            .iter()
            .zip(t)
            .map(|(&a, &b)| a as f64 * b as f64)
            .sum::<f64>()
            / (ns[n] * nt[n]);
        loss += 1.0 - cos;
        let scale = -1.0 / (rows as f64 * ns[n]);
        for ((g, &a), &b) in grad[n * dim..(n + 1) * dim].iter_mut().zip(s).zip(t) {
            let (u, v) = (a as f64 / ns[n], b as f64 / nt[n]);
            *g = (scale * (v - cos * u)) as f32;
        }
    }
    (loss / rows as f64, grad)
}

/// Feature reconstruction (FS-Merge's objective, Kinderman et al., TMLR 2025, §3; reference
/// doc `merging-methods-reference.md`): mean over the rows of `|s_n - t_n|^2 / |t_n|^2` (each
/// row one image's features flattened, `dim` values; the teacher's norm makes it scale-free)
/// and its gradient `2 (s_n - t_n) / (B |t_n|^2)` with respect to `student`.
pub fn feature_error(student: &[f32], teacher: &[f32], dim: usize) -> (f64, Vec<f32>) {
    let rows = student.len() / dim.max(1);
    if rows == 0 {
        return (0.0, Vec::new());
    }
    let nt = norms(teacher, dim);
    let mut grad = vec![0f32; student.len()];
    let mut loss = 0.0;
    for (((g, s), t), &norm) in grad
        .chunks_mut(dim)
        .zip(student.chunks(dim))
        .zip(teacher.chunks(dim))
        .zip(&nt)
    {
        let t2 = norm * norm;
        let mut e = 0.0;
        for ((g, &a), &b) in g.iter_mut().zip(s).zip(t) {
            let d = a as f64 - b as f64;
            e += d * d;
            *g = (2.0 * d / (rows as f64 * t2)) as f32;
        }
        loss += e / t2;
    }
    (loss / rows as f64, grad)
}

/// Row-wise softmax of `x / temperature` (`[rows, cols]`), in `f64`.
pub fn softmax(x: &[f32], cols: usize, temperature: f64) -> Vec<f64> {
    let mut out = Vec::with_capacity(x.len());
    for r in x.chunks(cols) {
        let m = r.iter().fold(f32::NEG_INFINITY, |a, &b| a.max(b)) as f64;
        let e: Vec<f64> = r
            .iter()
            .map(|&v| ((v as f64 - m) / temperature).exp())
            .collect();
        let s: f64 = e.iter().sum();
        out.extend(e.iter().map(|v| v / s));
    }
    out
}

/// `T^2` KL of the target distribution `target` (`[rows, cols]`, rows summing to 1, zeros
/// allowed) to `softmax(student / T)`, per row, and the gradient of their mean over the rows
/// with respect to `student`.
pub fn kl_to_probs_rows(
    student: &[f32],
    target: &[f64],
    cols: usize,
    temperature: f64,
) -> (Vec<f64>, Vec<f32>) {
    let q = softmax(student, cols, temperature);
    let cols = cols.max(1);
    let rows = student.len() / cols;
    let t = temperature;
    let mut grad = vec![0f32; student.len()];
    let mut losses = Vec::with_capacity(rows);
    for ((g, q), p) in grad
        .chunks_mut(cols)
        .zip(q.chunks(cols))
        .zip(target.chunks(cols))
    {
        let mut loss = 0.0;
        for ((g, &qi), &p) in g.iter_mut().zip(q).zip(p) {
            if p > 0.0 {
                loss += p * (p.ln() - qi.max(1e-300).ln());
            }
            *g = (t * (qi - p) / rows as f64) as f32;
        }
        losses.push(t * t * loss);
    }
    (losses, grad)
}

/// [`kl_to_probs_rows`] averaged over the rows (0 for none), and its gradient.
pub fn kl_to_probs(
    student: &[f32],
    target: &[f64],
    cols: usize,
    temperature: f64,
) -> (f64, Vec<f32>) {
    let (rows, grad) = kl_to_probs_rows(student, target, cols, temperature);
    (mean(&rows), grad)
}

/// Mean of `v` (0 when empty).
pub fn mean(v: &[f64]) -> f64 {
    v.iter().sum::<f64>() / v.len().max(1) as f64
}

/// `T^2 KL(softmax(teacher / T) || softmax(student / T))` averaged over the rows (both
/// `[rows, cols]` logits) and its gradient with respect to `student`.
pub fn kl_temperature(
    student: &[f32],
    teacher: &[f32],
    cols: usize,
    temperature: f64,
) -> (f64, Vec<f32>) {
    kl_to_probs(
        student,
        &softmax(teacher, cols, temperature),
        cols,
        temperature,
    )
}

/// A head's logits for `query` classes from its final-layer output `y: [rows, dim]` ->
/// `[rows, query.len()]`, as [`HeadSpec::logits`] (linear: the columns of `trained` classes,
/// [`NO_LOGIT`] for others; text: `100 cos(y, T_c)`).
pub fn head_logits(
    head: &HeadSpec,
    y: &[f32],
    dim: usize,
    trained: &[usize],
    query: &[usize],
) -> Vec<f32> {
    let rows = y.len() / dim.max(1);
    let mut out = Vec::with_capacity(rows * query.len());
    match head {
        HeadSpec::Linear => {
            let cols: Vec<Option<usize>> = query
                .iter()
                .map(|c| trained.iter().position(|t| t == c))
                .collect();
            for r in y.chunks(dim) {
                out.extend(cols.iter().map(|c| c.map_or(NO_LOGIT, |i| r[i])));
            }
        }
        HeadSpec::Text { embeddings, .. } => {
            let ny = norms(y, dim);
            for (n, r) in y.chunks(dim).enumerate() {
                for &c in query {
                    let dot: f64 = embeddings.get(c).map_or(0.0, |e| {
                        r.iter().zip(e).map(|(&a, &b)| a as f64 * b as f64).sum()
                    });
                    out.push((TEXT_TEMPERATURE as f64 * dot / ny[n]) as f32);
                }
            }
        }
    }
    out
}

/// Adds to `dy` (`[rows, dim]`) the gradient through [`head_logits`] of `dl = dL/dlogits`
/// (`[rows, query.len()]`), given the logits `l` it returned.
#[allow(clippy::too_many_arguments)]
pub fn head_logits_backward(
    head: &HeadSpec,
    y: &[f32],
    dim: usize,
    trained: &[usize],
    query: &[usize],
    l: &[f32],
    dl: &[f32],
    dy: &mut [f32],
) {
    let q = query.len();
    match head {
        HeadSpec::Linear => {
            for (j, c) in query.iter().enumerate() {
                if let Some(i) = trained.iter().position(|t| t == c) {
                    for n in 0..y.len() / dim.max(1) {
                        dy[n * dim + i] += dl[n * q + j];
                    }
                }
            }
        }
        HeadSpec::Text { embeddings, .. } => {
            let ny = norms(y, dim);
            for (n, r) in y.chunks(dim).enumerate() {
                let g = &dl[n * q..(n + 1) * q];
                let gl: f64 = g
                    .iter()
                    .zip(&l[n * q..(n + 1) * q])
                    .map(|(&a, &b)| a as f64 * b as f64)
                    .sum();
                let mut ge = vec![0f64; dim];
                for (&gj, &c) in g.iter().zip(query) {
                    if let Some(e) = embeddings.get(c) {
                        for (a, &b) in ge.iter_mut().zip(e) {
                            *a += gj as f64 * b as f64;
                        }
                    }
                }
                for ((d, &yi), ge) in dy[n * dim..(n + 1) * dim].iter_mut().zip(r).zip(ge) {
                    let u = yi as f64 / ny[n];
                    *d += ((TEXT_TEMPERATURE as f64 * ge - gl * u) / ny[n]) as f32;
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use burn::tensor::{Device, Tensor, TensorData};

    fn t2(v: &[f32], cols: usize, d: &Device) -> Tensor<2> {
        Tensor::from_data(TensorData::new(v.to_vec(), [v.len() / cols, cols]), d)
    }

    fn vec1(x: Tensor<1>) -> f64 {
        x.into_data().convert::<f64>().try_to_vec::<f64>().unwrap()[0]
    }

    /// The value and gradient of a burn loss by autodiff (an implementation independent of the
    /// hand derivations above).
    fn autodiff(f: &dyn Fn(Tensor<2>) -> Tensor<1>, s: &[f32], cols: usize) -> (f64, Vec<f32>) {
        let d = Device::flex().autodiff();
        let x = t2(s, cols, &d).require_grad();
        let l = f(x.clone());
        let v = vec1(l.clone());
        let g = x.grad(&l.backward()).unwrap();
        (
            v,
            g.into_data().convert::<f32>().try_to_vec::<f32>().unwrap(),
        )
    }

    fn close(a: (f64, Vec<f32>), b: (f64, Vec<f32>)) {
        assert!(
            (a.0 - b.0).abs() < 1e-5 * (1.0 + b.0.abs()),
            "{} vs {}",
            a.0,
            b.0
        );
        for (x, y) in a.1.iter().zip(&b.1) {
            assert!((x - y).abs() < 1e-5 * (1.0 + y.abs()), "{x} vs {y}");
        }
    }

    const S: [f32; 6] = [0.3, -1.2, 0.8, 2.0, 0.1, -0.5];
    const T: [f32; 6] = [1.0, 0.5, -0.3, -1.0, 0.7, 0.2];

    #[test]
    fn losses_and_gradients_match_autodiff() {
        let dev = Device::flex().autodiff();
        close(
            cosine_distance(&S, &T, 3),
            autodiff(
                &|x| super::super::loss::cosine_distance(x, t2(&T, 3, &dev)),
                &S,
                3,
            ),
        );
        for (cols, temp) in [(3, 2.0), (2, 0.5)] {
            close(
                kl_temperature(&S, &T, cols, temp),
                autodiff(
                    &|x| super::super::loss::kl_temperature(x, t2(&T, cols, &dev), temp),
                    &S,
                    cols,
                ),
            );
        }
        let p = [0.5f32, 0.25, 0.25, 1.0, 0.0, 0.0];
        let p64: Vec<f64> = p.iter().map(|&v| v as f64).collect();
        close(
            kl_to_probs(&S, &p64, 3, 2.0),
            autodiff(
                &|x| super::super::loss::kl_to_probs(x, t2(&p, 3, &dev), 2.0),
                &S,
                3,
            ),
        );
    }

    #[test]
    fn text_logits_and_their_gradient_match_autodiff() {
        let head = HeadSpec::Text {
            embeddings: vec![
                vec![0.6, 0.8, 0.0],
                vec![0.0, -1.0, 0.0],
                vec![0.36, 0.48, 0.8],
            ],
            dim: 3,
            source: "test".into(),
        };
        let (trained, query) = ([0usize, 1], [2usize, 0]);
        // a loss through the logits: sum_j w_j l_j
        let w = [0.7f32, -1.3, 0.2, 0.5];
        let l = head_logits(&head, &S, 3, &trained, &query);
        let want = autodiff(
            &|x| {
                let dev = x.device();
                (head.logits(x, &trained, &query) * t2(&w, 2, &dev)).sum()
            },
            &S,
            3,
        );
        let mut dy = vec![0f32; S.len()];
        head_logits_backward(&head, &S, 3, &trained, &query, &l, &w, &mut dy);
        let value: f64 = l.iter().zip(&w).map(|(&a, &b)| a as f64 * b as f64).sum();
        for (a, b) in dy.iter().zip(&want.1) {
            assert!((a - b).abs() < 1e-4 * (1.0 + b.abs()), "{a} vs {b}");
        }
        assert!((value - want.0).abs() < 1e-3);
        // a linear head: columns picked and scattered back
        let lin = head_logits(&HeadSpec::Linear, &S, 3, &[4, 7, 9], &[9, 4, 5]);
        assert_eq!(lin, vec![0.8, 0.3, NO_LOGIT, -0.5, 2.0, NO_LOGIT]);
        let mut dy = vec![0f32; 6];
        let dl = [1.0, 2.0, 3.0, 4.0, 5.0, 6.0];
        head_logits_backward(
            &HeadSpec::Linear,
            &S,
            3,
            &[4, 7, 9],
            &[9, 4, 5],
            &lin,
            &dl,
            &mut dy,
        );
        assert_eq!(dy, vec![2.0, 0.0, 1.0, 5.0, 0.0, 4.0]);
    }

    #[test]
    fn feature_error_gradient_matches_finite_differences() {
        let (_, g) = feature_error(&S, &T, 3);
        let h = 1e-3f32;
        for k in 0..S.len() {
            let (mut up, mut down) = (S.to_vec(), S.to_vec());
            up[k] += h;
            down[k] -= h;
            let fd =
                (feature_error(&up, &T, 3).0 - feature_error(&down, &T, 3).0) / (2.0 * h as f64);
            assert!(
                (g[k] as f64 - fd).abs() < 1e-3 * (1.0 + fd.abs()),
                "{k}: {} vs {fd}",
                g[k]
            );
        }
    }

    #[test]
    fn feature_error_is_hand_derived() {
        // rows (1, 2) vs (1, 0): |d|^2 = 4, |t|^2 = 1 -> 4; (3, 4) vs (3, 4): 0; mean 2
        let (l, g) = feature_error(&[1.0, 2.0, 3.0, 4.0], &[1.0, 0.0, 3.0, 4.0], 2);
        assert!((l - 2.0).abs() < 1e-12);
        // gradient 2 d / (B |t|^2): (0, 2 * 2 / 2) and zeros
        assert_eq!(g, vec![0.0, 2.0, 0.0, 0.0]);
    }

    #[test]
    fn cosine_distance_is_hand_derived() {
        // (1, 0) vs (0, 2): cos 0, loss 1, gradient -(v - 0 u) / (B |s|) = (0, -1) (B = 1)
        let (l, g) = cosine_distance(&[1.0, 0.0], &[0.0, 2.0], 2);
        assert!((l - 1.0).abs() < 1e-12);
        assert_eq!(g, vec![0.0, -1.0]);
    }
}
