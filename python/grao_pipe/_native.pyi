"""Type stub of the Rust extension (rust/src/lib.rs registers it; each binding lives beside
its kernel: rust/src/advantages/py.rs, packing/py.rs, microbatch/py.rs, splice/py.rs,
rules/py.rs). tests/unit/test_native_schema.py checks this stub against the extension."""

from collections.abc import Iterable
from typing import Any, TypedDict

from grao_pipe.enums import AdvantageMode, Overlong

__version__: str
# The config's Literals (grao_pipe.enums) equal these.
ADVANTAGE_MODES: tuple[AdvantageMode, ...]
OVERLONG_MODES: tuple[Overlong, ...]
# class name -> ((field, dtype, dims), ...) of the classes a micro-batch crosses in.
MICRO_BATCH_SCHEMA: dict[str, tuple[tuple[str, str, tuple[str, ...]], ...]]

class ArrowArray:
    """An Arrow array exported by the extension; ``pyarrow.array(x)`` imports it zero-copy."""

    def __arrow_c_array__(self, requested_schema: Any = None) -> tuple[Any, Any]: ...
    def __len__(self) -> int: ...

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
    mode: AdvantageMode = "reference_in_group",
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
    """A C-contiguous int64/float32/bool array allocated by the extension; ``numpy.asarray(x)``
    views it without a copy (``__array_interface__``)."""

    @property
    def __array_interface__(self) -> dict[str, Any]: ...
    def __len__(self) -> int: ...

# The classes a micro-batch crosses in: fields as in MICRO_BATCH_SCHEMA (an NdArray's dtype and
# dims there; the letters after a name's last "_" are its dimensions).

class PaddedArrays:
    """learner/data.py ``Batch``, same field names: N sequences of T tokens, B groups of G."""

    @property
    def input_ids_NT(self) -> NdArray: ...
    @property
    def attention_mask_NT(self) -> NdArray: ...
    @property
    def loss_mask_NT(self) -> NdArray: ...
    @property
    def behaviour_NT(self) -> NdArray: ...
    @property
    def ref_NT(self) -> NdArray: ...
    @property
    def adv_BG(self) -> NdArray: ...
    @property
    def reward_BG(self) -> NdArray: ...
    @property
    def ref_adv_B(self) -> NdArray: ...
    @property
    def mask_BG(self) -> NdArray: ...
    @property
    def n_samples(self) -> int: ...
    @property
    def real_tokens(self) -> int: ...
    @property
    def padded_tokens(self) -> int: ...
    @property
    def behaviour_known_N(self) -> NdArray: ...
    @property
    def reference_fits_B(self) -> NdArray: ...
    @property
    def rejected_mask_B(self) -> NdArray: ...

class PackedArrays:
    """learner/data.py ``Packed`` (its index maps without the ``_K``): R rows of T tokens."""

    @property
    def input_ids_RT(self) -> NdArray: ...
    @property
    def position_ids_RT(self) -> NdArray: ...
    @property
    def segment_RT(self) -> NdArray: ...
    @property
    def src_row_K(self) -> NdArray: ...
    @property
    def src_col_K(self) -> NdArray: ...
    @property
    def dst_seq_K(self) -> NdArray: ...
    @property
    def dst_pos_K(self) -> NdArray: ...
    @property
    def real_tokens(self) -> int: ...
    @property
    def padded_tokens(self) -> int: ...

class MicroBatchArrays:
    @property
    def padded(self) -> PaddedArrays: ...
    @property
    def packed(self) -> PackedArrays | None: ...

class StepArrays:
    """``MicroBatcher.build``: the micro-batches, and per group of the S spans the sequences
    cut to max_seq_len (``truncated_S``) or left out (``skipped_S``)."""

    @property
    def micro_batches(self) -> list[MicroBatchArrays]: ...
    @property
    def truncated_S(self) -> NdArray: ...
    @property
    def skipped_S(self) -> NdArray: ...

class MicroBatcher:
    """The learner's micro-batches from tables of score rows (rust/src/microbatch/py.rs)."""

    def __init__(
        self,
        tables: Iterable[Any],
        *,
        max_seq_len: int | None = None,
        overlong: Overlong = "truncate",
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
    ) -> StepArrays: ...
