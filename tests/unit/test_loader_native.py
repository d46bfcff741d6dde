"""The Rust micro-batch kernel (GroupStore.micro_batches, StepLoader) against the Python
reference (GroupStore.group, micro_batches, collate, pack): bit-identical tensors and counts."""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pytest

torch = pytest.importorskip("torch")

from score_rows import random_groups, write_rows  # noqa: E402

from grao_pipe import _native  # noqa: E402
from grao_pipe.errors import DataError  # noqa: E402
from grao_pipe.learner.data import (  # noqa: E402
    GroupStore,
    StepLoader,
    collate,
    epoch_order,
    micro_batches,
    pack,
)

PAD = 0


@pytest.fixture(scope="module")
def shards(tmp_path_factory):
    root = tmp_path_factory.mktemp("score")
    return write_rows(root, [random_groups(n, seed=s, shard=s) for s, n in enumerate([40, 0, 25, 35])]), root


def _same(a, b, what: str) -> None:
    """Bit-identical: dtype, shape and bytes."""
    if isinstance(a, torch.Tensor):
        assert (a.dtype, tuple(a.shape)) == (b.dtype, tuple(b.shape)), what
        assert a.contiguous().numpy().tobytes() == b.contiguous().numpy().tobytes(), what
    else:
        assert a == b, what


def _reference(store: GroupStore, ks, budget: int, pack_tokens: int):
    mbs = micro_batches([store.group(int(k)) for k in ks], budget)
    out = []
    for mb in mbs:
        batch = collate(mb, PAD)
        width = max(pack_tokens, batch.input_ids_NT.shape[1])
        out.append((batch, pack(batch, width, PAD) if pack_tokens else None))
    return out


@pytest.mark.parametrize("max_seq_len,overlong", [(None, "truncate"), (9, "truncate"), (9, "skip"), (4, "skip")])
@pytest.mark.parametrize("budget,pack_tokens", [(0, 0), (0, 12), (60, 24), (25, 1)])
def test_kernel_equals_the_python_reference(shards, tmp_path, max_seq_len, overlong, budget, pack_tokens):
    paths, _ = shards
    old = GroupStore(paths, tmp_path, max_seq_len, overlong)
    new = GroupStore(paths, tmp_path, max_seq_len, overlong)
    rng = np.random.default_rng(budget + pack_tokens + (max_seq_len or 0))
    for _ in range(3):
        ks = rng.permutation(len(old))[:17]
        want = _reference(old, ks, budget, pack_tokens)
        got = new.micro_batches(ks, PAD, micro_batch_tokens=budget, pack_tokens=pack_tokens, fit_rows=False)
        assert len(got) == len(want)
        for (wb, wp), mb in zip(want, got, strict=True):
            for f in wb.__dataclass_fields__:
                _same(getattr(mb.batch, f), getattr(wb, f), f"Batch.{f}")
            assert (mb.packed is None) == (wp is None)
            if wp is not None:
                for f in wp.__dataclass_fields__:
                    _same(getattr(mb.packed, f), getattr(wp, f), f"Packed.{f}")
    assert new.stats == old.stats  # each group counted once, however often it is batched
    if max_seq_len is not None:
        assert new.stats.truncated + new.stats.skipped > 0


@pytest.mark.parametrize("max_seq_len,overlong", [(None, "truncate"), (9, "truncate"), (6, "skip")])
def test_kernel_equals_the_python_reference_with_rejected_answers(tmp_path, max_seq_len, overlong):
    """DPO on dataset pairs: B more rows, each group's prompt + its rejected answer (the prompt
    alone where there is none or it cannot fit), and the pair mask."""
    paths = write_rows(tmp_path, [random_groups(n, seed=10 + s, shard=s, rejected=True) for s, n in enumerate([30, 20])])
    old = GroupStore(paths, tmp_path, max_seq_len, overlong, rejected=True)
    new = GroupStore(paths, tmp_path, max_seq_len, overlong, rejected=True)
    ks = np.random.default_rng(0).permutation(len(old))[:19]
    (wb, _), = _reference(old, ks, 0, 0)
    (mb,) = new.micro_batches(ks, PAD)
    assert wb.has_rejected_rows and 0 < float(wb.rejected_mask_B.sum()) < len(ks)
    for f in wb.__dataclass_fields__:
        _same(getattr(mb.batch, f), getattr(wb, f), f"Batch.{f}")


def test_fitted_rows_hold_the_same_sequences_with_no_more_padding(shards, tmp_path):
    paths, _ = shards
    store = GroupStore(paths, tmp_path)
    ks = np.arange(len(store))
    for mb in store.micro_batches(ks, PAD, micro_batch_tokens=200, pack_tokens=64):
        b, p = mb.batch, mb.packed
        lengths = b.attention_mask_NT.sum(-1)
        assert p.real_tokens == b.real_tokens == int(lengths.sum())
        assert p.padded_tokens <= b.padded_tokens and p.input_ids_RT.shape[1] <= max(64, b.input_ids_NT.shape[1])
        # Every sequence sits in one row, in order, with positions 0..len-1; maps point at it.
        for n, length in enumerate(lengths.tolist()):
            row, cols = (p.segment_RT == n).nonzero(as_tuple=True)
            assert len(row) == length and row.unique().numel() == 1
            assert p.input_ids_RT[row, cols].tolist() == b.input_ids_NT[n, :length].tolist()
            assert p.position_ids_RT[row, cols].tolist() == list(range(length))
        assert torch.equal(p.input_ids_RT[p.src_row, p.src_col + 1], b.input_ids_NT[p.dst_seq, p.dst_pos + 1])


