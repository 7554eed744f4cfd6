//! `zipmerge import` / `zipmerge export`: PyTorch and safetensors checkpoints in the official
//! ZipIt! layout (`resnet20x{w}` / `vgg11` state_dicts) and torchvision's layout (ResNet-50).

use std::path::PathBuf;

use anyhow::{bail, Context, Result};
use clap::Args;

use zipmerge::checkpoint::{self, interop, ModelManifest, StateDict};
use zipmerge::data::tasks::parse_classes;
use zipmerge::models::{Arch, Net, NetConfig};

use zipmerge::progress::Observer;

use super::common::{arch_parser, build_head, command_line, parse_head};
use super::printer::Printer;

/// Arguments of `zipmerge import`.
#[derive(Args, Debug)]
pub struct ImportArgs {
    /// PyTorch (`.pt`, `.pth`, `.pth.tar`) or `.safetensors` state_dict.
    #[arg(long)]
    pub from: PathBuf,
    /// Architecture (resnet20 and vgg11 in the official ZipIt! layout, torchvision's ResNets in
    /// theirs). Default: told by the tensor names.
    #[arg(long, value_parser = arch_parser())]
    pub arch: Option<Arch>,
    /// Width: multiplier for resnet20/vgg11, base width in channels for resnet50 (torchvision:
    /// 64). Read off the file's first conv when omitted.
    #[arg(long)]
    pub width: Option<usize>,
    /// Head: `linear` or `text[:FILE]`.
    #[arg(long, default_value = "linear")]
    pub head: String,
    /// Classes (label ids) of the model's outputs / task, e.g. `0,1,2,3,4` or `0-999`.
    /// Default for linear heads: one class per output of the file's final layer, `0..N-1`.
    #[arg(long)]
    pub classes: Option<String>,
    /// Parameter-name layout: `zipit` (official ZipIt! code: resnet20, vgg11) or `torchvision`
    /// (resnet50). Default: the architecture's own.
    #[arg(long)]
    pub layout: Option<String>,
    /// Number of classes of the data set (for checking --classes). Default: 10, or the final
    /// layer's outputs when more (linear heads).
    #[arg(long)]
    pub num_classes: Option<usize>,
    /// Output model folder.
    #[arg(long)]
    pub out: PathBuf,
}

/// Runs `zipmerge import`.
pub fn exec_import(a: ImportArgs, p: &mut Printer) -> Result<()> {
    let given = a.arch;
    checkpoint::check_out_dir(&a.out)?;
    let (state, notes) = interop::read_checkpoint(&a.from)?;
    let from = a.from.display();
    if state.keys().any(|k| k.starts_with("trunk.")) && state.keys().any(|k| k.starts_with("head"))
    {
        bail!("{from} is a multi-head zipmerge export (`trunk.*`, `head<i>.*` names): import one network's prefix at a time, or use the zipmerge model folder it was exported from");
    }
    let arch = match (given, interop::detect_arch(&state)) {
        (Some(g), Some(d)) if g != d => bail!(
            "{from} holds a {d} state_dict (by its tensor names), not a {g}: pass --arch {d}"
        ),
        (Some(g), _) => g,
        (None, Some(d)) => d,
        (None, None) => bail!(
            "{from}: cannot tell the architecture from the tensor names (first: {}): pass --arch ({})",
            state.keys().take(3).cloned().collect::<Vec<_>>().join(", "),
            Arch::names()
        ),
    };
    let layout = check_layout(arch, a.layout.as_deref())?;
    if let Some(first) = notes.ignored.first() {
        p.warn(&format!(
            "note: took the weights entry of a training checkpoint; ignored {} other tensors (e.g. {first})",
            notes.ignored.len()
        ));
    }
    let out_key = format!("{}.weight", arch.def().head_layer());
    let file_outputs = state.get(&out_key).map(|t| t.rows());
    let linear = parse_head(&a.head)?.is_none();
    let num_classes = a.num_classes.unwrap_or(if linear {
        file_outputs.unwrap_or(10).max(10)
    } else {
        10
    });
    let classes = match (&a.classes, file_outputs) {
        (Some(c), _) => parse_classes(c, num_classes)?,
        (None, Some(n)) if linear => (0..n).collect(),
        _ => bail!(
            "--classes is required for --head {} (the label ids the model's outputs score)",
            a.head
        ),
    };
    let head = build_head(&a.head, &classes)?;
    let width = match a.width {
        Some(w) => w,
        None => infer_width(arch, &state)
            .with_context(|| format!("{}: pass --width", a.from.display()))?,
    };
    let cfg = NetConfig {
        arch,
        width,
        out: head.net_outputs(classes.len()),
    };
    cfg.check("--width")?;
    checkpoint::check_finite(&state, &a.from.display().to_string())?;
    Net::from_state(&cfg, &state, &burn::tensor::Device::flex()).with_context(|| {
        format!(
            "{} as {arch} width {width} ({} outputs)",
            a.from.display(),
            cfg.out
        )
    })?;
    if let Some(first) = notes.converted.first() {
        p.warn(&format!(
            "note: converted {} of {} tensors to f32 (e.g. {first})",
            notes.converted.len(),
            state.len()
        ));
    }
    let provenance = serde_json::json!({"import": {"from": a.from.display().to_string(), "layout": layout, "converted_to_f32": notes.converted, "stripped_prefixes": notes.stripped_prefixes, "ignored_tensors": notes.ignored.len(), "command": command_line()}});
    let manifest = ModelManifest::single(&cfg, classes, head, vec![], provenance);
    checkpoint::write_model(&a.out, &manifest, &[("model.safetensors".into(), &state)])?;
    p.done(
        &format!("wrote {} ({} tensors)", a.out.display(), state.len()),
        serde_json::json!({"wrote": a.out, "tensors": state.len()}),
    );
    Ok(())
}

