"""Groups from score shards, and padded or packed batches of (prompt + continuation) sequences.

Each group becomes G sample sequences plus one reference sequence. Per-token side inputs
(behaviour and reference-model log-probs) are aligned with the shifted targets, so a loss can
read ``x_NT[n, t]`` for the token predicted at position t.

The learner's path: ``StepLoader`` asks ``GroupStore.micro_batches`` for each step's
micro-batches, which the Rust kernel (``grao_pipe._native.MicroBatcher``, rust/src/microbatch.rs)
writes straight from the memory-mapped Arrow buffers, one step ahead in a background thread.
``GroupStore.group`` / ``collate`` / ``pack`` are the same layouts built from Python lists: the
reference the kernel is tested against, and a way to batch groups built in memory.
"""

from __future__ import annotations

import atexit
import json
import os
import queue
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, NamedTuple

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import torch

from grao_pipe.enums import Overlong
from grao_pipe.errors import FULL_ERRNOS, DataError, storage_full
from grao_pipe.schemas import tmp_name
from grao_pipe.storage.shards import atomic_write_bytes, file_sha256, read_shard

if TYPE_CHECKING:
    from grao_pipe import _native

COLUMNS = ["group_id", "prompt_token_ids", "reference_token_ids", "response_token_ids", "reward",
           "advantage", "reference_advantage", "keep", "behaviour_logprobs", "ref_logprobs",
           "ref_reference_logprobs"]
# A dataset's rejected answer (DPO on dataset pairs): null columns when a shard predates them.
REJECTED_COLUMNS = {"reference_rejected_token_ids": pa.list_(pa.int32()),
                    "ref_reference_rejected_logprobs": pa.list_(pa.float32())}


@dataclass
class Group:
    group_id: str
    prompt: list[int]
    reference: list[int]
    reference_advantage: float
    ref_reference: list[float] | None
    responses: list[list[int]] = field(default_factory=list)
    advantages: list[float] = field(default_factory=list)
    rewards: list[float] = field(default_factory=list)
    behaviour: list[list[float] | None] = field(default_factory=list)
    ref: list[list[float] | None] = field(default_factory=list)
    # False: the reference did not fit max_seq_len (overlong=skip); ``reference`` is then empty
    # and objectives that read y give the whole group zero weight (its Â_y was computed
    # against y, so training on the samples alone would be a different objective).
    reference_fits: bool = True
    # The dataset's rejected answer + EOS, when the store reads them (``rejected=True``): empty
    # where the row has none or it cannot fit (no pair); None: not read.
    rejected: list[int] | None = None
    ref_rejected: list[float] | None = None


@dataclass
class LoadStats:
    rows: int = 0
    truncated: int = 0  # sequences cut to max_seq_len
    skipped: int = 0  # samples (or whole groups, for an over-long reference) left out


def _fit(prompt_len: int, cont: list, max_len: int | None, mode: str) -> list | None:
    """The continuation cut to fit max_len (None: skip it)."""
    if max_len is None or prompt_len + len(cont) <= max_len:
        return cont
    if mode == "skip" or prompt_len >= max_len:
        return None
    return cont[: max_len - prompt_len]


