//! Moving weights between burn modules and a PyTorch-layout [`StateDict`].
//!
//! burn stores `Linear.weight` as `[in, out]` and names BN vectors `gamma`/`beta`; PyTorch uses
//! `[out, in]` and `weight`/`bias`: this file handles those two differences for every
//! architecture. The module-path differences of one architecture (a ResNet's `shortcut.conv` /
//! `downsample.bn` struct fields against PyTorch's Sequential `shortcut.0` / `downsample.1`,
//! VGG-11's `features.{0..8}` against `features.{0,3,6,8,11,13,16,18}`) live in its model file,
//! as [`super::arch::Architecture::torch_path`], with [`rename_child`] and [`conv_bn_index`].

use burn::module::{Module, ModuleMapper, ModuleVisitor, Param};
use burn::tensor::{Tensor, TensorData};

use crate::state::{NamedTensor, StateDict};

/// An architecture's rewrite of a burn parameter path into its PyTorch module path, in place
/// ([`super::arch::Architecture::torch_path`]).
pub type Rename<'a> = &'a dyn Fn(&mut [String]);

/// Renames the component after every `field` in `path` by `to` (when it gives a name): a burn
/// struct field or `Vec` index under `field` to the PyTorch Sequential index.
pub fn rename_child(path: &mut [String], field: &str, to: impl Fn(&str) -> Option<String>) {
    for i in 1..path.len() {
        if path[i - 1] == field {
            if let Some(n) = to(&path[i]) {
                path[i] = n;
            }
        }
    }
}

/// The PyTorch index of a conv + BN pair held as a struct here and as `Sequential(conv, bn)`
/// there (a ResNet shortcut or downsample): `conv` -> `0`, `bn` -> `1`.
pub fn conv_bn_index(field: &str) -> Option<String> {
    match field {
        "conv" => Some("0".into()),
        "bn" => Some("1".into()),
        _ => None,
    }
}

/// PyTorch name of a burn parameter path (enum variant names already removed), with the
/// architecture's module-path rewrite `rename`.
pub fn torch_name(path: &[String], rename: Rename<'_>) -> String {
    let mut parts: Vec<String> = path.to_vec();
    rename(&mut parts);
    if let Some(last) = parts.last_mut() {
        *last = match last.as_str() {
            "gamma" => "weight".into(),
            "beta" => "bias".into(),
            o => o.into(),
        };
    }
    parts.join(".")
}

/// The transpose of the row-major `[r, c]` matrix `m`, as row-major `[c, r]` (a linear layer's
/// weight between burn's `[in, out]` and PyTorch's `[out, in]`).
fn transpose(m: &[f32], r: usize, c: usize) -> Vec<f32> {
    let mut t = vec![0.0; r * c];
    for i in 0..r {
        for j in 0..c {
            t[j * r + i] = m[i * c + j];
        }
    }
    t
}

struct PathStack {
    stack: Vec<(String, bool)>,
}

impl PathStack {
    fn enter(&mut self, name: &str, container: &str) {
        self.stack
            .push((name.to_string(), container.starts_with("Enum:")));
    }
    fn exit(&mut self) {
        self.stack.pop();
    }
    fn path(&self) -> Vec<String> {
        self.stack
            .iter()
            .filter(|(_, e)| !e)
            .map(|(n, _)| n.clone())
            .collect()
    }
}

struct Collector<'a> {
    path: PathStack,
    out: StateDict,
    rename: Rename<'a>,
}

impl ModuleVisitor for Collector<'_> {
    fn enter_module(&mut self, name: &str, container_type: &str) {
        self.path.enter(name, container_type);
    }
    fn exit_module(&mut self, _name: &str, _container_type: &str) {
        self.path.exit();
    }
    fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<D>>) {
        let t = param.val();
        let shape = t.dims().to_vec();
        let data = t
            .into_data()
            .convert::<f32>()
            .try_to_vec::<f32>()
            .expect("f32 data");
        let nt = if D == 2 {
            // burn Linear [in, out] -> PyTorch [out, in]
            let (r, c) = (shape[0], shape[1]);
            NamedTensor::new(vec![c, r], transpose(&data, r, c))
        } else {
            NamedTensor::new(shape, data)
        };
        self.out
            .insert(torch_name(&self.path.path(), self.rename), nt);
    }
}

/// Reads every float parameter and buffer of `module` into a PyTorch-layout [`StateDict`],
/// named with the architecture's `rename`.
pub fn to_state<M: Module>(module: &M, rename: Rename<'_>) -> StateDict {
    let mut c = Collector {
        path: PathStack { stack: vec![] },
        out: StateDict::new(),
        rename,
    };
    module.visit(&mut c);
    c.out
}

struct Loader<'a> {
    path: PathStack,
    state: &'a StateDict,
    missing: Vec<String>,
    mismatched: Vec<(String, Vec<usize>, Vec<usize>)>,
    seen: std::collections::BTreeSet<String>,
    rename: Rename<'a>,
}

impl ModuleMapper for Loader<'_> {
    fn enter_module(&mut self, name: &str, container_type: &str) {
        self.path.enter(name, container_type);
    }
    fn exit_module(&mut self, _name: &str, _container_type: &str) {
        self.path.exit();
    }
    fn map_float<const D: usize>(&mut self, param: Param<Tensor<D>>) -> Param<Tensor<D>> {
        let name = torch_name(&self.path.path(), self.rename);
        self.seen.insert(name.clone());
        let Some(src) = self.state.get(&name) else {
            self.missing.push(name);
            return param;
        };
        let cur = param.val();
        let dims = cur.dims();
        let expected: Vec<usize> = if D == 2 {
            vec![dims[1], dims[0]]
        } else {
            dims.to_vec()
        };
        if src.shape != expected {
            self.mismatched.push((name, expected, src.shape.clone()));
            return param;
        }
        let device = cur.device();
        let data = if D == 2 {
            transpose(&src.data, src.shape[0], src.shape[1]) // PyTorch [out, in] -> burn [in, out]
        } else {
            src.data.clone()
        };
        let t = Tensor::<D>::from_data(TensorData::new(data, dims), &device);
        param.map(|old| {
            let rg = old.is_require_grad();
            let t = t.clone();
            if rg {
                t.require_grad()
            } else {
                t
            }
        })
    }
}

/// Problems found when loading a [`StateDict`] into a module.
#[derive(Debug, Default)]
pub struct LoadReport {
    /// Module parameters with no entry in the state dict (PyTorch names).
    pub missing: Vec<String>,
    /// `(name, expected shape, found shape)`.
    pub mismatched: Vec<(String, Vec<usize>, Vec<usize>)>,
    /// State-dict entries the module has no parameter for.
    pub unused: Vec<String>,
}

impl LoadReport {
    /// True when every parameter was loaded and every entry used.
    pub fn is_clean(&self) -> bool {
        self.missing.is_empty() && self.mismatched.is_empty() && self.unused.is_empty()
    }
}

/// Loads `state` into `module` (names by the architecture's `rename`), returning the module and
/// what did not fit.
pub fn load_state<M: Module>(module: M, state: &StateDict, rename: Rename<'_>) -> (M, LoadReport) {
    let mut l = Loader {
        rename,
        path: PathStack { stack: vec![] },
        state,
        missing: vec![],
        mismatched: vec![],
        seen: Default::default(),
    };
    let module = module.map(&mut l);
    let unused = state
        .keys()
        .filter(|k| !l.seen.contains(*k))
        .cloned()
        .collect();
    (
        module,
        LoadReport {
            missing: l.missing,
            mismatched: l.mismatched,
            unused,
        },
    )
}
