"""GPT2UserSimulator: the language-model user as a batched simulator with a persistent KV cache.

One `step` answers a slate for every row of the batch. The step's whole block (the slate, each
item re-stated before its response, the responses) is decoded speculatively: one forward runs
all 1 + 3k tokens with every response drafted as skip, responses are sampled slot by slot from
env-supplied uniforms until one differs from its draft, and only those rows run again from that
token, the later slots drafted with what the forward sampled for them (a slate with at most one
click: two forwards instead of the k + 1 of slot-by-slot decoding, with identical
probabilities; a 300-item slate with many clicks a few forwards, not one per click). Rows never
influence each other. History is never re-encoded: keys and values stay in a preallocated
cache. When a row's context is full it is refilled with its profile and as many of its last
whole steps as fit beside the next one, at most `window_steps` (the documented sliding-window
scheme; training windows long sessions the same way), so memory is bounded whatever the episode
length. A simulator with recency attention (`attention_window_steps` N > 0) needs no refill:
step s writes its block into slot s mod (N + 1) of a ring after the profile (`RingLayout`), so
every step after the first N costs the same and the cache never grows; its slots are as long as
the longest slate met (a longer one mid-session moves them, exactly).

This module is the session state and the stepping loop; building a network
(`simulators.gpt2_user.build`), checkpoints (`.checkpoint`), the ring's geometry (`.ring`) and
candidate scoring (`.candidates`) sit beside it. It is long because stepping is one piece: the
speculative decoding, the ring and the refill share the cache state.
"""

from __future__ import annotations

import contextlib
import math
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch

from simulators.base import StepOutcome, TensorStepOutcome
from simulators.behaviours import DEEPER, SKIP
from simulators.catalog import ProfileEncoder, item_category_index, item_feature_matrix
from simulators.gpt2_user.ring import RingLayout
from simulators.lm.attention import (
    CachedAttention,
    FreshRowsAttention,
    WindowedCachedAttention,
    recency_slopes,
)
from simulators.lm.cache import StaticKVCache
from simulators.lm.model import SimulatorConfig, TokenBlock, UserLM
from simulators.slate_fit import max_slate_items
from simulators.tokenization import (
    BOS,
    CONT,
    PAD,
    ROLE_CONTROL,
    ROLE_PROFILE,
    ROLE_RESPONSE,
    ROLE_RESTATED,
    ROLE_SLATE,
    START,
    SUMMARY_BUY_LEVELS,
    SUMMARY_CLICK_LEVELS,
    SimTokenizer,
    step_block_length,
)

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}
MEMORY_HEADROOM = 0.8
"""Share of the available memory a cache may take (the rest is for the forwards)."""


def check_device(device: str | torch.device) -> torch.device:
    """`device` as a torch.device this machine has, else one line saying what it has.

    torch's own errors here are an AssertionError ("Torch not compiled with CUDA enabled") or a
    list of every device type torch knows, raised deep inside the first allocation.

    Raises:
        ValueError: an unknown device name, or a CUDA device this machine lacks.
    """
    try:
        dev = torch.device(device)
    except (RuntimeError, TypeError):
        raise ValueError(f"unknown device {device!r}; allowed: cpu, cuda, cuda:N") from None
    if dev.type == "cpu":
        return dev
    if dev.type != "cuda":
        raise ValueError(f"device {device!r} is not supported; allowed: cpu, cuda, cuda:N")
    if not torch.cuda.is_available():
        raise ValueError(f"device {device!r}: this machine has no CUDA device; use cpu")
    if dev.index is not None and dev.index >= torch.cuda.device_count():
        raise ValueError(
            f"device {device!r}: this machine has {torch.cuda.device_count()} CUDA devices"
        )
    return dev


def check_memory(needed: int, device: torch.device, what: str) -> None:
    """Refuse an allocation that cannot fit, before trying it.

    A huge num_envs would otherwise ask the allocator for hundreds of GB.

    Raises:
        ValueError: naming what needed how much and what is available.
    """
    if device.type == "cuda":
        free, _ = torch.cuda.mem_get_info(device)
        available = int(free)
    else:
        import psutil

        available = int(psutil.virtual_memory().available)
    if needed > MEMORY_HEADROOM * available:
        raise ValueError(
            f"{what} need about {needed / 2**30:.1f} GiB of KV cache on {device}, but "
            f"{available / 2**30:.1f} GiB are available; use fewer users per batch"
        )


"""Inference dtypes by name."""
_CPU_TOKENS_PER_FORWARD = 4096
"""Tokens per forward on CPU (larger batches run in row blocks)."""


