"""The data contract (v2): Arrow schemas, file names and metadata keys.

This module is the only place that knows what a stage writes; stages talk through it and
``grao_pipe.storage``. One row per sample; the reference answer travels with its group.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Callable

import pyarrow as pa

SCHEMA_VERSION = 2
META_VERSION = b"grao_pipe.schema_version"
META_STAGE = b"grao_pipe.stage"

# Sidecars start with "_" so that pyarrow.dataset, Spark, DuckDB and polars read a stage
# directory as a plain Parquet dataset (they skip "_" and "." files). Older releases wrote the
# names without "_": still read, and renamed when a stage directory is opened for writing.
MANIFEST_NAME = "_manifest.json"
SUCCESS_NAME = "_SUCCESS"  # written after the manifest: the Hadoop/Spark marker of a finished output
QUARANTINE_NAME = "_quarantine.jsonl"
LEGACY_NAMES = {"manifest.json": MANIFEST_NAME, "quarantine.jsonl": QUARANTINE_NAME}
SHARD_SUFFIX = ".parquet"

# Upgrades applied when an older shard is read: MIGRATIONS[v](table, stage) turns a version-v
# table into version v+1 (add a column with its default, rename, recompute). Each bump of
# SCHEMA_VERSION adds one entry, so datasets other teams made with older releases stay readable
# without rewriting them (their checksums, and so every cache key built on them, stay valid).
Migration = Callable[[pa.Table, str], pa.Table]
TMP_PREFIX = ".tmp-"


def tmp_name(name: str) -> str:
    """A writer's temporary for ``name``: ``.tmp-<name>.<thread>.<pid>``, unique per thread (two
    nodes of a test, or two scorer threads, share a pid) with the pid last, for liveness checks."""
    return f"{TMP_PREFIX}{name}.{threading.get_native_id()}.{os.getpid()}"

MESSAGE = pa.struct([("role", pa.string()), ("content", pa.string())])

GENERATE_FIELDS: list[pa.Field] = [
    pa.field("group_id", pa.string(), nullable=False),  # stable hash of prompt + reference
    pa.field("sample_idx", pa.int32(), nullable=False),
    pa.field("prompt_idx", pa.int64(), nullable=False),  # row of the prompt set
    pa.field("prompt", pa.string(), nullable=False),  # text fed to the model (template applied)
    pa.field("prompt_messages", pa.list_(MESSAGE)),  # chat form when the source had one
    pa.field("reference", pa.string(), nullable=False),
    # The source dataset's rejected answer for this prompt (HH's "rejected"), when it has one:
    # not a sample. With its token ids (+ EOS), for DPO on the dataset's pairs.
    pa.field("reference_rejected", pa.string()),
    pa.field("reference_rejected_token_ids", pa.list_(pa.int32())),
    pa.field("response", pa.string(), nullable=False),
    pa.field("prompt_token_ids", pa.list_(pa.int32()), nullable=False),
    pa.field("response_token_ids", pa.list_(pa.int32()), nullable=False),
    pa.field("reference_token_ids", pa.list_(pa.int32()), nullable=False),
    pa.field("behaviour_logprobs", pa.list_(pa.float32())),  # null: the backend returned none
    pa.field("finish_reason", pa.string(), nullable=False),  # "stop" | "length"
    pa.field("temperature", pa.float32(), nullable=False),
    pa.field("top_p", pa.float32(), nullable=False),
    pa.field("max_new_tokens", pa.int32(), nullable=False),
    pa.field("seed", pa.int64(), nullable=False),  # seed of the sampler call that drew the row
    pa.field("backend", pa.string(), nullable=False),
    pa.field("policy_digest", pa.string(), nullable=False),  # weights + tokenizer + template
]

SCORE_FIELDS: list[pa.Field] = [
    pa.field("reward", pa.float64()),  # R(o_i, y), weighted sum of scorers; null = invalid
    pa.field("reward_valid", pa.bool_(), nullable=False),
    pa.field("advantage", pa.float64(), nullable=False),  # Â_i
    pa.field("reference_advantage", pa.float64(), nullable=False),  # Â_y of the row's group
    pa.field("degenerate", pa.bool_(), nullable=False),
    pa.field("keep", pa.bool_(), nullable=False),  # False: the learner skips the row
    # Per-token log-probs under the frozen reference model (score.reference_logprobs), else null.
    pa.field("ref_logprobs", pa.list_(pa.float32())),
    pa.field("ref_reference_logprobs", pa.list_(pa.float32())),
    pa.field("ref_reference_rejected_logprobs", pa.list_(pa.float32())),  # of reference_rejected, if any
]


def _with_meta(fields: list[pa.Field], stage: str) -> pa.Schema:
    return pa.schema(fields, metadata={META_VERSION: str(SCHEMA_VERSION).encode(), META_STAGE: stage.encode()})


# Raw rewards of one scorer for one generate shard, row for row, so that re-scoring with other
# weights or advantage settings never calls the scorer again. The generate shard's sha256 is in
# the file's metadata (META_SOURCE): a cache file is used only for the exact shard it scored.
REWARDS_FIELDS: list[pa.Field] = [
    pa.field("reward", pa.float64()),  # null = invalid (scorer error, unparseable judge answer)
]
# A judge scorer's rewards file also keeps, row for row, what the judge said, so that a bad
# parse rate or a position bias can be read with any Parquet tool. Score shards carry them as
# ``judge_<scorer name>_<field>`` (beside the ``reward_<scorer name>`` column of every scorer).
JUDGE_DETAIL_FIELDS: list[pa.Field] = [
    pa.field("answer", pa.string()),  # the judge's raw text, the response shown as Text 1
    pa.field("verdict", pa.int8()),  # parsed: +1 Text 1 better, 0 tie, -1 Text 2 better; null = unparseable
    pa.field("answer_swapped", pa.string()),  # both_orders: the raw text with the response as Text 2, else null
    pa.field("verdict_swapped", pa.int8()),  # parsed as above (+1: Text 1, here the reference, better)
]


def judge_column(scorer: str, field: str) -> str:
    """The score-shard column of judge ``scorer``'s detail ``field`` (JUDGE_DETAIL_FIELDS)."""
    return f"judge_{scorer}_{field}"


