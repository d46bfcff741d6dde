"""Choices the config and the Rust core (``grao_pipe._native``) both name.

Each ``Literal`` here is the config's type for the setting and equals a tuple the extension
exports (``_native.ADVANTAGE_MODES``, ``_native.OVERLONG_MODES``), which
tests/unit/test_native_schema.py asserts: a mode added on one side only fails that test.
Pure typing: importing this module imports neither pydantic nor the extension.
"""

from __future__ import annotations

from typing import Literal, NoReturn

# score.advantage.mode: rust/src/advantages.rs `Mode`.
AdvantageMode = Literal["reference_in_group", "samples_only", "leave_one_out", "rank"]
# train.overlong (sequences longer than train.max_seq_len): rust/src/microbatch.rs `Overlong`.
Overlong = Literal["truncate", "skip"]


def unhandled(choice: NoReturn) -> NoReturn:
    """The ``else`` of a dispatch over one of these Literals: mypy fails where a choice has no
    branch (``typing.assert_never``, which Python 3.10 lacks)."""
    raise AssertionError(f"unhandled choice {choice!r}")
