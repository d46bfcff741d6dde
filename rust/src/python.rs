//! PyO3 bindings (cargo feature `python`): Arrow arrays in and out through the Arrow PyCapsule
//! interface (`__arrow_c_array__`), no copies of the data. Every input is checked here and
//! turned into a ValueError/TypeError naming the argument; the kernels run without the GIL.

use std::ffi::CStr;
use std::sync::OnceLock;

use arrow_array::cast::AsArray;
use arrow_array::ffi::{from_ffi, to_ffi, FFI_ArrowArray, FFI_ArrowSchema};
use arrow_array::types::{
    ArrowPrimitiveType, Float32Type, Float64Type, Int32Type, Int64Type, UInt32Type, UInt64Type,
};
use arrow_array::{
    make_array, Array, ArrayRef, BooleanArray, Float64Array, GenericStringArray, OffsetSizeTrait,
    StringViewArray, StructArray, UInt32Array,
};
use arrow_buffer::{BooleanBuffer, Buffer, NullBuffer, OffsetBuffer, ScalarBuffer};
use arrow_data::ArrayData;
use arrow_schema::DataType;
use pyo3::exceptions::{PyOSError, PyTypeError, PyValueError};
use pyo3::prelude::*;
use pyo3::types::{PyCapsule, PyDict, PyList, PyTuple};

use crate::advantages::{self, Mode, Params};
use crate::bitmap::Bitmap;
use crate::groups::{find_runs, GroupKeys};
use crate::mem::zeroed_vec;
use crate::microbatch::{self, Bits, Fit, Lists, Overlong, RowWidth, Shard, Span};
use crate::packing;
use crate::pool;
use crate::rules;
use crate::splice;

const SCHEMA_CAPSULE: &CStr = c"arrow_schema";
const ARRAY_CAPSULE: &CStr = c"arrow_array";

// ---- Arrow in ----

