"""The base model's eval answers are cached by content: an eval whose key differs only in what
does not change them (here the scorer's name) reuses them; a cache file that does not verify is
answered again, never trusted."""

import json

import pyarrow.parquet as pq
from stage_runner import run_stage

from grao_pipe.config import load_config
from grao_pipe.hashing import digest

RULE = {"kind": "function", "function": "grao_pipe.tasks.arith:score"}


def _eval(tiny_config, tiny_model_dir, name: str):
    ev = {"model": str(tiny_model_dir), "base_model": str(tiny_model_dir), "limit": 9, "prompts": "builtin:arith",
          "scorer": {**RULE, "name": name}, "temperature": 1.0}
    out = run_stage("eval", load_config(tiny_config(eval=ev)))
    return [r["base"] for r in pq.read_table(out.target.dir.local_path("answers.parquet")).to_pylist()]


def test_base_answers_are_reused_and_a_bad_cache_file_is_answered_again(tiny_config, tiny_model_dir, tmp_path):
    first = _eval(tiny_config, tiny_model_dir, "a")
    [cache] = (tmp_path / "work" / "eval-base-answers").glob("*/answers.json")
    saved = json.loads(cache.read_text())
    assert saved["texts"] == first and saved["sha256"] == digest(first)

    # Reused: a cache file edited consistently (texts and their hash) is what the next eval shows.
    marked = [f"cached {t}" for t in first]
    cache.write_text(json.dumps({**saved, "texts": marked, "sha256": digest(marked)}))
    assert _eval(tiny_config, tiny_model_dir, "b") == marked

    # Not trusted: texts that do not match their hash are answered again, as the first time.
    cache.write_text(json.dumps({**saved, "texts": marked}))
    assert _eval(tiny_config, tiny_model_dir, "c") == first
    assert json.loads(cache.read_text())["texts"] == first
    cache.write_text("{not json")
    assert _eval(tiny_config, tiny_model_dir, "d") == first
