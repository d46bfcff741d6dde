//! [`NdArray`]: a numpy array over memory Rust allocated, how the micro-batches go out.

use pyo3::prelude::*;
use pyo3::types::{PyDict, PyTuple};

use crate::pool;

/// A C-contiguous array in memory Rust allocated. `numpy.asarray(x)` views it without a copy
/// through `__array_interface__` (then `torch.from_numpy`), and the view keeps `x` alive.
#[pyclass(name = "NdArray", module = "grao_pipe._native", frozen)]
pub(crate) struct NdArray {
    elems: Elems,
    shape: Vec<usize>,
}

/// An owned vector, as its raw parts: after it is built, Rust neither reads nor writes the
/// memory (numpy views may write), it only hands it back to the pool on drop.
pub(crate) enum Elems {
    I64(RawVec<i64>),
    F32(RawVec<f32>),
    Bool(RawVec<bool>),
}

impl Elems {
    /// (address, numpy type string without the byte order, numpy dtype name)
    fn describe(&self) -> (usize, &'static str, &'static str) {
        match self {
            Elems::I64(v) => (v.ptr as usize, "i8", "int64"),
            Elems::F32(v) => (v.ptr as usize, "f4", "float32"),
            Elems::Bool(v) => (v.ptr as usize, "b1", "bool"),
        }
    }
}

pub(crate) struct RawVec<T: pool::Pooled> {
    ptr: *mut T,
    capacity: usize,
}

impl<T: pool::Pooled> From<Vec<T>> for RawVec<T> {
    fn from(v: Vec<T>) -> Self {
        let mut v = std::mem::ManuallyDrop::new(v);
        RawVec {
            ptr: v.as_mut_ptr(),
            capacity: v.capacity(),
        }
    }
}

impl<T: pool::Pooled> Drop for RawVec<T> {
    fn drop(&mut self) {
        // SAFETY: the parts come from a Vec<T> that was never used again (ManuallyDrop), and
        // this is the only place that rebuilds it. Length 0: numpy may have written anything
        // (e.g. a byte other than 0/1 into a bool), and the pool never reads old contents.
        let v = unsafe { Vec::from_raw_parts(self.ptr, 0, self.capacity) };
        pool::give(v);
    }
}

// SAFETY: a RawVec owns its allocation (nothing else frees it) and Rust code never touches
// the memory between construction and drop, so moving or sharing the handle is sound.
unsafe impl<T: pool::Pooled> Send for RawVec<T> {}
// SAFETY: as for Send: the handle is never used to access the memory from Rust.
unsafe impl<T: pool::Pooled> Sync for RawVec<T> {}

impl From<Vec<i64>> for Elems {
    fn from(v: Vec<i64>) -> Self {
        Elems::I64(v.into())
    }
}

impl From<Vec<f32>> for Elems {
    fn from(v: Vec<f32>) -> Self {
        Elems::F32(v.into())
    }
}

impl From<Vec<bool>> for Elems {
    fn from(v: Vec<bool>) -> Self {
        Elems::Bool(v.into())
    }
}

#[pymethods]
impl NdArray {
    /// numpy's array interface (version 3): shape, element type and the data pointer.
    #[getter(__array_interface__)]
    fn array_interface<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyDict>> {
        let (ptr, typestr, _) = self.elems.describe();
        // Bytes have no byte order ("|"); the rest are native-endian.
        let order = match typestr {
            "b1" => "|",
            _ if cfg!(target_endian = "little") => "<",
            _ => ">",
        };
        let d = PyDict::new(py);
        d.set_item("shape", PyTuple::new(py, &self.shape)?)?;
        d.set_item("typestr", format!("{order}{typestr}"))?;
        d.set_item("data", (ptr, false))?;
        d.set_item("version", 3)?;
        Ok(d)
    }

    fn __len__(&self) -> usize {
        self.shape.first().copied().unwrap_or(0)
    }

    fn __repr__(&self) -> String {
        let (_, _, dtype) = self.elems.describe();
        format!("<grao_pipe._native.NdArray {dtype} shape={:?}>", self.shape)
    }
}

/// `elems` as an [`NdArray`] of `shape` (row-major; the product of `shape` is `elems.len()`).
pub(crate) fn nd<'py, T: pool::Pooled>(
    py: Python<'py>,
    elems: Vec<T>,
    shape: &[usize],
) -> PyResult<Py<NdArray>>
where
    Elems: From<Vec<T>>,
{
    let n: usize = shape.iter().product();
    if n != elems.len() {
        // A kernel bug, not bad input: say so rather than hand numpy a wrong shape.
        return Err(pyo3::exceptions::PyAssertionError::new_err(format!(
            "internal error: {} elements for shape {shape:?}",
            elems.len()
        )));
    }
    Py::new(
        py,
        NdArray {
            elems: elems.into(),
            shape: shape.to_vec(),
        },
    )
}
