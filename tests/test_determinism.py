"""What is identical across batch sizes, and the bound on the rest (docs/determinism.md)."""

from __future__ import annotations

import gymnasium as gym
import numpy as np
import pytest

import recsim_env  # noqa: F401

USERS, STEPS = 6, 12


def _actions(t: int, user: int) -> np.ndarray:
    return np.random.default_rng(1000 * t + user).permutation(8)[:3]


def _rollout(env_id: str, kwargs: dict, num_envs: int) -> tuple[np.ndarray, ...]:
    """Users 0..USERS-1 (seeds 100 + i) in a batch of num_envs rows (spare rows get other users)."""
    kwargs = {**kwargs, "action_mode": "slate"}  # the same candidate indices in every batch
    vec = gym.make_vec(env_id, num_envs=num_envs, vectorization_mode="vector_entry_point", **kwargs)
    vec.reset(seed=[100 + i for i in range(num_envs)])
    probs, resp, leave = [], [], []
    for t in range(STEPS):
        acts = np.stack([_actions(t, i) for i in range(num_envs)])
        _, _, _, _, info = vec.step(acts)
        probs.append(info["response_probs"][:USERS])
        resp.append(info["responses"][:USERS])
        leave.append(info["leave_prob"][:USERS])
    vec.close()
    return np.stack(probs), np.stack(resp), np.stack(leave)


def _one_at_a_time(env_id: str, kwargs: dict) -> tuple[np.ndarray, ...]:
    parts = []
    for i in range(USERS):
        kw = {**kwargs, "action_mode": "slate"}
        vec = gym.make_vec(env_id, num_envs=1, vectorization_mode="vector_entry_point", **kw)
        vec.reset(seed=[100 + i])
        rows = []
        for t in range(STEPS):
            _, _, _, _, info = vec.step(_actions(t, i)[None])
            rows.append((info["response_probs"][0], info["responses"][0], info["leave_prob"][0]))
        parts.append(rows)
    return tuple(
        np.stack([np.stack([parts[i][t][k] for i in range(USERS)]) for t in range(STEPS)])
        for k in range(3)
    )


def _kwargs(env_id: str, tiny_sim_dir) -> dict:
    small = {"slate_size": 3, "num_candidates": 8, "max_episode_steps": 50}
    if env_id == "LLMUserSim-v0":
        return {**small, "simulator": str(tiny_sim_dir)}
    return {**small, "world": {"num_items": 50, "num_topics": 5, "population_size": 200, "seed": 3}}


def test_the_world_is_bit_identical_across_batch_sizes(tiny_sim_dir) -> None:
    kwargs = _kwargs("ParametricUserSim-v0", tiny_sim_dir)
    alone = _one_at_a_time("ParametricUserSim-v0", kwargs)
    for n in (USERS, 32):
        for a, b in zip(alone, _rollout("ParametricUserSim-v0", kwargs, n)):
            np.testing.assert_array_equal(a, b)


@pytest.mark.parametrize("ckpt", ["tiny_sim_dir", "tiny_recency_sim_dir"])
def test_the_llm_user_is_identical_up_to_float_rounding(request, ckpt) -> None:
    """Trajectories are identical; probabilities agree to 1e-6 (CPU float32 kernels pick
    other blockings for other row counts; measured up to 1.8e-7 on the default)."""
    kwargs = _kwargs("LLMUserSim-v0", request.getfixturevalue(ckpt))
    alone = _one_at_a_time("LLMUserSim-v0", kwargs)
    for n in (USERS, 32):
        probs, resp, leave = _rollout("LLMUserSim-v0", kwargs, n)
        np.testing.assert_array_equal(resp, alone[1])
        np.testing.assert_allclose(probs, alone[0], rtol=0, atol=1e-6)
        np.testing.assert_allclose(leave, alone[2], rtol=0, atol=1e-6)
