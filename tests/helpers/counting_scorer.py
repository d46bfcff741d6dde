"""A scorer that counts its calls (tests check that cached rewards are not recomputed)."""

CALLS = {"n": 0}


def score(prompt: str, response: str, reference: str) -> float:
    CALLS["n"] += 1
    return 1.0 if len(response) > len(reference) else -1.0


def fails_on_odd_length(prompt: str, response: str, reference: str) -> float:
    if len(response) % 2:
        raise RuntimeError("scorer failed")
    return 0.5


def mostly_invalid(prompt: str, response: str, reference: str) -> float:
    """Valid only for the references 0, 1 and 2 (3 of the first 9 arith prompts)."""
    return 1.0 if reference in ("0", "1", "2") else float("nan")
