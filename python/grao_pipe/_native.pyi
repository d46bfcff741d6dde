"""Type stub of the Rust extension (rust/src/python.rs)."""

from collections.abc import Iterable
from typing import Any, TypedDict

class ArrowArray:
    """An Arrow array exported by the extension; ``pyarrow.array(x)`` imports it zero-copy."""

    def __arrow_c_array__(self, requested_schema: Any = None) -> tuple[Any, Any]: ...

class AdvantageOutput(TypedDict):
    advantage: ArrowArray
    reference_advantage: ArrowArray
    degenerate: ArrowArray
    reward_valid: ArrowArray
    n_rows: int
    n_groups: int
    n_degenerate_groups: int
    n_invalid_rewards: int

def group_advantages(
    group_ids: Any,
    rewards: Any,
    *,
    mode: str = "reference_in_group",
    eps: float = 1e-6,
    std_floor: float = 1e-6,
    min_valid: int = 2,
) -> AdvantageOutput: ...
def pack_bfd(lengths: Any, budget: int) -> tuple[ArrowArray, int]: ...
def pack_groups_bfd(lengths: Any, group_ids: Any, budget: int) -> tuple[ArrowArray, int]: ...
def fit_rows(lengths: Any, cap: int) -> tuple[ArrowArray, int, int]: ...
def arith_rewards(prompts: Any, responses: Any, references: Any) -> ArrowArray: ...
def splice_parquet(
    left: Any,
    right: Any,
    key_value_metadata: list[tuple[str, str]],
    path: str,
    created_by: str | None = None,
    durable: bool = True,
) -> str: ...

class NdArray:
    """A C-contiguous int64/float32 array allocated by the extension; ``numpy.asarray(x)``
    views it without a copy (``__array_interface__``)."""

    @property
    def __array_interface__(self) -> dict[str, Any]: ...
    def __len__(self) -> int: ...

class MicroBatcher:
    """The learner's micro-batches from tables of score rows (see rust/src/python.rs)."""

    def __init__(
        self,
        tables: Iterable[Any],
        *,
        max_seq_len: int | None = None,
        overlong: str = "truncate",
        names: list[str] | None = None,
        rejected: bool = False,
    ) -> None: ...
    def __len__(self) -> int: ...
    def build(
        self,
        spans: Any,
        *,
        pad_id: int,
        micro_batch_tokens: int = 0,
        pack_tokens: int = 0,
        fit_rows: bool = True,
    ) -> dict[str, Any]: ...