def test_arrays_are_shared_not_copied(shards, tmp_path):
    paths, _ = shards
    store = GroupStore(paths, tmp_path)
    out = _native.MicroBatcher(store.tables).build(pa.array(store.index[:2].ravel()), pad_id=PAD, pack_tokens=16)
    packed = out.micro_batches[0].packed
    assert packed is not None
    nd = packed.input_ids_RT
    ids = torch.from_numpy(np.asarray(nd))
    assert ids.data_ptr() == nd.__array_interface__["data"][0] and ids.dtype == torch.int64
    ids[0, 0] = 12345  # writable, and the memory outlives every other reference to it
    del out, packed, nd
    assert ids[0, 0] == 12345


def test_step_loader_builds_the_steps_of_the_worker(shards, tmp_path):
    paths, _ = shards
    store = GroupStore(paths, tmp_path)
    loader = StepLoader(store, seed=3, step_size=8, rank=1, world=2, pad_id=PAD, micro_batch_tokens=40,
                        pack_tokens=32, start=5, stop=len(store) // 8 + 4)  # into the 2nd epoch
    steps = list(loader)
    assert [s.step for s in steps] == list(range(5, len(store) // 8 + 4))
    per_epoch = len(store) // 8
    for s in steps:
        epoch, i = divmod(s.step, per_epoch)
        # The order the worker used before the loader existed.
        order = epoch_order(len(store), 3, epoch)
        mine = order[i * 8 : (i + 1) * 8].tolist()[1::2]
        want = store.micro_batches(mine, PAD, micro_batch_tokens=40, pack_tokens=32)
        assert len(s.micro) == len(want) and s.wait_s >= 0 and s.first_group == mine[0]
        for got, exp in zip(s.micro, want, strict=True):
            assert torch.equal(got.batch.input_ids_NT, exp.batch.input_ids_NT)
            assert torch.equal(got.packed.input_ids_RT, exp.packed.input_ids_RT)
        filler = loader.filler(s)
        assert torch.equal(filler.batch.input_ids_NT, store.micro_batches([mine[0]], PAD, pack_tokens=32)[0].batch.input_ids_NT)
    loader.close()


def test_step_loader_raises_the_builders_error(shards, tmp_path):
    paths, _ = shards
    store = GroupStore(paths, tmp_path)
    store.index[:, 2] = 10**6  # spans past the end of their tables
    loader = StepLoader(store, seed=0, step_size=4, rank=0, world=1, pad_id=PAD)
    with pytest.raises(ValueError, match=r"\d{5}-\w+\.arrow: table \d+, row \d+: column \w+ has no such row"):
        next(loader)
    loader.close()


def test_empty_prompt_is_a_data_error(tmp_path):
    paths = write_rows(tmp_path, [random_groups(3, seed=0, prompt_len=(0, 1))])
    with pytest.raises(DataError, match="empty prompt_token_ids"):
        GroupStore(paths, tmp_path)


def test_bad_inputs_name_the_argument(shards, tmp_path):
    paths, _ = shards
    store = GroupStore(paths, tmp_path)
    batch = store.tables[0]
    with pytest.raises(TypeError, match=r"tables\[0\] must be an Arrow array"):
        _native.MicroBatcher([object()])
    with pytest.raises(TypeError, match=r"tables\[0\] must be a table of score rows"):
        _native.MicroBatcher([pa.array([1, 2])])
    with pytest.raises(ValueError, match=r"tables\[1\] has no column \"advantage\""):
        _native.MicroBatcher([batch, batch.drop_columns(["advantage"])])
    wrong = batch.set_column(batch.schema.get_field_index("behaviour_logprobs"), "behaviour_logprobs",
                             pa.array([[1.0]] * batch.num_rows, pa.list_(pa.float64())))
    with pytest.raises(TypeError, match=r"tables\[0\].behaviour_logprobs must be list<float32>, got List\(Float64\)"):
        _native.MicroBatcher([wrong])
    holes = batch.set_column(batch.schema.get_field_index("response_token_ids"), "response_token_ids",
                             pa.array([[1, None]] * batch.num_rows, pa.list_(pa.int32())))
    with pytest.raises(ValueError, match=r"response_token_ids has a null element"):
        _native.MicroBatcher([holes])
    with pytest.raises(ValueError, match="overlong must be"):
        _native.MicroBatcher([batch], overlong="cut")
    with pytest.raises(ValueError, match="max_seq_len must be a positive"):
        _native.MicroBatcher([batch], max_seq_len=0)
    with pytest.raises(ValueError, match="names has 2 entries for 1 tables"):
        _native.MicroBatcher([batch], names=["a", "b"])
    nb = _native.MicroBatcher([batch])
    with pytest.raises(TypeError, match="spans must be an int64 array"):
        nb.build(pa.array([0.0, 0.0, 1.0]), pad_id=0)
    with pytest.raises(ValueError, match="spans has 2 values"):
        nb.build(pa.array([0, 0], pa.int64()), pad_id=0)
    with pytest.raises(ValueError, match=r"spans\[1\] = -1"):
        nb.build(pa.array([0, -1, 1], pa.int64()), pad_id=0)
    with pytest.raises(ValueError, match=r"spans\[0\] names table 3, but there are 1 tables"):
        nb.build(pa.array([3, 0, 1], pa.int64()), pad_id=0)
    with pytest.raises(ValueError, match="pack_tokens must be >= 0"):
        nb.build(pa.array([0, 0, 1], pa.int64()), pad_id=0, pack_tokens=-1)
