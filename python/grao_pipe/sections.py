"""The building block of the typed config: a frozen pydantic section that rejects unknown keys,
and what of a section enters a cache key.

Its own module (not ``config``) so that plug-ins owning a config section (the training
objectives) can define it without importing the whole config, which is built from them.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Annotated, Any, Literal, TypeVar

from pydantic import BaseModel, ConfigDict

T = TypeVar("T")


@dataclass(frozen=True)
class Unkeyed:
    """Field marker: the value stays out of every cache key.

    ``operational``: it says where or how a run is launched, reached or watched, not what it
    computes (a server URL, concurrency, the node rank). ``content``: it is a path whose file
    contents enter the key instead (a model directory, a prompt file), so the same files under
    another path or URL share the cache, and a file replaced in place changes the key.
    """

    why: Literal["operational", "content"]


@dataclass(frozen=True)
class KeyedWhenSet:
    """Field marker: a ``None`` value stays out of cache keys, so adding an optional section
    leaves the keys of configs that do not set it (every existing cache) unchanged."""


Operational = Annotated[T, Unkeyed("operational")]
ByContent = Annotated[T, Unkeyed("content")]


class Section(BaseModel):
    # inf/NaN (YAML's .inf, .nan) are refused at load: they pass every bound (lr > 0) and end
    # as a learner failure much later.
    model_config = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False)

    @classmethod
    def unkeyed_fields(cls) -> dict[str, str]:
        """Field name -> why it is kept out of cache keys."""
        return {name: m.why for name, f in cls.model_fields.items() for m in f.metadata if isinstance(m, Unkeyed)}

    def inactive_fields(self) -> frozenset[str]:
        """Sub-sections that this value does not use (e.g. the sections of objectives other than
        the configured one): left out of cache keys, so changing them retrains nothing."""
        return frozenset()


def keyed(value: Any) -> Any:
    """What of a config value enters a cache key: its JSON dump without ``Unkeyed`` fields and
    inactive sub-sections, at any depth (sections inside sections, scorer lists)."""
    if isinstance(value, Section):
        fields = type(value).model_fields
        skip = value.unkeyed_fields().keys() | value.inactive_fields()
        skip |= {name for name, f in fields.items()
                 if getattr(value, name) is None and any(isinstance(m, KeyedWhenSet) for m in f.metadata)}
        # A field named after a Python keyword (``import_``) is keyed by its config name (alias).
        return {(f.alias or name): keyed(getattr(value, name)) for name, f in fields.items() if name not in skip}
    if isinstance(value, (tuple, list)):
        return [keyed(v) for v in value]
    return value.model_dump(mode="json") if isinstance(value, BaseModel) else value
