"""PopularityAgent: most clicked first, from interaction logs or any click counts."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from agents.base import SlateAgent, env_view, top_k
from simulators.behaviours import engaged


def click_counts_from_logs(logs: Any, num_items: int | None = None) -> np.ndarray:
    """Clicks (a buy is a click) per catalog item of a log set.

    Args:
        logs: a log directory (str/Path, read with `simulators.logs.read_logs`) or an
            `InteractionLogs`.
        num_items: catalog size; defaults to the length of the items table.

    Returns:
        (num_items,) float64 counts; an item's catalog index is its position in the items table
        (`item_id` "i{index}" for logs written by `llm-usersim generate-logs`).
    """
    from simulators.logs import read_logs

    if isinstance(logs, (str, Path)):
        logs = read_logs(logs)
    index = logs.item_index()
    n = len(index) if num_items is None else int(num_items)
    counts = np.zeros(n)
    items = np.concatenate([np.asarray(x, dtype=object) for x in logs.steps["items"]])
    resp = np.concatenate([np.asarray(x, dtype=np.int64) for x in logs.steps["responses"]])
    clicked = items[engaged(resp)]
    idx = np.array([index.get(str(i), -1) for i in clicked], dtype=np.int64)
    idx = idx[(idx >= 0) & (idx < n)]
    np.add.at(counts, idx, 1.0)
    return counts


def collect_click_counts(
    vector_env: Any, users: int, seed: int, num_items: int | None = None
) -> np.ndarray:
    """Clicks per item logged by a uniformly random policy on `users` fresh sessions.

    Args:
        vector_env: a native vector env in DISABLED autoreset mode
            (`recsim_env.episodes.make_episode_env`); it is reset, so use it for nothing else
            meanwhile.
        users: sessions to log (user i is seeded seed + i).
        seed: seed of the first user (and of the random policy); keep these users apart from
            the ones you evaluate on.
        num_items: catalog size (default: the simulator's).

    Returns:
        (num_items,) float64 click counts.
    """
    from agents.random_agent import RandomAgent
    from recsim_env.episodes import run_episodes

    n_items = int(num_items or env_view(vector_env).simulator.num_items)
    k = len(vector_env.single_action_space.nvec)
    counts = np.zeros(n_items)

    def count(users: np.ndarray, obs: Any, items: np.ndarray, responses: np.ndarray) -> None:
        np.add.at(counts, items[engaged(responses)], 1.0)

    run_episodes(RandomAgent(k, seed), vector_env, users, seed, observer=count)
    return counts


class PopularityAgent(SlateAgent):
    """Ranks candidates by past clicks; the most popular candidate takes the top slot.

    Args:
        counts: (num_items,) popularity of every catalog item (clicks, or any score).
        slate_size: items per slate.
        seed: unused (the ranking is deterministic; ties go to the lower candidate index).

    Example:
        >>> agent = PopularityAgent(np.arange(30.0), slate_size=2)
        >>> obs = {"candidate_ids": np.array([3, 29, 7])}
        >>> agent.predict(obs)[0].tolist()
        [1, 2]
    """

    name = "popular"
    user_independent = True

    def __init__(self, counts: np.ndarray, slate_size: int, seed: int | None = None) -> None:
        """Store the popularity of every item."""
        super().__init__(slate_size, seed)
        self.counts = np.asarray(counts, dtype=np.float64)

    @classmethod
    def from_logs(cls, logs: Any, slate_size: int, num_items: int | None = None) -> PopularityAgent:
        """Fit from a log directory or `InteractionLogs` (clicks per item)."""
        return cls(click_counts_from_logs(logs, num_items), slate_size)

    def act(self, obs: dict[str, np.ndarray], deterministic: bool) -> np.ndarray:
        """Top slate_size candidates by popularity, most popular first."""
        ids = np.asarray(obs["candidate_ids"], dtype=np.int64)
        known = (ids >= 0) & (ids < len(self.counts))
        score = np.where(known, self.counts[np.clip(ids, 0, len(self.counts) - 1)], -1.0)
        # a tiny index-based term keeps ties deterministic (lower candidate index first)
        score = score - 1e-9 * np.arange(ids.shape[1])
        return top_k(score, self.slate_size)
