"""``generate.backend: import``: rollouts made elsewhere, read into the generate stage's contract.

Formats (docs/import.md): ``openai-batch`` (an OpenAI Batch API or vLLM ``run_batch`` request
file and its result file, joined on ``custom_id``), ``jsonl`` and ``parquet`` (one completion per
row, TRL's prompt-completion layout, standard or conversational). The files are read in chunks
of about ``CHUNK_BYTES`` and parsed by Polars, never line by line in Python (a chunk holding a
line that is not JSON is re-read line by line, to quarantine just that line).

Three passes, each bounded by two chunks or one shard in memory:

1. requests (openai-batch): each request is matched to a prompt of ``data.prompts`` (by
   ``custom_id`` when the prompt set has ids, else by its dialogue): a small index
   ``custom_id -> (prompt, sampling parameters)``;
2. results (or the data file): every usable completion is tokenized with the policy's tokenizer
   (batch encode), its log-probs aligned, and appended to a spill file of the shard its prompt
   belongs to (shard ``i`` holds prompts ``[i*P, (i+1)*P)``, as the other backends write them),
   whatever the order of the lines; failed, unmatched, duplicate and missing results are
   quarantined with their reason. A worker thread tokenizes and spills chunk ``k`` while the
   next chunk is parsed (both release the GIL), so two chunks are in memory at most;
3. per shard not yet committed: its spill is grouped per prompt, joined with its prompts'
   columns (tokenized on another thread during passes 1-2), and written like any generate shard.

Every run makes all three decisions again from the files (cheap next to tokenizing), so a run
resumed after a crash writes exactly the shards an uninterrupted run would have.
"""

from __future__ import annotations

import io
import json
import shutil
from collections.abc import Callable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import polars as pl

from grao_pipe.config import GenerateConfig, ImportConfig
from grao_pipe.errors import InputError
from grao_pipe.prompts import Prompt, PromptSet
from grao_pipe.schemas import tmp_name
from grao_pipe.storage import content_sha256

if TYPE_CHECKING:
    from grao_pipe.generation.tokenizer import PolicyTokenizer
    from grao_pipe.pipeline import Pipeline

CHUNK_BYTES = 32 << 20
BACKEND = "import"

# The fields of a batch request / result line that the import reads (others are ignored). A
# value of another type reads as null (and the line is quarantined if it needed it); ``error``
# is read as text, whatever its JSON type.
_MESSAGE = pl.Struct({"role": pl.String, "content": pl.String})
_REQUEST = {
    "custom_id": pl.String, "url": pl.String,
    "body": pl.Struct({"model": pl.String, "messages": pl.List(_MESSAGE), "prompt": pl.String, "n": pl.Int64,
                       "temperature": pl.Float64, "top_p": pl.Float64, "max_tokens": pl.Int64,
                       "max_completion_tokens": pl.Int64, "seed": pl.Int64}),
}
_LOGPROBS = pl.Struct({"content": pl.List(pl.Struct({"token": pl.String, "logprob": pl.Float64})),
                       "tokens": pl.List(pl.String), "token_logprobs": pl.List(pl.Float64)})


def result_schema(chat: bool = True, completions: bool = True) -> dict[str, Any]:
    """A result line's fields: chat choices carry ``message`` and ``logprobs.content``,
    ``/v1/completions`` choices ``text`` and ``logprobs.tokens/token_logprobs``. A batch of one
    endpoint only reads its own (fewer fields: faster parsing)."""
    lp = {"content": _LOGPROBS.to_schema()["content"]} if chat else {}
    if completions:
        lp |= {"tokens": pl.List(pl.String), "token_logprobs": pl.List(pl.Float64)}
    choice: dict[str, Any] = {"index": pl.Int64, "finish_reason": pl.String, "logprobs": pl.Struct(lp)}
    if chat:
        choice["message"] = pl.Struct({"content": pl.String})
    if completions:
        choice["text"] = pl.String
    body = pl.Struct({"model": pl.String, "choices": pl.List(pl.Struct(choice)), "error": pl.Struct({"message": pl.String})})
    return {"custom_id": pl.String, "response": pl.Struct({"status_code": pl.Int64, "body": body}), "error": pl.String}

