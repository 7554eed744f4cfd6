//! Run-time backend selection (burn 0.22 picks the backend by device): `flex` (pure-Rust CPU,
//! default), `ndarray` (deprecated CPU backend, kept selectable), `wgpu` (Vulkan/Metal/DX12
//! GPUs of any vendor; `--device cpu` selects a software adapter such as Mesa lavapipe) and
//! `cuda` (NVIDIA GPUs through CubeCL's CUDA runtime, cargo feature `cuda`: the driver and NVRTC
//! are loaded at run time, so the build needs no CUDA toolkit).

use crate::error::BackendError;
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
    /// burn-cuda (NVIDIA GPU through CubeCL's CUDA runtime; cargo feature `cuda`).
    Cuda,
}

impl fmt::Display for Backend {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Backend::Flex => "flex",
            Backend::Ndarray => "ndarray",
            Backend::Wgpu => "wgpu",
            Backend::Cuda => "cuda",
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
            "cuda" => Ok(Backend::Cuda),
            o => Err(format!(
                "unknown backend `{o}`: expected flex, ndarray, wgpu or cuda"
            )),
        }
    }
}

/// Names of the wgpu adapters this machine offers (`name (type T, backend B)`), empty when none.
/// Only wgpu's primary backends (Vulkan, Metal, DX12) are asked: the GL backend, which burn does
/// not use, prints driver messages (`error: XDG_RUNTIME_DIR is invalid ...`) on stderr.
#[cfg(feature = "wgpu")]
pub fn wgpu_adapters() -> Vec<String> {
    let mut desc = wgpu::InstanceDescriptor::new_without_display_handle();
    desc.backends = wgpu::Backends::PRIMARY;
    let instance = wgpu::Instance::new(desc);
    let adapters = block_on(instance.enumerate_adapters(wgpu::Backends::PRIMARY));
    adapters
        .iter()
        .map(|a| {
            let i = a.get_info();
            format!(
                "{} (type {:?}, backend {:?})",
                i.name, i.device_type, i.backend
            )
        })
        .collect()
}

/// Polls a future that completes without waiting (wgpu's native adapter enumeration).
#[cfg(feature = "wgpu")]
fn block_on<F: std::future::Future>(f: F) -> F::Output {
    let mut f = std::pin::pin!(f);
    let mut cx = std::task::Context::from_waker(std::task::Waker::noop());
    loop {
        if let std::task::Poll::Ready(v) = f.as_mut().poll(&mut cx) {
            return v;
        }
        std::thread::yield_now();
    }
}

/// One line describing the device [`device`] gives for `backend` and `device`: for wgpu, the
/// adapter asked for and the adapters this machine offers; `None` for the CPU backends (one
/// device each).
pub fn describe(backend: Backend, device: Option<&str>) -> Option<String> {
    #[cfg(feature = "wgpu")]
    if backend == Backend::Wgpu {
        let adapters = wgpu_adapters();
        return Some(format!(
            "backend: wgpu, device {} ({} adapter(s): {})",
            device.unwrap_or("default (high-performance preferred)"),
            adapters.len(),
            adapters.join("; ")
        ));
    }
    let _ = (backend, device);
    None
}

/// Which wgpu adapter to use: `None` = the best one wgpu finds, `Some("cpu")` = a CPU
/// (software) adapter, `Some("N")` = discrete GPU number N.
///
/// # Errors
/// [`BackendError`] when the backend was built without support, there is no such adapter or
/// `device` is not understood.
pub fn device(backend: Backend, device: Option<&str>) -> Result<Device, BackendError> {
    if !matches!(backend, Backend::Wgpu | Backend::Cuda) {
        if let Some(d) = device {
            return Err(BackendError::DeviceWithoutWgpu {
                device: d.to_string(),
                backend: backend.to_string(),
            });
        }
    }
    match backend {
        Backend::Flex => Ok(Device::flex()),
        #[cfg(feature = "ndarray")]
        #[allow(deprecated)]
        Backend::Ndarray => Ok(Device::ndarray()),
        #[cfg(not(feature = "ndarray"))]
        Backend::Ndarray => Err(BackendError::NotBuilt { backend: "ndarray" }),
        #[cfg(feature = "wgpu")]
        Backend::Wgpu => {
            use burn::tensor::DeviceKind;
            let adapters = wgpu_adapters();
            if adapters.is_empty() {
                return Err(BackendError::NoAdapter);
            }
            if device == Some("cpu") && !adapters.iter().any(|a| a.contains("type Cpu")) {
                return Err(BackendError::NoCpuAdapter {
                    found: adapters.join("; "),
                });
            }
            let kind = match device {
                None => DeviceKind::DefaultDevice,
                Some("cpu") => DeviceKind::Cpu,
                Some(n) => {
                    let i: usize = n.parse().map_err(|_| BackendError::BadDevice {
                        given: n.to_string(),
                    })?;
                    // cubecl panics on a missing adapter: check the list first
                    let discrete = adapters
                        .iter()
                        .filter(|a| a.contains("type DiscreteGpu"))
                        .count();
                    if i >= discrete {
                        return Err(BackendError::NoSuchGpu {
                            index: i,
                            discrete,
                            found: adapters.join("; "),
                        });
                    }
                    DeviceKind::DiscreteGpu(i)
                }
            };
            Ok(Device::wgpu(kind))
        }
        #[cfg(not(feature = "wgpu"))]
        Backend::Wgpu => Err(BackendError::NotBuilt { backend: "wgpu" }),
        #[cfg(feature = "cuda")]
        Backend::Cuda => {
            let index = match device {
                None => 0,
                Some(n) => n.parse::<usize>().map_err(|_| BackendError::BadDevice {
                    given: n.to_string(),
                })?,
            };
            Ok(Device::cuda(index))
        }
        #[cfg(not(feature = "cuda"))]
        Backend::Cuda => Err(BackendError::NotBuilt { backend: "cuda" }),
    }
}
