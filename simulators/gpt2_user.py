"""GPT2UserSimulator: the GPT-2 user model as a batched simulator with a persistent KV cache.

One `step` answers a slate for every row of the batch. The step's whole block (the slate, each
item re-stated before its response, the responses) is decoded speculatively: one forward runs
all 1 + 3k tokens with every response drafted as SKIP, responses are sampled slot by slot from
env-supplied uniforms until one differs from its draft, and only those rows run again from that
token (a slate with at most one click: two forwards instead of the k + 1 of slot-by-slot
decoding, with identical probabilities). Rows never influence each other. History is never
re-encoded: keys and values stay in a preallocated cache. When a row's context is full it is
refilled with its profile and its last `window_steps` steps (the documented sliding-window
scheme; training windows long sessions the same way), so memory is bounded whatever the episode
length. A simulator with recency attention (`attention_window_steps` N > 0) needs no refill:
step s writes its block into slot s mod (N + 1) of a ring after the profile, and the attention
bias (per-head penalty by step distance, -inf outside the window) says what each query sees, so
every step after the first N costs the same and the cache never grows.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file
from transformers import GPT2Config, GPT2LMHeadModel

from simulators.base import NUM_RESPONSES, StepOutcome
from simulators.catalog import ProfileEncoder, item_category_index, item_feature_matrix
from simulators.logs import atomic_write, atomic_write_text
from simulators.tokenization import (
    BOS,
    CONT,
    PAD,
    PROFILE_BASE,
    PROFILE_PAD,
    RESPONSE_TOKENS,
    ROLE_CONTROL,
    ROLE_PROFILE,
    ROLE_RESPONSE,
    ROLE_RESTATED,
    ROLE_SLATE,
    START,
    SUMMARY_BUY_LEVELS,
    SUMMARY_CLICK_LEVELS,
    UNK_ITEM,
    SimTokenizer,
    step_block_length,
    text_buckets,
)
from simulators.user_lm import (
    CachedAttention,
    SimulatorConfig,
    StaticKVCache,
    UserLM,
    WindowedCachedAttention,
    _FreshRowsAttention,
    make_gpt2_config,
    recency_slopes,
    window_bias,
)

DEFAULT_SIMULATOR_DIR = Path(__file__).resolve().parent / "default"
CHECKPOINT_FILES = (
    "config.json",
    "model.safetensors",
    "population.safetensors",
    "vocab.json",
    "simulator_config.json",
)
_DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}
_CPU_TOKENS_PER_FORWARD = 4096
"""Tokens per forward on CPU (larger batches run in row blocks)."""


class CheckpointError(ValueError):
    """A simulator checkpoint is missing, corrupt or inconsistent; the message names the file."""


def item_text_matrix(titles: list[str], cfg: SimulatorConfig) -> torch.Tensor:
    """(N, text_max_words) hashed word buckets of item titles (0 pads)."""
    out = torch.zeros(len(titles), cfg.text_max_words, dtype=torch.long)
    for i, title in enumerate(titles):
        b = text_buckets(title or "", cfg.text_buckets, cfg.text_max_words)
        out[i, : len(b)] = torch.tensor(b, dtype=torch.long)
    return out


def build_user_lm(
    tokenizer: SimTokenizer,
    items: pd.DataFrame,
    sim_config: SimulatorConfig,
    size: str = "small",
    base_model: str | None = None,
    item_known: np.ndarray | None = None,
) -> UserLM:
    """A fresh UserLM for a catalog: from a named size, or from pretrained GPT-2 weights.

    `base_model` ('gpt2', a hub name, or a local directory) loads `GPT2LMHeadModel.from_pretrained`
    and resizes its embeddings to our vocabulary; the network keeps its pretrained blocks.
    """
    if base_model:
        gpt2 = GPT2LMHeadModel.from_pretrained(base_model)
        gpt2.resize_token_embeddings(tokenizer.vocab_size)
        gpt2.config.tie_word_embeddings = False
        gpt2.lm_head.weight = torch.nn.Parameter(gpt2.lm_head.weight.detach().clone())
        if gpt2.config.n_positions < sim_config.context_length:
            raise ValueError(
                f"base model has n_positions {gpt2.config.n_positions} < context_length "
                f"{sim_config.context_length}"
            )
    else:
        gpt2 = GPT2LMHeadModel(
            make_gpt2_config(size, tokenizer.vocab_size, sim_config.context_length)
        )
    feats = torch.from_numpy(item_feature_matrix(items))
    text = item_text_matrix(
        items.get("title", pd.Series([""] * len(items))).fillna("").astype(str).tolist(), sim_config
    )
    known = (
        torch.ones(len(items), dtype=torch.bool)
        if item_known is None
        else torch.from_numpy(item_known)
    )
    category = torch.from_numpy(item_category_index(items))
    return UserLM(gpt2, sim_config, feats, text, known, category)


class GPT2UserSimulator:
    """The GPT-2 user as a `BatchedUserSimulator` (see module docstring)."""

    def __init__(
        self,
        model: UserLM,
        tokenizer: SimTokenizer,
        profile_encoder: ProfileEncoder,
        population: np.ndarray,
        items: pd.DataFrame,
        extra: dict[str, Any] | None = None,
        device: str | torch.device = "cpu",
        dtype: str = "float32",
        capacity: int = 1,
    ) -> None:
        """Assemble a simulator from its parts (use `from_pretrained` to load one)."""
        if dtype not in _DTYPES:
            raise ValueError(f"dtype must be one of {sorted(_DTYPES)}, got {dtype!r}")
        self.device = torch.device(device)
        self.dtype = _DTYPES[dtype]
        self.model = model.to(self.device).eval()
        if self.dtype != torch.float32:
            self.model.gpt2.to(self.dtype)
        self.tokenizer = tokenizer
        self.profile_encoder = profile_encoder
        self.population = np.asarray(population, dtype=np.int64)
        self.items = items.reset_index(drop=True)
        self.extra = dict(extra or {})
        self.num_items = tokenizer.num_items
        self.slate_size_max = None
        self.item_features = item_feature_matrix(self.items)
        self.item_category = item_category_index(self.items)
        """Category index of every item (what the session-summary channel counts by)."""
        self._summary_on = model.summary_emb is not None
        self.sim_config: SimulatorConfig = model.sim_config
        self.prefix_length = 1 + tokenizer.profile_slots
        self._item_base = torch.tensor(tokenizer.item_base, device=self.device)
        self._resp_tokens = torch.as_tensor(RESPONSE_TOKENS, device=self.device)
        self.capacity = 0
        self.cache: StaticKVCache | None = None
        self._side: torch.Tensor | None = None
        self._side_key: tuple | None = None
        self._out_w: torch.Tensor | None = None
        self._out_key: tuple | None = None
        self._layouts: dict[int, tuple[torch.Tensor, torch.Tensor, torch.Tensor]] = {}
        self.window = self.sim_config.attention_window_steps
        """Recency-attention window in steps (0: absolute positions and refills)."""
        self._slopes = recency_slopes(model.config.n_head).to(self.device)
        self._ring_block: int | None = None
        self.stats: dict[str, float] = {"flops": 0.0, "tokens": 0, "forwards": 0}
        """Work done by the forwards so far: matmul FLOPs (attention over each query's causal
        length), tokens and forward calls (read by `llm-usersim speed`)."""
        self._alloc(max(capacity, 1))

    # --------------------------------------------------------------------------- catalog
    def items_table(self) -> pd.DataFrame:
        """The catalog this simulator knows (item_id, title, category, price)."""
        return self.items.copy()

    # --------------------------------------------------------------------------- state
    def cache_positions(self, slate_size: int | None = None) -> int:
        """Positions a cache row holds: the whole context, or with recency attention only the
        profile and the ring of window + 1 step blocks, 4x less at the default's context
        (the ring's block length follows the slate size: the given one, else the one of the
        running sessions; before any step only the profile is held)."""
        if not self.window:
            return self.sim_config.context_length
        block = self._ring_block if slate_size is None else step_block_length(slate_size)
        if block is None:
            return self.prefix_length
        return min(self.sim_config.context_length, self.prefix_length + (self.window + 1) * block)

    def _alloc(self, capacity: int) -> None:
        cfg = self.model.config
        c = self.cache_positions()
        self.capacity = capacity
        self.cache = StaticKVCache(
            cfg.n_layer, capacity, cfg.n_head, c, cfg.n_embd // cfg.n_head, self.device, self.dtype
        )
        z = lambda fill: torch.full((capacity, c), fill, dtype=torch.long, device=self.device)
        self.tok_ids, self.tok_roles, self.tok_slots, self.tok_items = z(PAD), z(0), z(0), z(-1)
        self.tok_summary = z(0)
        self.steps_done = torch.zeros(capacity, dtype=torch.long, device=self.device)
        n_cat = int(self.item_category.max()) + 1 if self._summary_on else 0
        self.consumed = torch.zeros(capacity, n_cat, 2, dtype=torch.int16, device=self.device)
        """Session summary of every row: (clicks, buys) per category so far, capped."""

    @property
    def _token_buffers(self) -> tuple[torch.Tensor, ...]:
        """The five token channels of every cache row (ids, roles, slots, items, summary),
        each (cap, C)."""
        return self.tok_ids, self.tok_roles, self.tok_slots, self.tok_items, self.tok_summary

    def _fit_ring(self) -> None:
        """Resize the cache's position axis to the ring's block length, keeping every row's
        contents (runs when the first step fixes the block length, or a new slate size
        changes it between sessions)."""
        c = self.cache_positions()
        if self.cache is None or self.cache.context == c:
            return
        old, bufs, steps, consumed = self.cache, self._token_buffers, self.steps_done, self.consumed
        self._alloc(self.capacity)
        self.consumed.copy_(consumed)
        keep = min(c, old.context)
        self.cache.k[..., :keep, :] = old.k[..., :keep, :]
        self.cache.v[..., :keep, :] = old.v[..., :keep, :]
        self.cache.lengths.copy_(old.lengths.clamp(max=c))
        for new, prev in zip(self._token_buffers, bufs):
            new[:, :keep] = prev[:, :keep]
        self.steps_done.copy_(steps)

    def ensure_capacity(self, capacity: int) -> None:
        """Grow the batch (drops all sessions: call before starting any)."""
        if capacity > self.capacity:
            self._alloc(capacity)

    def close(self) -> None:
        """Release the cache (and GPU memory)."""
        self.cache = None
        self.capacity = 0
        if self.device.type == "cuda":
            torch.cuda.empty_cache()

    def _item_tokens(self, items: torch.Tensor) -> torch.Tensor:
        known = self.model.item_known[items]
        return torch.where(known, self._item_base + items, torch.full_like(items, UNK_ITEM))

    # --------------------------------------------------------------------------- hot path
    def _item_side(self) -> torch.Tensor:
        """(num_items + 1, d) item side embeddings (row 0: none), recomputed when weights change.

        `UserLM.embed` averages up to text_max_words word embeddings per item token; at inference
        the weights are fixed, so the per-item sum is computed once (the training path keeps
        the original).
        """
        m = self.model
        params = (m.feat_proj.weight, m.word_emb.weight, m.item_features, m.item_text)
        key = tuple((p.data_ptr(), p._version) for p in params)
        if self._side_key != key:
            with torch.inference_mode():
                words = m.item_text  # (N, W)
                count = (words > 0).sum(-1, keepdim=True).clamp(min=1).float()
                side = m.feat_proj(m.item_features.float()) + m.word_emb(words).sum(-2) / count
                self._side = torch.cat([side.new_zeros(1, side.shape[1]), side])
            self._side_key = key
        return self._side

    def _embed(
        self,
        ids: torch.Tensor,
        roles: torch.Tensor,
        slots: torch.Tensor,
        items: torch.Tensor,
        summary: torch.Tensor,
    ) -> torch.Tensor:
        """`UserLM.embed` with the per-item side embeddings precomputed; (B, T, d) in self.dtype."""
        m = self.model
        x = m.gpt2.transformer.wte(ids).float()
        x = x + m.role_emb(roles) + m.slot_emb(slots.clamp(max=self.sim_config.max_slots))
        x = x + self._item_side()[items + 1]
        if self._summary_on:
            x = x + m.summary_emb(summary).float()
        return x.to(self.dtype)

    def _output_weight(self) -> torch.Tensor:
        """(5, d) float32 rows of lm_head read by UserLM.output_logits."""
        m = self.model
        w = m.gpt2.lm_head.weight
        key = (w.data_ptr(), w._version)
        if self._out_key != key:
            with torch.inference_mode():
                self._out_w = w[m.output_ids].float()
            self._out_key = key
        return self._out_w

    def _count_flops(self, rows: int, t: int, attended: float) -> None:
        """Add the matmul FLOPs of a forward of `rows` x `t` tokens (attended: keys summed over queries)."""
        cfg = self.model.config
        d, nl = cfg.n_embd, cfg.n_layer
        self.stats["tokens"] += rows * t
        self.stats["forwards"] += 1
        self.stats["flops"] += rows * t * (24 * d * d * nl + 10 * d) + 4 * d * nl * attended

    @torch.inference_mode()
    def start_sessions(self, rows: np.ndarray, profiles: np.ndarray) -> None:
        """Encode BOS + profile for rows into the cache (the rest of each row is discarded)."""
        rows_np = np.asarray(rows, dtype=np.int64)
        if len(rows_np) == 0:
            return
        if self.cache is None or rows_np.max() >= self.capacity:
            self._alloc(max(int(rows_np.max()) + 1, self.capacity))
        n, p = len(rows_np), self.prefix_length
        # SimTokenizer.prefix, vectorised over rows
        prof = np.asarray(profiles, dtype=np.int64).reshape(n, -1)[:, : p - 1]
        ids = np.full((n, p), PROFILE_PAD, dtype=np.int64)
        ids[:, 0] = BOS
        ids[:, 1 : 1 + prof.shape[1]] = np.where(prof >= 0, PROFILE_BASE + prof, PROFILE_PAD)
        roles = np.full((n, p), ROLE_PROFILE, dtype=np.int64)
        roles[:, 0] = ROLE_CONTROL
        rows_t = torch.as_tensor(rows_np, device=self.device)
        self._encode_rows(
            rows_t,
            torch.as_tensor(ids, device=self.device),
            torch.as_tensor(roles, device=self.device),
            torch.zeros(n, p, dtype=torch.long, device=self.device),
            torch.full((n, p), -1, dtype=torch.long, device=self.device),
            torch.zeros(n, p, dtype=torch.long, device=self.device),
        )
        self.steps_done[rows_t] = 0
        self.consumed[rows_t] = 0

    def _encode_rows(
        self,
        rows: torch.Tensor,
        ids: torch.Tensor,
        roles: torch.Tensor,
        slots: torch.Tensor,
        items: torch.Tensor,
        summary: torch.Tensor,
    ) -> None:
        """Encode whole sequences (n, T) from position 0 into the cache rows (in row blocks)."""
        n, t = ids.shape
        block = n if self.device.type != "cpu" else max(1, _CPU_TOKENS_PER_FORWARD // t)
        nh = self.model.config.n_head
        for lo in range(0, n, block):
            hi = min(n, lo + block)
            pos = torch.arange(t, device=self.device).expand(hi - lo, t)
            x = self._embed(ids[lo:hi], roles[lo:hi], slots[lo:hi], items[lo:hi], summary[lo:hi])
            # UserLM.transformer(x, pos, causal mask, cache, pos, rows) with is_causal attention
            attend = _FreshRowsAttention(nh, self.cache, rows[lo:hi], pos, None)
            self.model._blocks(x, torch.zeros_like(pos) if self.window else pos, attend)
            self._count_flops(hi - lo, t, (hi - lo) * t * (t + 1) / 2)
        for buf, val in zip(self._token_buffers, (ids, roles, slots, items, summary)):
            buf[rows, :t] = val
        self.cache.lengths[rows] = t

    def _refill(self, block: int) -> None:
        """Sliding window: rows without room for a step keep profile + last window_steps steps."""
        if self.window:  # the ring never fills
            return
        c = self.sim_config.context_length
        full = torch.nonzero(self.cache.lengths + block > c).flatten()
        if len(full) == 0:
            return
        p = self.prefix_length
        w = max(1, min(self.sim_config.window_steps, (c - p) // block - 1))
        keep = p + w * block
        starts = self.cache.lengths[full] - w * block  # (n,)
        tail = starts[:, None] + torch.arange(w * block, device=self.device)
        take = torch.cat([torch.arange(p, device=self.device).expand(len(full), p), tail], dim=1)
        bufs = [torch.gather(b[full], 1, take) for b in self._token_buffers]
        self._encode_rows(full, *bufs)
        assert int(self.cache.lengths[full].max()) == keep

    def _forward(
        self,
        rows: torch.Tensor | None,
        start: torch.Tensor,
        ids: torch.Tensor,
        roles: torch.Tensor,
        slots: torch.Tensor,
        items: torch.Tensor,
        summary: torch.Tensor,
        steps: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Append tokens (R, t) to cache rows `rows` (all rows if None) at offsets start (R,).

        With recency attention, `steps` (R,) are the rows' step indices: the tokens belong to
        that step's block, written at `start` inside its ring slot.

        Returns the five output logits at every new position, (R, t, 5) float32. On CPU, large
        batches run in row blocks of about _CPU_TOKENS_PER_FORWARD tokens (temporaries stay
        small enough to be recycled instead of page-faulted in fresh every call).
        """
        r, t = ids.shape
        dev = self.device
        pos = start[:, None] + torch.arange(t, device=dev)  # (R, t)
        out = torch.empty(r, t, 5, device=dev)
        block = r if dev.type != "cpu" else max(1, _CPU_TOKENS_PER_FORWARD // t)
        c = self.sim_config.context_length
        for lo in range(0, r, block):
            hi = min(r, lo + block)
            p = pos[lo:hi]
            x = self._embed(ids[lo:hi], roles[lo:hi], slots[lo:hi], items[lo:hi], summary[lo:hi])
            sub = None if rows is None else rows[lo:hi]
            if self.window:
                n, bias = self._ring_bias(steps[lo:hi], p)
                attend = WindowedCachedAttention(self.cache, p, sub, n, bias, row_offset=lo)
                h = self.model._blocks(x, torch.zeros_like(p), attend)
                out[lo:hi] = h.float() @ self._output_weight().t()
                self._count_flops(hi - lo, t, float(torch.isfinite(bias[:, 0]).sum()))
                continue
            last = p[:, -1]
            n = min(c, 32 * math.ceil((int(last.max()) + 1) / 32))
            keys = torch.arange(n, device=dev)
            bias = torch.zeros(hi - lo, 1, t, n, dtype=self.dtype, device=dev)
            bias.masked_fill_(keys > p[:, None, :, None], float("-inf"))
            attend = CachedAttention(self.cache, p, sub, n, bias, row_offset=lo)
            h = self.model._blocks(x, p, attend)  # UserLM.transformer's cache path
            # UserLM.output_logits in float32: a bfloat16 matmul would build a oneDNN kernel
            # for every distinct row count
            out[lo:hi] = h.float() @ self._output_weight().t()
            attended = float((last + 1).sum()) * t - (hi - lo) * t * (t - 1) / 2
            self._count_flops(hi - lo, t, attended)
        return out

    def _ring_length(self, steps: torch.Tensor) -> int:
        """Cache positions in use: the profile and the ring slots written so far."""
        slots = min(self.window + 1, int(steps.max()) + 1) if len(steps) else 1
        return self.prefix_length + slots * self._ring_block

    def ring_key_steps(self, steps: torch.Tensor, n: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Which step each of the first n cache positions holds, for rows at step `steps` (R,).

        Returns (R, n) step indices (-1: the profile; a large negative number, never visible,
        for ring slots this session has not written yet; the query's own slot reads as its own
        step, and `_ring_bias` hides its positions after the query) and each position's offset
        within its block (n,), -1 for the profile.
        """
        p, block, w1 = self.prefix_length, self._ring_block, self.window + 1
        pos = torch.arange(n, device=self.device)
        slot = (pos - p).clamp(min=0) // block
        offset = torch.where(pos < p, -1, (pos - p) % block)
        back = torch.remainder(steps[:, None] % w1 - slot[None, :], w1)  # steps ago (R, n)
        key = steps[:, None] - back
        key = torch.where(key < 0, torch.iinfo(torch.long).min // 2, key)  # never written
        return torch.where((pos < p)[None, :], -1, key), offset

    def _ring_bias(self, steps: torch.Tensor, positions: torch.Tensor) -> tuple[int, torch.Tensor]:
        """Attended length n and bias (R, H, t, n) of queries at cache `positions` (R, t) of
        rows at step `steps` (R,) (recency attention; see `window_bias`)."""
        n = self._ring_length(steps)
        key_steps, key_offset = self.ring_key_steps(steps, n)
        q_offset = (positions - self.prefix_length) % self._ring_block  # (R, t)
        same = key_steps[:, None, :] == steps[:, None, None]  # keys of the query's own block
        allowed = ~same | (key_offset[None, None, :] <= q_offset[:, :, None])
        query_steps = steps[:, None].expand_as(positions)
        return n, window_bias(
            query_steps, key_steps, allowed, self.window, self._slopes, self.dtype
        )

    @torch.inference_mode()
    def step(
        self,
        rows: np.ndarray,
        slates: np.ndarray,
        uniforms: np.ndarray | None = None,
        forced_responses: np.ndarray | None = None,
        forced_leave: np.ndarray | None = None,
        peek: bool = False,
    ) -> StepOutcome:
        """Answer slates (len(rows), k) of item indices; see BatchedUserSimulator.

        With `peek=True` nothing advances: the probabilities of a hypothetical slate are
        computed at the current state (what a model-based agent asks), and the next real step
        overwrites the scratch positions.

        The step is decoded speculatively: the whole block (slate, re-stated items, responses,
        1 + 3k tokens) goes through the model in one forward with every response drafted as
        SKIP (or as the forced response). Slot j's probabilities are exact as long as the
        responses before it match their drafts, so responses are sampled slot by slot until the
        first one that differs from its draft; only rows with such a slot run again, from that
        token on, with the sampled response in place. Results equal the slot-by-slot decoding
        (each probability is conditioned on exactly the same tokens); a slate with at most one
        click costs two forwards instead of k + 1, and the cache is read twice instead of
        k + 1 times.

        When most rows step, every cache row runs the first forward (rows not in `rows` get
        padding that is overwritten later and do not advance), which keeps it free of gathers.
        """
        rows_np = np.asarray(rows, dtype=np.int64)
        slates_np = np.asarray(slates, dtype=np.int64)
        nb, k = slates_np.shape
        dev, cap = self.device, self.capacity
        block = step_block_length(k)
        if block + self.prefix_length > self.sim_config.context_length:
            raise ValueError(
                f"a slate of {k} items needs {block} tokens: more than the context "
                f"({self.sim_config.context_length}) minus the profile allows"
            )
        self._refill(block)
        if self.window:
            self._check_ring(block, peek)
        all_rows = nb == cap and np.array_equal(rows_np, np.arange(cap))
        rows_t = torch.as_tensor(rows_np, device=dev)
        # the first forward: every cache row (no gathers) unless few rows step
        first = None if 2 * nb > cap else rows_t
        m = cap if first is None else nb
        slate_m = torch.zeros(m, k, dtype=torch.long, device=dev)
        u = torch.zeros(m, k + 1, dtype=torch.float32, device=dev)
        draft = torch.zeros(m, k, dtype=torch.long, device=dev)  # Response.SKIP
        sel = rows_t if first is None else slice(None)
        slate_m[sel] = torch.as_tensor(slates_np, device=dev)
        if uniforms is not None:
            u[sel] = torch.as_tensor(np.asarray(uniforms, dtype=np.float32), device=dev)
        forced = forced_responses is not None
        if forced:
            draft[sel] = torch.as_tensor(np.asarray(forced_responses, dtype=np.int64), device=dev)
        state_rows = torch.arange(cap, device=dev) if first is None else rows_t
        steps = self.steps_done[state_rows]
        if self.window:  # the step's slot of the ring
            cur = self.prefix_length + (steps % (self.window + 1)) * self._ring_block
        else:
            cur = self.cache.lengths[state_rows]  # (m,) block start
        ids, roles, slots, items, summary = self._block_tokens(
            slate_m, draft, self.steps_done[state_rows] == 0, state_rows
        )
        resp_pos = k + 2 + 2 * torch.arange(k, device=dev)  # r_j in the block
        item_pos = resp_pos - 1  # re-stated i_j
        probs = torch.zeros(m, k, NUM_RESPONSES, device=dev)
        responses = draft.clone()
        leave_prob = torch.zeros(m, device=dev)
        fixed = torch.zeros(m, dtype=torch.long, device=dev)  # slots already decided
        todo = torch.arange(m, device=dev)  # local indices still decoding
        w0 = 0  # first block position recomputed this round
        while len(todo):
            whole = len(todo) == m
            if whole:  # first round
                cache_rows, loc = first, slice(None)
            else:
                cache_rows, loc = state_rows[todo], todo
            logits = self._forward(
                cache_rows,
                cur[loc] + w0,
                ids[loc, w0:],
                roles[loc, w0:],
                slots[loc, w0:],
                items[loc, w0:],
                summary[loc, w0:],
                steps[loc],
            )  # (R, block - w0, 5)
            j0 = max(0, -(-(w0 - k - 1) // 2))  # first slot whose i_j is in the window
            if j0 < k:
                js = torch.arange(j0, k, device=dev)
                p = torch.softmax(logits[:, item_pos[j0:] - w0, :3], dim=-1)  # (R, k - j0, 3)
                if forced:
                    sampled = draft[loc, j0:]
                else:
                    cdf = torch.cumsum(p, dim=-1)[..., :-1]
                    sampled = (u[loc, j0:k, None] >= cdf).sum(-1)
                open_ = js[None, :] >= fixed[loc][:, None]
                miss = open_ & (sampled != responses[loc, j0:])
                stop = torch.where(miss.any(1), miss.int().argmax(1) + j0, k)  # first miss or k
                take = open_ & (js[None, :] <= stop[:, None])
                probs[loc, j0:] = torch.where(take[..., None], p, probs[loc, j0:])
                responses[loc, j0:] = torch.where(take, sampled, responses[loc, j0:])
            else:  # only the leave decision is left
                stop = torch.full((len(todo),), k, dtype=torch.long, device=dev)
            done = stop == k
            lp = torch.softmax(logits[:, -1, 3:5], dim=-1)[:, 1]
            leave_prob[loc] = torch.where(done, lp, leave_prob[loc])
            # rows that diverged: put the sampled response in the block, go again from there
            if bool(done.all()):
                break
            again = todo[~done]
            s_again = stop[~done]
            fixed[again] = s_again + 1
            ids[again, resp_pos[s_again]] = self._resp_tokens[responses[again, s_again]]
            todo = again
            w0 = int(resp_pos[s_again].min())
        if not self.window:  # (the tokens a refill re-encodes)
            self._finish_block(state_rows, cur, ids, roles, slots, items, summary)
        if not peek:
            if self._summary_on:
                self._record_consumption(rows_t, slate_m[sel], responses[sel])
            if not self.window:
                self.cache.lengths[rows_t] += block
            self.steps_done[rows_t] += 1
        out_sel = slice(None) if (all_rows or first is not None) else rows_t
        responses_np = responses[out_sel].cpu().numpy()
        probs_np = probs[out_sel].double().cpu().numpy()
        leave_prob_np = leave_prob[out_sel].double().cpu().numpy()
        if forced_leave is not None:
            leave = np.asarray(forced_leave, dtype=bool)
        elif uniforms is not None:
            leave = np.asarray(uniforms)[:, k] < leave_prob_np
        else:
            leave = np.zeros(nb, dtype=bool)
        return StepOutcome(responses_np, probs_np, leave, leave_prob_np)

    def _check_ring(self, block: int, peek: bool) -> None:
        """Fix the ring's block length at the first step; a different slate size later is an
        error while sessions of the old one are under way (a peek at a shorter slate fits its
        slot and is fine)."""
        need = self.prefix_length + (self.window + 1) * block
        if need > self.sim_config.context_length:
            raise ValueError(
                f"a ring of {self.window + 1} steps of {block} tokens needs {need} cache positions, "
                f"more than context_length {self.sim_config.context_length}"
            )
        if self._ring_block == block:
            return
        if self._ring_block is not None:
            if peek and block < self._ring_block:
                return
            if bool((self.steps_done > 0).any()):
                raise ValueError(
                    f"slate size changed mid-session ({(self._ring_block - 1) // 3} -> "
                    f"{(block - 1) // 3} items): a recency-attention simulator keeps one slate "
                    "size while its sessions run"
                )
        self._ring_block = block
        self._fit_ring()

    def _block_tokens(
        self,
        slate: torch.Tensor,
        responses: torch.Tensor,
        first_step: torch.Tensor,
        state_rows: torch.Tensor,
    ) -> tuple[torch.Tensor, ...]:
        """The step's tokens (R, 1 + 3k) in five channels (see SimTokenizer.encode_session)
        for cache rows `state_rows` (R,)."""
        r, k = slate.shape
        dev = self.device
        item_tok = self._item_tokens(slate)  # (R, k)
        ids = torch.empty(r, 1 + 3 * k, dtype=torch.long, device=dev)
        ids[:, 0] = torch.where(first_step, START, CONT)
        ids[:, 1 : 1 + k] = item_tok
        ids[:, 1 + k :: 2] = item_tok
        ids[:, 2 + k :: 2] = self._resp_tokens[responses]
        roles, slots, gather = self._block_layout(k)
        items = self._block_items(slate, gather)
        if self._summary_on:
            got = self.consumed[state_rows[:, None], self.model.item_category[slate]].long()
            codes = got[..., 0] * SUMMARY_BUY_LEVELS + got[..., 1]  # (R, k): summary_codes
            summary = self._block_items(codes, gather).clamp(min=0)
        else:
            summary = torch.zeros_like(items)
        return ids, roles.expand(r, -1), slots.expand(r, -1), items, summary

    def _record_consumption(
        self, rows: torch.Tensor, slate: torch.Tensor, responses: torch.Tensor
    ) -> None:
        """Add a step's clicks and buys to its rows' session summary, capped where
        `summary_codes` caps them (accumulating, since a sampled slate may hold two clicks of
        one category)."""
        r_idx, j_idx = torch.nonzero(responses != 0, as_tuple=True)  # not Response.SKIP
        if len(r_idx) == 0:
            return
        row, cat = rows[r_idx], self.model.item_category[slate[r_idx, j_idx]]
        add = torch.stack([torch.ones_like(cat), (responses[r_idx, j_idx] == 2).long()], dim=1)
        self.consumed.index_put_((row, cat), add.to(self.consumed.dtype), accumulate=True)
        caps = torch.tensor(
            [SUMMARY_CLICK_LEVELS - 1, SUMMARY_BUY_LEVELS - 1], device=self.device
        ).to(self.consumed.dtype)
        self.consumed[row, cat] = torch.minimum(self.consumed[row, cat], caps)

    def _block_layout(self, k: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Roles, slots (1, 1 + 3k) and the item gather index into [-1, slate...] of a block."""
        if k not in self._layouts:
            n = 1 + 3 * k
            roles = np.empty(n, np.int64)
            slots = np.zeros(n, np.int64)
            gather = np.zeros(n, np.int64)  # 0: no item, j + 1: slate item j
            roles[0] = ROLE_CONTROL
            roles[1 : 1 + k] = ROLE_SLATE
            slots[1 : 1 + k] = np.arange(1, k + 1)
            gather[1 : 1 + k] = np.arange(1, k + 1)
            roles[1 + k :: 2] = ROLE_RESTATED
            roles[2 + k :: 2] = ROLE_RESPONSE
            slots[1 + k :: 2] = np.arange(1, k + 1)
            slots[2 + k :: 2] = np.arange(1, k + 1)
            gather[1 + k :: 2] = np.arange(1, k + 1)
            self._layouts[k] = tuple(
                torch.as_tensor(a, device=self.device)[None] for a in (roles, slots, gather)
            )
        return self._layouts[k]

    def _block_items(self, slate: torch.Tensor, gather: torch.Tensor) -> torch.Tensor:
        padded = torch.cat([torch.full_like(slate[:, :1], -1), slate], dim=1)
        return torch.gather(padded, 1, gather.expand(len(slate), -1))

    def _finish_block(
        self,
        state_rows: torch.Tensor,
        cur: torch.Tensor,
        ids: torch.Tensor,
        roles: torch.Tensor,
        slots: torch.Tensor,
        items: torch.Tensor,
        summary: torch.Tensor,
    ) -> None:
        """Record the block's final tokens (for the sliding-window refill)."""
        pos = cur[:, None] + torch.arange(ids.shape[1], device=self.device)
        for buf, val in zip(self._token_buffers, (ids, roles, slots, items, summary)):
            if len(state_rows) == self.capacity:
                buf.scatter_(1, pos, val)
            else:
                buf[state_rows[:, None], pos] = val

    # --------------------------------------------------------------------------- save / load
    def save_pretrained(self, directory: str | Path) -> Path:
        """Write config.json, model.safetensors, population.safetensors, vocab.json and
        simulator_config.json (each atomically; no pickle)."""
        out = Path(directory)
        out.mkdir(parents=True, exist_ok=True)
        state = {
            k: v.detach()
            .to("cpu", torch.float32 if v.is_floating_point() else v.dtype)
            .contiguous()
            for k, v in self.model.state_dict().items()
        }
        atomic_write(
            out / "model.safetensors", lambda p: save_file(state, p, metadata={"format": "pt"})
        )
        atomic_write(
            out / "population.safetensors",
            lambda p: save_file(
                {"population": torch.from_numpy(self.population.astype(np.int16))}, p
            ),
        )
        atomic_write_text(out / "config.json", self.model.config.to_json_string())
        atomic_write_text(out / "vocab.json", json.dumps(self.tokenizer.to_dict()) + "\n")
        meta = {
            "simulator": self.sim_config.to_dict(),
            "profile_encoder": self.profile_encoder.to_dict(),
            "items": {
                c: self.items[c].tolist()
                for c in ("item_id", "title", "category", "price")
                if c in self.items
            },
            "extra": self.extra,
        }
        atomic_write_text(out / "simulator_config.json", json.dumps(meta, indent=1) + "\n")
        return out

    @classmethod
    def from_pretrained(
        cls, directory: str | Path, device: str = "cpu", dtype: str = "float32", capacity: int = 1
    ) -> GPT2UserSimulator:
        """Load a checkpoint written by save_pretrained (safetensors and JSON only)."""
        d = Path(directory)
        if not d.is_dir():
            raise CheckpointError(f"{d}: simulator checkpoint directory does not exist")
        for name in CHECKPOINT_FILES:
            if not (d / name).is_file():
                raise CheckpointError(f"{d / name}: file is missing from the simulator checkpoint")
        meta = _read_json(d / "simulator_config.json")
        vocab = _read_json(d / "vocab.json")
        try:
            gpt2_config = GPT2Config.from_dict(_read_json(d / "config.json"))
            sim_config = SimulatorConfig(**meta["simulator"])
            tokenizer = SimTokenizer.from_dict(vocab)
            encoder = ProfileEncoder.from_dict(meta["profile_encoder"])
            items = pd.DataFrame(meta["items"])
        except (KeyError, TypeError, ValueError) as exc:
            raise CheckpointError(
                f"{d}: inconsistent simulator config or vocabulary ({exc})"
            ) from None
        if gpt2_config.vocab_size != tokenizer.vocab_size:
            raise CheckpointError(
                f"{d / 'config.json'}: vocab_size {gpt2_config.vocab_size} does not match "
                f"vocab.json ({tokenizer.vocab_size} tokens)"
            )
        if len(items) != tokenizer.num_items:
            raise CheckpointError(
                f"{d / 'simulator_config.json'}: {len(items)} items but vocab.json has {tokenizer.num_items}"
            )
        state = _load_safetensors(d / "model.safetensors")
        population = _load_safetensors(d / "population.safetensors").get("population")
        if population is None:
            raise CheckpointError(f"{d / 'population.safetensors'}: no 'population' tensor")
        try:
            model = UserLM(
                GPT2LMHeadModel(gpt2_config),
                sim_config,
                state["item_features"],
                state["item_text"],
                state["item_known"],
                state.get("item_category"),
            )
            model.load_state_dict(state, strict=True)
        except (KeyError, RuntimeError) as exc:
            raise CheckpointError(
                f"{d / 'model.safetensors'}: weights do not match config.json ({str(exc).splitlines()[0]})"
            ) from None
        return cls(
            model,
            tokenizer,
            encoder,
            population.numpy(),
            items,
            meta.get("extra"),
            device,
            dtype,
            capacity,
        )


def _read_json(path: Path) -> dict:
    try:
        return json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise CheckpointError(f"{path}: not valid JSON ({exc})") from None


def _load_safetensors(path: Path) -> dict[str, torch.Tensor]:
    try:
        return load_file(str(path))
    except (SafetensorError, OSError, ValueError, RuntimeError) as exc:
        raise CheckpointError(f"{path}: corrupt or truncated safetensors file ({exc})") from None


def load_batched_simulator(
    simulator: Any = None, device: str = "cpu", dtype: str = "float32", capacity: int = 1
) -> GPT2UserSimulator:
    """The embedded default (None), a checkpoint directory, or an existing simulator."""
    if isinstance(simulator, GPT2UserSimulator):
        simulator.ensure_capacity(capacity)
        return simulator
    if simulator is None or simulator == "default":
        simulator = DEFAULT_SIMULATOR_DIR
    if not isinstance(simulator, (str, Path)):
        raise ValueError(
            f"simulator must be None, a checkpoint directory or a GPT2UserSimulator, got {type(simulator)}"
        )
    return GPT2UserSimulator.from_pretrained(
        simulator, device=device, dtype=dtype, capacity=capacity
    )
