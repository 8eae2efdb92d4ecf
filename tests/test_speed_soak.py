import json

import numpy as np
import pytest
import torch
import torch.nn.functional as F

import simulators.gpt2_user.simulator as gpt2_user
import simulators.lm.attention as lm_attention
from recsim_env.cli import main
from simulators.gpt2_user import GPT2UserSimulator
from simulators.lm.attention import CachedAttention
from simulators.lm.cache import StaticKVCache
from simulators.lm.model import packed_probs
from simulators.tokenization import step_block_length
from simulators.training.data import collate

SPEED_KEYS = {
    "naive_h1",
    "naive_h50",
    "batched_1",
    "batched_16",
    "batched_64",
    "batched_256",
    "batched_1024",
    "batched_256_h1",
    "batched_256_h50",
    "batched_256_h200",
    "batched_vs_naive_h50",
    "history_cost_ratio_200_vs_1",
    "peak_fraction",
    "parametric_256",
    "peak_rss_mb",
    "device",
    "dtype",
    "torch_threads",
}
SOAK_KEYS = {"rss_growth_fraction", "samples", "steps", "seconds", "steps_per_second"}


# ----------------------------------------------------------------------------- the commands
@pytest.mark.parametrize("ckpt", ["tiny_sim_dir", "tiny_recency_sim_dir"])
def test_speed_runs_end_to_end_and_writes_the_keys(request, ckpt, tmp_path, capsys):
    out = tmp_path / "speed.json"
    rc = main(
        [
            "speed",
            "--smoke",
            "--sim",
            str(request.getfixturevalue(ckpt)),
            "--json",
            str(out),
            "--slate-size",
            "3",
            "--num-candidates",
            "8",
            "--threads",
            "1",
        ]
    )
    assert rc == 0
    fig = json.loads(out.read_text())
    assert SPEED_KEYS <= set(fig), SPEED_KEYS - set(fig)
    assert fig["device"] == "cpu" and fig["dtype"] == "float32" and fig["torch_threads"] == 1
    for key in SPEED_KEYS - {"device", "dtype", "torch_threads"}:
        assert np.isfinite(fig[key]) and fig[key] > 0, key
    assert set(fig["targets"]) == {
        "batched_vs_naive_h50",
        "history_cost_ratio_200_vs_1",
        "peak_fraction",
        "parametric_256",
        "torchrl_vs_direct_256",  # the client paths at --client-num-envs (default 256)
        "sb3_vs_direct_256",
        "torchrl_65536",  # the GPU target, shown unmeasured on CPU
    }
    table = capsys.readouterr().out
    assert "batched_vs_naive_h50" in table and "naive_h50" in table


def test_speed_rejects_bad_flags(tiny_sim_dir, capsys):
    assert main(["speed", "--sim", str(tiny_sim_dir), "--num-envs", "0,4"]) == 2
    assert "--num-envs" in capsys.readouterr().err


@pytest.mark.parametrize("env", ["LLMUserSim-v0", "ParametricUserSim-v0"])
def test_soak_runs_end_to_end_and_writes_the_keys(env, tiny_sim_dir, tmp_path, capsys):
    out = tmp_path / "soak.json"
    args = [
        "soak",
        "--steps",
        "400",
        "--num-envs",
        "8",
        "--env",
        env,
        "--json",
        str(out),
        "--samples",
        "4",
    ]
    if env == "LLMUserSim-v0":
        args += ["--sim", str(tiny_sim_dir)]
    assert main(args) == 0
    fig = json.loads(out.read_text())
    assert SOAK_KEYS <= set(fig)
    assert fig["steps"] == 400 and fig["env"] == env
    assert np.isfinite(fig["rss_growth_fraction"]) and fig["steps_per_second"] > 0
    assert [s["user_steps"] for s in fig["samples"]] == sorted(
        s["user_steps"] for s in fig["samples"]
    )
    assert sum(bool(s.get("warmup")) for s in fig["samples"]) == 1
    assert "rss_growth_fraction" in capsys.readouterr().out


