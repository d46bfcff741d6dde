"""Shared fixtures: a tiny pipeline config that runs every stage in seconds on CPU."""

from __future__ import annotations

import contextlib
import os
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml

sys.path.insert(0, str(Path(__file__).parent / "helpers"))
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

TINY = {
    "name": "tiny",
    "data": {"prompts": "builtin:arith", "limit": 12},
    "generate": {"num_samples": 4, "max_new_tokens": 3, "batch_size": 6, "prompts_per_shard": 6},
    "train": {"lr": 1e-3, "groups_per_step": 4, "epochs": 1, "nproc": 2},
}


def _merge(base: dict, extra: dict) -> dict:
    out = dict(base)
    for k, v in extra.items():
        out[k] = _merge(out.get(k, {}), v) if isinstance(v, dict) else v
    return out


@pytest.fixture
def tiny_config(tmp_path: Path):
    """Write a tiny config YAML under tmp_path; returns a factory taking section overrides."""

    def make(**sections: dict) -> Path:
        tree = _merge({**TINY, "workdir": str(tmp_path / "work")}, sections)
        path = tmp_path / "tiny.yaml"
        path.write_text(yaml.safe_dump(tree))
        return path

    return make


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory) -> Path:
    """The embedded tiny model (with a chat template), built once per test session."""
    from grao_pipe.config import DataConfig, TinyModelConfig
    from grao_pipe.models.tiny import build_tiny_model
    from grao_pipe.prompts import load_prompt_set
    from grao_pipe.storage import local_input

    data = DataConfig()
    corpus = [t for p in load_prompt_set(local_input(data.prompts), data).prompts for t in (p.text or "", p.reference)]
    return build_tiny_model(TinyModelConfig(), corpus, tmp_path_factory.mktemp("models"))


@contextlib.contextmanager
def _serve(name: str, cmd: list[str], probe_url: str, log_dir: Path, timeout_s: float) -> Iterator[None]:
    """Start a real server process, wait until ``probe_url`` answers 200, yield, stop it."""
    import subprocess
    import time

    import httpx

    log = open(log_dir / f"{name}.log", "w")  # noqa: SIM115 - closed below
    proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env={**os.environ, "HF_HUB_OFFLINE": "1"})
    deadline = time.time() + timeout_s
    while time.time() < deadline:
        if proc.poll() is not None:
            pytest.fail(f"{name} exited early; see {log.name}")
        try:
            if httpx.get(probe_url, timeout=1).status_code == 200:
                break
        except httpx.HTTPError:
            pass
        time.sleep(0.2)
    else:
        proc.kill()
        pytest.fail(f"{name} did not answer in {timeout_s:.0f} s; see {log.name}")
    yield
    proc.terminate()
    proc.wait(timeout=30)
    log.close()


@pytest.fixture(scope="session")
def openai_server(tiny_model_dir, tmp_path_factory):
    """A real OpenAI-compatible HTTP server (`transformers serve`) with the tiny model, on CPU."""
    import shutil

    exe = shutil.which("transformers", path=str(Path(sys.executable).parent)) or shutil.which("transformers")
    if exe is None:
        pytest.fail("`transformers serve` is not installed; run `make setup`")
    base = f"http://127.0.0.1:{_free_port()}"
    cmd = [exe, "serve", str(tiny_model_dir), "--port", base.rsplit(":", 1)[1], "--host", "127.0.0.1", "--device", "cpu"]
    with _serve("transformers serve", cmd, f"{base}/health", tmp_path_factory.mktemp("serve"), 120):
        yield f"{base}/v1", str(tiny_model_dir)


@pytest.fixture(scope="session")
def s3_endpoint(tmp_path_factory):
    """A real S3-compatible HTTP server (moto in server mode) on a free local port."""
    url = f"http://127.0.0.1:{_free_port()}"
    cmd = [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", url.rsplit(":", 1)[1]]
    with _serve("moto server", cmd, f"{url}/moto-api/", tmp_path_factory.mktemp("moto"), 60):
        yield url


@pytest.fixture
def s3(s3_endpoint, monkeypatch, tmp_path):
    """Credentials and endpoint in the environment (inherited by CLI subprocesses), a fresh
    bucket, and a local mirror cache under tmp_path. Returns (bucket URL, boto3 client)."""
    import uuid

    import boto3

    env = {"AWS_ENDPOINT_URL": s3_endpoint, "AWS_ACCESS_KEY_ID": "test", "AWS_SECRET_ACCESS_KEY": "test",
           "AWS_DEFAULT_REGION": "us-east-1", "AWS_REGION": "us-east-1",
           "GRAO_PIPE_CACHE": str(tmp_path / "cache-a")}
    for k, v in env.items():
        monkeypatch.setenv(k, v)
    bucket = f"team-{uuid.uuid4().hex[:8]}"
    client = boto3.client("s3", endpoint_url=s3_endpoint)
    client.create_bucket(Bucket=bucket)
    return f"s3://{bucket}", client