class GroupStore:
    """Random access to the kept groups of score shards, with memory flat in dataset size.

    Each shard's kept rows are converted once (one shard at a time) to an uncompressed Arrow IPC
    file under ``cache_dir`` (one record batch) and memory-mapped: slicing a group is zero-copy
    and the OS pages in only what a step touches. In memory: 3 integers per group, and one
    seen-flag per group for ``stats``.
    """

    def __init__(self, shards: list[tuple[Path, str]], cache_dir: Path, max_seq_len: int | None = None,
                 overlong: Overlong = "truncate", rejected: bool = False):
        from grao_pipe import _native

        self.max_seq_len, self.overlong, self.rejected = max_seq_len, overlong, rejected
        self.stats = LoadStats()
        self.tables: list[pa.RecordBatch] = []
        spans: list[np.ndarray] = []
        for i, (path, sha) in enumerate(shards):
            table = self._open(cache_file(cache_dir, i, sha), path, sha)
            self.stats.rows += table.num_rows
            ids = table["group_id"]
            if table.num_rows:
                _check_prompts(table, path)
                change = pc.not_equal(ids.slice(1), ids.slice(0, table.num_rows - 1))
                starts = np.concatenate([[0], pc.indices_nonzero(change).to_numpy() + 1])
                ends = np.append(starts[1:], table.num_rows)
                spans.append(np.stack([np.full(len(starts), i), starts, ends - starts], axis=1))
            self.tables.append(table)
        self.index = np.concatenate(spans).astype(np.int64) if spans else np.zeros((0, 3), dtype=np.int64)
        self._seen = np.zeros(len(self.index), dtype=bool)
        self._lock = threading.Lock()  # stats are counted from the loader thread and the main one
        files = [str(cache_file(cache_dir, i, sha)) for i, (_, sha) in enumerate(shards)]
        self._batcher = _native.MicroBatcher(self.tables, max_seq_len=max_seq_len, overlong=overlong, names=files,
                                             rejected=rejected)

    @staticmethod
    def _open(ipc: Path, path: Path, sha: str) -> pa.RecordBatch:
        # The train stage hashed every file against its seal before torchrun started
        # (prepare_cache); here only what is cheap: a missing seal or a size that differs from it
        # (a learner started by hand, a file replaced since) gets the file rebuilt, never mapped.
        if not _seal_matches(ipc, full=False):
            _convert(ipc, path, sha)
        try:
            reader = pa.ipc.open_file(pa.memory_map(str(ipc)))
        except (OSError, pa.ArrowException):
            _convert(ipc, path, sha)
            reader = pa.ipc.open_file(pa.memory_map(str(ipc)))
        if reader.num_record_batches == 1:
            return reader.get_batch(0)  # zero-copy: a view of the mapped file
        # Empty, or written in several batches (before this file format): one batch in memory.
        return reader.read_all().combine_chunks().to_batches()[0] if reader.num_record_batches \
            else pa.RecordBatch.from_pylist([], schema=reader.schema)

    def __len__(self) -> int:
        return len(self.index)

    def group(self, k: int) -> Group:
        t, off, n = (int(x) for x in self.index[k])
        rows = self.tables[t].slice(off, n).to_pylist()
        count = not self._seen[k]  # LoadStats count each group once, not once per epoch
        self._seen[k] = True
        first = rows[0]
        plen = len(first["prompt_token_ids"])
        fitted = _fit(plen, first["reference_token_ids"], self.max_seq_len, self.overlong)
        if fitted is None:  # the reference cannot fit: no stand-in tokens, the group is marked
            ref, ref_lp = [], None
            self.stats.skipped += count
        else:
            ref, ref_lp = fitted, first["ref_reference_logprobs"]
            self.stats.truncated += count and ref is not first["reference_token_ids"]
        grp = Group(first["group_id"], first["prompt_token_ids"], ref, first["reference_advantage"],
                    ref_lp[: len(ref)] if ref_lp is not None else None, reference_fits=fitted is not None)
        if self.rejected:  # no pair (empty) where the row has none or it cannot fit; not counted
            answer = first.get("reference_rejected_token_ids")
            grp.rejected = (_fit(plen, answer, self.max_seq_len, self.overlong) if answer is not None else None) or []
            rej_lp = first.get("ref_reference_rejected_logprobs")
            grp.ref_rejected = rej_lp[: len(grp.rejected)] if rej_lp is not None and grp.rejected else None
        for row in rows:
            resp = _fit(plen, row["response_token_ids"], self.max_seq_len, self.overlong)
            if resp is None:
                self.stats.skipped += count
                continue
            self.stats.truncated += count and resp is not row["response_token_ids"]
            b, r = row["behaviour_logprobs"], row["ref_logprobs"]
            grp.responses.append(resp)
            grp.advantages.append(row["advantage"])
            grp.rewards.append(row["reward"])
            grp.behaviour.append(b[: len(resp)] if b is not None else None)
            grp.ref.append(r[: len(resp)] if r is not None else None)
        return grp


    def micro_batches(self, ks: Sequence[int] | np.ndarray, pad_id: int, micro_batch_tokens: int = 0,
                      pack_tokens: int = 0, fit_rows: bool = True) -> list[MicroBatch]:
        """Groups ``ks`` (in this order) as micro-batches of at most ``micro_batch_tokens`` tokens,
        each padded and, with ``pack_tokens``, packed into rows of at most
        ``max(pack_tokens, longest sequence)`` tokens, as narrow as the packing allows
        (``fit_rows=False``: exactly that wide). Equal to ``micro_batches`` / ``collate`` / ``pack``
        over ``group(k)``, built by the Rust kernel from the mapped buffers (GIL released)."""
        ks = np.asarray(ks, dtype=np.int64)
        out = self._batcher.build(pa.array(self.index[ks].ravel()), pad_id=pad_id,
                                  micro_batch_tokens=micro_batch_tokens, pack_tokens=pack_tokens, fit_rows=fit_rows)
        _, first = np.unique(ks, return_index=True)
        with self._lock:  # LoadStats count each group once, not once per epoch
            new = first[~self._seen[ks[first]]]
            self.stats.truncated += int(np.asarray(out.truncated_S)[new].sum())
            self.stats.skipped += int(np.asarray(out.skipped_S)[new].sum())
            self._seen[ks] = True
        return [_micro_batch(mb) for mb in out.micro_batches]


