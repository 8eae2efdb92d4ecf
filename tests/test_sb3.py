import json
import warnings
import zipfile

import gymnasium as gym
import numpy as np
import pytest
import torch
from gymnasium.utils.env_checker import check_env
from gymnasium.wrappers import TimeLimit
from stable_baselines3 import DQN, PPO
from stable_baselines3.common.env_util import make_vec_env
from stable_baselines3.common.evaluation import evaluate_policy
from stable_baselines3.common.vec_env import VecCheckNan

import recsim_env  # noqa: F401
from agents.random_agent import RandomAgent
from agents.sb3 import (
    SB3SlatePolicy,
    SlateVecEnv,
    detect_sb3_algo,
    load_sb3_model,
    make_model,
    make_sb3_vec_env,
)
from agents.sb3.policy import SlateDistribution
from agents.sb3.policy_files import load_policy, save_policy
from evaluation.episodes import evaluate_returns
from recsim_env.cli import main
from recsim_env.config import SLATE_AGENT_KWARGS
from recsim_env.env import ParametricUserSimEnv
from recsim_env.wrappers import (
    DiscreteSlateWrapper,
    RewardWeights,
    discrete_to_slate,
    weighted_reward,
)

SMALL = {"slate_size": 3, "num_candidates": 8, "history_length": 4, **SLATE_AGENT_KWARGS}
"""The slate action and full observation with ids that the slate policy reads."""
WORLD = {"num_items": 50, "num_topics": 5, "population_size": 100}
PARAM = ("ParametricUserSim-v0", {"world": WORLD, **SMALL})


def _envs(tiny_sim_dir):
    return [PARAM, ("LLMUserSim-v0", {"simulator": str(tiny_sim_dir), **SMALL})]


@pytest.mark.parametrize("which", [0, 1])
@pytest.mark.parametrize("policy", ["slate", "mlp"])
def test_ppo_learns_a_few_steps_on_both_envs(which, policy, tiny_sim_dir):
    env_id, kwargs = _envs(tiny_sim_dir)[which]
    venv = make_sb3_vec_env(env_id, num_envs=2, seed=0, **kwargs)
    model = make_model("ppo", venv, policy=policy, seed=0, n_steps=32, batch_size=32, n_epochs=1)
    model.learn(64)
    assert model.num_timesteps == 64
    obs = venv.reset()
    action, _ = model.predict(obs, deterministic=True)
    assert action.shape == (2, 3)
    assert all(venv.action_space.contains(a) for a in action)
    if policy == "slate":  # distinct slates, sampled or greedy
        sampled, _ = model.predict(obs, deterministic=False)
        for a in np.concatenate([action, sampled]):
            assert len(set(a.tolist())) == 3


def test_make_model_leaves_no_sb3_folder_behind(tmp_path, monkeypatch, capsys):
    import tempfile

    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    env_id, kwargs = PARAM
    for verbose in (0, 1):
        venv = make_sb3_vec_env(env_id, num_envs=2, seed=0, **kwargs)
        model = make_model("ppo", venv, seed=0, verbose=verbose, n_steps=16, batch_size=32)
        model.learn(32)
    assert list(tmp_path.iterdir()) == []  # SB3's default logger makes SB3-<time> here
    assert "total_timesteps" in capsys.readouterr().out  # verbose=1 still prints its table


def test_plain_sb3_ppo_runs_on_the_adapter(tiny_sim_dir):
    venv = make_sb3_vec_env("LLMUserSim-v0", num_envs=2, simulator=str(tiny_sim_dir), **SMALL)
    PPO("MultiInputPolicy", venv, n_steps=32, batch_size=32, n_epochs=1, seed=0).learn(64)


def _rollout(venv, steps, seed):
    venv.seed(seed)
    obs = venv.reset()
    rng = np.random.default_rng(seed)
    out = []
    for _ in range(steps):
        actions = np.stack([rng.permutation(8)[:3] for _ in range(venv.num_envs)])
        obs, rewards, dones, infos = venv.step(actions)
        out.append((obs, rewards, dones, infos))
    return out


