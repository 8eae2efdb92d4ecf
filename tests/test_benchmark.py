"""The `llm-usersim benchmark` subcommand and its metrics."""

from __future__ import annotations

import csv
import json

import gymnasium as gym
import numpy as np
import pytest

import recsim_env  # noqa: F401
from agents.random_agent import RandomAgent
from recsim_env.cli import main
from recsim_env.cli.benchmark import (
    METRICS,
    item_novelty,
    run_episodes,
    slate_diversity,
    summarize,
)
from tests.conftest import TINY_ENV, TINY_WORLD

AGENT_KEYS = (
    "return_mean",
    "return_ci95",
    "ctr",
    "buy_rate",
    "session_length",
    "diversity",
    "coverage",
    "novelty",
    *(f"{m}_ci95" for m in METRICS),
)


def tiny_vec(n: int) -> gym.vector.VectorEnv:
    return gym.make_vec(
        "ParametricUserSim-v0",
        num_envs=n,
        vectorization_mode="vector_entry_point",
        world=TINY_WORLD,
        slate_size=TINY_ENV.slate_size,
        num_candidates=TINY_ENV.num_candidates,
        max_episode_steps=TINY_ENV.max_episode_steps,
    )


def test_cli_writes_json_csv_and_plot(tmp_path, capsys) -> None:
    out_json, out_csv, out_png = tmp_path / "b.json", tmp_path / "b.csv", tmp_path / "b.png"
    rc = main(
        [
            "benchmark",
            "--env",
            "ParametricUserSim-v0",
            "--users",
            "20",
            "--seed",
            "3",
            "--json",
            str(out_json),
            "--csv",
            str(out_csv),
            "--plot",
            str(out_png),
        ]
    )
    assert rc == 0
    data = json.loads(out_json.read_text())
    assert set(data) == {"agents", "env", "users", "seed"}
    assert (data["env"], data["users"], data["seed"]) == ("ParametricUserSim-v0", 20, 3)
    names = ["random", "popular", "greedy", "linucb", "thompson", "slateq", "text_sim"]
    assert list(data["agents"]) == names
    for res in data["agents"].values():
        assert set(AGENT_KEYS) <= set(res)
        for m in METRICS:
            lo, hi = res[f"{m}_ci95"]
            mean = res["return_mean" if m == "return" else m]
            assert lo <= mean + 1e-9 and mean <= hi + 1e-9
        assert 0 < res["coverage"] <= 1 and 0 <= res["ctr"] <= 1
    rows = list(csv.DictReader(out_csv.open()))
    assert [r["agent"] for r in rows] == names and "return_ci95_lo" in rows[0]
    assert out_png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    printed = capsys.readouterr().out
    assert "greedy" in printed and "session_length" in printed


def test_cli_usage_errors(tmp_path, capsys) -> None:
    base = ["benchmark", "--env", "ParametricUserSim-v0", "--users", "4"]
    assert main([*base, "--agents", "random,nonsense"]) == 2
    assert "unknown agent" in capsys.readouterr().err
    assert main([*base, "--users", "0"]) == 2
    assert main(["benchmark", "--env", "NoSuchEnv-v9", "--users", "2"]) == 2


def test_unavailable_default_agent_is_skipped_with_a_note(monkeypatch, capsys) -> None:
    import agents.registry as registry

    real = registry.make_agent

    def fake(name, env, **kw):
        if name == "text_sim":
            raise registry.AgentUnavailable("text_sim: no titles")
        return real(name, env, **kw)

    monkeypatch.setattr(registry, "make_agent", fake)
    assert main(["benchmark", "--env", "ParametricUserSim-v0", "--users", "3"]) == 0
    out = capsys.readouterr().out
    assert "note: skipping text_sim" in out
    # asked for by name, the same agent is an error
    assert main(["benchmark", "--env", "ParametricUserSim-v0", "--agents", "text_sim"]) == 2


def test_sb3_model_in_benchmark(tmp_path, capsys) -> None:
    from stable_baselines3 import PPO

    env = gym.make("ParametricUserSim-v0")
    PPO("MultiInputPolicy", env, n_steps=16, batch_size=16, n_epochs=1, seed=0).learn(16).save(
        tmp_path / "pol.zip"
    )
    out = tmp_path / "r.json"
    args = ["benchmark", "--env", "ParametricUserSim-v0", "--users", "6", "--json", str(out)]
    assert main([*args, "--agents", f"random,ppo:{tmp_path / 'pol.zip'}"]) == 0
    assert list(json.loads(out.read_text())["agents"]) == ["random", "ppo:pol"]


def test_users_are_identical_across_agents_and_batches() -> None:
    nov = np.zeros(TINY_WORLD.num_items)
    a = run_episodes(RandomAgent(TINY_ENV.slate_size, seed=0), tiny_vec(7), 10, 5, nov)
    # same users in other batch sizes (the last batch has spare rows that are ignored)
    b = run_episodes(RandomAgent(TINY_ENV.slate_size, seed=0), tiny_vec(10), 10, 5, nov)
    assert a.steps.sum() > 10 and a.returns.shape == (10,)
    # user i's profile and candidates come from seed + i, whatever the batch: check user 8
    v1, v2 = tiny_vec(7), tiny_vec(10)
    o1, _ = v1.reset(seed=5 + 7)
    o2, _ = v2.reset(seed=5)
    assert np.array_equal(o1["profile"][1], o2["profile"][8])
    assert np.array_equal(o1["candidate_ids"][1], o2["candidate_ids"][8])
    assert b.seen.shape == (10, TINY_WORLD.num_items)


def test_metric_helpers() -> None:
    same = np.array([[[1.0, 0.0], [1.0, 0.0]]])
    ortho = np.array([[[1.0, 0.0], [0.0, 1.0]]])
    assert np.allclose(slate_diversity(same), 0.0) and np.allclose(slate_diversity(ortho), 1.0)
    nov = item_novelty(np.array([0.0, 2.0]))  # shares 1/4 and 3/4
    assert np.allclose(nov, [2.0, -np.log2(0.75)])
    stats = run_episodes(
        RandomAgent(TINY_ENV.slate_size, seed=1), tiny_vec(4), 4, 0, np.ones(TINY_WORLD.num_items)
    )
    res = summarize(stats)
    assert res["novelty"] == pytest.approx(1.0)
    assert res["session_length"] == pytest.approx(stats.steps.mean())
    assert res["coverage"] == pytest.approx((np.asarray(stats.seen.sum(0)) > 0).mean())
