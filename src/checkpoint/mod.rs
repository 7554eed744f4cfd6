//! Checkpoints: a folder holding `manifest.json` and one or more `.safetensors` weight files in
//! PyTorch layout. A single model has one weight file; a partially zipped multi-head model has a
//! trunk file and one file per head (reference doc §1.7).

pub mod interop;
pub mod pickle_guard;
pub mod safetensors_io;

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

pub use crate::state::{check_finite, NamedTensor, StateDict};

use crate::data::Preprocess;
use crate::error::{CheckpointError, ModelError};
use crate::models::head::HeadSpec;
use crate::models::{Arch, NetConfig};

/// Manifest format tag.
pub const FORMAT: &str = "zipmerge-model/1";

/// One output head of a model.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct HeadManifest {
    /// Weight file (relative to the folder) holding this head's network (multi-head models); for
    /// a single model, absent: the head is the model's own final layer.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub weights: Option<String>,
    /// The classes (label ids) this head was trained on, in output order for linear heads.
    pub classes: Vec<usize>,
    /// Head kind and its class embeddings.
    pub head: HeadSpec,
}

/// `manifest.json` of a model folder.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct ModelManifest {
    /// Always [`FORMAT`].
    pub format: String,
    /// Architecture.
    pub arch: Arch,
    /// Width multiplier.
    pub width: usize,
    /// Weight file of the whole model (single) or of the shared trunk (multi-head).
    pub weights: String,
    /// Cut index where the heads start: the output cut for a single model; for a multi-head
    /// model the stop point (ResNet-20: 1 = `7/20`, 2 = `13/20`, 3 = `19/20`).
    pub stop_cut: usize,
    /// Stop name (`7/20`, `13/20`, `19/20`, `20/20`), when the model came from a merge.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stop: Option<String>,
    /// The heads: one for a single model, one per source model for a multi-head model.
    pub heads: Vec<HeadManifest>,
    /// Class names in label order, when known.
    #[serde(default)]
    pub class_names: Vec<String>,
    /// Input preprocessing when it differs from the architecture's default
    /// ([`crate::models::Arch::preprocess`]): set by `zipmerge import --mean --std --input-size
    /// --resize`, carried into every model made from this one. Read it with
    /// [`ModelManifest::prep`].
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub preprocess: Option<Preprocess>,
    /// How the weights were produced (training recipe or merge settings).
    #[serde(default)]
    pub provenance: serde_json::Value,
    /// zipmerge version that wrote the folder.
    pub zipmerge_version: String,
}

impl ModelManifest {
    /// Manifest of a single model (one head, weights in `model.safetensors`).
    pub fn single(
        net: &NetConfig,
        classes: Vec<usize>,
        head: HeadSpec,
        class_names: Vec<String>,
        provenance: serde_json::Value,
    ) -> Self {
        Self {
            format: FORMAT.into(),
            arch: net.arch,
            width: net.width,
            weights: "model.safetensors".into(),
            stop_cut: net.output_cut(),
            stop: None,
            heads: vec![HeadManifest {
                weights: None,
                classes,
                head,
            }],
            class_names,
            preprocess: None,
            provenance,
            zipmerge_version: env!("CARGO_PKG_VERSION").into(),
        }
    }

    /// The preprocessing of this model's inputs: the manifest's own, else its architecture's.
    pub fn prep(&self) -> Preprocess {
        self.preprocess.unwrap_or_else(|| self.arch.preprocess())
    }

    /// Network configuration of the trunk (and of every head network).
    pub fn net_config(&self) -> NetConfig {
        let head = &self.heads[0];
        NetConfig {
            arch: self.arch,
            width: self.width,
            out: head.head.net_outputs(head.classes.len()),
        }
    }

    /// Net configuration of head `i`.
    pub fn head_config(&self, i: usize) -> NetConfig {
        let head = &self.heads[i];
        NetConfig {
            arch: self.arch,
            width: self.width,
            out: head.head.net_outputs(head.classes.len()),
        }
    }

