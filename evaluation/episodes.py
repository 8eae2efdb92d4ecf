"""Returns of trained policies: `evaluate_returns` over the shared episode runner."""

from __future__ import annotations

from typing import Any

import numpy as np
from gymnasium.vector import VectorEnv

from recsim_env.episodes import make_episode_env, run_episodes


def evaluate_returns(
    policy: Any,
    env: str | VectorEnv,
    users: int = 500,
    seed: int = 0,
    num_envs: int = 256,
    deterministic: bool = True,
    **env_kwargs: Any,
) -> np.ndarray:
    """Return of one episode per user (user i seeded seed + i, as in `llm-usersim benchmark`).

    Args:
        policy: an SB3 model, an `agents.sb3.SB3SlatePolicy` or any agent with SB3's batched
            `predict`.
        env: an env id (a DISABLED-mode vector env of min(users, num_envs) rows is made from it
            and env_kwargs, and closed afterwards) or such a vector env.
        users: number of users (episodes).
        seed: seed of user 0.
        num_envs: users simulated together when env is an id.
        deterministic: passed to predict.
        **env_kwargs: env arguments when env is an id.

    Returns:
        float64 (users,) episode returns.
    """
    from agents.base import env_view
    from agents.sb3 import as_slate_policy

    vec = (
        make_episode_env(env, max(1, min(users, num_envs)), **env_kwargs)
        if isinstance(env, str)
        else env
    )
    try:
        agent = as_slate_policy(policy, env_view(vec).slate_size)
        return run_episodes(agent, vec, users, seed, deterministic=deterministic).returns
    finally:
        if isinstance(env, str):
            vec.close()
