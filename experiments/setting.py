"""The small-scale setting of the replication (CPU): the ``sums`` task and its starting policy.

- Task: ``grao_pipe.tasks.sums`` (imperfect references, comparative rule-based judge), splits
  ``builtin:sums_{warmup,train,validation,test}`` with disjoint prompts.
- Starting policy: the embedded tiny Qwen2-architecture model, enlarged (``TINY``), after a
  supervised warm-up on the ``warmup`` split (``WARMUP``); about half of its answers on held-out
  prompts are correct, like an instruct model that does the task some of the time.

``starting_policy(root)`` builds both once (cached by content under ``root``) and returns the
model directory that every method's round 1 samples from and that score uses as the frozen
reference model.
"""

from __future__ import annotations

import json
from importlib import resources
from pathlib import Path

from grao_pipe.config import TinyModelConfig
from grao_pipe.models.tiny import build_tiny_model
from grao_pipe.tasks.warmup import WarmupConfig, sft_warmup

SPLITS = ("warmup", "train", "validation", "test")
TINY = TinyModelConfig(hidden_size=128, num_hidden_layers=4, num_attention_heads=4, num_key_value_heads=2,
                       intermediate_size=256, max_position_embeddings=64, seed=0)
WARMUP = WarmupConfig(steps=600, batch_size=64, lr=3e-3, warmup_steps=30, seed=0)


def split_rows(split: str) -> list[dict[str, str]]:
    path = Path(str(resources.files("grao_pipe") / "data" / f"sums_{split}.jsonl"))
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def starting_policy(root: Path, warmup: WarmupConfig = WARMUP) -> Path:
    """The warmed-up tiny model (built and trained once per content under ``root``)."""
    rows = {s: split_rows(s) for s in SPLITS}
    # The tokenizer sees every split's text (the vocabulary, not the answers, is shared).
    corpus = [t for s in SPLITS for r in rows[s] for t in (r["prompt"], r["reference"], r["rejected"])]
    base = build_tiny_model(TINY, corpus, root)
    return sft_warmup(base, rows["warmup"], root, warmup)


if __name__ == "__main__":  # `make replicate`: print the starting policy's directory (built once)
    import sys

    print(starting_policy(Path(sys.argv[1] if len(sys.argv) > 1 else "runs/replicate-models")))
