//! Group ids from Python: any Arrow integer or string column, borrowed ([`Keys`]).

use arrow_array::cast::AsArray;
use arrow_array::types::{Int32Type, Int64Type, UInt32Type, UInt64Type};
use arrow_array::{Array, GenericStringArray, OffsetSizeTrait, StringViewArray};
use arrow_schema::DataType;
use pyo3::exceptions::{PyTypeError, PyValueError};
use pyo3::prelude::*;

use crate::groups::{find_runs, GroupKeys};
use crate::py::first_null;

/// Group ids, borrowed from an imported array.
pub(crate) enum Keys<'a> {
    I32(&'a [i32]),
    I64(&'a [i64]),
    U32(&'a [u32]),
    U64(&'a [u64]),
    Utf8(&'a GenericStringArray<i32>),
    LargeUtf8(&'a GenericStringArray<i64>),
    Utf8View(&'a StringViewArray),
}

macro_rules! dispatch_keys {
    ($keys:expr, $k:ident => $body:expr) => {
        match $keys {
            Keys::I32($k) => $body,
            Keys::I64($k) => $body,
            Keys::U32($k) => $body,
            Keys::U64($k) => $body,
            Keys::Utf8($k) => $body,
            Keys::LargeUtf8($k) => $body,
            Keys::Utf8View($k) => $body,
        }
    };
}

impl<'a> Keys<'a> {
    /// `arg`: the argument's name, for error messages.
    pub(crate) fn new(array: &'a dyn Array, arg: &str) -> PyResult<Self> {
        if let Some(row) = first_null(array) {
            return Err(PyValueError::new_err(format!(
                "{arg}: group_id is null at row {row}; every row needs a group_id (fill or drop \
                 the rows with null ids)"
            )));
        }
        Ok(match array.data_type() {
            DataType::Int32 => Keys::I32(array.as_primitive::<Int32Type>().values()),
            DataType::Int64 => Keys::I64(array.as_primitive::<Int64Type>().values()),
            DataType::UInt32 => Keys::U32(array.as_primitive::<UInt32Type>().values()),
            DataType::UInt64 => Keys::U64(array.as_primitive::<UInt64Type>().values()),
            DataType::Utf8 => Keys::Utf8(array.as_string::<i32>()),
            DataType::LargeUtf8 => Keys::LargeUtf8(array.as_string::<i64>()),
            DataType::Utf8View => Keys::Utf8View(array.as_string_view()),
            other => {
                return Err(PyTypeError::new_err(format!(
                    "{arg}: group_id must be int64, uint64, int32, uint32, string, large_string \
                     or string_view, got {other}; cast the column, e.g. with \
                     pyarrow.compute.cast(ids, pyarrow.string())"
                )))
            }
        })
    }

    /// The offsets of the runs of equal ids (`groups::find_runs`).
    pub(crate) fn runs(&self) -> PyResult<Vec<usize>> {
        dispatch_keys!(self, k => find_runs(*k)).map_err(|e| PyValueError::new_err(e.to_string()))
    }

    /// The id at `row`, for error messages.
    pub(crate) fn describe(&self, row: usize) -> String {
        dispatch_keys!(self, k => k.describe(row))
    }
}

impl<O: OffsetSizeTrait> GroupKeys for GenericStringArray<O> {
    type Key<'a> = &'a [u8];

    fn len(&self) -> usize {
        Array::len(self)
    }

    #[inline]
    fn key(&self, row: usize) -> &[u8] {
        self.value(row).as_bytes()
    }

    fn describe(&self, row: usize) -> String {
        format!("{:?}", self.value(row))
    }
}

impl GroupKeys for StringViewArray {
    type Key<'a> = &'a [u8];

    fn len(&self) -> usize {
        Array::len(self)
    }

    #[inline]
    fn key(&self, row: usize) -> &[u8] {
        self.value(row).as_bytes()
    }

    fn describe(&self, row: usize) -> String {
        format!("{:?}", self.value(row))
    }
}
