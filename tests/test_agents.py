"""Baseline agents: SB3 compatibility, action validity, learning hooks, SlateQ targets."""

from __future__ import annotations

import dataclasses

import gymnasium as gym
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from stable_baselines3.common.evaluation import evaluate_policy
from stable_baselines3.common.vec_env import DummyVecEnv

import recsim_env  # noqa: F401
from agents.base import as_batch, category_block_size, transition_rows
from agents.greedy import GreedyAgent, OracleResponseModel, WorldModelResponseModel
from agents.popularity import PopularityAgent, click_counts_from_logs, collect_click_counts
from agents.registry import BASELINES, AgentUnavailable, load_sb3_agent, make_agent
from agents.slateq import (
    SlateQAgent,
    choice_probs,
    select_slate_greedy,
    select_slate_topk,
    slate_value,
    slateq_target,
)
from recsim_env.config import SLATE_AGENT_KWARGS
from recsim_env.episodes import make_episode_env
from simulators.logs import read_logs
from tests.conftest import TINY_ENV, TINY_WORLD

ENV_KW = {
    "world": TINY_WORLD,
    "slate_size": TINY_ENV.slate_size,
    "num_candidates": TINY_ENV.num_candidates,
    "history_length": TINY_ENV.history_length,
    "max_episode_steps": TINY_ENV.max_episode_steps,
    **SLATE_AGENT_KWARGS,  # the baselines give slates and read the catalog ids
}
K = TINY_ENV.slate_size
WITH_IDS = dataclasses.replace(TINY_ENV, **SLATE_AGENT_KWARGS)  # type: ignore[arg-type]


def make_env() -> gym.Env:
    return gym.make("ParametricUserSim-v0", **ENV_KW)


def make_vec(n: int = 4) -> gym.vector.VectorEnv:
    return gym.make_vec(
        "ParametricUserSim-v0", num_envs=n, vectorization_mode="vector_entry_point", **ENV_KW
    )


def build(name: str, env: object) -> object:
    kwargs = {"counts": np.arange(TINY_WORLD.num_items, dtype=float)} if name == "popular" else {}
    return make_agent(name, env, seed=0, **kwargs)


@pytest.mark.parametrize("name", BASELINES)
def test_evaluate_policy_scores_every_baseline(name: str) -> None:
    env = make_env()
    agent = build(name, env)
    env.reset(seed=0)
    mean, std = evaluate_policy(agent, env, n_eval_episodes=2, warn=False)
    assert np.isfinite(mean) and mean >= 0 and std >= 0


@pytest.mark.parametrize("name", BASELINES)
def test_actions_lie_in_action_space_single_and_batched(name: str) -> None:
    env = make_env()
    obs, _ = env.reset(seed=1)
    action, state = build(name, env).predict(obs)
    assert state is None
    assert action.shape == (K,) and env.action_space.contains(action)
    assert len(set(action.tolist())) == K

    vec = make_vec(4)
    agent = build(name, vec)
    obs, _ = vec.reset(seed=1)
    for _ in range(3):
        actions, _ = agent.predict(obs)
        assert actions.shape == (4, K) and vec.action_space.contains(actions)
        assert all(len(set(row.tolist())) == K for row in actions)
        nxt, _, term, _, info = vec.step(actions)
        agent.update(obs, actions, info, next_obs=nxt, terminated=term)
        obs = nxt


@settings(max_examples=15, deadline=None)
@given(seed=st.integers(0, 2**31 - 1), n=st.integers(1, 5))
def test_actions_valid_for_any_observation_property(seed: int, n: int) -> None:
    vec = make_vec(n)
    obs, _ = vec.reset(seed=seed)
    for name in ("random", "popular", "linucb", "thompson", "slateq", "text_sim", "greedy"):
        actions, _ = build(name, vec).predict(obs)
        assert vec.action_space.contains(np.asarray(actions, dtype=np.int64))


def test_agents_accept_sb3_dummy_vec_env() -> None:
    venv = DummyVecEnv([make_env, make_env])
    venv.seed(0)
    obs = venv.reset()
    for name in BASELINES:
        actions, _ = build(name, venv).predict(obs)
        assert actions.shape == (2, K)
        assert all(venv.action_space.contains(a) for a in actions)