/// Imports any object with `__arrow_c_array__` (pyarrow.Array, polars Series, arro3, ...).
fn import_array(obj: &Bound<'_, PyAny>, arg: &str) -> PyResult<ArrayRef> {
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

fn first_null(array: &dyn Array) -> Option<usize> {
    let nulls = array.nulls().filter(|n| n.null_count() > 0)?;
    nulls.iter().position(|valid| !valid)
}

/// Group ids, borrowed from an imported array.
enum Keys<'a> {
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
    fn new(array: &'a dyn Array) -> PyResult<Self> {
        if let Some(row) = first_null(array) {
            return Err(PyValueError::new_err(format!(
                "group_id is null at row {row}; every row needs a group_id (fill or drop the \
                 rows with null ids)"
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
                    "group_id must be int64, uint64, int32, uint32, string, large_string or \
                     string_view, got {other}; cast the column, e.g. with \
                     pyarrow.compute.cast(ids, pyarrow.string())"
                )))
            }
        })
    }

    fn runs(&self) -> PyResult<Vec<usize>> {
        dispatch_keys!(self, k => find_runs(*k)).map_err(|e| PyValueError::new_err(e.to_string()))
    }

    fn describe(&self, row: usize) -> String {
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

/// Packing lengths: int32 or int64 without nulls.
enum Lengths<'a> {
    I32(&'a [i32]),
    I64(&'a [i64]),
}

impl<'a> Lengths<'a> {
    fn new(array: &'a dyn Array) -> PyResult<Self> {
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

// ---- Arrow out ----

/// An Arrow array returned by this module. It implements the Arrow PyCapsule interface, so
/// `pyarrow.array(obj)` (or `polars.Series(obj)`) imports it without copying.
#[pyclass(name = "ArrowArray", module = "grao_pipe._native", frozen)]
struct ExportedArray {
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

fn export(py: Python<'_>, array: impl Array) -> PyResult<Bound<'_, ExportedArray>> {
    Bound::new(
        py,
        ExportedArray {
            data: array.into_data(),
        },
    )
}

fn bools(bitmap: Bitmap) -> BooleanArray {
    let (words, len) = bitmap.into_words();
    BooleanArray::new(BooleanBuffer::new(Buffer::from_vec(words), 0, len), None)
}

// ---- Functions ----

/// Threads for the advantage kernel (it only uses them for inputs of a million rows or more).
fn kernel_threads() -> usize {
    static THREADS: OnceLock<usize> = OnceLock::new();
    *THREADS.get_or_init(|| std::thread::available_parallelism().map_or(1, |n| n.get().min(8)))
}

/// Reward values, borrowed from an imported array.
enum Rewards<'a> {
    F64(&'a [f64]),
    F32(&'a [f32]),
}

struct AdvantageResult {
    advantage: Vec<f64>,
    reference_advantage: Vec<f64>,
    flags: advantages::Flags,
}

fn run_advantages<T: Copy + Into<f64> + Sync>(
    offsets: &[usize],
    rewards: &[T],
    nulls: Option<&NullBuffer>,
    params: &Params,
) -> AdvantageResult {
    let n = rewards.len();
    let mut advantage = zeroed_vec(n);
    let mut reference_advantage = zeroed_vec(n);
    let (adv, refs, threads) = (&mut advantage, &mut reference_advantage, kernel_threads());
    let flags = match nulls {
        Some(nulls) => advantages::group_advantages(
            offsets,
            rewards,
            |i| nulls.is_valid(i),
            params,
            adv,
            refs,
            threads,
        ),
        None => {
            advantages::group_advantages(offsets, rewards, |_| true, params, adv, refs, threads)
        }
    };
    AdvantageResult {
        advantage,
        reference_advantage,
        flags,
    }
}

/// GRAO group-relative advantages.
///
/// group_ids: Arrow array (int64/uint64/int32/uint32/string/large_string/string_view, no
///     nulls); a group is a run of equal consecutive ids, and an id may not come back after a
///     different one (sort rows by group_id).
/// rewards: Arrow float64 or float32 array, one per row; null, NaN and ±inf are invalid:
///     excluded from the group statistics, advantage 0, reward_valid False.
/// mode: "reference_in_group" (default; the reference answer's reward 0 is a group member),
///     "samples_only", "leave_one_out" or "rank".
/// eps: added to the std before dividing. std_floor: groups whose std is below it are
///     degenerate. min_valid: groups with fewer valid rewards are degenerate. A degenerate
///     group gets advantage 0 and reference_advantage 0 on all its rows.
///
/// Returns a dict: "advantage" (float64), "reference_advantage" (float64, the group's
/// reference advantage on each row), "degenerate" (bool), "reward_valid" (bool), each a
/// grao_pipe._native.ArrowArray (implements __arrow_c_array__: pyarrow.array(x) imports it
/// without a copy), and the ints "n_rows", "n_groups", "n_degenerate_groups",
/// "n_invalid_rewards".
#[pyfunction]
#[pyo3(signature = (group_ids, rewards, *, mode = "reference_in_group", eps = 1e-6, std_floor = 1e-6, min_valid = 2))]
fn group_advantages<'py>(
    py: Python<'py>,
    group_ids: &Bound<'py, PyAny>,
    rewards: &Bound<'py, PyAny>,
    mode: &str,
    eps: f64,
    std_floor: f64,
    min_valid: i64,
) -> PyResult<Bound<'py, PyDict>> {
    let mode = Mode::parse(mode).ok_or_else(|| {
        PyValueError::new_err(format!(
            "mode must be one of {}, got {mode:?}",
            Mode::NAMES.join(", ")
        ))
    })?;
    let min_valid = usize::try_from(min_valid)
        .map_err(|_| PyValueError::new_err(format!("min_valid must be >= 0, got {min_valid}")))?;
    let params = Params {
        mode,
        eps,
        std_floor,
        min_valid,
    };
    params
        .validate()
        .map_err(|e| PyValueError::new_err(e.to_string()))?;

    let ids = import_array(group_ids, "group_ids")?;
    let rewards = import_array(rewards, "rewards")?;
    if ids.len() != rewards.len() {
        return Err(PyValueError::new_err(format!(
            "group_ids has {} rows but rewards has {}; pass one group_id and one reward per row",
            ids.len(),
            rewards.len()
        )));
    }
    let keys = Keys::new(ids.as_ref())?;
    let values = match rewards.data_type() {
        DataType::Float64 => Rewards::F64(rewards.as_primitive::<Float64Type>().values()),
        DataType::Float32 => Rewards::F32(rewards.as_primitive::<Float32Type>().values()),
        other => {
            return Err(PyTypeError::new_err(format!(
                "rewards must be float64 or float32, got {other}; cast the reward column with \
                 pyarrow.compute.cast(rewards, pyarrow.float64())"
            )))
        }
    };
    let nulls = rewards.nulls().filter(|n| n.null_count() > 0);
    let result = py.detach(|| -> PyResult<AdvantageResult> {
        let offsets = keys.runs()?;
        Ok(match values {
            Rewards::F64(v) => run_advantages(&offsets, v, nulls, &params),
            Rewards::F32(v) => run_advantages(&offsets, v, nulls, &params),
        })
    })?;

    let dict = PyDict::new(py);
    let n_rows = result.advantage.len();
    let summary = result.flags.summary;
    dict.set_item(
        "advantage",
        export(py, Float64Array::from(result.advantage))?,
    )?;
    dict.set_item(
        "reference_advantage",
        export(py, Float64Array::from(result.reference_advantage))?,
    )?;
    dict.set_item("degenerate", export(py, bools(result.flags.degenerate))?)?;
    dict.set_item(
        "reward_valid",
        export(py, bools(result.flags.reward_valid))?,
    )?;
    dict.set_item("n_rows", n_rows)?;
    dict.set_item("n_groups", summary.n_groups)?;
    dict.set_item("n_degenerate_groups", summary.n_degenerate_groups)?;
    dict.set_item("n_invalid_rewards", summary.n_invalid_rewards)?;
    Ok(dict)
}

/// A string column, borrowed from an imported array.
enum Strings<'a> {
    Utf8(&'a GenericStringArray<i32>),
    LargeUtf8(&'a GenericStringArray<i64>),
    Utf8View(&'a StringViewArray),
}

impl<'a> Strings<'a> {
    fn new(array: &'a dyn Array, arg: &str) -> PyResult<Self> {
        Ok(match array.data_type() {
            DataType::Utf8 => Strings::Utf8(array.as_string::<i32>()),
            DataType::LargeUtf8 => Strings::LargeUtf8(array.as_string::<i64>()),
            DataType::Utf8View => Strings::Utf8View(array.as_string_view()),
            other => {
                return Err(PyTypeError::new_err(format!(
                    "{arg} must be string, large_string or string_view, got {other}"
                )))
            }
        })
    }

    fn get(&self, i: usize) -> Option<&'a str> {
        match self {
            Strings::Utf8(a) => a.is_valid(i).then(|| a.value(i)),
            Strings::LargeUtf8(a) => a.is_valid(i).then(|| a.value(i)),
            Strings::Utf8View(a) => a.is_valid(i).then(|| a.value(i)),
        }
    }
}

/// The embedded task's reward R(o, y) over whole columns (rust/src/rules.rs): float64, null
/// where the prompt is not `a+b=`.
#[pyfunction]
fn arith_rewards<'py>(
    py: Python<'py>,
    prompts: &Bound<'py, PyAny>,
    responses: &Bound<'py, PyAny>,
    references: &Bound<'py, PyAny>,
) -> PyResult<Bound<'py, ExportedArray>> {
    let arrays = [
        import_array(prompts, "prompts")?,
        import_array(responses, "responses")?,
        import_array(references, "references")?,
    ];
    let n = arrays[0].len();
    if arrays.iter().any(|a| a.len() != n) {
        return Err(PyValueError::new_err(format!(
            "prompts, responses and references have {}, {} and {} rows; pass one of each per row",
            arrays[0].len(),
            arrays[1].len(),
            arrays[2].len()
        )));
    }
    let p = Strings::new(arrays[0].as_ref(), "prompts")?;
    let o = Strings::new(arrays[1].as_ref(), "responses")?;
    let y = Strings::new(arrays[2].as_ref(), "references")?;
    let values = py.detach(|| -> Float64Array {
        (0..n)
            .map(|i| rules::arith_reward(p.get(i), o.get(i), y.get(i)))
            .collect()
    });
    export(py, values)
}

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
fn splice_parquet(
    py: Python<'_>,
    left: &Bound<'_, PyAny>,
    right: &Bound<'_, PyAny>,
    key_value_metadata: Vec<(String, String)>,
    path: String,
    created_by: Option<String>,
    durable: bool,
) -> PyResult<String> {
    use std::io::Write;

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

fn packed<'py>(
    py: Python<'py>,
    packing: packing::Packing,
) -> PyResult<(Bound<'py, ExportedArray>, usize)> {
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
fn pack_bfd<'py>(
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
    packed(
        py,
        result.map_err(|e| PyValueError::new_err(e.to_string()))?,
    )
}

/// The learner's packed rows for one micro-batch (`microbatch::fit_rows`): rows at most `cap`
/// tokens wide (the longest sequence, if longer), the layout with the fewest padded tokens.
///
/// Returns (bin_of_item, n_rows, width) with bin_of_item as pack_bfd returns it.
#[pyfunction]
fn fit_rows<'py>(
    py: Python<'py>,
    lengths: &Bound<'py, PyAny>,
    cap: i64,
) -> PyResult<(Bound<'py, ExportedArray>, usize, u64)> {
    let lengths = import_array(lengths, "lengths")?;
    let owned: Vec<i64> = match Lengths::new(lengths.as_ref())? {
        Lengths::I32(v) => v.iter().map(|&x| i64::from(x)).collect(),
        Lengths::I64(v) => v.to_vec(),
    };
    let cap = u64::try_from(cap)
        .ok()
        .filter(|&c| c > 0)
        .ok_or_else(|| PyValueError::new_err(format!("cap must be positive, got {cap}")))?;
    let rows = py
        .detach(|| microbatch::fit_rows(&owned, cap))
        .map_err(|e| PyValueError::new_err(e.to_string()))?;
    let width = rows.width;
    let (bins, n) = packed(py, rows.packing)?;
    Ok((bins, n, width))
}

/// Group-aware best-fit decreasing: the items of each contiguous group_id run go to the same
/// bin, packed as one unit of their summed length (which must fit in the budget).
///
/// lengths: Arrow int32/int64 array; group_ids: Arrow array as for group_advantages.
/// Returns (bin_of_item, n_bins) as pack_bfd does.
#[pyfunction]
fn pack_groups_bfd<'py>(
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
    let keys = Keys::new(ids.as_ref())?;
    let result = py.detach(|| -> PyResult<_> {
        let offsets = keys.runs()?;
        Ok(match view {
            Lengths::I32(v) => packing::pack_groups_bfd(v, &offsets, budget),
            Lengths::I64(v) => packing::pack_groups_bfd(v, &offsets, budget),
        })
    })?;
    let result = result.map_err(|e| {
        let message = match &e {
            packing::PackError::GroupTooLong { first_row, .. } => {
                format!("group_id {}: {e}", keys.describe(*first_row))
            }
            _ => e.to_string(),
        };
        PyValueError::new_err(message)
    })?;
    packed(py, result)
}

// ---- Micro-batches ----

/// A C-contiguous array in memory Rust allocated. `numpy.asarray(x)` views it without a copy
/// through `__array_interface__` (then `torch.from_numpy`), and the view keeps `x` alive.
#[pyclass(name = "NdArray", module = "grao_pipe._native", frozen)]
struct NdArray {
    elems: Elems,
    shape: Vec<usize>,
}

/// An owned vector, as its raw parts: after it is built, Rust neither reads nor writes the
/// memory (numpy views may write), it only hands it back to the pool on drop.
enum Elems {
    I64(RawVec<i64>),
    F32(RawVec<f32>),
}

struct RawVec<T: pool::Pooled> {
    ptr: *mut T,
    len: usize,
    capacity: usize,
}

impl<T: pool::Pooled> From<Vec<T>> for RawVec<T> {
    fn from(v: Vec<T>) -> Self {
        let mut v = std::mem::ManuallyDrop::new(v);
        RawVec {
            ptr: v.as_mut_ptr(),
            len: v.len(),
            capacity: v.capacity(),
        }
    }
}

impl<T: pool::Pooled> Drop for RawVec<T> {
    fn drop(&mut self) {
        // SAFETY: the parts come from a Vec<T> that was never used again (ManuallyDrop), and
        // this is the only place that rebuilds it.
        let v = unsafe { Vec::from_raw_parts(self.ptr, self.len, self.capacity) };
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

#[pymethods]
impl NdArray {
    /// numpy's array interface (version 3): shape, element type and the data pointer.
    #[getter(__array_interface__)]
    fn array_interface<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyDict>> {
        let endian = if cfg!(target_endian = "little") {
            "<"
        } else {
            ">"
        };
        let (ptr, typestr) = match &self.elems {
            Elems::I64(v) => (v.ptr as usize, "i8"),
            Elems::F32(v) => (v.ptr as usize, "f4"),
        };
        let d = PyDict::new(py);
        d.set_item("shape", PyTuple::new(py, &self.shape)?)?;
        d.set_item("typestr", format!("{endian}{typestr}"))?;
        d.set_item("data", (ptr, false))?;
        d.set_item("version", 3)?;
        Ok(d)
    }

    fn __len__(&self) -> usize {
        self.shape.first().copied().unwrap_or(0)
    }

    fn __repr__(&self) -> String {
        let dtype = match self.elems {
            Elems::I64(_) => "int64",
            Elems::F32(_) => "float32",
        };
        format!("<grao_pipe._native.NdArray {dtype} shape={:?}>", self.shape)
    }
}

fn nd<'py>(
    py: Python<'py>,
    elems: impl Into<Elems>,
    shape: &[usize],
) -> PyResult<Bound<'py, NdArray>> {
    Bound::new(
        py,
        NdArray {
            elems: elems.into(),
            shape: shape.to_vec(),
        },
    )
}

/// A list<int32> / list<float32> column of an imported table: shared buffers, no copy.
struct ListColumn<T: arrow_buffer::ArrowNativeType> {
    name: &'static str,
    offsets: OffsetBuffer<i32>,
    values: ScalarBuffer<T>,
    nulls: Option<NullBuffer>,
}

impl<T: arrow_buffer::ArrowNativeType> ListColumn<T> {
    fn view(&self) -> Lists<'_, T> {
        Lists {
            name: self.name,
            offsets: &self.offsets,
            values: &self.values,
            validity: self.nulls.as_ref().map(bits_of),
        }
    }
}

fn bits_of(nulls: &NullBuffer) -> Bits<'_> {
    Bits {
        bytes: nulls.inner().values(),
        offset: nulls.inner().offset(),
    }
}

