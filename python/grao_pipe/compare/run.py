"""``grao-pipe compare``: every variant × seed as ordinary cached stages, then the statistics.

1. Validation (only for variants with an ``lr_grid``): each rate × validation seed is trained and
   evaluated on the validation prompts; the best mean of ``selection_metric`` over the validation
   seeds wins (ties: the smaller rate). Test seeds are never used to choose.
2. Test: each variant at its rate × test seed, evaluated on the test prompts.

Each run is ``grao-pipe run`` + ``grao-pipe eval`` of one config (the file, the command line's
overrides, the variant's overrides, the rate and the seed), in the same workdir: the stage cache
shares generate and score between variants that change only ``train.*``, a killed compare resumes
where it stopped, and a scheduler can run the same configs as separate tasks. Per-prompt results
come from each eval stage's committed ``answers.parquet``; ``results.parquet`` gathers them with
their provenance, and ``report`` renders every number from it.
"""

from __future__ import annotations

import json
import subprocess
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from grao_pipe.config import CompareConfig, CompareVariant, PipelineConfig, load_config
from grao_pipe.errors import ConfigError
from grao_pipe.hashing import digest
from grao_pipe.sections import keyed

# results.parquet, one row per (split, variant, lr, seed, prompt).
RESULT_COLUMNS = (("split", "string"), ("variant", "string"), ("lr", "float64"), ("seed", "int64"),
                  ("prompt_id", "string"), ("prompt_index", "int64"), ("prompt", "string"), ("reference", "string"),
                  ("answer", "string"), ("base_answer", "string"), ("reward", "float64"), ("base_reward", "float64"),
                  ("train_key", "string"), ("eval_key", "string"), ("config_digest", "string"),
                  ("commit", "string"), ("versions", "string"))
PACKAGES = ("grao-pipe", "torch", "transformers", "numpy", "pyarrow")


@dataclass(frozen=True)
class RunSpec:
    variant: str
    lr: float | None  # None: the config's train.lr
    seed: int
    split: str  # validation | test

    @property
    def label(self) -> str:
        lr = "config lr" if self.lr is None else f"lr {self.lr:g}"
        return f"{self.split} {self.variant} ({lr}) seed {self.seed}"


class Compare:
    """One compare invocation: the base config file, its command-line overrides, the plan."""

    def __init__(self, config_path: str | None, overrides: tuple[str, ...] = (), log: Callable[[str], None] = print):
        self.config_path = config_path
        self.overrides = tuple(overrides)
        self.base = load_config(config_path, self.overrides)
        if self.base.compare is None:
            raise ConfigError(f"{config_path}: no compare section; see docs/compare.md for one")
        self.cmp: CompareConfig = self.base.compare
        self.variants = {v.name: v for v in self.cmp.variants}
        self.log = log

    @property
    def out(self) -> Path:
        if self.cmp.out is not None:
            return Path(self.cmp.out)
        if "://" in self.base.workdir:
            raise ConfigError(f"workdir {self.base.workdir} is remote; set compare.out to a local directory for the report")
        return Path(self.base.workdir) / "compare"

    def config(self, spec: RunSpec) -> PipelineConfig:
        """The pipeline config of one run."""
        v = self.variants[spec.variant]
        prompts = self.cmp.test_prompts if spec.split == "test" else self.cmp.validation_prompts
        items = [*self.overrides, *v.overrides, f"train.seed={spec.seed}", f"generate.seed={spec.seed}",
                 f"eval.seed={self.base.eval.seed + spec.seed}", f"eval.prompts={prompts}"]
        if spec.lr is not None:
            items.append(f"train.lr={spec.lr!r}")
        try:
            return load_config(self.config_path, items)
        except ConfigError as e:
            raise ConfigError(f"compare variant {v.name}: {e}") from None

    def validation_plan(self) -> list[RunSpec]:
        return [RunSpec(v.name, lr, s, "validation") for v in self.cmp.variants for lr in v.lr_grid
                for s in self.cmp.validation_seeds]

    def test_plan(self, chosen: dict[str, float | None]) -> list[RunSpec]:
        return [RunSpec(v.name, chosen[v.name], s, "test") for v in self.cmp.variants for s in self.cmp.seeds]

    def check(self) -> None:
        """Every run's config loads (a bad override fails before anything trains)."""
        for spec in self.validation_plan() + self.test_plan({v.name: v.lr_grid[0] if v.lr_grid else None
                                                              for v in self.cmp.variants}):
            self.config(spec)

    # ---- running ----

    def run_one(self, spec: RunSpec, provenance: dict[str, str | None]) -> list[dict[str, Any]]:
        """Train (cached stages skipped) and evaluate one run; its per-prompt rows."""
        import pyarrow.parquet as pq

        from grao_pipe.pipeline import Pipeline

        cfg = self.config(spec)
        p = Pipeline(cfg, wait_for_locks=True)  # another task of a scheduler may be running a shared stage
        t0 = time.perf_counter()
        outcomes = p.run()
        ev = p.run_stage("eval", cfg.run.rounds)
        rows = pq.read_table(ev.target.dir.local_path("answers.parquet")).to_pylist()
        trained = [o for o in outcomes if o.target.stage == "train"]
        cached = all(o.cached for o in [*outcomes, ev])
        rewards = [r["r_model"] for r in rows if r["r_model"] is not None]
        self.log(f"{spec.label}: mean R {sum(rewards) / max(len(rewards), 1):+.3f} on {len(rows)} prompts"
                 f" ({'cached' if cached else f'{time.perf_counter() - t0:.0f}s'})")
        # What the run computes, not where it ran nor what compare itself declares.
        cfg_digest = digest({k: v for k, v in keyed(cfg).items() if k not in ("compare", "workdir")})
        return [{"split": spec.split, "variant": spec.variant, "lr": cfg.train.lr, "seed": spec.seed,
                 "prompt_id": r["prompt_id"], "prompt_index": r["prompt_index"], "prompt": r["prompt"],
                 "reference": r["reference"], "answer": r["model"], "base_answer": r["base"],
                 "reward": r["r_model"], "base_reward": r["r_base"], "train_key": trained[-1].target.key,
                 "eval_key": ev.target.key, "config_digest": cfg_digest, **provenance} for r in rows]

    def run(self) -> Path:
        """Validation, selection, test; writes ``results.parquet`` and the report; returns the
        output directory."""
        from grao_pipe.compare import report, stats

        self.check()
        t0 = time.perf_counter()
        load_before = _loadavg()
        prov = provenance()
        rows: list[dict[str, Any]] = []
        for spec in self.validation_plan():
            rows += self.run_one(spec, prov)
        chosen = select_lr(rows, self.cmp, stats)
        for name, lr in chosen.items():
            if self.variants[name].lr_grid or self.variants[name].lr_from:
                self.log(f"{name}: lr {lr:g} chosen on validation seeds {list(self.cmp.validation_seeds)}")
        for spec in self.test_plan(chosen):
            rows += self.run_one(spec, prov)
        out = self.out
        out.mkdir(parents=True, exist_ok=True)
        meta = {"compare": self.cmp.model_dump(mode="json"), "seconds": round(time.perf_counter() - t0, 1),
                "loadavg": {"before": load_before, "after": _loadavg()}}
        write_results(out / "results.parquet", rows, meta)
        report.write(out, *read_results(out / "results.parquet"))
        return out


    def rerender(self) -> Path:
        """The report again from ``results.parquet`` (after a change of the report's code)."""
        from grao_pipe.compare import report
        from grao_pipe.errors import InputError

        path = self.out / "results.parquet"
        if not path.is_file():
            raise InputError(f"{path} does not exist; run 'grao-pipe compare' without --report-only first")
        report.write(self.out, *read_results(path))
        return self.out


