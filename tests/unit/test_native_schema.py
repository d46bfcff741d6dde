"""One schema for what crosses between Rust and Python, both sides checked against it.

- Enum names: the config's Literals (grao_pipe.enums) equal the names the kernels parse
  (``_native.ADVANTAGE_MODES``, ``_native.OVERLONG_MODES``).
- Micro-batches: ``_native.MICRO_BATCH_SCHEMA`` (generated in Rust from the same list as the
  classes) against the stub ``_native.pyi``, the learner's ``Batch`` / ``Packed``, and real
  micro-batches: every field present, of its dtype and dims, and handed to torch without a copy.
"""

from __future__ import annotations

import ast
import dataclasses
from pathlib import Path
from typing import get_args

import numpy as np
import pyarrow as pa
import pytest

torch = pytest.importorskip("torch")

from score_rows import random_groups, write_rows  # noqa: E402

import grao_pipe  # noqa: E402
from grao_pipe import _native, enums  # noqa: E402
from grao_pipe.config import AdvantageConfig, TrainConfig  # noqa: E402
from grao_pipe.learner.data import Batch, GroupStore, Packed, _micro_batch  # noqa: E402

SCHEMA = _native.MICRO_BATCH_SCHEMA
ARRAY_DTYPES = {"int64": np.int64, "float32": np.float32, "bool": np.bool_}
# The learner's dataclass each transfer class becomes (MicroBatchArrays / StepArrays stay Rust's).
LEARNER = {"PaddedArrays": Batch, "PackedArrays": Packed}


# ---- enum names ----


@pytest.mark.parametrize(
    "literal,native,config_field",
    [
        (enums.AdvantageMode, _native.ADVANTAGE_MODES, AdvantageConfig.model_fields["mode"]),
        (enums.Overlong, _native.OVERLONG_MODES, TrainConfig.model_fields["overlong"]),
    ],
    ids=["advantage mode", "overlong"],
)
def test_config_choices_are_the_kernels_choices(literal, native, config_field):
    assert get_args(literal) == native
    assert get_args(config_field.annotation) == native  # the config uses the shared Literal


def test_kernels_refuse_a_name_outside_the_list():
    ids, rewards = pa.array([1, 1]), pa.array([1.0, 0.0])
    for mode in _native.ADVANTAGE_MODES:
        _native.group_advantages(ids, rewards, mode=mode)
    with pytest.raises(ValueError, match=", ".join(_native.ADVANTAGE_MODES)):
        _native.group_advantages(ids, rewards, mode="zscore")


# ---- the stub ----


def _stub() -> ast.Module:
    return ast.parse((Path(grao_pipe.__file__).parent / "_native.pyi").read_text())


def _annotation(dtype: str) -> str:
    """What the stub declares for a field of this schema dtype."""
    return "NdArray" if dtype in ARRAY_DTYPES else dtype


def test_stub_declares_the_schema():
    classes = {c.name: c for c in _stub().body if isinstance(c, ast.ClassDef)}
    for name, fields in SCHEMA.items():
        props = [(f.name, ast.unparse(f.returns)) for f in classes[name].body
                 if isinstance(f, ast.FunctionDef) and f.returns is not None]
        assert props == [(field, _annotation(dtype)) for field, dtype, _ in fields], name


def test_stub_lists_every_function_and_class_of_the_extension():
    stub = {n.name for n in _stub().body if isinstance(n, ast.FunctionDef | ast.ClassDef)}
    stub |= {n.target.id for n in _stub().body if isinstance(n, ast.AnnAssign) and isinstance(n.target, ast.Name)}
    public = {n for n in dir(_native) if not n.startswith("_")} | {"__version__"}
    assert public <= stub, public - stub


# ---- names and dims ----


@pytest.mark.parametrize("cls", sorted(SCHEMA))
def test_array_names_carry_their_dims(cls):
    for name, dtype, dims in SCHEMA[cls]:
        if dtype in ARRAY_DTYPES:
            assert name.rsplit("_", 1)[1] == "".join(d[0] for d in dims), name
        else:
            assert dims == (), name


