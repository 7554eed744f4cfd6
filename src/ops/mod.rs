//! The top-level operations, one file each, as cargo's `ops/`: each takes plain inputs (a plan
//! or the paths and options of its command), runs the steps of the library below it, and
//! returns what it did as a report; `src/cli/*_cmd.rs` parses, calls one of them and prints.
//! Nothing below imports this layer.

pub mod bn_reset;
