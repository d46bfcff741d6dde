"""The short report that ends ``grao-pipe run``: per round, what the pipeline did."""

from __future__ import annotations

from itertools import pairwise
from typing import Any

from rich.console import Console
from rich.table import Table

from grao_pipe.manifests import EvalManifest, GenerateManifest, ScoreManifest, TrainManifest
from grao_pipe.stages.base import Outcome


def rounds_summary(outcomes: list[Outcome]) -> list[dict[str, Any]]:
    by_round: dict[int, dict[str, Any]] = {}
    for o in outcomes:
        if o.manifest is None:
            continue
        m = o.manifest
        row = by_round.setdefault(o.target.round, {"round": o.target.round})
        if isinstance(m, GenerateManifest):
            row["samples"] = m.stats.samples
            row["truncated"] = m.stats.truncated_responses
        elif isinstance(m, ScoreManifest):
            row["mean_reward"] = m.stats.mean_reward
            row["degenerate_share"] = m.stats.degenerate_share
        elif isinstance(m, TrainManifest):
            row["steps"] = m.stats.steps
            row.update({f"mean_{k}": v for k, v in m.stats.mean.items()})
        elif isinstance(m, EvalManifest):
            row["ras_strict"] = m.stats.ras["strict"].value
            row["nag_net"] = m.stats.nag["net"].value
    return [by_round[r] for r in sorted(by_round)]


def print_report(outcomes: list[Outcome], console: Console | None = None) -> list[dict[str, Any]]:
    console = console or Console()
    summary = rounds_summary(outcomes)
    cols = sorted({k for row in summary for k in row if k.startswith("mean_loss")})
    table = Table(title="grao-pipe report (mean reward = R(o, y) of the round's samples vs the reference)")
    for name in ["round", "samples", "mean_reward", "degenerate_share", "steps", *cols]:
        table.add_column(name.replace("mean_loss_", "loss:").replace("mean_loss", "loss"), justify="right")
    for row in summary:
        def fmt(v: Any) -> str:
            return f"{v:.4f}" if isinstance(v, float) else ("-" if v is None else str(v))
        table.add_row(*(fmt(row.get(c)) for c in ["round", "samples", "mean_reward", "degenerate_share", "steps", *cols]))
    console.print(table)
    rewards = [r["mean_reward"] for r in summary if "mean_reward" in r]
    if len(rewards) >= 2:
        trend = "rose" if all(b > a for a, b in pairwise(rewards)) else "did not rise monotonically"
        console.print(f"mean reward {trend} across rounds: " + " -> ".join(f"{r:.3f}" for r in rewards))
    return summary
