"""Attention of one transformer call, as objects the backbone calls per layer.

An attention object is built once per forward and called per layer as
`attend(layer, q, k, v) -> (B * T, H * hd)` with q, k, v of shape (B, T, H, hd): it decides
which keys each query sees (packed sessions, a KV cache, the recency ring, scratch candidates)
and writes the new keys and values where a cache is involved. The backbone only computes
q, k, v and what follows, so one forward serves training, stepping and candidate scoring.

- `FullAttention`: the call's own tokens (packed training, parity checks).
- `FreshRowsAttention`: rows encoded from position 0 into the cache (session starts, refills).
- `CachedAttention`: new tokens over the first n cached positions (full attention).
- `WindowedCachedAttention`: new tokens over the recency ring, under an additive bias.
- `ScratchAttention`: tokens that read the cache but are never written (candidate scoring).

They are one module because they are one contract over one cache layout
(`simulators.lm.cache`), sharing the recency bias and the CPU blocking of the cached kinds.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch.nn.attention import SDPBackend, sdpa_kernel

from simulators.lm.cache import StaticKVCache


def recency_slopes(n_head: int) -> torch.Tensor:
    """Per-head attention penalty per step of distance (recency attention).

    1, 1/2, 1/4, ... and 0 for the last head, which weighs its whole window by content alone.
    """
    return torch.tensor([2.0**-h for h in range(n_head - 1)] + [0.0])


def window_bias(
    query_steps: torch.Tensor,
    key_steps: torch.Tensor,
    allowed: torch.Tensor,
    window: int,
    slopes: torch.Tensor,
    dtype: torch.dtype = torch.float32,
) -> torch.Tensor:
    """Additive attention bias (B, H, T, S) of recency attention.

    Args:
        query_steps: (B, T) step index of every query (-1: profile).
        key_steps: (B, S) step index of every key (-1: profile, always visible at no penalty;
            any other negative value: never visible).
        allowed: bool (B, T, S), what the mask allows before the window (causality, sessions).
        window: steps before a query's own step it may attend to.
        slopes: (H,) penalty per step of distance.
        dtype: dtype of the bias.
    """
    dist = query_steps[:, :, None] - key_steps[:, None, :]
    profile = (key_steps == -1)[:, None, :]
    dist = torch.where(profile, 0, dist)
    ok = allowed & (profile | ((dist >= 0) & (dist <= window)))
    bias = dist[:, None].to(dtype) * (-slopes.to(dist.device, dtype))[None, :, None, None]
    return bias.masked_fill_(~ok[:, None], float("-inf"))


class Attention:
    """Attention of one transformer call: `(layer, q, k, v) -> (B * T, H * hd)`.

    q, k and v have shape (B, T, H, hd) (see the module docstring).
    """

    def __call__(
        self, layer: int, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor
    ) -> torch.Tensor:  # pragma: no cover
        """Attend for one layer."""
        raise NotImplementedError


class FullAttention(Attention):
    """Self-attention over the call's own tokens (packed training, parity checks).

    A mask of None means plain causal attention (the fused kernels skip the masked blocks).

    Args:
        mask: bool (B, 1, T, T) (True: may attend) or an additive float bias (B, H, T, T).
    """

    def __init__(self, mask: torch.Tensor | None) -> None:
        """Store the mask."""
        self.mask = mask

    def __call__(
        self, layer: int, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor
    ) -> torch.Tensor:
        """Attend over the call's own tokens."""
        b, t, nh, hd = q.shape
        d = nh * hd
        q, k, v = q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2)  # each (B, H, T, hd)
        if self.mask is None and q.device.type == "cpu" and q.dtype != torch.float32:
            return causal_attention_cpu(q, k, v).transpose(1, 2).reshape(b * t, d)
        if self.mask is None:
            o = sdpa(q, k, v, is_causal=True)
        else:
            mask = self.mask
            if mask.is_floating_point() and mask.dtype != q.dtype:
                mask = mask.to(q.dtype)
            o = sdpa(q, k, v, attn_mask=mask)
        return o.transpose(1, 2).reshape(b * t, d)


