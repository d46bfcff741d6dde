"""Opt-in (``pytest -m oracle tests/oracle`` with the [oracle] extra, TRL 1.16): regenerate the
golden file with the installed TRL and check the committed one still says the same, so a stale or
hand-edited golden file cannot pass unnoticed."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest

pytestmark = pytest.mark.oracle
pytest.importorskip("trl")

from make_trl_golden import GOLDEN, make  # noqa: E402


def _close(a: object, b: object, path: str = "") -> None:
    if isinstance(a, dict) and isinstance(b, dict):
        assert a.keys() == b.keys(), path
        for k in a:
            _close(a[k], b[k], f"{path}.{k}")
    elif isinstance(a, list) and isinstance(b, list):
        assert len(a) == len(b), path
        for i, (x, y) in enumerate(zip(a, b, strict=True)):
            _close(x, y, f"{path}[{i}]")
    elif isinstance(a, float) and isinstance(b, float):
        assert math.isclose(a, b, rel_tol=1e-12, abs_tol=1e-12), (path, a, b)
    else:
        assert a == b, (path, a, b)


def test_committed_golden_is_what_trl_computes_today():
    live = json.loads(json.dumps(make()))
    committed = json.loads(Path(GOLDEN).read_text())
    live.pop("torch_version")
    committed.pop("torch_version")
    _close(live, committed)