/// The columns of one table of score rows the micro-batches read.
struct ScoreTable {
    prompt: ListColumn<i32>,
    response: ListColumn<i32>,
    reference: ListColumn<i32>,
    behaviour: ListColumn<f32>,
    ref_logprobs: ListColumn<f32>,
    ref_reference: ListColumn<f32>,
    advantage: ScalarBuffer<f64>,
    reference_advantage: ScalarBuffer<f64>,
    reward: ScalarBuffer<f64>,
    reward_nulls: Option<NullBuffer>,
    /// The dataset's rejected answers and their reference log-probs, when they are read.
    rejected: Option<(ListColumn<i32>, ListColumn<f32>)>,
}

impl ScoreTable {
    fn import(obj: &Bound<'_, PyAny>, t: usize, rejected: bool) -> PyResult<Self> {
        let array = import_array(obj, &format!("tables[{t}]"))?;
        let Some(table) = array.as_struct_opt() else {
            return Err(PyTypeError::new_err(format!(
                "tables[{t}] must be a table of score rows (a pyarrow.RecordBatch or struct \
                 array), got an Arrow array of type {}",
                array.data_type()
            )));
        };
        Ok(ScoreTable {
            prompt: list_column::<Int32Type>(table, t, "prompt_token_ids", false)?,
            response: list_column::<Int32Type>(table, t, "response_token_ids", false)?,
            reference: list_column::<Int32Type>(table, t, "reference_token_ids", false)?,
            behaviour: list_column::<Float32Type>(table, t, "behaviour_logprobs", true)?,
            ref_logprobs: list_column::<Float32Type>(table, t, "ref_logprobs", true)?,
            ref_reference: list_column::<Float32Type>(table, t, "ref_reference_logprobs", true)?,
            advantage: f64_column(table, t, "advantage", false)?.0,
            reference_advantage: f64_column(table, t, "reference_advantage", false)?.0,
            reward: f64_column(table, t, "reward", true)?.0,
            reward_nulls: f64_column(table, t, "reward", true)?.1,
            rejected: if rejected {
                Some((
                    list_column::<Int32Type>(table, t, "reference_rejected_token_ids", true)?,
                    list_column::<Float32Type>(table, t, "ref_reference_rejected_logprobs", true)?,
                ))
            } else {
                None
            },
        })
    }