def cache_file(cache_dir: Path, i: int, sha: str) -> Path:
    return cache_dir / f"{i:05d}-{sha[:16]}.arrow"


def seal_file(ipc: Path) -> Path:
    """The seal of a cache file: its size and sha256, written once the file is durable."""
    return ipc.with_name(ipc.name + ".seal")


def _seal_matches(ipc: Path, full: bool = True) -> bool:
    """Whether ``ipc`` is the file its seal describes: size always, sha256 with ``full``."""
    try:
        seal = json.loads(seal_file(ipc).read_text())
        if ipc.stat().st_size != seal["size"]:
            return False
        return not full or file_sha256(ipc) == seal["sha256"]
    except (OSError, ValueError, KeyError, TypeError):
        return False


def _convert(ipc: Path, path: Path, sha: str) -> pa.Table:
    """A score shard's kept rows (checksum checked) as one uncompressed Arrow IPC record batch,
    fsynced and sealed (size + sha256 in ``<file>.seal``, written after the file is in place:
    a crash in between leaves a file without a seal, which is rebuilt)."""
    table = read_shard(path, "score", sha)
    for name, typ in REJECTED_COLUMNS.items():  # shards from before these columns: null
        if name not in table.column_names:
            table = table.append_column(name, pa.nulls(table.num_rows, typ))
    table = table.select([*COLUMNS, *REJECTED_COLUMNS]).filter(pc.field("keep")).combine_chunks()
    seal_file(ipc).unlink(missing_ok=True)
    tmp = ipc.with_name(tmp_name(ipc.name))
    try:
        with pa.OSFile(str(tmp), "wb") as sink, pa.ipc.new_file(sink, table.schema) as writer:
            writer.write_table(table)
        with open(tmp, "rb+") as f:
            os.fsync(f.fileno())
        seal = {"size": tmp.stat().st_size, "sha256": file_sha256(tmp), "source_sha256": sha}
        tmp.replace(ipc)
    except BaseException as e:
        tmp.unlink(missing_ok=True)
        if isinstance(e, OSError) and e.errno in FULL_ERRNOS:
            raise storage_full(e, str(ipc)) from None
        raise
    atomic_write_bytes(seal_file(ipc), json.dumps(seal).encode())
    return table


def prepare_cache(shards: list[tuple[Path, str]], cache_dir: Path, vocab_size: int | None = None) -> int:
    """Convert every score shard for the learner (in the train stage's process, before torchrun
    starts: a corrupt shard is a data error there, not a learner failure); the number of groups
    with kept rows. A file already there is used only if it hashes to its seal; anything else
    (rewritten, emptied by a power loss, torn, unsealed) is rebuilt from its score shard."""
    cache_dir.mkdir(parents=True, exist_ok=True)
    groups = 0
    for i, (path, sha) in enumerate(shards):
        ipc = cache_file(cache_dir, i, sha)
        table = None
        if _seal_matches(ipc):
            try:
                table = pa.ipc.open_file(pa.memory_map(str(ipc))).read_all()
            except (OSError, pa.ArrowException):
                table = None
        if table is None:
            table = _convert(ipc, path, sha)
        if table.num_rows:
            _check_prompts(table, path)
            if vocab_size is not None:
                _check_vocab(table, path, vocab_size)
            ids = table["group_id"]
            groups += 1 + (pc.sum(pc.not_equal(ids.slice(1), ids.slice(0, table.num_rows - 1))).as_py() or 0)
    return groups


