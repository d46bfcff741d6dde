"""Bundled synthetic tasks (prompt sets with reference answers and verifiable scorers)."""
