//! Python binding of the Parquet column splice: `_native.splice_parquet`.

use std::io::Write;

use pyo3::exceptions::{PyOSError, PyTypeError, PyValueError};
use pyo3::prelude::*;

use crate::splice;

/// The bytes of a `pyarrow.Buffer`, borrowed for as long as the object.
///
/// Buffers, not `bytes`: Arrow's threads may release the last reference to a buffer, and
/// releasing Python-owned memory needs the GIL (at interpreter exit that aborts the process).
/// The abi3 floor (Python 3.10) has no buffer protocol, hence the address.
fn arrow_buffer<'a>(obj: &'a Bound<'_, PyAny>, arg: &str) -> PyResult<&'a [u8]> {
    let buffer_type = obj.py().import("pyarrow")?.getattr("Buffer")?;
    if !obj.is_instance(&buffer_type)? {
        let type_name = obj.get_type().name()?;
        return Err(PyTypeError::new_err(format!(
            "{arg} must be a pyarrow.Buffer, got {type_name}; wrap bytes with pyarrow.py_buffer"
        )));
    }
    let address: usize = obj.getattr("address")?.extract()?;
    let size: usize = obj.getattr("size")?.extract()?;
    if size == 0 {
        return Ok(&[]);
    }
    // SAFETY: a pyarrow.Buffer owns (or keeps alive) `size` readable bytes at `address` for as
    // long as the object lives, and `obj` outlives the returned slice. Nothing in this process
    // writes to a shard's buffer while it is spliced.
    Ok(unsafe { std::slice::from_raw_parts(address as *const u8, size) })
}

/// An I/O error as Python's OSError, errno kept (a full disk must stay recognisable).
fn os_error(e: &std::io::Error, path: &str) -> PyErr {
    match e.raw_os_error() {
        Some(code) => PyOSError::new_err((code, e.to_string(), path.to_owned())),
        None => PyOSError::new_err(format!("{path}: {e}")),
    }
}

/// `left`'s columns then `right`'s as one Parquet file written to `path` (replaced),
/// row group by row group, each column chunk copied as encoded; the footer carries
/// `key_value_metadata` only and names `created_by` as the writer. Fsynced if `durable`.
/// Returns the sha256 (hex) of the file.
#[pyfunction]
#[pyo3(signature = (left, right, key_value_metadata, path, created_by=None, durable=true))]
pub(crate) fn splice_parquet(
    py: Python<'_>,
    left: &Bound<'_, PyAny>,
    right: &Bound<'_, PyAny>,
    key_value_metadata: Vec<(String, String)>,
    path: String,
    created_by: Option<String>,
    durable: bool,
) -> PyResult<String> {
    let (l, r) = (arrow_buffer(left, "left")?, arrow_buffer(right, "right")?);
    py.detach(|| -> PyResult<String> {
        // A temporary name: truncate what a dead writer of the same name may have left.
        let file = std::fs::OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .open(&path)
            .map_err(|e| os_error(&e, &path))?;
        let mut out = splice::Sha256Writer::new(std::io::BufWriter::with_capacity(1 << 20, file));
        splice::splice(l, r, key_value_metadata, created_by, &mut out).map_err(|e| {
            if let parquet::errors::ParquetError::External(inner) = &e {
                if let Some(io) = inner.downcast_ref::<std::io::Error>() {
                    return os_error(io, &path);
                }
            }
            PyValueError::new_err(format!("splice_parquet: {e}"))
        })?;
        out.flush().map_err(|e| os_error(&e, &path))?;
        let (buffered, sha256, _) = out.finish();
        let file = buffered
            .into_inner()
            .map_err(|e| os_error(e.error(), &path))?;
        if durable {
            file.sync_all().map_err(|e| os_error(&e, &path))?;
        }
        Ok(sha256)
    })
}
