"""Recency attention (attention_window_steps > 0): training mask, ring-buffer KV cache, scoring."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from simulators.gpt2_user import GPT2UserSimulator
from simulators.gpt2_user.candidates import candidate_probs
from simulators.lm.attention import recency_slopes, window_bias
from simulators.lm.model import SimulatorConfig, packed_probs
from simulators.tokenization import step_block_length
from tests.conftest import session_batch


def _full_session_probs(sim: GPT2UserSimulator, profile, slates, responses):
    with torch.no_grad():
        probs, kind = packed_probs(sim.model, session_batch(sim, profile, slates, responses))
    steps, k = len(slates), len(slates[0])
    return probs[kind == 1][:, :3].numpy().reshape(steps, k, 3), probs[kind == 2][:, 4].numpy()


def test_window_bias_sees_profile_own_step_and_window_only():
    steps = torch.tensor([[-1, -1, 0, 0, 1, 1, 2, 2, 3, 3]])
    allowed = torch.ones(10, 10, dtype=torch.bool).tril()[None]
    bias = window_bias(steps, steps, allowed, 1, recency_slopes(2))  # (1, 2, 10, 10)
    visible = torch.isfinite(bias[0, 0])
    assert visible[9, :2].all()  # the profile, from any step
    assert visible[9, 6:].all() and not visible[9, 2:6].any()  # steps 2 and 3 only
    assert not visible[4, 5]  # causal within a step
    assert bias[0, 0, 9, 6] == -1.0 and bias[0, 0, 9, 8] == 0.0  # head 0: -1 per step back
    assert (bias[0, 1][visible] == 0).all()  # the last head has no recency penalty


def test_config_rejects_a_negative_window():
    with pytest.raises(ValueError, match="attention_window_steps"):
        SimulatorConfig(attention_window_steps=-1)


def test_ring_stepping_matches_full_reencode_past_the_window(tiny_recency_sim_dir):
    sim = GPT2UserSimulator.from_pretrained(tiny_recency_sim_dir, capacity=3)
    assert sim.window == 2
    rng = np.random.default_rng(0)
    profiles = sim.population[:3]
    sim.start_sessions(np.arange(3), profiles)
    n_steps = 7  # the ring of 3 steps wraps twice
    slates = [
        np.stack([rng.choice(sim.num_items, 3, replace=False) for _ in range(3)])
        for _ in range(n_steps)
    ]
    resps = [rng.integers(0, 3, (3, 3)) for _ in range(n_steps)]
    stepped = [sim.step(np.arange(3), s, forced_responses=r) for s, r in zip(slates, resps)]
    for row in range(3):
        full_resp, full_leave = _full_session_probs(
            sim, profiles[row], [s[row] for s in slates], [r[row] for r in resps]
        )
        np.testing.assert_allclose(
            np.stack([o.response_probs[row] for o in stepped]), full_resp, atol=1e-5
        )
        np.testing.assert_allclose([o.leave_prob[row] for o in stepped[:-1]], full_leave, atol=1e-5)


def test_sampled_steps_match_full_reencode_of_what_was_sampled(tiny_recency_sim_dir):
    """Speculative decoding with re-runs inside a ring slot gives the teacher-forced figures."""
    sim = GPT2UserSimulator.from_pretrained(tiny_recency_sim_dir, capacity=4)
    rng = np.random.default_rng(3)
    profiles = sim.population[:4]
    sim.start_sessions(np.arange(4), profiles)
    slates, outs = [], []
    for _ in range(6):
        s = np.stack([rng.choice(sim.num_items, 3, replace=False) for _ in range(4)])
        u = 1.0 - rng.random((4, 4)) * np.array([0.3, 0.3, 0.3, 1.0])  # clicks are likely
        slates.append(s)
        outs.append(sim.step(np.arange(4), s, u))
    assert any((o.responses > 0).any() for o in outs)
    for row in range(4):
        full_resp, _ = _full_session_probs(
            sim, profiles[row], [s[row] for s in slates], [o.responses[row] for o in outs]
        )
        np.testing.assert_allclose(
            np.stack([o.response_probs[row] for o in outs]), full_resp, atol=1e-5
        )


def test_step_cost_is_flat_once_the_ring_is_full(tiny_recency_sim_dir):
    sim = GPT2UserSimulator.from_pretrained(tiny_recency_sim_dir, capacity=2)
    sim.start_sessions(np.arange(2), sim.population[:2])
    rng = np.random.default_rng(1)
    work, buffers = [], set()
    for _ in range(30):
        flops = sim.stats["flops"]
        forced = np.zeros((2, 3), dtype=np.int64)  # one forward per step
        sim.step(np.arange(2), rng.integers(0, sim.num_items, (2, 3)), forced_responses=forced)
        work.append(sim.stats["flops"] - flops)
        buffers.add(sim.cache.k.data_ptr())
    assert work[3] > work[0]  # attention over a growing ring ...
    assert len(set(work[3:])) == 1  # ... then the same work at any history length
    assert len(buffers) == 1  # sized once, at the first step, never reallocated
    ring = sim.prefix_length + (sim.window + 1) * step_block_length(3)
    assert sim.cache.context == ring == sim.cache_positions(3) < sim.sim_config.context_length


def test_a_new_slate_size_between_sessions_resizes_the_ring(tiny_recency_sim_dir):
    sim = GPT2UserSimulator.from_pretrained(tiny_recency_sim_dir, capacity=2)
    assert sim.cache.context == sim.prefix_length  # before any step: the profile alone
    rng = np.random.default_rng(2)
    for k in (3, 5):
        sim.start_sessions(np.arange(2), sim.population[:2])
        for _ in range(4):
            slate = np.stack([rng.permutation(sim.num_items)[:k]] * 2)
            out = sim.step(np.arange(2), slate, rng.random((2, k + 1)))
            assert np.isfinite(out.response_probs).all()
        assert sim.cache.context == sim.cache_positions(k)
    fresh = GPT2UserSimulator.from_pretrained(tiny_recency_sim_dir, capacity=2)
    fresh.start_sessions(np.arange(2), sim.population[:2])
    slate = np.stack([np.arange(5)] * 2)
    sim.start_sessions(np.arange(2), sim.population[:2])
    np.testing.assert_allclose(
        sim.peek(np.arange(2), slate).response_probs,
        fresh.peek(np.arange(2), slate).response_probs,
        atol=1e-6,
    )


def test_peek_and_candidate_scoring_agree_with_a_one_item_step(tiny_recency_sim_dir):
    sim = GPT2UserSimulator.from_pretrained(tiny_recency_sim_dir, capacity=2)
    sim.start_sessions(np.arange(2), sim.population[:2])
    rng = np.random.default_rng(2)
    cands = np.array([[1, 2, 3, 4], [5, 6, 7, 8]])
    for step in range(5):
        if step:
            sim.step(np.arange(2), rng.integers(0, sim.num_items, (2, 3)), rng.random((2, 4)))
        scored = candidate_probs(sim, np.arange(2), cands)
        for j in range(cands.shape[1]):
            peek = sim.peek(np.arange(2), cands[:, j : j + 1], np.full((2, 2), 0.5))
            np.testing.assert_allclose(scored[:, j], peek.response_probs[:, 0], atol=1e-5)


@pytest.mark.parametrize("window", ["recency", "full"])
def test_slates_of_any_length_mid_session_match_a_full_reencode(
    window, tiny_recency_sim_dir, tiny_sim_dir
):
    """A longer slate grows the ring mid-session (slots move), a shorter one fills part of its
    slot; the full-attention context refills whole steps: either way, what the forward sees."""
    sim = GPT2UserSimulator.from_pretrained(
        tiny_recency_sim_dir if window == "recency" else tiny_sim_dir, capacity=2
    )
    rng = np.random.default_rng(5)
    sizes = [3, 2, 5, 1, 4, 6, 2, 7, 3] if window == "recency" else [3, 9, 2, 12, 5, 11, 4, 8]
    profiles = sim.population[:2]
    sim.start_sessions(np.arange(2), profiles)
    slates = [
        np.stack([rng.choice(sim.num_items, k, replace=False) for _ in range(2)]) for k in sizes
    ]
    resps = [rng.integers(0, 3, (2, k)) for k in sizes]
    stepped = [sim.step(np.arange(2), s, forced_responses=r) for s, r in zip(slates, resps)]
    if window == "recency":
        assert sim.ring.block == step_block_length(max(sizes))
    for row in range(2):
        enc = session_batch(sim, profiles[row], [s[row] for s in slates], [r[row] for r in resps])
        if window == "full":  # the windows training reads (refilled whole steps)
            from simulators.training.data import collate, pack_rows, session_windows

            e = sim.tokenizer.encode_session(
                profiles[row],
                [s[row] for s in slates],
                [r[row] for r in resps],
                False,
                sim.model.item_known.numpy(),
                sim.item_category,
            )
            c = sim.sim_config.context_length
            wins = session_windows(e, c, sim.sim_config.window_steps, sim.prefix_length)
            assert len(wins) > 1  # the context was refilled
            enc = collate(pack_rows(wins, c, np.arange(len(wins))))
        with torch.no_grad():
            probs, kind = packed_probs(sim.model, enc)
        full = probs[kind == 1][:, :3].numpy()
        np.testing.assert_allclose(
            np.concatenate([o.response_probs[row] for o in stepped]), full, atol=1e-5
        )
