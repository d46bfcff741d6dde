//! What every Python binding shares (cargo feature `python`): Arrow arrays in and out through
//! the Arrow PyCapsule interface (`__arrow_c_array__`), no copies of the data, and numpy arrays
//! out ([`NdArray`]). Each kernel's binding lives beside it (`advantages/py.rs`, ...); every
//! input is checked there and turned into a ValueError/TypeError naming the argument.

use std::ffi::CStr;

use arrow_array::ffi::{from_ffi, to_ffi, FFI_ArrowArray, FFI_ArrowSchema};
use arrow_array::{make_array, Array, ArrayRef, BooleanArray};
use arrow_buffer::{BooleanBuffer, Buffer};
use arrow_data::ArrayData;
use pyo3::exceptions::{PyTypeError, PyValueError};
use pyo3::prelude::*;
use pyo3::types::{PyCapsule, PyTuple};

use crate::bitmap::Bitmap;

mod ndarray;

pub(crate) use ndarray::{nd, NdArray};

const SCHEMA_CAPSULE: &CStr = c"arrow_schema";
const ARRAY_CAPSULE: &CStr = c"arrow_array";

// ---- Arrow in ----

/// Imports any object with `__arrow_c_array__` (pyarrow.Array, polars Series, arro3, ...).
pub(crate) fn import_array(obj: &Bound<'_, PyAny>, arg: &str) -> PyResult<ArrayRef> {
    if !obj.hasattr("__arrow_c_array__")? {
        let type_name = obj.get_type().name()?;
        return Err(PyTypeError::new_err(format!(
            "{arg} must be an Arrow array (an object with __arrow_c_array__, such as a \
             pyarrow.Array), got {type_name}; convert with pyarrow.array(...), and call \
             .combine_chunks() on a ChunkedArray"
        )));
    }
    let capsules = obj.call_method0("__arrow_c_array__")?;
    let (schema, array): (Bound<'_, PyCapsule>, Bound<'_, PyCapsule>) =
        capsules.extract().map_err(|_| {
            PyTypeError::new_err(format!(
                "{arg}.__arrow_c_array__() must return a (schema, array) pair of PyCapsules"
            ))
        })?;
    let schema = schema
        .pointer_checked(Some(SCHEMA_CAPSULE))?
        .cast::<FFI_ArrowSchema>();
    let array = array
        .pointer_checked(Some(ARRAY_CAPSULE))?
        .cast::<FFI_ArrowArray>();
    // SAFETY: the capsules are named per the Arrow PyCapsule interface, so they hold an
    // ArrowSchema and an ArrowArray. `from_raw` moves the array out and leaves a released
    // struct behind, which is what the producer's capsule destructor expects; the schema is
    // only borrowed while the capsule is alive.
    let data = unsafe {
        let array = FFI_ArrowArray::from_raw(array.as_ptr());
        from_ffi(array, schema.as_ref())
    }
    .map_err(|e| PyValueError::new_err(format!("{arg}: cannot import the Arrow array: {e}")))?;
    Ok(make_array(data))
}

/// The first null row of `array`, if it has one.
pub(crate) fn first_null(array: &dyn Array) -> Option<usize> {
    let nulls = array.nulls().filter(|n| n.null_count() > 0)?;
    nulls.iter().position(|valid| !valid)
}

// ---- Arrow out ----

/// An Arrow array returned by this module. It implements the Arrow PyCapsule interface, so
/// `pyarrow.array(obj)` (or `polars.Series(obj)`) imports it without copying.
#[pyclass(name = "ArrowArray", module = "grao_pipe._native", frozen)]
pub(crate) struct ExportedArray {
    data: ArrayData,
}

#[pymethods]
impl ExportedArray {
    /// Arrow PyCapsule interface: returns (schema capsule, array capsule).
    #[pyo3(signature = (requested_schema = None))]
    fn __arrow_c_array__<'py>(
        &self,
        py: Python<'py>,
        requested_schema: Option<Bound<'py, PyAny>>,
    ) -> PyResult<Bound<'py, PyTuple>> {
        // The protocol lets a producer ignore a requested schema it cannot honour.
        let _ = requested_schema;
        let (array, schema) = to_ffi(&self.data)
            .map_err(|e| PyValueError::new_err(format!("cannot export the Arrow array: {e}")))?;
        // Dropping a capsule drops its struct, whose Drop calls `release` unless the consumer
        // has moved the struct out (and so nulled `release`).
        let schema = PyCapsule::new_with_value(py, schema, SCHEMA_CAPSULE)?;
        let array = PyCapsule::new_with_value(py, array, ARRAY_CAPSULE)?;
        PyTuple::new(py, [schema, array])
    }

    fn __len__(&self) -> usize {
        self.data.len()
    }

    fn __repr__(&self) -> String {
        format!(
            "<grao_pipe._native.ArrowArray type={} len={}>",
            self.data.data_type(),
            self.data.len()
        )
    }
}

pub(crate) fn export(py: Python<'_>, array: impl Array) -> PyResult<Bound<'_, ExportedArray>> {
    Bound::new(
        py,
        ExportedArray {
            data: array.into_data(),
        },
    )
}

pub(crate) fn bools(bitmap: Bitmap) -> BooleanArray {
    let (words, len) = bitmap.into_words();
    BooleanArray::new(BooleanBuffer::new(Buffer::from_vec(words), 0, len), None)
}
