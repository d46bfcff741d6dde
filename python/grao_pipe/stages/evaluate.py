"""``grao-pipe eval``: RAS and NAG (design §5) of the trained model against the base model.

Both models answer the same held-out prompts (one sample each, seeded); a comparative scorer
gives R(o, y) against the reference for each answer. Results: ``<workdir>/eval/<key>/eval.json``
plus every answer and its R in ``answers.jsonl``. Cached like any stage.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from grao_pipe import metrics, scoring
from grao_pipe.config import DataConfig, PipelineConfig
from grao_pipe.generation import make_sampler
from grao_pipe.generation.tokenizer import PolicyTokenizer
from grao_pipe.prompts import load_prompts, prompt_set_fingerprint
from grao_pipe.remote import ensure_local, local_input, local_workdir
from grao_pipe.stages.common import (
    StageRef,
    base_model_dir,
    model_digest,
    require,
    stage_lock,
    train_ref,
)
from grao_pipe.stages.generate import prepare_requests
from grao_pipe.store import atomic_write_bytes, digest


def _models(cfg: PipelineConfig) -> tuple[Path, Path]:
    base = local_input(cfg.eval.base_model) if cfg.eval.base_model else base_model_dir(cfg)
    if cfg.eval.model:
        return base, local_input(cfg.eval.model)
    last = train_ref(cfg, cfg.run.rounds)
    require(last, "eval")
    return base, ensure_local(last.directory / "model")


def _answers(cfg: PipelineConfig, model: Path, data: DataConfig) -> tuple[list[Any], list[str]]:
    ec = cfg.eval
    gen = cfg.generate.model_copy(update={"num_samples": 1, "temperature": ec.temperature, "backend": "hf",
                                         "max_new_tokens": ec.max_new_tokens or cfg.generate.max_new_tokens})
    run_cfg = cfg.model_copy(update={"generate": gen})
    tok = PolicyTokenizer(model, cfg.model.trust_remote_code)
    sampler = make_sampler(run_cfg, model, tok)
    requests, _, _ = prepare_requests(run_cfg, tok, load_prompts(data))
    texts: list[str] = []
    for b in range(0, len(requests), ec.batch_size):
        batch = requests[b : b + ec.batch_size]
        texts += [g[0].text for g in sampler.sample(batch, ec.seed + b)]
    return requests, texts


def _mean(values: list[float | None]) -> float | None:
    valid = [v for v in values if v is not None]
    return sum(valid) / len(valid) if valid else None


def run(cfg: PipelineConfig, force: bool = False) -> dict[str, Any]:
    base, post = _models(cfg)
    data = cfg.data.model_copy(update={"prompts": cfg.eval.prompts or cfg.data.prompts, "limit": cfg.eval.limit})
    scorer_cfg = cfg.eval.scorer or cfg.score.scorers[0]
    key = digest({"v": 2, "eval": cfg.eval.model_dump(), "scorer": scoring.scorer_key(scorer_cfg),
                  "prompts": prompt_set_fingerprint(data), "base": model_digest(str(base)), "post": model_digest(str(post))})
    out_dir = local_workdir(cfg.workdir) / "eval" / key[:16]
    result_path = out_dir / "eval.json"
    out_dir.mkdir(parents=True, exist_ok=True)
    with stage_lock(StageRef("eval", 0, key, out_dir, {}, {})):
        if result_path.is_file() and not force:
            return {**json.loads(result_path.read_text()), "cached": True}
        scorer = scoring.build(scorer_cfg)
        requests, post_texts = _answers(cfg, post, data)
        _, pre_texts = _answers(cfg, base, data)
        prompts = [r.text for r in requests]
        refs = [r.prompt.reference for r in requests]
        dialogues = [r.prompt.messages for r in requests]  # judges read these, not the policy's template
        r_post = scorer.score(prompts, post_texts, refs, messages=dialogues)
        r_pre = scorer.score(prompts, pre_texts, refs, messages=dialogues)
        result = {
            "n_prompts": len(requests),
            "base_model": str(base), "model": str(post), "scorer": scorer_cfg.name,
            "invalid": {"model": sum(v is None for v in r_post.values), "base": sum(v is None for v in r_pre.values)},
            "mean_reward": {"model": _mean(r_post.values), "base": _mean(r_pre.values)},
            "ras": {k: e.as_dict() for k, e in metrics.ras(r_post.values).items()},
            "ras_base": {k: e.as_dict() for k, e in metrics.ras(r_pre.values).items()},
            "nag": {k: e.as_dict() for k, e in metrics.nag(r_post.values, r_pre.values).items()},
        }
        rows = [{"prompt": p, "reference": y, "model": o, "base": b, "r_model": rp, "r_base": rb}
                for p, y, o, b, rp, rb in zip(prompts, refs, post_texts, pre_texts, r_post.values, r_pre.values, strict=True)]
        atomic_write_bytes(out_dir / "answers.jsonl", "".join(json.dumps(r) + "\n" for r in rows).encode())
        atomic_write_bytes(result_path, json.dumps(result, indent=2).encode())
        return {**result, "cached": False, "path": str(result_path)}
