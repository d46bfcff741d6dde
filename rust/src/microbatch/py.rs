//! Python bindings of the micro-batch kernel: `_native.MicroBatcher`, `_native.fit_rows`, and
//! the typed classes a micro-batch crosses to Python in.
//!
//! The crossing: `MicroBatcher.build` returns a [`StepArrays`] of [`MicroBatchArrays`], each a
//! [`PaddedArrays`] (learner/data.py `Batch`) and optionally a [`PackedArrays`] (`Packed`).
//! Each class and its entry in `_native.MICRO_BATCH_SCHEMA` (name, dtype, dims of every field)
//! come from one list ([`transfer_class!`]); tests/unit/test_native_schema.py checks the Python
//! side (`Batch`, `Packed`, the stub `_native.pyi`) and real micro-batches against the schema.

use arrow_array::cast::AsArray;
use arrow_array::types::Int64Type;
use arrow_array::{Array, ArrayRef};
use pyo3::exceptions::{PyTypeError, PyValueError};
use pyo3::prelude::*;
use pyo3::types::{PyDict, PyTuple};

use crate::microbatch::{self, Fit, LoadError, Overlong, RowWidth, Shard, Span};
use crate::packing::py::{bins, Lengths};
use crate::py::{first_null, import_array, nd, ExportedArray, NdArray};

mod table;

use table::ScoreTable;

// ---- The typed crossing ----

/// One field of a class a micro-batch crosses in: its name (for an array, the letters after the
/// last `_` name its dimensions), dtype ("int64", "float32", "bool" for an [`NdArray`]; "int"
/// for a Python int; else the Python type) and dimensions.
pub(crate) struct Field {
    name: &'static str,
    dtype: &'static str,
    dims: &'static [&'static str],
}