    /// True for a model with several heads sharing a trunk.
    pub fn is_multi_head(&self) -> bool {
        self.heads.iter().any(|h| h.weights.is_some())
    }

    /// Every class any head was trained on, sorted.
    pub fn all_classes(&self) -> Vec<usize> {
        let mut c: Vec<usize> = self
            .heads
            .iter()
            .flat_map(|h| h.classes.iter().copied())
            .collect();
        c.sort_unstable();
        c.dedup();
        c
    }
}

/// Resolves a model argument to its folder: a folder holding `manifest.json`, or the manifest
/// itself.
pub fn model_dir(arg: &Path) -> PathBuf {
    if arg.file_name().is_some_and(|n| n == "manifest.json") {
        arg.parent().map(Path::to_path_buf).unwrap_or_default()
    } else {
        arg.to_path_buf()
    }
}

/// Reads and validates `manifest.json` of a model folder.
///
/// # Errors
/// [`ModelError`] naming the file when it is missing, not JSON, or inconsistent.
pub fn read_manifest(dir: &Path) -> Result<ModelManifest, ModelError> {
    let path = dir.join("manifest.json");
    let f = path.display().to_string();
    if !dir.is_dir() {
        let checkpoint = dir.is_file()
            && [".pt", ".pth", ".tar", ".ckpt", ".bin", ".safetensors"]
                .iter()
                .any(|e| dir.to_string_lossy().ends_with(e));
        return Err(CheckpointError::Io {
            file: dir.display().to_string(),
            msg: if checkpoint {
                format!(
                    "is a checkpoint file, not a zipmerge model folder: convert it first with `zipmerge import --from {} --out MODEL_DIR` (add --head text:FILE for a text head)",
                    dir.display()
                )
            } else {
                "no such model folder".into()
            },
        }
        .into());
    }
    let raw = std::fs::read_to_string(&path).map_err(|e| CheckpointError::Io {
        file: f.clone(),
        msg: e.to_string(),
    })?;
    let m: ModelManifest = serde_json::from_str(&raw).map_err(|e| CheckpointError::Format {
        file: f.clone(),
        msg: format!("not a zipmerge manifest ({e})"),
    })?;
    if m.format != FORMAT {
        return Err(CheckpointError::Format {
            file: f,
            msg: format!("format `{}`, expected `{FORMAT}`", m.format),
        }
        .into());
    }
    validate_manifest(&m, &f)?;
    let cfg = NetConfig {
        arch: m.arch,
        width: m.width,
        out: 1,
    };
    let out_cut = cfg.output_cut();
    let with_weights = m.heads.iter().filter(|h| h.weights.is_some()).count();
    let consistent = if with_weights == 0 {
        m.stop_cut == out_cut
    } else {
        with_weights == m.heads.len() && m.stop_cut >= 1 && m.stop_cut < out_cut
    };
    if !consistent {
        let msg = format!(
            "stop_cut {} does not fit {} head(s), {with_weights} with weights (expected {out_cut} for a single model, 1..{} with a weight file per head)",
            m.stop_cut,
            m.heads.len(),
            out_cut - 1
        );
        return Err(CheckpointError::Format {
            file: path.display().to_string(),
            msg,
        }
        .into());
    }
    Ok(m)
}

/// Largest label id + 1 a manifest may name (ImageNet-21k has 21,841 classes).
pub const MAX_LABELS: usize = 100_000;

pub use crate::models::head::MAX_HEAD_DIM;

