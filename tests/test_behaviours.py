"""Behaviours as data: one vocabulary from which tokens, head, spaces and rewards derive."""

from __future__ import annotations

from pathlib import Path

import gymnasium as gym
import numpy as np
import pytest

import recsim_env  # noqa: F401
from recsim_env.config import SLATE_AGENT_KWARGS
from simulators.behaviours import DEFAULT_BEHAVIOURS, BehaviourSet
from simulators.gpt2_user import DEFAULT_SIMULATOR_DIR, GPT2UserSimulator
from simulators.importers.otto import OTTO_BEHAVIOURS, import_otto
from simulators.logs import read_logs, write_logs
from simulators.parametric import WorldConfig
from simulators.tokenization import SimTokenizer
from simulators.training import SimulatorTrainer, TrainConfig

FIXTURES = Path(__file__).parent / "fixtures"
OLD_SPECIALS = [
    "<pad>",
    "<bos>",
    "<start>",
    "<cont>",
    "<leave>",
    "<skip>",
    "<click>",
    "<buy>",
    "<unk_item>",
    "<profile_pad>",
]


def test_behaviour_set_validates_and_rewards_add_up_along_the_levels() -> None:
    assert DEFAULT_BEHAVIOURS.names == ("skip", "click", "buy")
    np.testing.assert_array_equal(
        DEFAULT_BEHAVIOURS.reward_per_code({"click": 1.0, "buy": 3.0}), [0.0, 1.0, 4.0]
    )
    shop = BehaviourSet(("skip", "click", "cart", "buy"))
    np.testing.assert_array_equal(shop.reward_per_code({"buy": 5.0}), [0, 0, 0, 5])
    for bad in (("skip",), ("skip", "skip"), ("skip", "Click"), ("skip", "")):
        with pytest.raises(ValueError):
            BehaviourSet(bad)
    with pytest.raises(ValueError, match="unknown behaviour 'like'"):
        shop.reward_per_code({"like": 1.0})
    with pytest.raises(ValueError, match="no engagement"):
        shop.reward_per_code({"skip": 1.0})
    with pytest.raises(ValueError, match="finite"):
        shop.reward_per_code({"click": float("nan")})
    assert BehaviourSet.from_dict(shop.to_dict()) == shop


def test_default_tokens_keep_the_ids_of_every_earlier_checkpoint() -> None:
    tok = SimTokenizer(["a=b"], 4, 1)
    assert tok.vocab()[:10] == OLD_SPECIALS and tok.profile_base == 10
    v1 = {k: v for k, v in tok.to_dict().items() if k not in ("behaviours", "format_version")}
    assert SimTokenizer.from_dict(v1).vocab() == tok.vocab()  # a version-1 vocab.json
    shop = SimTokenizer(["a=b"], 4, 1, OTTO_BEHAVIOURS)
    assert shop.vocab()[5:11] == [
        "<skip>",
        "<click>",
        "<cart>",
        "<buy>",
        "<unk_item>",
        "<profile_pad>",
    ]
    assert shop.output_tokens == (5, 6, 7, 8, 3, 4)


def test_embedded_default_answers_exactly_as_before_the_refactor() -> None:
    """A fixed rollout recorded with the code before behaviours became data and the forward was
    unified (tests/fixtures/default_rollout.npz): the same probabilities to 1e-6."""
    ref = np.load(FIXTURES / "default_rollout.npz")
    for env_id, key in (("LLMUserSim-v0", "llm"), ("ParametricUserSim-v0", "world")):
        vec = gym.make_vec(
            env_id, num_envs=8, vectorization_mode="vector_entry_point", **SLATE_AGENT_KWARGS
        )
        obs, _ = vec.reset(seed=123)
        rng = np.random.default_rng(5)
        for t in range(25):
            actions = np.stack([rng.permutation(20)[:5] for _ in range(8)])
            obs, _, _, _, info = vec.step(actions)
            np.testing.assert_allclose(info["response_probs"], ref[f"{key}_probs"][t], atol=1e-6)
            np.testing.assert_array_equal(info["responses"], ref[f"{key}_responses"][t])
            if key == "llm":
                np.testing.assert_allclose(info["leave_prob"], ref["llm_leave"][t], atol=1e-6)
        if key == "llm":
            from agents.registry import make_agent

            probs = make_agent("greedy", vec).response_model.bind(obs)
            got = probs(np.repeat(np.arange(8), 20), obs["candidate_ids"].reshape(-1, 1))
            np.testing.assert_allclose(got, ref["llm_candidate_probs"], atol=1e-6)
        vec.close()


def test_a_custom_behaviour_set_on_the_world_is_a_config_change() -> None:
    world = WorldConfig(behaviours=("skip", "click", "cart", "buy"), funnel_bias=(0.5,))
    env = gym.make(
        "ParametricUserSim-v0",
        world=world,
        cart_reward=0.5,
        buy_reward=3.0,
        **SLATE_AGENT_KWARGS,
    )
    assert env.observation_space["history_responses"].high.max() == 3
    env.reset(seed=0)
    seen = set()
    for _ in range(40):
        _, reward, term, trunc, info = env.step(env.action_space.sample())
        assert info["response_probs"].shape == (5, 4)
        np.testing.assert_allclose(info["response_probs"].sum(-1), 1.0)
        assert reward == pytest.approx(np.array([0, 1.0, 1.5, 4.5])[info["responses"]].sum())
        seen |= set(info["responses"].tolist())
        if term or trunc:
            env.reset()
    assert {1, 2, 3} <= seen
    with pytest.raises(ValueError, match="funnel_bias"):
        WorldConfig(behaviours=("skip", "click", "cart", "buy"))


def test_otto_carts_train_a_simulator_that_answers_with_carts(tmp_path) -> None:
    logs_dir = write_logs(
        import_otto(FIXTURES / "otto" / "train_20sessions.jsonl"), tmp_path / "otto"
    )
    logs = read_logs(logs_dir)
    assert logs.behaviours == OTTO_BEHAVIOURS
    cfg = TrainConfig(size="tiny", max_steps=4, eval_every=2, batch_size=4, context_length=128)
    SimulatorTrainer(logs, tmp_path / "sim", cfg, progress=False).train()
    sim = GPT2UserSimulator.from_pretrained(tmp_path / "sim")
    assert sim.behaviours.names == ("skip", "click", "cart", "buy")
    assert sim.model.num_behaviours == 4
    env = gym.make(
        "LLMUserSim-v0",
        simulator=str(tmp_path / "sim"),
        slate_size=2,
        num_candidates=4,
        **SLATE_AGENT_KWARGS,
    )
    env.reset(seed=0)
    _, _, _, _, info = env.step(np.array([0, 1]))
    assert info["response_probs"].shape == (2, 4)
    np.testing.assert_allclose(info["response_probs"].sum(-1), 1.0, atol=1e-5)
    assert env.observation_space["history_responses"].high.max() == 3


def test_the_default_checkpoint_carries_its_behaviours() -> None:
    sim = GPT2UserSimulator.from_pretrained(DEFAULT_SIMULATOR_DIR)
    assert sim.behaviours == DEFAULT_BEHAVIOURS
