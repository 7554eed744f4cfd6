//! Architectures as data: the feature spaces (merge points) of a network and, for every weight
//! layer and BatchNorm, the space its input lives in and the space its output lives in
//! (reference doc §1.2 "equivalent, simpler model", §1.3-1.4, §10).
//!
//! The table is derived from the module tree, not written by hand: the builder walks the blocks
//! of the live [`Net`] in forward order and ties spaces together exactly as the reference's SUM
//! nodes do (a block with an identity shortcut writes into the space it reads; a block with a
//! conv shortcut opens a new residual-stream space). Spaces are numbered in the order their
//! features are captured by the forward pass (the `taps` of [`crate::models::ForwardCtx`]), which
//! is the reference's node order.

use serde::Serialize;

use super::{Net, NetConfig};
use crate::error::MergeError;
use crate::spec::*;
use crate::state::StateDict;

/// The merge specification of one network.
#[derive(Clone, Debug, Serialize)]
pub struct MergeSpec {
    /// Network shape.
    pub net: NetConfig,
    /// Feature spaces in capture order.
    pub spaces: Vec<Space>,
    /// Parameterised layers in forward order.
    pub layers: Vec<Layer>,
}

/// Derives the merge spec of a live network (its module tree), through its architecture's
/// [`crate::models::Net::feed_spec`].
pub fn spec_of(net: &Net, cfg: &NetConfig) -> MergeSpec {
    let mut b = SpecBuilder {
        spaces: vec![],
        layers: vec![],
        segment: 0,
        capture: vec![],
    };
    net.feed_spec(&mut b);
    let capture = std::mem::take(&mut b.capture);
    // renumber spaces into capture order
    let mut new_index = vec![0; b.spaces.len()];
    for (new, &old) in capture.iter().enumerate() {
        new_index[old] = new;
    }
    let spaces = capture.iter().map(|&old| b.spaces[old].clone()).collect();
    let remap = |s: Side| match s {
        Side::Space(i) => Side::Space(new_index[i]),
        o => o,
    };
    let layers = b
        .layers
        .into_iter()
        .map(|l| Layer {
            input: remap(l.input),
            output: remap(l.output),
            ..l
        })
        .collect();
    MergeSpec {
        net: *cfg,
        spaces,
        layers,
    }
}

impl MergeSpec {
    /// Builds the spec of `cfg` (from an empty module tree).
    pub fn of(cfg: &NetConfig) -> Self {
        spec_of(&Net::empty(cfg, &burn::tensor::Device::flex()), cfg)
    }

    /// The tensor names (`{layer}.weight`, `{layer}.bias`, BN's running statistics) the spec's
    /// layers cover, each with the layer that covers it, in forward order.
    pub fn covered_tensors(&self) -> Vec<(String, &Layer)> {
        let mut out = Vec::new();
        for l in &self.layers {
            let suffixes: &[&str] = match l.kind {
                LayerKind::Conv | LayerKind::Linear => &["weight", "bias"],
                LayerKind::BatchNorm => &["weight", "bias", "running_mean", "running_var"],
            };
            for s in suffixes {
                out.push((format!("{}.{s}", l.name), l));
            }
        }
        out
    }

