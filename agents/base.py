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

    def update(
        self,
        obs: dict[str, np.ndarray],
        action: np.ndarray,
        info: dict[str, Any],
        next_obs: dict[str, np.ndarray] | None = None,
        terminated: np.ndarray | None = None,
    ) -> None:
        """Learn from one transition (batched like `act`); a no-op for fixed policies.

        Args:
            obs: the observation the action was chosen from.
            action: the candidate indices shown, (slate_size,) or (n, slate_size).
            info: the step's info (`item_ids`, `responses`, ...). Rows without a transition
                (a vector env row being reset, `item_ids` -1 or `info["_item_ids"]` False) are
                skipped; see `transition_rows`.
            next_obs: the observation after the step (needed by TD learners such as SlateQ).
            terminated: (n,) bool, the user left (no bootstrapping past it).
        """


def top_k(scores: np.ndarray, k: int) -> np.ndarray:
    """Indices of the k highest scores per row, best first: (n, C) -> (n, k)."""
    part = np.argpartition(-scores, k - 1, axis=1)[:, :k]
    order = np.argsort(-np.take_along_axis(scores, part, axis=1), axis=1)
    return np.take_along_axis(part, order, axis=1)


def transition_rows(info: dict[str, Any], n: int) -> np.ndarray:
    """(n,) bool: rows of a (possibly single-env) info dict that hold a real transition.

    A row counts when its `item_ids` are set (>= 0) and, when present, the vector env's mask
    `info["_item_ids"]` is True (the benchmark also clears it for users whose episode is over).
    """
    item_ids = np.asarray(info.get("item_ids", np.zeros((n, 1))))
    ok = (item_ids.reshape(n, -1) >= 0).all(axis=1)
    mask = info.get("_item_ids")
    if mask is not None:
        ok &= np.asarray(mask, dtype=bool).reshape(n)
    return ok


def batch_responses(info: dict[str, Any], n: int) -> np.ndarray:
    """The step's responses as int64 (n, slate_size) (a single env's (k,) gets a batch axis)."""
    return np.asarray(info["responses"], dtype=np.int64).reshape(n, -1)


def slot_rewards(responses: np.ndarray, click_reward: float, buy_reward: float) -> np.ndarray:
    """Reward earned by each slot: click_reward per click (a buy is a click) + buy_reward per buy."""
    responses = np.asarray(responses)
    return click_reward * (responses > 0) + buy_reward * (responses == 2)


def candidate_matrix(obs: dict[str, np.ndarray]) -> np.ndarray:
    """Batched candidate features reshaped to (n, num_candidates, F) float64."""
    ids = np.asarray(obs["candidate_ids"])
    feats = np.asarray(obs["candidate_features"], dtype=np.float64)
    return feats.reshape(ids.shape[0], ids.shape[1], -1)


def category_block_size(item_features: np.ndarray) -> int:
    """Number of leading one-hot (category) columns of an item feature matrix (0 if none).

    The shared item encoding (`simulators.catalog.item_feature_matrix`) puts the category
    one-hot first and numeric features (standardised log price) after it.
    """
    x = np.asarray(item_features)
    binary = np.all((x == 0) | (x == 1), axis=0)
    size = int(np.argmin(binary)) if not binary.all() else x.shape[1]
    if size == 0 or not np.allclose(x[:, :size].sum(axis=1), 1.0):
        return 0
    return size


def env_parts(env: Any) -> tuple[list[Any], np.ndarray, Any]:
    """Simulators, rows and EnvConfig behind a single env, our vector env or an SB3 VecEnv.

    Returns:
        (simulators, rows, config): batch row i of the observations the env hands out is row
        `rows[i]` of `simulators[i]` (one simulator for our native vector env, one per sub-env
        for an SB3 DummyVecEnv, row 0 each).

    Raises:
        ValueError: when no simulator can be reached (e.g. a subprocess VecEnv).
    """
    if hasattr(env, "envs"):  # stable-baselines3 DummyVecEnv (and wrappers forwarding .envs)
        parts = [env_parts(e) for e in env.envs]
        sims = [p[0][0] for p in parts]
        return sims, np.zeros(len(sims), dtype=np.int64), parts[0][2]
    base = getattr(env, "unwrapped", env)
    sim = getattr(base, "simulator", None)
    if sim is None:
        raise ValueError(f"cannot find a simulator behind {type(env).__name__}")
    n = int(getattr(base, "num_envs", 1)) if hasattr(base, "single_action_space") else 1
    return [sim] * n, np.arange(n, dtype=np.int64), getattr(base, "config", None)


def single_spaces(env: Any) -> tuple[Any, Any]:
    """(observation space, action space) of one user, for single, native vector and SB3 envs."""
    if hasattr(env, "single_action_space"):
        return env.single_observation_space, env.single_action_space
    return env.observation_space, env.action_space
