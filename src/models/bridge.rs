//! Moving weights between burn modules and a PyTorch-layout [`StateDict`].
//!
//! burn stores `Linear.weight` as `[in, out]` and names BN vectors `gamma`/`beta`; PyTorch uses
//! `[out, in]` and `weight`/`bias`. The ResNet shortcut is a struct here (`shortcut.conv`,
//! `shortcut.bn`) and a Sequential in PyTorch (`shortcut.0`, `shortcut.1`), likewise ResNet-50's
//! `downsample` (`downsample.0`, `downsample.1`); VGG's convs are
//! `features.{0..8}` here and `features.{0,3,6,8,11,13,16,18}` in PyTorch. This file is the only
//! place those differences are handled.

use burn::module::{Module, ModuleMapper, ModuleVisitor, Param};
use burn::tensor::{Tensor, TensorData};

use super::vgg11::VGG11_TORCH_INDEX;
use crate::state::{NamedTensor, StateDict};

/// PyTorch name of a burn parameter path (enum variant names already removed).
pub fn torch_name(path: &[String]) -> String {
    let mut parts: Vec<String> = path.to_vec();
    for i in 0..parts.len() {
        if (parts[i] == "shortcut" || parts[i] == "downsample") && i + 1 < parts.len() {
            parts[i + 1] = match parts[i + 1].as_str() {
                "conv" => "0".into(),
                "bn" => "1".into(),
                o => o.into(),
            };
        }
        if parts[i] == "features" && i + 1 < parts.len() {
            if let Ok(k) = parts[i + 1].parse::<usize>() {
                if k < VGG11_TORCH_INDEX.len() {
                    parts[i + 1] = VGG11_TORCH_INDEX[k].to_string();
                }
            }
        }
    }
    if let Some(last) = parts.last_mut() {
        *last = match last.as_str() {
            "gamma" => "weight".into(),
            "beta" => "bias".into(),
            o => o.into(),
        };
    }
    parts.join(".")
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

struct Collector {
    path: PathStack,
    out: StateDict,
}

impl ModuleVisitor for Collector {
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
            let mut tr = vec![0.0; r * c];
            for i in 0..r {
                for j in 0..c {
                    tr[j * r + i] = data[i * c + j];
                }
            }
            NamedTensor::new(vec![c, r], tr)
        } else {
            NamedTensor::new(shape, data)
        };
        self.out.insert(torch_name(&self.path.path()), nt);
    }
}

/// Reads every float parameter and buffer of `module` into a PyTorch-layout [`StateDict`].
pub fn to_state<M: Module>(module: &M) -> StateDict {
    let mut c = Collector {
        path: PathStack { stack: vec![] },
        out: StateDict::new(),
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
}

impl ModuleMapper for Loader<'_> {
    fn enter_module(&mut self, name: &str, container_type: &str) {
        self.path.enter(name, container_type);
    }
    fn exit_module(&mut self, _name: &str, _container_type: &str) {
        self.path.exit();
    }
    fn map_float<const D: usize>(&mut self, param: Param<Tensor<D>>) -> Param<Tensor<D>> {
        let name = torch_name(&self.path.path());
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
            let (r, c) = (src.shape[0], src.shape[1]); // [out, in]
            let mut tr = vec![0.0; r * c];
            for i in 0..r {
                for j in 0..c {
                    tr[j * r + i] = src.data[i * c + j];
                }
            }
            tr
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

/// Loads `state` into `module`, returning the module and what did not fit.
pub fn load_state<M: Module>(module: M, state: &StateDict) -> (M, LoadReport) {
    let mut l = Loader {
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
