"""The session-summary channel: codes in the encoding, the same codes at inference, training."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from recsim_env.cli import main
from simulators.base import Response
from simulators.gpt2_user import GPT2UserSimulator
from simulators.gpt2_user.candidates import candidate_probs
from simulators.lm.model import packed_probs
from simulators.tokenization import SimTokenizer, summary_codes
from tests.conftest import session_batch

S, C, B = Response.SKIP, Response.CLICK, Response.BUY


def test_codes_count_earlier_clicks_and_buys_of_the_item_category():
    tok = SimTokenizer(["a=1"], num_items=6, profile_slots=1)
    category = np.array([0, 0, 1, 1, 2, 2])
    slates = [np.array([0, 2, 4]), np.array([1, 3, 5]), np.array([0, 3, 5])]
    responses = [np.array([C, S, S]), np.array([B, S, S]), np.array([S, S, S])]
    enc = tok.encode_session(np.array([0]), slates, responses, False, None, category)
    items = enc.items >= 0
    assert (enc.summary[~items] == 0).all()  # control, profile and response tokens
    by_step = [enc.summary[s + 1 : s + 4] for s in enc.step_start]  # the slate tokens
    np.testing.assert_array_equal(by_step[0], [0, 0, 0])  # nothing consumed yet
    np.testing.assert_array_equal(by_step[1], [summary_codes(1, 0), 0, 0])  # one click of cat 0
    np.testing.assert_array_equal(by_step[2], [summary_codes(2, 1), 0, 0])  # then a buy
    restated = enc.summary[enc.step_start[2] + 4 :: 2][:3]
    np.testing.assert_array_equal(restated, by_step[2])  # re-stated items carry the same code


def test_codes_are_capped():
    assert summary_codes(np.array([50]), np.array([50]))[0] == summary_codes(7, 3)
    assert len({int(summary_codes(c, b)) for c in range(8) for b in range(4)}) == 32


@pytest.mark.parametrize("ckpt", ["tiny_recency_summary_sim_dir", "tiny_summary_sim_dir"])
def test_stepping_matches_a_full_forward_with_the_summary(request, ckpt):
    sim = GPT2UserSimulator.from_pretrained(request.getfixturevalue(ckpt), capacity=4)
    assert sim.model.summary_emb is not None
    rng = np.random.default_rng(5)
    profiles = sim.population[:4]
    sim.start_sessions(np.arange(4), profiles)
    slates, outs = [], []
    for _ in range(7):
        s = np.stack([rng.choice(8, 3, replace=False) for _ in range(4)])  # few categories: repeats
        u = 1.0 - rng.random((4, 4)) * np.array([0.3, 0.3, 0.3, 1.0])  # clicks are likely
        slates.append(s)
        outs.append(sim.step(np.arange(4), s, u))
    assert int(sim.consumed.sum()) > 0
    for row in range(4):
        with torch.no_grad():
            probs, kind = packed_probs(
                sim.model,
                session_batch(
                    sim, profiles[row], [s[row] for s in slates], [o.responses[row] for o in outs]
                ),
            )
        np.testing.assert_allclose(
            np.concatenate([o.response_probs[row] for o in outs]),
            probs[kind == 1][:, :3].numpy(),
            atol=1e-5,
        )


def test_the_summary_changes_predictions(tiny_recency_summary_sim_dir):
    """A wrong code would go unnoticed if the channel had no effect: with a summary the
    prediction differs from the same history without it."""
    sim = GPT2UserSimulator.from_pretrained(tiny_recency_summary_sim_dir, capacity=1)
    profile = sim.population[:1]
    slates = [np.array([[0, 1, 2]])] * 3
    sim.start_sessions(np.arange(1), profile)
    for s in slates:
        last = sim.step(np.arange(1), s, forced_responses=np.array([[C, S, S]]))
    with torch.no_grad():
        probs, kind = packed_probs(
            sim.model,
            {**session_batch(sim, profile[0], [s[0] for s in slates], [[C, S, S]] * 3)},
        )
    batch = session_batch(sim, profile[0], [s[0] for s in slates], [[C, S, S]] * 3)
    batch["summary"] = torch.zeros_like(batch["summary"])
    with torch.no_grad():
        blind, _ = packed_probs(sim.model, batch)
    np.testing.assert_allclose(last.response_probs[0], probs[kind == 1][-3:, :3], atol=1e-5)
    assert not np.allclose(probs.numpy(), blind.numpy(), atol=1e-4)


def test_candidate_scoring_uses_the_summary(tiny_recency_summary_sim_dir):
    sim = GPT2UserSimulator.from_pretrained(tiny_recency_summary_sim_dir, capacity=2)
    sim.start_sessions(np.arange(2), sim.population[:2])
    cands = np.array([[0, 1, 2, 3], [4, 5, 6, 7]])
    for step in range(4):
        if step:
            forced = np.array([[C, S, S], [B, S, S]])
            sim.step(np.arange(2), cands[:, [step - 1, 0, 1]], forced_responses=forced)
        scored = candidate_probs(sim, np.arange(2), cands)
        for j in range(cands.shape[1]):
            peek = sim.peek(np.arange(2), cands[:, j : j + 1], np.full((2, 2), 0.5))
            np.testing.assert_allclose(scored[:, j], peek.response_probs[:, 0], atol=1e-5)


def test_train_sim_adds_the_channel_to_a_checkpoint(tiny_logs_dir, tiny_recency_sim_dir, tmp_path):
    out = tmp_path / "sim"
    rc = main(
        [
            "train-sim",
            "--logs",
            str(tiny_logs_dir),
            "--out",
            str(out),
            "--init-sim",
            str(tiny_recency_sim_dir),
            "--session-summary",
            "--max-steps",
            "2",
            "--eval-every",
            "1",
            "--batch-size",
            "2",
        ]
    )
    assert rc == 0
    meta = json.loads((out / "simulator_config.json").read_text())
    assert meta["simulator"]["session_summary"] is True
    assert meta["simulator"]["attention_window_steps"] == 2  # kept from the checkpoint
    sim = GPT2UserSimulator.from_pretrained(out)
    assert sim.model.summary_emb is not None
    assert float(sim.model.summary_emb.weight.detach().abs().sum()) > 0  # it trained from zero