def test_oracle_greedy_reads_true_probabilities_and_ranks_best_first() -> None:
    vec = make_vec(3)
    obs, _ = vec.reset(seed=5)
    sim = vec.unwrapped.simulator
    agent = GreedyAgent.from_env(vec)
    assert isinstance(agent.response_model, OracleResponseModel)
    actions, _ = agent.predict(obs)
    ids = obs["candidate_ids"]
    for r in range(3):
        p = sim.response_probs(np.full(ids.shape[1], r), ids[r][:, None])[:, 0]
        value = p[:, 1] + 4 * p[:, 2]
        assert np.allclose(value[actions[r]], np.sort(value)[::-1][:K])


def test_world_model_matches_oracle_within_history_window() -> None:
    vec = make_vec(4)
    obs, _ = vec.reset(seed=2)
    sim = vec.unwrapped.simulator
    rng = np.random.default_rng(0)
    for _ in range(3):  # fewer steps than history_length: the rebuilt state is exact
        obs, *_ = vec.step(np.argsort(rng.random((4, TINY_ENV.num_candidates)), 1)[:, :K])
    vocab = list(sim.profile_encoder.vocab)
    ids = list(sim.items_table()["item_id"])
    world = WorldModelResponseModel(sim, vocab, ids, K).bind(obs)
    oracle = OracleResponseModel([sim] * 4, np.arange(4)).bind(obs)
    rows = np.arange(4)
    slates = obs["candidate_ids"][:, :K]
    assert np.allclose(world(rows, slates), oracle(rows, slates))
    agent = GreedyAgent.from_env(vec, mode="world", world=sim)
    assert np.array_equal(agent.predict(obs)[0], GreedyAgent.from_env(vec).predict(obs)[0])


def test_score_slates_of_the_world_is_conditional_on_earlier_skips() -> None:
    vec = make_vec(3)
    obs, _ = vec.reset(seed=7)
    sim = vec.unwrapped.simulator
    rows = np.array([0, 0, 2])  # a row may repeat: several hypothetical slates per user
    slates = obs["candidate_ids"][rows, :2]
    got = sim.score_slates(rows, slates)
    want = sim.conditional_response_probs(rows, slates, np.zeros_like(slates))
    assert got.shape == (3, 2, 3) and np.allclose(got, want)
    one = sim.score_slates(rows, slates[:, :1])
    assert np.allclose(one[:, 0], sim.response_probs(rows, slates[:, :1])[:, 0])


def test_greedy_on_gpt2_user_peeks_without_advancing(tiny_sim_dir) -> None:
    kw = {"simulator": str(tiny_sim_dir), "max_episode_steps": 6, **SLATE_AGENT_KWARGS}
    v1, v2 = (
        gym.make_vec("LLMUserSim-v0", num_envs=3, vectorization_mode="vector_entry_point", **kw)
        for _ in range(2)
    )
    agent = make_agent("greedy", v1)
    assert isinstance(agent.response_model, OracleResponseModel)
    o1, _ = v1.reset(seed=3)
    v2.reset(seed=3)
    rng = np.random.default_rng(0)
    for _ in range(3):
        actions, _ = agent.predict(o1)
        assert v1.action_space.contains(actions)
        fixed = np.argsort(rng.random((3, v1.single_action_space.nvec[0])), 1)[:, : len(actions[0])]
        o1, r1, _, _, i1 = v1.step(fixed)
        _, r2, _, _, i2 = v2.step(fixed)  # the same users, never peeked at
        assert np.allclose(i1["response_probs"], i2["response_probs"]) and np.array_equal(r1, r2)


def test_popularity_from_logs_counts_clicks(tiny_logs_dir) -> None:
    logs = read_logs(tiny_logs_dir)
    counts = click_counts_from_logs(tiny_logs_dir)
    clicks = sum(int((np.asarray(r) > 0).sum()) for r in logs.steps["responses"])
    assert counts.shape == (len(logs.items),) and counts.sum() == clicks
    agent = PopularityAgent.from_logs(logs, K)
    obs = {"candidate_ids": np.arange(8)}
    best = np.argsort(-counts[:8], kind="stable")[:K]
    assert agent.predict(obs)[0].tolist() == best.tolist()


def test_collect_click_counts_and_default_popular() -> None:
    vec = make_episode_env("ParametricUserSim-v0", 5, **ENV_KW)
    counts = collect_click_counts(vec, users=12, seed=100)
    assert counts.shape == (TINY_WORLD.num_items,) and counts.sum() > 0
    agent = make_agent("popular", make_env(), log_users=10)
    assert agent.counts.sum() > 0