    fn view(&self) -> Shard<'_> {
        Shard {
            prompt: self.prompt.view(),
            response: self.response.view(),
            reference: self.reference.view(),
            behaviour: self.behaviour.view(),
            ref_logprobs: self.ref_logprobs.view(),
            ref_reference: self.ref_reference.view(),
            advantage: &self.advantage,
            reference_advantage: &self.reference_advantage,
            reward: &self.reward,
            reward_valid: self.reward_nulls.as_ref().map(bits_of),
            rejected: self.rejected.as_ref().map(|(a, l)| (a.view(), l.view())),
        }
    }
}

fn column<'a>(table: &'a StructArray, t: usize, name: &str) -> PyResult<&'a ArrayRef> {
    table.column_by_name(name).ok_or_else(|| {
        PyValueError::new_err(format!(
            "tables[{t}] has no column {name:?}; pass the score rows with the learner's \
             columns (grao_pipe.learner.data.COLUMNS)"
        ))
    })
}

fn no_nulls(array: &dyn Array, t: usize, name: &str) -> PyResult<()> {
    match first_null(array) {
        Some(row) => Err(PyValueError::new_err(format!(
            "tables[{t}].{name} is null at row {row}; the score schema requires a value"
        ))),
        None => Ok(()),
    }
}

fn list_column<P: ArrowPrimitiveType>(
    table: &StructArray,
    t: usize,
    name: &'static str,
    nullable: bool,
) -> PyResult<ListColumn<P::Native>> {
    let array = column(table, t, name)?;
    let wrong_type = || {
        PyTypeError::new_err(format!(
            "tables[{t}].{name} must be list<{}>, got {}; write it with the score schema \
             (grao_pipe.schemas)",
            P::DATA_TYPE.to_string().to_lowercase(),
            array.data_type()
        ))
    };
    let list = array.as_list_opt::<i32>().ok_or_else(wrong_type)?;
    let values = list
        .values()
        .as_primitive_opt::<P>()
        .ok_or_else(wrong_type)?;
    if let Some(i) = first_null(values) {
        return Err(PyValueError::new_err(format!(
            "tables[{t}].{name} has a null element inside its lists (value {i}); every \
             token and log-prob needs a value"
        )));
    }
    if !nullable {
        no_nulls(list, t, name)?;
    }
    Ok(ListColumn {
        name,
        offsets: list.offsets().clone(),
        values: values.values().clone(),
        nulls: list.nulls().filter(|n| n.null_count() > 0).cloned(),
    })
}

