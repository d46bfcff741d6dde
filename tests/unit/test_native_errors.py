"""Bad input to every binding of the Rust extension is a Python exception that names the
argument or column, never a panic, a crash or a bare message.

test_native.py and test_loader_native.py already check some of these paths with the kernels'
results; here each binding's bad dtypes, wrong lengths, nulls and wrong Python types, one case
per path, with the exception type. Errors raised by PyO3 itself while converting an argument
name it in a note (PEP 678), which tracebacks print: ``_shown`` includes the notes.
"""

from __future__ import annotations

import io
import random
import re
import traceback

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from grao_pipe import _native

IDS, REWARDS = pa.array([1, 1]), pa.array([1.0, 0.0])
STR = pa.array(["1+1="])


def _shown(e: BaseException) -> str:
    """The exception as a traceback shows it: type, message and notes."""
    return "".join(traceback.format_exception_only(e))


def _parquet(**columns: list) -> pa.Buffer:
    sink = io.BytesIO()
    pq.write_table(pa.table(columns), sink)
    return pa.py_buffer(sink.getvalue())


def _score_rows(**override: pa.Array) -> pa.RecordBatch:
    """One valid row of the columns the micro-batches read, with some replaced."""
    ints, floats = pa.list_(pa.int32()), pa.list_(pa.float32())
    columns = {
        "prompt_token_ids": pa.array([[1, 2]], ints),
        "response_token_ids": pa.array([[3]], ints),
        "reference_token_ids": pa.array([[4]], ints),
        "behaviour_logprobs": pa.array([None], floats),
        "ref_logprobs": pa.array([None], floats),
        "ref_reference_logprobs": pa.array([None], floats),
        "advantage": pa.array([0.5]),
        "reference_advantage": pa.array([-0.5]),
        "reward": pa.array([1.0]),
    }
    return pa.RecordBatch.from_pydict({**columns, **override})


SPAN = pa.array([0, 0, 1], pa.int64())


def _build(batch: pa.RecordBatch = None, spans=SPAN, **kw):
    return _native.MicroBatcher([batch or _score_rows()]).build(spans, **{"pad_id": 0, **kw})


