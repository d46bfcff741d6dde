"""The real CLI in a subprocess, as a scheduler would call it."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

BIN = [sys.executable, "-m", "grao_pipe.cli"]


def cli(*args: str, cwd: Path | None = None) -> subprocess.CompletedProcess:
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "COLUMNS": "200"}
    return subprocess.run([*BIN, *args], capture_output=True, text=True, env=env, cwd=cwd, timeout=600)
