"""Gymnasium conformance and the borders to RL libraries: standard keywords, the step limit's one
meaning, fresh worker processes, autoreset modes under Gymnasium's vector wrappers, the score
action mode, and stable-baselines3's fast path and redirect."""

from __future__ import annotations

import os
import subprocess
import sys
import warnings
from pathlib import Path

import gymnasium as gym
import numpy as np
import pytest
from gymnasium.utils.env_checker import check_env
from gymnasium.vector import AutoresetMode
from stable_baselines3.common.env_checker import check_env as sb3_check_env

import recsim_env
from recsim_env.wrappers import EndedEpisodeGuard

ROOT = Path(__file__).resolve().parents[1]
WORLD = {"num_items": 50, "num_topics": 5, "population_size": 100}
SMALL = {"slate_size": 3, "num_candidates": 8, "history_length": 4}
SLATE = {"action_mode": "slate"}
"""Tests that give the same candidate indices to several builds act with slates."""
ADVICE = ("symmetric and normalized", "normalized Box action space")
"""The checkers' advice to normalise a Box action to [-1, 1]: the score modes' [-5, 5] is on
purpose (`recsim_env.spaces.SCORE_BOUND`)."""


def complaints(caught) -> list[str]:
    """The checkers' warnings other than ADVICE."""
    return [str(w.message) for w in caught if not any(a in str(w.message) for a in ADVICE)]


PARAM = {"world": WORLD, **SMALL}


def _envs(tiny_sim_dir):
    return [
        ("ParametricUserSim-v0", PARAM),
        ("LLMUserSim-v0", {"simulator": str(tiny_sim_dir), **SMALL}),
    ]


def test_standard_keywords_and_render_mode(tiny_sim_dir):
    for env_id, kw in _envs(tiny_sim_dir):
        env = gym.make(env_id, render_mode=None, **kw)
        assert env.render_mode is None and "ansi" in env.metadata["render_modes"]
        text = gym.make(env_id, render_mode="ansi", **kw)
        text.reset(seed=0)
        _, _, _, _, info = text.step(text.action_space.sample())
        shown = text.render()
        assert isinstance(shown, str) and shown.startswith("step 1:")
        assert f"item {int(info['item_ids'][0])} " in shown
        with pytest.raises(ValueError, match="render_mode must be None or one of"):
            gym.make(env_id, render_mode="human", **kw).unwrapped  # noqa: B018
        vec = gym.make_vec(
            env_id, 2, vectorization_mode="vector_entry_point", render_mode="ansi", **kw
        )
        vec.reset(seed=0)
        vec.step(vec.action_space.sample())
        assert len(vec.render()) == 2


def test_unknown_keywords_in_pythons_own_phrasing():
    for build in (
        lambda: gym.make("ParametricUserSim-v0", frameskip=1),
        lambda: gym.make_vec(
            "ParametricUserSim-v0", 2, vectorization_mode="vector_entry_point", frameskip=1
        ),
    ):
        with pytest.raises(TypeError) as err:
            build()
        msg = str(err.value)
        assert "got an unexpected keyword argument 'frameskip'" in msg
        assert "valid: slate_size, num_candidates" in msg and "max_episode_steps" in msg
        assert "did you mean" not in msg  # nothing close to 'frameskip'
    with pytest.raises(TypeError, match=r"'slate_sise' \(did you mean 'slate_size'\?\); valid: "):
        gym.make("ParametricUserSim-v0", slate_sise=3)
    for typo, meant in (("buy_rewrd", "buy_reward"), ("Click_Reward", "click_reward")):
        with pytest.raises(TypeError, match=f"'{typo}' \\(did you mean '{meant}'\\?\\)"):
            gym.make("ParametricUserSim-v0", **{typo: 1.0})


def test_torchrl_gym_env_builds_from_the_id():
    from torchrl.envs import GymEnv  # passes frameskip=1 and drops it on Python's own message

    env = GymEnv("ParametricUserSim-v0", categorical_action_encoding=True, world=WORLD, **SMALL)
    env.set_seed(0)
    td = env.rollout(3, break_when_any_done=False)  # a user may leave within 3 steps
    assert td["next", "reward"].shape == (3, 1)


