//! `zipmerge bn-reset`: re-estimate BatchNorm running statistics of any model.

use std::path::PathBuf;

use anyhow::Result;
use clap::Args;

use zipmerge::checkpoint::{self, StateDict};
use zipmerge::collect::{probe_batches, ProbeOptions};
use zipmerge::rewrite::bn_reset;

use zipmerge::progress::phase;

use super::common::{data_root, load_split, positive, usage, BackendArgs};
use super::printer::Printer;

/// Arguments of `zipmerge bn-reset`.
#[derive(Args, Debug)]
pub struct BnResetArgs {
    /// Model folder.
    #[arg(long)]
    pub model: PathBuf,
    /// Data root whose train/ folder gives the images (augmented); default $ZIPMERGE_DATA, else
    /// the embedded sample.
    #[arg(long)]
    pub data: Option<PathBuf>,
    /// Images to use (`all` = every image).
    #[arg(long, default_value = "1000")]
    pub images: String,
    /// Batch size.
    #[arg(long, default_value_t = 500, value_parser = positive)]
    pub batch_size: usize,
    /// Seed of the subset and augmentation.
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    /// Output folder (may equal --model).
    #[arg(long)]
    pub out: PathBuf,
    #[command(flatten)]
    pub backend: BackendArgs,
}

/// Runs `zipmerge bn-reset`.
pub fn exec(a: BnResetArgs, p: &mut Printer) -> Result<()> {
    let images = if a.images == "all" {
        None
    } else {
        match a.images.parse::<usize>() {
            Ok(0) | Err(_) => {
                return Err(usage(format!(
                    "--images `{}`: expected a number >= 1 or `all`",
                    a.images
                )))
            }
            Ok(n) => Some(n),
        }
    };
    if a.out.exists() && !a.out.is_dir() {
        return Err(usage(format!(
            "--out {}: exists and is not a folder; choose another --out",
            a.out.display()
        )));
    }
    checkpoint::check_out_dir(&a.out)?;
    let dir = checkpoint::model_dir(&a.model);
    let mut manifest = checkpoint::read_manifest(&dir)?;
    let mut trunk = checkpoint::read_weights(&dir, &manifest.weights)?;
    let mut heads: Vec<StateDict> = Vec::new();
    for h in &manifest.heads {
        if let Some(f) = &h.weights {
            heads.push(checkpoint::read_weights(&dir, f)?);
        }
    }
    let device = a.backend.device(p)?;
    let prep = manifest.net_config().preprocess();
    let set = load_split(&data_root(a.data.as_deref()), "train", prep, p)?;
    let batches = probe_batches(
        &set,
        &ProbeOptions {
            images,
            batch_size: a.batch_size,
            augment: true,
            seed: a.seed,
        },
    );
    let total = zipmerge::merge::images(&batches) as u64;
    phase(p, "BN reset", total, |pr| {
        bn_reset::reset(&manifest, &mut trunk, &mut heads, &batches, &device, pr)
    })?;
    manifest.provenance["bn_reset"] = serde_json::json!({"images": batches.iter().map(Vec::len).sum::<usize>(), "seed": a.seed, "data": set.source});
    let mut files: Vec<(String, &StateDict)> = vec![(manifest.weights.clone(), &trunk)];
    let mut hi = heads.iter();
    for h in &manifest.heads {
        if let Some(f) = &h.weights {
            files.push((f.clone(), hi.next().expect("head")));
        }
    }
    checkpoint::write_model(&a.out, &manifest, &files)?;
    p.done(
        &format!("wrote {}", a.out.display()),
        serde_json::json!({"wrote": a.out, "images": total}),
    );
    Ok(())
}
