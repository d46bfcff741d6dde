"""`grao-pipe datasets list | show | verify` on real stage outputs."""

import json
import os
import subprocess
import sys

BIN = [sys.executable, "-m", "grao_pipe.cli"]


def cli(*args):
    return subprocess.run([*BIN, *args], capture_output=True, text=True, timeout=300,
                          env={**os.environ, "COLUMNS": "200", "HF_HUB_OFFLINE": "1"})


def test_list_show_verify_and_detect_corruption(tiny_config, tmp_path):
    cfg = str(tiny_config())
    assert cli("generate", "-c", cfg).returncode == 0
    assert cli("score", "-c", cfg).returncode == 0
    listed = cli("datasets", "list", "-c", cfg)
    assert listed.returncode == 0 and "generate" in listed.stdout and "score" in listed.stdout
    (score_dir,) = (tmp_path / "work" / "score").glob("*/")
    shown = cli("datasets", "show", "-c", cfg, score_dir.name[:8], "--write")
    assert shown.returncode == 0, shown.stderr
    card = json.loads(shown.stdout)
    assert card["rows"] == 48 and card["groups"] == 12 and 0 <= card["degenerate_share"] <= 1
    assert sum(card["reward"]["histogram"].values()) == 48 - card["reward"]["invalid"]
    assert card["lineage"]["scorers"][0]["function"] == "grao_pipe.tasks.arith:score"
    readme = (score_dir / "README.md").read_text()
    assert readme.startswith("---\nconfigs:") and "path: shard-*.parquet" in readme
    assert cli("datasets", "verify", "-c", cfg).returncode == 0

    shard = sorted(score_dir.glob("shard-*.parquet"))[0]
    shard.write_bytes(shard.read_bytes()[:-10])  # truncated
    bad = cli("datasets", "verify", "-c", cfg)
    assert bad.returncode == 5 and "checksum mismatch" in bad.stderr


def test_manifest_cannot_point_outside_its_dataset(tiny_config, tmp_path):
    cfg = str(tiny_config())
    assert cli("generate", "-c", cfg).returncode == 0
    (gen_dir,) = (tmp_path / "work" / "generate").glob("*/")
    m = json.loads((gen_dir / "_manifest.json").read_text())
    m["shards"][0]["name"] = "../../../etc/passwd"
    (gen_dir / "_manifest.json").write_text(json.dumps(m))
    out = cli("datasets", "verify", "-c", cfg)
    assert out.returncode == 5 and "points outside the dataset" in out.stderr
    (gen_dir / "_manifest.json").write_text("{ not json")
    out = cli("score", "-c", cfg)
    assert out.returncode == 5 and "malformed manifest" in out.stderr
