//! The choices of a distillation run that the learners need too: optimiser, loss target and BN
//! handling (kept apart from the loop so the learners import nothing above them).

use serde::{Deserialize, Serialize};

/// The optimiser of a distillation.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Optimizer {
    /// AdamW (betas 0.9 / 0.999, eps 1e-5, decoupled weight decay), as SAM-CLIP.
    AdamW,
    /// SGD, momentum 0.9, weight decay on every parameter (PyTorch semantics, as `train`).
    Sgd,
}

/// What the student is taught.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum DistillLoss {
    /// SAM-CLIP: each teacher's outputs on its own images only (text heads: cosine distance of
    /// the embeddings; linear heads: `T^2 KL` of its classes' distribution). Keeps each task;
    /// says nothing about telling one task's classes from another's.
    Embedding,
    /// The teachers' ensemble over the union of their classes: every teacher scores every
    /// image of the batch, each class's logit from the (first) teacher trained on it (text
    /// heads `100 cos`, as the ensemble's joint rule), and the student's logits over the same
    /// classes learn that distribution (`T^2 KL`): joint accuracy is what it trains.
    Joint,
}

/// BN handling during distillation.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum BnHandling {
    /// Batch statistics while training (running statistics updated), a BN reset at the end.
    Train,
    /// The student's running statistics throughout, kept as they are (no reset).
    Frozen,
}
