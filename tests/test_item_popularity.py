"""EnvConfig.item_popularity: the items' logged popularity as one more item feature."""

from __future__ import annotations

import gymnasium as gym
import numpy as np
import pytest

import recsim_env  # noqa: F401
from recsim_env.config import EnvConfig
from recsim_env.sessions import (
    POPULARITY_SEED,
    env_item_features,
    logged_click_counts,
    popularity_feature,
)
from simulators.parametric import ParametricUserModel, WorldConfig
from tests.conftest import TINY_WORLD

WORLD = {"num_items": 50, "num_topics": 5, "population_size": 100}
SMALL = {"slate_size": 3, "num_candidates": 8, "history_length": 4, "max_episode_steps": 12}
POPULAR = {"item_popularity": True, "popularity_users": 150}


def _features(env: gym.Env) -> np.ndarray:
    return env.unwrapped._batch.item_features


def test_popularity_is_the_standardised_log_clicks_of_a_random_policy() -> None:
    env = gym.make("ParametricUserSim-v0", world=WORLD, **SMALL, **POPULAR)
    plain = gym.make("ParametricUserSim-v0", world=WORLD, **SMALL)
    feats, base = _features(env), _features(plain)
    assert feats.shape == (50, base.shape[1] + 1)
    np.testing.assert_array_equal(feats[:, :-1], base)  # the simulator's own features first
    assert env.action_space.shape == (base.shape[1] + 1,)  # one more weight
    assert env.observation_space["clicked_features_mean"].shape == (base.shape[1] + 1,)

    world = ParametricUserModel(WorldConfig(**WORLD))
    cfg = EnvConfig(**SMALL)
    counts = logged_click_counts(world, cfg, 150, POPULARITY_SEED)
    assert counts.sum() > 100 and (counts >= 0).all()
    np.testing.assert_allclose(feats[:, -1], popularity_feature(counts), rtol=1e-6)
    assert abs(feats[:, -1].mean()) < 1e-5 and feats[:, -1].std() == pytest.approx(1.0, abs=1e-4)
    # what clicks reflect: the world's hidden item quality, which no other feature carries
    assert np.corrcoef(world.item_quality, feats[:, -1])[0, 1] > 0.3


def test_every_build_sees_the_same_popularity(tiny_sim_dir) -> None:
    from recsim_env.torchrl_env import make_torchrl_env

    single = _features(gym.make("ParametricUserSim-v0", world=WORLD, **SMALL, **POPULAR))
    vec = gym.make_vec(
        "ParametricUserSim-v0",
        3,
        vectorization_mode="vector_entry_point",
        world=WORLD,
        **SMALL,
        **POPULAR,
    )
    np.testing.assert_array_equal(vec.unwrapped._batch.item_features, single)
    torchrl = make_torchrl_env("ParametricUserSim-v0", num_envs=3, world=WORLD, **SMALL, **POPULAR)
    np.testing.assert_array_equal(torchrl._batch.item_features.cpu().numpy(), single)
    # the GPT-2 user's env counts its own users' clicks, in the same observation space
    llm = gym.make("LLMUserSim-v0", simulator=str(tiny_sim_dir), **SMALL, **POPULAR)
    world = gym.make("ParametricUserSim-v0", world=TINY_WORLD, **SMALL, **POPULAR)
    assert llm.observation_space == world.observation_space
    assert llm.action_space == world.action_space
    obs, _ = llm.reset(seed=0)
    obs, reward, *_ = llm.step(llm.action_space.sample())
    assert np.isfinite(reward)


def test_popularity_is_standardised_over_the_candidate_pool() -> None:
    world = ParametricUserModel(WorldConfig(**WORLD))
    cfg = EnvConfig(**SMALL, **POPULAR)
    pool = np.arange(10, 30)
    feats = env_item_features(world, cfg, pool)
    popularity = feats[:, -1]
    assert (popularity[:10] == 0).all() and (popularity[30:] == 0).all()
    assert abs(popularity[pool].mean()) < 1e-5
    assert popularity[pool].std() == pytest.approx(1.0, abs=1e-4)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"item_popularity": "yes"}, "item_popularity must be a bool"),
        ({"item_popularity": True, "popularity_users": 0}, "popularity_users must be >= 1"),
        ({"popularity_users": 1.5}, "popularity_users must be an integer"),
    ],
)
def test_bad_popularity_settings_are_refused(kwargs, message) -> None:
    with pytest.raises(ValueError, match=message):
        gym.make("ParametricUserSim-v0", world=WORLD, **kwargs)


def test_benchmark_figures_of_the_same_slates_do_not_change_with_popularity() -> None:
    from evaluation.benchmark import BenchmarkConfig, run_benchmark

    base = {"env": "ParametricUserSim-v0", "agents": ("greedy",), "users": 20, "seed": 0}
    plain = run_benchmark(BenchmarkConfig(**base, env_kwargs={"world": WORLD, **SMALL}))
    popular = run_benchmark(
        BenchmarkConfig(**base, env_kwargs={"world": WORLD, **SMALL, **POPULAR})
    )
    # greedy reads the simulator, so it shows the same slates; diversity is over the items'
    # own features, not the observed popularity column
    for key in ("return_mean", "diversity", "coverage", "novelty"):
        assert popular["greedy"][key] == plain["greedy"][key], key


def test_a_model_trained_with_popularity_is_evaluated_with_it() -> None:
    from stable_baselines3 import PPO

    from agents.sb3 import make_sb3_vec_env
    from evaluation.episodes import evaluate_returns

    env = {"world": WORLD, **SMALL, **POPULAR}
    venv = make_sb3_vec_env("ParametricUserSim-v0", 2, seed=0, **env)
    model = PPO("MultiInputPolicy", venv, n_steps=16, batch_size=16, seed=0).learn(32)
    # SB3's own model on the weights action: the env's slate size is used to act through slates
    returns = evaluate_returns(model, "ParametricUserSim-v0", users=4, **env)
    assert np.isfinite(returns).all()
    without = {"world": WORLD, **SMALL}
    with pytest.raises(ValueError, match=r"trained on \(7,\).*item_popularity"):
        evaluate_returns(model, "ParametricUserSim-v0", users=4, **without)
