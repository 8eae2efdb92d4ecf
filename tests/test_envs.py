import warnings

import gymnasium as gym
import numpy as np
import pytest
import torch
from gymnasium.utils.env_checker import check_env, data_equivalence
from stable_baselines3.common.env_checker import check_env as sb3_check_env

import recsim_env  # noqa: F401
from recsim_env.env import LLMUserSimEnv, ParametricUserSimEnv

SMALL = {"slate_size": 3, "num_candidates": 8, "history_length": 4, "action_mode": "slate"}
"""The slate action (MultiDiscrete), whose contract these tests pin; the score modes: test_gym_conformance."""


def _envs(tiny_sim_dir):
    return [
        (
            "ParametricUserSim-v0",
            {"world": {"num_items": 50, "num_topics": 5, "population_size": 100}, **SMALL},
        ),
        ("LLMUserSim-v0", {"simulator": str(tiny_sim_dir), **SMALL}),
    ]


def test_both_env_checkers_pass_without_warnings(tiny_sim_dir):
    for env_id, kwargs in _envs(tiny_sim_dir):
        env = gym.make(env_id, **kwargs)
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            check_env(env.unwrapped)
            sb3_check_env(env.unwrapped)
        assert not caught, f"{env_id}: {[str(w.message) for w in caught]}"


def _rollout(env, seed, steps=40):
    obs, _ = env.reset(seed=seed)
    env.action_space.seed(seed)
    out = [obs]
    for _ in range(steps):
        obs, r, term, trunc, info = env.step(env.action_space.sample())
        assert env.observation_space.contains(obs)
        out.append((obs, r, term, trunc, info["responses"]))
        if term or trunc:
            obs, _ = env.reset()
            out.append(obs)
    return out


def test_rollouts_are_in_space_and_deterministic(tiny_sim_dir):
    for env_id, kwargs in _envs(tiny_sim_dir):
        a, b, c = (_rollout(gym.make(env_id, **kwargs), s) for s in (5, 5, 6))
        assert data_equivalence(a, b), env_id
        assert not data_equivalence(a, c), env_id


def test_reward_is_the_weighted_count_of_clicks_and_buys():
    env = gym.make("ParametricUserSim-v0", click_reward=2.0, buy_reward=10.0)
    env.reset(seed=0)
    for _ in range(30):
        _, r, term, trunc, info = env.step(env.action_space.sample())
        resp = info["responses"]
        assert r == 2.0 * (resp > 0).sum() + 10.0 * (resp == 2).sum()
        assert np.allclose(info["response_probs"].sum(-1), 1.0)
        if term or trunc:
            env.reset()


@pytest.mark.parametrize(
    ("action", "match"),
    [
        (np.array([0, 1]), "shape"),
        (np.array([0, 1, 2, 3, 40]), "out-of-range"),
        (np.array([0, 1, 2, 3, -1]), "out-of-range"),
        (np.array([0.5, 1, 2, 3, 4]), "non-integer"),
        (np.array([np.nan, 1, 2, 3, 4]), "non-integer or non-finite"),
        (np.array(["a"] * 5), "dtype"),
        (np.array([True] * 5), "dtype"),
    ],
)
def test_bad_actions_raise_value_error_saying_what_is_allowed(action, match):
    env = ParametricUserSimEnv(action_mode="slate")
    env.reset(seed=0)
    with pytest.raises(ValueError, match=match) as exc:
        env.step(action)
    assert "allowed" in str(exc.value)


def test_duplicates_are_deduped_or_rejected_by_policy():
    env = ParametricUserSimEnv(action_mode="slate")
    env.reset(seed=0)
    _, _, _, _, info = env.step(np.array([4, 4, 4, 0, 1]))
    assert len(set(info["item_ids"].tolist())) == 5
    strict = ParametricUserSimEnv(duplicate_policy="error", action_mode="slate")
    strict.reset(seed=0)
    with pytest.raises(ValueError, match="repeats"):
        strict.step(np.array([4, 4, 4, 0, 1]))


def test_step_before_reset_and_after_end_raise():
    env = ParametricUserSimEnv(action_mode="slate")
    with pytest.raises(RuntimeError, match="reset"):
        env.step(np.arange(5))
    env.reset(seed=1)
    term = False
    while not term:
        _, _, term, _, _ = env.step(np.arange(5))
    with pytest.raises(RuntimeError, match="reset"):
        env.step(np.arange(5))