def sdpa(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    attn_mask: torch.Tensor | None = None,
    is_causal: bool = False,
) -> torch.Tensor:
    """`F.scaled_dot_product_attention`, keeping CUDA inference off the cuDNN backend.

    In bfloat16 PyTorch picks cuDNN attention, which builds an execution plan for every new
    input shape: measured on an H200, about 6 ms of host time per call, 76% of a vector-env
    step at 4,096 users, because the number of rows changes every step as users leave and
    arrive. The memory-efficient kernel (the float32 choice) has no such cost; flash and math
    stay allowed, so every input still has a kernel. Training (autograd on) keeps the default.
    """
    if q.is_cuda and not torch.is_grad_enabled():
        if len(q) > _CUDA_SDPA_MAX_BATCH:  # the kernels' grids cap the batch at 65,535
            step = _CUDA_SDPA_MAX_BATCH
            part = lambda m, lo: m if m is None or len(m) == 1 else m[lo : lo + step]
            return torch.cat(
                [
                    sdpa(
                        q[lo : lo + step],
                        k[lo : lo + step],
                        v[lo : lo + step],
                        part(attn_mask, lo),
                        is_causal,
                    )
                    for lo in range(0, len(q), step)
                ]
            )
        with sdpa_kernel(_CUDA_INFERENCE_SDPA):
            return F.scaled_dot_product_attention(q, k, v, attn_mask=attn_mask, is_causal=is_causal)
    return F.scaled_dot_product_attention(q, k, v, attn_mask=attn_mask, is_causal=is_causal)


_CUDA_SDPA_MAX_BATCH = 32_768
"""Rows per CUDA SDPA call: at 65,536 rows the flash kernel (bfloat16) fails with 'invalid
argument' (measured on an H200), its grid's batch dimension being limited to 65,535."""


_CUDA_INFERENCE_SDPA = [
    SDPBackend.FLASH_ATTENTION,
    SDPBackend.EFFICIENT_ATTENTION,
    SDPBackend.MATH,
]


