"""StaticKVCache: preallocated keys and values of every user row."""

from __future__ import annotations

import torch


class StaticKVCache:
    """Preallocated keys/values (layer, B, H, C, hd) and per-row lengths.

    Preallocation keeps memory flat over an episode (a growing cache re-allocates every step);
    attention reads only the first `kv_length` positions, the longest live row rounded up.
    New keys/values are written with `index_copy_` into a flat (B * H * C, hd) view of each
    layer (a `scatter_` along the position axis is two orders of magnitude slower in bfloat16
    on CPU).
    """

    def __init__(
        self,
        n_layer: int,
        batch: int,
        n_head: int,
        context: int,
        head_dim: int,
        device: torch.device | str,
        dtype: torch.dtype,
    ) -> None:
        """Allocate zeros."""
        shape = (n_layer, batch, n_head, context, head_dim)
        self.k = torch.zeros(shape, device=device, dtype=dtype)
        self.v = torch.zeros(shape, device=device, dtype=dtype)
        self.lengths = torch.zeros(batch, dtype=torch.long, device=device)
        self.context = context
        self.n_head = n_head
        self.head_dim = head_dim
        self._kf = self.k.view(n_layer, batch * n_head * context, head_dim)
        self._vf = self.v.view(n_layer, batch * n_head * context, head_dim)

    def flat_index(
        self, positions: torch.Tensor, rows: torch.Tensor | None, row_offset: int = 0
    ) -> torch.Tensor:
        """Indices into the flat per-layer view of positions (B, T) of cache rows `rows`.

        `rows` None means rows row_offset.. in order. The indices are (B * T * H,) in (b, t, h)
        order.
        """
        b, _ = positions.shape
        r = (
            torch.arange(row_offset, row_offset + b, device=positions.device)
            if rows is None
            else rows
        )
        heads = torch.arange(self.n_head, device=positions.device) * self.context
        base = r * (self.n_head * self.context)  # (B,)
        return ((base[:, None] + positions)[:, :, None] + heads).reshape(-1)

    def write_flat(self, layer: int, index: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> None:
        """Store k, v (B, T, H, hd) at a `flat_index`."""
        hd = self.head_dim
        self._kf[layer].index_copy_(0, index, k.reshape(-1, hd).to(self.k.dtype))
        self._vf[layer].index_copy_(0, index, v.reshape(-1, hd).to(self.v.dtype))

    def write(
        self,
        layer: int,
        k: torch.Tensor,
        v: torch.Tensor,
        positions: torch.Tensor,
        rows: torch.Tensor | None,
        kv_length: int | None,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Store k, v (B, H, T, hd) at positions (B, T); return the cache slice to attend over."""
        self.write_flat(
            layer, self.flat_index(positions, rows), k.transpose(1, 2), v.transpose(1, 2)
        )
        if rows is None:
            n = kv_length or self.context
            return self.k[layer, :, :, :n], self.v[layer, :, :, :n]
        # a subset of rows starting from empty: attend over the new tokens
        return k, v