    /// Checks that the spec covers every tensor of a model's state dict exactly once: a tensor
    /// no layer of the spec names would be copied from model A unmerged, and one named twice
    /// would be rewritten twice (issue 11, item 3). Biases the model lacks are fine.
    ///
    /// # Errors
    /// [`MergeError::Uncovered`] naming the first uncovered tensor, or [`MergeError::Spec`]
    /// naming a tensor two layers claim.
    pub fn check_covers<'a>(
        &self,
        tensors: impl IntoIterator<Item = &'a String>,
    ) -> Result<(), MergeError> {
        let mut seen = std::collections::BTreeMap::new();
        for (name, layer) in self.covered_tensors() {
            if let Some(first) = seen.insert(name.clone(), layer.name.clone()) {
                return Err(MergeError::Spec {
                    arch: self.net.arch.to_string(),
                    msg: format!(
                        "tensor `{name}` is claimed by layers `{first}` and `{}`",
                        layer.name
                    ),
                });
            }
        }
        for t in tensors {
            if !seen.contains_key(t) {
                return Err(MergeError::Uncovered {
                    tensor: t.clone(),
                    arch: self.net.arch.to_string(),
                });
            }
        }
        Ok(())
    }

    /// Checks that the tensors of `state` agree with the spec's space widths: every conv or
    /// linear weight `[out, in, ...]` has as many output channels as the space it writes and
    /// as many input channels as the space it reads, and every BN as many channels as its
    /// space (a spec builder that ties the wrong spaces together is caught at load).
    ///
    /// # Errors
    /// [`MergeError::Spec`] naming the tensor, the space and both widths.
    pub fn check_widths(&self, state: &StateDict) -> Result<(), MergeError> {
        for l in &self.layers {
            let Some(w) = state.get(&format!("{}.weight", l.name)) else {
                continue;
            };
            let dims: Vec<(Side, usize)> = match l.kind {
                LayerKind::BatchNorm => vec![(l.output, w.shape[0])],
                _ if w.shape.len() >= 2 => vec![(l.output, w.shape[0]), (l.input, w.shape[1])],
                _ => vec![],
            };
            for (side, got) in dims {
                if let Side::Space(i) = side {
                    let sp = &self.spaces[i];
                    if sp.width != got {
                        return Err(MergeError::Spec {
                            arch: self.net.arch.to_string(),
                            msg: format!(
                                "tensor `{}.weight` has {got} channels where feature space `{}` has {}",
                                l.name, sp.name, sp.width
                            ),
                        });
                    }
                }
            }
        }
        Ok(())
    }

    /// Checks that the forward pass of `net` taps exactly the spec's spaces: as many taps as
    /// spaces, in the spec's order, each with the space's width (one all-zero image through
    /// the CPU engine's program of `net`, which mirrors its `forward_segment`).
    ///
    /// # Errors
    /// [`MergeError::Spec`] naming the first space whose tap is missing, extra or of another
    /// width.
    pub fn check_taps(&self, net: &Net) -> Result<(), MergeError> {
        use crate::engine::{Act, EngineCtx};
        let cpu = net.compile()?;
        let side = self.net.input_side();
        let x = Act {
            batch: 1,
            side,
            c: 3,
            data: vec![0.0; side * side * 3],
        };
        let mut ctx = EngineCtx {
            taps: Some(Vec::new()),
            ..Default::default()
        };
        cpu.forward(x, &mut ctx);
        let taps = ctx.taps.unwrap_or_default();
        let arch = self.net.arch;
        if taps.len() != self.spaces.len() {
            return Err(MergeError::Spec {
                arch: arch.to_string(),
                msg: format!(
                    "the forward pass taps {} feature spaces, the spec has {}",
                    taps.len(),
                    self.spaces.len()
                ),
            });
        }
        for (t, sp) in taps.iter().zip(&self.spaces) {
            if t.c != sp.width {
                return Err(MergeError::Spec {
                    arch: arch.to_string(),
                    msg: format!(
                        "the forward pass taps {} channels where feature space `{}` has {}",
                        t.c, sp.name, sp.width
                    ),
                });
            }
        }
        Ok(())
    }

    /// Total counted layers (20 for ResNet-20, 9 for VGG-11, 50 for ResNet-50).
    pub fn total_layers(&self) -> usize {
        self.layers.iter().filter(|l| l.counted).count()
    }

    /// Every valid stop point, shallowest first, ending with the full zip.
    pub fn stops(&self) -> Vec<Stop> {
        let total = self.total_layers();
        let out_cut = self.net.output_cut();
        let mut out = Vec::new();
        for (i, s) in self.spaces.iter().enumerate() {
            if let Some(cut) = s.stop_cut {
                let zipped = self
                    .layers
                    .iter()
                    .filter(|l| l.counted && l.segment < cut)
                    .count();
                let mut aliases = vec![];
                if s.kind == SpaceKind::Stream {
                    aliases.push(format!("layer{}", cut));
                }
                out.push(Stop {
                    name: format!("{zipped}/{total}"),
                    aliases,
                    cut,
                    spaces: i + 1,
                    zipped,
                    total,
                });
            }
        }
        out.push(Stop {
            name: format!("{total}/{total}"),
            aliases: vec!["full".into()],
            cut: out_cut,
            spaces: self.spaces.len(),
            zipped: total,
            total,
        });
        out
    }

    /// Finds a stop by name or alias.
    ///
    /// # Errors
    /// [`MergeError::Param`] listing the valid names.
    pub fn stop(&self, name: &str) -> Result<Stop, MergeError> {
        let stops = self.stops();
        stops
            .iter()
            .find(|s| s.name == name || s.aliases.iter().any(|a| a == name))
            .cloned()
            .ok_or_else(|| {
                let valid: Vec<String> = stops.iter().map(Stop::label).collect();
                MergeError::param(
                    crate::error::MergeParam::Stop,
                    name,
                    format!(
                        "not a valid stop for {}; expected one of {}",
                        self.net.arch,
                        valid.join(", ")
                    ),
                )
            })
    }

    /// Layers that read the stop's last space but run after the cut: the head entry layers
    /// (reference doc §1.7).
    pub fn head_entry_layers(&self, stop: &Stop) -> Vec<&Layer> {
        if stop.is_full() {
            return vec![];
        }
        self.layers
            .iter()
            .filter(|l| l.segment >= stop.cut && l.kind != LayerKind::BatchNorm)
            .filter(|l| matches!(l.input, Side::Space(s) if s < stop.spaces))
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::models::Arch;

    fn resnet(w: usize) -> MergeSpec {
        MergeSpec::of(&NetConfig {
            arch: Arch::Resnet20,
            width: w,
            out: 10,
        })
    }

    fn layer<'a>(s: &'a MergeSpec, n: &str) -> &'a Layer {
        s.layers
            .iter()
            .find(|l| l.name == n)
            .unwrap_or_else(|| panic!("{n}"))
    }

    /// T9: the §1.3 membership table for ResNet-20.
    #[test]
    fn t9_resnet20_spaces_match_reference_table() {
        let s = resnet(2);
        let names: Vec<&str> = s.spaces.iter().map(|x| x.name.as_str()).collect();
        assert_eq!(
            names,
            [
                "layer1.0.inner",
                "layer1.1.inner",
                "layer1.2.inner",
                "stream1",
                "layer2.0.inner",
                "layer2.1.inner",
                "layer2.2.inner",
                "stream2",
                "layer3.0.inner",
                "layer3.1.inner",
                "layer3.2.inner",
                "stream3"
            ]
        );
        let widths: Vec<usize> = s.spaces.iter().map(|x| x.width).collect();
        assert_eq!(widths, [32, 32, 32, 32, 64, 64, 64, 64, 128, 128, 128, 128]);
        let sp = |i: usize| Side::Space(i);
        // point 21 (stream1 = space 3): out <- M: stem conv1/bn1, layer1.*.conv2/bn2
        for n in [
            "conv1",
            "layer1.0.conv2",
            "layer1.1.conv2",
            "layer1.2.conv2",
        ] {
            assert_eq!(layer(&s, n).output, sp(3), "{n}");
        }
        for n in ["bn1", "layer1.0.bn2", "layer1.2.bn2"] {
            assert_eq!(layer(&s, n).input, sp(3), "{n}");
        }
        // in <- U: layer1.*.conv1, layer2.0.conv1, layer2.0.shortcut.0
        for n in [
            "layer1.0.conv1",
            "layer1.1.conv1",
            "layer1.2.conv1",
            "layer2.0.conv1",
            "layer2.0.shortcut.0",
        ] {
            assert_eq!(layer(&s, n).input, sp(3), "{n}");
        }
        // point 42 (stream2 = space 7)
        for n in [
            "layer2.0.shortcut.0",
            "layer2.0.conv2",
            "layer2.1.conv2",
            "layer2.2.conv2",
        ] {
            assert_eq!(layer(&s, n).output, sp(7), "{n}");
        }
        assert_eq!(layer(&s, "layer2.0.shortcut.1").input, sp(7));
        for n in [
            "layer2.1.conv1",
            "layer2.2.conv1",
            "layer3.0.conv1",
            "layer3.0.shortcut.0",
        ] {
            assert_eq!(layer(&s, n).input, sp(7), "{n}");
        }
        // point 63 (stream3 = space 11)
        for n in [
            "layer3.0.shortcut.0",
            "layer3.0.conv2",
            "layer3.1.conv2",
            "layer3.2.conv2",
        ] {
            assert_eq!(layer(&s, n).output, sp(11), "{n}");
        }
        for n in ["layer3.1.conv1", "layer3.2.conv1", "linear"] {
            assert_eq!(layer(&s, n).input, sp(11), "{n}");
        }
        // inner points: out <- M conv1/bn1, in <- U conv2
        assert_eq!(layer(&s, "layer2.1.conv1").output, sp(5));
        assert_eq!(layer(&s, "layer2.1.bn1").input, sp(5));
        assert_eq!(layer(&s, "layer2.1.conv2").input, sp(5));
        // after a full zip every conv has its output merged once and input unmerged once,
        // except the stem (output only) and the linear (input only)
        assert_eq!(layer(&s, "conv1").input, Side::Input);
        assert_eq!(layer(&s, "linear").output, Side::Output);
        assert_eq!(s.total_layers(), 20);
    }

    /// The forward pass's taps are checked against the spec at load (count and widths).
    #[test]
    fn taps_are_checked_against_the_spec() {
        use crate::models::{Net, NetConfig};
        let device = burn::tensor::Device::flex();
        for (arch, w) in [(Arch::Resnet20, 1), (Arch::Vgg11, 1), (Arch::Resnet18, 2)] {
            let cfg = NetConfig {
                arch,
                width: w,
                out: 4,
            };
            let net = Net::empty(&cfg, &device);
            MergeSpec::of(&cfg).check_taps(&net).unwrap();
            // a spec of another width: the first space's width differs from the tap's
            let wide = NetConfig {
                width: 2 * w,
                ..cfg
            };
            let e = MergeSpec::of(&wide)
                .check_taps(&net)
                .unwrap_err()
                .to_string();
            assert!(e.contains("taps") && e.contains("channels"), "{e}");
        }
    }

    /// T9: stops and head entry layers (§1.7 tables).
    #[test]
    fn t9_resnet20_stops_and_head_entries() {
        let s = resnet(1);
        let names: Vec<String> = s.stops().iter().map(|x| x.name.clone()).collect();
        assert_eq!(names, ["7/20", "13/20", "19/20", "20/20"]);
        let entries = |n: &str| -> Vec<String> {
            let st = s.stop(n).unwrap();
            s.head_entry_layers(&st)
                .iter()
                .map(|l| l.name.clone())
                .collect()
        };
        assert_eq!(entries("7/20"), ["layer2.0.shortcut.0", "layer2.0.conv1"]);
        assert_eq!(entries("layer2"), ["layer3.0.shortcut.0", "layer3.0.conv1"]);
        assert_eq!(entries("19/20"), ["linear"]);
        assert!(entries("full").is_empty());
        assert!(s
            .stop("26")
            .unwrap_err()
            .to_string()
            .contains("7/20 (layer1)"));
    }

    /// §1.5: ResNet-50 has 37 merge points (stem, 2 per Bottleneck, 4 stage streams); stops after
    /// layer1..4 zip 10 / 22 / 40 / 49 convs (downsample convs not counted).
    #[test]
    fn resnet50_spaces_and_stops_match_reference() {
        let s = MergeSpec::of(&NetConfig {
            arch: Arch::Resnet50,
            width: 64,
            out: 1000,
        });
        assert_eq!(s.spaces.len(), 37);
        assert_eq!(s.spaces[0].name, "stem");
        assert_eq!(s.spaces[0].width, 64);
        let streams: Vec<(usize, &str, usize)> = s
            .spaces
            .iter()
            .enumerate()
            .filter(|(_, x)| x.stop_cut.is_some())
            .map(|(i, x)| (i, x.name.as_str(), x.width))
            .collect();
        assert_eq!(
            streams,
            [
                (7, "stream1", 256),
                (16, "stream2", 512),
                (29, "stream3", 1024),
                (36, "stream4", 2048)
            ]
        );
        let zipped: Vec<usize> = s.stops().iter().map(|x| x.zipped).collect();
        assert_eq!(zipped, [10, 22, 40, 49, 50]);
        assert_eq!(s.stop("layer2").unwrap().name, "22/50");
        // stem space: written by conv1/bn1, read by layer1.0.conv1 and layer1.0.downsample.0
        assert_eq!(layer(&s, "conv1").output, Side::Space(0));
        assert_eq!(layer(&s, "layer1.0.conv1").input, Side::Space(0));
        assert_eq!(layer(&s, "layer1.0.downsample.0").input, Side::Space(0));
        // layer1's stream: downsample and every conv3 write it; layer1.{1,2}.conv1 read it
        for n in [
            "layer1.0.downsample.0",
            "layer1.0.conv3",
            "layer1.1.conv3",
            "layer1.2.conv3",
        ] {
            assert_eq!(layer(&s, n).output, Side::Space(7), "{n}");
        }
        assert_eq!(layer(&s, "layer1.2.conv1").input, Side::Space(7));
        assert_eq!(layer(&s, "layer1.0.bn3").input, Side::Space(7));
        // inner spaces of layer2.1: conv1 -> 10 -> conv2 -> 11 -> conv3
        assert_eq!(layer(&s, "layer2.1.conv1").output, Side::Space(10));
        assert_eq!(layer(&s, "layer2.1.conv2").input, Side::Space(10));
        assert_eq!(layer(&s, "layer2.1.conv3").input, Side::Space(11));
        assert_eq!(layer(&s, "fc").input, Side::Space(36));
        let entries = |n: &str| -> Vec<String> {
            let st = s.stop(n).unwrap();
            s.head_entry_layers(&st)
                .iter()
                .map(|l| l.name.clone())
                .collect()
        };
        assert_eq!(
            entries("layer1"),
            ["layer2.0.downsample.0", "layer2.0.conv1"]
        );
        assert_eq!(entries("49/50"), ["fc"]);
    }

    #[test]
    fn vgg11_has_eight_spaces_and_every_point_is_a_stop() {
        let s = MergeSpec::of(&NetConfig {
            arch: Arch::Vgg11,
            width: 1,
            out: 10,
        });
        assert_eq!(s.spaces.len(), 8);
        assert_eq!(s.total_layers(), 9);
        let stops = s.stops();
        assert_eq!(stops.len(), 9);
        assert_eq!(stops[0].name, "1/9");
        let st = s.stop("3/9").unwrap();
        let e: Vec<&str> = s
            .head_entry_layers(&st)
            .iter()
            .map(|l| l.name.as_str())
            .collect();
        assert_eq!(e, ["features.8"]);
        let last = s.stop("8/9").unwrap();
        let e: Vec<&str> = s
            .head_entry_layers(&last)
            .iter()
            .map(|l| l.name.as_str())
            .collect();
        assert_eq!(e, ["classifier"]);
    }
}
