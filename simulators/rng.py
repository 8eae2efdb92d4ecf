"""Counter-based random numbers: one stream per user row, vectorised over the batch.

A user's draws depend only on its own key and counter, never on which other users share the
batch, so a trajectory is identical at num_envs=1 and num_envs=1024, and a batch of N users costs
a handful of numpy ops instead of N generator calls.
"""

from __future__ import annotations

import numpy as np

_GOLDEN = np.uint64(0x9E3779B97F4A7C15)
_M1 = np.uint64(0xBF58476D1CE4E5B9)
_M2 = np.uint64(0x94D049BB133111EB)


def splitmix64(x: np.ndarray) -> np.ndarray:
    """The splitmix64 finaliser applied elementwise to uint64 values."""
    with np.errstate(over="ignore"):
        z = x + _GOLDEN
        z = (z ^ (z >> np.uint64(30))) * _M1
        z = (z ^ (z >> np.uint64(27))) * _M2
        return z ^ (z >> np.uint64(31))


def uniforms(keys: np.ndarray, counters: np.ndarray, n: int) -> np.ndarray:
    """Draw n uniforms in [0, 1) per row.

    Args:
        keys: (B,) uint64 per-row stream keys.
        counters: (B,) uint64 per-row counters; advanced in place by n.
        n: draws per row.

    Returns:
        (B, n) float64 uniforms.
    """
    with np.errstate(over="ignore"):
        idx = counters[:, None] + np.arange(n, dtype=np.uint64)[None, :]
        bits = splitmix64(splitmix64(keys[:, None]) ^ idx)
    counters += np.uint64(n)
    return (bits >> np.uint64(11)).astype(np.float64) * (1.0 / (1 << 53))


def distinct_choices(
    keys: np.ndarray, counters: np.ndarray, population: int, size: int
) -> np.ndarray:
    """Draw `size` distinct integers in [0, population) per row (sorted ascending).

    Draws with replacement and redraws collided positions until every row is distinct; with
    size much smaller than population this takes a few rounds.
    """
    if size > population:
        raise ValueError(f"cannot draw {size} distinct items from {population}")
    if size == population:
        return np.tile(np.arange(population, dtype=np.int64), (len(keys), 1))
    out = np.floor(uniforms(keys, counters, size) * population).astype(np.int64)
    for _ in range(64):
        out.sort(axis=1)
        dup = np.zeros_like(out, dtype=bool)
        dup[:, 1:] = out[:, 1:] == out[:, :-1]
        if not dup.any():
            return out
        rows = np.nonzero(dup.any(axis=1))[0]
        fresh = np.floor(uniforms(keys[rows], counters[rows], size) * population).astype(np.int64)
        # counters of the selected rows advance through a fancy-indexed copy: write them back
        counters[rows] += np.uint64(size)
        out[rows] = np.where(dup[rows], fresh, out[rows])
    raise RuntimeError("distinct_choices did not converge")  # pragma: no cover