/// Checks a manifest read from `file` before anything is allocated from its numbers: known
/// format, a valid architecture width, at least one head, every head with classes (distinct, and
/// inside the class table: `class_names` when given, a text head's embedding rows), a text head
/// whose `dim` is sane and whose rows all have `dim` finite values, and weight file names that
/// stay inside the folder ([`check_file_name`]). A manifest is untrusted data.
///
/// # Errors
/// [`CheckpointError::Format`] naming `file` and the field at fault.
pub fn validate_manifest(m: &ModelManifest, file: &str) -> Result<(), CheckpointError> {
    let bad = |msg: String| CheckpointError::Format {
        file: file.to_string(),
        msg,
    };
    if m.heads.is_empty() {
        return Err(bad("lists no heads".into()));
    }
    NetConfig {
        arch: m.arch,
        width: m.width,
        out: 1,
    }
    .check("field `width`")
    .map_err(|e| bad(e.to_string()))?;
    if let Some(p) = &m.preprocess {
        p.validate()
            .map_err(|e| bad(format!("field `preprocess`: {e}")))?;
    }
    let mut names = vec![m.weights.as_str()];
    names.extend(m.heads.iter().filter_map(|h| h.weights.as_deref()));
    for (i, n) in names.iter().enumerate() {
        check_file_name(n).map_err(|e| bad(format!("weight file `{n}`: {e}")))?;
        if names[..i].contains(n) {
            return Err(bad(format!(
                "weight file `{n}` is named twice; expected one file per network"
            )));
        }
    }
    let table = (!m.class_names.is_empty()).then_some(m.class_names.len());
    for (i, h) in m.heads.iter().enumerate() {
        let head = format!("head {i}");
        if h.classes.is_empty() {
            return Err(bad(format!(
                "{head} lists no classes; expected at least one label id"
            )));
        }
        let mut sorted = h.classes.clone();
        sorted.sort_unstable();
        if let Some(w) = sorted.windows(2).find(|w| w[0] == w[1]) {
            return Err(bad(format!("{head} lists class {} twice", w[0])));
        }
        let max = *sorted.last().expect("non-empty");
        if max >= MAX_LABELS {
            return Err(bad(format!(
                "{head}: class id {max} is out of range (expected < {MAX_LABELS})"
            )));
        }
        if let Some(n) = table {
            if max >= n {
                return Err(bad(format!(
                    "{head}: class id {max} is outside the class table (`class_names` has {n} entries)"
                )));
            }
        }
        if let HeadSpec::Text {
            dim, embeddings, ..
        } = &h.head
        {
            if max >= embeddings.len() {
                return Err(bad(format!(
                    "{head}: the text head has {} embedding rows, none for class {max}",
                    embeddings.len()
                )));
            }
            crate::models::head::check_embeddings(*dim, embeddings)
                .map_err(|e| bad(format!("{head}: text head {e}")))?;
        }
    }
    Ok(())
}

/// Checks that a weight file name from a manifest names a file inside its own folder: one plain
/// path component (no `/`, `\\`, `..`, absolute path or drive), ending in `.safetensors`, not
/// hidden. Symlinks are checked when the file is opened ([`read_weights`]).
///
/// # Errors
/// What is wrong with the name, as a phrase.
pub fn check_file_name(name: &str) -> Result<(), String> {
    use std::path::Component;
    let mut comps = Path::new(name).components();
    let plain = matches!(
        (comps.next(), comps.next()),
        (Some(Component::Normal(_)), None)
    ) && !name.contains(['/', '\\', '\0']);
    if !plain {
        return Err(
            "expected a plain file name inside the model folder (no path, `..` or absolute path)"
                .into(),
        );
    }
    if name.starts_with('.') || !name.ends_with(".safetensors") || name.len() > 200 {
        return Err(
            "expected a visible `<name>.safetensors` file name of at most 200 bytes".into(),
        );
    }
    Ok(())
}

/// The weights of a model folder: the manifest, the trunk's state dict and the state dict of
/// every head that has its own network, in head order.
pub struct ModelWeights {
    /// The manifest.
    pub manifest: ModelManifest,
    /// The trunk (`manifest.weights`).
    pub trunk: StateDict,
    /// The heads' networks (the heads with a `weights` file).
    pub heads: Vec<StateDict>,
}