def test_unknown_arguments_are_rejected():
    with pytest.raises(TypeError, match="unexpected"):
        ParametricUserSimEnv(slate_sise=3)
    with pytest.raises(ValueError, match="num_candidates"):
        ParametricUserSimEnv(slate_size=30)


def _greedy_first(obs):
    return np.argsort(obs["candidate_ids"], axis=-1)[..., :3]


@pytest.mark.parametrize("env_id", ["ParametricUserSim-v0", "LLMUserSim-v0"])
def test_a_users_trajectory_does_not_depend_on_the_batch(env_id, tiny_sim_dir):
    kwargs = {**dict(_envs(tiny_sim_dir))[env_id], "include_item_ids": True}
    runs = []
    for n in (1, 64):
        vec = gym.make_vec(env_id, num_envs=n, vectorization_mode="vector_entry_point", **kwargs)
        obs, _ = vec.reset(seed=11)
        traj = []
        for _ in range(15):
            obs, r, term, trunc, info = vec.step(_greedy_first(obs))
            traj.append((obs["candidate_ids"][0], r[0], term[0], info["responses"][0]))
        runs.append(traj)
    assert data_equivalence(runs[0], runs[1])


def test_vector_row_matches_single_env(tiny_sim_dir):
    kwargs = {**dict(_envs(tiny_sim_dir))["ParametricUserSim-v0"], "include_item_ids": True}
    vec = gym.make_vec(
        "ParametricUserSim-v0", num_envs=3, vectorization_mode="vector_entry_point", **kwargs
    )
    env = gym.make("ParametricUserSim-v0", **kwargs)
    vobs, _ = vec.reset(seed=20)
    sobs, _ = env.reset(seed=22)
    for _ in range(5):
        assert np.array_equal(vobs["candidate_ids"][2], sobs["candidate_ids"])
        vobs, vr, vt, _, _ = vec.step(_greedy_first(vobs))
        sobs, sr, st, _, _ = env.step(_greedy_first(sobs))
        assert vr[2] == sr
        if st:
            break


def test_llm_env_takes_device_and_rejects_unknown_dtype(tiny_sim_dir):
    env = LLMUserSimEnv(simulator=str(tiny_sim_dir), device="cpu", **SMALL)
    env.reset(seed=0)
    with pytest.raises(ValueError, match="dtype"):
        LLMUserSimEnv(simulator=str(tiny_sim_dir), dtype="float8", **SMALL)


def checker_complaints(caught) -> list[str]:
    """The checkers' warnings, less their advice to normalise a Box action to [-1, 1].

    The score modes' Box is [-5, 5] on purpose (`recsim_env.spaces.SCORE_BOUND`: PPO's clipped
    Gaussian ties fewer scores at the bounds).
    """
    advice = ("symmetric and normalized", "normalized Box action space")
    return [str(w.message) for w in caught if not any(a in str(w.message) for a in advice)]


def test_default_llm_env_works_offline_with_no_arguments(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    env = gym.make("LLMUserSim-v0")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        check_env(env.unwrapped)
        sb3_check_env(env.unwrapped)
    assert not checker_complaints(caught)
    same = gym.make("recsim_env:LLMUserSim-v0")
    assert same.observation_space == gym.make("ParametricUserSim-v0").observation_space
    obs, _ = env.reset(seed=3)
    obs, reward, term, trunc, info = env.step(env.action_space.sample())
    assert info["response_probs"].shape == (5, 3)


@pytest.mark.skipif(
    torch.cuda.is_available(), reason="checks the refusal on a machine without CUDA"
)
def test_a_device_this_machine_lacks_is_one_clear_error() -> None:
    from recsim_env.torchrl_env import make_torchrl_env

    with pytest.raises(ValueError, match="this machine has no CUDA device; use cpu"):
        gym.make("LLMUserSim-v0", device="cuda")
    with pytest.raises(ValueError, match="unknown device 'bogus'; allowed: cpu, cuda, cuda:N"):
        make_torchrl_env("ParametricUserSim-v0", num_envs=2, device="bogus")