/// The layout of `arch` (`zipit` for resnet20/vgg11, `torchvision` for torchvision's ResNets),
/// checking `--layout` when given.
fn check_layout(arch: Arch, given: Option<&str>) -> Result<&'static str> {
    let own = arch.def().layout();
    match given {
        None => Ok(own),
        Some(l) if l == own => Ok(own),
        Some(l @ ("zipit" | "torchvision")) => {
            bail!("--layout {l} does not fit --arch {arch}: {arch} uses the {own} layout")
        }
        Some(l) => bail!("--layout `{l}`: expected zipit or torchvision"),
    }
}

/// Width read off the first conv of a state dict ([`zipmerge::models::arch::Architecture::width_probe`]):
/// `conv1.weight` rows / 16 for ResNet-20, `features.0.weight` rows / 64 for VGG-11,
/// `conv1.weight` rows for torchvision's ResNets.
fn infer_width(arch: Arch, state: &StateDict) -> Result<usize> {
    let (key, unit) = arch.def().width_probe();
    let t = state
        .get(key)
        .with_context(|| format!("no tensor `{key}` to read the width of a {arch} from"))?;
    if t.rows() % unit != 0 || t.rows() == 0 {
        bail!(
            "tensor `{key}` has {} output channels, not a multiple of {unit} as a {arch} needs",
            t.rows()
        );
    }
    Ok(t.rows() / unit)
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
    /// Parameter-name layout: `zipit` (resnet20/vgg11) or `torchvision` (resnet50). Default:
    /// the model's own; zipmerge stores weights under those names, so this only checks.
    #[arg(long)]
    pub layout: Option<String>,
    /// Output file. A multi-head model is written as one file with prefixed names: `trunk.*`
    /// for the shared trunk and `head<i>.*` for each head network.
    #[arg(long)]
    pub out: PathBuf,
}

/// Runs `zipmerge export`.
pub fn exec_export(a: ExportArgs, p: &mut Printer) -> Result<()> {
    if a.format != "safetensors" {
        bail!("--format {}: only safetensors is supported", a.format);
    }
    let dir = checkpoint::model_dir(&a.model);
    let m = checkpoint::read_manifest(&dir)?;
    check_layout(m.arch, a.layout.as_deref())?;
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
    p.done(
        &format!("wrote {} ({} bytes)", a.out.display(), bytes.len()),
        serde_json::json!({"wrote": a.out, "bytes": bytes.len()}),
    );
    Ok(())
}