# ----------------------------------------------------------------------------- parity
def _expected_context(sim, hist, block):
    """What the sliding window keeps before a step (an independent re-statement of the rule)."""
    c, p = sim.sim_config.context_length, sim.prefix_length
    if len(hist["input_ids"]) + block <= c:
        return hist
    w = max(1, min(sim.sim_config.window_steps, (c - p) // block - 1))
    return {key: np.concatenate([v[:p], v[len(v) - w * block :]]) for key, v in hist.items()}


@pytest.mark.parametrize("ckpt", ["tiny_sim_dir", "tiny_summary_sim_dir"])
def test_speculative_sampled_steps_match_full_forward_across_refills(request, ckpt):
    """KV-cache stepping with sampled responses (speculation re-runs included) == a full forward
    (with the session summary: refills re-encode its codes too)."""
    sim = GPT2UserSimulator.from_pretrained(request.getfixturevalue(ckpt), capacity=4)
    known = sim.model.item_known.numpy()
    rng = np.random.default_rng(3)
    rows, k = np.arange(4), 3
    block = step_block_length(k)
    profiles = sim.population[:4]
    sim.start_sessions(rows, profiles)
    hist = []
    for prof in profiles:
        ids, roles = sim.tokenizer.prefix(prof)
        hist.append(
            {
                "input_ids": ids,
                "roles": roles,
                "slots": np.zeros_like(ids),
                "items": np.full_like(ids, -1),
                "summary": np.zeros_like(ids),
            }
        )
    past_slates, past_resp = [[] for _ in rows], [[] for _ in rows]
    diverged = 0
    for _step in range(16):  # 7 + 16 x 10 tokens > context 128: two refills
        slates = np.stack([rng.choice(sim.num_items, k, replace=False) for _ in rows])
        u = rng.random((4, k + 1))
        u[:, :k] = np.where(rng.random((4, k)) < 0.5, 1 - u[:, :k] * 0.3, u[:, :k])  # many clicks
        out = sim.step(rows, slates, u)
        diverged += int((out.responses != 0).any(axis=1).sum())
        for r in rows:
            past_slates[r].append(slates[r])
            past_resp[r].append(out.responses[r])
            enc = sim.tokenizer.encode_session(
                profiles[r], past_slates[r], past_resp[r], False, known, sim.item_category
            )
            channels = ("input_ids", "roles", "slots", "items", "summary")
            blk = {key: getattr(enc, key)[-block:] for key in channels}
            ctx = _expected_context(sim, hist[r], block)
            seq = {key: np.concatenate([ctx[key], blk[key]]) for key in blk}
            t = len(seq["input_ids"])
            kind = np.zeros(t, dtype=np.int64)
            kind[-block:] = enc.target_kind[-block:]
            kind[-1] = 2  # the leave decision after the last response
            batch = collate(
                [
                    {
                        **seq,
                        "position_ids": np.arange(t),
                        "step_ids": np.zeros(t, dtype=np.int64),  # (absolute positions: unused)
                        "segment_ids": np.zeros(t, dtype=np.int64),
                        "target_kind": kind,
                        "target": np.zeros(t, dtype=np.int64),
                    }
                ]
            )
            with torch.no_grad():
                probs, kinds = packed_probs(sim.model, batch)
            np.testing.assert_allclose(
                out.response_probs[r], probs[kinds == 1][:, :3].numpy(), atol=1e-5
            )
            np.testing.assert_allclose(out.leave_prob[r], probs[kinds == 2][0, 4].item(), atol=1e-5)
            hist[r] = seq
    assert diverged > 10  # the re-run path was exercised


def _rollout(sim, rows, slates, uniforms):
    return [sim.step(rows, s, u) for s, u in zip(slates, uniforms)]


@pytest.mark.parametrize("ckpt", ["tiny_sim_dir", "tiny_recency_sim_dir"])
def test_rows_do_not_depend_on_batch_subset_or_blocking(request, ckpt, monkeypatch):
    tiny_sim_dir = request.getfixturevalue(ckpt)
    rng = np.random.default_rng(0)
    k, steps, n = 3, 14, 8
    sim_all = GPT2UserSimulator.from_pretrained(tiny_sim_dir, capacity=n)
    profiles = sim_all.population[:n]
    slates = [
        np.stack([rng.choice(sim_all.num_items, k, replace=False) for _ in range(n)])
        for _ in range(steps)
    ]
    uni = [rng.random((n, k + 1)) for _ in range(steps)]
    sim_all.start_sessions(np.arange(n), profiles)
    ref = _rollout(sim_all, np.arange(n), slates, uni)
    # one row alone
    solo = GPT2UserSimulator.from_pretrained(tiny_sim_dir, capacity=1)
    solo.start_sessions(np.arange(1), profiles[5:6])
    one = _rollout(solo, np.arange(1), [s[5:6] for s in slates], [u[5:6] for u in uni])
    # two rows of a larger cache (the gathered first-forward path)
    sub = GPT2UserSimulator.from_pretrained(tiny_sim_dir, capacity=n)
    sub.start_sessions(np.array([1, 5]), profiles[[1, 5]])
    two = _rollout(sub, np.array([1, 5]), [s[[1, 5]] for s in slates], [u[[1, 5]] for u in uni])
    # forwards split into row blocks of a few tokens
    monkeypatch.setattr(gpt2_user, "_CPU_TOKENS_PER_FORWARD", 20)
    monkeypatch.setattr(lm_attention, "ATTENTION_CHUNK_ELEMENTS", 300)
    blocked = GPT2UserSimulator.from_pretrained(tiny_sim_dir, capacity=n)
    blocked.start_sessions(np.arange(n), profiles)
    blk = _rollout(blocked, np.arange(n), slates, uni)
    for t in range(steps):
        for got, idx in ((one[t], [5]), (two[t], [1, 5]), (blk[t], list(range(n)))):
            np.testing.assert_array_equal(got.responses, ref[t].responses[idx])
            np.testing.assert_allclose(got.response_probs, ref[t].response_probs[idx], atol=1e-5)
            np.testing.assert_allclose(got.leave_prob, ref[t].leave_prob[idx], atol=1e-5)


def test_forced_responses_and_peek_take_one_forward(tiny_sim_dir):
    sim = GPT2UserSimulator.from_pretrained(tiny_sim_dir, capacity=3)
    sim.start_sessions(np.arange(3), sim.population[:3])
    slate = np.array([[1, 2, 3], [4, 5, 6], [7, 8, 9]])
    forced = np.array([[1, 0, 2], [0, 0, 0], [2, 1, 1]])
    before = sim.stats["forwards"]
    out = sim.step(np.arange(3), slate, forced_responses=forced)
    assert sim.stats["forwards"] == before + 1
    np.testing.assert_array_equal(out.responses, forced)
    np.testing.assert_allclose(out.response_probs.sum(-1), 1.0, atol=1e-6)


def test_cached_attention_matches_reference_attention():
    torch.manual_seed(0)
    b, nh, c, hd, t, n = 6, 2, 64, 8, 3, 48
    for dtype, tol in ((torch.float32, 1e-5), (torch.bfloat16, 3e-2)):
        cache = StaticKVCache(1, 10, nh, c, hd, "cpu", dtype)
        cache.k.normal_()
        cache.v.normal_()
        rows = torch.tensor([7, 0, 3, 9, 2, 5])
        start = torch.tensor([0, 40, 17, 3, 44, 30])
        pos = start[:, None] + torch.arange(t)
        qkv = torch.randn(b, t, 3, nh * hd).to(dtype)
        q_new, k_new, v_new = qkv.view(b, t, 3, nh, hd).unbind(2)
        got = CachedAttention(cache, pos, rows, n, None)(0, q_new, k_new, v_new).float()
        k = cache.k[0, rows, :, :n].float()
        v = cache.v[0, rows, :, :n].float()
        q = qkv[:, :, 0].float().view(b, t, nh, hd).transpose(1, 2)
        mask = torch.arange(n) <= pos[:, None, :, None]
        ref = (
            F.scaled_dot_product_attention(q, k, v, attn_mask=mask)
            .transpose(1, 2)
            .reshape(b * t, nh * hd)
        )
        torch.testing.assert_close(got, ref, atol=tol, rtol=tol)
        new_k = qkv[:, :, 1].view(b, t, nh, hd).transpose(1, 2)
        torch.testing.assert_close(cache.k[0, rows[:, None], :, pos].transpose(1, 2), new_k)


@pytest.mark.parametrize("ckpt", ["tiny_sim_dir", "tiny_recency_sim_dir"])
@pytest.mark.parametrize("chunk", [None, 300])
def test_bfloat16_simulator_is_close_to_float32(request, monkeypatch, chunk, ckpt):
    if chunk is not None:  # full (padded) attention blocks instead of small float32 ones
        monkeypatch.setattr(lm_attention, "ATTENTION_CHUNK_ELEMENTS", chunk)
    rng = np.random.default_rng(1)
    sims = [
        GPT2UserSimulator.from_pretrained(request.getfixturevalue(ckpt), capacity=4, dtype=d)
        for d in ("float32", "bfloat16")
    ]
    for sim in sims:
        sim.start_sessions(np.arange(4), sims[0].population[:4])
    for _ in range(14):  # across a refill (full attention) or ring wraps (recency)
        slates = np.stack([rng.choice(sims[0].num_items, 3, replace=False) for _ in range(4)])
        forced = rng.integers(0, 3, (4, 3))
        a, b = (s.step(np.arange(4), slates, forced_responses=forced) for s in sims)
        assert np.isfinite(b.response_probs).all()
        np.testing.assert_allclose(b.response_probs.sum(-1), 1.0, atol=1e-3)
        np.testing.assert_allclose(a.response_probs, b.response_probs, atol=0.05)
        np.testing.assert_allclose(a.leave_prob, b.leave_prob, atol=0.05)