def _check_vocab(table: pa.Table, path: Path, vocab_size: int) -> None:
    """Token ids the policy's embedding has (else every rank fails on an index error)."""
    for col in ("prompt_token_ids", "response_token_ids", "reference_token_ids", "reference_rejected_token_ids"):
        if col not in table.column_names:
            continue
        values = pc.list_flatten(table[col])
        top, low = pc.max(values).as_py(), pc.min(values).as_py()
        if top is not None and (top >= vocab_size or low < 0):
            bad = top if top >= vocab_size else low
            raise DataError(f"{path}: column {col} holds token id {bad}, outside the policy's vocabulary of "
                            f"{vocab_size}; the shard was tokenized for another model: re-run generate for this "
                            "model (or point model.path at the one that generated it)")


def _check_prompts(table: pa.RecordBatch | pa.Table, path: Path) -> None:
    lengths = pc.list_value_length(table["prompt_token_ids"])
    if pc.min(lengths).as_py() == 0:
        row = pc.index(lengths, 0).as_py()
        raise DataError(f"{path}: kept row {row} (group_id {table['group_id'][row].as_py()}) has an empty "
                        "prompt_token_ids; the learner needs a prompt token before every continuation. "
                        "Drop the row (keep=false) or re-run score")

def group_tokens(g: Group) -> int:
    rejected = len(g.prompt) + len(g.rejected) if g.rejected is not None else 0
    return sum(len(g.prompt) + len(r) for r in g.responses) + len(g.prompt) + len(g.reference) + rejected


def micro_batches(groups: list[Group], budget: int) -> list[list[Group]]:
    """Consecutive groups in micro-batches of at most ``budget`` tokens (a group is never split;
    one larger than the budget gets a micro-batch of its own)."""
    if budget <= 0:
        return [groups]
    out: list[list[Group]] = []
    used = budget + 1
    for g in groups:
        n = group_tokens(g)
        if used + n > budget:
            out.append([])
            used = 0
        out[-1].append(g)
        used += n
    return out


@dataclass(frozen=True, kw_only=True)  # built by field name only (_micro_batch, collate)
class Batch:
    input_ids_NT: torch.Tensor
    attention_mask_NT: torch.Tensor
    loss_mask_NT: torch.Tensor  # over targets (shifted by one): 1 on continuation tokens
    behaviour_NT: torch.Tensor  # behaviour log-prob of each target token (0 where unknown)
    ref_NT: torch.Tensor  # reference-model log-prob of each target token (0 where unknown)
    adv_BG: torch.Tensor
    reward_BG: torch.Tensor
    ref_adv_B: torch.Tensor
    mask_BG: torch.Tensor
    n_samples: int  # first B*G sequences are samples (row-major), then B references
    real_tokens: int
    padded_tokens: int
    behaviour_known_N: torch.Tensor  # bool: the sequence has behaviour log-probs
    reference_fits_B: torch.Tensor  # 1.0 where the group's reference is usable (see Group)
    # 1.0 where the group has a usable rejected answer. When rejected answers were read, B
    # rejected sequences follow the references (rows n_samples+B .. n_samples+2B).
    rejected_mask_B: torch.Tensor

    @property
    def n_groups(self) -> int:
        return int(self.ref_adv_B.shape[0])

    @property
    def has_rejected_rows(self) -> bool:
        return int(self.input_ids_NT.shape[0]) == self.n_samples + 2 * self.n_groups