fn f64_column(
    table: &StructArray,
    t: usize,
    name: &str,
    nullable: bool,
) -> PyResult<(ScalarBuffer<f64>, Option<NullBuffer>)> {
    let array = column(table, t, name)?;
    let values = array.as_primitive_opt::<Float64Type>().ok_or_else(|| {
        PyTypeError::new_err(format!(
            "tables[{t}].{name} must be float64, got {}; write it with the score schema \
             (grao_pipe.schemas)",
            array.data_type()
        ))
    })?;
    if !nullable {
        no_nulls(values, t, name)?;
    }
    let nulls = values.nulls().filter(|n| n.null_count() > 0).cloned();
    Ok((values.values().clone(), nulls))
}

/// One micro-batch, built without the GIL; turned into Python objects afterwards.
type Built = (microbatch::Padded, Option<microbatch::Packed>);

/// The learner's micro-batches, built from the Arrow buffers of score rows.
///
/// tables: a list of pyarrow.RecordBatch (or anything with __arrow_c_array__ giving a
///     struct array) of score rows, each holding prompt_token_ids, response_token_ids,
///     reference_token_ids (list<int32>), behaviour_logprobs, ref_logprobs,
///     ref_reference_logprobs (list<float32>, nullable), advantage, reference_advantage
///     (float64) and reward (float64, nullable). The buffers are shared, not copied: a
///     memory-mapped table stays on disk until a batch reads it.
/// max_seq_len, overlong: prompt + continuation longer than max_seq_len is cut
///     ("truncate") or left out ("skip"), as train.max_seq_len / train.overlong say.
/// names: optional, one per table (e.g. its file), for error messages.
/// rejected: also read reference_rejected_token_ids (list<int32>) and
///     ref_reference_rejected_logprobs (list<float32>), both nullable: every micro-batch then
///     has B more sequences, each group's prompt + its rejected answer (DPO on dataset pairs).
#[pyclass(name = "MicroBatcher", module = "grao_pipe._native", frozen)]
struct MicroBatcher {
    tables: Vec<ScoreTable>,
    /// What error messages call each table (e.g. its file); default "table i".
    names: Vec<String>,
    fit: Fit,
}

