"""Counted nouns in messages ("1 user", "3 users"): one rule for every error and report line."""

from __future__ import annotations


def plural(n: int, word: str) -> str:
    """`n` and `word`, with an "s" unless n is 1."""
    return f"{n} {word}" if n == 1 else f"{n} {word}s"
