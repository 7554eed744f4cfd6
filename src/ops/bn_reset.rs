//! `zipmerge bn-reset`: reset the BN statistics of a model folder on train images and write it
//! back with the reset in its provenance (the step itself is [`crate::rewrite::bn_reset`]).

/// Resets the BN statistics of the model folder `model` on images of the train split of
/// `data_root` drawn by `opts` (augmented) and writes the model to `out` (which may be `model`:
/// the folder is replaced atomically), recording the reset in the manifest's provenance.
/// Returns the number of images used.
///
/// # Errors
/// [`crate::error::MergeError`] naming the model or data folder that cannot be read or written.
pub fn reset_folder(
    model: &std::path::Path,
    data_root: &std::path::Path,
    opts: &crate::collect::ProbeOptions,
    cache_gib: f64,
    out: &std::path::Path,
    device: &crate::system::runner::Runner,
    obs: &mut dyn crate::progress::Observer,
) -> Result<usize, crate::error::MergeError> {
    use crate::checkpoint;
    let dir = checkpoint::model_dir(model);
    let checkpoint::ModelWeights {
        mut manifest,
        mut trunk,
        mut heads,
    } = checkpoint::ModelWeights::read(&dir, checkpoint::read_manifest(&dir)?)?;
    let prep = manifest.prep();
    let set = crate::data::load_split(data_root, "train", prep, cache_gib, None, obs)?;
    let batches = crate::collect::probe_batches(&set, opts);
    let images = crate::collect::probe::images(&batches);
    crate::progress::phase(obs, "BN reset", images as u64, |p| {
        crate::rewrite::bn_reset::reset(&manifest, &mut trunk, &mut heads, &batches, device, p)
    })?;
    manifest.provenance["bn_reset"] =
        serde_json::json!({"images": images, "seed": opts.seed, "data": set.source});
    let mut files: Vec<(String, &crate::state::StateDict)> =
        vec![(manifest.weights.clone(), &trunk)];
    let head_files = manifest.heads.iter().filter_map(|h| h.weights.clone());
    files.extend(head_files.zip(heads.iter()));
    checkpoint::write_model(out, &manifest, &files)?;
    Ok(images)
}
