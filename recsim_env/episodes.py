"""The episode runner: one episode per user, user i seeded seed + i.

It is shared by everything that plays whole episodes (the benchmark, the fidelity report's
ranking, SB3 evaluation, the popularity counts).

`run_episodes` plays `users` users through a native vector env in DISABLED autoreset mode: row r
starts with user r, and as soon as a row's user leaves (or hits the step limit) the row is reset
with the next user's seed (a partial reset), so the batch stays full until the last users and
the simulator's work is the users' steps, not rows times the longest session. User i is the
single env reset with seed + i whatever row it lands on, so a deterministic policy scores each
user the same as `gym.make(id).reset(seed=seed + i)` would, and the benchmark, the fidelity
report's policy ranking and SB3 evaluation all meet the same users.

Learning agents (`update`) learn online from the transitions of the rows that stepped.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import gymnasium as gym
import numpy as np
from gymnasium.vector import AutoresetMode, VectorEnv

from simulators.behaviours import DEEPER, engaged

StepObserver = Callable[[np.ndarray, dict[str, np.ndarray], np.ndarray, np.ndarray], None]
"""observer(users (m,), observations of their rows (m, ...), items shown (m, k), responses
(m, k)), called after every step with the users that stepped."""


@dataclass
class EpisodeStats:
    """Per-user results (arrays of length `users`) and the time taken.

    Attributes:
        returns: episode return.
        engaged: slots with any engagement (clicks, a purchase counted once).
        deeper: slots engaged past a click (purchases in the default behaviours).
        steps: slates shown.
        shown: items shown.
        seconds: wall time of the run.
    """

    returns: np.ndarray
    engaged: np.ndarray
    deeper: np.ndarray
    steps: np.ndarray
    shown: np.ndarray
    seconds: float = 0.0


def make_episode_env(env_id: str, num_envs: int, **env_kwargs: Any) -> VectorEnv:
    """A native vector env of `env_id` in DISABLED autoreset mode (what `run_episodes` needs).

    Unless given otherwise, it takes slates and observes everything, catalog ids included
    (`recsim_env.config.SLATE_AGENT_KWARGS`): what the baseline agents give and read.
    """
    import recsim_env  # noqa: F401  (registers the ids)
    from recsim_env.config import SLATE_AGENT_KWARGS

    env_kwargs = {**SLATE_AGENT_KWARGS, **env_kwargs}
    return gym.make_vec(
        env_id,
        num_envs=num_envs,
        vectorization_mode="vector_entry_point",
        autoreset_mode=AutoresetMode.DISABLED,
        **env_kwargs,
    )


def run_episodes(
    agent: Any,
    vec: VectorEnv,
    users: int,
    seed: int = 0,
    observer: StepObserver | None = None,
    deterministic: bool = True,
    on_done: Callable[[int], None] | None = None,
) -> EpisodeStats:
    """Play one episode per user (user i seeded seed + i) and collect per-user statistics.

    Args:
        agent: anything with SB3's batched `predict(obs, deterministic=)`; an `update(obs,
            action, info, next_obs=, terminated=)` method, if the agent has one, is called after
            every step (`info["_item_ids"]` marks the rows that stepped).
        vec: a native vector env (`SlateUserVectorEnv`, or a wrapper of one) in DISABLED
            autoreset mode (`make_episode_env`).
        users: number of users.
        seed: seed of user 0.
        observer: called after every step with the users that stepped (see `StepObserver`).
        deterministic: passed to predict.
        on_done: called with the number of users that finished at each step (progress).

    Raises:
        ValueError: the env is not in DISABLED autoreset mode, or users < 1.
    """
    if users < 1:
        raise ValueError(f"users must be >= 1, got {users}")
    mode = vec.metadata.get("autoreset_mode")
    if mode != AutoresetMode.DISABLED:
        raise ValueError(
            f"run_episodes needs a vector env with autoreset_mode DISABLED, got {mode}; "
            "build it with recsim_env.episodes.make_episode_env"
        )
    n = vec.num_envs
    stats = EpisodeStats(
        returns=np.zeros(users),
        engaged=np.zeros(users),
        deeper=np.zeros(users),
        steps=np.zeros(users),
        shown=np.zeros(users),
    )
    update = getattr(agent, "update", None)
    user_of_row = np.full(n, -1, dtype=np.int64)
    first = min(n, users)
    user_of_row[:first] = np.arange(first)
    seeds: list[int | None] = [seed + int(u) if u >= 0 else None for u in user_of_row]
    # gymnasium types VectorEnv.reset's seed as int | None; its vector envs take a list too
    obs, _ = vec.reset(seed=seeds)  # type: ignore[arg-type]
    playing = user_of_row >= 0
    next_user = first
    t0 = time.perf_counter()
    while playing.any():
        action, _ = agent.predict(obs, deterministic=deterministic)
        action = np.asarray(action)  # slates, or scores in the `scores` action mode
        next_obs, reward, term, trunc, info = vec.step(action)
        stepped = np.asarray(info["_item_ids"], dtype=bool) & playing
        rows = np.nonzero(stepped)[0]
        u = user_of_row[rows]
        resp = np.asarray(info["responses"])[rows]
        items = np.asarray(info["item_ids"])[rows]
        stats.returns[u] += np.asarray(reward)[rows]
        stats.engaged[u] += engaged(resp).sum(axis=1)
        stats.deeper[u] += (resp >= DEEPER).sum(axis=1)
        stats.steps[u] += 1
        stats.shown[u] += items.shape[1]
        if observer is not None:
            observer(u, {k: np.asarray(v)[rows] for k, v in obs.items()}, items, resp)
        if update is not None:
            info = {**info, "_item_ids": stepped}
            update(obs, action, info, next_obs=next_obs, terminated=term)
        done = (np.asarray(term) | np.asarray(trunc)) & stepped
        if on_done is not None and done.any():
            on_done(int(done.sum()))
        obs = next_obs
        finished = np.nonzero(done)[0]
        if len(finished):
            take = finished[: max(0, users - next_user)]
            playing[finished] = False
            user_of_row[finished] = -1
            if len(take):
                user_of_row[take] = next_user + np.arange(len(take))
                next_user += len(take)
                playing[take] = True
                mask = np.zeros(n, dtype=bool)
                mask[take] = True
                row_seeds: list[int | None] = [None] * n
                for r in take:
                    row_seeds[r] = seed + int(user_of_row[r])
                obs, _ = vec.reset(seed=row_seeds, options={"reset_mask": mask})  # type: ignore[arg-type]
    stats.seconds = time.perf_counter() - t0
    return stats