impl ModelWeights {
    /// Reads every weight file `manifest` (read from `dir`, [`read_manifest`]) names.
    ///
    /// # Errors
    /// [`CheckpointError`] naming the weight file that cannot be read or used.
    pub fn read(dir: &Path, manifest: ModelManifest) -> Result<Self, CheckpointError> {
        let trunk = read_weights(dir, &manifest.weights)?;
        let heads = manifest
            .heads
            .iter()
            .filter_map(|h| h.weights.as_ref())
            .map(|f| read_weights(dir, f))
            .collect::<Result<_, _>>()?;
        Ok(Self {
            manifest,
            trunk,
            heads,
        })
    }
}

/// Reads one weight file of a model folder and checks it is finite. The file must be a regular
/// file inside `dir` once symlinks are resolved.
///
/// # Errors
/// [`CheckpointError`] naming the file.
pub fn read_weights(dir: &Path, file: &str) -> Result<StateDict, CheckpointError> {
    let path = dir.join(file);
    let shown = path.display().to_string();
    check_file_name(file).map_err(|msg| CheckpointError::Format {
        file: shown.clone(),
        msg,
    })?;
    let inside = match (std::fs::canonicalize(dir), std::fs::canonicalize(&path)) {
        (Ok(d), Ok(p)) => p.starts_with(&d) && p.is_file(),
        (_, Err(e)) => {
            return Err(CheckpointError::Io {
                file: shown,
                msg: e.to_string(),
            })
        }
        _ => false,
    };
    if !inside {
        return Err(CheckpointError::Format {
            file: shown,
            msg: "resolves outside its model folder or is not a regular file (symlink?); refused"
                .into(),
        });
    }
    let s = safetensors_io::load(&path)?;
    check_finite(&s, &shown)?;
    Ok(s)
}

/// Checks `dir` may receive a model folder: it does not exist, is empty, or is a zipmerge model
/// folder (has `manifest.json`; it is then replaced). Anything else is never overwritten.
///
/// # Errors
/// [`CheckpointError::Io`] naming the folder.
pub fn check_out_dir(dir: &Path) -> Result<(), CheckpointError> {
    let err = |msg: &str| CheckpointError::Io {
        file: dir.display().to_string(),
        msg: msg.into(),
    };
    if !dir.exists() {
        return Ok(());
    }
    if !dir.is_dir() {
        return Err(err(
            "exists and is not a folder; choose another output folder",
        ));
    }
    let empty = std::fs::read_dir(dir)
        .map(|mut d| d.next().is_none())
        .unwrap_or(false);
    if empty || dir.join("manifest.json").is_file() {
        Ok(())
    } else {
        Err(err(
            "exists and is not a zipmerge model folder (no manifest.json); it is left untouched: \
             remove it or choose another output folder",
        ))
    }
}

/// Why an output folder is refused before any work ([`check_out`]). The message names what is
/// wrong with the folder, not the option that gave it (the caller adds that).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum OutRefusal {
    /// The path exists and is a file.
    #[error("exists and is not a folder; choose another folder")]
    NotAFolder,
    /// The path is one of the input model folders.
    #[error("is the input model {}; choose another folder (an input is never replaced)", .0.display())]
    IsInput(PathBuf),
    /// An ancestor of the path is a file, so the folder cannot be created.
    #[error("{} is a file, so the folder cannot be created", .0.display())]
    NotCreatable(PathBuf),
    /// An output file's path exists and is not a regular file (a folder, device node, FIFO or
    /// socket): it is never replaced.
    #[error("exists and is not a regular file ({0}); it is never replaced: choose a file path")]
    NotARegularFile(&'static str),
    /// An output file's path lies inside (or is a file of) the input model folder.
    #[error("lies inside the input model {}; an input is never written: choose a path outside it", .0.display())]
    InsideInput(PathBuf),
}

