//! The vocabulary of merge specs, below the models that use it: feature spaces, layers and the
//! sides they read and write, stops, and the [`SpecBuilder`] an architecture's module tree
//! drives ([`crate::models::Net::feed_spec`]). Nothing here knows an architecture.

use serde::Serialize;

/// Kind of a feature space.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum SpaceKind {
    /// A residual stream (ResNet stage), written by several layers and read by several.
    Stream,
    /// A space inside a block (ResNet conv1 -> conv2) or between two VGG convs.
    Inner,
}

/// One merge point.
#[derive(Clone, Debug, Serialize)]
pub struct Space {
    /// Readable name, e.g. `layer1.0.inner` or `stream1`.
    pub name: String,
    /// Channels Om of one model.
    pub width: usize,
    /// Stream or inner.
    pub kind: SpaceKind,
    /// The forward cut at which this space's features are complete, when a partial zip may stop
    /// here (ResNet: stage ends only, §1.7; VGG: every point).
    pub stop_cut: Option<usize>,
}

/// Where a layer's input or output lives.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
pub enum Side {
    /// The network input (RGB), never merged.
    Input,
    /// The network output (logits / embedding), never merged.
    Output,
    /// Feature space by index.
    Space(usize),
}

/// The layer group a layer (or one of its tensors, `layer2.0.conv1.weight`) belongs to by its
/// module path, the unit a merge search sets knobs for (Akiba et al. 2024 set them per layer):
/// `layerK` for a ResNet stage (`layerK.*`), `features.<i>` for a VGG layer, `head` for the
/// output layer (`linear`, `fc`, `classifier`), else `stem`.
pub fn layer_group(layer: &str) -> String {
    let mut parts = layer.split('.');
    let first = parts.next().unwrap_or("");
    let stage = first
        .strip_prefix("layer")
        .is_some_and(|d| !d.is_empty() && d.bytes().all(|b| b.is_ascii_digit()));
    if stage {
        return first.into();
    }
    match (first, parts.next()) {
        ("linear" | "fc" | "classifier", _) => "head".into(),
        ("features", Some(i)) => format!("features.{i}"),
        _ => "stem".into(),
    }
}

/// Kind of a parameterised layer.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum LayerKind {
    /// Conv2d, weight `[out, in, kh, kw]`, optional bias.
    Conv,
    /// Linear, weight `[out, in]`, bias.
    Linear,
    /// BatchNorm2d: weight, bias, running_mean, running_var `[C]`, all in `input` space.
    BatchNorm,
}

/// One parameterised layer.
#[derive(Clone, Debug, Serialize)]
pub struct Layer {
    /// PyTorch module name, e.g. `layer2.0.shortcut.0` (tensors are `{name}.weight` etc.).
    pub name: String,
    /// Kind.
    pub kind: LayerKind,
    /// Space of its input channels (BN: its channels).
    pub input: Side,
    /// Space of its output channels (BN: same as input).
    pub output: Side,
    /// Forward segment the layer runs in (it runs between cut `segment` and `segment + 1`).
    pub segment: usize,
    /// Whether it counts in the "layers zipped" figure (conv/linear except ResNet shortcuts).
    pub counted: bool,
}

/// A valid stop point of a partial zip.
#[derive(Clone, Debug, Serialize, PartialEq)]
pub struct Stop {
    /// Name, e.g. `13/20` (layers zipped / total layers).
    pub name: String,
    /// Aliases accepted on the command line (`layer2`, `full`, ...).
    pub aliases: Vec<String>,
    /// Cut where the heads start (`output cut` for a full zip).
    pub cut: usize,
    /// Spaces matched (all spaces with index < this).
    pub spaces: usize,
    /// Layers zipped.
    pub zipped: usize,
    /// Total counted layers.
    pub total: usize,
}

impl Stop {
    /// True for a full zip (no separate heads).
    pub fn is_full(&self) -> bool {
        self.zipped == self.total
    }

    /// The name with its aliases, as help and error messages list stops: `13/20 (layer2)`.
    pub fn label(&self) -> String {
        if self.aliases.is_empty() {
            self.name.clone()
        } else {
            format!("{} ({})", self.name, self.aliases.join(", "))
        }
    }
}

/// One residual block as the spec builder sees it: its projection shortcut (PyTorch field name,
/// output channels), if any, and the widths of its inner spaces.
pub struct BlockDesc {
    /// Field name and output channels of the projection shortcut (`shortcut`, `downsample`).
    pub projection: Option<(&'static str, usize)>,
    /// Widths of the block's inner spaces, in forward order.
    pub inner: Vec<usize>,
}

/// Channels of a BatchNorm (the width of the space it lives in).
pub fn channels(bn: &burn::nn::BatchNorm) -> usize {
    bn.gamma.dims()[0]
}

/// Builds a [`crate::models::MergeSpec`] from an architecture's module tree
/// ([`crate::models::Net::feed_spec`]): spaces in creation order, the layers between
/// them, and the order in which the forward pass taps the spaces (the capture order, which
/// becomes the spaces' order in the spec).
pub struct SpecBuilder {
    pub(crate) spaces: Vec<Space>,
    pub(crate) layers: Vec<Layer>,
    pub(crate) segment: usize,
    pub(crate) capture: Vec<usize>,
}

impl SpecBuilder {
    /// Layers added from now on belong to forward segment `k`.
    pub fn set_segment(&mut self, k: usize) {
        self.segment = k;
    }

