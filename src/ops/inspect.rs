//! What a model folder holds, for `zipmerge inspect`: architecture, width, heads, parameter and
//! FLOP counts, feature spaces and valid stops ([`ModelInfo`]).

use std::path::Path;

use serde::Serialize;

use crate::checkpoint;
use crate::error::MergeError;
use crate::models::MergeSpec;
use crate::spec::{Space, Stop};

/// One head of a model.
#[derive(Clone, Debug, Serialize)]
pub struct HeadInfo {
    /// Class ids the head scores.
    pub classes: Vec<usize>,
    /// `linear` or `text`.
    pub kind: &'static str,
}

/// The description of a model folder (`zipmerge inspect --json`; the keys are a stable
/// interface).
#[derive(Clone, Debug, Serialize)]
pub struct ModelInfo {
    /// The folder.
    #[serde(skip)]
    pub dir: String,
    /// Architecture.
    pub arch: crate::models::Arch,
    /// Width (multiplier, or base width for ResNet-50).
    pub width: usize,
    /// Kind of the first head.
    pub head: &'static str,
    /// Every head.
    pub heads: Vec<HeadInfo>,
    /// Stop of a partially zipped model.
    pub stop: Option<String>,
    /// Several heads on a shared trunk.
    pub multi_head: bool,
    /// Learnable parameters of one network.
    pub params_per_network: usize,
    /// Forward MACs per image of the whole system.
    pub flops: u64,
    /// Feature spaces of the merge spec.
    pub spaces: Vec<Space>,
    /// Valid stops.
    pub stops: Vec<Stop>,
    /// Input side, pixels.
    #[serde(skip)]
    pub input_side: usize,
    /// Preprocessing.
    #[serde(skip)]
    pub preprocess: crate::data::Preprocess,
    /// Width as users read it (`x4`, `base width 64`).
    #[serde(skip)]
    pub width_label: String,
}

impl ModelInfo {
    /// Reads the model folder (or manifest path) `model`.
    ///
    /// # Errors
    /// [`MergeError::Checkpoint`] / [`MergeError::Model`] naming the file.
    pub fn of(model: &Path) -> Result<Self, MergeError> {
        let dir = checkpoint::model_dir(model);
        let m = checkpoint::read_manifest(&dir)?;
        let cfg = m.net_config();
        let spec = MergeSpec::of(&cfg);
        let sys = crate::system::System::load(&dir, &burn::tensor::Device::flex())?;
        Ok(Self {
            dir: dir.display().to_string(),
            arch: m.arch,
            width: m.width,
            head: m.heads[0].head.kind(),
            heads: m
                .heads
                .iter()
                .map(|h| HeadInfo {
                    classes: h.classes.clone(),
                    kind: h.head.kind(),
                })
                .collect(),
            stop: m.stop.clone(),
            multi_head: m.is_multi_head(),
            params_per_network: crate::models::param_count(&cfg),
            flops: sys.flops(),
            stops: spec.stops(),
            spaces: spec.spaces,
            input_side: cfg.input_side(),
            preprocess: m.prep(),
            width_label: cfg.width_label(),
        })
    }

    /// The description as text, one fact per line.
    pub fn describe(&self) -> String {
        let mut out = format!(
            "{}: {} {}, {} head(s) ({}), {}\n",
            self.dir,
            self.arch,
            self.width_label,
            self.heads.len(),
            self.head,
            self.stop
                .as_deref()
                .map_or("single model".to_string(), |s| format!("zipped at {s}"))
        );
        for h in &self.heads {
            out += &format!(
                "  head classes {} ({} classes)\n",
                class_ranges(&h.classes),
                h.classes.len()
            );
        }
        out += &format!("  parameters (one network): {}\n", self.params_per_network);
        out += &format!("  preprocessing: {}\n", self.preprocess.describe());
        out += &format!(
            "  forward MACs/image (whole system, counted at the architecture's {0}x{0} input): {1}\n",
            self.input_side, self.flops
        );
        out += "  feature spaces:\n";
        for (i, s) in self.spaces.iter().enumerate() {
            out += &format!(
                "    {i:>2} {:<16} width {:>4}  {:?}{}\n",
                s.name,
                s.width,
                s.kind,
                if s.stop_cut.is_some() { "  (stop)" } else { "" }
            );
        }
        let stops: Vec<String> = self.stops.iter().map(Stop::label).collect();
        out += &format!("  valid stops: {}\n", stops.join(", "));
        out
    }
}

/// `0,1,2,3,7,9,10` -> `0-3,7,9,10` (runs of three or more become ranges).
pub fn class_ranges(c: &[usize]) -> String {
    let mut parts: Vec<String> = Vec::new();
    let mut i = 0;
    while i < c.len() {
        let mut j = i;
        while j + 1 < c.len() && c[j + 1] == c[j] + 1 {
            j += 1;
        }
        parts.push(if j > i + 1 {
            format!("{}-{}", c[i], c[j])
        } else if j == i + 1 {
            format!("{},{}", c[i], c[j])
        } else {
            c[i].to_string()
        });
        i = j + 1;
    }
    parts.join(",")
}

#[cfg(test)]
mod tests {
    use super::class_ranges;

    #[test]
    pub fn class_ranges_compress_runs() {
        assert_eq!(class_ranges(&[0, 1, 2, 3, 7, 9, 10]), "0-3,7,9,10");
        assert_eq!(class_ranges(&[0, 5, 6, 7, 9]), "0,5-7,9");
    }
}