@pytest.mark.parametrize("cls", sorted(LEARNER))
def test_learner_dataclass_has_the_schema_fields(cls):
    """Same fields in the same order; Packed names its index maps without the ``_K``."""
    fields = [f.name for f in dataclasses.fields(LEARNER[cls])]
    assert len(fields) == len(SCHEMA[cls])
    for field, (name, dtype, dims) in zip(fields, SCHEMA[cls], strict=True):
        assert field in (name, name.removesuffix("_" + "".join(d[0] for d in dims))), (field, name)
        assert (field in ("n_samples", "real_tokens", "padded_tokens")) == (dtype == "int")


# ---- real micro-batches ----


@pytest.fixture(scope="module")
def step(tmp_path_factory):
    root = tmp_path_factory.mktemp("score")
    paths = write_rows(root, [random_groups(30, seed=3, rejected=True)])
    store = GroupStore(paths, root, max_seq_len=10, rejected=True)
    spans = pa.array(store.index[:12].ravel())
    return store, _native.MicroBatcher(store.tables, max_seq_len=10, rejected=True).build(
        spans, pad_id=0, micro_batch_tokens=60, pack_tokens=16)


def _check(obj, cls: str, dims: dict[str, int]) -> None:
    """``obj`` has exactly the fields of ``SCHEMA[cls]``, each of its dtype; array dims agree
    with each other (bound in ``dims``, letter by letter)."""
    assert type(obj).__name__ == cls
    assert {n for n in dir(obj) if not n.startswith("_")} == {name for name, *_ in SCHEMA[cls]}
    for name, dtype, names in SCHEMA[cls]:
        value = getattr(obj, name)
        if dtype == "int":
            assert type(value) is int, name
        elif dtype in ARRAY_DTYPES:
            a = np.asarray(value)
            assert a.dtype == ARRAY_DTYPES[dtype] and a.flags.c_contiguous, name
            assert a.ndim == len(names), name
            for d, size in zip(names, a.shape, strict=True):
                letter, minus = d[0], (1 if d.endswith("-1") else 0)
                assert dims.setdefault(letter, size + minus) == size + minus, (name, d, dims)


def test_micro_batches_match_the_schema(step):
    _, out = step
    _check(out, "StepArrays", {"S": 12})
    assert len(out.micro_batches) > 1
    for mb in out.micro_batches:
        _check(mb, "MicroBatchArrays", {})
        dims: dict[str, int] = {}
        _check(mb.padded, "PaddedArrays", dims)
        p = mb.padded
        assert p.n_samples == dims["B"] * dims["G"] and p.padded_tokens == dims["N"] * dims["T"]
        assert dims["N"] == p.n_samples + 2 * dims["B"]  # samples, references, rejected answers
        assert mb.packed is not None
        packed_dims: dict[str, int] = {}
        _check(mb.packed, "PackedArrays", packed_dims)
        assert mb.packed.padded_tokens == packed_dims["R"] * packed_dims["T"]
        assert mb.packed.real_tokens == p.real_tokens


def test_learner_tensors_share_the_kernels_memory(step):
    """Each array field lands, without a copy, in the Batch / Packed field of its name: a field
    read into another of the same dtype and shape would fail here."""
    _, out = step
    for arrays in out.micro_batches:
        mb = _micro_batch(arrays)
        for cls, rust, learner in (("PaddedArrays", arrays.padded, mb.batch),
                                   ("PackedArrays", arrays.packed, mb.packed)):
            fields = [f.name for f in dataclasses.fields(LEARNER[cls])]
            for field, (name, dtype, _) in zip(fields, SCHEMA[cls], strict=True):
                value = getattr(learner, field)
                if dtype == "int":
                    assert value == getattr(rust, name), name
                    continue
                address = getattr(rust, name).__array_interface__["data"][0]
                assert value.data_ptr() == address or value.numel() == 0, (cls, name, field)
                assert value.dtype == torch.from_numpy(np.zeros(0, ARRAY_DTYPES[dtype])).dtype, name