def test_registry_errors() -> None:
    env = make_env()
    with pytest.raises(ValueError, match="unknown agent"):
        make_agent("nope", env)
    with pytest.raises(FileNotFoundError):
        make_agent("ppo:/does/not/exist.zip", env)

    from recsim_env.env import SlateUserEnv
    from simulators.parametric import ParametricUserModel

    class NoTitles(ParametricUserModel):
        def items_table(self):
            return super().items_table().drop(columns="title")

    with pytest.raises(AgentUnavailable, match="title"):
        make_agent("text_sim", SlateUserEnv(NoTitles(TINY_WORLD), WITH_IDS))
    with pytest.raises(ValueError, match="not an env"):
        make_agent("greedy", object())


def test_sb3_model_loads_by_path_and_predicts_batched(tmp_path) -> None:
    from stable_baselines3 import PPO

    env = make_env()
    model = PPO("MultiInputPolicy", env, n_steps=16, batch_size=16, n_epochs=1, seed=0)
    model.learn(16)
    model.save(tmp_path / "tiny_ppo.zip")
    spec = f"ppo:{tmp_path / 'tiny_ppo.zip'}"
    with pytest.raises(ValueError, match="trust-sb3-zip"):  # unpickling needs consent
        load_sb3_agent(spec, env)
    with pytest.raises(ValueError, match="unknown agent"):  # a bare path never resolves
        load_sb3_agent(str(tmp_path / "tiny_ppo.zip"), env)
    agent = load_sb3_agent(spec, env, trust_sb3_zip=True)
    assert agent.name == "ppo:tiny_ppo"
    obs, _ = make_vec(3).reset(seed=0)
    actions, _ = agent.predict(obs, deterministic=True)
    assert actions.shape == (3, K)


def test_bandits_learn_from_update() -> None:
    vec = make_vec(8)
    obs, _ = vec.reset(seed=0)
    for name in ("linucb", "thompson"):
        agent = build(name, vec)
        actions, _ = agent.predict(obs)
        _, _, _, _, info = vec.step(actions)
        prior = agent.A.copy()
        agent.update(obs, actions, info)
        # every shown item adds its context to its category's precision; clicks move the mean
        assert np.trace(agent.A - prior, axis1=1, axis2=2).sum() > 0
        assert agent.theta.any() == bool((info["responses"] > 0).any())
        info["_item_ids"] = np.zeros(8, dtype=bool)  # masked rows teach nothing
        before = agent.A.copy()
        agent.update(obs, actions, info)
        assert np.array_equal(before, agent.A)


@pytest.mark.parametrize("name", ["linucb", "thompson", "slateq"])
def test_learning_agents_update_from_single_env_transitions(name: str) -> None:
    env = make_env()
    agent = build(name, env)
    obs, _ = env.reset(seed=4)
    for _ in range(5):
        action, _ = agent.predict(obs)
        nxt, _, term, trunc, info = env.step(action)
        agent.update(obs, action, info, next_obs=nxt, terminated=np.array([term]))
        obs = nxt if not (term or trunc) else env.reset()[0]
    assert env.action_space.contains(agent.predict(obs)[0])


def test_transition_rows_masks_resetting_rows() -> None:
    info = {"item_ids": np.array([[1, 2], [-1, -1], [3, 4]]), "_item_ids": np.array([1, 0, 0])}
    assert transition_rows(info, 3).tolist() == [True, False, False]
    assert transition_rows({"item_ids": np.array([5, 6])}, 1).tolist() == [True]


def test_category_block_size() -> None:
    x = np.array([[1, 0, 0.3], [0, 1, -1.2]])
    assert category_block_size(x) == 2
    assert category_block_size(np.array([[0.5, 1.0]])) == 0


# ----------------------------------------------------------------------------- SlateQ


def test_slateq_pure_functions() -> None:
    s0, s = np.array([1.0]), np.array([[1.0, 2.0]])
    assert np.allclose(choice_probs(s0, s), [[0.25, 0.25, 0.5]])
    assert np.allclose(slate_value(s0, s, np.array([0.0]), np.array([[4.0, 2.0]])), [2.0])
    s_c, q_c = np.array([[1.0, 3.0, 2.0, 0.5]]), np.array([[1.0, 1.0, 3.0, 10.0]])
    assert select_slate_topk(2, s0, s_c, q_c).tolist() == [[2, 3]]  # s*q = 1, 3, 6, 5
    # greedy: {3} alone is worth 5/1.5, then adding 2 gives (5 + 6)/(1.5 + 2)
    assert select_slate_greedy(2, s0, s_c, q_c).tolist() == [[3, 2]]
    y = slateq_target(
        np.array([1.0, 1.0]),
        np.array([1.0, 1.0]),
        np.ones((2, 2)),
        np.array([5.0, 5.0]),
        np.full((2, 2), 5.0),
        np.array([False, True]),
        0.5,
    )
    assert np.allclose(y, [1.0 + 0.5 * 5.0, 1.0])