def test_max_episode_steps_means_the_same_in_every_build():
    """gym.make's TimeLimit and the vector entry point's config: the same observations for the
    same user, and truncation after N steps in both."""
    n = 4
    single = gym.make("ParametricUserSim-v0", max_episode_steps=n, **PARAM, **SLATE)
    vec = gym.make_vec(
        "ParametricUserSim-v0",
        3,
        vectorization_mode="vector_entry_point",
        max_episode_steps=n,
        **PARAM,
        **SLATE,
    )
    default = gym.make("ParametricUserSim-v0", **PARAM, **SLATE)
    sobs, _ = single.reset(seed=12)
    vobs, _ = vec.reset(seed=10)  # row 2 is the user of seed 12
    dobs, _ = default.reset(seed=12)
    action = np.array([0, 1, 2])
    for _ in range(n):
        for key in sobs:
            assert np.array_equal(sobs[key], vobs[key][2]) and np.array_equal(sobs[key], dobs[key])
        sobs, sr, sterm, strunc, _ = single.step(action)
        vobs, vr, vterm, vtrunc, _ = vec.step(np.tile(action, (3, 1)))
        dobs, *_ = default.step(action)
        assert sr == vr[2] and sterm == vterm[2] and strunc == vtrunc[2]
        if sterm:
            pytest.skip("the user left before the limit (seeded: should not happen)")
    assert strunc and vtrunc[2]  # after exactly n steps, in both builds
    guarded = EndedEpisodeGuard(
        gym.make("ParametricUserSim-v0", max_episode_steps=1, **PARAM, **SLATE)
    )
    guarded.reset(seed=12)
    assert guarded.step(action)[3] is True
    with pytest.raises(RuntimeError, match="after the episode ended"):
        guarded.step(action)  # gym.make's TimeLimit truncated it, which the env cannot see
    direct = recsim_env.env.ParametricUserSimEnv(max_episode_steps=2, **PARAM, **SLATE)
    direct.reset(seed=12)
    assert direct.step(action)[3] is False and direct.step(action)[3] is True