def test_adapter_follows_the_vecenv_contract_and_matches_dummy_vec_env():
    env_id, kwargs = PARAM
    kwargs = {**kwargs, "max_episode_steps": 4}
    ours = VecCheckNan(
        make_sb3_vec_env(env_id, num_envs=3, monitor=False, **kwargs), raise_exception=True
    )
    # gym.make(max_episode_steps=4) would only add the TimeLimit and leave the config at 50
    dummy = make_vec_env(lambda: TimeLimit(ParametricUserSimEnv(**kwargs), 4), n_envs=3)
    space = ours.observation_space
    assert space == dummy.observation_space and ours.action_space == dummy.action_space
    a, b = _rollout(ours, 30, seed=7), _rollout(dummy, 30, seed=7)
    saw_end = saw_truncation = False
    for (obs, rew, done, infos), (obs2, rew2, done2, infos2) in zip(a, b):
        for key, sub in space.spaces.items():
            assert obs[key].shape == (3, *sub.shape) and obs[key].dtype == sub.dtype
            np.testing.assert_array_equal(obs[key], obs2[key])
        assert rew.dtype == np.float32 and rew.shape == (3,) and done.dtype == bool
        np.testing.assert_array_equal(rew, rew2)
        np.testing.assert_array_equal(done, done2)
        assert isinstance(infos, list) and len(infos) == 3
        for i in range(3):
            assert infos[i]["TimeLimit.truncated"] == infos2[i]["TimeLimit.truncated"]
            assert ("terminal_observation" in infos[i]) == bool(done[i])
            if done[i]:
                saw_end = True
                saw_truncation |= infos[i]["TimeLimit.truncated"]
                term = infos[i]["terminal_observation"]
                assert space.contains(term)
                for key in space.spaces:
                    np.testing.assert_array_equal(term[key], infos2[i]["terminal_observation"][key])
    assert saw_end and saw_truncation
    assert ours.get_attr("render_mode") == [None] * 3
    assert ours.env_is_wrapped(gym.Wrapper) == [False] * 3


def test_adapter_needs_same_step_autoreset():
    env_id, kwargs = PARAM
    venv = gym.make_vec(env_id, num_envs=2, vectorization_mode="vector_entry_point", **kwargs)
    with pytest.raises(ValueError, match="SAME_STEP"):
        SlateVecEnv(venv)


def test_evaluate_policy_scores_an_agent_and_a_model_on_the_adapter():
    env_id, kwargs = PARAM
    venv = make_sb3_vec_env(env_id, num_envs=4, seed=0, **kwargs)
    mean, _ = evaluate_policy(RandomAgent(3, seed=0), venv, n_eval_episodes=8)
    assert mean > 0
    model = make_model("ppo", venv, seed=0, n_steps=8, batch_size=32)
    evaluate_policy(model, venv, n_eval_episodes=4)


def test_slate_distribution_is_normalised_over_distinct_slates():
    import itertools

    dist = SlateDistribution([5, 5]).proba_distribution(torch.randn(2, 10))
    slates = torch.tensor(list(itertools.permutations(range(5), 2)))
    for row in range(2):
        logits = dist.logits[row : row + 1].expand(len(slates), -1, -1).reshape(len(slates), -1)
        lp = SlateDistribution([5, 5]).proba_distribution(logits).log_prob(slates)
        assert torch.isclose(lp.exp().sum(), torch.tensor(1.0), atol=1e-5)
    sample = dist.sample()
    assert (sample[:, 0] != sample[:, 1]).all()


def test_discrete_to_slate_leads_with_the_choice_and_fills_with_similar_items():
    feats = np.zeros((1, 4, 3))
    feats[0, :, 0] = [1, 0, 1, 0]
    feats[0, :, 1] = [0, 1, 0, 1]
    feats[0, 3, 2] = 0.1
    slate = discrete_to_slate(feats, np.array([2]), 3)
    assert slate.tolist() == [[2, 0, 1]]  # 0 has the same features as 2; then index order
    assert discrete_to_slate(feats[0], 1, 2).tolist() == [1, 3]
    with pytest.raises(ValueError, match="out of range"):
        discrete_to_slate(feats, np.array([4]), 2)


def test_discrete_wrapper_passes_the_checker_and_dqn_runs(tiny_sim_dir):
    env = DiscreteSlateWrapper(gym.make(PARAM[0], **PARAM[1]))
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        check_env(env.unwrapped)
        check_env(env)
    # the only warning: gymnasium's advice to check unwrapped envs
    assert not [w for w in caught if "different from the unwrapped" not in str(w.message)]
    env.reset(seed=0)
    _, _, _, _, info = env.step(5)
    assert info["slate_action"][0] == 5 and len(set(info["slate_action"].tolist())) == 3
    for env_id, kwargs in _envs(tiny_sim_dir):
        venv = make_sb3_vec_env(env_id, num_envs=2, seed=0, discrete=True, **kwargs)
        model = make_model("dqn", venv, seed=0, learning_starts=8, train_freq=4, buffer_size=200)
        assert isinstance(model, DQN)
        model.learn(24)


