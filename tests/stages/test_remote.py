"""Object storage against a real S3-compatible server (moto in server mode): a whole round with
every input and output on s3://, a second machine that finds it all cached, resume across
machines after SIGKILL, and a crash mid-upload that leaves no partial shard visible."""

from __future__ import annotations

import hashlib
import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pyarrow.parquet as pq
from cli_runner import BIN, cli
from stage_runner import run_stage

from grao_pipe.storage import local_input


def _keys(client, bucket: str, prefix: str = "") -> dict[str, dict]:
    """The objects under ``prefix``, without pyarrow's empty directory markers (``a/b/``)."""
    pages = client.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix)
    return {o["Key"]: o for page in pages for o in page.get("Contents", []) if not o["Key"].endswith("/")}


def _upload_dir(client, bucket: str, local: Path, prefix: str) -> None:
    for p in local.rglob("*"):
        if p.is_file():
            client.upload_file(str(p), bucket, f"{prefix}/{p.relative_to(local).as_posix()}")


def test_round_on_s3_then_another_machine_finds_it_cached(tiny_config, tiny_model_dir, s3, tmp_path, monkeypatch):
    url, client = s3
    bucket = url.removeprefix("s3://")
    client.upload_file(str(local_input("builtin:arith")), bucket, "inputs/arith.jsonl")
    _upload_dir(client, bucket, tiny_model_dir, "models/tiny")
    cfg = tiny_config(workdir=f"{url}/runs/a", data={"prompts": f"{url}/inputs/arith.jsonl"},
                      model={"path": f"{url}/models/tiny"})

    first = cli("run", "-c", str(cfg))
    assert first.returncode == 0, first.stderr

    objects = _keys(client, bucket, "runs/a/")
    manifests = sorted(k for k in objects if k.endswith("/_manifest.json"))
    assert [k.split("/")[2] for k in manifests] == ["generate", "score", "train"]
    for key in manifests[:2]:  # every shard a dataset's manifest names is there, byte for byte
        data = json.loads(client.get_object(Bucket=bucket, Key=key)["Body"].read())
        for shard in data["shards"]:
            body = client.get_object(Bucket=bucket, Key=key.rsplit("/", 1)[0] + "/" + shard["name"])["Body"].read()
            assert hashlib.sha256(body).hexdigest() == shard["sha256"]
    train_prefix = manifests[2].rsplit("/", 1)[0]
    assert f"{train_prefix}/model/model.safetensors" in objects  # the next round's policy
    assert not [k for k in objects if "/checkpoints/" in k or "/.tmp-" in k]

    monkeypatch.setenv("GRAO_PIPE_CACHE", str(tmp_path / "cache-b"))  # another machine
    again = cli("run", "-c", str(cfg), "--cached-exit-code", "99")
    assert again.returncode == 99, again.stderr  # everything cached: found on the remote
    monkeypatch.setenv("GRAO_PIPE_CACHE", str(tmp_path / "cache-c"))  # a third one only looks
    status, listing = cli("status", "-c", str(cfg)), cli("datasets", "list", "-w", f"{url}/runs/a")
    assert status.returncode == 0 and listing.returncode == 0, status.stderr + listing.stderr
    assert (status.stdout + status.stderr).count("done") == 3
    # Inputs are fetched to hash them (keys follow content); datasets are not: their manifests
    # are read from the object store, nothing is written into the mirror.
    assert list((tmp_path / "cache-c" / "inputs").rglob("*.safetensors"))
    assert not [p for p in (tmp_path / "cache-c").rglob("mirrors/**/*") if p.is_file()]
    verify = cli("datasets", "verify", "-w", f"{url}/runs/a")
    assert verify.returncode == 0, verify.stderr
    out = verify.stdout + verify.stderr
    assert out.count(f"{url}/runs/a/") == 2 and out.count(": ok") == 2  # generate and score


def test_sigkill_on_one_machine_then_another_resumes(tiny_config, s3, tmp_path, monkeypatch):
    url, client = s3
    bucket = url.removeprefix("s3://")
    cfg = tiny_config(workdir=f"{url}/runs/b", data={"limit": 16},
                      generate={"prompts_per_shard": 2, "max_new_tokens": 16})
    proc = subprocess.Popen([*BIN, "generate", "-c", str(cfg)], stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL, env={**os.environ, "HF_HUB_OFFLINE": "1"})
    deadline = time.time() + 180
    while time.time() < deadline and not [k for k in _keys(client, bucket, "runs/b/generate/") if "/shard-" in k]:
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    listing = _keys(client, bucket, "runs/b/generate/")
    before = {k: o["ETag"] for k, o in listing.items() if "/shard-" in k}
    assert before and not [k for k in listing if k.endswith("_manifest.json")]  # killed mid-stage

    monkeypatch.setenv("GRAO_PIPE_CACHE", str(tmp_path / "cache-b"))  # resume elsewhere
    again = cli("generate", "-c", str(cfg))
    assert again.returncode == 0, again.stderr
    after = _keys(client, bucket, "runs/b/generate/")
    assert all(after[k]["ETag"] == etag for k, etag in before.items())  # reused, not redone
    (manifest,) = [k for k in after if k.endswith("_manifest.json")]
    prefix = manifest.rsplit("/", 1)[0]
    local = tmp_path / "dl"
    local.mkdir()
    keys = []
    for shard in json.loads(client.get_object(Bucket=bucket, Key=manifest)["Body"].read())["shards"]:
        client.download_file(bucket, f"{prefix}/{shard['name']}", str(local / shard["name"]))
        keys += [(r["group_id"], r["sample_idx"]) for r in pq.read_table(local / shard["name"]).to_pylist()]
    assert len(keys) == len(set(keys)) == 16 * 4  # nothing lost, nothing duplicated


