//! zipmerge: merge vision networks trained from different initializations on different tasks
//! into one network without training — ZipIt! (Stoica et al., ICLR 2024, arXiv 2305.03053) and
//! its baselines (weight averaging, Permute, Git Re-Basin weight matching).
//!
//! Data flows one way: checkpoints + probe images -> [`collect`] (feature statistics) ->
//! [`matching`] (merge/unmerge matrices per feature space) -> [`rewrite`] (merged weights, BN
//! reset) -> [`eval`] (joint/task accuracy). Architectures are described as data in [`spec`].
#![warn(missing_docs)]

pub mod backend;
pub mod checkpoint;
pub mod collect;
pub mod correct;
pub mod data;
pub mod engine;
pub mod error;
pub mod eval;
pub mod experiments;
pub mod matching;
pub mod merge;
pub mod models;
pub mod rewrite;
pub mod spec;
pub mod train;
pub mod util;

pub use models::system;