def test_reward_weights_recompute_the_reward():
    env = RewardWeights(
        gym.make(PARAM[0], **PARAM[1]), click_reward=0.0, buy_reward=5.0, step_reward=1.0
    )
    env.reset(seed=1)
    for _ in range(10):
        _, r, term, trunc, info = env.step(env.action_space.sample())
        resp = info["responses"]
        assert r == 5.0 * (resp == 2).sum() + 1.0
        if term or trunc:
            break
    table = np.array([0.0, 1.0, 4.0])  # skip, click, buy (1 + 3)
    assert weighted_reward(np.array([[-1, -1], [0, 2]]), table, 0.5).tolist() == [0.0, 4.5]


def test_saved_models_load_and_predict(tmp_path, tiny_sim_dir):
    env_id, kwargs = PARAM
    for algo in ("ppo", "a2c", "dqn"):
        venv = make_sb3_vec_env(env_id, num_envs=2, seed=0, discrete=algo == "dqn", **kwargs)
        hp = {"learning_starts": 4, "buffer_size": 100} if algo == "dqn" else {"n_steps": 8}
        if algo == "ppo":
            hp["batch_size"] = 16
        model = make_model(algo, venv, seed=0, **hp)
        model.learn(16)
        path = tmp_path / f"{algo}.zip"
        model.save(path)
        assert detect_sb3_algo(path) == algo
        with pytest.raises(ValueError, match="trust"):
            load_sb3_model(path)
        zipped = load_sb3_model(tmp_path / algo, trust=True)  # suffix optional
        policy = load_policy(save_policy(model, tmp_path / f"{algo}_dir"))
        for loaded in (zipped, policy):
            assert isinstance(loaded, SB3SlatePolicy) and loaded.algo == algo
        obs = venv.reset()
        action, _ = policy.predict(obs, deterministic=True)
        assert action.shape == (2, 3) and action.dtype == np.int64
        np.testing.assert_array_equal(action, zipped.predict(obs, deterministic=True)[0])
        single, _ = policy.predict({k: v[0] for k, v in obs.items()}, deterministic=True)
        assert single.shape == (3,)
        returns = evaluate_returns(policy, env_id, users=4, seed=0, **kwargs)
        assert returns.shape == (4,)
    with pytest.raises(FileNotFoundError):
        load_sb3_model(tmp_path / "missing.zip")
    bad = tmp_path / "bad.zip"
    with zipfile.ZipFile(bad, "w") as zf:
        zf.writestr("data", "{}")
    with pytest.raises(ValueError, match="could not be loaded"):
        load_sb3_model(bad, trust=True)


def test_registry_loads_a_trained_model_as_an_agent(tmp_path):
    from agents.registry import make_agent

    env_id, kwargs = PARAM
    venv = make_sb3_vec_env(env_id, num_envs=2, seed=0, **kwargs)
    save_policy(make_model("ppo", venv, seed=0, n_steps=8, batch_size=16).learn(16), tmp_path / "m")
    vec = gym.make_vec(env_id, num_envs=2, vectorization_mode="vector_entry_point", **kwargs)
    agent = make_agent(f"ppo:{tmp_path / 'm'}", vec)
    obs, _ = vec.reset(seed=0)
    action, _ = agent.predict(obs, deterministic=True)
    vec.step(action)


@pytest.mark.parametrize("algo", ["ppo", "dqn"])
def test_train_agent_cli_end_to_end(algo, tmp_path, tiny_sim_dir, capsys):
    out = tmp_path / "run"
    summary = tmp_path / "summary.json"
    args = [
        "train-agent",
        "--algo",
        algo,
        "--env",
        "LLMUserSim-v0",
        "--sim",
        str(tiny_sim_dir),
        "--steps",
        "64",
        "--num-envs",
        "2",
        "--out",
        str(out),
        "--json",
        str(summary),
        "--eval-users",
        "4",
        "--env-kwargs",
        json.dumps(SMALL),
        "--no-progress",
    ]
    if algo == "ppo":
        args += ["--n-steps", "32", "--batch-size", "32"]
    else:
        args += ["--hyperparams", '{"learning_starts": 16}']
    assert main(args) == 0
    assert (out / "policy.safetensors").is_file() and (out / "tb").is_dir()
    assert not list(out.glob("*.zip"))  # nothing pickled
    data = json.loads(summary.read_text())
    assert data["timesteps"] >= 64 and data["seconds"] > 0
    assert np.isfinite(data["mean_return"]) and len(data["return_ci95"]) == 2
    assert "random_mean_return" in data
    assert "mean return" in capsys.readouterr().out
    policy = load_policy(out)
    env = gym.make(
        "LLMUserSim-v0", simulator=str(tiny_sim_dir), **{**SMALL, "include_item_ids": False}
    )
    obs, _ = env.reset(seed=0)
    with pytest.raises(ValueError, match="include_item_ids=True"):
        policy.predict(obs)  # SlatePolicy embeds the catalog ids
    env = gym.make("LLMUserSim-v0", simulator=str(tiny_sim_dir), **SMALL)
    obs, _ = env.reset(seed=0)
    action, _ = policy.predict(obs)
    env.step(action)


