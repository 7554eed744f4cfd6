//! Compiling a multi-head [`System`] for the CPU engine (one program per network).

use crate::engine::CpuSystem;
use crate::error::ModelError;

use super::System;

impl System {
    /// Compiles the trunk and every head for the CPU engine.
    ///
    /// # Errors
    /// As [`crate::models::Net::compile`].
    pub fn compile(&self) -> Result<CpuSystem, ModelError> {
        Ok(CpuSystem::new(
            self.trunk.compile()?,
            self.heads
                .iter()
                .map(|h| h.net.as_ref().map(crate::models::Net::compile).transpose())
                .collect::<Result<_, _>>()?,
            self.stop_cut,
            self.trunk.output_cut(),
        ))
    }
}
