//! The forward path, chosen once: the CPU engine ([`crate::engine`], NHWC kernels, flex device
//! only) or burn's own forward on the device. A plan carries a [`Runner`]; the statistics, the
//! BN reset, the evaluation and the benchmark ask it instead of deciding again, and the choice
//! is made at the edge (the CLI reads `ZIPMERGE_ENGINE=burn` once and passes `engine: false`),
//! never from the environment inside the library.

use burn::tensor::Device;

/// A device and the forward path used on it. Dereferences to the [`Device`] (burn tensors,
/// the burn path, outputs) so code that only needs the device takes `&Device`.
#[derive(Clone, Debug, PartialEq)]
pub struct Runner {
    device: Device,
    engine: bool,
}

impl Runner {
    /// The path for `device`: the CPU engine when `engine` is asked and the device is the CPU
    /// (flex), burn otherwise (the engine has no GPU kernels).
    pub fn new(device: Device, engine: bool) -> Self {
        let engine = engine && device == Device::flex();
        Self { device, engine }
    }

    /// The CPU (flex device) through the engine: the default of every plan.
    pub fn cpu() -> Self {
        Self::new(Device::flex(), true)
    }

    /// Whether networks run on the CPU engine (else through burn on [`Runner::device`]).
    pub fn engine(&self) -> bool {
        self.engine
    }

    /// The device.
    pub fn device(&self) -> &Device {
        &self.device
    }

    /// Name of the path for reports: `engine` or `burn`.
    pub fn path_name(&self) -> &'static str {
        if self.engine {
            "engine"
        } else {
            "burn"
        }
    }
}

impl std::ops::Deref for Runner {
    type Target = Device;

    fn deref(&self) -> &Device {
        &self.device
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The engine runs only on the CPU device, and only when asked.
    #[test]
    fn engine_only_on_the_cpu_and_when_asked() {
        assert!(Runner::cpu().engine());
        assert!(!Runner::new(Device::flex(), false).engine());
        assert_eq!(*Runner::cpu().device(), Device::flex());
    }
}
