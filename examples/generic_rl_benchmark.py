"""Generic RL on the env as it comes: SB3's PPO and SAC with default hyperparameters vs random.

The obvious first try, `PPO("MultiInputPolicy", env)` on `gym.make("ParametricUserSim-v0")`,
with SB3's default hyperparameters and nothing tuned, over several seeds; SAC likewise, on the
env's default `weights` action (a Box of one weight per item feature; each candidate scores
features . weights, the top k shown) or, with `--sac-action-mode scores`, on a Box of one score
per candidate, or with `--sac-action-mode weights+popularity` on the weights plus one weight on
the items' popularity (log click counts of a random-policy run on other users: what a
recommender learns from its own logs; the env's features carry category and price, not the
hidden item quality that popularity reflects). Each trained policy
and a uniformly random one then meet the same held-out users (user i seeded 10**6 + i, one
episode each, deterministic actions), and the script prints the mean returns, their ratio to
random's and whether the target (at least 2x random's return) is met.

Run:
    python examples/generic_rl_benchmark.py --json generic.json     # 3 seeds x 100k steps each
    python examples/generic_rl_benchmark.py --algos ppo --seeds 1
    python examples/generic_rl_benchmark.py --algos sac --sac-action-mode scores
    python examples/generic_rl_benchmark.py --algos sac --sac-action-mode weights+popularity
    python examples/generic_rl_benchmark.py --smoke                 # seconds
"""

from __future__ import annotations

import dataclasses
import json
import time
from dataclasses import dataclass
from typing import Any

import gymnasium as gym
import numpy as np
import torch
from _args import parse_dataclass  # examples/_args.py

import recsim_env  # noqa: F401  (registers the ids)
from agents.random_agent import RandomAgent
from evaluation.episodes import evaluate_returns
from evaluation.stats import mean_ci95
from recsim_env.spaces import SCORE_BOUND

TARGET = 2.0
"""A trained policy should reach at least this multiple of random's mean return."""
SAC_ACTION_MODES = ("weights", "scores", "weights+popularity")
POPULARITY_SEED = 10**9
"""Seed of the first random-policy user whose clicks count as popularity (apart from the
evaluation users, seeded from 10**6)."""


def popularity_feature(env_id: str, users: int = 1000) -> np.ndarray:
    """Standardised log(1 + clicks) per catalog item, from a random policy on `users` users."""
    from agents.popularity import collect_click_counts
    from recsim_env.config import SLATE_AGENT_KWARGS
    from recsim_env.episodes import make_episode_env

    vec = make_episode_env(env_id, 256, **SLATE_AGENT_KWARGS)
    try:
        counts = np.log1p(collect_click_counts(vec, users, POPULARITY_SEED))
    finally:
        vec.close()
    return ((counts - counts.mean()) / max(counts.std(), 1e-9)).astype(np.float32)


def popularity_scores(
    weights: np.ndarray, features: np.ndarray, ids: np.ndarray, popularity: np.ndarray
) -> np.ndarray:
    """Candidate scores (..., C) of weights (..., F + 1) on features (..., C * F) and popularity.

    Scaled into the score action's bounds (the order, which is all that counts, is kept).
    """
    f = weights.shape[-1] - 1
    feats = features.reshape(*features.shape[:-1], -1, f)
    scores = (feats @ weights[..., :f, None])[..., 0] + popularity[ids] * weights[..., f:]
    peak = np.abs(scores).max(axis=-1, keepdims=True) / SCORE_BOUND
    return (scores / np.maximum(peak, 1.0)).astype(np.float32)


class PopularityWeights(gym.Wrapper):
    """The weights action plus one weight on item popularity, over the env's `scores` mode.

    The policy sees the context observation (profile, clicked features, session); the wrapper
    keeps the candidates' features and ids to score them.
    """

    KEYS = ("profile", "clicked_features_mean", "session_features")

    def __init__(self, env: gym.Env, popularity: np.ndarray) -> None:
        super().__init__(env)
        self.popularity = popularity
        self.observation_space = gym.spaces.Dict({k: env.observation_space[k] for k in self.KEYS})
        f = env.observation_space["clicked_features_mean"].shape[0]
        self.action_space = gym.spaces.Box(-SCORE_BOUND, SCORE_BOUND, (f + 1,), np.float32)
        self._last: dict = {}

    def _observe(self, obs: dict) -> dict:
        self._last = obs
        return {k: obs[k] for k in self.KEYS}

    def reset(self, **kwargs: Any) -> tuple[dict, dict]:
        obs, info = self.env.reset(**kwargs)
        return self._observe(obs), info

    def step(self, action: Any) -> tuple[dict, float, bool, bool, dict]:
        last = self._last
        scores = popularity_scores(
            np.asarray(action, np.float32),
            last["candidate_features"],
            last["candidate_ids"],
            self.popularity,
        )
        obs, reward, terminated, truncated, info = self.env.step(scores)
        return self._observe(obs), float(reward), terminated, truncated, info


@dataclass
class Args:
    """Settings; defaults do the measured run, --smoke a tiny one."""

    env_id: str = "ParametricUserSim-v0"
    algos: str = "ppo,sac"
    """ppo: PPO on the env's default action mode; sac: SAC on `sac_action_mode`."""
    sac_action_mode: str = "weights"
    """SAC's action: 'weights' (the env's default), 'scores' (one score per candidate) or
    'weights+popularity' (the weights and one more for the items' popularity)."""
    steps: int = 100_000
    """Env steps per training run."""
    seeds: int = 3
    first_seed: int = 0
    """Seeds first_seed .. first_seed + seeds - 1 (several processes can share the seeds)."""
    eval_users: int = 1000
    json: str = ""
    """Write the figures here as JSON."""
    threads: int = 1
    smoke: bool = False


