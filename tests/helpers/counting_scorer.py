"""A scorer that counts its calls (tests check that cached rewards are not recomputed)."""

CALLS = {"n": 0}


def score(prompt: str, response: str, reference: str) -> float:
    CALLS["n"] += 1
    return 1.0 if len(response) > len(reference) else -1.0


def fails_on_odd_length(prompt: str, response: str, reference: str) -> float:
    if len(response) % 2:
        raise RuntimeError("scorer failed")
    return 0.5
