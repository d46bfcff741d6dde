//! Python binding of the advantage kernel: `_native.group_advantages`.

use std::sync::OnceLock;

use arrow_array::cast::AsArray;
use arrow_array::types::{Float32Type, Float64Type};
use arrow_array::{Array, Float64Array};
use arrow_buffer::NullBuffer;
use arrow_schema::DataType;
use pyo3::exceptions::{PyTypeError, PyValueError};
use pyo3::prelude::*;
use pyo3::types::PyDict;

use crate::advantages::{self, Mode, Params};
use crate::groups::py::Keys;
use crate::mem::zeroed_vec;
use crate::py::{bools, export, import_array};

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

impl<'a> Rewards<'a> {
    fn new(array: &'a dyn Array) -> PyResult<Self> {
        match array.data_type() {
            DataType::Float64 => Ok(Rewards::F64(array.as_primitive::<Float64Type>().values())),
            DataType::Float32 => Ok(Rewards::F32(array.as_primitive::<Float32Type>().values())),
            other => Err(PyTypeError::new_err(format!(
                "rewards must be float64 or float32, got {other}; cast the reward column with \
                 pyarrow.compute.cast(rewards, pyarrow.float64())"
            ))),
        }
    }
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

/// The kernel's parameters from the Python arguments, checked.
fn params(mode: &str, eps: f64, std_floor: f64, min_valid: i64) -> PyResult<Params> {
    let mode = Mode::parse(mode).ok_or_else(|| {
        PyValueError::new_err(format!(
            "mode must be one of {}, got {mode:?}",
            Mode::names().join(", ")
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
    Ok(params)
}

/// GRAO group-relative advantages.
///
/// group_ids: Arrow array (int64/uint64/int32/uint32/string/large_string/string_view, no
///     nulls); a group is a run of equal consecutive ids, and an id may not come back after a
///     different one (sort rows by group_id).
/// rewards: Arrow float64 or float32 array, one per row; null, NaN and ±inf are invalid:
///     excluded from the group statistics, advantage 0, reward_valid False.
/// mode: one of ADVANTAGE_MODES: "reference_in_group" (default; the reference answer's reward
///     0 is a group member), "samples_only", "leave_one_out" or "rank".
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
pub(crate) fn group_advantages<'py>(
    py: Python<'py>,
    group_ids: &Bound<'py, PyAny>,
    rewards: &Bound<'py, PyAny>,
    mode: &str,
    eps: f64,
    std_floor: f64,
    min_valid: i64,
) -> PyResult<Bound<'py, PyDict>> {
    let params = params(mode, eps, std_floor, min_valid)?;
    let ids = import_array(group_ids, "group_ids")?;
    let rewards = import_array(rewards, "rewards")?;
    if ids.len() != rewards.len() {
        return Err(PyValueError::new_err(format!(
            "group_ids has {} rows but rewards has {}; pass one group_id and one reward per row",
            ids.len(),
            rewards.len()
        )));
    }
    let keys = Keys::new(ids.as_ref(), "group_ids")?;
    let values = Rewards::new(rewards.as_ref())?;
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
