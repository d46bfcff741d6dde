"""Tokenizing an import's completions (pass 2, per chunk) and building its shards (pass 3).

Responses are tokenized with the policy's tokenizer (one batch encode per chunk, while the
importer parses the next chunk; ``stop`` completions end with EOS, as the openai backend writes
them). A completion's log-probs are kept when the file's tokens are the policy's tokens: vLLM's
``token_id:N`` form compares ids; token strings compare their text and boundaries with the
tokenizer's offsets; bare float lists compare lengths. Anything else (another tokenizer, a stop
without the EOS token's log-prob) is null and counted as ``unaligned``. The spill then holds the
ids and the kept float32 log-probs, not the file's token strings.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import polars as pl
import pyarrow as pa

from grao_pipe.generation.tokenizer import PolicyTokenizer
from grao_pipe.prompts import Prompt, group_id
from grao_pipe.schemas import GENERATE_SCHEMA

_ID_PREFIX = "token_id:"
# A spilled completion's log-probs (``lp_state``): kept, absent from the file, or not the policy's tokens.
KEPT, ABSENT, UNALIGNED = 0, 1, 2


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


def align(tok: PolicyTokenizer, df: pl.DataFrame) -> tuple[pl.Series, pl.Series]:
    """Per completion of ``df`` (``response``, ``ids``: the policy's tokens with EOS after a stop,
    ``stop``, ``lp_tokens``, ``lp_values``): the file's log-probs as float32 if they belong to
    ``ids``, else null; and its ``lp_state``. Token-id and bare-float forms are compared in Polars;
    token strings (which need the tokenizer's offsets) one by one."""
    toks, vals, ids = pl.col("lp_tokens"), pl.col("lp_values"), pl.col("ids")
    has = vals.is_not_null() & ~vals.list.eval(pl.element().is_null()).list.any()
    id_form = toks.is_not_null() & (toks.list.len() > 0) & toks.list.eval(
        pl.element().str.starts_with(_ID_PREFIX)).list.all()
    as_ids = toks.list.eval(pl.element().str.strip_prefix(_ID_PREFIX).cast(pl.Int64, strict=False).cast(pl.Int32,
                                                                                                      strict=False))
    same_len = vals.list.len() == ids.list.len()
    flags = df.select(
        absent=vals.is_null(),
        ok=has & same_len & pl.when(toks.is_null()).then(True).when(id_form).then(as_ids == ids).otherwise(False)
        .fill_null(False),
        strings=has & same_len & toks.is_not_null() & ~id_form,
    )
    ok = flags["ok"].to_numpy().copy()
    rows = np.nonzero(flags["strings"].to_numpy())[0].tolist()
    if rows:
        sub = df[rows]
        texts, stops = sub["response"].to_list(), sub["stop"].to_list()
        eos_text = {"", str(tok.tok.eos_token or "")}
        encs = encode_batch(tok, texts, offsets=True)
        for i, text, stop, t, enc in zip(rows, texts, stops, sub["lp_tokens"].to_list(), encs, strict=True):
            body = t[:-1] if stop else t  # a stop's last entry is its EOS token
            if stop and t[-1] not in eos_text:
                continue
            ends, pos = [], 0
            for piece in body:
                pos += len(piece or "")
                ends.append(pos)
            ok[i] = "".join(piece or "" for piece in body) == text and ends == _ends(enc)
    state = np.where(ok, KEPT, np.where(flags["absent"].to_numpy(), ABSENT, UNALIGNED)).astype(np.int8)
    kept = df.select(lp=pl.when(pl.Series(ok)).then(vals.cast(pl.List(pl.Float32))))["lp"]
    return kept, pl.Series("lp_state", state)


def tokenize_completions(tok: PolicyTokenizer, df: pl.DataFrame) -> pl.DataFrame:
    """A chunk's completions as spilled: ``lp_tokens``/``lp_values`` replaced by the response's
    token ids (``ids``), its aligned log-probs (``lp``) and ``lp_state``."""
    stop = df["finish_reason"] == "stop"
    ids = with_eos(pa.array(encode_batch(tok, df["response"].to_list()), pa.list_(pa.int32())), stop.to_numpy(),
                   tok.eos_id)
    ids_s = pl.Series("ids", ids)
    lp, state = align(tok, df.with_columns(ids=ids_s, stop=stop))
    return df.drop("lp_tokens", "lp_values").with_columns(ids=ids_s, lp=lp, lp_state=state)


def with_eos(lists: pa.ListArray, stop: np.ndarray, eos: int) -> pa.ListArray:
    """``lists`` with ``eos`` appended to the rows where ``stop`` (a stop's last token), in numpy."""
    offsets = lists.offsets.to_numpy() - lists.offsets[0].as_py()  # a slice starts past 0
    values = lists.flatten().to_numpy(zero_copy_only=False)
    values = np.insert(values, offsets[1:][stop], eos).astype(np.int32)
    shift = np.concatenate([[0], np.cumsum(stop)]).astype(offsets.dtype)
    return pa.ListArray.from_arrays(pa.array(offsets + shift), pa.array(values))


def shard_stats(table: pa.Table) -> dict[str, int]:
    """The manifest entry's stats of a generate shard (``GenerateShardStats``), computed before it
    is written so the merge reads only the shards' footers."""
    import pyarrow.compute as pc

    lengths = pc.list_value_length(table["response_token_ids"])
    return {"groups": pc.count_distinct(table["group_id"]).as_py() if table.num_rows else 0,
            "response_tokens": pc.sum(lengths).as_py() or 0, "max_response_tokens": pc.max(lengths).as_py() or 0,
            "truncated_responses": pc.sum(pc.equal(table["finish_reason"], "length")).as_py() or 0,
            "prompts_skipped_overlong": 0, "prompts_truncated": 0}


def prompt_table(prompts: list[Prompt], lo: int, hi: int, tok: PolicyTokenizer) -> pa.Table:
    """The prompt columns of a generate shard for prompts ``[lo, hi)``, one row each, rendered
    and tokenized (what every row of a group repeats)."""
    group = prompts[lo:hi]
    rendered = [tok.render(p) for p in group]
    refs = [p.reference for p in group]
    rej = [(k, p.rejected) for k, p in enumerate(group) if p.rejected is not None]
    enc = encode_batch(tok, rendered + refs + [r for _, r in rej])
    n = len(group)
    rej_ids: list[list[int] | None] = [None] * n
    for (k, _), ids in zip(rej, enc[2 * n :], strict=True):
        rej_ids[k] = [*ids, tok.eos_id]
    return pa.table({
        "group_id": pa.array([group_id(t, r) for t, r in zip(rendered, refs, strict=True)], pa.string()),
        "prompt_idx": pa.array(range(lo, lo + n), pa.int64()),
        "prompt": pa.array(rendered, pa.string()),
        "prompt_messages": pa.array([[{"role": r, "content": c} for r, c in p.messages] if p.messages else None
                                     for p in group], GENERATE_SCHEMA.field("prompt_messages").type),
        "reference": pa.array(refs, pa.string()),
        "reference_rejected": pa.array([p.rejected for p in group], pa.string()),
        "reference_rejected_token_ids": pa.array(rej_ids, pa.list_(pa.int32())),
        "prompt_token_ids": pa.array(enc[:n], pa.list_(pa.int32())),
        "reference_token_ids": pa.array([[*ids, tok.eos_id] for ids in enc[n : 2 * n]], pa.list_(pa.int32())),
    })


def build_table(df: pl.DataFrame, per_prompt: pa.Table, digest16: str) -> tuple[pa.Table, LogprobCounts, set[str]]:
    """The generate shard of ``df`` (spilled completions of this shard's prompts, usable groups
    only, tokenized by ``tokenize_completions``; ``per_prompt``: ``prompt_table`` of a range
    holding them): rows ordered by prompt, then request/row order, then choice."""
    df = df.sort(["prompt_idx", "order", "choice"]).with_columns(
        sample_idx=pl.int_range(pl.len()).over("prompt_idx").cast(pl.Int32))
    lo = per_prompt["prompt_idx"][0].as_py() if per_prompt.num_rows else 0
    prompt_cols = per_prompt.take((df["prompt_idx"] - lo).to_arrow())
    state = df["lp_state"].to_numpy()
    counts = LogprobCounts(kept=int((state == KEPT).sum()), absent=int((state == ABSENT).sum()),
                           unaligned=int((state == UNALIGNED).sum()))
    models = df["model"].fill_null("unknown")
    cols: dict[str, Any] = {name: prompt_cols[name] for name in per_prompt.column_names}
    cols |= {
        "sample_idx": df["sample_idx"].to_arrow(),
        "response": df["response"].to_arrow(),
        "response_token_ids": df["ids"].to_arrow(),
        "behaviour_logprobs": df["lp"].to_arrow(),
        "finish_reason": df["finish_reason"].to_arrow(),
        "temperature": df["temperature"].to_arrow(), "top_p": df["top_p"].to_arrow(),
        "max_new_tokens": df["max_new_tokens"].to_arrow(), "seed": df["seed"].to_arrow(),
        "backend": pa.array(["import"] * df.height, pa.string()),
        # The source, not weights: the model name the file reports and the imported files' digest.
        "policy_digest": (("import:" + models) + ("@" + digest16)).to_arrow(),
    }
    table = pa.table({name: cols[name] for name in GENERATE_SCHEMA.names})
    return table.cast(GENERATE_SCHEMA), counts, set(models.unique().to_list())
