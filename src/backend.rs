//! Run-time backend selection (burn 0.22 picks the backend by device): `flex` (pure-Rust CPU,
//! default), `ndarray` (deprecated CPU backend, kept selectable) and `wgpu` (Vulkan/Metal/DX12
//! GPUs of any vendor; `--device cpu` selects a software adapter such as Mesa lavapipe).

use std::fmt;
use std::str::FromStr;

use burn::tensor::Device;
use serde::{Deserialize, Serialize};

/// A compute backend.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum Backend {
    /// burn-flex (CPU, SIMD + rayon).
    #[default]
    Flex,
    /// burn-ndarray (CPU; conv backward ~35x slower than flex).
    Ndarray,
    /// burn-wgpu (GPU through Vulkan/Metal/DX12).
    Wgpu,
}

impl fmt::Display for Backend {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Backend::Flex => "flex",
            Backend::Ndarray => "ndarray",
            Backend::Wgpu => "wgpu",
        })
    }
}

impl FromStr for Backend {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "flex" => Ok(Backend::Flex),
            "ndarray" => Ok(Backend::Ndarray),
            "wgpu" => Ok(Backend::Wgpu),
            o => Err(format!(
                "unknown backend `{o}`: expected flex, ndarray or wgpu"
            )),
        }
    }
}

/// Which wgpu adapter to use: `None` = the best one wgpu finds, `Some("cpu")` = a CPU
/// (software) adapter, `Some("N")` = discrete GPU number N.
///
/// # Errors
/// A message naming the option when the backend was built without support or `device` is not
/// understood.
pub fn device(backend: Backend, device: Option<&str>) -> Result<Device, String> {
    match backend {
        Backend::Flex => Ok(Device::flex()),
        #[cfg(feature = "ndarray")]
        #[allow(deprecated)]
        Backend::Ndarray => Ok(Device::ndarray()),
        #[cfg(not(feature = "ndarray"))]
        Backend::Ndarray => Err(
            "--backend ndarray: this build has no ndarray support (cargo feature `ndarray`)".into(),
        ),
        #[cfg(feature = "wgpu")]
        Backend::Wgpu => {
            use burn::tensor::DeviceKind;
            let kind = match device {
                None => DeviceKind::DefaultDevice,
                Some("cpu") => DeviceKind::Cpu,
                Some(n) => DeviceKind::DiscreteGpu(
                    n.parse()
                        .map_err(|_| format!("--device `{n}`: expected a GPU number or `cpu`"))?,
                ),
            };
            Ok(Device::wgpu(kind))
        }
        #[cfg(not(feature = "wgpu"))]
        Backend::Wgpu => {
            Err("--backend wgpu: this build has no wgpu support (cargo feature `wgpu`)".into())
        }
    }
}