def test_fresh_worker_processes_build_the_env_from_module_colon_id():
    """A subprocess vector env (a spawned interpreter that never imported recsim_env) builds
    "recsim_env:ParametricUserSim-v0" (one worker: each costs an interpreter start)."""
    code = (
        "import gymnasium as gym\n"
        "v = gym.make_vec('recsim_env:ParametricUserSim-v0', num_envs=1, vectorization_mode="
        f"'async', vector_kwargs={{'context': 'spawn'}}, world={WORLD!r}, action_mode='scores')\n"
        "obs, _ = v.reset(seed=0)\n"
        "obs, r, te, tr, info = v.step(v.action_space.sample())\n"
        "print('ok', obs['candidate_features'].shape)\n"
        "v.close()\n"
    )
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    out = subprocess.run(
        [sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=300
    )
    assert out.returncode == 0, out.stderr[-2000:]
    assert "ok (1, 120)" in out.stdout  # 20 candidates x (5 topics + log price)


def test_gymnasium_vector_wrappers_work_on_the_default_autoreset():
    from gymnasium.wrappers import vector as vw

    vec = gym.make_vec("ParametricUserSim-v0", 4, vectorization_mode="vector_entry_point", **PARAM)
    assert vec.metadata["autoreset_mode"] == AutoresetMode.NEXT_STEP
    env = vw.RecordEpisodeStatistics(
        vw.ClipReward(
            vw.NormalizeReward(vw.NormalizeObservation(vw.FlattenObservation(vec))), -5, 5
        )
    )
    obs, _ = env.reset(seed=0)
    episodes = 0
    for _ in range(40):
        obs, r, term, trunc, info = env.step(env.action_space.sample())
        assert obs.shape == (4, env.single_observation_space.shape[0]) and np.isfinite(obs).all()
        episodes += int(info.get("_episode", np.zeros(4, bool)).sum())
    assert episodes > 0


@pytest.mark.parametrize("mode", list(AutoresetMode))
def test_every_autoreset_mode_runs(mode):
    vec = gym.make_vec(
        "ParametricUserSim-v0",
        3,
        vectorization_mode="vector_entry_point",
        autoreset_mode=mode,
        **PARAM,
    )
    vec.reset(seed=0)
    ended = np.zeros(3, bool)
    for _ in range(60):
        _, _, term, trunc, info = vec.step(vec.action_space.sample())
        if mode == AutoresetMode.SAME_STEP and (term | trunc).any():
            assert info["_final_obs"].any()
        ended |= term | trunc
        if mode == AutoresetMode.DISABLED and ended.any():
            vec.reset(options={"reset_mask": ended.copy()})
            ended[:] = False
    assert vec.metadata["autoreset_mode"] == mode


def test_default_observation_has_no_catalog_ids():
    env = gym.make("ParametricUserSim-v0", **PARAM)
    keys = set(env.observation_space.spaces)
    assert not keys & {"candidate_ids", "history_items"}
    boxes = [env.observation_space[k] for k in keys if k != "profile"]  # profile: multi-hot
    assert all(np.abs(b.high).max() <= 5 for b in boxes)  # features and codes, no catalog index
    ids = gym.make("ParametricUserSim-v0", include_item_ids=True, **PARAM)
    assert {"candidate_ids", "history_items"} <= set(ids.observation_space.spaces)


def test_weights_action_mode_scores_candidates_by_their_features(tiny_sim_dir):
    for env_id, kw in _envs(tiny_sim_dir):
        env = gym.make(env_id, action_mode="weights", observation="full", **kw)
        f = env.observation_space["clicked_features_mean"].shape[0]
        assert isinstance(env.action_space, gym.spaces.Box) and env.action_space.shape == (f,)
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            check_env(env.unwrapped)
            sb3_check_env(env.unwrapped)
        assert not complaints(caught)
        obs, _ = env.reset(seed=1)
        w = np.linspace(-1, 1, f).astype(np.float32)
        want = np.argsort(-(obs["candidate_features"].reshape(8, f) @ w), kind="stable")[:3]
        _, _, _, _, info = env.step(w)
        assert info["slate"].tolist() == want.tolist()


def test_score_action_mode_shows_the_top_k_and_passes_both_checkers(tiny_sim_dir):
    for env_id, kw in _envs(tiny_sim_dir):
        env = gym.make(env_id, action_mode="scores", **kw)
        assert isinstance(env.action_space, gym.spaces.Box) and env.action_space.shape == (8,)
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            check_env(env.unwrapped)
            sb3_check_env(env.unwrapped)
        assert not complaints(caught)
        env.reset(seed=1)
        scores = np.array([0.1, 0.9, -0.3, 0.9, 0.0, 0.5, -1.0, 0.2], dtype=np.float32)
        _, _, _, _, info = env.step(scores)
        assert info["slate"].tolist() == [1, 3, 5]  # best first, ties to the lower index
        with pytest.raises(ValueError, match="needs action_mode='slate'"):
            env.step(np.array([0, 1, 2]))
        with pytest.raises(ValueError, match="non-finite values"):
            env.step(np.full(8, np.nan, dtype=np.float32))


def test_slate_mode_reports_the_deduped_slate_it_showed():
    env = gym.make("ParametricUserSim-v0", **PARAM, **SLATE)
    env.reset(seed=0)
    _, _, _, _, info = env.step(np.array([4, 4, 4]))
    assert info["slate"].tolist() == [4, 0, 1]  # each repeat: the lowest free candidate


def test_sb3_gets_a_redirect_and_a_one_line_fast_path():
    from stable_baselines3 import PPO

    from agents.sb3 import as_sb3_env, make_sb3_vec_env

    vec = gym.make_vec("ParametricUserSim-v0", 2, vectorization_mode="vector_entry_point", **PARAM)
    with pytest.raises(ValueError, match=r"agents\.sb3\.as_sb3_env\(env\)"):
        PPO("MultiInputPolicy", vec)
    with pytest.raises(ValueError, match="SAME_STEP"):
        as_sb3_env(vec)
    same = gym.make_vec(
        "ParametricUserSim-v0",
        2,
        vectorization_mode="vector_entry_point",
        autoreset_mode=AutoresetMode.SAME_STEP,
        **PARAM,
    )
    PPO("MultiInputPolicy", as_sb3_env(same), n_steps=16, batch_size=16, n_epochs=1).learn(32)
    fast = make_sb3_vec_env("ParametricUserSim-v0", num_envs=2, action_mode="scores", **PARAM)
    PPO("MultiInputPolicy", fast, n_steps=16, batch_size=16, n_epochs=1).learn(32)
    env = gym.make("ParametricUserSim-v0", **PARAM)
    assert as_sb3_env(env) is env


def test_sb3_make_vec_env_builds_from_the_id():
    """SB3 first asks for render_mode="rgb_array" and falls back on a TypeError."""
    from stable_baselines3.common.env_util import make_vec_env

    from recsim_env.env import RenderModeError

    vec = make_vec_env("ParametricUserSim-v0", n_envs=2, env_kwargs={"world": WORLD, **SMALL})
    obs = vec.reset()
    assert vec.num_envs == 2 and all(v.shape[0] == 2 for v in obs.values())
    assert issubclass(RenderModeError, ValueError) and issubclass(RenderModeError, TypeError)
