//! Rust core of grao-pipe.
//!
//! The kernels ([`groups`], [`advantages`], [`packing`], [`microbatch`], [`splice`]) are plain Rust over
//! slices and have no Python dependency, so `cargo test` exercises them without linking
//! Python. The thin PyO3 bindings in `python.rs` (cargo feature `python`, turned on by
//! maturin) move Arrow arrays in and out through the Arrow PyCapsule interface and validate
//! every input before a kernel runs; the micro-batches go out as buffers numpy views in place.

// Input problems must become Python exceptions, never panics.
#![cfg_attr(not(test), deny(clippy::unwrap_used, clippy::expect_used))]

pub mod advantages;
pub mod bitmap;
pub mod groups;
pub mod mem;
pub mod microbatch;
pub mod packing;
pub mod pool;
pub mod rules;
pub mod splice;

#[cfg(feature = "python")]
mod python;
