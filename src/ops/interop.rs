//! `zipmerge import` / `export` as library calls: a PyTorch or safetensors state dict in the
//! official ZipIt! or torchvision layout becomes a zipmerge model ([`import`]), a model folder
//! becomes one safetensors file that the official PyTorch classes load ([`export`]). The
//! architecture is told from the tensor names ([`crate::checkpoint::interop::detect_arch`]) and its width
//! read off its first conv ([`crate::models::arch::Architecture::width_probe`]).

use std::path::{Path, PathBuf};

use thiserror::Error;

use crate::checkpoint::interop::{self, ImportNotes};
use crate::checkpoint::{ModelManifest, StateDict};
use crate::data::Preprocess;
use crate::error::{CheckpointError, DataError, ModelError};
use crate::models::head::HeadChoice;
use crate::models::{Arch, Net, NetConfig};

/// What to import.
#[derive(Clone, Debug)]
pub struct ImportRequest {
    /// The `.pt` / `.pth` / `.pth.tar` / `.safetensors` file.
    pub from: PathBuf,
    /// Architecture (`None`: told by the tensor names).
    pub arch: Option<Arch>,
    /// Width (`None`: read off the first conv).
    pub width: Option<usize>,
    /// Head of the model.
    pub head: HeadChoice,
    /// Classes (label ids) of the outputs, as a class list (`0,1,2` or `0-999`); `None` for a
    /// linear head: one class per output of the file's final layer.
    pub classes: Option<String>,
    /// Layout to check (`zipit` or `torchvision`; `None`: the architecture's own).
    pub layout: Option<String>,
    /// Classes of the data set (`None`: 10, or the final layer's outputs when more).
    pub num_classes: Option<usize>,
    /// A text file naming the data set's classes, one per line in label-id order (`None`: the
    /// model has no class names; `predict` prints ids).
    pub class_names: Option<PathBuf>,
    /// The model's own input preprocessing, where it differs from its architecture's default.
    pub input: InputOverride,
    /// The command, for the provenance.
    pub command: String,
}

/// Preprocessing values an imported model was trained with, each replacing the architecture's
/// default ([`crate::models::Arch::preprocess`]) when given (`import --mean --std --input-size
/// --resize`).
#[derive(Clone, Copy, Debug, Default)]
pub struct InputOverride {
    /// Channel means, 0..1 units (torchvision `Normalize`).
    pub mean: Option<[f32; 3]>,
    /// Channel standard deviations, 0..1 units.
    pub std: Option<[f32; 3]>,
    /// Side of the square network input, pixels.
    pub input_size: Option<usize>,
    /// Shorter side before the centre crop, pixels (0: no resize).
    pub resize: Option<usize>,
}

impl InputOverride {
    /// The preprocessing of a model of `arch` with these values: `None` when it is the
    /// architecture's default.
    ///
    /// # Errors
    /// [`ImportError::Preprocess`] naming the value at fault.
    pub fn resolve(&self, arch: Arch) -> Result<Option<Preprocess>, ImportError> {
        let base = arch.preprocess();
        let mut p = base;
        if let Some(m) = self.mean {
            p.mean = m;
        }
        if let Some(s) = self.std {
            p.std = s;
        }
        if let Some(n) = self.input_size {
            p.input_size = n;
            // a new input size without --resize keeps the default's resize-to-crop ratio
            // (ImageNet: 256 / 224, so 299 -> 342), or no resize
            if self.resize.is_none() && base.resize != 0 {
                p.resize = (n * base.resize + base.input_size / 2) / base.input_size;
            }
        }
        if let Some(r) = self.resize {
            p.resize = r;
        }
        p.validate()
            .map_err(|msg| ImportError::Preprocess { msg })?;
        Ok((p != base).then_some(p))
    }
}

/// An imported model, ready to be written ([`crate::checkpoint::write_model`]).
#[derive(Clone, Debug)]
pub struct Imported {
    /// Its manifest.
    pub manifest: ModelManifest,
    /// Its weights (f32, PyTorch names).
    pub state: StateDict,
    /// What was converted, stripped or ignored on reading.
    pub notes: ImportNotes,
}

