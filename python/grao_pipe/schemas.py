"""The data contract (v1): Arrow schemas, file names and metadata keys.

This module is the only place that knows what a stage writes; stages talk through it and
``grao_pipe.store``. One row per sample; the reference answer travels with its group.
"""

from __future__ import annotations

from collections.abc import Callable

import pyarrow as pa

SCHEMA_VERSION = 1
META_VERSION = b"grao_pipe.schema_version"
META_STAGE = b"grao_pipe.stage"

MANIFEST_NAME = "manifest.json"
SHARD_SUFFIX = ".parquet"

# Upgrades applied when an older shard is read: MIGRATIONS[v](table, stage) turns a version-v
# table into version v+1 (add a column with its default, rename, recompute). Each bump of
# SCHEMA_VERSION adds one entry, so datasets other teams made with older releases stay readable
# without rewriting them (their checksums, and so every cache key built on them, stay valid).
# v1 is the first published contract: there is nothing to migrate from yet.
Migration = Callable[[pa.Table, str], pa.Table]
MIGRATIONS: dict[int, Migration] = {}
TMP_PREFIX = ".tmp-"

MESSAGE = pa.struct([("role", pa.string()), ("content", pa.string())])

GENERATE_FIELDS: list[pa.Field] = [
    pa.field("group_id", pa.string(), nullable=False),  # stable hash of prompt + reference
    pa.field("sample_idx", pa.int32(), nullable=False),
    pa.field("prompt_idx", pa.int64(), nullable=False),  # row of the prompt set
    pa.field("prompt", pa.string(), nullable=False),  # text fed to the model (template applied)
    pa.field("prompt_messages", pa.list_(MESSAGE)),  # chat form when the source had one
    pa.field("reference", pa.string(), nullable=False),
    pa.field("rejected", pa.string()),  # a dataset's rejected answer (DPO), when present
    pa.field("response", pa.string(), nullable=False),
    pa.field("prompt_token_ids", pa.list_(pa.int32()), nullable=False),
    pa.field("response_token_ids", pa.list_(pa.int32()), nullable=False),
    pa.field("reference_token_ids", pa.list_(pa.int32()), nullable=False),
    pa.field("reference_rejected_token_ids", pa.list_(pa.int32())),  # `rejected` + EOS; null: none
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
    pa.field("ref_reference_rejected_logprobs", pa.list_(pa.float32())),  # of `rejected`, when present
]


def _with_meta(fields: list[pa.Field], stage: str) -> pa.Schema:
    return pa.schema(fields, metadata={META_VERSION: str(SCHEMA_VERSION).encode(), META_STAGE: stage.encode()})


# Raw rewards of one scorer, cached per (sample, scorer) so that re-scoring with other weights
# or advantage settings never calls the scorer again.
REWARDS_FIELDS: list[pa.Field] = [
    pa.field("group_id", pa.string(), nullable=False),
    pa.field("sample_idx", pa.int32(), nullable=False),
    pa.field("reward", pa.float64()),  # null = invalid (scorer error, unparseable judge answer)
]
META_ERRORS = b"grao_pipe.scorer_errors"
META_PROMPTS_SKIPPED = b"grao_pipe.prompts_skipped_overlong"
META_PROMPTS_TRUNCATED = b"grao_pipe.prompts_truncated"
META_UNPARSEABLE = b"grao_pipe.unparseable"

GENERATE_SCHEMA = _with_meta(GENERATE_FIELDS, "generate")
SCORE_SCHEMA = _with_meta(GENERATE_FIELDS + SCORE_FIELDS, "score")

REWARDS_SCHEMA = _with_meta(REWARDS_FIELDS, "rewards")

SCHEMAS = {"generate": GENERATE_SCHEMA, "score": SCORE_SCHEMA, "rewards": REWARDS_SCHEMA}


QUARANTINE_NAME = "quarantine.jsonl"


def shard_name(index: int, total: int) -> str:
    return f"shard-{index:05d}-of-{total:05d}{SHARD_SUFFIX}"