def test_benchmark_takes_the_env_kwargs_a_policy_was_trained_with(tmp_path, capsys):
    world = {"num_items": 50, "num_topics": 5, "population_size": 100}
    trained_with = {**SMALL, "item_popularity": True, "popularity_users": 40}
    train = ["train-agent", "--env", "ParametricUserSim-v0", "--steps", "32", "--num-envs", "2"]
    train += ["--n-steps", "16", "--batch-size", "16", "--eval-users", "0", "--no-random"]
    kwargs = json.dumps({**trained_with, "world": world})
    assert main([*train, "--out", str(tmp_path / "p"), "--env-kwargs", kwargs, "--quiet"]) == 0
    bench = ["benchmark", "--env", "ParametricUserSim-v0", "--agents", f"ppo:{tmp_path / 'p'}"]
    bench += ["--users", "4", "--quiet"]
    assert main([*bench, "--env-kwargs", json.dumps({**SMALL, "world": world})]) == 2
    err = capsys.readouterr().err
    assert "spaces differ" in err and '"item_popularity": true' in err and "--env-kwargs" in err
    assert main([*bench, "--env-kwargs", kwargs, "--json", str(tmp_path / "b.json")]) == 0
    figures = json.loads((tmp_path / "b.json").read_text())
    assert figures["env_kwargs"]["item_popularity"] is True  # the run says what it ran on
    assert "env kwargs" in capsys.readouterr().out
    assert main([*bench, "--env-kwargs", '{"item_popularty": true}']) == 2
    assert "did you mean item_popularity?" in capsys.readouterr().err
    assert main([*bench, "--env-kwargs", '{"action_mode": "weights"}']) == 2
    assert "action_mode cannot be changed" in capsys.readouterr().err
    assert main([*bench, "--env-kwargs", '{"device": "cpu"}']) == 2
    assert "give device as --device" in capsys.readouterr().err
    assert main([*bench, "--env-kwargs", '{"dtype": "bfloat16"}']) == 2
    assert "dtype applies to LLMUserSim-v0" in capsys.readouterr().err
    assert main([*train, "--out", str(tmp_path / "q"), "--env-kwargs", '{"dtype": "x"}']) == 2
    assert "dtype applies to LLMUserSim-v0" in capsys.readouterr().err


@pytest.mark.parametrize("action_mode", ["weights", "scores"])
def test_train_agent_evaluates_an_mlp_on_a_score_action(action_mode, tmp_path, capsys):
    env_kwargs = json.dumps({**SMALL, "world": WORLD, "action_mode": action_mode})
    args = ["train-agent", "--env", "ParametricUserSim-v0", "--steps", "32", "--num-envs", "2"]
    args += ["--n-steps", "16", "--batch-size", "16", "--policy", "mlp", "--eval-users", "4"]
    summary = tmp_path / "s.json"
    args += ["--env-kwargs", env_kwargs, "--out", str(tmp_path / "p"), "--json", str(summary)]
    assert main([*args, "--quiet"]) == 0, capsys.readouterr().err
    assert np.isfinite(json.loads(summary.read_text())["mean_return"])


def test_the_slate_policy_refuses_an_env_without_its_observation(tmp_path, capsys):
    args = ["train-agent", "--env", "ParametricUserSim-v0", "--steps", "8", "--quiet"]
    kwargs = json.dumps({"world": WORLD, "observation": "context"})
    assert main([*args, "--out", str(tmp_path / "p"), "--env-kwargs", kwargs]) == 2
    assert "the slate policy gives slates and reads the whole observation" in (
        capsys.readouterr().err
    )


def test_train_agent_cli_reports_bad_input(tmp_path, capsys):
    base = ["train-agent", "--out", str(tmp_path / "x"), "--steps", "8"]
    assert main([*base, "--env", "NoSuchEnv-v0"]) == 2
    assert "unknown env" in capsys.readouterr().err
    assert main([*base, "--env", "ParametricUserSim-v0", "--sim", "/nonexistent"]) == 2
    assert "/nonexistent: no such directory" in capsys.readouterr().err
    assert main([*base, "--env", "ParametricUserSim-v0", "--sim", str(tmp_path)]) == 2
    assert "--sim applies to LLMUserSim-v0" in capsys.readouterr().err
    assert main([*base, "--env", "ParametricUserSim-v0", "--hyperparams", "{bad"]) == 2
    assert "not valid JSON" in capsys.readouterr().err
    assert main([*base, "--algo", "dqn", "--env", "ParametricUserSim-v0", "--n-steps", "4"]) == 2
    assert "does not apply to dqn" in capsys.readouterr().err
