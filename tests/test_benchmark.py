"""The `llm-usersim benchmark` subcommand and its metrics."""

from __future__ import annotations

import csv
import json

import gymnasium as gym
import numpy as np
import pytest

import recsim_env  # noqa: F401
from agents.greedy import GreedyAgent
from agents.random_agent import RandomAgent
from evaluation.benchmark import METRICS, SlateRecorder, item_novelty, slate_diversity, summarize
from recsim_env.cli import main
from recsim_env.config import SLATE_AGENT_KWARGS
from recsim_env.episodes import make_episode_env, run_episodes
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
    return make_episode_env(
        "ParametricUserSim-v0",
        n,
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
    assert set(data) == {"agents", "env", "users", "seed", "env_kwargs"}
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


def test_unavailable_default_agent_is_skipped_with_a_note(monkeypatch, caplog) -> None:
    import agents.registry as registry

    real = registry.make_agent

    def fake(name, env, **kw):
        if name == "text_sim":
            raise registry.AgentUnavailable("text_sim: no titles")
        return real(name, env, **kw)

    monkeypatch.setattr(registry, "make_agent", fake)
    assert main(["benchmark", "--env", "ParametricUserSim-v0", "--users", "3"]) == 0
    assert "note: skipping text_sim" in caplog.text
    # asked for by name, the same agent is an error
    assert main(["benchmark", "--env", "ParametricUserSim-v0", "--agents", "text_sim"]) == 2


def test_sb3_model_in_benchmark(tmp_path, capsys) -> None:
    from stable_baselines3 import PPO

    env = gym.make("ParametricUserSim-v0", **SLATE_AGENT_KWARGS)  # what the benchmark plays
    from agents.sb3.policy_files import save_policy

    model = PPO("MultiInputPolicy", env, n_steps=16, batch_size=16, n_epochs=1, seed=0).learn(16)
    save_policy(model, tmp_path / "pol")
    model.save(tmp_path / "pol.zip")
    out = tmp_path / "r.json"
    args = ["benchmark", "--env", "ParametricUserSim-v0", "--users", "6", "--json", str(out)]
    assert main([*args, "--agents", f"random,ppo:{tmp_path / 'pol'}"]) == 0
    assert list(json.loads(out.read_text())["agents"]) == ["random", "ppo:pol"]
    capsys.readouterr()
    assert main([*args, "--agents", f"a2c:{tmp_path / 'pol'}"]) == 2  # a label that would mislead
    assert f"holds a ppo policy, not a2c (write ppo:{tmp_path / 'pol'})" in capsys.readouterr().err
    zipped = [*args, "--agents", f"ppo:{tmp_path / 'pol.zip'}"]
    assert main(zipped) == 2  # an SB3 zip is unpickled on load: only with the flag
    assert main([*zipped, "--trust-sb3-zip"]) == 0


def test_users_are_identical_across_batches_and_rows() -> None:
    """User i is seeded seed + i whatever row it lands on: a deterministic policy scores each
    user the same at any batch size, and the same as the single env reset with seed + i."""
    runs = []
    for n in (3, 7, 10):
        vec = tiny_vec(n)
        agent = GreedyAgent.from_env(vec)
        runs.append(run_episodes(agent, vec, 10, 5))
    for other in runs[1:]:
        np.testing.assert_array_equal(runs[0].returns, other.returns)
        np.testing.assert_array_equal(runs[0].steps, other.steps)
    env = gym.make(
        "ParametricUserSim-v0",
        world=TINY_WORLD,
        slate_size=TINY_ENV.slate_size,
        num_candidates=TINY_ENV.num_candidates,
        max_episode_steps=TINY_ENV.max_episode_steps,
        **SLATE_AGENT_KWARGS,  # greedy gives slates and reads the catalog ids
    )
    agent = GreedyAgent.from_env(env)
    obs, _ = env.reset(seed=5 + 8)
    total, done = 0.0, False
    while not done:
        obs, r, term, trunc, _ = env.step(agent.predict(obs)[0])
        total += r
        done = term or trunc
    assert total == runs[0].returns[8]


def test_runner_needs_disabled_autoreset() -> None:
    vec = gym.make_vec("ParametricUserSim-v0", num_envs=2, vectorization_mode="vector_entry_point")
    with pytest.raises(ValueError, match="DISABLED"):
        run_episodes(RandomAgent(5, seed=0), vec, 2, 0)


def test_metric_helpers() -> None:
    same = np.array([[[1.0, 0.0], [1.0, 0.0]]])
    ortho = np.array([[[1.0, 0.0], [0.0, 1.0]]])
    assert np.allclose(slate_diversity(same), 0.0) and np.allclose(slate_diversity(ortho), 1.0)
    nov = item_novelty(np.array([0.0, 2.0]))  # shares 1/4 and 3/4
    assert np.allclose(nov, [2.0, -np.log2(0.75)])
    recorder = SlateRecorder(4, np.ones(TINY_WORLD.num_items))
    stats = run_episodes(RandomAgent(TINY_ENV.slate_size, seed=1), tiny_vec(4), 4, 0, recorder)
    res = summarize(stats, recorder)
    assert res["novelty"] == pytest.approx(1.0)
    assert res["session_length"] == pytest.approx(stats.steps.mean())
    assert res["coverage"] == pytest.approx((np.asarray(recorder.seen().sum(0)) > 0).mean())
