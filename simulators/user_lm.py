"""UserLM: a transformers GPT-2 plus the input channels of SimTokenizer, and its fast forward.

The network *is* a `GPT2LMHeadModel` (so `--base-model gpt2` loads real pretrained weights and
`GPT2Config` holds the hyperparameters); around it sit role, slot and item side-information
embeddings that are added to the token embeddings. The output head is GPT-2's own, untied
`lm_head`, read only at the five tokens a user can write (skip, click, buy, cont, leave).

`UserLM.transformer` runs GPT-2's blocks functionally over the module's own weights. One code path
serves packed training (block-diagonal causal mask, positions restarting per session) and batched
inference with a preallocated KV cache written at per-row offsets; a test pins it to the HF
forward. Dropout is not applied (the default configs set it to 0).

Inference (no autograd) on CPU takes faster kernels for the same arithmetic: oneDNN's fused
linear (+GELU) instead of MKL's GEMM, and for a few new tokens over a long cache a blocked
`bmm -> softmax -> bmm` (`CachedAttention`) instead of the CPU SDPA kernels. Shapes handed to
oneDNN are bucketed, because it builds and keeps a kernel per shape.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.attention import SDPBackend, sdpa_kernel
from transformers import GPT2Config, GPT2LMHeadModel

from simulators.tokenization import BOS, LEAVE, NUM_ROLES, NUM_SUMMARY_CODES, OUTPUT_TOKENS, PAD

MODEL_SIZES: dict[str, dict[str, int]] = {
    "tiny": {"n_layer": 2, "n_head": 2, "n_embd": 32},
    "small": {"n_layer": 4, "n_head": 4, "n_embd": 128},
    "medium": {"n_layer": 6, "n_head": 8, "n_embd": 256},
    "gpt2": {"n_layer": 12, "n_head": 12, "n_embd": 768},
}


@dataclass(frozen=True, kw_only=True)
class SimulatorConfig:
    """Settings of the simulator around the network (saved as simulator_config.json)."""

    context_length: int = 512
    """Tokens of context per user (GPT-2 n_positions)."""
    window_steps: int = 12
    """Steps kept when a full context is refilled (sliding window by re-encoding)."""
    max_slots: int = 32
    """Slots with their own slot embedding; later slots share the last one."""
    text_buckets: int = 4096
    """Hash buckets of title words and word pairs (learned text embeddings)."""
    text_max_words: int = 16
    """Title words (and pairs) kept per item."""
    item_dropout: float = 0.1
    """Training only: chance an item token is replaced by <unk_item> (teaches cold start)."""
    attention_window_steps: int = 0
    """0: GPT-2's absolute positions and full causal attention; a full context is refilled by
    re-encoding the profile and the last `window_steps` steps. N > 0: recency attention (ALiBi
    over steps): no absolute positions, every token attends to the profile, its own step and
    the N steps before it, with a per-head penalty linear in the step distance. Inference then
    keeps a ring of N + 1 step blocks in the KV cache: a step costs the same at any history
    length and nothing is ever re-encoded (earlier steps still reach a token through the
    layers, up to n_layer * N steps back)."""
    session_summary: bool = False
    """Add a learned embedding of the session-summary channel (what the user has clicked and
    bought of an item's category earlier in the session, see `simulators.tokenization`) to
    every item token: with recency attention, consumption older than the window still
    reaches the prediction."""
    format_version: int = 1
    """Checkpoint format version."""

    def __post_init__(self) -> None:
        """Validate ranges."""
        if self.context_length < 32:
            raise ValueError(f"context_length must be >= 32, got {self.context_length}")
        if self.window_steps < 1:
            raise ValueError(f"window_steps must be >= 1, got {self.window_steps}")
        if self.attention_window_steps < 0:
            raise ValueError(
                f"attention_window_steps must be >= 0 (0: full attention), got {self.attention_window_steps}"
            )
        if not 0.0 <= self.item_dropout < 1.0:
            raise ValueError(f"item_dropout must be in [0, 1), got {self.item_dropout}")

    def to_dict(self) -> dict:
        """JSON-serialisable form."""
        return asdict(self)


def make_gpt2_config(size: str, vocab_size: int, context_length: int) -> GPT2Config:
    """A GPT2Config of a named size for our vocabulary, untied head, no dropout."""
    if size not in MODEL_SIZES:
        raise ValueError(f"unknown --size {size!r}; allowed: {sorted(MODEL_SIZES)}")
    return GPT2Config(
        vocab_size=vocab_size,
        n_positions=context_length,
        tie_word_embeddings=False,
        resid_pdrop=0.0,
        embd_pdrop=0.0,
        attn_pdrop=0.0,
        bos_token_id=BOS,
        eos_token_id=LEAVE,
        pad_token_id=PAD,
        **MODEL_SIZES[size],
    )


def recency_slopes(n_head: int) -> torch.Tensor:
    """Per-head attention penalty per step of distance (recency attention): 1, 1/2, 1/4, ...
    and 0 for the last head, which weighs its whole window by content alone."""
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
    """
    dist = query_steps[:, :, None] - key_steps[:, None, :]
    profile = (key_steps == -1)[:, None, :]
    dist = torch.where(profile, 0, dist)
    ok = allowed & (profile | ((dist >= 0) & (dist <= window)))
    bias = dist[:, None].to(dtype) * (-slopes.to(dist.device, dtype))[None, :, None, None]
    return bias.masked_fill_(~ok[:, None], float("-inf"))


class UserLM(nn.Module):
    """GPT-2 with role/slot/item channels and a five-way user output."""

    def __init__(
        self,
        gpt2: GPT2LMHeadModel,
        sim_config: SimulatorConfig,
        item_features: torch.Tensor,
        item_text: torch.Tensor,
        item_known: torch.Tensor,
        item_category: torch.Tensor | None = None,
    ) -> None:
        """Wrap a GPT2LMHeadModel and register the catalog side information as buffers
        (`item_category`, each item's category index, is needed with `session_summary`)."""
        super().__init__()
        self.gpt2 = gpt2
        self.sim_config = sim_config
        d = gpt2.config.n_embd
        self.role_emb = nn.Embedding(NUM_ROLES, d)
        self.slot_emb = nn.Embedding(sim_config.max_slots + 1, d)
        self.feat_proj = nn.Linear(item_features.shape[1], d, bias=False)
        self.word_emb = nn.Embedding(sim_config.text_buckets, d, padding_idx=0)
        for emb in (self.role_emb, self.slot_emb, self.word_emb):
            nn.init.normal_(emb.weight, std=0.02)
        nn.init.normal_(self.feat_proj.weight, std=0.02)
        with torch.no_grad():
            self.word_emb.weight[0].zero_()
        self.register_buffer("item_features", item_features.float())
        self.register_buffer("item_text", item_text.long())
        self.register_buffer("item_known", item_known.bool())
        self.register_buffer(
            "output_ids", torch.tensor(OUTPUT_TOKENS, dtype=torch.long), persistent=False
        )
        self.summary_emb: nn.Embedding | None = None
        if sim_config.session_summary:
            if item_category is None:
                raise ValueError("a session_summary simulator needs each item's category index")
            self.add_session_summary(item_category)

    def add_session_summary(self, item_category: torch.Tensor) -> None:
        """Switch the session-summary channel on: a zero-initialised embedding, so a trained
        network computes the same function until training teaches it to use the channel."""
        if len(item_category) != len(self.item_features):
            raise ValueError(
                f"item_category has {len(item_category)} entries for {len(self.item_features)} items"
            )
        dev = self.item_features.device
        self.summary_emb = nn.Embedding(
            NUM_SUMMARY_CODES, self.config.n_embd, padding_idx=0, device=dev
        )
        nn.init.zeros_(self.summary_emb.weight)
        self.register_buffer("item_category", item_category.long().to(dev))

    @property
    def config(self) -> GPT2Config:
        """The GPT2Config."""
        return self.gpt2.config

    def embed(
        self,
        input_ids: torch.Tensor,
        roles: torch.Tensor,
        slots: torch.Tensor,
        items: torch.Tensor,
        summary: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Input embeddings (B, T, d) from the token channels (each (B, T) int64; the
        session-summary codes count only with `session_summary`)."""
        x = self.gpt2.transformer.wte(input_ids)
        x = x + self.role_emb(roles) + self.slot_emb(slots.clamp(max=self.sim_config.max_slots))
        if self.summary_emb is not None and summary is not None:
            x = x + self.summary_emb(summary)
        is_item = items >= 0
        if bool(is_item.any()):
            idx = items.clamp(min=0)
            words = self.item_text[idx]  # (B, T, W)
            count = (words > 0).sum(-1, keepdim=True).clamp(min=1).to(x.dtype)
            side = (
                self.feat_proj(self.item_features[idx].to(x.dtype))
                + self.word_emb(words).sum(-2) / count
            )
            x = x + side * is_item.unsqueeze(-1).to(x.dtype)
        return x

    def transformer(
        self,
        x: torch.Tensor,
        position_ids: torch.Tensor,
        attn_mask: torch.Tensor,
        cache: StaticKVCache | None = None,
        write_positions: torch.Tensor | None = None,
        rows: torch.Tensor | None = None,
        kv_length: int | None = None,
    ) -> torch.Tensor:
        """GPT-2 blocks over input embeddings x (B, T, d); returns final hidden states (B, T, d).

        Args:
            position_ids: (B, T) absolute positions.
            attn_mask: bool (B, 1, T, S), True where a query may attend; S = T without a cache,
                else the attended cache length. With a cache and kv_length, an additive float
                mask (0 / -inf) of the same shape is accepted too (it saves a conversion).
            cache: when given, this call's keys/values are written into it at write_positions
                (B, T) (rows `rows` of the cache, all rows if None). With kv_length, attention
                runs over the first kv_length cached positions of those rows; with rows and no
                kv_length the rows start from empty and attend over the new tokens only.
        """
        nh = self.gpt2.config.n_head
        if cache is None:
            attend: _Attention = _FullAttention(nh, attn_mask)
        elif rows is not None and kv_length is None:
            attend = _FreshRowsAttention(nh, cache, rows, write_positions, attn_mask)
        else:
            n = kv_length or cache.context
            attend = CachedAttention(cache, write_positions, rows, n, attn_mask)
        return self._blocks(x, position_ids, attend)

    def _blocks(
        self, x: torch.Tensor, position_ids: torch.Tensor, attend: _Attention
    ) -> torch.Tensor:
        """The GPT-2 blocks with attention delegated to `attend(layer, qkv)` -> (B*T, d)."""
        tr = self.gpt2.transformer
        b, t, d = x.shape
        h = (x + tr.wpe(position_ids)).reshape(b * t, d)
        fast = self._fast_linears(h)
        for layer, block in enumerate(tr.h):
            a = block.ln_1(h)
            if fast is not None:
                w_qkv, b_qkv, w_o, b_o, w_fc, b_fc, w_out, b_out = fast[layer]
                o = attend(layer, _linear(a, w_qkv, b_qkv).view(b, t, 3, -1))
                h = h.add_(_linear(o, w_o, b_o))
                m = _linear(block.ln_2(h), w_fc, b_fc, gelu=True)
                h = h.add_(_linear(m, w_out, b_out))
                continue
            qkv = torch.addmm(block.attn.c_attn.bias, a, block.attn.c_attn.weight)
            o = attend(layer, qkv.view(b, t, 3, -1))
            h = h + torch.addmm(block.attn.c_proj.bias, o, block.attn.c_proj.weight)
            m = torch.addmm(block.mlp.c_fc.bias, block.ln_2(h), block.mlp.c_fc.weight)
            m = gelu_tanh(m)
            h = h + torch.addmm(block.mlp.c_proj.bias, m, block.mlp.c_proj.weight)
        return tr.ln_f(h).view(b, t, d)

    def _fast_linears(self, h: torch.Tensor) -> list[tuple[torch.Tensor, ...]] | None:
        """Per-layer (out, in) weights for oneDNN's fused linear, or None where it does not apply.

        Inference only (no autograd), on CPU, in a dtype the kernel takes. On AMD CPUs MKL's
        float32 GEMM runs about 2.5x below oneDNN's, and oneDNN fuses the GELU. The transposed
        copies are rebuilt whenever a parameter changes (in-place updates bump its version).
        """
        if torch.is_grad_enabled() or h.device.type != "cpu" or not _onednn_linear_ok(h.dtype):
            return None
        mods = [
            (blk.attn.c_attn, blk.attn.c_proj, blk.mlp.c_fc, blk.mlp.c_proj)
            for blk in self.gpt2.transformer.h
        ]
        params = [p for layer in mods for mod in layer for p in (mod.weight, mod.bias)]
        key = (h.dtype, *((id(p), p.data_ptr(), p._version) for p in params))
        if getattr(self, "_fast_key", None) != key:
            with torch.inference_mode():
                self._fast_weights = [
                    tuple(
                        t
                        for mod in layer
                        for t in (
                            mod.weight.t().contiguous().to(h.dtype),
                            mod.bias.detach().clone().to(h.dtype),
                        )
                    )
                    for layer in mods
                ]
            self._fast_key = key
        return self._fast_weights

    def output_logits(self, hidden: torch.Tensor) -> torch.Tensor:
        """Logits (..., 5) over (skip, click, buy, cont, leave) from hidden states (..., d)."""
        w = self.gpt2.lm_head.weight[self.output_ids]  # (5, d)
        return hidden @ w.t().to(hidden.dtype)


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
        """Indices into the flat per-layer view of positions (B, T) of cache rows `rows` (rows
        row_offset.. in order if None): (B * T * H,) in (b, t, h) order."""
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


class _Attention:
    """Attention of one transformer call: `(layer, qkv (B, T, 3, d)) -> (B * T, d)`."""

    def __call__(self, layer: int, qkv: torch.Tensor) -> torch.Tensor:  # pragma: no cover
        raise NotImplementedError


class _FullAttention(_Attention):
    """Self-attention over the call's own tokens (packed training, parity checks); a mask of
    None means plain causal attention (the fused kernels skip the masked blocks)."""

    def __init__(self, n_head: int, mask: torch.Tensor | None) -> None:
        self.n_head, self.mask = n_head, mask

    def __call__(self, layer: int, qkv: torch.Tensor) -> torch.Tensor:
        b, t, _, d = qkv.shape
        q, k, v = qkv.view(b, t, 3, self.n_head, -1).permute(2, 0, 3, 1, 4)  # each (B, H, T, hd)
        if self.mask is None and q.device.type == "cpu" and q.dtype != torch.float32:
            return _causal_attention_cpu(q, k, v).transpose(1, 2).reshape(b * t, d)
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


def _causal_attention_cpu(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """Causal self-attention (B, H, T, hd) by blocks of rows with bmm: in bfloat16 on CPU about
    1.7x faster than the fused SDPA kernel at T ~ 200, hd 32.

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


class _FreshRowsAttention(_FullAttention):
    """Rows encoded from position 0: write their keys/values, attend over the new tokens."""

    def __init__(
        self,
        n_head: int,
        cache: StaticKVCache,
        rows: torch.Tensor,
        positions: torch.Tensor,
        mask: torch.Tensor | None,
    ) -> None:
        super().__init__(n_head, mask)
        self.cache = cache
        self.index = cache.flat_index(positions, rows)

    def __call__(self, layer: int, qkv: torch.Tensor) -> torch.Tensor:
        b, t, _, d = qkv.shape
        kv = qkv.view(b, t, 3, self.n_head, -1)
        self.cache.write_flat(layer, self.index, kv[:, :, 1], kv[:, :, 2])
        return super().__call__(layer, qkv)


ATTENTION_CHUNK_ELEMENTS = 1 << 18
"""CPU attention runs over blocks of rows whose scores hold about this many elements: the
scores of a block stay in L2 between the matmuls and the softmax, and small temporaries are
recycled by the allocator (large ones are fresh pages every call)."""


class CachedAttention(_Attention):
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
            idx = order[lo:hi]
            first = order_list[lo]
            if (
                not dense
                and rows is None
                and order_list[lo:hi] == list(range(first, first + hi - lo))
            ):
                idx = slice(first, first + hi - lo)  # float32: attend over a view, no copy
            small = dense and 4 * (hi - lo) <= rows_for(nb)  # runs in float32 (MKL), unpadded
            m = rows_for(nb) if dense and not small else hi - lo
            if m > hi - lo:
                idx = torch.cat([idx, idx[-1:].expand(m - (hi - lo))])
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

    def __call__(self, layer: int, qkv: torch.Tensor) -> torch.Tensor:
        cache = self.cache
        b, t, _, d = qkv.shape
        nh, hd = cache.n_head, cache.head_dim
        kv = qkv.view(b, t, 3, nh, hd)
        cache.write_flat(layer, self.index, kv[:, :, 1], kv[:, :, 2])
        q = kv[:, :, 0].transpose(1, 2)  # (B, H, T, hd)
        kc, vc = cache.k[layer], cache.v[layer]
        if not self.on_cpu:  # untested here (no GPU in CI): SDPA over the cache slice
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
        return o.transpose(1, 2).reshape(b * t, d).to(qkv.dtype)


class WindowedCachedAttention(_Attention):
    """New tokens of some cache rows attend over the first n cached positions under an additive
    bias (B, H, T, n): the recency-attention ring, where which keys a query sees and how far
    back they lie is given by the bias, not by the order of the positions.

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
        self.cache, self.n, self.rows, self.offset, self.bias = cache, n, rows, row_offset, bias
        self.index = cache.flat_index(positions, rows, row_offset)
        self.scale = cache.head_dim**-0.5

    def __call__(self, layer: int, qkv: torch.Tensor) -> torch.Tensor:
        cache = self.cache
        b, t, _, d = qkv.shape
        nh, hd, n = cache.n_head, cache.head_dim, self.n
        kv = qkv.view(b, t, 3, nh, hd)
        cache.write_flat(layer, self.index, kv[:, :, 1], kv[:, :, 2])
        q = kv[:, :, 0].transpose(1, 2)  # (B, H, T, hd)
        kc, vc = cache.k[layer, :, :, :n], cache.v[layer, :, :, :n]
        if kc.device.type != "cpu":  # untested here (no GPU in CI)
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
        return o.transpose(1, 2).reshape(b * t, d).to(qkv.dtype)


_ONEDNN_OK: dict[torch.dtype, bool] = {}


def _onednn_linear_ok(dtype: torch.dtype) -> bool:
    """Whether oneDNN's fused linear (`torch.ops.mkldnn._linear_pointwise`) runs in dtype here."""
    if dtype not in _ONEDNN_OK:
        ok = False
        if torch.backends.mkldnn.is_available():
            try:
                x = torch.linspace(-2, 2, 8).view(2, 4).to(dtype)
                w = torch.ones(3, 4, dtype=dtype)
                b = torch.zeros(3, dtype=dtype)
                y = torch.ops.mkldnn._linear_pointwise(x, w, b, "gelu", [], "tanh")
                ref = F.gelu(x.float() @ w.float().t(), approximate="tanh")
                ok = y.shape == ref.shape and bool(torch.allclose(y.float(), ref, atol=0.05))
            except (RuntimeError, AttributeError, NotImplementedError):
                ok = False
        _ONEDNN_OK[dtype] = ok
    return _ONEDNN_OK[dtype]


def padded_rows(m: int) -> int:
    """m rounded up to one of about 8 sizes per octave (at most 12.5% more; multiples of 8)."""
    if m <= 64:
        return -(-m // 8) * 8
    g = 1 << (m.bit_length() - 4)
    return -(-m // g) * g


def _linear(x: torch.Tensor, w: torch.Tensor, b: torch.Tensor, gelu: bool = False) -> torch.Tensor:
    """x @ w.T + b (w is (out, in)), optionally followed by the tanh GELU, in one oneDNN call.

    oneDNN builds (and caches, with its JIT code and reordered weights) one kernel per input
    shape; padding the rows to `padded_rows` keeps the number of shapes small, so memory stays
    flat however the batch varies (the unpadded call grows the process by ~0.5 MB per new row
    count) and kernels are rarely rebuilt.
    """
    m = x.shape[0]
    mp = padded_rows(m)
    if mp != m:
        x = F.pad(x, (0, 0, 0, mp - m))
    if gelu:
        y = torch.ops.mkldnn._linear_pointwise(x, w, b, "gelu", [], "tanh")
    else:
        y = torch.ops.mkldnn._linear_pointwise(x, w, b, "none", [], "")
    return y[:m] if mp != m else y


def gelu_tanh(x: torch.Tensor) -> torch.Tensor:
    """GPT-2's tanh GELU; without autograd in float32, as x * sigmoid(2z) in place (the same
    function, 0.5 * (1 + tanh(z)) = sigmoid(2z), about twice as fast on CPU)."""
    if torch.is_grad_enabled() or x.dtype != torch.float32:
        return F.gelu(x, approximate="tanh")
    c = 2.0 * math.sqrt(2.0 / math.pi)
    g = x * x
    return g.mul_(0.044715 * c).add_(c).mul_(x).sigmoid_().mul_(x)


def packed_inputs(
    model: UserLM, batch: dict[str, torch.Tensor]
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Input embeddings, position ids and attention mask of packed rows.

    The mask is block-diagonal causal (a token sees its own session only): bool (B, 1, T, T),
    or with recency attention an additive (B, H, T, T) bias that also limits each token to the
    profile and the last `attention_window_steps` steps (position ids are then all 0).
    """
    seg = batch["segment_ids"]
    t = seg.shape[1]
    causal = torch.ones(t, t, dtype=torch.bool, device=seg.device).tril()
    mask = (seg[:, :, None] == seg[:, None, :]) & causal  # (B, T, T)
    x = model.embed(
        batch["input_ids"], batch["roles"], batch["slots"], batch["items"], batch.get("summary")
    )
    window = model.sim_config.attention_window_steps
    if not window:
        return x, batch["position_ids"], mask[:, None]
    steps = batch["step_ids"]
    bias = window_bias(steps, steps, mask, window, recency_slopes(model.config.n_head))
    return x, torch.zeros_like(batch["position_ids"]), bias


def packed_loss(
    model: UserLM, batch: dict[str, torch.Tensor]
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Teacher-forced loss on packed rows: only the user's tokens (responses, cont/leave) count.

    Args:
        batch: (B, T) tensors input_ids, roles, slots, items, summary, position_ids, step_ids,
            segment_ids, target_kind, target (see simulators.tokenization).

    Returns:
        (mean loss over targets, summed response NLL, summed leave NLL, number of targets).
    """
    x, pos, mask = packed_inputs(model, batch)
    h = model.transformer(x, pos, mask)
    kind = batch["target_kind"]
    sel = kind > 0
    logits = model.output_logits(h[sel]).float()  # (N, 5)
    k = kind[sel]
    tgt = batch["target"][sel]
    resp = k == 1
    resp_nll = F.cross_entropy(logits[resp, :3], tgt[resp], reduction="sum")
    leave_nll = F.cross_entropy(logits[~resp, 3:5], tgt[~resp], reduction="sum")
    n = sel.sum()
    return (resp_nll + leave_nll) / n.clamp(min=1), resp_nll, leave_nll, n


def packed_probs(
    model: UserLM, batch: dict[str, torch.Tensor]
) -> tuple[torch.Tensor, torch.Tensor]:
    """Predicted distributions at every target of packed rows.

    Returns:
        (probs (N, 5) with the 3 response or 2 leave classes filled and the rest 0,
        target_kind (N,)), in row-major position order.
    """
    x, pos, mask = packed_inputs(model, batch)
    h = model.transformer(x, pos, mask)
    kind = batch["target_kind"]
    sel = kind > 0
    logits = model.output_logits(h[sel]).float()
    k = kind[sel]
    probs = torch.zeros_like(logits)
    resp = k == 1
    probs[resp, :3] = torch.softmax(logits[resp, :3], -1)
    probs[~resp, 3:5] = torch.softmax(logits[~resp, 3:5], -1)
    return probs, k
