"""Property-based: random valid and invalid actions never break either env or the vector env."""

import gymnasium as gym
import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays

import recsim_env  # noqa: F401

SMALL = {"slate_size": 3, "num_candidates": 8, "history_length": 4, "max_episode_steps": 12}
SMALL["action_mode"] = "slate"  # the properties drawn are slates of candidate indices
WORLD = {"world": {"num_items": 50, "num_topics": 5, "population_size": 100}}

valid_action = st.lists(st.integers(0, 7), min_size=3, max_size=3).map(
    lambda v: np.array(v, dtype=np.int64)
)
invalid_action = st.one_of(
    st.lists(st.integers(0, 7), min_size=0, max_size=6).filter(lambda v: len(v) != 3).map(np.array),
    st.lists(st.integers(-5, 20), min_size=3, max_size=3)
    .filter(lambda v: min(v) < 0 or max(v) > 7)
    .map(np.array),
    arrays(np.float64, 3, elements=st.sampled_from([np.nan, np.inf, 0.5, 1.25])),
    st.just(np.array(["a", "b", "c"])),
    st.just(np.array([True, False, True])),
    st.just(np.zeros((3, 1), dtype=np.int64)),
)
moves = st.lists(st.tuples(st.booleans(), valid_action, invalid_action), min_size=1, max_size=25)


def _env(kind, tiny_sim_dir):
    if kind == "parametric":
        return gym.make("ParametricUserSim-v0", **WORLD, **SMALL)
    return gym.make("LLMUserSim-v0", simulator=str(tiny_sim_dir), **SMALL)


@pytest.mark.parametrize("kind", ["parametric", "llm"])
@settings(
    max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(seed=st.integers(0, 2**31), script=moves)
def test_single_env_only_raises_documented_errors(kind, tiny_sim_dir, seed, script):
    env = _env(kind, tiny_sim_dir)
    with pytest.raises(gym.error.ResetNeeded):
        env.step(np.arange(3))  # gym.make's order enforcing: step before reset
    obs, _ = env.reset(seed=seed)
    assert env.observation_space.contains(obs)
    done = left = False
    for use_valid, good, bad in script:
        if done:
            if left:  # a time-limit truncation is gym.make's TimeLimit: the env is not finished
                with pytest.raises(RuntimeError, match="reset"):
                    env.unwrapped.step(good)
            obs, _ = env.reset()
            done = left = False
        if use_valid:
            obs, reward, term, trunc, info = env.step(good)
            assert env.observation_space.contains(obs)
            assert np.isfinite(reward) and np.allclose(info["response_probs"].sum(-1), 1.0)
            done, left = term or trunc, term
        else:
            with pytest.raises(ValueError, match="allowed"):
                env.step(bad)


@pytest.mark.parametrize("kind", ["parametric", "llm"])
@settings(
    max_examples=15, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(seed=st.integers(0, 2**31), steps=st.integers(1, 30), dup=st.booleans())
def test_vector_env_observations_stay_in_space(kind, tiny_sim_dir, seed, steps, dup):
    kwargs = {**SMALL, **(WORLD if kind == "parametric" else {"simulator": str(tiny_sim_dir)})}
    env_id = "ParametricUserSim-v0" if kind == "parametric" else "LLMUserSim-v0"
    vec = gym.make_vec(env_id, num_envs=4, vectorization_mode="vector_entry_point", **kwargs)
    obs, _ = vec.reset(seed=seed)
    rng = np.random.default_rng(seed)
    for _ in range(steps):
        act = rng.integers(0, 8, (4, 3))
        if dup:
            act[:, 1] = act[:, 0]
        obs, reward, term, trunc, info = vec.step(act)
        assert vec.observation_space.contains(obs)
        assert np.all(np.isfinite(reward))
    with pytest.raises(ValueError, match="shape"):
        vec.step(np.zeros((3, 3), dtype=np.int64))
    with pytest.raises(ValueError, match="non-integer or non-finite"):
        vec.step(np.full((4, 3), np.nan))
