#!/usr/bin/env bash
# Create .venv-airflow (Airflow + pytest from requirements-airflow.lock) at the repository root.
# A venv of its own: Airflow's pins conflict with the project's .venv. Idempotent: a stamp holds
# the lock's hash, so a second run returns at once and a changed lock rebuilds the venv.
# Usage: pipelines/airflow/setup.sh   (env: PYTHON, default python3; AIRFLOW_VENV, default .venv-airflow)
set -euo pipefail

root="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
lock="$root/pipelines/airflow/requirements-airflow.lock"
venv="${AIRFLOW_VENV:-$root/.venv-airflow}"
stamp="$venv/.lock-stamp"
want="$(sha256sum "$lock" | cut -d' ' -f1)"

if [[ -x "$venv/bin/python" && -f "$stamp" && "$(cat "$stamp")" == "$want" ]]; then
    exit 0
fi

rm -f "$stamp"
# --clear: a stale venv (older lock, interrupted install) starts over instead of accumulating.
"${PYTHON:-python3}" -m venv --clear "$venv"
echo '*' > "$venv/.gitignore"  # keep the venv out of git without touching the top .gitignore
"$venv/bin/pip" install -q --disable-pip-version-check -r "$lock"
echo "$want" > "$stamp"