def collate(groups: list[Group], pad_id: int) -> Batch:
    """Right-padded batch: for each group its G samples, then all references at the end."""
    b = len(groups)
    g = max(len(x.responses) for x in groups)
    seqs: list[tuple[list[int], int, list[float] | None, list[float] | None]] = []
    mask_BG, adv_BG, reward_BG = torch.zeros(b, g), torch.zeros(b, g), torch.zeros(b, g)
    for i, grp in enumerate(groups):
        for j in range(g):
            if j < len(grp.responses):
                seqs.append((grp.prompt + grp.responses[j], len(grp.prompt), grp.behaviour[j], grp.ref[j]))
                mask_BG[i, j] = 1.0
                adv_BG[i, j] = grp.advantages[j]
                reward_BG[i, j] = grp.rewards[j] if grp.rewards[j] is not None else 0.0
            else:  # pad slot: a 1-token dummy, masked out of every term
                seqs.append((grp.prompt[:1] or [pad_id], 1, None, None))
    for grp in groups:
        seqs.append((grp.prompt + grp.reference, len(grp.prompt), None, grp.ref_reference))
    if any(x.rejected is not None for x in groups):  # no pair: the prompt alone
        seqs += [(grp.prompt + (grp.rejected or []), len(grp.prompt), None, grp.ref_rejected) for grp in groups]
    t = max(len(s) for s, *_ in seqs)
    n = len(seqs)
    ids = torch.full((n, t), pad_id, dtype=torch.long)
    attn = torch.zeros(n, t, dtype=torch.long)
    loss_mask, behaviour, ref = torch.zeros(n, t - 1), torch.zeros(n, t - 1), torch.zeros(n, t - 1)
    for k, (s, p, beh, rf) in enumerate(seqs):
        ids[k, : len(s)] = torch.tensor(s)
        attn[k, : len(s)] = 1
        loss_mask[k, p - 1 : len(s) - 1] = 1.0  # targets s[p:], predicted from positions p-1..
        if beh is not None:
            behaviour[k, p - 1 : p - 1 + len(beh)] = torch.tensor(beh)
        if rf is not None:
            ref[k, p - 1 : p - 1 + len(rf)] = torch.tensor(rf)
    real = int(attn.sum())
    known = torch.tensor([beh is not None for _, _, beh, _ in seqs])
    fits = torch.tensor([float(x.reference_fits) for x in groups])
    rejected = torch.tensor([float(bool(x.rejected)) for x in groups])
    return Batch(input_ids_NT=ids, attention_mask_NT=attn, loss_mask_NT=loss_mask, behaviour_NT=behaviour,
                 ref_NT=ref, adv_BG=adv_BG, reward_BG=reward_BG,
                 ref_adv_B=torch.tensor([x.reference_advantage for x in groups]), mask_BG=mask_BG,
                 n_samples=b * g, real_tokens=real, padded_tokens=n * t, behaviour_known_N=known,
                 reference_fits_B=fits, rejected_mask_B=rejected)


@dataclass(frozen=True, kw_only=True)  # built by field name only (_micro_batch, pack)
class Packed:
    """Sequences of a Batch packed into rows of ``budget`` tokens (best-fit decreasing, Rust).

    Each sequence keeps its own position ids (restarting at 0) and attends only within itself
    (a block-diagonal causal mask; flash-attention kernels use the position ids instead).
    ``src_*``/``dst_*`` map a row's next-token log-probs back to the Batch's [N, T-1] layout.
    """

    input_ids_RT: torch.Tensor
    position_ids_RT: torch.Tensor
    segment_RT: torch.Tensor  # sequence index per token (-1 for row padding)
    src_row: torch.Tensor
    src_col: torch.Tensor
    dst_seq: torch.Tensor
    dst_pos: torch.Tensor
    real_tokens: int
    padded_tokens: int

    def attention_mask(self, dtype: torch.dtype = torch.float32) -> torch.Tensor:
        """[R, 1, T, T] mask, causal and within the same segment: additive for a float dtype,
        True where attention is allowed for torch.bool (what sdpa takes, at 1 byte a pair)."""
        t = self.segment_RT.shape[1]
        seg = self.segment_RT
        causal = torch.tril(torch.ones(t, t, dtype=torch.bool, device=seg.device))
        allowed = causal[None] & (seg[:, :, None] == seg[:, None, :])
        if dtype == torch.bool:
            return allowed[:, None]
        zero = torch.zeros((), dtype=dtype, device=seg.device)
        return torch.where(allowed, zero, torch.finfo(dtype).min)[:, None]


