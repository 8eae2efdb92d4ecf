"""RingLayout: where each step lives in the recency-attention KV cache, and what a query sees.

With recency attention (`attention_window_steps` N > 0) a cache row holds the profile and a ring
of N + 1 step blocks after it: step s writes slot s mod (N + 1). Which step a cache position
holds, and so the attention bias of a query (profile always visible, steps within the window
with a per-head penalty by distance, -inf elsewhere), is a function of the row's step count
alone, so nothing is ever moved or re-encoded.

Slates of different lengths share one ring: a slot is as long as the longest step block met so
far, a shorter step fills the start of its slot, and each row records how many tokens every slot
holds (`slot_len`), so the rest of a slot (left over from an older, longer step) is never seen.
When a longer slate arrives mid-session the simulator moves every slot to the longer layout:
with no absolute positions a key does not depend on where it is stored, so moving is exact.
"""

from __future__ import annotations

import torch

from simulators.lm.attention import window_bias


class RingLayout:
    """The ring of one simulator: prefix length, window, block length and head slopes.

    Args:
        prefix: cache positions of BOS and the profile.
        window: N, steps before a query's own step it may attend to.
        block: tokens per step (`step_block_length(k)`).
        slopes: (H,) recency penalty per step of distance, on the cache's device.
    """

    def __init__(self, prefix: int, window: int, block: int, slopes: torch.Tensor) -> None:
        """Store the layout."""
        self.prefix, self.window, self.block, self.slopes = prefix, window, block, slopes

    @property
    def positions(self) -> int:
        """Cache positions a row needs: the profile and N + 1 blocks."""
        return self.prefix + (self.window + 1) * self.block

    def length(self, steps: torch.Tensor) -> int:
        """Cache positions in use by rows at step `steps` (R,): profile and slots written."""
        slots = min(self.window + 1, int(steps.max()) + 1) if len(steps) else 1
        return self.prefix + slots * self.block

    def slot_start(self, steps: torch.Tensor) -> torch.Tensor:
        """First cache position of the block of step `steps` (R,)."""
        return self.prefix + (steps % (self.window + 1)) * self.block

    def key_steps(
        self, steps: torch.Tensor, n: int, slot_len: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Which step each of the first n cache positions holds, for rows at step `steps` (R,).

        Returns (R, n) step indices (-1: the profile; a large negative number, never visible,
        for ring slots this session has not written yet and, given `slot_len` (R, N + 1), for
        the positions of an earlier step's slot past the tokens it holds; the query's own slot
        reads as its own step, and `bias` hides its positions after the query) and each
        position's offset within its block (n,), -1 for the profile.
        """
        p, block, w1 = self.prefix, self.block, self.window + 1
        pos = torch.arange(n, device=steps.device)
        slot = (pos - p).clamp(min=0) // block
        offset = torch.where(pos < p, -1, (pos - p) % block)
        back = torch.remainder(steps[:, None] % w1 - slot[None, :], w1)  # steps ago (R, n)
        key = steps[:, None] - back
        never = torch.iinfo(torch.long).min // 2
        key = torch.where(key < 0, never, key)  # never written
        if slot_len is not None:  # the unused tail of a slot holding a shorter step
            held = torch.gather(slot_len, 1, slot[None, :].expand(len(steps), n))
            key = torch.where((back > 0) & (offset[None, :] >= held), never, key)
        return torch.where((pos < p)[None, :], -1, key), offset

    def bias(
        self,
        steps: torch.Tensor,
        positions: torch.Tensor,
        dtype: torch.dtype,
        slot_len: torch.Tensor | None = None,
    ) -> tuple[int, torch.Tensor]:
        """Attended length n and bias (R, H, t, n) of queries at cache `positions` (R, t).

        The rows are at step `steps` (R,), their slots hold `slot_len` (R, N + 1) tokens (see
        `key_steps` and `window_bias`).
        """
        n = self.length(steps)
        key_steps, key_offset = self.key_steps(steps, n, slot_len)
        q_offset = (positions - self.prefix) % self.block  # (R, t)
        same = key_steps[:, None, :] == steps[:, None, None]  # keys of the query's own block
        allowed = ~same | (key_offset[None, None, :] <= q_offset[:, :, None])
        query_steps = steps[:, None].expand_as(positions)
        return n, window_bias(query_steps, key_steps, allowed, self.window, self.slopes, dtype)

    def past_bias(
        self,
        steps: torch.Tensor,
        t: int,
        dtype: torch.dtype,
        slot_len: torch.Tensor | None = None,
    ) -> tuple[int, torch.Tensor]:
        """Attended length n and bias (R, H, t, n) of t scratch queries of the *next* step.

        The rows are at step `steps`; the queries see every step written so far within the
        window, never the slot the next step would overwrite (candidate scoring).
        """
        n = self.length(steps)
        key_steps, _ = self.key_steps(steps, n, slot_len)
        past_ok = (key_steps < steps[:, None])[:, None, :].expand(len(steps), t, n)
        query_steps = steps[:, None].expand(len(steps), t)
        return n, window_bias(query_steps, key_steps, past_ok, self.window, self.slopes, dtype)
