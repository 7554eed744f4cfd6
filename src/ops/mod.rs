//! The top-level operations, one file each, as cargo's `ops/`: each takes plain inputs (a plan
//! or the paths and options of its command), runs the steps of the library below it, and
//! returns what it did as a report; `src/cli/*_cmd.rs` parses, calls one of them and prints.
//! Nothing below imports this layer.

pub mod bench;
pub mod bench_train;
pub mod bn_reset;
pub mod distill;
pub mod eval;
pub mod evolve;
pub mod grid;
pub mod inspect;
pub mod interop;
pub mod interpolate;
pub mod match_matrix;
pub mod merge;
pub mod predict;
pub mod sweep;
pub mod table1;
pub mod task_vectors;
pub mod tasks;
pub mod train;
