"""Score many candidates at once: p(response | current state, candidate shown alone).

A model-based agent (greedy on LLMUserSim-v0) asks, for every candidate, what the user would do
if it were shown. Peeking one candidate at a time costs two forwards per candidate; here all
candidates of all rows go through one call of `UserLM.forward`: each candidate is the 3-token
step ``X item item`` placed at the row's next positions, attending to the row's cached history
and to its own tokens only (never to other candidates), and nothing is written to the cache
(`ScratchAttention`).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np
import torch

from simulators.lm.attention import ScratchAttention
from simulators.lm.model import TokenBlock
from simulators.tokenization import CONT, ROLE_CONTROL, ROLE_RESTATED, ROLE_SLATE, START

if TYPE_CHECKING:
    from simulators.gpt2_user.simulator import GPT2UserSimulator


@torch.inference_mode()
def candidate_probs(sim: GPT2UserSimulator, rows: np.ndarray, candidates: np.ndarray) -> np.ndarray:
    """Response distribution of each candidate as a one-item slate.

    Args:
        sim: the simulator, with sessions started in `rows`.
        rows: (n,) distinct cache rows.
        candidates: (n, C) item indices.

    Returns:
        (n, C, R) float64 probabilities of each behaviour.
    """
    cache = sim.cache
    if cache is None:
        raise RuntimeError("the simulator was closed; start sessions again after close()")
    dev = sim.device
    rows_t = torch.as_tensor(np.asarray(rows, dtype=np.int64), device=dev)
    cand = torch.as_tensor(np.asarray(candidates, dtype=np.int64), device=dev)
    n, c = cand.shape
    t = 3 * c
    x_tok = torch.where(sim.steps_done[rows_t] == 0, START, CONT)
    item_tok = sim.item_tokens(cand)
    ids = torch.stack([x_tok[:, None].expand(n, c), item_tok, item_tok], dim=2).reshape(n, t)
    roles = torch.tensor([ROLE_CONTROL, ROLE_SLATE, ROLE_RESTATED], device=dev).repeat(c)
    slots = torch.tensor([0, 1, 1], device=dev).repeat(c)
    items = torch.stack([torch.full_like(cand, -1), cand, cand], dim=2).reshape(n, t)
    summary = torch.zeros_like(items)
    if sim.summary_on:  # the rows' session summary for each candidate's category
        code = sim.summary_codes(rows_t, cand)  # (n, C)
        summary = torch.stack([torch.zeros_like(code), code, code], dim=2).reshape(n, t)
    tokens = TokenBlock(ids, roles.expand(n, -1), slots.expand(n, -1), items, summary)
    offset = torch.tensor([0, 1, 2], device=dev).repeat(c)
    group = torch.arange(t, device=dev) // 3
    own = (group[:, None] == group[None, :]) & (offset[None, :] <= offset[:, None])  # (3C, 3C)
    if sim.window:  # recency attention: the ring's past steps under the window bias
        steps = sim.steps_done[rows_t]
        pos = torch.zeros(n, t, dtype=torch.long, device=dev)
        if sim.ring is not None:
            held = sim.slot_len[rows_t] if sim.short_slots else None
            nmax, past = sim.ring.past_bias(steps, t, sim.dtype, held)
        else:  # no step yet: only the profile, always visible at no penalty
            nmax = sim.prefix_length
            past = torch.zeros(n, len(sim.slopes), t, nmax, dtype=sim.dtype, device=dev)
        mine = torch.zeros(t, t, dtype=sim.dtype, device=dev).masked_fill_(~own, float("-inf"))
        mask = torch.cat([past, mine.expand(n, past.shape[1], -1, -1)], dim=3)
    else:
        lengths = cache.lengths[rows_t]
        pos = lengths[:, None] + offset  # (n, 3C)
        nmax = int(lengths.max())
        seen = torch.arange(nmax, device=dev)[None, :] < lengths[:, None]  # (n, nmax)
        mask = torch.cat([seen[:, None, :].expand(n, t, nmax), own.expand(n, -1, -1)], dim=2)
        mask = mask[:, None]
    h = sim.model(tokens, pos, ScratchAttention(cache, rows_t, nmax, mask))
    h = h[:, 2::3]  # the re-stated item of each candidate: (n, C, d)
    nr = sim.behaviours.size
    probs = torch.softmax(sim.model.output_logits(h)[..., :nr], dim=-1)
    return probs.double().cpu().numpy()