# One usable completion, as spilled between passes 2 and 3 (``ids``, ``lp``, ``lp_state``: see
# import_rows.tokenize_completions; passes 2's frames carry ``lp_tokens``/``lp_values`` instead).
SPILL_COLUMNS = ["prompt_idx", "order", "choice", "response", "finish_reason", "ids", "lp", "lp_state", "model",
                 "temperature", "top_p", "max_new_tokens", "seed"]


@dataclass
class Quarantine:
    """Records left out, with their reason; ``items``: records read (requests + result lines
    without a request, or data rows), the denominator of ``data.max_quarantine_share``."""

    entries: list[dict[str, Any]] = field(default_factory=list)
    items: int = 0

    def add(self, file: str, line: int | None, reason: str, kind: str, custom_id: str | None = None,
            count: int = 1) -> None:
        e: dict[str, Any] = {"file": file, "line": line, "kind": kind, "reason": reason, "records": count}
        if custom_id is not None:
            e["custom_id"] = custom_id
        self.entries.append(e)

    @property
    def records(self) -> int:
        return sum(e["records"] for e in self.entries)

    def counts(self) -> dict[str, int]:
        out: dict[str, int] = {}
        for e in self.entries:
            out[e["kind"]] = out.get(e["kind"], 0) + e["records"]
        return dict(sorted(out.items()))


def import_inputs(p: Pipeline, ic: ImportConfig) -> dict[str, Any]:
    """What an import's key hashes besides the config: the files' contents (never their paths)
    and the smallest usable group (group objectives need 2 completions to compare)."""
    files = {}
    for role in ("requests", "results"):
        location = getattr(ic, role)
        if location is None:
            continue
        path = p.input(location)
        if not path.is_file():
            raise InputError(f"generate.import.{role}: {location} does not exist; check the path")
        files[role] = {"sha256": content_sha256(path)}
    return {**files, "min_group": min_group(p)}


def min_group(p: Pipeline) -> int:
    """The smallest group the configured objective learns from (what it declares)."""
    return p.cfg.train.configured.needs.min_group_size


# ---- reading files in chunks ----


def _chunks(path: Path, size: int = CHUNK_BYTES) -> Iterator[tuple[int, bytes]]:
    """(number of the chunk's first line, 1-based; whole lines of about ``size`` bytes)."""
    import gzip

    if not path.is_file():
        raise InputError(f"{path}: no such file; check generate.import.requests / generate.import.results")
    line = 1
    opener: Any = gzip.open if path.suffix == ".gz" else open
    with opener(path, "rb") as f:
        rest = b""
        while True:
            block = f.read(size)
            if not block:
                if rest.strip():
                    yield line, rest
                return
            block = rest + block
            cut = block.rfind(b"\n")
            if cut < 0:
                rest = block
                continue
            rest = block[cut + 1 :]
            yield line, block[: cut + 1]
            line += block.count(b"\n", 0, cut + 1)


def read_jsonl(path: Path, schema: dict[str, Any], label: str, q: Quarantine | None
               ) -> Iterator[pl.DataFrame]:
    """``path``'s lines as DataFrames of ``schema`` with a ``line`` column. Blank lines are
    skipped; a line that is not a JSON object (or not UTF-8) is quarantined."""
    for first, chunk in _chunks(path):
        lines = chunk.split(b"\n")
        if lines and lines[-1] == b"":
            lines.pop()
        clean = all(ln.strip() for ln in lines)
        if clean:
            try:
                df = pl.read_ndjson(io.BytesIO(chunk), schema=schema, ignore_errors=True)
            except Exception:
                df = None
            if df is not None and df.height == len(lines):
                yield df.with_columns(line=pl.int_range(first, first + df.height, dtype=pl.Int64))
                continue
        good, numbers = [], []
        for i, raw in enumerate(lines):
            if not raw.strip():
                continue
            try:
                value = json.loads(raw.decode("utf-8"))
                if not isinstance(value, dict):
                    raise ValueError("a line must be a JSON object")
            except UnicodeDecodeError as e:
                if q is not None:
                    q.add(label, first + i, f"not UTF-8 text (byte {e.start})", "bad_line")
                    q.items += 1
                continue
            except ValueError as e:
                if q is not None:
                    q.add(label, first + i, f"not a JSON object ({e})", "bad_line")
                    q.items += 1
                continue
            good.append(raw)
            numbers.append(first + i)
        if good:
            df = pl.read_ndjson(io.BytesIO(b"\n".join(good)), schema=schema, ignore_errors=True)
            yield df.with_columns(line=pl.Series(numbers, dtype=pl.Int64))


