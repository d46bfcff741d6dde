"""Group-relative advantages (docs/objectives.md): the Rust kernel, and a Polars reference.

Groups are contiguous runs of ``group_id``. The reference answer's reward is R(y, y) = 0 by
construction; in ``reference_in_group`` mode it is the (G+1)-th member of the group.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

import pyarrow as pa

from grao_pipe.config import AdvantageConfig
from grao_pipe.enums import unhandled

if TYPE_CHECKING:
    import polars as pl


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
    import polars as pl

    """The same computation as readable Polars expressions (slower; used to cross-check and as
    the benchmark's baseline). Adds ``advantage``, ``reference_advantage``, ``degenerate``.

    Staged ``with_columns`` so no window expression nests another (which Polars would evaluate
    per group)."""
    r = pl.col(reward)
    rv = pl.when(r.is_not_null() & r.is_finite()).then(r)
    with_ref = cfg.mode in ("reference_in_group", "rank")  # the reference is a member, reward 0
    out = df.lazy().with_columns(_rv=rv).with_columns(
        _n=pl.col("_rv").count().over(group).cast(pl.Float64),
        _s=pl.col("_rv").sum().over(group),
    ).with_columns(_mu=pl.col("_s") / (pl.col("_n") + 1 if with_ref else pl.col("_n")))
    sq = ((pl.col("_rv") - pl.col("_mu")) ** 2).sum().over(group)
    if with_ref:
        out = out.with_columns(_sigma=((sq + pl.col("_mu") ** 2) / (pl.col("_n") + 1)).sqrt())
    else:
        out = out.with_columns(_sigma=(sq / pl.col("_n")).sqrt())
    x, n, s_, mu, sigma = pl.col("_rv"), pl.col("_n"), pl.col("_s"), pl.col("_mu"), pl.col("_sigma")
    if cfg.mode == "reference_in_group" or cfg.mode == "samples_only":  # == narrows for mypy
        adv, ref_adv = (x - mu) / (sigma + cfg.eps), (0.0 - mu) / (sigma + cfg.eps)
    elif cfg.mode == "leave_one_out":
        adv, ref_adv = x - (s_ - x) / (n - 1), -s_ / n
    elif cfg.mode == "rank":  # rank over the n+1 values, average ties, 0-based, mapped to [-1, 1]
        out = out.with_columns(
            _rank=x.rank("average").over(group) - 1 + pl.when(x > 0).then(1.0).when(x == 0).then(0.5).otherwise(0.0),
            _ref_rank=(x < 0).sum().over(group) + (x == 0).sum().over(group) / 2,
        )
        adv, ref_adv = 2 * pl.col("_rank") / n - 1, 2 * pl.col("_ref_rank") / n - 1
    else:  # a mode the kernel knows (ADVANTAGE_MODES) needs a reference here too
        unhandled(cfg.mode)
    degenerate = (n < cfg.min_valid) | (sigma < cfg.std_floor) | sigma.is_nan()
    return (
        out.with_columns(_deg=degenerate.fill_null(True))
        .with_columns(
            advantage=pl.when(pl.col("_deg") | x.is_null()).then(0.0).otherwise(adv),
            reference_advantage=pl.when(pl.col("_deg")).then(0.0).otherwise(ref_adv),
            degenerate=pl.col("_deg"),
        )
        .drop("_rv", "_n", "_s", "_mu", "_sigma", "_deg", "_rank", "_ref_rank", strict=False)
        .collect()
    )