P = pytest.param
CASES = [
    # group_advantages (its other paths: test_native.py::test_bad_inputs_raise)
    P(lambda: _native.group_advantages([1, 1], REWARDS), TypeError, r"group_ids must be an Arrow array",
      id="advantages-ids-not-arrow"),
    P(lambda: _native.group_advantages(pa.array(["a", "a"]).dictionary_encode(), REWARDS), TypeError,
      r"group_ids: group_id must be .*got Dictionary", id="advantages-ids-dictionary"),
    P(lambda: _native.group_advantages(pa.array([1, None]), REWARDS), ValueError,
      r"group_ids: group_id is null at row 1", id="advantages-ids-null"),
    P(lambda: _native.group_advantages(IDS, pa.array([1, 2], pa.float16())), TypeError,
      r"rewards must be float64 or float32, got Float16", id="advantages-rewards-float16"),
    P(lambda: _native.group_advantages(IDS, REWARDS, mode=None), TypeError, r"'mode'", id="advantages-mode-none"),
    P(lambda: _native.group_advantages(IDS, REWARDS, eps="small"), TypeError, r"'eps'", id="advantages-eps-str"),
    P(lambda: _native.group_advantages(IDS, REWARDS, min_valid=2**70), OverflowError, r"'min_valid'",
      id="advantages-min-valid-overflow"),
    # pack_bfd (its other paths: test_native.py::test_pack_bfd_errors)
    P(lambda: _native.pack_bfd(None, 10), TypeError, r"lengths must be an Arrow array", id="pack-lengths-none"),
    P(lambda: _native.pack_bfd(pa.array([1], pa.uint32()), 10), TypeError, r"lengths must be int32 or int64",
      id="pack-lengths-uint32"),
    P(lambda: _native.pack_bfd(pa.array([-1]), 10), ValueError, r"lengths\[0\] = -1", id="pack-lengths-negative"),
    P(lambda: _native.pack_bfd(pa.array([1]), "10"), TypeError, r"'budget'", id="pack-budget-str"),
    # pack_groups_bfd
    P(lambda: _native.pack_groups_bfd(pa.array([1, 1]), [1, 1], 10), TypeError, r"group_ids must be an Arrow array",
      id="pack-groups-ids-not-arrow"),
    P(lambda: _native.pack_groups_bfd(pa.array([1, 1]), pa.array([1, None]), 10), ValueError,
      r"group_ids: group_id is null at row 1", id="pack-groups-ids-null"),
    P(lambda: _native.pack_groups_bfd(pa.array([1, 1]), pa.array([1.0, 1.0]), 10), TypeError,
      r"group_ids: group_id must be", id="pack-groups-ids-float"),
    P(lambda: _native.pack_groups_bfd(pa.array([1, None]), IDS, 10), ValueError, r"lengths\[1\] is null",
      id="pack-groups-lengths-null"),
    P(lambda: _native.pack_groups_bfd(pa.array([1.0, 1.0]), IDS, 10), TypeError, r"lengths must be int32 or int64",
      id="pack-groups-lengths-float"),
    P(lambda: _native.pack_groups_bfd(pa.array([0, 1]), IDS, 10), ValueError, r"lengths\[0\] = 0",
      id="pack-groups-lengths-zero"),
    P(lambda: _native.pack_groups_bfd(pa.array([1, 1]), IDS, -1), ValueError, r"budget must be a positive",
      id="pack-groups-budget-negative"),
    # fit_rows (its other paths: test_native.py::test_fit_rows_by_hand_and_errors)
    P(lambda: _native.fit_rows(pa.array([1.0]), 10), TypeError, r"lengths must be int32 or int64",
      id="fit-rows-lengths-float"),
    P(lambda: _native.fit_rows(pa.array([-3, 1]), 10), ValueError, r"lengths\[0\] = -3", id="fit-rows-negative"),
    P(lambda: _native.fit_rows(pa.array([1]), -1), ValueError, r"cap must be positive, got -1", id="fit-rows-cap"),
    P(lambda: _native.fit_rows(pa.array([1]), None), TypeError, r"'cap'", id="fit-rows-cap-none"),
    # arith_rewards
    *[P(lambda i=i: _native.arith_rewards(*[pa.array([1]) if j == i else STR for j in range(3)]), TypeError,
        rf"{arg} must be string, large_string or string_view, got Int64", id=f"arith-{arg}-int")
      for i, arg in enumerate(["prompts", "responses", "references"])],
    *[P(lambda i=i: _native.arith_rewards(*[["x"] if j == i else STR for j in range(3)]), TypeError,
        rf"{arg} must be an Arrow array", id=f"arith-{arg}-list")
      for i, arg in enumerate(["prompts", "responses", "references"])],
    P(lambda: _native.arith_rewards(STR, pa.array(["2", "3"]), STR), ValueError,
      r"prompts, responses and references have 1, 2 and 1 rows", id="arith-lengths"),
    # splice_parquet
    P(lambda: _native.splice_parquet(b"PAR1", _parquet(y=[1]), [], "unused"), TypeError,
      r"left must be a pyarrow.Buffer, got bytes", id="splice-left-bytes"),
    P(lambda: _native.splice_parquet(_parquet(x=[1]), "right", [], "unused"), TypeError,
      r"right must be a pyarrow.Buffer, got str", id="splice-right-str"),
    P(lambda: _native.splice_parquet(pa.py_buffer(b"not parquet"), _parquet(y=[1]), [], "{tmp}/out"), ValueError,
      r"left file", id="splice-left-garbage"),
    P(lambda: _native.splice_parquet(_parquet(x=[1]), pa.py_buffer(_parquet(y=[1]).to_pybytes()[:-3]), [],
                                     "{tmp}/out"), ValueError, r"right file", id="splice-right-truncated"),
    P(lambda: _native.splice_parquet(_parquet(x=[1, 2, 3]), _parquet(y=[1, 2]), [], "{tmp}/out"), ValueError,
      r"row group 0 has 3 rows on the left and 2 on the right", id="splice-row-counts"),
    P(lambda: _native.splice_parquet(_parquet(x=[1]), _parquet(x=[2]), [], "{tmp}/out"), ValueError,
      r'column "x" is in both files', id="splice-same-column"),
    P(lambda: _native.splice_parquet(_parquet(x=[1]), _parquet(y=[1]), [("k", 1)], "{tmp}/out"), TypeError,
      r"'key_value_metadata'", id="splice-metadata-int"),
    P(lambda: _native.splice_parquet(_parquet(x=[1]), _parquet(y=[1]), [], "{tmp}/no/such/dir/out"),
      FileNotFoundError, r"no/such/dir/out", id="splice-missing-dir"),
    P(lambda: _native.splice_parquet(_parquet(x=[1]), _parquet(y=[1]), [], "{tmp}"), IsADirectoryError,
      r"Is a directory", id="splice-path-is-dir"),
    # MicroBatcher (its other paths: test_loader_native.py::test_bad_inputs_name_the_argument)
    P(lambda: _native.MicroBatcher(5), TypeError, r"tables must be a list", id="batcher-tables-int"),
    P(lambda: _native.MicroBatcher([_score_rows(prompt_token_ids=pa.array([None], pa.list_(pa.int32())))]),
      ValueError, r"tables\[0\]\.prompt_token_ids is null at row 0", id="batcher-prompt-null"),
    P(lambda: _native.MicroBatcher([_score_rows(prompt_token_ids=pa.array([[1]], pa.list_(pa.int64())))]),
      TypeError, r"tables\[0\]\.prompt_token_ids must be list<int32>", id="batcher-prompt-int64"),
    P(lambda: _native.MicroBatcher([_score_rows(response_token_ids=pa.array([[1]], pa.large_list(pa.int32())))]),
      TypeError, r"tables\[0\]\.response_token_ids must be list<int32>, got LargeList", id="batcher-large-list"),
    P(lambda: _native.MicroBatcher([_score_rows(advantage=pa.array([None], pa.float64()))]), ValueError,
      r"tables\[0\]\.advantage is null at row 0", id="batcher-advantage-null"),
    P(lambda: _native.MicroBatcher([_score_rows(advantage=pa.array([0.5], pa.float32()))]), TypeError,
      r"tables\[0\]\.advantage must be float64, got Float32", id="batcher-advantage-float32"),
    P(lambda: _native.MicroBatcher([_score_rows(reward=pa.array([1]))]), TypeError,
      r"tables\[0\]\.reward must be float64, got Int64", id="batcher-reward-int"),
    P(lambda: _native.MicroBatcher([_score_rows()], rejected=True), ValueError,
      r'tables\[0\] has no column "reference_rejected_token_ids"', id="batcher-rejected-missing"),
    P(lambda: _native.MicroBatcher([_score_rows()], names="ab"), TypeError, r"'names'", id="batcher-names-str"),
    P(lambda: _native.MicroBatcher([_score_rows()], overlong="cut"), ValueError,
      r"overlong must be one of truncate, skip, got \"cut\"", id="batcher-overlong"),
    P(lambda: _native.MicroBatcher([_score_rows()], max_seq_len=-3), ValueError, r"max_seq_len must be a positive",
      id="batcher-max-seq-len-negative"),
    P(lambda: _build(spans=[0, 0, 1]), TypeError, r"spans must be an Arrow array", id="build-spans-list"),
    P(lambda: _build(spans=pa.array([0, None, 1], pa.int64())), ValueError, r"spans\[1\] is null",
      id="build-spans-null"),
    P(lambda: _build(spans=pa.array([0, 0, 5], pa.int64())), ValueError,
      r"table 0, row \d+: column \w+ has no such row", id="build-span-past-the-end"),
    P(lambda: _build(spans=pa.array([0, 0, 0], pa.int64())), ValueError, r"spans\[0\] has no rows",
      id="build-span-empty"),
    P(lambda: _build(_score_rows(prompt_token_ids=pa.array([[]], pa.list_(pa.int32())))), ValueError,
      r"prompt_token_ids is empty", id="build-empty-prompt"),
    P(lambda: _build(micro_batch_tokens=-1), ValueError, r"micro_batch_tokens must be >= 0",
      id="build-budget-negative"),
    P(lambda: _build(pad_id="0"), TypeError, r"'pad_id'", id="build-pad-id-str"),
    P(lambda: _native.MicroBatcher([_score_rows()]).build(SPAN), TypeError, r"pad_id", id="build-pad-id-missing"),
]