# ---- matching records to the prompt set ----


def _dialogue_key(messages: Any, text: Any) -> pl.Expr:
    """One string per record naming its dialogue (equal keys: equal dialogues)."""
    turns = messages.list.eval(pl.element().struct.field("role") + pl.lit("\x1f")
                               + pl.element().struct.field("content")).list.join("\x1e")
    return pl.when(messages.is_not_null()).then(pl.lit("m\x1d") + turns).otherwise(pl.lit("t\x1d") + text)


def _prompt_key(p: Prompt) -> str:
    if p.messages is not None:
        return "m\x1d" + "\x1e".join(f"{r}\x1f{c}" for r, c in p.messages)
    return "t\x1d" + (p.text or "")


class PromptIndex:
    """The prompt set, as a table to join records with: by id, or by dialogue."""

    def __init__(self, pset: PromptSet, tok: PolicyTokenizer, ic: ImportConfig):
        self.prompts = pset.prompts
        self.tok = tok
        ids = [p.id for p in self.prompts]
        self.by_id = ic.match == "id" or (ic.match == "auto" and any(i is not None for i in ids))
        if ic.match == "id" and not any(i is not None for i in ids):
            raise InputError("generate.import.match=id: the prompt set (data.prompts) has no 'id' column; "
                             "add one, or use generate.import.match=dialogue")
        self.table = pl.DataFrame({"prompt_idx": [p.index for p in self.prompts], "pid": ids,
                                   "pkey": [_prompt_key(p) for p in self.prompts]},
                                  schema={"prompt_idx": pl.Int64, "pid": pl.String, "pkey": pl.String})
        # One prompt per id and per dialogue (the first row): a join never copies a record into
        # two groups (two rows may share a dialogue with different references).
        self.ids = self.table.filter(pl.col("pid").is_not_null()).unique("pid", keep="first", maintain_order=True)
        self.dialogues = self.table.select("pkey", "prompt_idx").unique("pkey", keep="first", maintain_order=True)
        self._rendered: dict[str, int] | None = None
        self._render_cache: dict[str, str] = {}

    def rendered(self) -> dict[str, int]:
        """Rendered prompt text -> prompt index (built on the first record whose raw dialogue
        matches no prompt: rendering every prompt costs a chat template call each)."""
        if self._rendered is None:
            self._rendered = {}
            for p in self.prompts:
                self._rendered.setdefault(self.tok.render(p), p.index)
        return self._rendered

    def render_key(self, key: str) -> str:
        """The policy's rendering of a record's dialogue key (memoised)."""
        if key not in self._render_cache:
            kind, _, body = key.partition("\x1d")
            if kind == "m":
                msgs = tuple(tuple(t.split("\x1f", 1)) for t in body.split("\x1e")) if body else ()
                self._render_cache[key] = self.tok.render(Prompt(-1, None, msgs, ""))  # type: ignore[arg-type]
            else:
                self._render_cache[key] = body
        return self._render_cache[key]

    def match(self, df: pl.DataFrame, label: str, q: Quarantine, id_col: str | None) -> pl.DataFrame:
        """``df`` (with ``key``, ``line`` and ``id_col``) with ``prompt_idx``; unmatched rows are
        quarantined and dropped."""
        if self.by_id and id_col is not None:
            exact = df.join(self.ids, left_on=id_col, right_on="pid", how="left")
            # ``<prompt id>:<anything>`` names the same prompt (one request per sample).
            stem = exact.filter(pl.col("prompt_idx").is_null()).drop("prompt_idx", "pkey").with_columns(
                _stem=pl.col(id_col).str.replace(r":[^:]*$", ""))
            stem = stem.join(self.ids, left_on="_stem", right_on="pid",
                             how="left").drop("_stem")
            out = pl.concat([exact.filter(pl.col("prompt_idx").is_not_null()), stem], how="vertical_relaxed")
            bad_id = out.filter(pl.col("prompt_idx").is_null())
            for r in bad_id.select(id_col, "line").iter_rows():
                q.add(label, r[1], f"{id_col} {r[0]!r} names no prompt of the prompt set (by its 'id')",
                      "unmatched", custom_id=r[0])
            out = out.filter(pl.col("prompt_idx").is_not_null())
            # The id's prompt must be the record's dialogue (when the record has one).
            differ = out.filter(pl.col("key").is_not_null() & (pl.col("key") != pl.col("pkey")))
            wrong: list[int] = []
            for line, key, idx, rid in differ.select("line", "key", "prompt_idx", id_col).iter_rows():
                if self.rendered_index(key) != idx and self.render_key(key) != self.tok.render(self.prompts[idx]):
                    q.add(label, line, f"{id_col} {rid!r} names prompt row {idx}, whose dialogue differs from the "
                          "record's", "unmatched", custom_id=rid)
                    wrong.append(line)
            return out.filter(~pl.col("line").is_in(wrong)).drop("pkey")
        out = df.join(self.dialogues, left_on="key", right_on="pkey", how="left")
        miss = out.filter(pl.col("prompt_idx").is_null())
        if miss.height:
            found = {}
            for line, key in miss.select("line", "key").iter_rows():
                idx = self.rendered_index(key) if key is not None else None
                if idx is None:
                    cid = None if id_col is None else miss.filter(pl.col("line") == line)[id_col][0]
                    q.add(label, line, "its dialogue matches no prompt of the prompt set (data.prompts)", "unmatched",
                          custom_id=cid)
                else:
                    found[line] = idx
            fill = pl.DataFrame({"line": list(found), "_idx": list(found.values())},
                                schema={"line": pl.Int64, "_idx": pl.Int64})
            out = out.join(fill, on="line", how="left").with_columns(
                prompt_idx=pl.coalesce("prompt_idx", "_idx")).drop("_idx")
        return out.filter(pl.col("prompt_idx").is_not_null())

    def rendered_index(self, key: str) -> int | None:
        return self.rendered().get(self.render_key(key))


