//! Searches over merge recipes (issue 26's `zipmerge evolve`): so far the optimiser,
//! [`cmaes`], a pure ask/tell CMA-ES with no zipmerge type in it.

pub mod cmaes;
