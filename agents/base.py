"""SlateAgent: the interface every agent shares with stable-baselines3 models.

`predict(observation, state=None, episode_start=None, deterministic=False) -> (action, state)`
takes a single observation dict (each value 1-D) or a batched one (each value 2-D, one row per
env, as SB3's VecEnv and `evaluate_policy` pass) and returns candidate indices of shape
(slate_size,) or (n_envs, slate_size). Learning agents also implement `update`.
"""

from __future__ import annotations

from typing import Any

import numpy as np


def is_batched(observation: dict[str, np.ndarray]) -> bool:
    """True when the observation holds one row per env (candidate_ids is 2-D)."""
    return np.asarray(observation["candidate_ids"]).ndim == 2


def as_batch(observation: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """View a single observation as a batch of one."""
    if is_batched(observation):
        return {k: np.asarray(v) for k, v in observation.items()}
    return {k: np.asarray(v)[None] for k, v in observation.items()}


class SlateAgent:
    """Base class: subclasses implement `act(batch_obs, deterministic) -> (n, slate_size)`."""

    name = "agent"

    def __init__(self, slate_size: int, seed: int | None = None) -> None:
        """Store the slate size and an own RNG (never the global one)."""
        self.slate_size = slate_size
        self.rng = np.random.default_rng(seed)

    def act(self, obs: dict[str, np.ndarray], deterministic: bool) -> np.ndarray:
        """Candidate indices (n, slate_size) for a batch of observations."""
        raise NotImplementedError

    def predict(
        self,
        observation: dict[str, np.ndarray],
        state: Any = None,
        episode_start: np.ndarray | None = None,
        deterministic: bool = False,
    ) -> tuple[np.ndarray, None]:
        """SB3-compatible prediction."""
        actions = np.asarray(self.act(as_batch(observation), deterministic), dtype=np.int64)
        return (actions if is_batched(observation) else actions[0]), None

    def update(self, obs: dict[str, np.ndarray], action: np.ndarray, info: dict[str, Any]) -> None:
        """Learn from one transition (batched like `act`); a no-op for fixed policies."""


def top_k(scores: np.ndarray, k: int) -> np.ndarray:
    """Indices of the k highest scores per row, best first: (n, C) -> (n, k)."""
    part = np.argpartition(-scores, k - 1, axis=1)[:, :k]
    order = np.argsort(-np.take_along_axis(scores, part, axis=1), axis=1)
    return np.take_along_axis(part, order, axis=1)
