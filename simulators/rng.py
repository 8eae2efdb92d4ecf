"""Counter-based random numbers: one stream per user row, vectorised over the batch.

A user's draws depend only on its own key and counter, never on which other users share the
batch, so a trajectory is identical at num_envs=1 and num_envs=1024, and a batch of N users costs
a handful of numpy ops instead of N generator calls.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:
    import torch

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


# ------------------------------------------------------------------------------- torch streams
# The same streams on a torch device (the TorchRL env keeps its sessions there). torch has no
# usable uint64 arithmetic, so the 64-bit words live in int64 tensors: addition and
# multiplication wrap modulo 2**64 alike in two's complement, and the logical right shifts are
# arithmetic shifts with the sign-extended bits masked off. `tests/test_torchrl_env.py` pins
# every draw to the NumPy functions above.


def _signed(value: np.uint64) -> int:
    v = int(value)
    return v - (1 << 64) if v >= 1 << 63 else v


_T_GOLDEN, _T_M1, _T_M2 = _signed(_GOLDEN), _signed(_M1), _signed(_M2)


def _lsr(x: torch.Tensor, s: int) -> torch.Tensor:
    """Logical right shift of int64 words holding uint64 bits."""
    return (x >> s) & ((1 << (64 - s)) - 1)


def torch_splitmix64(x: torch.Tensor) -> torch.Tensor:
    """`splitmix64` on int64 tensors holding uint64 bits (the same bits)."""
    z = x + _T_GOLDEN
    z = (z ^ _lsr(z, 30)) * _T_M1
    z = (z ^ _lsr(z, 27)) * _T_M2
    return z ^ _lsr(z, 31)


def keys_to_torch(keys: np.ndarray, device: torch.device | str = "cpu") -> torch.Tensor:
    """uint64 stream keys (B,) as the int64 words the torch functions take."""
    import torch

    return torch.from_numpy(np.ascontiguousarray(keys, dtype=np.uint64).view(np.int64)).to(device)


def torch_uniforms(keys: torch.Tensor, counters: torch.Tensor, n: int) -> torch.Tensor:
    """`uniforms` on a torch device: n float64 uniforms per row, counters advanced in place.

    Args:
        keys: (B,) int64 words of the rows' uint64 keys (`keys_to_torch`).
        counters: (B,) int64 counters; advanced in place by n.
        n: draws per row.

    Returns:
        (B, n) float64, bit-identical to `uniforms` on the same keys and counters.
    """
    import torch

    idx = counters[:, None] + torch.arange(n, device=counters.device, dtype=torch.int64)
    bits = torch_splitmix64(torch_splitmix64(keys)[:, None] ^ idx)
    counters += n
    return _lsr(bits, 11).to(torch.float64) * (1.0 / (1 << 53))


def torch_distinct_choices(
    keys: torch.Tensor, counters: torch.Tensor, population: int, size: int
) -> torch.Tensor:
    """`distinct_choices` on a torch device (the same draws, rows sorted ascending).

    Rows with a collision redraw, as in the NumPy version: every row draws fresh values each
    round, but only colliding rows take them and advance their counters.
    """
    import torch

    b = len(keys)
    if size > population:
        raise ValueError(f"cannot draw {size} distinct items from {population}")
    if size == population:
        return torch.arange(population, device=keys.device).expand(b, size).clone()
    out = (torch_uniforms(keys, counters, size) * population).floor().long()
    for _ in range(64):
        out = out.sort(dim=1).values
        dup = torch.zeros_like(out, dtype=torch.bool)
        dup[:, 1:] = out[:, 1:] == out[:, :-1]
        redraw = dup.any(dim=1)
        if not bool(redraw.any()):
            return out
        ctr = counters.clone()
        fresh = (torch_uniforms(keys, ctr, size) * population).floor().long()
        counters += size * redraw.long()
        out = torch.where(dup, fresh, out)
    raise RuntimeError("distinct_choices did not converge")  # pragma: no cover
