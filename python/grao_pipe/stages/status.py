"""``grao-pipe status``: for each round and stage, done / partial / stale / missing / waiting."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from grao_pipe.config import PipelineConfig
from grao_pipe.errors import StageNotReady
from grao_pipe.remote import local_workdir
from grao_pipe.schemas import MANIFEST_NAME
from grao_pipe.stages.common import STAGES, generate_ref, score_ref, train_ref

REF_FNS = {"generate": generate_ref, "score": score_ref, "train": train_ref}


@dataclass(frozen=True)
class StageStatus:
    round: int
    stage: str
    state: str  # done | partial | stale | missing | waiting
    key: str | None
    detail: str


def _other_versions(workdir: Path, stage: str, round_: int, key: str | None) -> list[str]:
    """Finished versions of the same (round, stage) slot under another key: the stale ones."""
    found = []
    for m in sorted((workdir / stage).glob(f"*/{MANIFEST_NAME}")):
        try:
            data = json.loads(m.read_text())
        except (OSError, json.JSONDecodeError):
            continue
        if data.get("inputs", {}).get("round") == round_ and data.get("key") != key:
            found.append(m.parent.name)
    return found


def status(cfg: PipelineConfig) -> list[StageStatus]:
    workdir = local_workdir(cfg.workdir)
    rows: list[StageStatus] = []
    for round_ in range(1, cfg.run.rounds + 1):
        for stage in STAGES:
            try:
                ref = REF_FNS[stage](cfg, round_)
            except StageNotReady:
                others = _other_versions(workdir, stage, round_, None)
                state, detail = ("stale", f"older version(s) {', '.join(others)}; inputs not ready") if others else ("waiting", "its input stage has not finished")
                rows.append(StageStatus(round_, stage, state, None, detail))
                continue
            m = ref.manifest()
            if m is not None:
                rows.append(StageStatus(round_, stage, "done", ref.key[:16], f"{m.data['rows']} rows, {m.data['created_at']}"))
            elif ref.directory.exists():
                rows.append(StageStatus(round_, stage, "partial", ref.key[:16], "started, not finished; the next run resumes it"))
            else:
                others = _other_versions(workdir, stage, round_, ref.key)
                if others:
                    rows.append(StageStatus(round_, stage, "stale", ref.key[:16], f"config or inputs changed; old version(s): {', '.join(others)}"))
                else:
                    rows.append(StageStatus(round_, stage, "missing", ref.key[:16], "not run yet"))
    return rows
