"""Airflow tests run with .venv-airflow's python (pipelines/airflow/setup.sh), not the main venv.

Airflow reads its settings when first imported, so this sets them up before any test module
imports it: a throwaway AIRFLOW_HOME with a SQLite database, no example DAGs, and the DAG
folder pipelines/airflow.
"""

from __future__ import annotations

import importlib.util
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
# With tests/ on sys.path this very folder is a namespace package "airflow": only a real
# package (one with an __init__.py, so an origin) counts.
_spec = importlib.util.find_spec("airflow")

if _spec is None or _spec.origin is None:
    if Path(sys.prefix).resolve() == (ROOT / ".venv").resolve():
        # The main venv cannot hold Airflow (conflicting pins); `make test-airflow` runs these.
        collect_ignore_glob = ["*.py"]
    else:
        raise ImportError(
            f"tests/airflow needs Airflow, which {sys.executable} lacks: run "
            "pipelines/airflow/setup.sh, then .venv-airflow/bin/python -m pytest tests/airflow"
        )
else:
    _home = Path(tempfile.mkdtemp(prefix="grao-airflow-home-"))
    os.environ.update({
        "AIRFLOW_HOME": str(_home),
        "AIRFLOW__DATABASE__SQL_ALCHEMY_CONN": f"sqlite:///{_home}/airflow.db",
        "AIRFLOW__CORE__LOAD_EXAMPLES": "False",
        "AIRFLOW__CORE__DAGS_FOLDER": str(ROOT / "pipelines" / "airflow"),
    })
    # The metadata database (SQLite, offline). In a subprocess: this process must first import
    # Airflow after the settings above, when a test module does.
    subprocess.run([sys.executable, "-m", "airflow", "db", "migrate"], check=True,
                   stdout=subprocess.DEVNULL)

    def pytest_unconfigure(config):
        shutil.rmtree(_home, ignore_errors=True)