def train(
    algo: str,
    env_id: str,
    steps: int,
    seed: int,
    smoke: bool,
    sac_action_mode: str = "weights",
    popularity: np.ndarray | None = None,
) -> tuple[Any, str]:
    """SB3's algorithm with its defaults on one single env (the model, its action mode)."""
    from stable_baselines3 import PPO, SAC

    if algo == "ppo":
        env = gym.make(env_id)  # the env as it comes
        small = {"n_steps": 64, "batch_size": 32} if smoke else {}
        model = PPO("MultiInputPolicy", env, seed=seed, **small)
    elif algo == "sac":
        if sac_action_mode == "weights+popularity":
            assert popularity is not None
            scored = gym.make(env_id, action_mode="scores", include_item_ids=True)
            env = PopularityWeights(scored, popularity)
        else:
            env = gym.make(env_id, action_mode=sac_action_mode)
        small = {"learning_starts": 16, "batch_size": 16, "buffer_size": 1000} if smoke else {}
        model = SAC("MultiInputPolicy", env, seed=seed, **small)
    else:
        raise SystemExit(f"--algos: unknown algorithm {algo!r}; ppo or sac")
    model.learn(steps)
    return model, sac_action_mode if algo == "sac" else env.unwrapped.config.action_mode


class Deterministic:
    """An SB3 model's deterministic actions in the env's own action mode (no catalog ids)."""

    def __init__(self, model: Any) -> None:
        self.model = model

    def predict(self, obs: dict, deterministic: bool = True, **_: Any) -> tuple[np.ndarray, None]:
        keys = self.model.observation_space.spaces
        action, _ = self.model.predict({k: obs[k] for k in keys}, deterministic=True)
        return action, None


class PopularityDeterministic(Deterministic):
    """A model trained on `PopularityWeights`, scoring the candidates of a batched env."""

    def __init__(self, model: Any, popularity: np.ndarray) -> None:
        super().__init__(model)
        self.popularity = popularity

    def predict(self, obs: dict, deterministic: bool = True, **_: Any) -> tuple[np.ndarray, None]:
        weights, _ = super().predict(obs)
        features, ids = obs["candidate_features"], obs["candidate_ids"]
        return popularity_scores(weights, features, ids, self.popularity), None


def main() -> None:
    args = parse_dataclass(Args, __doc__)
    if args.smoke:
        args = dataclasses.replace(args, steps=64, seeds=1, eval_users=16)
    if args.sac_action_mode not in SAC_ACTION_MODES:
        raise SystemExit(
            f"--sac-action-mode: {args.sac_action_mode!r}; allowed: {', '.join(SAC_ACTION_MODES)}"
        )
    torch.set_num_threads(args.threads)
    algos = [a.strip() for a in args.algos.split(",") if a.strip()]
    users = {"users": args.eval_users, "seed": 10**6}
    t0 = time.time()
    random_returns = evaluate_returns(RandomAgent(5, seed=0), args.env_id, **users)
    random_mean = float(random_returns.mean())
    out: dict[str, Any] = {
        "env_id": args.env_id,
        "steps": args.steps,
        "seeds": args.seeds,
        "eval_users": args.eval_users,
        "random": {"mean_return": random_mean, "ci95": list(mean_ci95(random_returns)[1])},
        "target_ratio": TARGET,
        "algos": {},
    }
    print(f"{args.env_id}: random {random_mean:.2f} over {args.eval_users} users")
    popular = "sac" in algos and args.sac_action_mode == "weights+popularity"
    popularity = popularity_feature(args.env_id) if popular else None
    for algo in algos:
        per_seed = []
        for seed in range(args.first_seed, args.first_seed + args.seeds):
            start = time.time()
            model, mode = train(
                algo, args.env_id, args.steps, seed, args.smoke, args.sac_action_mode, popularity
            )
            seconds = time.time() - start
            if mode == "weights+popularity":
                assert popularity is not None
                agent: Any = PopularityDeterministic(model, popularity)
                view = {"include_item_ids": True, "action_mode": "scores"}
            else:
                agent, view = Deterministic(model), {"include_item_ids": False, "action_mode": mode}
            returns = evaluate_returns(agent, args.env_id, **view, **users)
            per_seed.append(
                {
                    "seed": seed,
                    "mean_return": float(returns.mean()),
                    "train_seconds": round(seconds),
                }
            )
            print(
                f"  {algo} seed {seed}: {returns.mean():.2f} "
                f"({returns.mean() / random_mean:.2f}x random, trained in {seconds:.0f} s)"
            )
        means = np.array([r["mean_return"] for r in per_seed])
        ratio = float(means.mean() / random_mean)
        out["algos"][algo] = {
            "action_mode": mode,
            "per_seed": per_seed,
            "mean_return": float(means.mean()),
            "ratio_to_random": ratio,
            "min_seed_ratio": float(means.min() / random_mean),
            "target_met": bool(ratio >= TARGET),
        }
        mark = "met" if ratio >= TARGET else "NOT met"
        print(
            f"{algo}: mean return {means.mean():.2f} = {ratio:.2f}x random (target {TARGET}x: {mark})"
        )
    out["seconds"] = round(time.time() - t0)
    print(f"wall time {out['seconds']} s")
    if args.json:
        with open(args.json, "w") as fh:
            json.dump(out, fh, indent=2)
        print(f"wrote {args.json}")


if __name__ == "__main__":
    main()
