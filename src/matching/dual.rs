//! Dual-space similarity (Xu et al., CVPR 2024, "Training-Free Pretrained Model Merging",
//! MuDSC): the similarity of two features is `(1 - lambda) * activation correlation + lambda *
//! weight similarity`, the cosine of the producing layers' output filters (flattened). Filters
//! of different models are compared in one basis: each filter's input side is first mapped into
//! the merged input space, `W_m U_m` with the unmerge matrix of the (already matched) input
//! space, as the rewriter does (reference doc §4.1); the network input needs no map.
//!
//! Spaces are therefore matched in dependency order ([`order`]): a space whose producers all
//! read matched spaces (or the image) first, else the lowest-numbered space with at least one
//! such producer (a residual stream: its stem conv or projection shortcut); the weight
//! similarity of a space uses the producers whose input is matched at that point.

use crate::matching::{MergeUnmerge, SquareMatrix};
use crate::models::MergeSpec;
use crate::spec::{LayerKind, Side};
use crate::state::StateDict;

/// Producers (conv / linear layers writing space `s`) and whether their input is available
/// (the image, or a space `t` with `matched(t)`).
fn producers(
    spec: &MergeSpec,
    s: usize,
    matched: impl Fn(usize) -> bool,
) -> Vec<(&crate::spec::Layer, bool)> {
    spec.layers
        .iter()
        .filter(|l| l.kind != LayerKind::BatchNorm && l.output == Side::Space(s))
        .map(|l| {
            let ok = match l.input {
                Side::Input => true,
                Side::Space(t) => matched(t),
                Side::Output => false,
            };
            (l, ok)
        })
        .collect()
}

/// The order in which the first `spaces` spaces are matched (see the module doc).
pub fn order(spec: &MergeSpec, spaces: usize) -> Vec<usize> {
    let mut done = vec![false; spec.spaces.len()];
    let mut out = Vec::with_capacity(spaces);
    while out.len() < spaces {
        let pending: Vec<usize> = (0..spaces).filter(|s| !done[*s]).collect();
        let full = pending.iter().copied().find(|&s| {
            let p = producers(spec, s, |t| done[t]);
            !p.is_empty() && p.iter().all(|x| x.1)
        });
        let some = || {
            pending
                .iter()
                .copied()
                .find(|&s| producers(spec, s, |t| done[t]).iter().any(|x| x.1))
        };
        let s = full.or_else(some).unwrap_or(pending[0]);
        done[s] = true;
        out.push(s);
    }
    out
}

/// The weight similarity `[O, O]` (`O = N * Om`, models stacked as in the statistics) of space
/// `s` from the producers whose input is matched in `done`, or `None` when there is none.
/// Each feature's filter (concatenated over those producers, input side mapped by `U_m`) is
/// normalised to unit length; a zero filter has similarity 0 with everything.
pub fn weight_similarity(
    spec: &MergeSpec,
    states: &[StateDict],
    s: usize,
    done: &[Option<MergeUnmerge>],
) -> Option<SquareMatrix> {
    let n = states.len();
    let om = spec.spaces[s].width;
    let layers: Vec<_> = producers(spec, s, |t| done.get(t).is_some_and(Option::is_some))
        .into_iter()
        .filter(|x| x.1)
        .map(|x| x.0)
        .collect();
    if layers.is_empty() {
        return None;
    }
    // per stacked feature: its filter vector
    let mut vecs: Vec<Vec<f64>> = vec![Vec::new(); n * om];
    for l in layers {
        for (m, st) in states.iter().enumerate() {
            let w = st.get(&format!("{}.weight", l.name))?;
            let cin = w.shape.get(1).copied().unwrap_or(1);
            let spatial: usize = w.shape.iter().skip(2).product::<usize>().max(1);
            let u = match l.input {
                Side::Space(t) => done[t].as_ref().map(|mu| (mu.unmerge_block(m, n), mu.k)),
                _ => None,
            };
            for o in 0..om.min(w.shape[0]) {
                let row = &w.data[o * cin * spatial..(o + 1) * cin * spatial];
                let v = &mut vecs[m * om + o];
                match &u {
                    None => v.extend(row.iter().map(|&x| x as f64)),
                    Some((ub, k)) => {
                        // (W U)[o, c, sp] = sum_i W[o, i, sp] U[i, c]
                        let mut t = vec![0f64; k * spatial];
                        for i in 0..cin {
                            for c in 0..*k {
                                let f = ub[i * k + c];
                                if f != 0.0 {
                                    for sp in 0..spatial {
                                        t[c * spatial + sp] += f * row[i * spatial + sp] as f64;
                                    }
                                }
                            }
                        }
                        v.extend(t);
                    }
                }
            }
        }
    }
    for v in vecs.iter_mut() {
        let norm = v.iter().map(|x| x * x).sum::<f64>().sqrt();
        if norm > 0.0 {
            v.iter_mut().for_each(|x| *x /= norm);
        }
    }
    let o = n * om;
    let mut data = vec![0f64; o * o];
    for i in 0..o {
        for j in i..o {
            let d: f64 = vecs[i].iter().zip(&vecs[j]).map(|(a, b)| a * b).sum();
            data[i * o + j] = d;
            data[j * o + i] = d;
        }
    }
    Some(SquareMatrix { n: o, data })
}

