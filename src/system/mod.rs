//! A loaded model ready to run: a trunk network plus one or more heads. A single model is a trunk
//! that runs to the output with one head; a partially zipped model (reference doc §1.7) is a
//! zipped trunk up to the stop cut and one network per source model from that cut on. Ensembles
//! are several systems run side by side.

use std::path::Path;

use burn::tensor::{Device, Tensor};

pub mod cpu;
pub mod runner;

use crate::checkpoint::{self, ModelManifest};
use crate::error::ModelError;
use crate::models::head::HeadSpec;
use crate::models::{ForwardCtx, Net, NetConfig};
use crate::state::StateDict;

/// One head: its network (multi-head only), its head kind and its classes.
#[derive(Debug)]
pub struct Head {
    /// The head network (runs cuts `stop_cut..output`), or `None` for a single model.
    pub net: Option<Net>,
    /// Head kind.
    pub spec: HeadSpec,
    /// Classes the head was trained on (linear head output order).
    pub classes: Vec<usize>,
}

/// A loaded model.
#[derive(Debug)]
pub struct System {
    /// Its manifest.
    pub manifest: ModelManifest,
    /// The trunk (the whole network for a single model).
    pub trunk: Net,
    /// Cut where heads start.
    pub stop_cut: usize,
    /// Heads.
    pub heads: Vec<Head>,
}

impl System {
    /// Builds a runnable system from a manifest and in-memory weights (the trunk, and one
    /// state dict per head network of a multi-head model).
    ///
    /// # Errors
    /// [`ModelError::Weights`] when the weights do not fit.
    pub fn from_parts(
        manifest: &ModelManifest,
        trunk: &StateDict,
        heads: &[StateDict],
        device: &Device,
    ) -> Result<System, ModelError> {
        let net = Net::from_state(&manifest.net_config(), trunk, device)?;
        let mut sys = System::single(manifest.clone(), net);
        for (i, h) in sys.heads.iter_mut().enumerate() {
            if let Some(hs) = heads.get(i) {
                *h = Head {
                    net: Some(Net::from_state(&manifest.head_config(i), hs, device)?),
                    spec: h.spec.clone(),
                    classes: h.classes.clone(),
                };
            }
        }
        Ok(sys)
    }

    /// Loads a model folder onto `device`.
    ///
    /// # Errors
    /// [`ModelError`] naming the folder, file or tensor that is missing or does not fit.
    pub fn load(dir: &Path, device: &Device) -> Result<Self, ModelError> {
        let dir = checkpoint::model_dir(dir);
        let manifest = checkpoint::read_manifest(&dir)?;
        let ctx = |e: ModelError, file: &str| match e {
            ModelError::Weights { problem, .. } => ModelError::Weights {
                file: Some(dir.join(file).display().to_string()),
                problem,
            },
            o => o,
        };
        let trunk_state = checkpoint::read_weights(&dir, &manifest.weights)?;
        let trunk = Net::from_state(&manifest.net_config(), &trunk_state, device)
            .map_err(|e| ctx(e, &manifest.weights))?;
        let mut heads = Vec::new();
        for (i, h) in manifest.heads.iter().enumerate() {
            let net = match &h.weights {
                Some(f) => {
                    let s = checkpoint::read_weights(&dir, f)?;
                    Some(
                        Net::from_state(&manifest.head_config(i), &s, device)
                            .map_err(|e| ctx(e, f))?,
                    )
                }
                None => None,
            };
            heads.push(Head {
                net,
                spec: h.head.clone(),
                classes: h.classes.clone(),
            });
        }
        let stop_cut = manifest.stop_cut;
        Ok(Self {
            manifest,
            trunk,
            stop_cut,
            heads,
        })
    }

    /// Builds a single model from its parts (no file involved).
    pub fn single(manifest: ModelManifest, trunk: Net) -> Self {
        let heads = manifest
            .heads
            .iter()
            .map(|h| Head {
                net: None,
                spec: h.head.clone(),
                classes: h.classes.clone(),
            })
            .collect();
        let stop_cut = manifest.stop_cut;
        Self {
            manifest,
            trunk,
            stop_cut,
            heads,
        }
    }

    /// Trunk configuration.
    pub fn config(&self) -> NetConfig {
        self.manifest.net_config()
    }

    /// Final-layer outputs of every head, `x: [batch, 3, 32, 32] -> [batch, out]` per head.
    pub fn forward_heads(&self, x: Tensor<4>, ctx: &mut ForwardCtx) -> Vec<Tensor<2>> {
        let out_cut = self.trunk.output_cut();
        ctx.prefix = "trunk:".into();
        let z = self.trunk.forward_segment(x, 0, self.stop_cut, ctx);
        self.heads
            .iter()
            .enumerate()
            .map(|(i, h)| {
                ctx.prefix = format!("head{i}:");
                let y = match &h.net {
                    Some(n) => n.forward_segment(z.clone(), self.stop_cut, out_cut, ctx),
                    None => z.clone(),
                };
                let [b, o, _, _] = y.dims();
                y.reshape([b, o])
            })
            .collect()
    }

    /// Forward multiply-accumulates per image of the whole system (trunk once, every head).
    pub fn flops(&self) -> u64 {
        let cfg = self.config();
        let out_cut = cfg.output_cut();
        let mut f = cfg.flops_segment(0, self.stop_cut.min(out_cut));
        for (i, h) in self.heads.iter().enumerate() {
            if h.net.is_some() {
                f += self
                    .manifest
                    .head_config(i)
                    .flops_segment(self.stop_cut, out_cut);
            }
        }
        // a single model (stop cut = output cut) counted its output layer in the trunk
        f
    }
}
