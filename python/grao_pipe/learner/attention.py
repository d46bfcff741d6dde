"""Attention masks for padded and packed rows, by attention implementation.

- ``sdpa`` / ``eager``: a 2-D padding mask for padded rows; for packed rows a dense [R,1,T,T]
  block-diagonal causal mask (T² per row: the fallback; boolean for sdpa, additive for eager).
- ``flex_attention``: a flex-attention ``BlockMask`` built from per-token document ids, causal
  and same-document. It is computed at block granularity from each block's first and last
  document id (O(R·(T/128)²), never a T×T tensor), so no mask compilation is needed.
- ``flash_attention_2`` / ``_3``: packed rows need no mask; the kernels find the sequence
  boundaries from the position ids, which restart at 0 for every sequence.
"""

from __future__ import annotations

from dataclasses import replace
from typing import TYPE_CHECKING, Any

import torch

if TYPE_CHECKING:
    from grao_pipe.learner.data import Packed

FLASH = frozenset({"flash_attention_2", "flash_attention_3"})
FLEX = "flex_attention"
BLOCK = 128  # flex attention's default sparse block size


def document_ids(segment_RT: torch.Tensor) -> torch.Tensor:
    """Index of each token's contiguous run of equal segment ids along its row: 0, 0, 1, 1, 1, 2…

    Runs are numbered in order, so every block of tokens holds an interval of document ids.
    """
    change = torch.ones_like(segment_RT, dtype=torch.long)
    change[:, 0] = 0
    change[:, 1:] = (segment_RT[:, 1:] != segment_RT[:, :-1]).long()
    return change.cumsum(1)


def document_block_mask(segment_RT: torch.Tensor, block: int = BLOCK) -> Any:
    """Flex-attention BlockMask: token q attends to kv iff kv ≤ q and both are in the same run.

    Query block i and key block j (j ≤ i) interact iff their document-id intervals overlap; the
    pair is "full" (no mask_mod needed) iff j < i, both blocks lie in one and the same document
    and are complete (no positions past T). Everything else that interacts is partial.
    """
    from torch.nn.attention.flex_attention import BlockMask

    t = segment_RT.shape[1]
    dev = segment_RT.device
    doc_RT = document_ids(segment_RT)
    nb = -(-t // block)
    first = torch.arange(nb, device=dev) * block
    last = torch.clamp(first + block, max=t) - 1
    lo, hi = doc_RT[:, first], doc_RT[:, last]  # [R, nb]: documents are nondecreasing along a row
    q_blk = torch.arange(nb, device=dev)[:, None]
    kv_blk = torch.arange(nb, device=dev)[None, :]
    lo_q, hi_q, lo_k, hi_k = lo[:, :, None], hi[:, :, None], lo[:, None, :], hi[:, None, :]
    interacts = (kv_blk <= q_blk) & (lo_k <= hi_q) & (lo_q <= hi_k)
    complete = (first + block <= t)
    one_doc = (lo_q == hi_q) & (lo_k == hi_k) & (lo_q == lo_k)
    full = (kv_blk < q_blk) & one_doc & complete[:, None] & complete[None, :]
    partial = interacts & ~full

    def ordered(m_RQK: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Per query block: how many key blocks, and their indices first (BlockMask layout)."""
        m = m_RQK[:, None].to(torch.int32)  # [R, 1 (heads), nb, nb]
        idx = torch.argsort(m, dim=-1, descending=True, stable=True).to(torch.int32)
        return m.sum(-1).to(torch.int32), idx

    # Positions past T (the last block's tail) get id -1: they never match a real token.
    doc_pad = torch.nn.functional.pad(doc_RT, (0, nb * block - t), value=-1)

    def mask_mod(b: torch.Tensor, h: torch.Tensor, q: torch.Tensor, kv: torch.Tensor) -> torch.Tensor:
        return (q >= kv) & (doc_pad[b, q] == doc_pad[b, kv])

    kv_num, kv_idx = ordered(partial)
    full_num, full_idx = ordered(full)
    return BlockMask.from_kv_blocks(kv_num, kv_idx, full_num, full_idx, BLOCK_SIZE=block, mask_mod=mask_mod,
                                    seq_lengths=(t, t))


def padded_mask(attention_mask_NT: torch.Tensor, impl: str, device: torch.device) -> Any:
    """Mask argument for right-padded rows."""
    if impl == FLEX:  # real tokens are run 0, the padding tail is run 1
        return document_block_mask((attention_mask_NT == 0).long().to(device))
    return attention_mask_NT.to(device)


def packed_mask(packed: Packed, impl: str, device: torch.device) -> Any:
    """Mask argument for packed rows."""
    if impl in FLASH:
        return None
    if impl == FLEX:
        return document_block_mask(packed.segment_RT.to(device))
    # The T² fallback, built on the device from the (small) segment ids; boolean for sdpa (it
    # is 1 byte a pair and no mixed-precision cast applies to it), additive for eager.
    on_device = replace(packed, segment_RT=packed.segment_RT.to(device))
    return on_device.attention_mask(torch.bool if impl == "sdpa" else torch.float32)
