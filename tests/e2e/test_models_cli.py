"""`grao-pipe models import`: exit codes and messages of the real CLI."""

from __future__ import annotations

from cli_runner import cli


def test_import_refuses_what_is_not_a_gguf_file(tmp_path):
    bad = tmp_path / "weights.gguf"
    bad.write_bytes(b"not a gguf file")
    r = cli("models", "import", str(bad), "--out", str(tmp_path / "models"))
    assert r.returncode == 3 and "is not a GGUF file" in r.stderr
    r = cli("models", "import", "pkg:no_such_package_xyz/m.gguf")
    assert r.returncode == 3 and "no installed Python package named 'no_such_package_xyz'" in r.stderr
    r = cli("models", "import", str(bad), "--dtype", "fp16")
    assert r.returncode == 2 and "fp16" in r.stderr