@pytest.mark.parametrize("call,error,names", CASES)
def test_bad_input_is_an_exception_naming_it(call, error, names, tmp_path, monkeypatch):
    # "{tmp}" in a path stands for this test's directory.
    real = _native.splice_parquet
    monkeypatch.setattr(_native, "splice_parquet",
                        lambda left, right, kv, path, *a: real(left, right, kv, path.format(tmp=tmp_path), *a))
    with pytest.raises(error) as e:
        call()
    assert re.search(names, _shown(e.value)), _shown(e.value)


def test_null_strings_give_null_rewards_not_errors():
    """A null prompt is an invalid row (null reward), as score_one's error is; a null answer is
    not correct."""
    out = _native.arith_rewards(pa.array([None, "1+1="], pa.string()), pa.array(["2", None]), pa.array(["2", "2"]))
    assert pa.array(out).to_pylist() == [None, -1.0]


def test_corrupt_parquet_is_a_value_error(tmp_path):
    """Bytes flipped anywhere in a shard: splice_parquet raises ValueError (or writes a file),
    never panics."""
    good, right = _parquet(x=list(range(50)), s=[str(i) for i in range(50)]).to_pybytes(), _parquet(y=list(range(50)))
    rng, refused = random.Random(0), 0
    for _ in range(200):
        data = bytearray(good)
        for _ in range(rng.randint(1, 4)):
            data[rng.randrange(len(data))] = rng.randrange(256)
        try:
            _native.splice_parquet(pa.py_buffer(bytes(data)), right, [], str(tmp_path / "out"))
        except ValueError as e:
            assert "splice_parquet" in str(e)
            refused += 1
    assert refused > 20  # the flips do reach the footer's parser