META_SOURCE = b"grao_pipe.source_sha256"
# The directory (``<stage>/<key[:16]>``) a shard was written for: a resumed run adopts only its own.
META_KEY = b"grao_pipe.key"
META_STATS = b"grao_pipe.stats"  # a shard's stats (JSON), so a resumed run reads only its footer
META_ERRORS = b"grao_pipe.scorer_errors"
META_PROMPTS_SKIPPED = b"grao_pipe.prompts_skipped_overlong"
META_PROMPTS_TRUNCATED = b"grao_pipe.prompts_truncated"
META_UNPARSEABLE = b"grao_pipe.unparseable"

GENERATE_SCHEMA = _with_meta(GENERATE_FIELDS, "generate")
SCORE_SCHEMA = _with_meta(GENERATE_FIELDS + SCORE_FIELDS, "score")

REWARDS_SCHEMA = _with_meta(REWARDS_FIELDS, "rewards")

SCHEMAS = {"generate": GENERATE_SCHEMA, "score": SCORE_SCHEMA, "rewards": REWARDS_SCHEMA}


def _v1_to_v2(table: pa.Table, stage: str) -> pa.Table:
    """v2 renamed ``rejected`` (read by TRL users as a sampled answer) to ``reference_rejected``
    and added its token ids and (score) its reference-model log-probs (unknown for v1: null)."""
    if "rejected" not in table.column_names:
        return table
    i = table.column_names.index("rejected")
    table = table.rename_columns([*table.column_names[:i], "reference_rejected", *table.column_names[i + 1:]])
    table = table.add_column(i + 1, pa.field("reference_rejected_token_ids", pa.list_(pa.int32())),
                             pa.nulls(table.num_rows, pa.list_(pa.int32())))
    if stage == "score" and "ref_reference_rejected_logprobs" not in table.column_names:
        j = table.column_names.index("ref_reference_logprobs") + 1
        table = table.add_column(j, pa.field("ref_reference_rejected_logprobs", pa.list_(pa.float32())),
                                 pa.nulls(table.num_rows, pa.list_(pa.float32())))
    return table


# Upgrades of older shards on read, one per version step (see the comment above MESSAGE).
MIGRATIONS: dict[int, Migration] = {1: _v1_to_v2}



def shard_name(index: int, total: int) -> str:
    return f"shard-{index:05d}-of-{total:05d}{SHARD_SUFFIX}"
