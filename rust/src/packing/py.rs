//! Python bindings of token-budget packing: `_native.pack_bfd` and `_native.pack_groups_bfd`.

use arrow_array::cast::AsArray;
use arrow_array::types::{Int32Type, Int64Type};
use arrow_array::{Array, UInt32Array};
use arrow_schema::DataType;
use pyo3::exceptions::{PyTypeError, PyValueError};
use pyo3::prelude::*;

use crate::groups::py::Keys;
use crate::packing::{self, PackError, Packing};
use crate::py::{export, first_null, import_array, ExportedArray};

/// Packing lengths: int32 or int64 without nulls.
pub(crate) enum Lengths<'a> {
    I32(&'a [i32]),
    I64(&'a [i64]),
}

impl<'a> Lengths<'a> {
    pub(crate) fn new(array: &'a dyn Array) -> PyResult<Self> {
        if let Some(row) = first_null(array) {
            return Err(PyValueError::new_err(format!(
                "lengths[{row}] is null; every item needs a length"
            )));
        }
        match array.data_type() {
            DataType::Int32 => Ok(Lengths::I32(array.as_primitive::<Int32Type>().values())),
            DataType::Int64 => Ok(Lengths::I64(array.as_primitive::<Int64Type>().values())),
            other => Err(PyTypeError::new_err(format!(
                "lengths must be int32 or int64, got {other}; cast it with \
                 pyarrow.compute.cast(lengths, pyarrow.int64())"
            ))),
        }
    }

    fn len(&self) -> usize {
        match self {
            Lengths::I32(v) => v.len(),
            Lengths::I64(v) => v.len(),
        }
    }
}

/// (bin_of_item as a uint32 Arrow array, n_bins)
pub(crate) fn bins(
    py: Python<'_>,
    packing: Packing,
) -> PyResult<(Bound<'_, ExportedArray>, usize)> {
    let n_bins = packing.n_bins;
    Ok((export(py, UInt32Array::from(packing.bin_of_item))?, n_bins))
}

/// Token-budget packing, best-fit decreasing.
///
/// lengths: Arrow int32/int64 array of sequence lengths, each in 1..=budget.
/// budget: tokens per bin.
///
/// Returns (bin_of_item, n_bins): bin_of_item is a uint32 grao_pipe._native.ArrowArray
/// (implements __arrow_c_array__) with each item's bin; bins are numbered 0..n_bins in the
/// order they were opened. Deterministic: equal lengths are placed in index order.
#[pyfunction]
pub(crate) fn pack_bfd<'py>(
    py: Python<'py>,
    lengths: &Bound<'py, PyAny>,
    budget: i64,
) -> PyResult<(Bound<'py, ExportedArray>, usize)> {
    let lengths = import_array(lengths, "lengths")?;
    let view = Lengths::new(lengths.as_ref())?;
    let result = py.detach(|| match view {
        Lengths::I32(v) => packing::pack_bfd(v, budget),
        Lengths::I64(v) => packing::pack_bfd(v, budget),
    });
    bins(
        py,
        result.map_err(|e| PyValueError::new_err(e.to_string()))?,
    )
}

/// Group-aware best-fit decreasing: the items of each contiguous group_id run go to the same
/// bin, packed as one unit of their summed length (which must fit in the budget).
///
/// lengths: Arrow int32/int64 array; group_ids: Arrow array as for group_advantages.
/// Returns (bin_of_item, n_bins) as pack_bfd does.
#[pyfunction]
pub(crate) fn pack_groups_bfd<'py>(
    py: Python<'py>,
    lengths: &Bound<'py, PyAny>,
    group_ids: &Bound<'py, PyAny>,
    budget: i64,
) -> PyResult<(Bound<'py, ExportedArray>, usize)> {
    let lengths = import_array(lengths, "lengths")?;
    let ids = import_array(group_ids, "group_ids")?;
    let view = Lengths::new(lengths.as_ref())?;
    if ids.len() != view.len() {
        return Err(PyValueError::new_err(format!(
            "lengths has {} items but group_ids has {}; pass one group_id per item",
            view.len(),
            ids.len()
        )));
    }
    let keys = Keys::new(ids.as_ref(), "group_ids")?;
    let result = py.detach(|| -> PyResult<_> {
        let offsets = keys.runs()?;
        Ok(match view {
            Lengths::I32(v) => packing::pack_groups_bfd(v, &offsets, budget),
            Lengths::I64(v) => packing::pack_groups_bfd(v, &offsets, budget),
        })
    })?;
    let result = result.map_err(|e| {
        let message = match &e {
            PackError::GroupTooLong { first_row, .. } => {
                format!("group_id {}: {e}", keys.describe(*first_row))
            }
            _ => e.to_string(),
        };
        PyValueError::new_err(message)
    })?;
    bins(py, result)
}
