//! Searches over merge recipes (`zipmerge evolve`, [`crate::ops::evolve`]): the optimiser
//! ([`cmaes`], a pure ask/tell CMA-ES with no zipmerge type in it) and the genome
//! ([`genome`]: which knobs of a merge a vector of genes sets).

pub mod cmaes;
pub mod genome;