/// What kind of thing an existing path is, for messages.
fn kind_of(meta: &std::fs::Metadata) -> &'static str {
    #[cfg(unix)]
    {
        use std::os::unix::fs::FileTypeExt;
        let t = meta.file_type();
        if t.is_char_device() {
            return "a character device";
        }
        if t.is_block_device() {
            return "a block device";
        }
        if t.is_fifo() {
            return "a FIFO";
        }
        if t.is_socket() {
            return "a socket";
        }
    }
    if meta.is_dir() {
        "a folder"
    } else {
        "not a regular file"
    }
}

/// Checks an output *file* (`export --out`) before any work: if it exists it is a regular file
/// (after following links; never a folder, device node, FIFO or socket); it is not inside, nor
/// equal to a file of, any input model folder `inputs` (compared after resolving links); and
/// its nearest existing ancestor is a folder. Creates nothing. The write itself then goes
/// through [`crate::util::write_atomic`] (a temporary file beside it, renamed into place).
///
/// # Errors
/// The first [`OutRefusal`] that applies.
pub fn check_out_file(out: &Path, inputs: &[PathBuf]) -> Result<(), OutRefusal> {
    if let Ok(meta) = std::fs::metadata(out) {
        if !meta.is_file() {
            return Err(OutRefusal::NotARegularFile(kind_of(&meta)));
        }
    }
    // the resolved path: the file itself when it exists, else its resolved parent + name
    let resolved = std::fs::canonicalize(out).ok().or_else(|| {
        let parent = out.parent().filter(|p| !p.as_os_str().is_empty());
        let parent = std::fs::canonicalize(parent.unwrap_or(Path::new("."))).ok()?;
        Some(parent.join(out.file_name()?))
    });
    if let Some(r) = resolved {
        for m in inputs {
            if let Ok(dir) = std::fs::canonicalize(model_dir(m)) {
                if r.starts_with(&dir) {
                    return Err(OutRefusal::InsideInput(m.clone()));
                }
            }
        }
    }
    check_creatable(out.parent().unwrap_or(Path::new("")))
}

/// Checks an output folder before any work: it is not an existing file, not one of the input
/// model folders `inputs` (compared after resolving links; an input is never replaced), and its
/// nearest existing ancestor is a folder (so it can be created). Creates nothing.
///
/// # Errors
/// The first [`OutRefusal`] that applies.
pub fn check_out(out: &Path, inputs: &[PathBuf]) -> Result<(), OutRefusal> {
    let canon = |p: &Path| std::fs::canonicalize(p).ok();
    if let Some(o) = canon(out) {
        if let Some(m) = inputs
            .iter()
            .find(|m| canon(&model_dir(m)).is_some_and(|c| c == o))
        {
            return Err(OutRefusal::IsInput(m.clone()));
        }
    }
    if out.exists() && !out.is_dir() {
        return Err(OutRefusal::NotAFolder);
    }
    check_creatable(out)
}

/// Checks that `path` can be created: its nearest existing ancestor (itself included) is a
/// folder. A relative path with no existing ancestor resolves in the working folder and passes.
///
/// # Errors
/// [`OutRefusal::NotCreatable`] naming the ancestor that is a file.
fn check_creatable(path: &Path) -> Result<(), OutRefusal> {
    let mut at = path;
    while !at.as_os_str().is_empty() && !at.exists() {
        at = at.parent().unwrap_or(Path::new(""));
    }
    if !at.as_os_str().is_empty() && !at.is_dir() {
        return Err(OutRefusal::NotCreatable(at.to_path_buf()));
    }
    Ok(())
}

/// Writes a model folder atomically: `manifest.json` plus the given weight files, through a
/// temporary sibling renamed into place, replacing an existing model folder at `dir` (see
/// [`check_out_dir`]).
///
/// # Errors
/// [`CheckpointError`] when `dir` may not be replaced or a file cannot be written.
pub fn write_model(
    dir: &Path,
    manifest: &ModelManifest,
    files: &[(String, &StateDict)],
) -> Result<(), CheckpointError> {
    write_model_with(dir, manifest, files, &[])
}

