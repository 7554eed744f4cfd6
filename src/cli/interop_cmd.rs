//! `zipmerge import` / `zipmerge export`: flags -> [`zipmerge::ops::interop`] -> a model
//! folder, or a model folder -> one safetensors file (official ZipIt! layout for
//! `resnet20x{w}` / `vgg11`, torchvision's for its ResNets).

use std::path::PathBuf;

use anyhow::Result;
use clap::Args;

use zipmerge::checkpoint::{self};
use zipmerge::models::Arch;
use zipmerge::ops::interop::{export_to, import_to, ImportError, ImportRequest, InputOverride};
use zipmerge::progress::Observer;

use super::common::{arch_parser, check_out, command_line, parse_head, usage};
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
    /// A text file naming the data set's classes, one per line in label-id order (CIFAR-10:
    /// airplane, automobile, ...); `predict` then prints names.
    #[arg(long)]
    pub class_names: Option<PathBuf>,
    /// Channel means the model was trained with, `R,G,B` in 0..1 units (torchvision's
    /// `Normalize`). Default: the architecture's (CIFAR's or ImageNet's).
    #[arg(long, value_name = "R,G,B")]
    pub mean: Option<String>,
    /// Channel standard deviations, `R,G,B` in 0..1 units. Default: the architecture's.
    #[arg(long, value_name = "R,G,B")]
    pub std: Option<String>,
    /// Side of the square input the model takes, pixels. Default: 32 (CIFAR networks) or 224
    /// (ResNet-18/50).
    #[arg(long)]
    pub input_size: Option<usize>,
    /// Shorter side images are resized to (bilinear, PIL-exact) before the centre crop to
    /// --input-size; 0: no resize (images must already be that size). Default: 0 for the CIFAR
    /// networks, 256 for ResNet-18/50 (scaled by --input-size / 224 when that is given).
    #[arg(long)]
    pub resize: Option<usize>,
    /// Output model folder.
    #[arg(long)]
    pub out: PathBuf,
}

/// `R,G,B` in 0..1 units for `--{flag}`.
fn parse_rgb(flag: &str, v: &str) -> Result<[f32; 3]> {
    let vals: Vec<f32> = v
        .split(',')
        .map(|x| x.trim().parse::<f32>())
        .collect::<Result<_, _>>()
        .map_err(|_| usage(format!("--{flag} {v}: expected three numbers R,G,B")))?;
    let [r, g, b] = vals[..] else {
        return Err(usage(format!(
            "--{flag} {v}: expected three numbers R,G,B, got {}",
            vals.len()
        )));
    };
    if let Some(x) = vals.iter().find(|x| x.is_finite() && **x > 1.0) {
        return Err(usage(format!(
            "--{flag} {v}: expected 0..1 units as torchvision's Normalize takes them ({x} looks like 0..255: {:.4})",
            x / 255.0
        )));
    }
    Ok([r, g, b])
}

/// An import error as the CLI reports it, with the flag that fixes it.
fn import_error(e: ImportError, head: &str) -> anyhow::Error {
    match &e {
        ImportError::ArchMismatch { found, .. } => usage(format!("{e}: pass --arch {found}")),
        ImportError::UnknownArch { .. } => usage(format!("{e}: pass --arch")),
        ImportError::LayoutMismatch { .. } | ImportError::BadLayout { .. } => {
            usage(format!("--{e}"))
        }
        ImportError::ClassNames { .. } => usage(format!("--class-names {e}")),
        // the message starts with the field: mean, std, input_size or resize
        ImportError::Preprocess { .. } => usage(format!(
            "--{}",
            e.to_string().replacen("input_size", "input-size", 1)
        )),
        ImportError::ClassesRequired => usage(format!(
            "--classes is required for --head {head} (the label ids the model's outputs score)"
        )),
        ImportError::Width { .. } => usage(format!("{e} with --width")),
        ImportError::Data(_) => usage(format!("--classes: {e}")),
        ImportError::Model(zipmerge::error::ModelError::Width {
            width, expected, ..
        }) => usage(format!("--width {width}: {expected}")),
        _ => anyhow::Error::new(e),
    }
}

/// Runs `zipmerge import`.
pub fn exec_import(a: ImportArgs, p: &mut Printer) -> Result<()> {
    check_out(&a.out, &[], true)?;
    let head = parse_head(&a.head)?;
    let req = ImportRequest {
        from: a.from.clone(),
        arch: a.arch,
        width: a.width,
        head,
        classes: a.classes.clone(),
        layout: a.layout.clone(),
        num_classes: a.num_classes,
        class_names: a.class_names.clone(),
        input: InputOverride {
            mean: a
                .mean
                .as_deref()
                .map(|v| parse_rgb("mean", v))
                .transpose()?,
            std: a.std.as_deref().map(|v| parse_rgb("std", v)).transpose()?,
            input_size: a.input_size,
            resize: a.resize,
        },
        command: command_line(),
    };
    let m = import_to(&req, &a.out).map_err(|e| import_error(e, &a.head))?;
    for line in m.notes.lines(m.state.len()) {
        p.warn(&line);
    }
    let line = format!("wrote {} ({} tensors)\n", a.out.display(), m.state.len());
    let value = serde_json::json!({"wrote": a.out, "tensors": m.state.len()});
    p.emit(&value, &line, None)
}

/// Arguments of `zipmerge export`.
#[derive(Args, Debug)]
pub struct ExportArgs {
    /// Model folder.
    #[arg(long)]
    pub model: PathBuf,
    /// Output format: safetensors.
    #[arg(long, default_value = "safetensors", value_parser = ["safetensors"])]
    pub format: String,
    /// Parameter-name layout: `zipit` (resnet20/vgg11) or `torchvision` (resnet50). Default:
    /// the model's own; zipmerge stores weights under those names, so this only checks.
    #[arg(long)]
    pub layout: Option<String>,
    /// Output file (a regular file outside the model folder; an existing one is replaced
    /// atomically, anything else is refused). `<out>.heads.json` goes beside it (what the
    /// weights cannot carry: heads, classes, text-head embeddings and logit rule, the stop,
    /// the preprocessing; `tools/run_export.py` runs the pair in PyTorch), checked the same way. A multi-head model is written as one file with prefixed names: `trunk.*`
    /// for the shared trunk and `head<i>.*` for each head network.
    #[arg(long)]
    pub out: PathBuf,
}

/// Runs `zipmerge export`.
pub fn exec_export(a: ExportArgs, p: &mut Printer) -> Result<()> {
    checkpoint::check_out_file(&a.out, std::slice::from_ref(&a.model))
        .map_err(|r| usage(format!("--out {}: {r}", a.out.display())))?;
    let side = zipmerge::ops::interop::heads_path(&a.out);
    checkpoint::check_out_file(&side, std::slice::from_ref(&a.model)).map_err(|r| {
        usage(format!(
            "--out {} (its heads file {}): {r}",
            a.out.display(),
            side.display()
        ))
    })?;
    let (bytes, heads) =
        export_to(&a.model, a.layout.as_deref(), &a.out).map_err(|e| import_error(e, ""))?;
    let heads = heads.display().to_string();
    let line = format!("wrote {} ({bytes} bytes) and {heads}\n", a.out.display());
    let value = serde_json::json!({"wrote": a.out, "bytes": bytes, "heads": heads});
    p.emit(&value, &line, None)
}