def select_lr(rows: list[dict[str, Any]], cmp: CompareConfig, stats: Any) -> dict[str, float | None]:
    """Each variant's rate: the grid's best on validation (mean over validation seeds of
    selection_metric; ties: the smaller rate), lr_from's choice, or None (the config's)."""
    from grao_pipe.compare.report import arm

    chosen: dict[str, float | None] = {}
    val = [r for r in rows if r["split"] == "validation"]
    for v in cmp.variants:
        if v.lr_grid:
            scores = {lr: stats.grand_mean(arm([r for r in val if r["variant"] == v.name and r["lr"] == lr],
                                               cmp.selection_metric)) for lr in _grid_lrs(v, val)}
            chosen[v.name] = min(scores, key=lambda lr: (-scores[lr], lr))
        else:
            chosen[v.name] = None
    for v in cmp.variants:
        if v.lr_from is not None:
            chosen[v.name] = chosen[v.lr_from]
    return chosen


def _grid_lrs(v: CompareVariant, val: list[dict[str, Any]]) -> list[float]:
    """The grid's rates as the runs recorded them (train.lr after the config round trip)."""
    return sorted({r["lr"] for r in val if r["variant"] == v.name})


# ---- results file ----

def _schema(meta: dict[str, Any] | None = None) -> Any:
    import pyarrow as pa

    schema = pa.schema([(n, getattr(pa, t)()) for n, t in RESULT_COLUMNS])
    return schema.with_metadata({"grao_pipe.compare": json.dumps(meta)}) if meta is not None else schema


def write_results(path: Path, rows: list[dict[str, Any]], meta: dict[str, Any]) -> None:
    """``results.parquet`` (atomically): the rows, and in its schema metadata the compare
    section (variants, seeds, families, as declared) and the run's wall time and load."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    tmp = path.with_suffix(".parquet.tmp")
    pq.write_table(pa.Table.from_pylist(rows, schema=_schema(meta)), tmp)
    tmp.replace(path)


def read_results(path: Path) -> tuple[list[dict[str, Any]], CompareConfig, dict[str, Any]]:
    """The rows, the compare section they were run with, and the run's metadata."""
    import pyarrow.parquet as pq

    table = pq.read_table(path)
    meta = json.loads((table.schema.metadata or {})[b"grao_pipe.compare"])
    return table.to_pylist(), CompareConfig.model_validate(meta["compare"]), meta


# ---- provenance ----

def provenance() -> dict[str, str | None]:
    """The commit of the code that ran (``-dirty`` with uncommitted changes; None outside a git
    checkout) and the versions of the packages that compute the numbers."""
    from importlib import metadata

    src = Path(__file__).resolve().parent
    commit: str | None = None
    try:
        head = subprocess.run(["git", "rev-parse", "HEAD"], cwd=src, capture_output=True, text=True, timeout=10)
        if head.returncode == 0:
            dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=src,
                                   capture_output=True, text=True, timeout=10).stdout.strip()
            commit = head.stdout.strip() + ("-dirty" if dirty else "")
    except (OSError, subprocess.SubprocessError):
        commit = None
    versions: dict[str, str | None] = {}
    for name in PACKAGES:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            versions[name] = None
    return {"commit": commit, "versions": json.dumps(versions, sort_keys=True)}


def _loadavg() -> list[str] | None:
    try:
        return Path("/proc/loadavg").read_text().split()[:3]
    except OSError:
        return None
