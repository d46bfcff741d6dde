//! Python binding of the built-in reward rule: `_native.arith_rewards`.

use arrow_array::cast::AsArray;
use arrow_array::{Array, Float64Array, GenericStringArray, StringViewArray};
use arrow_schema::DataType;
use pyo3::exceptions::{PyTypeError, PyValueError};
use pyo3::prelude::*;

use crate::py::{export, import_array, ExportedArray};
use crate::rules;

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
pub(crate) fn arith_rewards<'py>(
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