/// [`write_model`] with extra files (e.g. `report.json`) written into the same atomic folder.
///
/// # Errors
/// As [`write_model`].
pub fn write_model_with(
    dir: &Path,
    manifest: &ModelManifest,
    files: &[(String, &StateDict)],
    extra: &[(String, Vec<u8>)],
) -> Result<(), CheckpointError> {
    check_out_dir(dir)?;
    let io = |e: std::io::Error| CheckpointError::Io {
        file: dir.display().to_string(),
        msg: e.to_string(),
    };
    let json = serde_json::to_vec_pretty(manifest).expect("manifest serialises");
    crate::util::write_dir_atomic(dir, |tmp| -> Result<(), CheckpointError> {
        for (name, state) in files {
            let bytes = safetensors_io::to_bytes(state)?;
            std::fs::write(tmp.join(name), bytes).map_err(io)?;
        }
        for (name, bytes) in extra {
            std::fs::write(tmp.join(name), bytes).map_err(io)?;
        }
        std::fs::write(tmp.join("manifest.json"), &json).map_err(io)?;
        Ok(())
    })
}

impl From<std::io::Error> for CheckpointError {
    fn from(e: std::io::Error) -> Self {
        CheckpointError::Os(e.to_string())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn check_out_refuses_a_file_an_input_and_a_folder_under_a_file() {
        let t = tempfile::tempdir().unwrap();
        let (model, file) = (t.path().join("model"), t.path().join("file"));
        std::fs::create_dir(&model).unwrap();
        std::fs::write(model.join("manifest.json"), "{}").unwrap();
        std::fs::write(&file, "x").unwrap();
        let inputs = [model.join("manifest.json")];
        assert_eq!(
            check_out(&model, &inputs),
            Err(OutRefusal::IsInput(inputs[0].clone()))
        );
        assert_eq!(check_out(&file, &[]), Err(OutRefusal::NotAFolder));
        assert_eq!(
            check_out(&file.join("a/b"), &[]),
            Err(OutRefusal::NotCreatable(file.clone()))
        );
        // a new folder, an existing folder that is not an input, and a relative new path pass
        assert_eq!(check_out(&t.path().join("new/deeper"), &inputs), Ok(()));
        assert_eq!(check_out(&model, &[]), Ok(()));
        assert_eq!(check_out(Path::new("no-such-folder-here"), &inputs), Ok(()));
    }

    #[test]
    fn check_out_file_refuses_folders_devices_inputs_and_files_under_files() {
        let t = tempfile::tempdir().unwrap();
        let (model, file) = (t.path().join("model"), t.path().join("file"));
        std::fs::create_dir(&model).unwrap();
        std::fs::write(model.join("manifest.json"), "{}").unwrap();
        std::fs::write(&file, "x").unwrap();
        let inputs = [model.clone()];
        let inside = |p: &Path| check_out_file(p, &inputs);
        assert_eq!(
            inside(&model.join("manifest.json")),
            Err(OutRefusal::InsideInput(model.clone()))
        );
        assert_eq!(
            inside(&model.join("new.safetensors")),
            Err(OutRefusal::InsideInput(model.clone()))
        );
        assert_eq!(inside(&model), Err(OutRefusal::NotARegularFile("a folder")));
        assert_eq!(
            inside(Path::new("/dev/null")),
            Err(OutRefusal::NotARegularFile("a character device"))
        );
        assert_eq!(
            inside(&file.join("x.safetensors")),
            Err(OutRefusal::NotCreatable(file.clone()))
        );
        // an existing regular file, a new file in a new folder pass
        assert_eq!(inside(&file), Ok(()));
        assert_eq!(inside(&t.path().join("new/out.safetensors")), Ok(()));
    }
}
