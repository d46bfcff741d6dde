//! A table of score rows from Python ([`ScoreTable`]): its columns checked and their Arrow
//! buffers shared with the micro-batch kernel, not copied.

use arrow_array::cast::AsArray;
use arrow_array::types::{ArrowPrimitiveType, Float32Type, Float64Type, Int32Type};
use arrow_array::{Array, ArrayRef, StructArray};
use arrow_buffer::{ArrowNativeType, NullBuffer, OffsetBuffer, ScalarBuffer};
use pyo3::exceptions::{PyTypeError, PyValueError};
use pyo3::prelude::*;

use crate::microbatch::{Bits, Lists, Shard};
use crate::py::{first_null, import_array};

/// A list<int32> / list<float32> column of an imported table: shared buffers, no copy.
struct ListColumn<T: ArrowNativeType> {
    name: &'static str,
    offsets: OffsetBuffer<i32>,
    values: ScalarBuffer<T>,
    nulls: Option<NullBuffer>,
}

impl<T: ArrowNativeType> ListColumn<T> {
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
pub(crate) struct ScoreTable {
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
    /// `tables[t]`; with `rejected`, its rejected-answer columns too.
    pub(crate) fn import(obj: &Bound<'_, PyAny>, t: usize, rejected: bool) -> PyResult<Self> {
        let array = import_array(obj, &format!("tables[{t}]"))?;
        let Some(table) = array.as_struct_opt() else {
            return Err(PyTypeError::new_err(format!(
                "tables[{t}] must be a table of score rows (a pyarrow.RecordBatch or struct \
                 array), got an Arrow array of type {}",
                array.data_type()
            )));
        };
        // In the order of the score schema, so a table missing several columns names the
        // first one.
        let prompt = list_column::<Int32Type>(table, t, "prompt_token_ids", false)?;
        let response = list_column::<Int32Type>(table, t, "response_token_ids", false)?;
        let reference = list_column::<Int32Type>(table, t, "reference_token_ids", false)?;
        let behaviour = list_column::<Float32Type>(table, t, "behaviour_logprobs", true)?;
        let ref_logprobs = list_column::<Float32Type>(table, t, "ref_logprobs", true)?;
        let ref_reference = list_column::<Float32Type>(table, t, "ref_reference_logprobs", true)?;
        let (advantage, _) = f64_column(table, t, "advantage", false)?;
        let (reference_advantage, _) = f64_column(table, t, "reference_advantage", false)?;
        let (reward, reward_nulls) = f64_column(table, t, "reward", true)?;
        let rejected = if rejected {
            Some((
                list_column::<Int32Type>(table, t, "reference_rejected_token_ids", true)?,
                list_column::<Float32Type>(table, t, "ref_reference_rejected_logprobs", true)?,
            ))
        } else {
            None
        };
        Ok(ScoreTable {
            prompt,
            response,
            reference,
            behaviour,
            ref_logprobs,
            ref_reference,
            advantage,
            reference_advantage,
            reward,
            reward_nulls,
            rejected,
        })
    }

    /// The kernel's borrowed view of the columns.
    pub(crate) fn view(&self) -> Shard<'_> {
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
