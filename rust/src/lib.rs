//! Rust core of grao-pipe.
//!
//! The kernels ([`groups`], [`advantages`], [`packing`], [`microbatch`], [`splice`], [`rules`])
//! are plain Rust over slices and have no Python dependency, so `cargo test` exercises them
//! without linking Python. Each has its PyO3 binding beside it (`advantages/py.rs`, ...; cargo
//! feature `python`, turned on by maturin), which moves Arrow arrays in and out through the
//! Arrow PyCapsule interface (shared glue: `py.rs`) and validates every input before the kernel
//! runs; the micro-batches go out as typed classes of buffers numpy views in place. This file
//! only declares the modules and registers the Python module `_native`.

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
mod py;

/// Rust core of grao-pipe: GRAO group advantages, token-budget packing, the learner's
/// micro-batches over Arrow arrays, Parquet column splicing and the built-in reward rule.
#[cfg(feature = "python")]
#[pyo3::pymodule]
#[pyo3(name = "_native")]
fn native(m: &pyo3::Bound<'_, pyo3::types::PyModule>) -> pyo3::PyResult<()> {
    use pyo3::prelude::*;
    use pyo3::types::PyTuple;

    m.add("__version__", env!("CARGO_PKG_VERSION"))?;
    // Enum names the config's Literals must equal (tests/unit/test_native_schema.py).
    m.add(
        "ADVANTAGE_MODES",
        PyTuple::new(m.py(), advantages::Mode::names())?,
    )?;
    m.add(
        "OVERLONG_MODES",
        PyTuple::new(m.py(), microbatch::Overlong::names())?,
    )?;
    m.add("MICRO_BATCH_SCHEMA", microbatch::py::schema(m.py())?)?;

    m.add_class::<py::ExportedArray>()?;
    m.add_class::<py::NdArray>()?;
    m.add_function(wrap_pyfunction!(advantages::py::group_advantages, m)?)?;
    m.add_function(wrap_pyfunction!(packing::py::pack_bfd, m)?)?;
    m.add_function(wrap_pyfunction!(packing::py::pack_groups_bfd, m)?)?;
    m.add_function(wrap_pyfunction!(microbatch::py::fit_rows, m)?)?;
    m.add_class::<microbatch::py::MicroBatcher>()?;
    m.add_class::<microbatch::py::StepArrays>()?;
    m.add_class::<microbatch::py::MicroBatchArrays>()?;
    m.add_class::<microbatch::py::PaddedArrays>()?;
    m.add_class::<microbatch::py::PackedArrays>()?;
    m.add_function(wrap_pyfunction!(splice::py::splice_parquet, m)?)?;
    m.add_function(wrap_pyfunction!(rules::py::arith_rewards, m)?)?;
    Ok(())
}
