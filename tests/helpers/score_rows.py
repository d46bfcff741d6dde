"""Synthetic score shards for loader tests: groups of given or random token lengths."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pyarrow as pa

from grao_pipe.schemas import SCORE_SCHEMA, shard_name
from grao_pipe.storage.shards import write_shard


def score_row(gid: str, j: int, prompt: list[int], response: list[int], reference: list[int], *,
              behaviour: list[float] | None = None, ref_logprobs: list[float] | None = None,
              ref_reference: list[float] | None = None, reward: float | None = 0.0, advantage: float = 0.0,
              reference_advantage: float = 0.0, keep: bool = True, rejected: list[int] | None = None,
              ref_rejected: list[float] | None = None) -> dict:
    """One score row, every schema column filled."""
    return {"group_id": gid, "sample_idx": j, "prompt_idx": 0, "prompt": "p", "reference": "y", "response": "o",
            "prompt_token_ids": prompt, "response_token_ids": response, "reference_token_ids": reference,
            "behaviour_logprobs": behaviour, "finish_reason": "stop", "temperature": 0.7, "top_p": 1.0,
            "max_new_tokens": 10, "seed": 0, "backend": "hf", "policy_digest": "d", "reward": reward,
            "reward_valid": reward is not None, "advantage": advantage, "reference_advantage": reference_advantage,
            "degenerate": False, "keep": keep, "ref_logprobs": ref_logprobs, "ref_reference_logprobs": ref_reference,
            "reference_rejected": None if rejected is None else "r", "reference_rejected_token_ids": rejected,
            "ref_reference_rejected_logprobs": ref_rejected}


def write_rows(root: Path, shards: list[list[dict]]) -> list[tuple[Path, str]]:
    """Score shards holding these rows; returns (path, sha256) pairs as the learner takes them."""
    out = []
    for s, rows in enumerate(shards):
        path = root / shard_name(s, len(shards))
        entry = write_shard(path, pa.Table.from_pylist(rows, schema=SCORE_SCHEMA), "score")
        out.append((path, entry["sha256"]))
    return out


def random_groups(n: int, seed: int, shard: int = 0, prompt_len: tuple[int, int] = (1, 8),
                  vocab: int = 90, rejected: bool = False) -> list[dict]:
    """Rows of n random groups: 1-5 samples, responses of 0-10 tokens, log-probs that may be
    missing or of another length than their tokens, null rewards, dropped rows; with
    ``rejected``, a dataset's rejected answer of 0-8 tokens per group (or none)."""
    rng = np.random.default_rng(seed)

    def floats(k: int) -> list[float]:
        return rng.standard_normal(max(k, 0)).astype(np.float32).tolist()

    rows = []
    for k in range(n):
        prompt = rng.integers(1, vocab, int(rng.integers(*prompt_len))).tolist()
        reference = rng.integers(1, vocab, int(rng.integers(0, 9))).tolist()
        ref_ref = None if rng.random() < 0.5 else floats(len(reference) + int(rng.integers(0, 2)))
        rej = rng.integers(1, vocab, int(rng.integers(0, 9))).tolist() if rejected and rng.random() < 0.8 else None
        rej_lp = None if rej is None or rng.random() < 0.3 else floats(len(rej) + int(rng.integers(0, 2)))
        for j in range(int(rng.integers(1, 6))):
            resp = rng.integers(1, vocab, int(rng.integers(0, 11))).tolist()
            pick = int(rng.integers(0, 4))  # log-probs as long as the response, shorter, longer, none
            reward = None if rng.random() < 0.15 else float(rng.integers(-1, 2))
            rows.append(score_row(f"{shard:02d}-{k:05d}", j, prompt, resp, reference,
                                  behaviour=None if pick == 0 else floats(len(resp) + pick - 2),
                                  ref_logprobs=None if rng.random() < 0.5 else floats(len(resp)),
                                  ref_reference=ref_ref, reward=reward, advantage=float(rng.standard_normal()),
                                  reference_advantage=float(rng.standard_normal()), keep=bool(rng.random() > 0.1),
                                  rejected=rej, ref_rejected=rej_lp))
    return rows
