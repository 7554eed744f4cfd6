//! Top-k classes of individual images (`zipmerge predict`).

use std::path::PathBuf;

use burn::tensor::Device;
use serde::Serialize;

use crate::data::imagefolder::decode;
use crate::data::to_tensor;
use crate::error::MergeError;
use crate::eval::runner::rows;
use crate::eval::softmax;
use crate::models::ForwardCtx;
use crate::system::System;

/// One of the top classes of an image.
#[derive(Clone, Debug, Serialize)]
pub struct Top {
    /// Class id.
    pub class: usize,
    /// Class name.
    pub name: String,
    /// Softmax score over the model's classes.
    pub score: f32,
}

/// The prediction of one image (`zipmerge predict --json`).
#[derive(Clone, Debug, Serialize)]
pub struct Prediction {
    /// Image path.
    pub image: String,
    /// Logits over the model's classes in label order.
    pub logits: Vec<f32>,
    /// The top classes, best first.
    pub top: Vec<Top>,
}

impl std::fmt::Display for Prediction {
    /// `image: name (class) score, ...`, best first.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let top: Vec<String> = self
            .top
            .iter()
            .map(|t| format!("{} ({}) {:.3}", t.name, t.class, t.score))
            .collect();
        write!(f, "{}: {}", self.image, top.join(", "))
    }
}

/// Loads the model folder `model` on `device` and predicts the `top` classes of each image
/// ([`predict`]).
///
/// # Errors
/// [`MergeError`] naming the model folder that cannot be loaded, or as [`predict`].
pub fn predict_folder(
    model: &std::path::Path,
    images: &[PathBuf],
    top: usize,
    device: &Device,
) -> Result<Vec<Prediction>, MergeError> {
    let sys = System::load(model, device)?;
    predict(&sys, images, top, device)
}

/// Predicts `images` with `sys`: logits over the model's classes in label order (all heads'
/// classes for a multi-head model, each scored by the first head trained on it), and the `top`
/// classes by the softmax of those logits.
///
/// # Errors
/// [`MergeError::Data`] naming an image that cannot be decoded.
pub fn predict(
    sys: &System,
    images: &[PathBuf],
    top: usize,
    device: &Device,
) -> Result<Vec<Prediction>, MergeError> {
    let classes = sys.manifest.all_classes();
    let imgs: Vec<Vec<u8>> = images
        .iter()
        .map(|p| decode(p, sys.manifest.prep(), false))
        .collect::<Result<_, _>>()?;
    let refs: Vec<&[u8]> = imgs.iter().map(|v| v.as_slice()).collect();
    let outs = sys.forward_heads(
        to_tensor(&refs, sys.manifest.prep(), device),
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
    Ok(images
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
                    .take(top)
                    .map(|&k| Top {
                        class: classes[k],
                        name: name(classes[k]),
                        score: s[k],
                    })
                    .collect(),
            }
        })
        .collect())
}
