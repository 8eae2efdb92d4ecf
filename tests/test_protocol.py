"""The simulator contract: a third-party simulator written against the protocol alone runs in
both envs, with baseline agents, the benchmark runner and the env checkers."""

from __future__ import annotations

import gymnasium as gym
import numpy as np
import pandas as pd
import pytest
from gymnasium.utils.env_checker import check_env

import recsim_env  # noqa: F401
from agents.registry import make_agent
from recsim_env.config import EnvConfig
from recsim_env.env import LLMUserSimEnv, SlateUserEnv
from recsim_env.episodes import run_episodes
from recsim_env.vector_env import SlateUserVectorEnv
from simulators.base import StepOutcome, UserSimulator, sample_categorical
from simulators.behaviours import BehaviourSet
from simulators.catalog import ProfileEncoder, item_feature_matrix


class CoinFlipUsers:
    """A user who likes items of even index: each slot is skipped, clicked or saved, the user
    leaves with probability 0.2 after every slate. Written against `UserSimulator` alone."""

    def __init__(self, num_items: int = 30) -> None:
        self.behaviours = BehaviourSet(("skip", "click", "save"))
        self.num_items = num_items
        self._items = pd.DataFrame(
            {
                "item_id": [f"x{i}" for i in range(num_items)],
                "title": [f"{'even' if i % 2 == 0 else 'odd'} thing {i}" for i in range(num_items)],
                "category": ["even" if i % 2 == 0 else "odd" for i in range(num_items)],
                "price": np.linspace(1.0, 30.0, num_items),
            }
        )
        self.item_features = item_feature_matrix(self._items)
        self.profile_encoder = ProfileEncoder(["mood=calm", "mood=busy"], ["mood"], slots=1)
        self.population = np.array([[0], [1]], dtype=np.int64)
        self.capacity = 0
        self.closed = False

    def items_table(self) -> pd.DataFrame:
        return self._items.copy()

    def ensure_capacity(self, capacity: int) -> None:
        self.capacity = max(self.capacity, capacity)

    def start_sessions(self, rows: np.ndarray, profiles: np.ndarray) -> None:
        self.ensure_capacity(int(np.max(rows)) + 1)

    def _probs(self, slates: np.ndarray) -> np.ndarray:
        like = (np.asarray(slates) % 2 == 0)[..., None]
        return np.where(like, [0.5, 0.3, 0.2], [0.9, 0.08, 0.02])

    def step(self, rows, slates, uniforms=None, forced_responses=None, forced_leave=None):
        probs = self._probs(slates)
        if forced_responses is not None:
            responses = np.asarray(forced_responses, dtype=np.int64)
        else:
            b, k = np.shape(slates)
            responses = np.stack(
                [sample_categorical(probs[:, j], uniforms[:, j]) for j in range(k)], axis=1
            )
        leave_prob = np.full(len(rows), 0.2)
        if forced_leave is not None:
            leave = np.asarray(forced_leave, dtype=bool)
        else:
            leave = uniforms[:, -1] < leave_prob
        return StepOutcome(responses, probs, leave, leave_prob)

    def score_slates(self, rows, slates):
        return self._probs(slates)

    def close(self) -> None:
        self.closed = True


CFG = EnvConfig(
    slate_size=3,
    num_candidates=6,
    max_episode_steps=8,
    rewards={"click": 1.0, "save": 2.0},
    action_mode="slate",
    observation="full",
    include_item_ids=True,
)


def test_the_protocol_is_all_a_simulator_needs() -> None:
    sim: UserSimulator = CoinFlipUsers()  # the annotation is what mypy checks
    env = SlateUserEnv(sim, CFG)
    check_env(env, skip_render_check=True)
    obs, _ = env.reset(seed=3)
    assert obs["history_responses"].max() == -1
    assert env.observation_space["history_responses"].high.max() == 2  # three behaviours
    total = 0.0
    for _ in range(8):
        obs, reward, terminated, truncated, info = env.step(env.action_space.sample())
        assert info["response_probs"].shape == (3, 3)
        table = np.array([0.0, 1.0, 3.0])  # click 1, save 1 + 2
        assert reward == table[info["responses"]].sum()
        total += reward
        if terminated or truncated:
            break
    env.close()
    assert sim.closed


def test_third_party_simulator_in_the_vector_env_with_agents() -> None:
    vec = SlateUserVectorEnv(
        CoinFlipUsers(), 4, CFG, autoreset_mode=gym.vector.AutoresetMode.DISABLED
    )
    for name in ("random", "greedy", "linucb", "thompson", "slateq", "text_sim"):
        agent = make_agent(name, vec, seed=0)
        stats = run_episodes(agent, vec, users=10, seed=1)
        assert stats.returns.shape == (10,) and (stats.steps >= 1).all()
    greedy = make_agent("greedy", vec)
    obs, _ = vec.reset(seed=0)
    action, _ = greedy.predict(obs)
    even = obs["candidate_ids"][np.arange(4)[:, None], action] % 2 == 0
    odd_available = (obs["candidate_ids"] % 2 == 0).sum(axis=1) >= 3
    assert even[odd_available].all()  # greedy reads score_slates: even items first


def test_llm_env_takes_any_protocol_object_and_rejects_unknown_rewards() -> None:
    env = gym.make(
        "LLMUserSim-v0",
        simulator=CoinFlipUsers(),
        slate_size=2,
        num_candidates=4,
        action_mode="slate",
    )
    env.reset(seed=0)
    _, _, _, _, info = env.step(np.array([0, 1]))
    assert info["response_probs"].shape == (2, 3)
    with pytest.raises(ValueError, match="unknown behaviour 'buy'"):
        LLMUserSimEnv(simulator=CoinFlipUsers(), buy_reward=3.0)