# ---- pass 1 and 2: records -> spilled completions ----


@dataclass
class Scan:
    """What passes 1 and 2 found: usable completions per prompt, models seen, the quarantine."""

    counts: np.ndarray  # usable completions per prompt index
    records: np.ndarray  # records (requests / rows) per prompt index
    models: set[str]
    q: Quarantine
    spill: Path
    completions: int = 0


class Spill:
    """Completions appended per shard, as Arrow IPC pieces under a temporary directory that
    ``StageDir.prepare`` removes if its writer died (a crash leaves nothing behind). ``prepare``
    (tokenizing) and the writes run on one worker thread, one chunk at a time, in order."""

    def __init__(self, root: Path, per: int, wanted: set[int], prepare: Callable[[pl.DataFrame], pl.DataFrame]):
        self.dir = root / tmp_name("import-spill")
        shutil.rmtree(self.dir, ignore_errors=True)
        self.dir.mkdir(parents=True)
        self.per, self.wanted, self.n, self.prepare = per, wanted, 0, prepare
        self._pool = ThreadPoolExecutor(1, thread_name_prefix="import-spill")
        self._pending: Future[None] | None = None

    def add(self, df: pl.DataFrame) -> None:
        if not df.height:
            return
        df = df.filter((pl.col("prompt_idx") // self.per).is_in(list(self.wanted)))
        if not df.height:
            return
        self.wait()  # one chunk in flight: memory stays at two chunks
        self._pending = self._pool.submit(self._write, df)

    def _write(self, df: pl.DataFrame) -> None:
        df = self.prepare(df).with_columns(_shard=pl.col("prompt_idx") // self.per)
        for (shard,), part in df.partition_by("_shard", as_dict=True).items():
            part.select(SPILL_COLUMNS).write_ipc(self.dir / f"{int(shard):05d}-{self.n:06d}.arrow")
            self.n += 1

    def wait(self) -> None:
        """Until the chunk in flight is spilled (its error, if any, raised here)."""
        pending, self._pending = self._pending, None
        if pending is not None:
            pending.result()

    def read(self, shard: int) -> pl.DataFrame | None:
        pieces = sorted(self.dir.glob(f"{shard:05d}-*.arrow"))
        return pl.concat([pl.read_ipc(p) for p in pieces]) if pieces else None

    def close(self) -> None:
        self._pool.shutdown(wait=True)  # a write in flight must not land in a removed directory
        shutil.rmtree(self.dir, ignore_errors=True)


def _text_or_json(value: str | None) -> str:
    if value is None:
        return "unknown error"
    try:
        v = json.loads(value)
    except ValueError:
        return value
    return str(v.get("message") or v) if isinstance(v, dict) else str(v)


def scan(p: Pipeline, gc: GenerateConfig, tok: PolicyTokenizer, spill: Spill) -> Scan:
    ic = gc.import_
    assert ic is not None
    n = len(p.prompt_set.prompts)
    sc = Scan(np.zeros(n, np.int64), np.zeros(n, np.int64), set(), Quarantine(), spill.dir)
    index = PromptIndex(p.prompt_set, tok, ic)
    if ic.format == "openai-batch":
        assert ic.requests is not None
        _scan_batch(p.input(ic.requests), p.input(ic.results), gc, index, spill, sc)
    else:
        _scan_rows(p.input(ic.results), gc, index, spill, sc)
    spill.wait()
    return sc


def _scan_batch(req_path: Path, res_path: Path, gc: GenerateConfig, index: PromptIndex, spill: Spill, sc: Scan) -> None:
    q = sc.q
    # Pass 1: the request index.
    parts = []
    urls: set[str] = set()
    for df in read_jsonl(req_path, _REQUEST, "requests", q):
        q.items += df.height
        body = pl.col("body")
        df = df.with_columns(key=_dialogue_key(body.struct.field("messages"), body.struct.field("prompt")))
        nokey = df.filter(pl.col("key").is_null() | pl.col("custom_id").is_null())
        for cid, line in nokey.select("custom_id", "line").iter_rows():
            q.add("requests", line, "no custom_id, or neither body.messages (a list of {role, content: text}) nor "
                  "body.prompt (text)", "unmatched", custom_id=cid)
        df = df.filter(pl.col("key").is_not_null() & pl.col("custom_id").is_not_null())
        df = index.match(df, "requests", q, "custom_id")
        urls.update("/chat/completions" if u and u.rstrip("/").endswith("/chat/completions") else "/completions"
                    for u in df["url"].unique().to_list())
        parts.append(df.select(
            "custom_id", "line", "prompt_idx",
            temperature=body.struct.field("temperature").fill_null(1.0),  # the API's defaults
            top_p=body.struct.field("top_p").fill_null(1.0),
            max_new_tokens=pl.coalesce(body.struct.field("max_completion_tokens"), body.struct.field("max_tokens"),
                                       pl.lit(gc.max_new_tokens)),
            seed=body.struct.field("seed").fill_null(-1),
        ))
    reqs = pl.concat(parts) if parts else pl.DataFrame(schema={"custom_id": pl.String, "line": pl.Int64})
    chat, completions = ("/chat/completions" in urls, bool(urls - {"/chat/completions"})) if urls else (True, True)
    dup = reqs.filter(pl.col("custom_id").is_duplicated() & (pl.col("line") != pl.col("line").min().over("custom_id")))
    for cid, line in dup.select("custom_id", "line").iter_rows():
        q.add("requests", line, f"duplicate custom_id {cid!r} (the batch API needs them unique)", "duplicate", custom_id=cid)
    reqs = reqs.filter(~pl.col("line").is_in(dup["line"].implode())).with_columns(req=pl.int_range(pl.len()))
    if reqs.height:
        np.add.at(sc.records, reqs["prompt_idx"].to_numpy(), 1)
    seen = np.zeros(reqs.height, bool)
    # Pass 2: results, in any order.
    schema = result_schema(chat, completions)
    for df in read_jsonl(res_path, schema, "results", q):
        df = df.join(reqs.select("custom_id", "req", "prompt_idx", "temperature", "top_p", "max_new_tokens", "seed"),
                     on="custom_id", how="left")
        orphan = df.filter(pl.col("req").is_null())
        q.items += orphan.height
        for cid, line in orphan.select("custom_id", "line").iter_rows():
            q.add("results", line, f"custom_id {cid!r} is in no usable request of the request file", "orphan", custom_id=cid)
        df = df.filter(pl.col("req").is_not_null())
        # Duplicates: a request answered twice (in this chunk or an earlier one) keeps its first.
        first_here = pl.col("line") == pl.col("line").min().over("req")
        reqs_np = df["req"].to_numpy()
        earlier = seen[reqs_np]
        df = df.with_columns(_dup=pl.Series(earlier) | ~first_here)
        for cid, line in df.filter("_dup").select("custom_id", "line").iter_rows():
            q.add("results", line, f"a second result for custom_id {cid!r} (the first is kept)", "duplicate",
                  custom_id=cid, count=0)
        df = df.filter(~pl.col("_dup")).drop("_dup")
        seen[df["req"].to_numpy()] = True
        resp = pl.col("response")
        status = resp.struct.field("status_code")
        body = resp.struct.field("body")
        failed = df.filter(pl.col("error").is_not_null() | resp.is_null() | (status != 200)
                           | body.struct.field("choices").is_null())
        for cid, line, err, st, berr in failed.select(
                "custom_id", "line", "error", status.alias("st"),
                body.struct.field("error").struct.field("message").alias("be")).iter_rows():
            why = (f"error: {_text_or_json(err)}" if err is not None else f"status {st}: {berr}" if st not in (None, 200)
                   else "no response body with choices")
            q.add("results", line, f"request failed ({why})", "failed", custom_id=cid)
        df = df.filter(~pl.col("line").is_in(failed["line"].implode()))
        models = df.select(body.struct.field("model").alias("m"))["m"].drop_nulls().unique().to_list()
        sc.models.update(models)
        ch = df.select("req", "line", "prompt_idx", "temperature", "top_p", "max_new_tokens", "seed", "custom_id",
                       model=body.struct.field("model"), c=body.struct.field("choices")).explode("c")
        c = pl.col("c")
        lp = c.struct.field("logprobs")
        content = lp.struct.field("content")
        ch = ch.filter(c.is_not_null()).select(
            "prompt_idx", "line", "custom_id", "model", "temperature", "top_p", "max_new_tokens", "seed",
            order=pl.col("req"), choice=pl.coalesce(c.struct.field("index"), pl.int_range(pl.len()).over("req")),
            response=pl.coalesce(([c.struct.field("message").struct.field("content")] if chat else [])
                                 + ([c.struct.field("text")] if completions else [])),
            finish_reason=c.struct.field("finish_reason").fill_null("stop"),
            lp_tokens=pl.coalesce(([content.list.eval(pl.element().struct.field("token"))] if chat else [])
                                  + ([lp.struct.field("tokens")] if completions else [])),
            lp_values=pl.coalesce(([content.list.eval(pl.element().struct.field("logprob"))] if chat else [])
                                  + ([lp.struct.field("token_logprobs")] if completions else [])),
        )
        _keep(ch, "results", spill, sc)
    for cid, line in reqs.filter(~pl.Series(seen)).select("custom_id", "line").iter_rows():
        q.add("requests", line, f"no result line for custom_id {cid!r}", "missing", custom_id=cid)


def _keep(ch: pl.DataFrame, label: str, spill: Spill, sc: Scan) -> None:
    """Completions without text are quarantined; the others are counted and spilled."""
    notext = ch.filter(pl.col("response").is_null())
    for line, cid, choice in notext.select("line", "custom_id", "choice").iter_rows():
        sc.q.add(label, line, f"choice {choice} has no text content (a tool call, or a refusal)", "no_text",
                 custom_id=cid, count=0)
    ch = ch.filter(pl.col("response").is_not_null())
    if ch.height:
        np.add.at(sc.counts, ch["prompt_idx"].to_numpy(), 1)
        sc.completions += ch.height
    spill.add(ch.with_columns(pl.col("temperature").cast(pl.Float32), pl.col("top_p").cast(pl.Float32),
                              pl.col("max_new_tokens").cast(pl.Int32), pl.col("seed").cast(pl.Int64),
                              pl.col("lp_values").cast(pl.List(pl.Float64)), pl.col("model").cast(pl.String)))


def _content(col: pl.Expr, dtype: pl.DataType) -> pl.Expr:
    """A TRL value as text: a string, or a conversational list of {role, content} messages (the
    completion's: its single message's content)."""
    if isinstance(dtype, pl.List):
        return pl.when(col.list.len() == 1).then(col.list.first().struct.field("content"))
    return col.cast(pl.String)


def _scan_rows(path: Path, gc: GenerateConfig, index: PromptIndex, spill: Spill, sc: Scan) -> None:
    ic = gc.import_
    assert ic is not None
    cols = ic.columns
    label = path.name
    for df in _row_frames(path, ic, sc.q):
        sc.q.items += df.height
        names = df.columns
        for need in (cols.prompt, cols.completion):
            if need not in names:
                raise InputError(f"{path}: no column {need!r} (columns: {', '.join(n for n in names if n != 'line')}); "
                                 f"set generate.import.columns.{'prompt' if need == cols.prompt else 'completion'}")
        pdt = df.schema[cols.prompt]
        prompt = pl.col(cols.prompt)
        if isinstance(pdt, pl.List):
            key = _dialogue_key(prompt.cast(pl.List(_MESSAGE), strict=False), pl.lit(None, pl.String))
        else:
            key = pl.lit("t\x1d") + prompt.cast(pl.String)
        id_col = cols.id if cols.id in names else None
        rid = pl.col(id_col).cast(pl.String) if id_col else pl.lit(None, pl.String)
        df = df.with_columns(key=key, _id=rid)
        bad = df.filter(pl.col("key").is_null())
        for (line,) in bad.select("line").iter_rows():
            sc.q.add(label, line, f"column {cols.prompt!r} is neither text nor a list of {{role, content}}", "unmatched")
        df = index.match(df.filter(pl.col("key").is_not_null()), label, sc.q, "_id" if id_col else None)
        if df.height:
            np.add.at(sc.records, df["prompt_idx"].to_numpy(), 1)
        lp_dt = df.schema.get(cols.logprobs)
        lp_tokens: pl.Expr = pl.lit(None, pl.List(pl.String))
        lp_values: pl.Expr = pl.lit(None, pl.List(pl.Float64))
        if isinstance(lp_dt, pl.List):
            lp_values = pl.col(cols.logprobs).cast(pl.List(pl.Float64), strict=False)
        elif isinstance(lp_dt, pl.Struct) and "content" in [f.name for f in lp_dt.fields]:
            content = pl.col(cols.logprobs).struct.field("content")
            lp_tokens = content.list.eval(pl.element().struct.field("token"))
            lp_values = content.list.eval(pl.element().struct.field("logprob"))
        model = pl.col(cols.model).cast(pl.String) if cols.model in names else pl.lit(None, pl.String)
        fin = pl.col(cols.finish_reason).cast(pl.String).fill_null("stop") if cols.finish_reason in names \
            else pl.lit("stop")
        ch = df.select(
            "prompt_idx", "line", custom_id="_id", model=model, temperature=pl.lit(gc.temperature),
            top_p=pl.lit(gc.top_p), max_new_tokens=pl.lit(gc.max_new_tokens), seed=pl.lit(-1),
            order=pl.col("line"), choice=pl.lit(0), response=_content(pl.col(cols.completion), df.schema[cols.completion]),
            finish_reason=fin, lp_tokens=lp_tokens, lp_values=lp_values)
        sc.models.update(ch["model"].drop_nulls().unique().to_list())
        _keep(ch, label, spill, sc)


def _row_frames(path: Path, ic: ImportConfig, q: Quarantine) -> Iterator[pl.DataFrame]:
    if ic.format == "parquet":
        import pyarrow.parquet as pq

        try:
            f = pq.ParquetFile(path)
        except Exception as e:
            raise InputError(f"{path}: not a readable Parquet file ({e}); check generate.import.results") from None
        start = 1
        for batch in f.iter_batches(batch_size=65536):
            df = pl.from_arrow(batch)
            assert isinstance(df, pl.DataFrame)
            yield df.with_columns(line=pl.int_range(start, start + df.height, dtype=pl.Int64))
            start += df.height
        return
    schema = _sniff(path, ic)
    yield from read_jsonl(path, schema, path.name, q)


def _sniff(path: Path, ic: ImportConfig) -> dict[str, Any]:
    """The Polars schema of a jsonl file's columns, from its first row that parses (standard
    rows have text, conversational rows lists of messages)."""
    cols = ic.columns
    for _, chunk in _chunks(path, 1 << 20):
        for raw in chunk.split(b"\n"):
            try:
                row = json.loads(raw)
            except ValueError:
                continue
            if not isinstance(row, dict):
                continue
            for key, name in (("prompt", cols.prompt), ("completion", cols.completion)):
                if name not in row:
                    raise InputError(f"{path}: no column {name!r} in its first row (columns: {', '.join(row)}); "
                                     f"set generate.import.columns.{key}")
            schema: dict[str, Any] = {}
            for name in (cols.prompt, cols.completion):
                schema[name] = pl.List(_MESSAGE) if isinstance(row.get(name), list) else pl.String
            schema[cols.id] = pl.String
            schema[cols.finish_reason] = pl.String
            schema[cols.model] = pl.String
            lp = row.get(cols.logprobs)
            schema[cols.logprobs] = pl.List(pl.Float64) if isinstance(lp, list) else _LOGPROBS
            return schema
    raise InputError(f"{path}: no JSON object in the file; check generate.import.results")


# ---- quarantine of whole groups, and the share ----


def finish_quarantine(sc: Scan, min_size: int, share: float, prompts: list[Prompt], results: str) -> set[int]:
    """Quarantine groups with fewer than ``min_size`` usable completions (their records count);
    refuse the import past ``share``. Returns the prompt indices whose group is dropped."""
    small = np.nonzero((sc.counts > 0) & (sc.counts < min_size))[0]
    for i in small:
        sc.q.add("prompts", prompts[i].index, f"prompt row {prompts[i].index}: only {sc.counts[i]} usable completion(s); "
                 f"a group objective needs {min_size}", "small_group", count=int(sc.records[i]))
    read = max(sc.q.items, 1)
    if sc.q.records > share * read or sc.completions - int(sc.counts[small].sum()) == 0:
        first = "; ".join(f"{e['file']}:{e['line']}: {e['reason']}" for e in sc.q.entries[:3])
        raise InputError(f"{results}: {sc.q.records} of {sc.q.items} records are unusable ({first}), over "
                         f"data.max_quarantine_share={share:g}; check the files, data.prompts and "
                         "generate.import.match, or raise the share")
    return {int(i) for i in small}


def quarantine_lines(q: Quarantine) -> str:
    return "".join(json.dumps({k: v for k, v in e.items() if k != "records"}) + "\n" for e in q.entries)