def pack(batch: Batch, budget: int, pad_id: int) -> Packed:
    from grao_pipe import _native

    lengths = batch.attention_mask_NT.sum(-1)
    import pyarrow as pa

    bins_arr, n_rows = _native.pack_bfd(pa.array(lengths.numpy().astype("int64")), budget)
    bins = pa.array(bins_arr).to_numpy(zero_copy_only=False)
    ids = torch.full((n_rows, budget), pad_id, dtype=torch.long)
    pos = torch.zeros(n_rows, budget, dtype=torch.long)
    seg = torch.full((n_rows, budget), -1, dtype=torch.long)
    fill = [0] * n_rows
    src_row: list[int] = []
    src_col: list[int] = []
    dst_seq: list[int] = []
    dst_pos: list[int] = []
    for n, (row, length) in enumerate(zip(bins.tolist(), lengths.tolist(), strict=True)):
        o = fill[row]
        ids[row, o : o + length] = batch.input_ids_NT[n, :length]
        pos[row, o : o + length] = torch.arange(length)
        seg[row, o : o + length] = n
        fill[row] = o + length
        src_row += [row] * (length - 1)
        src_col += range(o, o + length - 1)
        dst_seq += [n] * (length - 1)
        dst_pos += range(length - 1)
    for row, used in enumerate(fill):  # row padding: its own segment, restarting positions
        pos[row, used:] = torch.arange(budget - used)
    t = torch.tensor
    return Packed(input_ids_RT=ids, position_ids_RT=pos, segment_RT=seg, src_row=t(src_row, dtype=torch.long),
                  src_col=t(src_col, dtype=torch.long), dst_seq=t(dst_seq, dtype=torch.long),
                  dst_pos=t(dst_pos, dtype=torch.long), real_tokens=int(sum(fill)), padded_tokens=n_rows * budget)



class MicroBatch(NamedTuple):
    batch: Batch
    packed: Packed | None  # None: the forward runs on the padded batch


def _tensor(x: object) -> torch.Tensor:
    """A Rust-allocated array (``_native.NdArray``) as a tensor sharing its memory."""
    return torch.from_numpy(np.asarray(x))


def _micro_batch(arrays: _native.MicroBatchArrays) -> MicroBatch:
    """The kernel's micro-batch as tensors sharing its memory, field by field by name (the
    names, dtypes and dims: ``_native.MICRO_BATCH_SCHEMA``, tests/unit/test_native_schema.py)."""
    d, p = arrays.padded, arrays.packed
    batch = Batch(
        input_ids_NT=_tensor(d.input_ids_NT), attention_mask_NT=_tensor(d.attention_mask_NT),
        loss_mask_NT=_tensor(d.loss_mask_NT), behaviour_NT=_tensor(d.behaviour_NT), ref_NT=_tensor(d.ref_NT),
        adv_BG=_tensor(d.adv_BG), reward_BG=_tensor(d.reward_BG), ref_adv_B=_tensor(d.ref_adv_B),
        mask_BG=_tensor(d.mask_BG), n_samples=d.n_samples, real_tokens=d.real_tokens,
        padded_tokens=d.padded_tokens, behaviour_known_N=_tensor(d.behaviour_known_N),
        reference_fits_B=_tensor(d.reference_fits_B), rejected_mask_B=_tensor(d.rejected_mask_B),
    )
    if p is None:
        return MicroBatch(batch, None)
    packed = Packed(
        input_ids_RT=_tensor(p.input_ids_RT), position_ids_RT=_tensor(p.position_ids_RT),
        segment_RT=_tensor(p.segment_RT), src_row=_tensor(p.src_row_K), src_col=_tensor(p.src_col_K),
        dst_seq=_tensor(p.dst_seq_K), dst_pos=_tensor(p.dst_pos_K), real_tokens=p.real_tokens,
        padded_tokens=p.padded_tokens,
    )
    return MicroBatch(batch, packed)


def epoch_order(n_groups: int, seed: int, epoch: int) -> torch.Tensor:
    """The order of all groups in an epoch: a pure function of (seed, epoch), so a resumed run
    sees the same data."""
    return torch.randperm(n_groups, generator=torch.Generator().manual_seed(seed * 1000 + epoch))


