//! Probe images as the steps receive them: batches of `[side, side, 3]` u8 images (HWC), drawn
//! by [`super::probe_batches`] / [`super::probe_batches_sparse`].

/// Probe or BN-reset images: batches of `[side, side, 3]` u8 images.
pub type Batches = Vec<Vec<Vec<u8>>>;

/// Images in `batches`.
pub fn images(batches: &Batches) -> usize {
    batches.iter().map(Vec::len).sum()
}