#[pymethods]
impl MicroBatcher {
    #[new]
    #[pyo3(signature = (tables, *, max_seq_len = None, overlong = "truncate", names = None, rejected = false))]
    fn new(
        tables: &Bound<'_, PyAny>,
        max_seq_len: Option<i64>,
        overlong: &str,
        names: Option<Vec<String>>,
        rejected: bool,
    ) -> PyResult<Self> {
        let overlong = match overlong {
            "truncate" => Overlong::Truncate,
            "skip" => Overlong::Skip,
            other => {
                return Err(PyValueError::new_err(format!(
                    "overlong must be \"truncate\" or \"skip\", got {other:?}"
                )))
            }
        };
        let max_len = match max_seq_len {
            None => None,
            Some(n) => Some(usize::try_from(n).ok().filter(|&n| n > 0).ok_or_else(|| {
                PyValueError::new_err(format!(
                    "max_seq_len must be a positive number of tokens or None, got {n}"
                ))
            })?),
        };
        let iter = tables.try_iter().map_err(|_| {
            PyTypeError::new_err("tables must be a list of pyarrow.RecordBatch of score rows")
        })?;
        let mut out = Vec::new();
        for (t, obj) in iter.enumerate() {
            out.push(ScoreTable::import(&obj?, t, rejected)?);
        }
        let names = names.unwrap_or_default();
        if !names.is_empty() && names.len() != out.len() {
            return Err(PyValueError::new_err(format!(
                "names has {} entries for {} tables; pass one name per table",
                names.len(),
                out.len()
            )));
        }
        Ok(MicroBatcher {
            tables: out,
            names,
            fit: Fit { max_len, overlong },
        })
    }

