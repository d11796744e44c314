//! The fuzz targets' bodies live in `tests/common/fuzzing.rs`, shared with
//! the corpus replay in `tests/reliability.rs`; the binaries in
//! `fuzz_targets/` only hand libFuzzer's input to them.

#![forbid(unsafe_code)]

#[path = "../../tests/common/fuzzing.rs"]
mod fuzzing;

pub use fuzzing::*;