/// Why a file cannot be imported or a model exported.
#[derive(Debug, Error)]
pub enum ImportError {
    /// From reading or writing the file.
    #[error(transparent)]
    Checkpoint(#[from] CheckpointError),
    /// From building the network.
    #[error(transparent)]
    Model(#[from] ModelError),
    /// From the class list.
    #[error(transparent)]
    Data(#[from] DataError),
    /// Writing the exported file.
    #[error("{path}: cannot be written ({msg})")]
    Write {
        /// The output file.
        path: String,
        /// The system's message.
        msg: String,
    },
    /// A multi-head export (`trunk.*`, `head<i>.*`).
    #[error("{file} is a multi-head zipmerge export (`trunk.*`, `head<i>.*` names): import one network's prefix at a time, or use the zipmerge model folder it was exported from")]
    MultiHead {
        /// The file.
        file: String,
    },
    /// The tensor names say another architecture than the one given.
    #[error("{file} holds a {found} state_dict (by its tensor names), not a {given}")]
    ArchMismatch {
        /// The file.
        file: String,
        /// What the names say.
        found: Arch,
        /// What was given.
        given: Arch,
    },
    /// No registered architecture has these tensor names.
    #[error("{file}: cannot tell the architecture from the tensor names (first: {first}); expected {names}")]
    UnknownArch {
        /// The file.
        file: String,
        /// The first names.
        first: String,
        /// The registered architectures.
        names: String,
    },
    /// The layout given is not the architecture's.
    #[error("layout {given} does not fit {arch}: {arch} uses the {own} layout")]
    LayoutMismatch {
        /// The layout given.
        given: String,
        /// The architecture.
        arch: Arch,
        /// Its layout.
        own: &'static str,
    },
    /// Not a layout name.
    #[error("layout `{given}`: expected zipit or torchvision")]
    BadLayout {
        /// What was given.
        given: String,
    },
    /// A text head needs the classes its outputs score.
    #[error("the classes are required for a text head (the label ids the model's outputs score)")]
    ClassesRequired,
    /// Preprocessing values that cannot be used.
    #[error("{msg}")]
    Preprocess {
        /// What is wrong.
        msg: String,
    },
    /// A class-names file that cannot be read or does not name every class.
    #[error("{file}: {msg}")]
    ClassNames {
        /// The file.
        file: String,
        /// What is wrong.
        msg: String,
    },
    /// The width cannot be read off the file.
    #[error("{file}: {msg}; give the width")]
    Width {
        /// The file.
        file: String,
        /// Why.
        msg: String,
    },
    /// The weights do not fit the architecture at that width.
    #[error("{file} as {arch} width {width} ({outputs} outputs): {source}")]
    Weights {
        /// The file.
        file: String,
        /// Architecture.
        arch: Arch,
        /// Width.
        width: usize,
        /// Outputs.
        outputs: usize,
        /// Why.
        #[source]
        source: ModelError,
    },
}

/// The layout of `arch`, checking `given` when there is one.
///
/// # Errors
/// [`ImportError::LayoutMismatch`] / [`ImportError::BadLayout`].
pub fn check_layout(arch: Arch, given: Option<&str>) -> Result<&'static str, ImportError> {
    let own = arch.def().layout();
    match given {
        None => Ok(own),
        Some(l) if l == own => Ok(own),
        Some(l @ ("zipit" | "torchvision")) => Err(ImportError::LayoutMismatch {
            given: l.into(),
            arch,
            own,
        }),
        Some(l) => Err(ImportError::BadLayout { given: l.into() }),
    }
}

/// The width of an `arch` state dict, read off the tensor its
/// [`crate::models::arch::Architecture::width_probe`] names.
fn infer_width(arch: Arch, state: &StateDict, file: &str) -> Result<usize, ImportError> {
    let (key, unit) = arch.def().width_probe();
    let err = |msg: String| ImportError::Width {
        file: file.into(),
        msg,
    };
    let t = state.get(key).ok_or_else(|| {
        err(format!(
            "no tensor `{key}` to read the width of a {arch} from"
        ))
    })?;
    if t.rows() % unit != 0 || t.rows() == 0 {
        return Err(err(format!(
            "tensor `{key}` has {} output channels, not a multiple of {unit} as a {arch} needs",
            t.rows()
        )));
    }
    Ok(t.rows() / unit)
}

/// Reads `req.from` and builds the model: architecture, layout, width, classes and head, the
/// weights checked finite and loaded into the network once.
///
/// # Errors
/// [`ImportError`] naming the file and what does not fit.
pub fn import(req: &ImportRequest) -> Result<Imported, ImportError> {
    let (state, notes) = interop::read_checkpoint(&req.from)?;
    let file = req.from.display().to_string();
    let keys = || state.keys();
    if keys().any(|k| k.starts_with("trunk.")) && keys().any(|k| k.starts_with("head")) {
        return Err(ImportError::MultiHead { file });
    }
    let arch = match (req.arch, interop::detect_arch(&state)) {
        (Some(given), Some(found)) if given != found => {
            return Err(ImportError::ArchMismatch { file, found, given })
        }
        (Some(g), _) => g,
        (None, Some(d)) => d,
        (None, None) => {
            return Err(ImportError::UnknownArch {
                file,
                first: keys().take(3).cloned().collect::<Vec<_>>().join(", "),
                names: Arch::names(),
            })
        }
    };
    let layout = check_layout(arch, req.layout.as_deref())?;
    let out_key = format!("{}.weight", arch.def().head_layer());
    let file_outputs = state.get(&out_key).map(|t| t.rows());
    let linear = req.head == HeadChoice::Linear;
    let num_classes = req.num_classes.unwrap_or(if linear {
        file_outputs.unwrap_or(10).max(10)
    } else {
        10
    });
    let classes = match (&req.classes, file_outputs) {
        (Some(c), _) => crate::data::tasks::parse_classes(c, num_classes)?,
        (None, Some(n)) if linear => (0..n).collect(),
        _ => return Err(ImportError::ClassesRequired),
    };
    let head = req.head.build(&classes)?;
    let width = match req.width {
        Some(w) => w,
        None => infer_width(arch, &state, &file)?,
    };
    let cfg = NetConfig {
        arch,
        width,
        out: head.net_outputs(classes.len()),
    };
    cfg.validate()?;
    crate::checkpoint::check_finite(&state, &file)?;
    Net::from_state(&cfg, &state, &burn::tensor::Device::flex()).map_err(|source| {
        ImportError::Weights {
            file: file.clone(),
            arch,
            width,
            outputs: cfg.out,
            source,
        }
    })?;
    let provenance = serde_json::json!({"import": {"from": file, "layout": layout,
        "converted_to_f32": notes.converted, "stripped_prefixes": notes.stripped_prefixes,
        "ignored_tensors": notes.ignored.len(), "command": req.command}});
    let class_names = match &req.class_names {
        None => vec![],
        Some(f) => {
            let bad = |msg: String| ImportError::ClassNames {
                file: f.display().to_string(),
                msg,
            };
            let text = std::fs::read_to_string(f).map_err(|e| bad(e.to_string()))?;
            let names: Vec<String> = text
                .lines()
                .map(str::trim)
                .filter(|l| !l.is_empty())
                .map(str::to_string)
                .collect();
            let need = classes.iter().max().map_or(0, |m| m + 1);
            if names.len() < need {
                return Err(bad(format!(
                    "names {} classes, the model's outputs score label ids up to {} (one name per line, in label-id order)",
                    names.len(),
                    need - 1
                )));
            }
            names
        }
    };
    let mut manifest = ModelManifest::single(&cfg, classes, head, class_names, provenance);
    manifest.preprocess = req.input.resolve(cfg.arch)?;
    Ok(Imported {
        manifest,
        state,
        notes,
    })
}

/// The model folder `model` as one PyTorch-layout safetensors file (f32 tensors plus
/// `num_batches_tracked`); a multi-head model's networks under `trunk.` and `head<i>.`.
///
/// # Errors
/// [`ImportError`] for an unreadable model or a layout that is not the model's.
pub fn export(model: &Path, layout: Option<&str>) -> Result<Vec<u8>, ImportError> {
    let dir = crate::checkpoint::model_dir(model);
    let m = crate::checkpoint::read_manifest(&dir)?;
    check_layout(m.arch, layout)?;
    let crate::checkpoint::ModelWeights { trunk, heads, .. } =
        crate::checkpoint::ModelWeights::read(&dir, m)?;
    Ok(if heads.is_empty() {
        interop::to_pytorch_safetensors(&[("", &trunk)])?
    } else {
        let names: Vec<String> = (0..heads.len()).map(|i| format!("head{i}.")).collect();
        let mut parts: Vec<(&str, &StateDict)> = vec![("trunk.", &trunk)];
        parts.extend(names.iter().map(String::as_str).zip(heads.iter()));
        interop::to_pytorch_safetensors(&parts)?
    })
}

/// [`import`], then the model folder written to `out` (atomically, [`crate::checkpoint::write_model`]).
/// Returns the imported model (its notes say what was converted or stripped).
///
/// # Errors
/// As [`import`]; [`ImportError::Checkpoint`] when `out` cannot be written.
pub fn import_to(req: &ImportRequest, out: &Path) -> Result<Imported, ImportError> {
    let m = import(req)?;
    let files = [("model.safetensors".to_string(), &m.state)];
    crate::checkpoint::write_model(out, &m.manifest, &files)?;
    Ok(m)
}

/// Where [`export_to`] writes the heads beside `out`: `<out>.heads.json`.
pub fn heads_path(out: &Path) -> std::path::PathBuf {
    let mut p = out.as_os_str().to_owned();
    p.push(".heads.json");
    std::path::PathBuf::from(p)
}

/// The heads of `model` that the exported weights cannot carry, as JSON for the file beside
/// them: per head (in manifest order; a multi-head model's `head<i>`), its kind, its classes
/// (label ids) and, for a text head, the frozen class embeddings (unit-norm rows of the class
/// ids it scores) and the rule `logits = 100 * cos(output, embedding)`; plus the class names
/// and the preprocessing; the stop (`stop_cut` of `output_cut` cut segments: a multi-head model
/// runs its `trunk.` network's segments `0..stop_cut`, then each head network's from
/// `stop_cut` on; `tools/run_export.py` does so in PyTorch).
///
/// # Errors
/// [`ImportError`] for an unreadable model.
pub fn heads_json(model: &Path) -> Result<serde_json::Value, ImportError> {
    let dir = crate::checkpoint::model_dir(model);
    let m = crate::checkpoint::read_manifest(&dir)?;
    let heads: Vec<serde_json::Value> = m
        .heads
        .iter()
        .enumerate()
        .map(|(i, h)| {
            let prefix = if m.heads.len() > 1 {
                format!("head{i}.")
            } else {
                String::new()
            };
            match &h.head {
                crate::models::head::HeadSpec::Text {
                    dim, embeddings, ..
                } => serde_json::json!({
                    "weights_prefix": prefix,
                    "kind": "text",
                    "classes": h.classes,
                    "embedding_dim": dim,
                    "logits": "100 * cos(network output, embeddings[c]) for each class c of `classes`",
                    "embeddings": h.classes.iter().map(|&c| embeddings.get(c).cloned().unwrap_or_default()).collect::<Vec<_>>(),
                }),
                crate::models::head::HeadSpec::Linear => serde_json::json!({
                    "weights_prefix": prefix,
                    "kind": "linear",
                    "classes": h.classes,
                    "logits": "the network output, one column per class of `classes`",
                }),
            }
        })
        .collect();
    let prep = m.prep();
    Ok(serde_json::json!({
        "format": "zipmerge-heads-1",
        "arch": m.arch.to_string(),
        "width": m.width,
        "stop": m.stop,
        "stop_cut": m.stop_cut,
        "output_cut": m.arch.output_cut(),
        "preprocess": prep,
        "class_names": m.class_names,
        "heads": heads,
    }))
}

/// [`export`], then the bytes written to the file `out` (atomically; a non-regular file is
/// never replaced, [`crate::util::write_atomic`]), and its [`heads_json`] beside it
/// (`<out>.heads.json`). Returns the bytes of the weights and the heads file.
///
/// # Errors
/// As [`export`]; [`ImportError::Write`] naming `out`.
pub fn export_to(
    model: &Path,
    layout: Option<&str>,
    out: &Path,
) -> Result<(usize, std::path::PathBuf), ImportError> {
    let bytes = export(model, layout)?;
    let heads = heads_json(model)?;
    let side = heads_path(out);
    let write_err = |path: &Path, e: String| ImportError::Write {
        path: path.display().to_string(),
        msg: e,
    };
    let text = serde_json::to_vec_pretty(&heads).map_err(|e| write_err(&side, e.to_string()))?;
    crate::util::write_atomic(out, &bytes).map_err(|e| write_err(out, e.to_string()))?;
    crate::util::write_atomic(&side, &text).map_err(|e| write_err(&side, e.to_string()))?;
    Ok((bytes.len(), side))
}
