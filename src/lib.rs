//! zipmerge: merge vision networks trained from different initializations on different tasks
//! into one network without training — ZipIt! (Stoica et al., ICLR 2024, arXiv 2305.03053) and
//! its baselines (weight averaging, Permute, Git Re-Basin weight matching).
//!
//! Data flows one way: checkpoints + probe images -> [`collect`] (feature statistics) ->
//! [`matching`] (merge/unmerge matrices per feature space) -> [`rewrite`] (merged weights, BN
//! reset) -> [`eval`] (joint/task accuracy). Architectures are described as data in [`spec`].
//! The top-level operations live in [`ops`], one file each: [`ops::merge::run`] runs the whole
//! pipeline for one merge (replayable from its [`merge::Recipe`]), [`ops::sweep`],
//! [`ops::grid`], [`ops::table1`] and [`ops::tasks`] the sweeps and tables, [`ops::train`]
//! training; each reports progress to a [`progress::Observer`] and returns a serde report.
//!
//! Merging the shipped ResNet-20 pair with ZipIt! on the embedded CIFAR-10 sample:
//!
//! ```
//! use zipmerge::merge::{MergePlan, Method};
//! use zipmerge::ops::merge::run;
//!
//! let models = ["models/cifar10-5+5/resnet20x1-a", "models/cifar10-5+5/resnet20x1-b"].map(Into::into);
//! let zipit = Method::Zipit { alpha: 0.3, beta: 0.125 };
//! let mut plan = MergePlan::new(&models, zipit, "datasets/cifar10-sample".as_ref());
//! plan.settings.probe_images = Some(100);
//! plan.settings.bn_reset_images = Some(100);
//! let outcome = run(&plan, &mut zipmerge::progress::Silent)?;
//! let accuracy = outcome.report.accuracy.as_ref().expect("evaluated");
//! assert!(accuracy.joint > 10.0, "joint accuracy {:.1}%", accuracy.joint);
//! # Ok::<(), zipmerge::error::MergeError>(())
//! ```
#![warn(missing_docs)]

pub mod backend;
pub mod checkpoint;
pub mod collect;
pub mod correct;
pub mod data;
pub mod distill;
pub mod engine;
pub mod error;
pub mod eval;
pub mod experiments;
pub mod matching;
pub mod merge;
pub mod models;
pub mod ops;
pub mod progress;
pub mod provenance;
pub mod rewrite;
pub mod search;
pub mod spec;
pub mod state;
pub mod system;
pub mod taskvec;
pub mod train;
pub mod util;
