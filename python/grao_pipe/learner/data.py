"""Groups from score shards, and padded batches of (prompt + continuation) sequences.

Each group becomes G sample sequences plus one reference sequence. Per-token side inputs
(behaviour and reference-model log-probs) are aligned with the shifted targets, so a loss can
read ``x_NT[n, t]`` for the token predicted at position t.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

import pyarrow as pa
import pyarrow.compute as pc
import torch

from grao_pipe.store import read_shard

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
    rejected: list[int] | None = None  # the dataset's rejected answer + EOS (loaded on request)
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
    file under ``cache_dir`` and memory-mapped: slicing a group is zero-copy and the OS pages in
    only what a step touches. In memory: 3 integers per group.
    """

    def __init__(self, shards: list[tuple[Path, str]], cache_dir: Path, max_seq_len: int | None = None,
                 overlong: str = "truncate", rejected: bool = False):
        import numpy as np

        self.max_seq_len, self.overlong, self.rejected = max_seq_len, overlong, rejected
        self.stats = LoadStats()
        self.tables = []
        spans: list[np.ndarray] = []
        for i, (path, sha) in enumerate(shards):
            table = self._open(cache_dir / f"{i:05d}-{sha[:16]}.arrow", path, sha)
            self.stats.rows += table.num_rows
            ids = table["group_id"]
            if table.num_rows:
                change = pc.not_equal(ids.slice(1), ids.slice(0, table.num_rows - 1))
                starts = np.concatenate([[0], pc.indices_nonzero(change).to_numpy() + 1])
                ends = np.append(starts[1:], table.num_rows)
                spans.append(np.stack([np.full(len(starts), i), starts, ends - starts], axis=1))
            self.tables.append(table)
        self.index = np.concatenate(spans) if spans else np.zeros((0, 3), dtype=np.int64)
        self._seen: set[int] = set()

    @staticmethod
    def _open(ipc: Path, path: Path, sha: str) -> pa.Table:
        if not ipc.exists():  # one writer per file (rank 0 converts, see prepare_cache)
            table = read_shard(path, "score", sha)
            for name, typ in REJECTED_COLUMNS.items():
                if name not in table.column_names:
                    table = table.append_column(name, pa.nulls(table.num_rows, typ))
            table = table.select([*COLUMNS, *REJECTED_COLUMNS]).filter(pc.field("keep"))
            tmp = ipc.with_name(f".tmp-{ipc.name}.{os.getpid()}")
            with pa.OSFile(str(tmp), "wb") as sink, pa.ipc.new_file(sink, table.schema) as writer:
                writer.write_table(table)
            tmp.replace(ipc)
        return pa.ipc.open_file(pa.memory_map(str(ipc))).read_all()

    def __len__(self) -> int:
        return len(self.index)

    def group(self, k: int) -> Group:
        t, off, n = (int(x) for x in self.index[k])
        rows = self.tables[t].slice(off, n).to_pylist()
        count = k not in self._seen  # LoadStats count each group once, not once per epoch
        self._seen.add(k)
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
        rejected = first["reference_rejected_token_ids"] if self.rejected else None
        if rejected is not None:  # a rejected answer that cannot fit gives no pair
            grp.rejected = _fit(plen, rejected, self.max_seq_len, self.overlong)
            rej_lp = first["ref_reference_rejected_logprobs"]
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


def group_tokens(g: Group) -> int:
    return sum(len(g.prompt) + len(r) for r in g.responses) + len(g.prompt) + len(g.reference)


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


@dataclass(frozen=True)
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
    # 1.0 where the group has a usable rejected answer. When any group was loaded with one,
    # B rejected sequences follow the references (rows n_samples+B .. n_samples+2B).
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
    rejected_mask_B = torch.tensor([float(bool(x.rejected)) for x in groups])
    if any(x.rejected is not None for x in groups):  # no pair: an empty continuation
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
    return Batch(ids, attn, loss_mask, behaviour, ref, adv_BG, reward_BG,
                 torch.tensor([x.reference_advantage for x in groups]), mask_BG, b * g, real, n * t,
                 known, fits, rejected_mask_B)


@dataclass(frozen=True)
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
    return Packed(ids, pos, seg, t(src_row, dtype=torch.long), t(src_col, dtype=torch.long),
                  t(dst_seq, dtype=torch.long), t(dst_pos, dtype=torch.long), int(sum(fill)), n_rows * budget)