    fn __len__(&self) -> usize {
        self.tables.len()
    }

    /// The micro-batches of one rank's groups of a step.
    ///
    /// spans: Arrow int64 array of (table, first row, rows) triples, flattened: one triple
    ///     per group, in the order the groups train.
    /// pad_id: the token id of padding.
    /// micro_batch_tokens: consecutive groups are split into micro-batches of at most this
    ///     many tokens (a group is never split; 0: one micro-batch).
    /// pack_tokens: 0: padded layout only. Else also the packed layout, rows of at most
    ///     max(pack_tokens, longest sequence) tokens: as narrow as the packing allows
    ///     (fit_rows=True, never more padded tokens than the padded layout), or exactly that
    ///     wide (fit_rows=False).
    ///
    /// Returns a dict: "micro_batches", a list with one dict per micro-batch (the padded
    /// layout as NdArray: input_ids, attention_mask [N, T]; loss_mask, behaviour,
    /// reference [N, T-1]; advantage, reward, sample_mask [B, G]; reference_advantage,
    /// reference_fits, rejected_mask [B]; behaviour_known [N] (float32 0/1);
    /// the ints n_samples, real_tokens, padded_tokens; and "packed": None or a dict of
    /// input_ids, position_ids, segment [R, W]; src_row, src_col, dst_seq, dst_pos [K];
    /// real_tokens, padded_tokens), and per group, the int64 NdArrays "truncated" and
    /// "skipped" (sequences cut to max_seq_len or left out).
    #[pyo3(signature = (spans, *, pad_id, micro_batch_tokens = 0, pack_tokens = 0, fit_rows = true))]
    fn build<'py>(
        &self,
        py: Python<'py>,
        spans: &Bound<'py, PyAny>,
        pad_id: i64,
        micro_batch_tokens: i64,
        pack_tokens: i64,
        fit_rows: bool,
    ) -> PyResult<Bound<'py, PyDict>> {
        let spans = parse_spans(&import_array(spans, "spans")?)?;
        let non_negative = |v: i64, name: &str| {
            u64::try_from(v)
                .map_err(|_| PyValueError::new_err(format!("{name} must be >= 0, got {v}")))
        };
        let budget = non_negative(micro_batch_tokens, "micro_batch_tokens")?;
        let pack = non_negative(pack_tokens, "pack_tokens")?;
        let width = match (pack, fit_rows) {
            (0, _) => None,
            (w, true) => Some(RowWidth::AtMost(w)),
            (w, false) => Some(RowWidth::Exactly(w)),
        };
        let fit = self.fit;
        let tables = &self.tables;
        let built = py.detach(move || -> Result<_, microbatch::LoadError> {
            let shards: Vec<Shard<'_>> = tables.iter().map(ScoreTable::view).collect();
            let resolved = microbatch::resolve(&shards, &spans, fit)?;
            let tokens: Vec<u64> = resolved.groups.iter().map(|g| g.tokens).collect();
            let mut micro: Vec<Built> = Vec::new();
            for range in microbatch::split_by_tokens(&tokens, budget) {
                micro.push(microbatch::micro_batch(
                    &resolved,
                    &resolved.groups[range],
                    pad_id,
                    width,
                )?);
            }
            let counts = |f: fn(&microbatch::Group<'_>) -> u32| -> Vec<i64> {
                resolved.groups.iter().map(|g| i64::from(f(g))).collect()
            };
            Ok((micro, counts(|g| g.truncated), counts(|g| g.skipped)))
        });
        let (micro, truncated, skipped) =
            built.map_err(|e| PyValueError::new_err(self.describe(&e)))?;
        let k = truncated.len();
        let list = PyList::empty(py);
        for (pad, pack) in micro {
            list.append(micro_batch_dict(py, pad, pack)?)?;
        }
        let out = PyDict::new(py);
        out.set_item("micro_batches", list)?;
        out.set_item("truncated", nd(py, truncated, &[k])?)?;
        out.set_item("skipped", nd(py, skipped, &[k])?)?;
        Ok(out)
    }
}

impl MicroBatcher {
    /// The error, naming the table's file when the caller gave names.
    fn describe(&self, e: &microbatch::LoadError) -> String {
        match e {
            microbatch::LoadError::Row { shard, .. } => match self.names.get(*shard) {
                Some(name) => format!("{name}: {e}"),
                None => e.to_string(),
            },
            _ => e.to_string(),
        }
    }
}

