"""Stable content hashes of JSON-able values (cache keys, fingerprints)."""

from __future__ import annotations

import hashlib
import json
from typing import Any


def canonical_json(obj: Any) -> str:
    return json.dumps(obj, sort_keys=True, separators=(",", ":"), default=str)


def digest(obj: Any) -> str:
    """Stable content hash of a JSON-able object."""
    return hashlib.sha256(canonical_json(obj).encode()).hexdigest()