/// Declares a frozen Python class with read-only fields and its schema (a `[Field]` const)
/// from one list, so the two cannot disagree.
macro_rules! transfer_class {
    (
        $(#[doc = $doc:literal])*
        $name:ident, $schema:ident {
            $($field:ident: $ty:ty = $dtype:literal [$($dim:literal),*],)*
        }
    ) => {
        $(#[doc = $doc])*
        #[pyclass(module = "grao_pipe._native", frozen, get_all)]
        #[allow(non_snake_case)] // the dimension letters of the learner's names
        pub(crate) struct $name {
            $($field: $ty,)*
        }

        const $schema: &[Field] = &[
            $(Field { name: stringify!($field), dtype: $dtype, dims: &[$($dim),*] },)*
        ];
    };
}

transfer_class! {
    /// A micro-batch in the padded layout (learner/data.py `Batch`, same field names):
    /// N = B·G + B (+ B rejected) sequences of T tokens; T-1 shifted targets.
    PaddedArrays, PADDED_FIELDS {
        input_ids_NT: Py<NdArray> = "int64" ["N", "T"],
        attention_mask_NT: Py<NdArray> = "int64" ["N", "T"],
        loss_mask_NT: Py<NdArray> = "float32" ["N", "T-1"],
        behaviour_NT: Py<NdArray> = "float32" ["N", "T-1"],
        ref_NT: Py<NdArray> = "float32" ["N", "T-1"],
        adv_BG: Py<NdArray> = "float32" ["B", "G"],
        reward_BG: Py<NdArray> = "float32" ["B", "G"],
        ref_adv_B: Py<NdArray> = "float32" ["B"],
        mask_BG: Py<NdArray> = "float32" ["B", "G"],
        n_samples: usize = "int" [],
        real_tokens: usize = "int" [],
        padded_tokens: usize = "int" [],
        behaviour_known_N: Py<NdArray> = "bool" ["N"],
        reference_fits_B: Py<NdArray> = "float32" ["B"],
        rejected_mask_B: Py<NdArray> = "float32" ["B"],
    }
}

transfer_class! {
    /// The same sequences packed into R rows of T tokens (learner/data.py `Packed`; its index
    /// maps are named there without the `_K`): K next-token positions.
    PackedArrays, PACKED_FIELDS {
        input_ids_RT: Py<NdArray> = "int64" ["R", "T"],
        position_ids_RT: Py<NdArray> = "int64" ["R", "T"],
        segment_RT: Py<NdArray> = "int64" ["R", "T"],
        src_row_K: Py<NdArray> = "int64" ["K"],
        src_col_K: Py<NdArray> = "int64" ["K"],
        dst_seq_K: Py<NdArray> = "int64" ["K"],
        dst_pos_K: Py<NdArray> = "int64" ["K"],
        real_tokens: usize = "int" [],
        padded_tokens: usize = "int" [],
    }
}

transfer_class! {
    /// One micro-batch (learner/data.py `MicroBatch`): padded, and packed when asked for.
    MicroBatchArrays, MICRO_BATCH_FIELDS {
        padded: Py<PaddedArrays> = "PaddedArrays" [],
        packed: Option<Py<PackedArrays>> = "PackedArrays | None" [],
    }
}

transfer_class! {
    /// A step's micro-batches, and per group of the S spans passed to `build` (in their
    /// order) how many of its sequences were cut to max_seq_len or left out.
    StepArrays, STEP_FIELDS {
        micro_batches: Vec<Py<MicroBatchArrays>> = "list[MicroBatchArrays]" [],
        truncated_S: Py<NdArray> = "int64" ["S"],
        skipped_S: Py<NdArray> = "int64" ["S"],
    }
}

/// `_native.MICRO_BATCH_SCHEMA`: class name -> ((field, dtype, dims), ...).
pub(crate) fn schema(py: Python<'_>) -> PyResult<Bound<'_, PyDict>> {
    let out = PyDict::new(py);
    for (class, fields) in [
        ("PaddedArrays", PADDED_FIELDS),
        ("PackedArrays", PACKED_FIELDS),
        ("MicroBatchArrays", MICRO_BATCH_FIELDS),
        ("StepArrays", STEP_FIELDS),
    ] {
        let entries = fields
            .iter()
            .map(|f| (f.name, f.dtype, PyTuple::new(py, f.dims)))
            .map(|(name, dtype, dims)| Ok((name, dtype, dims?)))
            .collect::<PyResult<Vec<_>>>()?;
        out.set_item(class, PyTuple::new(py, entries)?)?;
    }
    Ok(out)
}

fn padded_arrays(py: Python<'_>, pad: microbatch::Padded) -> PyResult<Py<PaddedArrays>> {
    let (n, t, b, g) = (pad.n, pad.t, pad.b, pad.g);
    let fields = PaddedArrays {
        input_ids_NT: nd(py, pad.input_ids, &[n, t])?,
        attention_mask_NT: nd(py, pad.attention_mask, &[n, t])?,
        loss_mask_NT: nd(py, pad.loss_mask, &[n, t - 1])?,
        behaviour_NT: nd(py, pad.behaviour, &[n, t - 1])?,
        ref_NT: nd(py, pad.reference, &[n, t - 1])?,
        adv_BG: nd(py, pad.advantage, &[b, g])?,
        reward_BG: nd(py, pad.reward, &[b, g])?,
        ref_adv_B: nd(py, pad.reference_advantage, &[b])?,
        mask_BG: nd(py, pad.sample_mask, &[b, g])?,
        n_samples: b * g,
        real_tokens: pad.real_tokens,
        padded_tokens: n * t,
        behaviour_known_N: nd(py, pad.behaviour_known, &[n])?,
        reference_fits_B: nd(py, pad.reference_fits, &[b])?,
        rejected_mask_B: nd(py, pad.rejected_mask, &[b])?,
    };
    Py::new(py, fields)
}

fn packed_arrays(py: Python<'_>, p: microbatch::Packed) -> PyResult<Py<PackedArrays>> {
    let (r, w, k) = (p.rows, p.width, p.src_row.len());
    let fields = PackedArrays {
        input_ids_RT: nd(py, p.input_ids, &[r, w])?,
        position_ids_RT: nd(py, p.position_ids, &[r, w])?,
        segment_RT: nd(py, p.segment, &[r, w])?,
        src_row_K: nd(py, p.src_row, &[k])?,
        src_col_K: nd(py, p.src_col, &[k])?,
        dst_seq_K: nd(py, p.dst_seq, &[k])?,
        dst_pos_K: nd(py, p.dst_pos, &[k])?,
        real_tokens: p.real_tokens,
        padded_tokens: r * w,
    };
    Py::new(py, fields)
}

// ---- MicroBatcher ----

/// One micro-batch, built without the GIL; turned into Python objects afterwards.
type Built = (microbatch::Padded, Option<microbatch::Packed>);

/// What `build` computes without the GIL: the micro-batches, and per group the sequences cut
/// and left out.
struct Step {
    micro: Vec<Built>,
    truncated: Vec<i64>,
    skipped: Vec<i64>,
}

/// The learner's micro-batches, built from the Arrow buffers of score rows.
///
/// tables: a list of pyarrow.RecordBatch (or anything with __arrow_c_array__ giving a
///     struct array) of score rows, each holding prompt_token_ids, response_token_ids,
///     reference_token_ids (list<int32>), behaviour_logprobs, ref_logprobs,
///     ref_reference_logprobs (list<float32>, nullable), advantage, reference_advantage
///     (float64) and reward (float64, nullable). The buffers are shared, not copied: a
///     memory-mapped table stays on disk until a batch reads it.
/// max_seq_len, overlong: prompt + continuation longer than max_seq_len is cut
///     ("truncate") or left out ("skip"), as train.max_seq_len / train.overlong say
///     (OVERLONG_MODES).
/// names: optional, one per table (e.g. its file), for error messages.
/// rejected: also read reference_rejected_token_ids (list<int32>) and
///     ref_reference_rejected_logprobs (list<float32>), both nullable: every micro-batch then
///     has B more sequences, each group's prompt + its rejected answer (DPO on dataset pairs).
#[pyclass(name = "MicroBatcher", module = "grao_pipe._native", frozen)]
pub(crate) struct MicroBatcher {
    tables: Vec<ScoreTable>,
    /// What error messages call each table (e.g. its file); default "table i".
    names: Vec<String>,
    fit: Fit,
}

/// `train.max_seq_len` and `train.overlong`, checked.
fn fit(max_seq_len: Option<i64>, overlong: &str) -> PyResult<Fit> {
    let overlong = Overlong::parse(overlong).ok_or_else(|| {
        PyValueError::new_err(format!(
            "overlong must be one of {}, got {overlong:?}",
            Overlong::names().join(", ")
        ))
    })?;
    let max_len = match max_seq_len {
        None => None,
        Some(n) => Some(usize::try_from(n).ok().filter(|&n| n > 0).ok_or_else(|| {
            PyValueError::new_err(format!(
                "max_seq_len must be a positive number of tokens or None, got {n}"
            ))
        })?),
    };
    Ok(Fit { max_len, overlong })
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
        let fit = fit(max_seq_len, overlong)?;
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
            fit,
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
    /// Returns a StepArrays (fields: MICRO_BATCH_SCHEMA["StepArrays"]): the micro-batches,
    /// each padded (PaddedArrays) and, with pack_tokens, packed (PackedArrays); every array an
    /// NdArray that numpy views in place.
    #[pyo3(signature = (spans, *, pad_id, micro_batch_tokens = 0, pack_tokens = 0, fit_rows = true))]
    fn build(
        &self,
        py: Python<'_>,
        spans: &Bound<'_, PyAny>,
        pad_id: i64,
        micro_batch_tokens: i64,
        pack_tokens: i64,
        fit_rows: bool,
    ) -> PyResult<StepArrays> {
        let spans = parse_spans(&import_array(spans, "spans")?)?;
        let non_negative = |v: i64, name: &str| {
            u64::try_from(v)
                .map_err(|_| PyValueError::new_err(format!("{name} must be >= 0, got {v}")))
        };
        let budget = non_negative(micro_batch_tokens, "micro_batch_tokens")?;
        let width = match (non_negative(pack_tokens, "pack_tokens")?, fit_rows) {
            (0, _) => None,
            (w, true) => Some(RowWidth::AtMost(w)),
            (w, false) => Some(RowWidth::Exactly(w)),
        };
        let step = py
            .detach(|| self.step(&spans, pad_id, budget, width))
            .map_err(|e| PyValueError::new_err(self.describe(&e)))?;
        let mut micro_batches = Vec::with_capacity(step.micro.len());
        for (pad, pack) in step.micro {
            let packed = pack.map(|p| packed_arrays(py, p)).transpose()?;
            let padded = padded_arrays(py, pad)?;
            micro_batches.push(Py::new(py, MicroBatchArrays { padded, packed })?);
        }
        let s = step.truncated.len();
        Ok(StepArrays {
            micro_batches,
            truncated_S: nd(py, step.truncated, &[s])?,
            skipped_S: nd(py, step.skipped, &[s])?,
        })
    }
}

impl MicroBatcher {
    /// The micro-batches of `spans` (no Python objects: runs without the GIL).
    fn step(
        &self,
        spans: &[Span],
        pad_id: i64,
        budget: u64,
        width: Option<RowWidth>,
    ) -> Result<Step, LoadError> {
        let shards: Vec<Shard<'_>> = self.tables.iter().map(ScoreTable::view).collect();
        let resolved = microbatch::resolve(&shards, spans, self.fit)?;
        let tokens: Vec<u64> = resolved.groups.iter().map(|g| g.tokens).collect();
        let mut micro: Vec<Built> = Vec::new();
        for range in microbatch::split_by_tokens(&tokens, budget) {
            let groups = &resolved.groups[range];
            micro.push(microbatch::micro_batch(&resolved, groups, pad_id, width)?);
        }
        let counts = |f: fn(&microbatch::Group<'_>) -> u32| -> Vec<i64> {
            resolved.groups.iter().map(|g| i64::from(f(g))).collect()
        };
        Ok(Step {
            micro,
            truncated: counts(|g| g.truncated),
            skipped: counts(|g| g.skipped),
        })
    }

    /// The error, naming the table's file when the caller gave names.
    fn describe(&self, e: &LoadError) -> String {
        match e {
            LoadError::Row { shard, .. } => match self.names.get(*shard) {
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

// ---- fit_rows ----

/// The learner's packed rows for one micro-batch (`microbatch::fit_rows`): rows at most `cap`
/// tokens wide (the longest sequence, if longer), the layout with the fewest padded tokens.
///
/// Returns (bin_of_item, n_rows, width) with bin_of_item as pack_bfd returns it.
#[pyfunction]
pub(crate) fn fit_rows<'py>(
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
    let (bins, n) = bins(py, rows.packing)?;
    Ok((bins, n, width))
}