    /// Marks space `s` as the stop whose heads start at cut `cut`.
    pub fn set_stop(&mut self, s: usize, cut: usize) {
        self.spaces[s].stop_cut = Some(cut);
    }

    /// Records that the forward pass taps space `s` next.
    pub fn capture(&mut self, s: usize) {
        self.capture.push(s);
    }

    /// A new feature space; returns its creation index.
    pub fn space(&mut self, name: String, width: usize, kind: SpaceKind) -> usize {
        self.spaces.push(Space {
            name,
            width,
            kind,
            stop_cut: None,
        });
        self.spaces.len() - 1
    }
    /// A weight layer (or BN) `name` of kind `kind` reading `input` and writing `output`;
    /// `counted` layers count towards the stop names (`7/20`).
    pub fn layer(
        &mut self,
        name: impl Into<String>,
        kind: LayerKind,
        input: Side,
        output: Side,
        counted: bool,
    ) {
        self.layers.push(Layer {
            name: name.into(),
            kind,
            input,
            output,
            segment: self.segment,
            counted,
        });
    }
    /// A ResNet (reference doc §1.3, §1.5): stem `conv1`/`bn1`, stages of residual blocks
    /// (`layer{s}.{i}`), the final linear `head`. When the first block has an identity shortcut
    /// the stem writes stage 1's stream (`stream1`, ResNet-20); otherwise the stem output is its
    /// own space (`stem`, ResNet-50). Every stage's stream is a stop.
    pub fn resnet(&mut self, stem_width: usize, stages: &[Vec<BlockDesc>], head: &str) {
        let stem_is_stream = stages
            .first()
            .and_then(|s| s.first())
            .is_some_and(|blk| blk.projection.is_none());
        let name = if stem_is_stream { "stream1" } else { "stem" };
        let mut cur = self.space(name.into(), stem_width, SpaceKind::Stream);
        self.layer(
            "conv1",
            LayerKind::Conv,
            Side::Input,
            Side::Space(cur),
            true,
        );
        self.bn("bn1", cur);
        if !stem_is_stream {
            self.capture.push(cur);
        }
        for (s, blocks) in stages.iter().enumerate() {
            self.segment = s;
            for (i, blk) in blocks.iter().enumerate() {
                let projection = blk.projection.map(|(field, w)| (field, s + 1, w));
                let name = format!("layer{}.{i}", s + 1);
                cur = self.residual_block(&name, cur, &blk.inner, projection);
            }
            self.capture.push(cur);
            self.spaces[cur].stop_cut = Some(s + 1);
        }
        self.segment = stages.len();
        self.layer(
            head,
            LayerKind::Linear,
            Side::Space(cur),
            Side::Output,
            true,
        );
    }

    /// One residual block `name` reading space `cur` (reference doc §1.3, §1.5, §1.6):
    /// `{name}.conv{k}` (+ `{name}.bn{k}`) writes inner space k (widths `inner`, captured in
    /// order), the last conv writes the block's output space. With an identity shortcut that is
    /// `cur` itself (the SUM ties input and output); with a projection
    /// `(field, stage, width)` it is a new stream space `stream{stage}`, also written by
    /// `{name}.{field}.0` (+ BN `.1`). Returns the output space.
    fn residual_block(
        &mut self,
        name: &str,
        cur: usize,
        inner: &[usize],
        projection: Option<(&str, usize, usize)>,
    ) -> usize {
        let inner: Vec<usize> = inner
            .iter()
            .enumerate()
            .map(|(k, &w)| {
                let n = if inner.len() == 1 {
                    format!("{name}.inner")
                } else {
                    format!("{name}.inner{}", k + 1)
                };
                self.space(n, w, SpaceKind::Inner)
            })
            .collect();
        let out = match projection {
            Some((field, stage, width)) => {
                let o = self.space(format!("stream{stage}"), width, SpaceKind::Stream);
                self.layer(
                    format!("{name}.{field}.0"),
                    LayerKind::Conv,
                    Side::Space(cur),
                    Side::Space(o),
                    false,
                );
                self.bn(format!("{name}.{field}.1"), o);
                o
            }
            None => cur,
        };
        let chain: Vec<usize> = std::iter::once(cur)
            .chain(inner.iter().copied())
            .chain(std::iter::once(out))
            .collect();
        for (k, w) in chain.windows(2).enumerate() {
            self.layer(
                format!("{name}.conv{}", k + 1),
                LayerKind::Conv,
                Side::Space(w[0]),
                Side::Space(w[1]),
                true,
            );
            self.bn(format!("{name}.bn{}", k + 1), w[1]);
        }
        self.capture.extend(&inner);
        out
    }

    /// A BatchNorm `name` in space `s`.
    pub fn bn(&mut self, name: impl Into<String>, s: usize) {
        self.layer(
            name,
            LayerKind::BatchNorm,
            Side::Space(s),
            Side::Space(s),
            false,
        );
    }
}
