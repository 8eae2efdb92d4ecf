"""CUDA paths of the batched simulator (marked gpu: skipped without CUDA, run with `-m gpu`).

CI has no GPU; these run on a lent GPU machine: `python -m pytest -m gpu tests/test_cuda.py`.
They pin that the device path (SDPA over the cache, bfloat16 on the GPU, the recency ring)
answers what the CPU path answers.
"""

import gymnasium as gym
import numpy as np
import pytest
import torch

import recsim_env  # noqa: F401  (registers the envs)
from evaluation.speed import SpeedConfig, measure
from simulators.gpt2_user import GPT2UserSimulator
from simulators.gpt2_user.candidates import candidate_probs

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA"),
]
CKPTS = [
    "tiny_sim_dir",
    "tiny_recency_sim_dir",
    "tiny_summary_sim_dir",
    "tiny_recency_summary_sim_dir",
]


def _run(sim: GPT2UserSimulator, steps: int, seed: int) -> list:
    """Steps of all four rows and of a gathered subset of rows, with forced responses."""
    rng = np.random.default_rng(seed)
    sim.start_sessions(np.arange(4), sim.population[:4])
    outs = []
    for i in range(steps):
        rows = np.arange(4) if i % 3 else np.array([3, 1])  # gathered rows every third step
        slates = np.stack([rng.choice(sim.num_items, 3, replace=False) for _ in rows])
        forced = rng.integers(0, 3, (len(rows), 3))
        outs.append(sim.step(rows, slates, forced_responses=forced))
    return outs


@pytest.mark.parametrize("ckpt", CKPTS)
@pytest.mark.parametrize("dtype,tol", [("float32", 1e-4), ("bfloat16", 0.05)])
def test_cuda_stepping_matches_cpu(request, ckpt, dtype, tol):
    path = request.getfixturevalue(ckpt)
    cpu = GPT2UserSimulator.from_pretrained(path, capacity=4)
    gpu = GPT2UserSimulator.from_pretrained(path, capacity=4, device="cuda", dtype=dtype)
    for a, b in zip(_run(cpu, 14, 0), _run(gpu, 14, 0)):  # across refills / ring wraps
        assert np.isfinite(b.response_probs).all()
        np.testing.assert_allclose(b.response_probs, a.response_probs, atol=tol)
        np.testing.assert_allclose(b.leave_prob, a.leave_prob, atol=tol)


@pytest.mark.parametrize("ckpt", CKPTS)
def test_cuda_candidate_scores_match_cpu(request, ckpt):
    path = request.getfixturevalue(ckpt)
    sims = [GPT2UserSimulator.from_pretrained(path, capacity=4, device=d) for d in ("cpu", "cuda")]
    cands = np.tile(np.arange(8), (4, 1))
    got = []
    for sim in sims:
        _run(sim, 5, 1)
        got.append(candidate_probs(sim, np.arange(4), cands))
    np.testing.assert_allclose(got[1], got[0], atol=1e-4)


def test_vector_env_runs_on_cuda_in_bfloat16(tiny_recency_sim_dir):
    env = gym.make_vec(
        "LLMUserSim-v0",
        num_envs=8,
        vectorization_mode="vector_entry_point",
        simulator=str(tiny_recency_sim_dir),
        device="cuda",
        dtype="bfloat16",
        slate_size=3,
        num_candidates=8,
        history_length=4,
        max_episode_steps=12,
    )
    env.reset(seed=0)
    env.action_space.seed(0)
    for _ in range(20):
        _obs, reward, _term, _trunc, _info = env.step(env.action_space.sample())
        assert np.isfinite(reward).all()
    env.close()


def test_speed_smoke_on_cuda(tiny_recency_sim_dir):
    fig = measure(
        SpeedConfig(
            sim=str(tiny_recency_sim_dir),
            device="cuda",
            dtype="bfloat16",
            smoke=True,
            quick=True,
            num_envs=(1, 64),
            histories=(1, 8),
            sweep_num_envs=16,
            env_kwargs={"slate_size": 3, "num_candidates": 8},
        )
    )
    assert fig["peak_cuda_allocated_mb"] > 0
    assert fig["batched_64"] > 0 and fig["peak_fraction"] > 0


def test_cuda_attention_takes_more_rows_than_the_kernel_grid():
    """65,536+ rows in bfloat16 (the flash kernel's grid limit) run in parts, with the same result."""
    from simulators.lm.attention import sdpa

    g = torch.Generator(device="cuda").manual_seed(0)
    q, k, v = (
        torch.randn(70_000, 2, 5, 8, device="cuda", dtype=torch.bfloat16, generator=g)
        for _ in range(3)
    )
    with torch.inference_mode():
        out = sdpa(q, k, v, is_causal=True)
        ref = sdpa(q[-100:], k[-100:], v[-100:], is_causal=True)
    assert out.shape == q.shape
    torch.testing.assert_close(out[-100:], ref)