fn parse_spans(array: &ArrayRef) -> PyResult<Vec<Span>> {
    let values = array.as_primitive_opt::<Int64Type>().ok_or_else(|| {
        PyTypeError::new_err(format!(
            "spans must be an int64 array of (table, first row, rows) triples, got {}",
            array.data_type()
        ))
    })?;
    if let Some(i) = first_null(values) {
        return Err(PyValueError::new_err(format!("spans[{i}] is null")));
    }
    if values.is_empty() || values.len() % 3 != 0 {
        return Err(PyValueError::new_err(format!(
            "spans has {} values; pass one (table, first row, rows) triple per group, at least \
             one group",
            values.len()
        )));
    }
    let index = |i: usize, v: i64| {
        usize::try_from(v)
            .map_err(|_| PyValueError::new_err(format!("spans[{i}] = {v}; spans must be >= 0")))
    };
    values
        .values()
        .chunks_exact(3)
        .enumerate()
        .map(|(g, t)| {
            Ok(Span {
                shard: index(3 * g, t[0])?,
                start: index(3 * g + 1, t[1])?,
                len: index(3 * g + 2, t[2])?,
            })
        })
        .collect()
}

fn micro_batch_dict<'py>(
    py: Python<'py>,
    pad: microbatch::Padded,
    pack: Option<microbatch::Packed>,
) -> PyResult<Bound<'py, PyDict>> {
    let (n, t, b, g) = (pad.n, pad.t, pad.b, pad.g);
    let d = PyDict::new(py);
    d.set_item("input_ids", nd(py, pad.input_ids, &[n, t])?)?;
    d.set_item("attention_mask", nd(py, pad.attention_mask, &[n, t])?)?;
    d.set_item("loss_mask", nd(py, pad.loss_mask, &[n, t - 1])?)?;
    d.set_item("behaviour", nd(py, pad.behaviour, &[n, t - 1])?)?;
    d.set_item("reference", nd(py, pad.reference, &[n, t - 1])?)?;
    d.set_item("advantage", nd(py, pad.advantage, &[b, g])?)?;
    d.set_item("reward", nd(py, pad.reward, &[b, g])?)?;
    d.set_item("sample_mask", nd(py, pad.sample_mask, &[b, g])?)?;
    d.set_item(
        "reference_advantage",
        nd(py, pad.reference_advantage, &[b])?,
    )?;
    d.set_item("behaviour_known", nd(py, pad.behaviour_known, &[n])?)?;
    d.set_item("reference_fits", nd(py, pad.reference_fits, &[b])?)?;
    d.set_item("rejected_mask", nd(py, pad.rejected_mask, &[b])?)?;
    d.set_item("n_samples", b * g)?;
    d.set_item("real_tokens", pad.real_tokens)?;
    d.set_item("padded_tokens", n * t)?;
    let packed = match pack {
        None => None,
        Some(p) => {
            let (r, w, k) = (p.rows, p.width, p.src_row.len());
            let d = PyDict::new(py);
            d.set_item("input_ids", nd(py, p.input_ids, &[r, w])?)?;
            d.set_item("position_ids", nd(py, p.position_ids, &[r, w])?)?;
            d.set_item("segment", nd(py, p.segment, &[r, w])?)?;
            d.set_item("src_row", nd(py, p.src_row, &[k])?)?;
            d.set_item("src_col", nd(py, p.src_col, &[k])?)?;
            d.set_item("dst_seq", nd(py, p.dst_seq, &[k])?)?;
            d.set_item("dst_pos", nd(py, p.dst_pos, &[k])?)?;
            d.set_item("real_tokens", p.real_tokens)?;
            d.set_item("padded_tokens", r * w)?;
            Some(d)
        }
    };
    d.set_item("packed", packed)?;
    Ok(d)
}

/// Rust core of grao-pipe: GRAO group advantages, token-budget packing, the learner's
/// micro-batches over Arrow arrays, Parquet column splicing and the built-in reward rule.
#[pymodule]
#[pyo3(name = "_native")]
fn native(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add("__version__", env!("CARGO_PKG_VERSION"))?;
    m.add_class::<ExportedArray>()?;
    m.add_class::<NdArray>()?;
    m.add_class::<MicroBatcher>()?;
    m.add_function(wrap_pyfunction!(group_advantages, m)?)?;
    m.add_function(wrap_pyfunction!(pack_bfd, m)?)?;
    m.add_function(wrap_pyfunction!(pack_groups_bfd, m)?)?;
    m.add_function(wrap_pyfunction!(fit_rows, m)?)?;
    m.add_function(wrap_pyfunction!(splice_parquet, m)?)?;
    m.add_function(wrap_pyfunction!(arith_rewards, m)?)?;
    Ok(())
}
