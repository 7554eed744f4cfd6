//! Compiling a network for the CPU engine: each architecture lays out its program
//! ([`super::arch::Architecture::program`]) from weights by PyTorch name, and the engine runs it.
//! This step sits above both, so the engine stays a leaf runtime that knows no architecture.

use crate::engine::{CpuNet, ProgramBuilder};
use crate::error::ModelError;
use crate::state::StateDict;

use super::{Arch, Net};

/// Compiles the weights `s` of an `arch` network (no burn module is built).
///
/// # Errors
/// [`ModelError::Weights`] naming the tensor when a weight the architecture needs is missing or
/// mis-shaped.
pub fn compile_state(arch: Arch, s: &StateDict) -> Result<CpuNet, ModelError> {
    let cuts = arch.def().program(&ProgramBuilder::new(s))?;
    Ok(CpuNet::new(arch.to_string(), cuts))
}

impl Net {
    /// Compiles this network for the CPU engine (from its weights).
    ///
    /// # Errors
    /// As [`compile_state`] (cannot happen for a `Net` built by [`Net::from_state`]).
    pub fn compile(&self) -> Result<CpuNet, ModelError> {
        compile_state(self.arch(), &self.to_state())
    }
}