/// `(1 - lambda) * corr + lambda * weight` entry by entry.
pub fn blend(corr: &SquareMatrix, weight: &SquareMatrix, lambda: f64) -> SquareMatrix {
    SquareMatrix {
        n: corr.n,
        data: corr
            .data
            .iter()
            .zip(&weight.data)
            .map(|(c, w)| (1.0 - lambda) * c + lambda * w)
            .collect(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::models::{Arch, NetConfig};

    /// ResNet-20's dependency order, derived by hand: stream1 first (its stem conv reads the
    /// image; nothing else is fully available), then the stage-1 inner spaces (their conv1
    /// reads stream1); layer2.0.inner next (its conv1 reads stream1, stride 2), then stream2
    /// (its projection shortcut and layer2.0.conv2 are available), the other stage-2 inner
    /// spaces, and the same for stage 3.
    #[test]
    fn resnet20_order_follows_the_dependencies() {
        let spec = MergeSpec::of(&NetConfig {
            arch: Arch::Resnet20,
            width: 1,
            out: 10,
        });
        let names: Vec<&str> = order(&spec, spec.spaces.len())
            .into_iter()
            .map(|s| spec.spaces[s].name.as_str())
            .collect();
        assert_eq!(
            names,
            [
                "stream1",
                "layer1.0.inner",
                "layer1.1.inner",
                "layer1.2.inner",
                "layer2.0.inner",
                "stream2",
                "layer2.1.inner",
                "layer2.2.inner",
                "layer3.0.inner",
                "stream3",
                "layer3.1.inner",
                "layer3.2.inner"
            ]
        );
    }

    /// Two one-channel-input 1x1 producers with hand-picked filters: model A's features
    /// `[1, 0]`, `[0, 2]`, model B's `[0, 3]`, `[4, 0]`: normalised, A0 = B1 and A1 = B0 in
    /// direction (similarity 1), A0 . A1 = 0.
    #[test]
    fn cosine_of_filters_on_the_image() {
        let spec = MergeSpec {
            net: NetConfig {
                arch: Arch::Vgg11,
                width: 1,
                out: 10,
            },
            spaces: vec![crate::spec::Space {
                name: "s".into(),
                width: 2,
                kind: crate::spec::SpaceKind::Inner,
                stop_cut: None,
            }],
            layers: vec![crate::spec::Layer {
                name: "c".into(),
                kind: LayerKind::Conv,
                input: Side::Input,
                output: Side::Space(0),
                segment: 0,
                counted: true,
            }],
        };
        let st = |w: Vec<f32>| {
            let mut s = StateDict::new();
            s.insert(
                "c.weight".into(),
                crate::state::NamedTensor::new(vec![2, 2, 1, 1], w),
            );
            s
        };
        let states = [st(vec![1.0, 0.0, 0.0, 2.0]), st(vec![0.0, 3.0, 4.0, 0.0])];
        let w = weight_similarity(&spec, &states, 0, &[None]).unwrap();
        let want = [
            [1.0, 0.0, 0.0, 1.0],
            [0.0, 1.0, 1.0, 0.0],
            [0.0, 1.0, 1.0, 0.0],
            [1.0, 0.0, 0.0, 1.0],
        ];
        for (i, row) in want.iter().enumerate() {
            for (j, v) in row.iter().enumerate() {
                assert!((w.get(i, j) - v).abs() < 1e-12, "({i},{j})");
            }
        }
    }
}
