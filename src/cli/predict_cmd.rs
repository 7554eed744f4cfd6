//! `zipmerge predict`: top-k classes per image.

use std::path::PathBuf;

use anyhow::{Context, Result};
use clap::Args;
use serde::Serialize;

use zipmerge::data::imagefolder::decode;
use zipmerge::data::to_tensor;
use zipmerge::eval::runner::rows;
use zipmerge::eval::softmax;
use zipmerge::models::system::System;
use zipmerge::models::ForwardCtx;

use super::common::{positive, BackendArgs};

/// Arguments of `zipmerge predict`.
#[derive(Args, Debug)]
pub struct PredictArgs {
    /// Model folder.
    #[arg(long)]
    pub model: PathBuf,
    /// 32x32 images (.jpg/.png).
    #[arg(required = true)]
    pub images: Vec<PathBuf>,
    /// Classes to show per image.
    #[arg(long, default_value_t = 3, value_parser = positive)]
    pub top: usize,
    /// JSON output with raw logits.
    #[arg(long)]
    pub json: bool,
    #[command(flatten)]
    pub backend: BackendArgs,
}

#[derive(Serialize)]
struct Top {
    class: usize,
    name: String,
    score: f32,
}

#[derive(Serialize)]
struct Prediction {
    image: String,
    logits: Vec<f32>,
    top: Vec<Top>,
}

/// Runs `zipmerge predict`. Logits are over the model's classes in label order (all heads'
/// classes for a multi-head model, each scored by the head trained on it); scores are the softmax
/// of those logits.
pub fn exec(a: PredictArgs) -> Result<()> {
    let device = a.backend.device(a.json)?;
    let sys = System::load(&a.model, &device)
        .with_context(|| format!("loading model {}", a.model.display()))?;
    let classes = sys.manifest.all_classes();
    let imgs: Vec<Vec<u8>> = a
        .images
        .iter()
        .map(|p| decode(p, sys.config().preprocess(), false))
        .collect::<Result<_, _>>()?;
    let refs: Vec<&[u8]> = imgs.iter().map(|v| v.as_slice()).collect();
    let outs = sys.forward_heads(
        to_tensor(&refs, sys.config().preprocess(), &device),
        &mut ForwardCtx::default(),
    );
    // logits over `classes`, each class from the first head trained on it (text heads: any)
    let mut per_class: Vec<Vec<f32>> = vec![vec![0.0; classes.len()]; imgs.len()];
    for (k, c) in classes.iter().enumerate() {
        let hi = sys
            .heads
            .iter()
            .position(|h| h.classes.contains(c))
            .unwrap_or(0);
        let h = &sys.heads[hi];
        let l = rows(h.spec.logits(outs[hi].clone(), &h.classes, &[*c]));
        for (i, r) in l.iter().enumerate() {
            per_class[i][k] = r[0];
        }
    }
    let name = |c: usize| {
        sys.manifest
            .class_names
            .get(c)
            .cloned()
            .unwrap_or_else(|| c.to_string())
    };
    let preds: Vec<Prediction> = a
        .images
        .iter()
        .zip(&per_class)
        .map(|(p, l)| {
            let s = softmax(l);
            let mut order: Vec<usize> = (0..l.len()).collect();
            order.sort_by(|&x, &y| s[y].total_cmp(&s[x]));
            Prediction {
                image: p.display().to_string(),
                logits: l.clone(),
                top: order
                    .iter()
                    .take(a.top)
                    .map(|&k| Top {
                        class: classes[k],
                        name: name(classes[k]),
                        score: s[k],
                    })
                    .collect(),
            }
        })
        .collect();
    if a.json {
        println!("{}", serde_json::to_string(&preds)?);
    } else {
        for p in &preds {
            let t: Vec<String> = p
                .top
                .iter()
                .map(|t| format!("{} ({}) {:.3}", t.name, t.class, t.score))
                .collect();
            println!("{}: {}", p.image, t.join(", "));
        }
    }
    Ok(())
}
