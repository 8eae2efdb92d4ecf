"""Score many candidates at once: p(response | current state, candidate shown alone).

A model-based agent (greedy on LLMUserSim-v0) asks, for every candidate, what the user would do
if it were shown. Peeking one candidate at a time costs two forwards per candidate; here all
candidates of all rows go through one forward: each candidate is the 3-token step
``X item item`` placed at the row's next positions, attending to the row's cached history and to
its own tokens only (never to other candidates), and nothing is written to the cache.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

from simulators.tokenization import (
    CONT,
    ROLE_CONTROL,
    ROLE_RESTATED,
    ROLE_SLATE,
    START,
    SUMMARY_BUY_LEVELS,
)
from simulators.user_lm import sdpa, window_bias


@torch.inference_mode()
def candidate_probs(sim: object, rows: np.ndarray, candidates: np.ndarray) -> np.ndarray:
    """Marginal response probabilities of each candidate as a one-item slate.

    Args:
        sim: a GPT2UserSimulator with sessions started in `rows`.
        rows: (n,) cache rows.
        candidates: (n, C) item indices.

    Returns:
        (n, C, 3) float64 probabilities of skip, click, buy.
    """
    model, cache, dev = sim.model, sim.cache, sim.device
    rows_t = torch.as_tensor(np.asarray(rows, dtype=np.int64), device=dev)
    cand = torch.as_tensor(np.asarray(candidates, dtype=np.int64), device=dev)
    n, c = cand.shape
    lengths = cache.lengths[rows_t]
    x_tok = torch.where(sim.steps_done[rows_t] == 0, START, CONT)
    item_tok = sim._item_tokens(cand)
    ids = torch.stack([x_tok[:, None].expand(n, c), item_tok, item_tok], dim=2).reshape(n, 3 * c)
    roles = (
        torch.tensor([ROLE_CONTROL, ROLE_SLATE, ROLE_RESTATED], device=dev).repeat(c).expand(n, -1)
    )
    slots = torch.tensor([0, 1, 1], device=dev).repeat(c).expand(n, -1)
    items = torch.stack([torch.full_like(cand, -1), cand, cand], dim=2).reshape(n, 3 * c)
    summary = torch.zeros_like(items)
    if sim._summary_on:  # the rows' session summary for each candidate's category
        got = sim.consumed[rows_t[:, None], model.item_category[cand]].long()  # (n, C, 2)
        code = got[..., 0] * SUMMARY_BUY_LEVELS + got[..., 1]
        summary = torch.stack([torch.zeros_like(code), code, code], dim=2).reshape(n, 3 * c)
    offset = torch.tensor([0, 1, 2], device=dev).repeat(c)
    group = torch.arange(3 * c, device=dev) // 3
    own = (group[:, None] == group[None, :]) & (offset[None, :] <= offset[:, None])  # (3C, 3C)
    if sim.window:  # recency attention: the ring's past steps under the window bias
        steps = sim.steps_done[rows_t]
        nmax = sim._ring_length(steps) if sim._ring_block else sim.prefix_length
        pos = torch.zeros(n, 3 * c, dtype=torch.long, device=dev)
        key_steps, _ = (
            sim.ring_key_steps(steps, nmax)
            if sim._ring_block
            else (
                torch.full((n, nmax), -1, dtype=torch.long, device=dev),
                None,
            )
        )
        past_ok = (key_steps < steps[:, None])[:, None, :].expand(n, 3 * c, nmax)
        past = window_bias(
            steps[:, None].expand(n, 3 * c), key_steps, past_ok, sim.window, sim._slopes, sim.dtype
        )
        mine = torch.zeros(3 * c, 3 * c, dtype=sim.dtype, device=dev).masked_fill_(
            ~own, float("-inf")
        )
        mask = torch.cat([past, mine.expand(n, past.shape[1], -1, -1)], dim=3)
    else:
        pos = lengths[:, None] + offset  # (n, 3C)
        nmax = int(lengths.max())
        past = torch.arange(nmax, device=dev)[None, :] < lengths[:, None]  # (n, nmax)
        mask = torch.cat([past[:, None, :].expand(n, 3 * c, nmax), own.expand(n, -1, -1)], dim=2)[
            :, None
        ]
    tr = model.gpt2.transformer
    cfg = model.gpt2.config
    d = cfg.n_embd
    nh, hd = cfg.n_head, d // cfg.n_head
    t = 3 * c
    h = model.embed(ids, roles, slots, items, summary).to(sim.dtype) + tr.wpe(pos)
    for layer, block in enumerate(tr.h):
        a = block.ln_1(h)
        qkv = torch.addmm(block.attn.c_attn.bias, a.reshape(n * t, d), block.attn.c_attn.weight)
        q, k, v = qkv.view(n, t, 3, nh, hd).permute(2, 0, 3, 1, 4)
        k_all = torch.cat([cache.k[layer][rows_t, :, :nmax].to(k.dtype), k], dim=2)
        v_all = torch.cat([cache.v[layer][rows_t, :, :nmax].to(v.dtype), v], dim=2)
        o = sdpa(q, k_all, v_all, attn_mask=mask)
        o = o.transpose(1, 2).reshape(n * t, d)
        h = h + torch.addmm(block.attn.c_proj.bias, o, block.attn.c_proj.weight).view(n, t, d)
        m = block.ln_2(h).reshape(n * t, d)
        m = F.gelu(torch.addmm(block.mlp.c_fc.bias, m, block.mlp.c_fc.weight), approximate="tanh")
        h = h + torch.addmm(block.mlp.c_proj.bias, m, block.mlp.c_proj.weight).view(n, t, d)
    h = tr.ln_f(h)[:, 2::3]  # the re-stated item of each candidate: (n, C, d)
    probs = torch.softmax(model.output_logits(h).float()[..., :3], dim=-1)
    return probs.double().cpu().numpy()