CRASH_MID_UPLOAD = textwrap.dedent("""
    import os, signal, sys
    from grao_pipe.storage import Workdir, remote

    workdir = Workdir(sys.argv[1])
    directory = workdir.root / "generate" / "0123456789abcdef"
    directory.mkdir(parents=True, exist_ok=True)
    shard = directory / "shard-00000-of-00001.parquet"
    shard.write_bytes(os.urandom(24 << 20))

    class DiesMidway:  # the local file being uploaded; the process is killed after 8 MiB went up
        def __init__(self, f):
            self.f, self.reads = f, 0
        def __enter__(self):
            return self
        def __exit__(self, *exc):
            self.f.close()
        def read(self, n):
            self.reads += 1
            if self.reads == 2:
                os.kill(os.getpid(), signal.SIGKILL)
            return self.f.read(n)

    remote.open = lambda path, mode="r": DiesMidway(open(path, mode))
    workdir.mirror.publish(shard)
""")


def test_crash_mid_upload_leaves_no_partial_shard(s3):
    url, client = s3
    bucket = url.removeprefix("s3://")
    proc = subprocess.run([sys.executable, "-c", CRASH_MID_UPLOAD, f"{url}/runs/c"], capture_output=True)
    assert proc.returncode == -signal.SIGKILL, proc.stderr
    visible = _keys(client, bucket, "runs/c/")
    assert not [k for k in visible if k.endswith(".parquet")], visible  # no shard under its name

    from grao_pipe.storage import Workdir

    mirror = Workdir(f"{url}/runs/c").mirror
    assert mirror is not None
    directory = mirror.local / "generate" / "0123456789abcdef"
    assert not mirror.pull_tree(directory, finished_by="_manifest.json")  # no manifest: not a dataset
    mirror.clean_temporaries(directory)  # what the next run's prepare() does
    assert _keys(client, bucket, "runs/c/") == {}
    mirror.publish(directory / "shard-00000-of-00001.parquet")  # the re-run's upload completes
    (obj,) = _keys(client, bucket, "runs/c/").values()
    assert obj["Key"].endswith("shard-00000-of-00001.parquet") and obj["Size"] == 24 << 20


def test_unreachable_storage_is_a_clear_error_and_the_next_run_publishes(tiny_config, s3, tmp_path):
    url, client = s3
    missing = f"{url}-gone"  # a bucket that does not exist (yet)
    cfg = tiny_config(workdir=f"{missing}/runs/d")
    first = cli("generate", "-c", str(cfg))
    assert first.returncode == 7, first.stderr  # the scheduler's "remote unavailable, retry"
    assert "object storage" in first.stderr and "Traceback" not in first.stderr
    mirrors = list((tmp_path / "cache-a" / "mirrors").glob("*/generate/*/"))
    assert not [m for m in mirrors if (m / "_manifest.json").exists()]  # not finished here either

    client.create_bucket(Bucket=missing.removeprefix("s3://"))
    again = cli("generate", "-c", str(cfg))
    assert again.returncode == 0, again.stderr
    objects = _keys(client, missing.removeprefix("s3://"), "runs/d/generate/")
    assert any(k.endswith("_manifest.json") for k in objects) and any("/shard-" in k for k in objects)


def test_another_machine_reuses_the_published_raw_rewards(tiny_config, s3, tmp_path, monkeypatch):
    from grao_pipe.config import load_config

    url, _ = s3
    cfg_path = tiny_config(workdir=f"{url}/runs/e")
    run_stage("generate", load_config(cfg_path))
    first = run_stage("score", load_config(cfg_path))
    assert set(first.manifest.stats.scorer_shards_computed.values()) == {2}

    monkeypatch.setenv("GRAO_PIPE_CACHE", str(tmp_path / "cache-b"))  # another machine re-scores
    again = run_stage("score", load_config(cfg_path, ["score.advantage.mode=rank"]))
    assert not again.cached
    assert set(again.manifest.stats.scorer_shards_computed.values()) == {0}  # no scorer call


def test_remote_shards_deleted_or_overwritten_are_caught(tiny_config, s3, tmp_path, monkeypatch):
    """verify checks the objects themselves (not the local mirror); a fresh machine reading a
    dataset whose shard object is gone gets a data error naming it."""
    url, client = s3
    bucket = url.removeprefix("s3://")
    cfg = tiny_config(workdir=f"{url}/runs/f")
    assert cli("generate", "-c", str(cfg)).returncode == 0
    assert cli("datasets", "verify", "-w", f"{url}/runs/f").returncode == 0
    shards = sorted(k for k in _keys(client, bucket, "runs/f/generate/") if "/shard-" in k)
    body = client.get_object(Bucket=bucket, Key=shards[1])["Body"].read()
    client.put_object(Bucket=bucket, Key=shards[1], Body=body[:-1] + b"!")  # overwritten, same size
    client.delete_object(Bucket=bucket, Key=shards[0])
    out = cli("datasets", "verify", "-w", f"{url}/runs/f")
    assert out.returncode == 5, out.stderr
    assert "missing from the object store" in out.stderr and "checksum differs from the manifest" in out.stderr

    monkeypatch.setenv("GRAO_PIPE_CACHE", str(tmp_path / "cache-fresh"))  # a machine without a mirror
    scored = cli("score", "-c", str(cfg))
    assert scored.returncode == 5, scored.stderr
    assert "shard missing (its manifest lists it)" in scored.stderr and "Traceback" not in scored.stderr