def _toy_obs(step_feature: float) -> dict[str, np.ndarray]:
    """One user, 3 candidates with 1 numeric feature; states differ only in a session feature."""
    return {
        "profile": np.array([1], dtype=np.int8),
        "candidate_ids": np.array([0, 1, 2]),
        "candidate_features": np.array([0.1, -0.2, 0.3], dtype=np.float32),
        "history_items": np.full(4, -1),
        "history_responses": np.full(4, -1),
        "clicked_features_mean": np.zeros(1, dtype=np.float32),
        "session_features": np.array([step_feature, 0.0], dtype=np.float32),
    }


@pytest.mark.parametrize("target", ["q", "sarsa"])
def test_slateq_target_uses_next_state(target: str) -> None:
    """Two states: Q̄ is 0 everywhere in s_A and 10 everywhere in s_B; s_A -> s_B.

    The TD target of a click in s_A must be r + γ·10. Using the current state (RecSim's old bug)
    would give r + γ·0.
    """
    s_a, s_b = _toy_obs(0.0), _toy_obs(0.5)
    agent = SlateQAgent(2, gamma=0.9, target=target, num_categories=0, seed=0)
    agent.predict(s_a)  # allocates the parameters
    # user context = [1, profile, clicked_features_mean, session_features]: index 3 = step
    agent.params["q"][0, 3] = 20.0
    agent.params["q_null"][3] = 20.0
    agent._sync_target()
    info = {"item_ids": np.array([0, 1]), "responses": np.array([1, 0])}
    action = np.array([0, 1])
    y = agent.td_targets(s_a, action, info, s_b, terminated=np.array([False]), next_action=[[2, 0]])
    assert np.allclose(y, 1.0 + 0.9 * 10.0)
    y_bug = agent.td_targets(s_a, action, info, s_a, next_action=[[2, 0]])
    assert np.allclose(y_bug, 1.0)  # what a current-state target would give: differs
    y_done = agent.td_targets(s_a, action, info, s_b, terminated=np.array([True]))
    assert np.allclose(y_done, 1.0)
    buy = {"item_ids": np.array([0, 1]), "responses": np.array([0, 2])}
    assert np.allclose(agent.td_targets(s_a, action, buy, s_b, next_action=[[2, 0]]), 4.0 + 9.0)


def test_slateq_learns_online_toward_next_state_value() -> None:
    s_a, s_b = _toy_obs(0.0), _toy_obs(0.5)
    agent = SlateQAgent(2, gamma=0.9, num_categories=0, seed=0, lr=0.05, gradient_steps=4)
    agent.predict(s_a)
    info = {"item_ids": np.array([0, 1]), "responses": np.array([1, 0])}
    batch = as_batch(s_a)
    for _ in range(30):
        agent.update(s_a, np.array([0, 1]), info, next_obs=s_b, terminated=np.array([True]))
    q_clicked = agent._item_scores(
        agent.params["q"],
        np.array([[1.0, 1.0, 0.0, 0.0, 0.0]]),
        np.array([[0]]),
        batch["candidate_features"].reshape(1, 3, 1)[:, :1].astype(float),
    )
    assert abs(q_clicked[0, 0] - 1.0) < 0.5  # terminal: Q̄(s_A, clicked) -> r = 1
    assert agent._size == 30
    with pytest.raises(ValueError, match="next_obs"):
        agent.update(s_a, np.array([0, 1]), info)


def test_sb3_model_with_other_spaces_is_refused(tmp_path) -> None:
    from stable_baselines3 import PPO

    big = gym.make("ParametricUserSim-v0", **SLATE_AGENT_KWARGS)  # 500 items, slate_size 5
    PPO("MultiInputPolicy", big, n_steps=16, batch_size=16, n_epochs=1).save(tmp_path / "m.zip")
    with pytest.raises(ValueError, match="spaces differ"):
        make_agent(f"ppo:{tmp_path / 'm.zip'}", make_env(), trust_sb3_zip=True)
