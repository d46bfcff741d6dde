"""Group-relative advantages (design §2): the Rust kernel, and a Polars reference.

Groups are contiguous runs of ``group_id``. The reference answer's reward is R(y, y) = 0 by
construction; in ``reference_in_group`` mode it is the (G+1)-th member of the group.
"""

from __future__ import annotations

from dataclasses import dataclass

import polars as pl
import pyarrow as pa

from grao_pipe.config import AdvantageConfig


@dataclass(frozen=True)
class Advantages:
    advantage: pa.Array  # Â_i per row
    reference_advantage: pa.Array  # Â_y of the row's group
    degenerate: pa.Array  # bool per row: the row's group is degenerate (advantages zeroed)
    reward_valid: pa.Array  # bool per row: reward is finite and present
    n_groups: int
    n_degenerate_groups: int
    n_invalid_rewards: int


def compute(group_ids: pa.Array | pa.ChunkedArray, rewards: pa.Array | pa.ChunkedArray, cfg: AdvantageConfig) -> Advantages:
    """Advantages for contiguous groups with the Rust kernel (GIL released inside)."""
    import grao_pipe._native as _native

    if isinstance(group_ids, pa.ChunkedArray):
        group_ids = group_ids.combine_chunks()
    if isinstance(rewards, pa.ChunkedArray):
        rewards = rewards.combine_chunks()
    out = _native.group_advantages(
        group_ids, rewards, mode=cfg.mode, eps=cfg.eps, std_floor=cfg.std_floor, min_valid=cfg.min_valid
    )
    return Advantages(
        advantage=pa.array(out["advantage"]),
        reference_advantage=pa.array(out["reference_advantage"]),
        degenerate=pa.array(out["degenerate"]),
        reward_valid=pa.array(out["reward_valid"]),
        n_groups=int(out["n_groups"]),
        n_degenerate_groups=int(out["n_degenerate_groups"]),
        n_invalid_rewards=int(out["n_invalid_rewards"]),
    )


def polars_reference(df: pl.DataFrame, cfg: AdvantageConfig, group: str = "group_id", reward: str = "reward") -> pl.DataFrame:
    """The same computation as readable Polars expressions (slower; used to cross-check and as
    the benchmark's baseline). Adds ``advantage``, ``reference_advantage``, ``degenerate``."""
    r = pl.col(reward)
    valid = r.is_not_null() & r.is_finite()
    rv = pl.when(valid).then(r)
    n = valid.sum().over(group).cast(pl.Float64)
    s = rv.sum().over(group)
    if cfg.mode in ("reference_in_group", "rank"):
        # The reference is one more member whose reward is 0.
        mu = s / (n + 1)
        sigma = ((((rv - mu) ** 2).sum().over(group) + mu**2) / (n + 1)).sqrt()
    else:
        mu = s / n
        sigma = (((rv - mu) ** 2).sum().over(group) / n).sqrt()
    if cfg.mode in ("reference_in_group", "samples_only"):
        adv = (rv - mu) / (sigma + cfg.eps)
        ref_adv = (0.0 - mu) / (sigma + cfg.eps)
    elif cfg.mode == "leave_one_out":
        adv = rv - (s - rv) / (n - 1)
        ref_adv = -s / n
    else:  # rank over the n+1 values, average ties, 0-based, mapped to [-1, 1]
        rank = rv.rank("average").over(group) - 1 + pl.when(rv > 0).then(1.0).when(rv == 0).then(0.5).otherwise(0.0)
        ref_rank = (rv < 0).sum().over(group) + (rv == 0).sum().over(group) / 2
        adv = 2 * rank / n - 1
        ref_adv = 2 * ref_rank / n - 1
    degenerate = (n < cfg.min_valid) | (sigma < cfg.std_floor) | sigma.is_nan()
    return df.with_columns(
        advantage=pl.when(degenerate | ~valid).then(0.0).otherwise(adv),
        reference_advantage=pl.when(degenerate).then(0.0).otherwise(ref_adv),
        degenerate=degenerate,
    )