@dataclass
class Step:
    """One rank's micro-batches of a step."""

    step: int
    micro: list[MicroBatch]
    first_group: int  # the rank's first group: what a zero-weight filler forward runs on
    wait_s: float = 0.0  # how long the training loop waited for this step's data


class StepLoader:
    """One rank's micro-batches for steps ``start .. stop-1``, built ahead of time.

    A step takes ``step_size`` groups of the epoch's order (``epoch_order``), and rank r of
    ``world`` trains on every world-th of them from r. A background thread builds up to
    ``prefetch`` steps ahead with ``GroupStore.micro_batches`` (the kernel releases the GIL), so
    the training loop waits only when the loader falls behind: ``Step.wait_s``.
    """

    def __init__(self, store: GroupStore, *, seed: int, step_size: int, rank: int, world: int, pad_id: int,
                 micro_batch_tokens: int = 0, pack_tokens: int = 0, start: int = 0, stop: int | None = None,
                 prefetch: int = 1):
        self.store, self.seed, self.step_size = store, seed, step_size
        self.rank, self.world = rank, world
        self.pad_id, self.micro_batch_tokens, self.pack_tokens = pad_id, micro_batch_tokens, pack_tokens
        self.steps_per_epoch = len(store) // step_size
        self.next_step = start
        self.stop = self.steps_per_epoch if stop is None else stop
        self._queue: queue.Queue[Step | BaseException] = queue.Queue(maxsize=max(prefetch, 1))
        self._closed = threading.Event()
        self._thread = threading.Thread(target=self._produce, args=(start,), name="grao-loader", daemon=True)
        self._thread.start()
        # A daemon thread still running at interpreter exit is torn down mid-call, which can
        # abort the process: stop it first, also when the training loop raised.
        atexit.register(self.close)

    def groups_of(self, step: int, order: np.ndarray | None = None) -> np.ndarray:
        """This rank's groups of ``step``, in training order."""
        epoch, s = divmod(step, self.steps_per_epoch)
        if order is None:
            order = epoch_order(len(self.store), self.seed, epoch).numpy()
        return order[s * self.step_size : (s + 1) * self.step_size][self.rank :: self.world]

    def _produce(self, start: int) -> None:
        epoch, order = -1, np.zeros(0, dtype=np.int64)
        for step in range(start, self.stop):
            try:
                if step // self.steps_per_epoch != epoch:  # one permutation per epoch, not per step
                    epoch = step // self.steps_per_epoch
                    order = epoch_order(len(self.store), self.seed, epoch).numpy()
                ks = self.groups_of(step, order)
                item: Step | BaseException = Step(step, self._build(ks), int(ks[0]))
            except BaseException as e:  # handed to the training loop, which raises it
                item = e
            while not self._closed.is_set():
                try:
                    self._queue.put(item, timeout=0.1)
                    break
                except queue.Full:
                    continue
            if isinstance(item, BaseException) or self._closed.is_set():
                return

    def _build(self, ks: np.ndarray) -> list[MicroBatch]:
        return self.store.micro_batches(ks, self.pad_id, self.micro_batch_tokens, self.pack_tokens)

    def __iter__(self) -> StepLoader:
        return self

    def __next__(self) -> Step:
        if self.next_step >= self.stop:
            raise StopIteration
        t0 = time.perf_counter()
        item = self._queue.get()
        if isinstance(item, BaseException):
            raise item
        item.wait_s = time.perf_counter() - t0
        self.next_step += 1
        if self.next_step == self.stop:
            self.close()  # the producer is done: let its thread end
        return item

    def filler(self, step: Step) -> MicroBatch:
        """A micro-batch for a zero-weight forward (a rank with fewer micro-batches than another
        keeps in step with it): the step's first group alone. Its build time counts as waiting."""
        t0 = time.perf_counter()
        mb = self._build(np.array([step.first_group]))[0]
        step.wait_s += time.perf_counter() - t0
        return mb

    def close(self) -> None:
        """Stops the background thread (waiting for a build in progress); idempotent."""
        self._closed.set()
        self._thread.join()
        atexit.unregister(self.close)
