//! `zipmerge import` / `zipmerge export`: PyTorch and safetensors checkpoints in the official
//! ZipIt! layout (`resnet20x{w}` / `vgg11` state_dicts).

use std::path::PathBuf;

use anyhow::{bail, Context, Result};
use clap::Args;

use zipmerge::checkpoint::{self, interop, ModelManifest, StateDict};
use zipmerge::data::tasks::parse_classes;
use zipmerge::models::head::{text_head, HeadSpec};
use zipmerge::models::{Arch, Net, NetConfig};

use super::common::command_line;
use super::train_cmd::DEFAULT_EMBEDDINGS;

/// Arguments of `zipmerge import`.
#[derive(Args, Debug)]
pub struct ImportArgs {
    /// PyTorch (`.pt`, `.pth`, `.pth.tar`) or `.safetensors` state_dict.
    #[arg(long)]
    pub from: PathBuf,
    /// Architecture: resnet20 or vgg11.
    #[arg(long)]
    pub arch: String,
    /// Width multiplier.
    #[arg(long)]
    pub width: usize,
    /// Head: `linear` or `text[:FILE]`.
    #[arg(long, default_value = "linear")]
    pub head: String,
    /// Classes (label ids) of the model's outputs / task, e.g. `0,1,2,3,4`.
    #[arg(long)]
    pub classes: String,
    /// Parameter-name layout: `zipit` (official ZipIt! code). `torchvision` is for ResNet-50,
    /// which this version does not include.
    #[arg(long, default_value = "zipit")]
    pub layout: String,
    /// Number of classes of the data set (for checking --classes).
    #[arg(long, default_value_t = 10)]
    pub num_classes: usize,
    /// Output model folder.
    #[arg(long)]
    pub out: PathBuf,
}

/// Runs `zipmerge import`.
pub fn exec_import(a: ImportArgs) -> Result<()> {
    if a.layout != "zipit" {
        bail!("--layout `{}`: only `zipit` (ResNet-20 / VGG-11 of the official ZipIt! code) is supported", a.layout);
    }
    let arch: Arch = a.arch.parse()?;
    let classes = parse_classes(&a.classes, a.num_classes)?;
    let head = match a.head.as_str() {
        "linear" => HeadSpec::Linear,
        h if h == "text" || h.starts_with("text:") => text_head(
            std::path::Path::new(h.strip_prefix("text:").unwrap_or(DEFAULT_EMBEDDINGS)),
            &classes,
        )?,
        o => bail!("--head `{o}`: expected linear or text[:FILE]"),
    };
    let cfg = NetConfig {
        arch,
        width: a.width,
        out: head.net_outputs(classes.len()),
    };
    cfg.validate()?;
    let (state, notes) = interop::read_checkpoint(&a.from)?;
    checkpoint::check_finite(&state, &a.from.display().to_string())?;
    Net::from_state(&cfg, &state, &burn::tensor::Device::flex()).with_context(|| {
        format!(
            "{} as {arch} x{} ({} outputs)",
            a.from.display(),
            a.width,
            cfg.out
        )
    })?;
    for c in &notes.converted {
        eprintln!("converted to f32: {c}");
    }
    let provenance = serde_json::json!({"import": {"from": a.from.display().to_string(), "layout": a.layout, "converted_to_f32": notes.converted, "stripped_prefixes": notes.stripped_prefixes, "command": command_line()}});
    let manifest = ModelManifest::single(&cfg, classes, head, vec![], provenance);
    checkpoint::write_model(&a.out, &manifest, &[("model.safetensors".into(), &state)])?;
    println!("wrote {} ({} tensors)", a.out.display(), state.len());
    Ok(())
}

/// Arguments of `zipmerge export`.
#[derive(Args, Debug)]
pub struct ExportArgs {
    /// Model folder.
    #[arg(long)]
    pub model: PathBuf,
    /// Output format: safetensors.
    #[arg(long, default_value = "safetensors")]
    pub format: String,
    /// Parameter-name layout: zipit.
    #[arg(long, default_value = "zipit")]
    pub layout: String,
    /// Output file. A multi-head model is written as one file with prefixed names: `trunk.*`
    /// for the shared trunk and `head<i>.*` for each head network.
    #[arg(long)]
    pub out: PathBuf,
}

/// Runs `zipmerge export`.
pub fn exec_export(a: ExportArgs) -> Result<()> {
    if a.format != "safetensors" || a.layout != "zipit" {
        bail!(
            "--format {} --layout {}: only safetensors in the zipit layout is supported",
            a.format,
            a.layout
        );
    }
    let dir = checkpoint::model_dir(&a.model);
    let m = checkpoint::read_manifest(&dir)?;
    let trunk = checkpoint::read_weights(&dir, &m.weights)?;
    let heads: Vec<StateDict> = m
        .heads
        .iter()
        .filter_map(|h| h.weights.as_ref())
        .map(|f| checkpoint::read_weights(&dir, f))
        .collect::<Result<_, _>>()?;
    let bytes = if heads.is_empty() {
        interop::to_pytorch_safetensors(&[("", &trunk)])?
    } else {
        let names: Vec<String> = (0..heads.len()).map(|i| format!("head{i}.")).collect();
        let mut parts: Vec<(&str, &StateDict)> = vec![("trunk.", &trunk)];
        parts.extend(names.iter().map(String::as_str).zip(heads.iter()));
        interop::to_pytorch_safetensors(&parts)?
    };
    zipmerge::util::write_atomic(&a.out, &bytes)?;
    println!("wrote {} ({} bytes)", a.out.display(), bytes.len());
    Ok(())
}
