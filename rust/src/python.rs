//! PyO3 bindings (cargo feature `python`): Arrow arrays in and out through the Arrow PyCapsule
//! interface (`__arrow_c_array__`), no copies of the data. Every input is checked here and
//! turned into a ValueError/TypeError naming the argument; the kernels run without the GIL.

use std::ffi::CStr;
use std::sync::OnceLock;

use arrow_array::cast::AsArray;
use arrow_array::ffi::{from_ffi, to_ffi, FFI_ArrowArray, FFI_ArrowSchema};
use arrow_array::types::{Float32Type, Float64Type, Int32Type, Int64Type, UInt32Type, UInt64Type};
use arrow_array::{
    make_array, Array, ArrayRef, BooleanArray, Float64Array, GenericStringArray, OffsetSizeTrait,
    StringViewArray, UInt32Array,
};
use arrow_buffer::{BooleanBuffer, Buffer, NullBuffer};
use arrow_data::ArrayData;
use arrow_schema::DataType;
use pyo3::exceptions::{PyTypeError, PyValueError};
use pyo3::prelude::*;
use pyo3::types::{PyCapsule, PyDict, PyTuple};

use crate::advantages::{self, Mode, Params};
use crate::bitmap::Bitmap;
use crate::groups::{find_runs, GroupKeys};
use crate::mem::zeroed_vec;
use crate::packing;

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

/// Rust core of grao-pipe: GRAO group advantages and token-budget packing over Arrow arrays.
#[pymodule]
#[pyo3(name = "_native")]
fn native(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add("__version__", env!("CARGO_PKG_VERSION"))?;
    m.add_class::<ExportedArray>()?;
    m.add_function(wrap_pyfunction!(group_advantages, m)?)?;
    m.add_function(wrap_pyfunction!(pack_bfd, m)?)?;
    m.add_function(wrap_pyfunction!(pack_groups_bfd, m)?)?;
    Ok(())
}