def causal_attention_cpu(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """Causal self-attention (B, H, T, hd) by blocks of rows with bmm.

    In bfloat16 on CPU this is about 1.7x faster than the fused SDPA kernel at T ~ 200, hd 32.

    Every block has the same number of rows (the last one overlaps the previous; its rows are
    computed twice, identically) so that oneDNN builds one kernel per T, not one per batch size;
    calls smaller than a block run in float32, whose matmuls build no cached kernels.
    """
    b, nh, t, hd = q.shape
    step = max(1, 4 * ATTENTION_CHUNK_ELEMENTS // (nh * t * t))
    dtype = q.dtype
    if b < step:
        q, k, v = q.float(), k.float(), v.float()
    bias = torch.full((t, t), float("-inf"), dtype=q.dtype, device=q.device).triu_(1)
    o = torch.empty(b, nh, t, hd, dtype=q.dtype, device=q.device)
    for lo in range(0, b, step):
        lo = max(0, min(lo, b - step))
        hi = min(b, lo + step)
        qq = (q[lo:hi] * hd**-0.5).reshape(-1, t, hd)
        s = torch.baddbmm(bias, qq, k[lo:hi].reshape(-1, t, hd).transpose(1, 2))
        torch.bmm(
            torch.softmax(s, dim=-1), v[lo:hi].reshape(-1, t, hd), out=o[lo:hi].view(-1, t, hd)
        )
    return o.to(dtype)


class FreshRowsAttention(FullAttention):
    """Rows encoded from position 0: write their keys/values, attend over the new tokens.

    The attention is causal when mask is None.
    """

    def __init__(
        self,
        cache: StaticKVCache,
        rows: torch.Tensor,
        positions: torch.Tensor,
        mask: torch.Tensor | None = None,
    ) -> None:
        """Index the cache positions the rows' tokens are written to."""
        super().__init__(mask)
        self.cache = cache
        self.index = cache.flat_index(positions, rows)

    def __call__(
        self, layer: int, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor
    ) -> torch.Tensor:
        """Write the keys/values, then attend over the new tokens."""
        self.cache.write_flat(layer, self.index, k, v)
        return super().__call__(layer, q, k, v)


ATTENTION_CHUNK_ELEMENTS = 1 << 18
"""CPU attention runs over blocks of rows whose scores hold about this many elements: the
scores of a block stay in L2 between the matmuls and the softmax, and small temporaries are
recycled by the allocator (large ones are fresh pages every call)."""


class CachedAttention(Attention):
    """New tokens of some cache rows attend over the first n cached positions of their rows.

    Keys/values of the new tokens are written first (so a token sees itself and the earlier new
    tokens, as the mask allows). On CUDA this is `scaled_dot_product_attention` over the cache
    slice. On CPU it is a blocked `bmm -> softmax -> bmm` (several times faster than the CPU SDPA
    kernels for a few query tokens over a long cache): rows are sorted by length and each block
    of rows attends over its own longest row only, with an additive mask built once per call.

    Args:
        cache: the cache.
        positions: (B, T) write positions (also the absolute positions of the queries); each
            query attends to the cached positions up to its own.
        rows: (B,) cache rows of the batch, or None for cache rows row_offset.. in order.
        n: attended cache length (at least the largest position + 1).
        mask: CUDA only: (B, 1, T, n) bool (True = may attend) or additive float mask; on CPU the
            mask is the causal one implied by positions.
    """

    def __init__(
        self,
        cache: StaticKVCache,
        positions: torch.Tensor,
        rows: torch.Tensor | None,
        n: int,
        mask: torch.Tensor | None,
        row_offset: int = 0,
    ) -> None:
        """Plan the attention: the mask on CUDA, blocks of rows of similar length on CPU."""
        self.cache, self.n, self.rows, self.offset = cache, n, rows, row_offset
        self.index = cache.flat_index(positions, rows, row_offset)
        b, t = positions.shape
        dev = positions.device
        dtype = cache.k.dtype
        self.cache_rows = (
            torch.arange(row_offset, row_offset + b, device=dev) if rows is None else rows
        )
        self.on_cpu = cache.k.device.type == "cpu"
        if not self.on_cpu:
            if mask is None:
                mask = torch.arange(n, device=dev) <= positions[:, None, :, None]
            if mask.dtype == torch.bool:
                mask = torch.zeros(mask.shape, dtype=dtype, device=dev).masked_fill_(
                    ~mask, float("-inf")
                )
            self.bias = mask.to(dtype)
            return
        # CPU plan: blocks of rows of similar length, each with its own attended length
        last = positions[:, -1]
        order = torch.argsort(last, stable=True)
        lengths = (last[order] + 1).tolist()
        order_list = order.tolist()
        nh = cache.n_head
        self.blocks: list[tuple[torch.Tensor | slice, torch.Tensor | slice, torch.Tensor, int]] = []
        # bfloat16 matmuls run in oneDNN, which builds and caches (~0.6 MB each) one kernel
        # per shape: there, lengths are rounded to 64 and every block of a (T, n) gets the same
        # row count (padded with repeats of its last row, whose results are written twice,
        # identically), so a few dozen shapes ever occur; blocks under a quarter full run in
        # float32 instead of being padded. float32 matmuls (MKL) cache nothing.
        dense = dtype != torch.float32
        grain = 64 if dense else 32
        c = cache.context

        def length(i: int) -> int:
            return min(c, grain * math.ceil(lengths[i] / grain))

        def rows_for(nb: int) -> int:
            return max(1, ATTENTION_CHUNK_ELEMENTS // (nh * t * nb))

        lo = 0
        while lo < b:
            # grow the block while its scores fit the budget at the block's longest row
            hi = lo + 1
            while hi < b and hi + 1 - lo <= rows_for(length(hi)):
                hi += 1
            nb = length(hi - 1)
            block_rows = order[lo:hi]
            small = dense and 4 * (hi - lo) <= rows_for(nb)  # runs in float32 (MKL), unpadded
            m = rows_for(nb) if dense and not small else hi - lo
            if m > hi - lo:  # dense only
                block_rows = torch.cat([block_rows, block_rows[-1:].expand(m - (hi - lo))])
            idx: torch.Tensor | slice = block_rows
            first = order_list[lo]
            if (
                not dense
                and rows is None
                and order_list[lo:hi] == list(range(first, first + hi - lo))
            ):
                idx = slice(first, first + hi - lo)  # float32: attend over a view, no copy
            keys = torch.arange(nb, device=dev)
            bias_dtype = torch.float32 if small else dtype
            bias = torch.zeros(len(positions[idx]), 1, t, nb, dtype=bias_dtype, device=dev)
            bias.masked_fill_(keys > positions[idx][:, None, :, None], float("-inf"))
            if isinstance(idx, slice):
                cache_rows = slice(idx.start + row_offset, idx.stop + row_offset)
                self.blocks.append((idx, cache_rows, bias, nb))
            else:
                self.blocks.append((idx, self.cache_rows[idx], bias, nb))
            lo = hi
        self.scale = cache.head_dim**-0.5
        size = max(len(bias) * nh * nb for _, _, bias, nb in self.blocks) * cache.head_dim
        self._kb = cache.k.new_empty(size)
        self._vb = cache.v.new_empty(size)

    def __call__(
        self, layer: int, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor
    ) -> torch.Tensor:
        """Write the new keys/values, attend over the cached positions."""
        cache = self.cache
        b, t, nh, hd = q.shape
        d, in_dtype = nh * hd, q.dtype
        cache.write_flat(layer, self.index, k, v)
        q = q.transpose(1, 2)  # (B, H, T, hd)
        kc, vc = cache.k[layer], cache.v[layer]
        if not self.on_cpu:  # SDPA over the cache slice (tests/test_cuda.py on a GPU)
            if self.rows is None:  # contiguous rows: a view, no copy of the cache
                k = kc[self.offset : self.offset + b, :, : self.n]
                v = vc[self.offset : self.offset + b, :, : self.n]
            else:
                k = kc[:, :, : self.n].index_select(0, self.rows)
                v = vc[:, :, : self.n].index_select(0, self.rows)
            o = sdpa(q, k.to(q.dtype), v.to(q.dtype), attn_mask=self.bias)
            return o.transpose(1, 2).reshape(b * t, d)
        q = (q * self.scale).to(kc.dtype).contiguous()  # (B, H, T, hd)
        o = torch.empty_like(q)
        for idx, rows, bias, n in self.blocks:
            m = len(bias)
            if isinstance(idx, slice):  # contiguous float32 rows: strided views (MKL takes them)
                s = torch.bmm(
                    q[idx].reshape(m * nh, t, hd), kc[rows, :, :n].reshape(m * nh, n, hd).mT
                )
                s.view(m, nh, t, n).add_(bias)
                p = torch.softmax(s, dim=-1)
                out = o[idx].view(m * nh, t, hd)
                torch.bmm(p, vc[rows, :, :n].reshape(m * nh, n, hd), out=out)
                continue
            # dense copies: bmm on CPU would otherwise copy (and transpose) the strided slices
            assert isinstance(rows, torch.Tensor)  # a row-index block has cache-row indices
            kb = self._kb[: m * nh * n * hd].view(m, nh, n, hd)
            vb = self._vb[: m * nh * n * hd].view(m, nh, n, hd)
            torch.index_select(kc[:, :, :n], 0, rows, out=kb)
            torch.index_select(vc[:, :, :n], 0, rows, out=vb)
            qb = q[idx].reshape(m * nh, t, hd)
            kb, vb = kb.view(m * nh, n, hd), vb.view(m * nh, n, hd)
            if bias.dtype != kb.dtype:  # a small bfloat16 block: float32 math, no oneDNN kernel
                qb, kb, vb = qb.float(), kb.float(), vb.float()
            s = torch.bmm(qb, kb.transpose(1, 2))
            s.view(m, nh, t, n).add_(bias)
            p = torch.softmax(s, dim=-1)
            res = torch.bmm(p, vb).view(m, nh, t, hd)
            o.index_copy_(0, idx, res.to(o.dtype))
        return o.transpose(1, 2).reshape(b * t, d).to(in_dtype)


class WindowedCachedAttention(Attention):
    """New tokens of some cache rows attend over the first n cached positions under a bias.

    The additive bias is (B, H, T, n): the recency-attention ring, where which keys a query
    sees and how far back they lie is given by the bias, not by the order of the positions.

    On CPU, rows run in blocks of equal size (the last block overlaps the one before; its rows
    are computed twice, identically) through `bmm -> softmax -> bmm`; bfloat16 matmuls build a
    oneDNN kernel per shape, so calls smaller than one block run in float32.
    """

    def __init__(
        self,
        cache: StaticKVCache,
        positions: torch.Tensor,
        rows: torch.Tensor | None,
        n: int,
        bias: torch.Tensor,
        row_offset: int = 0,
    ) -> None:
        """Keep the cache, rows and bias; compute where the new keys/values are written."""
        self.cache, self.n, self.rows, self.offset, self.bias = cache, n, rows, row_offset, bias
        self.index = cache.flat_index(positions, rows, row_offset)
        self.scale = cache.head_dim**-0.5

    def __call__(
        self, layer: int, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor
    ) -> torch.Tensor:
        """Write the new keys/values, attend over the ring under the bias."""
        cache = self.cache
        b, t, nh, hd = q.shape
        d, in_dtype, n = nh * hd, q.dtype, self.n
        cache.write_flat(layer, self.index, k, v)
        q = q.transpose(1, 2)  # (B, H, T, hd)
        kc, vc = cache.k[layer, :, :, :n], cache.v[layer, :, :, :n]
        if kc.device.type != "cpu":  # SDPA over the ring (tests/test_cuda.py on a GPU)
            if self.rows is None:  # contiguous rows: views, no copy of the cache
                k = kc[self.offset : self.offset + b]
                v = vc[self.offset : self.offset + b]
            else:
                k, v = kc.index_select(0, self.rows), vc.index_select(0, self.rows)
            o = sdpa(q, k.to(q.dtype), v.to(q.dtype), attn_mask=self.bias)
            return o.transpose(1, 2).reshape(b * t, d)
        step = max(1, ATTENTION_CHUNK_ELEMENTS // (nh * t * n))
        dtype = kc.dtype if b >= step else torch.float32
        q = (q * self.scale).to(dtype).contiguous()
        o = torch.empty(b, nh, t, hd, dtype=dtype, device=q.device)
        m = min(step, b)
        if self.rows is not None:  # gathered rows go through small buffers the allocator reuses
            kb = kc.new_empty(m, nh, n, hd)
            vb = vc.new_empty(m, nh, n, hd)
        for lo in range(0, b, m):
            lo = max(0, min(lo, b - m))
            hi = lo + m
            if self.rows is None:  # contiguous float32 rows: strided views (MKL takes them)
                k = kc[self.offset + lo : self.offset + hi]
                v = vc[self.offset + lo : self.offset + hi]
            else:
                k = torch.index_select(kc, 0, self.rows[lo:hi], out=kb)
                v = torch.index_select(vc, 0, self.rows[lo:hi], out=vb)
            s = torch.bmm(q[lo:hi].view(m * nh, t, hd), k.to(dtype).reshape(m * nh, n, hd).mT)
            s.view(m, nh, t, n).add_(self.bias[lo:hi])
            torch.bmm(
                torch.softmax(s, dim=-1),
                v.to(dtype).reshape(m * nh, n, hd),
                out=o[lo:hi].view(m * nh, t, hd),
            )
        return o.transpose(1, 2).reshape(b * t, d).to(in_dtype)


class ScratchAttention(Attention):
    """Tokens that read cached rows but are never written.

    Each query sees the first n cached positions of its row and the call's own tokens, as
    `mask` allows (candidate scoring: every candidate attends to the user's history and to its
    own tokens only).

    Args:
        cache: the cache.
        rows: (B,) cache rows of the batch.
        n: cached positions read.
        mask: (B, 1 or H, T, n + T) bool (True: may attend) or additive float bias.
    """

    def __init__(
        self, cache: StaticKVCache, rows: torch.Tensor, n: int, mask: torch.Tensor
    ) -> None:
        """Store what each query may read."""
        self.cache, self.rows, self.n, self.mask = cache, rows, n, mask

    def __call__(
        self, layer: int, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor
    ) -> torch.Tensor:
        """Attend over the cached history and the new tokens, writing nothing."""
        b, t, nh, hd = q.shape
        q, k, v = q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2)  # (B, H, T, hd)
        past_k = self.cache.k[layer][self.rows, :, : self.n].to(k.dtype)
        past_v = self.cache.v[layer][self.rows, :, : self.n].to(v.dtype)
        k_all = torch.cat([past_k, k], dim=2)
        v_all = torch.cat([past_v, v], dim=2)
        o = sdpa(q, k_all, v_all, attn_mask=self.mask)
        return o.transpose(1, 2).reshape(b * t, nh * hd)
