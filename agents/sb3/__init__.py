"""stable-baselines3 glue: a batched VecEnv, a slate policy, tuned training defaults, loading.

- `vec_env`: `SlateVecEnv` / `make_sb3_vec_env` / `as_sb3_env`, the native vector env as one SB3
  VecEnv (the fast path: `PPO("MultiInputPolicy", make_sb3_vec_env(id, num_envs=16))`).
- `policy`: `SlatePolicy` (candidate scoring, distinct slates) for PPO/A2C.
- `training`: `make_model` with `default_hyperparams`.
- `loading`: `load_sb3_model` / `SB3SlatePolicy`.

Example:
    >>> venv = make_sb3_vec_env("ParametricUserSim-v0", num_envs=8, seed=0)
    >>> model = make_model("ppo", venv, seed=0).learn(256)
    >>> model.save("model.zip")
    >>> policy = load_sb3_model("model.zip")
"""

from agents.sb3.loading import (
    METADATA_ATTR,
    SB3_ALGOS,
    SB3SlatePolicy,
    as_slate_policy,
    detect_sb3_algo,
    load_sb3_model,
)
from agents.sb3.policy import CandidateScoreHead, SlateFeaturesExtractor, SlatePolicy
from agents.sb3.training import POLICIES, ROLLOUT_SIZE, default_hyperparams, make_model
from agents.sb3.vec_env import SlateVecEnv, as_sb3_env, make_sb3_vec_env

__all__ = [
    "METADATA_ATTR",
    "POLICIES",
    "ROLLOUT_SIZE",
    "SB3_ALGOS",
    "CandidateScoreHead",
    "SB3SlatePolicy",
    "SlateFeaturesExtractor",
    "SlatePolicy",
    "SlateVecEnv",
    "as_sb3_env",
    "as_slate_policy",
    "default_hyperparams",
    "detect_sb3_algo",
    "load_sb3_model",
    "make_model",
    "make_sb3_vec_env",
]