class GPT2UserSimulator:
    """The language-model user as a `simulators.base.UserSimulator` (see module docstring).

    Args:
        model: the network.
        tokenizer: its vocabulary (behaviours included).
        profile_encoder: users-table rows -> profile tokens.
        population: (P, slots) profiles the envs draw users from.
        items: the catalog (item_id, title, category, price), in item-index order.
        extra: provenance saved with the checkpoint (training figures, log metadata).
        device: torch device of the model and the cache.
        dtype: inference dtype name ('float32', 'bfloat16', 'float16').
        capacity: initial rows.
    """

    consumed: torch.Tensor
    """Session summary of every cache row (see `_alloc`)."""

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
        if dtype not in DTYPES:
            raise ValueError(f"dtype must be one of {sorted(DTYPES)}, got {dtype!r}")
        self.device = torch.device(device)
        self.dtype = DTYPES[dtype]
        self.model = model.to(self.device).eval()
        if self.dtype != torch.float32:
            self.model.backbone.cast_for_inference(self.dtype)
        self.tokenizer = tokenizer
        self.behaviours = tokenizer.behaviours
        self.profile_encoder = profile_encoder
        self.population = np.asarray(population, dtype=np.int64)
        self.items = items.reset_index(drop=True)
        self.extra = dict(extra or {})
        self.num_items = tokenizer.num_items
        self.item_features = item_feature_matrix(self.items)
        self.item_category = item_category_index(self.items)
        """Category index of every item (what the session-summary channel counts by)."""
        self.summary_on = model.summary_emb is not None
        """Whether the session-summary channel is on."""
        self.sim_config: SimulatorConfig = model.sim_config
        self.prefix_length = 1 + tokenizer.profile_slots
        self._item_base = torch.tensor(tokenizer.item_base, device=self.device)
        self._resp_tokens = torch.as_tensor(tokenizer.response_tokens, device=self.device)
        self.capacity = 0
        self.cache: StaticKVCache | None = None
        self._layouts: dict[int, tuple[torch.Tensor, torch.Tensor, torch.Tensor]] = {}
        self.window = self.sim_config.attention_window_steps
        """Recency-attention window in steps (0: absolute positions and refills)."""
        self.slopes = recency_slopes(model.backbone.n_head).to(self.device)
        """Per-head recency penalty per step of distance."""
        self.ring: RingLayout | None = None
        """The recency ring, fixed by the first step's slate size (None before, or without
        recency attention)."""
        self.stats: dict[str, float] = {"flops": 0.0, "tokens": 0, "forwards": 0}
        """Work done by the forwards so far: matmul FLOPs (attention over each query's causal
        length), tokens and forward calls (read by `llm-usersim speed`)."""
        self._alloc(max(capacity, 1))

    # --------------------------------------------------------------------------- catalog
    def items_table(self) -> pd.DataFrame:
        """The catalog this simulator knows (item_id, title, category, price)."""
        return self.items.copy()

    def add_items(self, items: pd.DataFrame) -> np.ndarray:
        """Catalog indices of `items`, adding the items this simulator does not have.

        `items` has `item_id` and optionally `title`, `category` and `price`. An added item has
        no learned token (it reads as <unk_item>, as items dropped out in training do): it
        enters by its side information, computed as for the training catalog
        (`simulators.catalog.item_features_like`: a known category's one-hot, none for a new
        category; the price standardised as the catalog's; the title's hashed words, its
        sentence embedding when the simulator has a text encoder, and its pooled pretrained
        token embeddings with the pretrained-text channel, read from the base again: zeros
        and a warning where that base is gone or is another model). The session summary counts
        a new category apart from the known ones. Added items are not saved with the
        checkpoint.

        Returns:
            (len(items),) int64 indices into `items_table()`.
        """
        from simulators.gpt2_user.build import item_side_information

        ids = items["item_id"].astype(str)
        index = {iid: i for i, iid in enumerate(self.items["item_id"].astype(str))}
        new = items.assign(item_id=ids)[~ids.isin(index)].drop_duplicates("item_id")
        if len(new):
            table = new.reindex(columns=["item_id", "title", "category", "price"])
            for col in ("title", "category"):  # missing: empty (no title, no category)
                table[col] = table[col].map(lambda v: "" if pd.isna(v) else str(v))
            table["price"] = pd.to_numeric(table["price"], errors="coerce")
            reference = self.items.iloc[: self.tokenizer.num_items]
            side = item_side_information(self.model, reference, table)
            model = self.model
            dev = model.item_features.device
            model.item_features = torch.cat([model.item_features, side["features"].to(dev)])
            model.item_text = torch.cat([model.item_text, side["text"].to(dev)])
            if model.item_text_emb is not None:
                model.item_text_emb = torch.cat(
                    [model.item_text_emb, side["text_emb"].to(dev, model.item_text_emb.dtype)]
                )
            if model.pretrained_text is not None:
                channel = model.pretrained_text
                channel.item_emb = torch.cat([channel.item_emb, side["base_text"].to(dev)])
            model.item_known = torch.cat(
                [model.item_known, torch.zeros(len(table), dtype=torch.bool, device=dev)]
            )
            known_cats = self.items.get("category", pd.Series([""] * len(self.items)))
            cat_of = dict(zip(known_cats.fillna("").astype(str), self.item_category.tolist()))
            n_cat = self.num_categories()
            for c in table["category"]:
                if c not in cat_of:  # a new category: counted apart from every known one
                    cat_of[c] = n_cat
                    n_cat += 1
            cats = np.array([cat_of[c] for c in table["category"]], dtype=np.int64)
            self.item_category = np.concatenate([self.item_category, cats])
            if self.summary_on:
                model.item_category = torch.cat(
                    [model.item_category, torch.from_numpy(cats).to(dev)]
                )
                grow = n_cat - self.consumed.shape[1]
                if grow > 0:
                    self.consumed = torch.cat(
                        [self.consumed, self.consumed.new_zeros(self.capacity, grow, 2)], dim=1
                    )
            self.items = pd.concat([self.items, table], ignore_index=True)
            self.item_features = model.item_features.cpu().numpy()
            self.num_items = len(self.items)
            index.update({iid: i for i, iid in enumerate(self.items["item_id"])})
        return np.array([index[i] for i in ids], dtype=np.int64)

    def item_tokens(self, items: torch.Tensor) -> torch.Tensor:
        """Token ids of item indices (items without a trained token: <unk_item>)."""
        known = self.model.item_known[items]
        unk = torch.full_like(items, self.tokenizer.unk_item)
        return torch.where(known, self._item_base + items, unk)

    def summary_codes(self, rows: torch.Tensor, items: torch.Tensor) -> torch.Tensor:
        """Session-summary codes (R, k) of items (R, k) for cache rows (R,).

        What each row consumed of each item's category so far (see
        `simulators.tokenization.summary_codes`).
        """
        got = self.consumed[rows[:, None], self.model.item_category[items]].long()
        return got[..., 0] * SUMMARY_BUY_LEVELS + got[..., 1]

    # --------------------------------------------------------------------------- state
    def cache_positions(self, slate_size: int | None = None) -> int:
        """Positions a cache row holds.

        The whole context, or with recency attention only the profile and the ring of
        window + 1 step blocks, 4x less at the default's context (the ring's block length
        follows the slate size: the given one, else the longest of the running sessions;
        before any step only the profile is held). The ring is not bounded by the context:
        recency attention has no absolute positions.
        """
        if not self.window:
            return self.sim_config.context_length
        if slate_size is not None:
            block: int | None = step_block_length(slate_size)
        else:
            block = None if self.ring is None else self.ring.block
        if block is None:
            return self.prefix_length
        return self.prefix_length + (self.window + 1) * block

    def _alloc(self, capacity: int) -> None:
        bb = self.model.backbone
        c = self.cache_positions()
        check_memory(
            capacity * self.bytes_per_row(c), self.device, f"{capacity:,} users (num_envs/capacity)"
        )
        self.capacity = capacity
        self.cache = StaticKVCache(
            bb.n_layer, capacity, bb.n_head, c, bb.head_dim, self.device, self.dtype
        )
        z = lambda fill: torch.full((capacity, c), fill, dtype=torch.long, device=self.device)
        self.tokens = TokenBlock(z(PAD), z(0), z(0), z(-1), z(0))
        """The token channels of every cache row, (capacity, C) each (the refill re-encodes
        from them)."""
        self.steps_done = torch.zeros(capacity, dtype=torch.long, device=self.device)
        n_cat = self.num_categories() if self.summary_on else 0
        self.consumed = torch.zeros(capacity, n_cat, 2, dtype=torch.int16, device=self.device)
        """Session summary of every row: (clicks, buys) per category so far, capped."""
        self.slot_len = torch.zeros(
            capacity, max(self.window, 0) + 1, dtype=torch.long, device=self.device
        )
        """Recency ring: tokens each slot of each row holds (a shorter step fills the start of
        its slot, see `simulators.gpt2_user.ring`)."""
        self.short_slots = False
        """Whether some ring slot holds fewer tokens than the ring's block (only then do the
        attention biases read `slot_len`: a ring of one slate size pays nothing for it)."""

    def bytes_per_row(self, positions: int | None = None) -> int:
        """Memory of one user row: its keys and values in every layer and its token channels."""
        bb = self.model.backbone
        c = self.cache_positions() if positions is None else positions
        el = torch.finfo(self.dtype).bits // 8
        return 2 * bb.n_layer * bb.n_head * c * bb.head_dim * el + 5 * c * 8

    def num_categories(self) -> int:
        """Categories the session summary counts by (those of the catalog)."""
        return int(self.item_category.max()) + 1 if len(self.item_category) else 1

    def _fit_ring(self, old_block: int | None = None) -> None:
        """Resize the cache's position axis to the ring's block length.

        Every row's contents are kept: the first positions as they are (between sessions), or,
        given the block length the ring had (`old_block`, a longer slate mid-session), every
        slot moved to where the longer layout puts it.
        """
        c = self.cache_positions()
        if self.cache is None or self.cache.context == c:
            return
        old, bufs, steps, consumed = self.cache, self.tokens, self.steps_done, self.consumed
        slot_len, short = self.slot_len, self.short_slots
        self._alloc(self.capacity)
        self.consumed.copy_(consumed)
        self.slot_len.copy_(slot_len)
        self.short_slots = short or old_block is not None  # moved slots hold the old length
        p = self.prefix_length
        if old_block is None:
            moves = [(0, 0, min(c, old.context))]
        else:
            assert self.ring is not None  # growing a ring
            nb = self.ring.block
            moves = [(0, 0, p)] + [
                (p + s * old_block, p + s * nb, old_block) for s in range(self.window + 1)
            ]
        for src, dst, n in moves:
            self.cache.k[..., dst : dst + n, :] = old.k[..., src : src + n, :]
            self.cache.v[..., dst : dst + n, :] = old.v[..., src : src + n, :]
            for new, prev in zip(self.tokens.channels(), bufs.channels()):
                new[:, dst : dst + n] = prev[:, src : src + n]
        self.cache.lengths.copy_(old.lengths.clamp(max=c))
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

    def _live_cache(self) -> StaticKVCache:
        if self.cache is None:
            raise RuntimeError("the simulator was closed; start sessions again after close()")
        return self.cache

    # --------------------------------------------------------------------------- hot path
    def count_flops(self, rows: int, t: int, attended: float) -> None:
        """Add the matmul FLOPs of a forward of `rows` x `t` tokens to `stats`.

        `attended` is the number of attended keys summed over the queries.
        """
        bb = self.model.backbone
        d, nl = bb.hidden_size, bb.n_layer
        self.stats["tokens"] += rows * t
        self.stats["forwards"] += 1
        self.stats["flops"] += rows * t * (24 * d * d * nl + 10 * d) + 4 * d * nl * attended

    def start_sessions(self, rows: np.ndarray, profiles: np.ndarray) -> None:
        """Encode BOS + profile for rows into the cache (the rest of each row is discarded)."""
        rows_np = np.asarray(rows, dtype=np.int64)
        prof = np.asarray(profiles, dtype=np.int64).reshape(len(rows_np), -1)
        self.start_sessions_tensors(
            torch.as_tensor(rows_np, device=self.device), torch.as_tensor(prof, device=self.device)
        )

    @torch.inference_mode()
    def start_sessions_tensors(self, rows: torch.Tensor, profiles: torch.Tensor) -> None:
        """`start_sessions` for int64 tensors rows (n,) and profiles (n, slots) on the device."""
        n = len(rows)
        if n == 0:
            return
        rows_t = rows.to(self.device, torch.long)
        top = int(rows_t.max())
        if self.cache is None or top >= self.capacity:
            self._alloc(max(top + 1, self.capacity))
        p = self.prefix_length
        tok = self.tokenizer
        # SimTokenizer.prefix, vectorised over rows
        prof = profiles.to(self.device, torch.long).reshape(n, -1)[:, : p - 1]
        ids = torch.full((n, p), tok.profile_pad, dtype=torch.long, device=self.device)
        ids[:, 0] = BOS
        ids[:, 1 : 1 + prof.shape[1]] = torch.where(
            prof >= 0, tok.profile_base + prof, tok.profile_pad
        )
        roles = torch.full((n, p), ROLE_PROFILE, dtype=torch.long, device=self.device)
        roles[:, 0] = ROLE_CONTROL
        zeros = torch.zeros(n, p, dtype=torch.long, device=self.device)
        self._encode_rows(
            rows_t,
            TokenBlock(
                ids,
                roles,
                zeros,
                torch.full((n, p), -1, dtype=torch.long, device=self.device),
                zeros,
            ),
        )
        self.steps_done[rows_t] = 0
        self.consumed[rows_t] = 0
        self.slot_len[rows_t] = 0

    def _encode_rows(self, rows: torch.Tensor, tokens: TokenBlock) -> None:
        """Encode whole sequences (n, T) from position 0 into the cache rows (in row blocks)."""
        cache = self._live_cache()
        n, t = tokens.input_ids.shape
        block = n if self.device.type != "cpu" else max(1, _CPU_TOKENS_PER_FORWARD // t)
        for lo in range(0, n, block):
            hi = min(n, lo + block)
            pos = torch.arange(t, device=self.device).expand(hi - lo, t)
            attend = FreshRowsAttention(cache, rows[lo:hi], pos)  # causal over the new tokens
            self.model(tokens[lo:hi], torch.zeros_like(pos) if self.window else pos, attend)
            self.count_flops(hi - lo, t, (hi - lo) * t * (t + 1) / 2)
        for buf, val in zip(self.tokens.channels(), tokens.channels()):
            buf[rows, :t] = val
        cache.lengths[rows] = t

    def _refill(self, block: int) -> None:
        """Sliding window: rows without room for a step keep profile + their last whole steps.

        As many of the last steps as fit beside the new block, at most `window_steps`
        (none when even one does not fit), exactly as training windows a long session
        (`simulators.training.data.session_windows`).
        """
        if self.window:  # the ring never fills
            return
        cache = self._live_cache()
        c = self.sim_config.context_length
        full = torch.nonzero(cache.lengths + block > c).flatten()
        if len(full) == 0:
            return
        p, dev = self.prefix_length, self.device
        lengths = cache.lengths[full]  # (n,)
        ids, roles = self.tokens.input_ids[full], self.tokens.roles[full]  # (n, C)
        pos = torch.arange(ids.shape[1], device=dev)
        is_x = (
            (roles == ROLE_CONTROL)
            & ((ids == START) | (ids == CONT))
            & (pos >= p)
            & (pos < lengths[:, None])
        )
        steps_from = is_x.flip(1).cumsum(1).flip(1)  # X tokens at or after each position
        fits = p + lengths[:, None] - pos + block <= c
        ok = is_x & (steps_from <= self.sim_config.window_steps) & fits
        start = torch.where(ok.any(1), ok.int().argmax(1), lengths)  # first kept position
        kept = lengths - start
        t = int(kept.max())
        tail = (start[:, None] + torch.arange(t, device=dev)).clamp(max=ids.shape[1] - 1)
        take = torch.cat([torch.arange(p, device=dev).expand(len(full), p), tail], dim=1)
        pad = torch.arange(t, device=dev)[None, :] >= kept[:, None]  # (n, t) past a row's steps
        fills = (PAD, ROLE_CONTROL, 0, -1, 0)
        channels = []
        for buf, fill in zip(self.tokens.channels(), fills):
            got = torch.gather(buf[full], 1, take)
            got[:, p:] = got[:, p:].masked_fill(pad, fill)
            channels.append(got)
        self._encode_rows(full, TokenBlock(*channels))
        cache.lengths[full] = p + kept

    def _forward(
        self,
        rows: torch.Tensor | None,
        start: torch.Tensor,
        tokens: TokenBlock,
        steps: torch.Tensor,
        slot_len: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Append tokens (R, t) to cache rows `rows` (all rows if None) at offsets start (R,).

        With recency attention, `steps` (R,) are the rows' step indices: the tokens belong to
        that step's block, written at `start` inside its ring slot; `slot_len` (R, N + 1) is
        what each slot of those rows holds.

        Returns the output logits at every new position, (R, t, R_behaviours + 2) float32. On
        CPU, large batches run in row blocks of about _CPU_TOKENS_PER_FORWARD tokens
        (temporaries stay small enough to be recycled instead of page-faulted in fresh every
        call).
        """
        cache = self._live_cache()
        r, t = tokens.input_ids.shape
        dev = self.device
        pos = start[:, None] + torch.arange(t, device=dev)  # (R, t)
        out = torch.empty(r, t, len(self.model.output_ids), device=dev)
        block = r if dev.type != "cpu" else max(1, _CPU_TOKENS_PER_FORWARD // t)
        c = self.sim_config.context_length
        for lo in range(0, r, block):
            hi = min(r, lo + block)
            p = pos[lo:hi]
            sub = None if rows is None else rows[lo:hi]
            if self.ring is not None:
                held = None if slot_len is None else slot_len[lo:hi]
                n, bias = self.ring.bias(steps[lo:hi], p, self.dtype, held)
                attend: Any = WindowedCachedAttention(cache, p, sub, n, bias, row_offset=lo)
                h = self.model(tokens[lo:hi], torch.zeros_like(p), attend)
                out[lo:hi] = self.model.output_logits(h)
                self.count_flops(hi - lo, t, float(torch.isfinite(bias[:, 0]).sum()))
                continue
            last = p[:, -1]
            n = min(c, 32 * math.ceil((int(last.max()) + 1) / 32))
            keys = torch.arange(n, device=dev)
            bias = torch.zeros(hi - lo, 1, t, n, dtype=self.dtype, device=dev)
            bias.masked_fill_(keys > p[:, None, :, None], float("-inf"))
            attend = CachedAttention(cache, p, sub, n, bias, row_offset=lo)
            h = self.model(tokens[lo:hi], p, attend)
            out[lo:hi] = self.model.output_logits(h)
            attended = float((last + 1).sum()) * t - (hi - lo) * t * (t - 1) / 2
            self.count_flops(hi - lo, t, attended)
        return out

    @torch.inference_mode()
    def step(
        self,
        rows: np.ndarray,
        slates: np.ndarray,
        uniforms: np.ndarray | None = None,
        forced_responses: np.ndarray | None = None,
        forced_leave: np.ndarray | None = None,
    ) -> StepOutcome:
        """Answer slates (len(rows), k) of item indices; see `simulators.base.UserSimulator`.

        The step is decoded speculatively: the whole block (slate, re-stated items, responses,
        1 + 3k tokens) goes through the model in one forward with every response drafted as
        skip (or as the forced response). Slot j's probabilities are exact as long as the
        responses before it match their drafts, so responses are sampled slot by slot until the
        first one that differs from its draft; only rows with such a slot run again, from that
        token on, with the sampled response in place and every later slot drafted with what
        that forward sampled for it. Results equal the slot-by-slot decoding (each probability
        is conditioned on exactly the same tokens); a slate with at most one click costs two
        forwards instead of k + 1, and a long slate with many clicks a few more, not one per
        click.

        When most rows step, every cache row runs the first forward (rows not in `rows` get
        padding that is overwritten later and do not advance), which keeps it free of gathers.
        """
        return self._decode(rows, slates, uniforms, forced_responses, forced_leave, peek=False)

    def peek(
        self,
        rows: np.ndarray,
        slates: np.ndarray,
        uniforms: np.ndarray | None = None,
        forced_responses: np.ndarray | None = None,
    ) -> StepOutcome:
        """What `step` would return, without advancing anything.

        The next real step overwrites the scratch positions. Without uniforms the responses are
        drafted as skips (forced).
        """
        if uniforms is None and forced_responses is None:
            forced_responses = np.zeros(np.shape(slates), dtype=np.int64)
        return self._decode(rows, slates, uniforms, forced_responses, None, peek=True)

    @property
    def item_side_channels(self) -> tuple[str, ...]:
        """Item attributes (category, price) and title text (`UserLM.ITEM_SIDE_CHANNELS`)."""
        return self.model.ITEM_SIDE_CHANNELS

    def without_item_side(
        self, items: np.ndarray, channel: str
    ) -> contextlib.AbstractContextManager[None]:
        """Score without that part of `items`' side information (`UserLM.without_item_side`)."""
        idx = torch.as_tensor(np.asarray(items, dtype=np.int64).ravel(), device=self.device)
        if len(idx) and (int(idx.min()) < 0 or int(idx.max()) >= self.num_items):
            raise ValueError(f"items must be indices in [0, {self.num_items}), got {items}")
        return self.model.without_item_side(idx, channel)

    def score_slates(self, rows: np.ndarray, slates: np.ndarray) -> np.ndarray:
        """p(r_j | state, slate, earlier slots skipped) of hypothetical slates: (n, k, R).

        One-item slates (what a model-based agent asks for every candidate) run as one forward
        for all rows and candidates (`simulators.gpt2_user.candidates`); longer slates peek at
        the step in rounds of distinct rows. Nothing advances.
        """
        from simulators.gpt2_user.candidates import candidate_probs

        rows = np.asarray(rows, dtype=np.int64)
        slates = np.asarray(slates, dtype=np.int64)
        n, k = slates.shape
        out = np.zeros((n, k, self.behaviours.size))
        if n == 0:
            return out
        order = np.argsort(rows, kind="stable")
        srt = rows[order]
        occurrence = np.empty(n, dtype=np.int64)
        occurrence[order] = np.arange(n) - np.searchsorted(srt, srt, side="left")
        if k == 1:
            uniq, inv = np.unique(rows, return_inverse=True)
            grid = np.zeros((len(uniq), int(occurrence.max()) + 1), dtype=np.int64)
            grid[inv, occurrence] = slates[:, 0]
            return candidate_probs(self, uniq, grid)[inv, occurrence][:, None, :]
        for r in range(int(occurrence.max()) + 1):
            sel = np.nonzero(occurrence == r)[0]
            out[sel] = self.peek(rows[sel], slates[sel]).response_probs
        return out

    @torch.inference_mode()
    def step_tensors(
        self, rows: torch.Tensor, slates: torch.Tensor, uniforms: torch.Tensor
    ) -> TensorStepOutcome:
        """`step` on tensors of the simulator's device; nothing goes through the host.

        Args:
            rows: (B,) int64 distinct cache rows.
            slates: (B, k) int64 item indices.
            uniforms: (B, k + 1) float64 uniforms (float32 ones work, rounded the same way).

        Returns:
            The outcome as tensors on the device (the same answers as `step` gives for the
            same inputs; probabilities in float32).
        """
        k = slates.shape[1]
        u = uniforms.to(self.device)
        responses, probs, leave_prob = self._decode_tensors(
            rows.to(self.device, torch.long), slates.to(self.device, torch.long), u, None, False
        )
        leave = u[:, k].double() < leave_prob.double()
        return TensorStepOutcome(responses, probs, leave, leave_prob)

    @torch.inference_mode()
    def _decode(
        self,
        rows: np.ndarray,
        slates: np.ndarray,
        uniforms: np.ndarray | None,
        forced_responses: np.ndarray | None,
        forced_leave: np.ndarray | None,
        peek: bool,
    ) -> StepOutcome:
        """`step` (peek=False) or the same probabilities without advancing (peek=True).

        With peek=True the next real step overwrites the scratch positions.
        """
        dev = self.device
        slates_np = np.asarray(slates, dtype=np.int64)
        nb, k = slates_np.shape
        if uniforms is None and forced_responses is None:
            raise ValueError("step() needs uniforms unless the responses are forced")
        u = None
        if uniforms is not None:
            u = torch.as_tensor(np.asarray(uniforms, dtype=np.float32), device=dev)
        forced = None
        if forced_responses is not None:
            forced = torch.as_tensor(np.asarray(forced_responses, dtype=np.int64), device=dev)
        responses, probs, leave_prob = self._decode_tensors(
            torch.as_tensor(np.asarray(rows, dtype=np.int64), device=dev),
            torch.as_tensor(slates_np, device=dev),
            u,
            forced,
            peek,
        )
        responses_np = responses.cpu().numpy()
        probs_np = probs.double().cpu().numpy()
        leave_prob_np = leave_prob.double().cpu().numpy()
        if forced_leave is not None:
            leave = np.asarray(forced_leave, dtype=bool)
        elif uniforms is not None:
            leave = np.asarray(uniforms)[:, k] < leave_prob_np
        else:
            leave = np.zeros(nb, dtype=bool)
        return StepOutcome(responses_np, probs_np, leave, leave_prob_np)

    def _decode_tensors(
        self,
        rows_t: torch.Tensor,
        slates_t: torch.Tensor,
        uniforms: torch.Tensor | None,
        forced_responses: torch.Tensor | None,
        peek: bool,
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """The speculative decoding of `step` on device tensors (see `step`).

        Returns:
            responses (B, k) int64, probabilities (B, k, R) float32, leave probability (B,)
            float32, all on the device.
        """
        nb, k = slates_t.shape
        cache = self._live_cache()
        dev, cap = self.device, self.capacity
        nr = self.behaviours.size
        block = step_block_length(k)
        limit = max_slate_items(self.sim_config, self.prefix_length)
        if k > limit:
            raise ValueError(
                f"a slate of {k} items ({block} tokens per step) is longer than this simulator "
                f"takes ({limit} items: its context of {self.sim_config.context_length} tokens "
                f"after the {self.prefix_length}-token profile, or the pipeline's cap)"
            )
        self._refill(block)
        if self.window:
            self._check_ring(block, peek)
        all_rows = nb == cap and bool(
            torch.equal(rows_t, torch.arange(cap, device=dev, dtype=rows_t.dtype))
        )
        # the first forward: every cache row (no gathers) unless few rows step
        first = None if 2 * nb > cap else rows_t
        m = cap if first is None else nb
        slate_m = torch.zeros(m, k, dtype=torch.long, device=dev)
        u = torch.zeros(m, k + 1, dtype=torch.float32, device=dev)
        draft = torch.full((m, k), SKIP, dtype=torch.long, device=dev)
        sel = rows_t if first is None else slice(None)
        slate_m[sel] = slates_t
        if uniforms is not None:
            u[sel] = uniforms.float()
        forced = forced_responses is not None
        if forced_responses is not None:
            draft[sel] = forced_responses
        state_rows = torch.arange(cap, device=dev) if first is None else rows_t
        steps = self.steps_done[state_rows]
        slot_len = self.slot_len[state_rows] if self.short_slots else None
        if self.ring is not None:  # the step's slot of the ring
            cur = self.ring.slot_start(steps)
        else:
            cur = cache.lengths[state_rows]  # (m,) block start
        tokens = self._block_tokens(slate_m, draft, self.steps_done[state_rows] == 0, state_rows)
        resp_pos = k + 2 + 2 * torch.arange(k, device=dev)  # r_j in the block
        item_pos = resp_pos - 1  # re-stated i_j
        probs = torch.zeros(m, k, nr, device=dev)
        responses = draft.clone()
        leave_prob = torch.zeros(m, device=dev)
        fixed = torch.zeros(m, dtype=torch.long, device=dev)  # slots already decided
        todo = torch.arange(m, device=dev)  # local indices still decoding
        w0 = 0  # first block position recomputed this round
        loc: torch.Tensor | slice
        while len(todo):
            whole = len(todo) == m
            if whole:  # first round
                cache_rows, loc = first, slice(None)
            else:
                cache_rows, loc = state_rows[todo], todo
            logits = self._forward(
                cache_rows,
                cur[loc] + w0,
                tokens[loc, w0:],
                steps[loc],
                None if slot_len is None else slot_len[loc],
            )  # (R, block - w0, R_behaviours + 2)
            j0 = max(0, -(-(w0 - k - 1) // 2))  # first slot whose i_j is in the window
            if j0 < k:
                js = torch.arange(j0, k, device=dev)
                p = torch.softmax(logits[:, item_pos[j0:] - w0, :nr], dim=-1)  # (R, k - j0, nr)
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
                # past the first miss, what this forward sampled (same uniforms) is the next
                # draft: the context changed at one slot only, so most later slots stay
                responses[loc, j0:] = torch.where(open_, sampled, responses[loc, j0:])
            else:  # only the leave decision is left
                stop = torch.full((len(todo),), k, dtype=torch.long, device=dev)
            done = stop == k
            lp = torch.softmax(logits[:, -1, nr : nr + 2], dim=-1)[:, 1]
            leave_prob[loc] = torch.where(done, lp, leave_prob[loc])
            # rows that diverged: put the sampled response in the block, go again from there
            if bool(done.all()):
                break
            again = todo[~done]
            s_again = stop[~done]
            fixed[again] = s_again + 1
            redraft = resp_pos[None, :] >= resp_pos[s_again][:, None]  # (R, k) from the miss on
            cols = tokens.input_ids[again[:, None], resp_pos[None, :]]
            tokens.input_ids[again[:, None], resp_pos[None, :]] = torch.where(
                redraft, self._resp_tokens[responses[again]], cols
            )
            todo = again
            w0 = int(resp_pos[s_again].min())
        if not self.window:  # (the tokens a refill re-encodes)
            self._finish_block(state_rows, cur, tokens)
        if not peek:
            if self.summary_on:
                self._record_consumption(rows_t, slate_m[sel], responses[sel])
            if not self.window:
                cache.lengths[rows_t] += block
            else:
                self.slot_len[rows_t, self.steps_done[rows_t] % (self.window + 1)] = block
                self.short_slots |= self.ring is not None and block < self.ring.block
            self.steps_done[rows_t] += 1
        out_sel = slice(None) if (all_rows or first is not None) else rows_t
        return responses[out_sel], probs[out_sel], leave_prob[out_sel]

    def _check_ring(self, block: int, peek: bool) -> None:
        """Fix the ring's block length at the first step, grow it for a longer slate.

        Between sessions (no row has stepped) the ring takes the new slate's block length; while
        sessions are under way (or for a peek) a shorter slate fills the start of its slot, and a longer one
        grows every slot (the rows' steps move to the longer layout, exactly).
        """
        if self.ring is not None and self.ring.block == block:
            return
        running = bool((self.steps_done > 0).any())
        if self.ring is not None and (running or peek) and block < self.ring.block:
            return
        old = self.ring.block if self.ring is not None and running else None
        self.ring = RingLayout(self.prefix_length, self.window, block, self.slopes)
        self._fit_ring(old)
        if not running:  # no session holds a step: every slot starts empty
            self.short_slots = False

    def _block_tokens(
        self,
        slate: torch.Tensor,
        responses: torch.Tensor,
        first_step: torch.Tensor,
        state_rows: torch.Tensor,
    ) -> TokenBlock:
        """The step's tokens (R, 1 + 3k) in five channels for cache rows `state_rows` (R,).

        The channels are those of SimTokenizer.encode_session.
        """
        r, k = slate.shape
        dev = self.device
        item_tok = self.item_tokens(slate)  # (R, k)
        ids = torch.empty(r, 1 + 3 * k, dtype=torch.long, device=dev)
        ids[:, 0] = torch.where(first_step, START, CONT)
        ids[:, 1 : 1 + k] = item_tok
        ids[:, 1 + k :: 2] = item_tok
        ids[:, 2 + k :: 2] = self._resp_tokens[responses]
        roles, slots, gather = self._block_layout(k)
        items = self._block_items(slate, gather)
        if self.summary_on:
            codes = self.summary_codes(state_rows, slate)  # (R, k)
            summary = self._block_items(codes, gather).clamp(min=0)
        else:
            summary = torch.zeros_like(items)
        return TokenBlock(ids, roles.expand(r, -1), slots.expand(r, -1), items, summary)

    def _record_consumption(
        self, rows: torch.Tensor, slate: torch.Tensor, responses: torch.Tensor
    ) -> None:
        """Add a step's clicks and buys to its rows' session summary.

        The counts are capped where `summary_codes` caps them (accumulating, since a sampled
        slate may hold two clicks of one category).
        """
        r_idx, j_idx = torch.nonzero(responses != SKIP, as_tuple=True)
        if len(r_idx) == 0:
            return
        row, cat = rows[r_idx], self.model.item_category[slate[r_idx, j_idx]]
        deep = (responses[r_idx, j_idx] >= DEEPER).long()
        add = torch.stack([torch.ones_like(cat), deep], dim=1)
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
            roles_t, slots_t, gather_t = (
                torch.as_tensor(a, device=self.device)[None] for a in (roles, slots, gather)
            )
            self._layouts[k] = (roles_t, slots_t, gather_t)
        return self._layouts[k]

    def _block_items(self, slate: torch.Tensor, gather: torch.Tensor) -> torch.Tensor:
        padded = torch.cat([torch.full_like(slate[:, :1], -1), slate], dim=1)
        return torch.gather(padded, 1, gather.expand(len(slate), -1))

    def _finish_block(
        self, state_rows: torch.Tensor, cur: torch.Tensor, tokens: TokenBlock
    ) -> None:
        """Record the block's final tokens (for the sliding-window refill)."""
        pos = cur[:, None] + torch.arange(tokens.input_ids.shape[1], device=self.device)
        for buf, val in zip(self.tokens.channels(), tokens.channels()):
            if len(state_rows) == self.capacity:
                buf.scatter_(1, pos, val)
            else:
                buf[state_rows[:, None], pos] = val

    # --------------------------------------------------------------------------- save / load
    def save_pretrained(self, directory: str | Path) -> Path:
        """Write the checkpoint files (see `simulators.gpt2_user.checkpoint`)."""
        from simulators.gpt2_user.checkpoint import save_simulator

        return save_simulator(self, directory)

    @classmethod
    def from_pretrained(
        cls, directory: str | Path, device: str = "cpu", dtype: str = "float32", capacity: int = 1
    ) -> GPT2UserSimulator:
        """Load a checkpoint written by save_pretrained (safetensors and JSON only)."""
        from simulators.gpt2_user.checkpoint import load_simulator

        return load_simulator(directory, device=device, dtype=dtype, capacity=capacity)
