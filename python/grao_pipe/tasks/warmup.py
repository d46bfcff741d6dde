"""A competent, imperfect starting policy: supervised warm-up of a model on a prompt set.

The experiments start alignment from a model that already does the task some of the time, as
an instruct model would, not from random weights. ``sft_warmup`` trains a Hugging Face causal
LM on (prompt, reference) rows of a split that alignment never sees (``builtin:sums_warmup``),
by token-mean NLL of the reference + EOS, one process, and writes a model directory. The
result is cached by content (model digest, rows, settings) like any stage output.
"""

from __future__ import annotations

import json
import shutil
from dataclasses import asdict, dataclass
from pathlib import Path

from grao_pipe.hashing import digest
from grao_pipe.models import policy_digest
from grao_pipe.schemas import tmp_name


@dataclass(frozen=True)
class WarmupConfig:
    steps: int = 600
    batch_size: int = 64
    lr: float = 3e-3
    warmup_steps: int = 30
    weight_decay: float = 0.01
    seed: int = 0


def sft_warmup(model_dir: Path, rows: list[dict[str, str]], out_root: Path, cfg: WarmupConfig) -> Path:
    """Train ``model_dir`` on ``rows`` ({"prompt", "reference"}); return the new model directory
    (built once per (model, rows, cfg) under ``out_root``)."""
    key = digest({"model": policy_digest(model_dir), "rows": digest(rows), "cfg": asdict(cfg), "v": 1})[:16]
    out = out_root / f"warmup-{key}"
    if (out / "config.json").is_file():
        return out

    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from grao_pipe.hf import quiet

    quiet()
    tok = AutoTokenizer.from_pretrained(model_dir, local_files_only=True)
    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32, local_files_only=True)
    model.train()
    eos = tok.eos_token_id
    pad = tok.pad_token_id if tok.pad_token_id is not None else eos
    seqs = []
    for r in rows:
        p = tok(r["prompt"], add_special_tokens=False)["input_ids"]
        y = [*tok(r["reference"], add_special_tokens=False)["input_ids"], eos]
        seqs.append((p, y))
    gen = torch.Generator().manual_seed(cfg.seed)
    torch.manual_seed(cfg.seed)
    opt = torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    # Linear warm-up, then linear decay to 10% (a short run lands on a stable model).
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: min((s + 1) / cfg.warmup_steps,
                                                                 1.0 - 0.9 * s / max(cfg.steps, 1)))
    order = torch.randperm(len(seqs), generator=gen).tolist()
    cursor = 0
    log = []
    for _ in range(cfg.steps):
        if cursor + cfg.batch_size > len(order):
            order, cursor = torch.randperm(len(seqs), generator=gen).tolist(), 0
        batch = [seqs[i] for i in order[cursor : cursor + cfg.batch_size]]
        cursor += cfg.batch_size
        width = max(len(p) + len(y) for p, y in batch)
        ids = torch.full((len(batch), width), pad, dtype=torch.long)
        labels = torch.full((len(batch), width), -100, dtype=torch.long)
        attn = torch.zeros(len(batch), width, dtype=torch.long)
        for k, (p, y) in enumerate(batch):
            s = p + y
            ids[k, : len(s)] = torch.tensor(s)
            attn[k, : len(s)] = 1
            labels[k, len(p) : len(s)] = torch.tensor(y)
        loss = model(input_ids=ids, attention_mask=attn, labels=labels).loss
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        sched.step()
        opt.zero_grad(set_to_none=True)
        log.append(float(loss.detach()))
    tmp = out.with_name(tmp_name(out.name))
    model.save_pretrained(tmp)
    tok.save_pretrained(tmp)
    (tmp / "warmup.json").write_text(json.dumps({"config": asdict(cfg), "rows": len(rows), "loss": log}))
    try:
        tmp.replace(out)
    except OSError:
        if not (out / "config.json").is_file():
            raise
        shutil.rmtree(tmp)
    return out
