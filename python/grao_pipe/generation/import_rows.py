"""Pass 3 of an import: one shard's spilled completions -> a generate shard (data contract v2).

Responses are tokenized with the policy's tokenizer (one batch encode per shard; ``stop``
completions end with EOS, as the openai backend writes them). A completion's log-probs are kept
when the file's tokens are the policy's tokens: vLLM's ``token_id:N`` form compares ids; token
strings compare their text and boundaries with the tokenizer's offsets; bare float lists compare
lengths. Anything else (another tokenizer, a stop without the EOS token's log-prob) is null and
counted as ``unaligned``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import polars as pl
import pyarrow as pa

from grao_pipe.generation.tokenizer import PolicyTokenizer
from grao_pipe.prompts import Prompt, group_id
from grao_pipe.schemas import GENERATE_SCHEMA

_ID_PREFIX = "token_id:"


@dataclass
class LogprobCounts:
    kept: int = 0
    absent: int = 0
    unaligned: int = 0


def encode_batch(tok: PolicyTokenizer, texts: list[str], offsets: bool = False) -> list[Any]:
    """Token ids (or Encodings with offsets) of ``texts``, without special tokens: the fast
    tokenizer's batch encode (Rust), else one call per text."""
    backend = getattr(tok.tok, "backend_tokenizer", None)
    if backend is None:
        if offsets:
            return [tok.tok(t, add_special_tokens=False, return_offsets_mapping=True) for t in texts]
        return [tok.encode(t) for t in texts]
    if offsets:
        return list(backend.encode_batch(texts, add_special_tokens=False))
    fast = getattr(backend, "encode_batch_fast", backend.encode_batch)
    return [e.ids for e in fast(texts, add_special_tokens=False)]


def _ends(enc: Any) -> list[int]:
    offs = enc.offsets if hasattr(enc, "offsets") else enc["offset_mapping"]
    return [e for _, e in offs]


def align(tok: PolicyTokenizer, texts: list[str], ids: list[list[int]], stops: list[bool],
          tokens: list[list[str] | None], values: list[list[float] | None], counts: LogprobCounts
          ) -> list[list[float] | None]:
    """Per completion, the file's log-probs if they belong to ``ids`` (the policy's tokens,
    EOS included for a stop), else None."""
    out: list[list[float] | None] = [None] * len(ids)
    eos_text = {"", str(tok.tok.eos_token or "")}
    strings: list[int] = []
    for i, (vals, toks) in enumerate(zip(values, tokens, strict=True)):
        if vals is None:
            counts.absent += 1
            continue
        if any(v is None for v in vals):
            counts.unaligned += 1
            continue
        if toks is None:  # bare floats: one per token, or nothing we can check
            ok = len(vals) == len(ids[i])
        elif toks and all(t is not None and t.startswith(_ID_PREFIX) for t in toks):
            try:
                ok = [int(t[len(_ID_PREFIX):]) for t in toks] == ids[i]
            except ValueError:
                ok = False
        else:
            strings.append(i)
            continue
        if ok:
            out[i] = [float(v) for v in vals]
            counts.kept += 1
        else:
            counts.unaligned += 1
    if strings:
        encs = encode_batch(tok, [texts[i] for i in strings], offsets=True)
        for i, enc in zip(strings, encs, strict=True):
            toks, vals = tokens[i], values[i]
            assert toks is not None and vals is not None
            n = len(ids[i]) - stops[i]  # the text's tokens, without the EOS a stop ends with
            ok = len(toks) == len(ids[i]) and (not stops[i] or toks[-1] in eos_text)
            if ok:
                text_toks = toks[:n]
                ends, pos = [], 0
                for t in text_toks:
                    pos += len(t or "")
                    ends.append(pos)
                ok = "".join(t or "" for t in text_toks) == texts[i] and ends == _ends(enc)
            if ok:
                out[i] = [float(v) for v in vals]
                counts.kept += 1
            else:
                counts.unaligned += 1
    return out


def build_table(df: pl.DataFrame, prompts: list[Prompt], tok: PolicyTokenizer, digest16: str
                ) -> tuple[pa.Table, LogprobCounts, set[str]]:
    """The generate shard of ``df`` (spilled completions of this shard's prompts, usable groups
    only): rows ordered by prompt, then request/row order, then choice."""
    df = df.sort(["prompt_idx", "order", "choice"]).with_columns(
        sample_idx=pl.int_range(pl.len()).over("prompt_idx").cast(pl.Int32))
    pidx = df["prompt_idx"].unique(maintain_order=True).to_list()
    pos = {p: k for k, p in enumerate(pidx)}
    group = [prompts[i] for i in pidx]
    rendered = [tok.render(p) for p in group]
    refs = [p.reference for p in group]
    rej = [(k, p.rejected) for k, p in enumerate(group) if p.rejected is not None]
    enc = encode_batch(tok, rendered + refs + [r for _, r in rej])
    n = len(group)
    rej_ids: list[list[int] | None] = [None] * n
    for (k, _), ids in zip(rej, enc[2 * n :], strict=True):
        rej_ids[k] = [*ids, tok.eos_id]
    per_prompt = pa.table({
        "group_id": pa.array([group_id(t, r) for t, r in zip(rendered, refs, strict=True)]),
        "prompt_idx": pa.array(pidx, pa.int64()),
        "prompt": pa.array(rendered),
        "prompt_messages": pa.array([[{"role": r, "content": c} for r, c in p.messages] if p.messages else None
                                     for p in group], GENERATE_SCHEMA.field("prompt_messages").type),
        "reference": pa.array(refs),
        "reference_rejected": pa.array([p.rejected for p in group], pa.string()),
        "reference_rejected_token_ids": pa.array(rej_ids, pa.list_(pa.int32())),
        "prompt_token_ids": pa.array(enc[:n], pa.list_(pa.int32())),
        "reference_token_ids": pa.array([[*ids, tok.eos_id] for ids in enc[n : 2 * n]], pa.list_(pa.int32())),
    })
    take = pa.array([pos[i] for i in df["prompt_idx"].to_list()], pa.int64())
    prompt_cols = per_prompt.take(take)
    texts = df["response"].to_list()
    stops = (df["finish_reason"] == "stop").to_list()
    resp = encode_batch(tok, texts)
    ids = [[*r, tok.eos_id] if s else r for r, s in zip(resp, stops, strict=True)]
    counts = LogprobCounts()
    lps = align(tok, texts, ids, stops, df["lp_tokens"].to_list(), df["lp_values"].to_list(), counts)
    models = df["model"].fill_null("unknown")
    cols: dict[str, Any] = {name: prompt_cols[name] for name in per_prompt.column_names}
    cols |= {
        "sample_idx": df["sample_idx"].to_arrow(),
        "response": pa.array(texts, pa.string()),
        "response_token_ids": pa.array(ids, pa.list_(pa.int32())),
        "behaviour_logprobs": pa.array(lps, pa.list_(pa.float32())),
        "finish_reason": df["finish_reason"].to_arrow(),
        "temperature": df["temperature"].to_arrow(), "top_p": df["top_p"].to_arrow(),
        "max_new_tokens": df["max_new_tokens"].to_arrow(), "seed": df["seed"].to_arrow(),
        "backend": pa.array(["import"] * df.height, pa.string()),
        # The source, not weights: the model name the file reports and the imported files' digest.
        "policy_digest": (("import:" + models) + ("@" + digest16)).to_arrow(),
    }
    table = pa.table({name: cols[name] for name in GENERATE_SCHEMA.names})
    return table.cast(GENERATE_SCHEMA), counts, set(models.unique().to_list())
