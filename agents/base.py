"""SlateAgent: the interface every agent shares with stable-baselines3 models.

`predict(observation, state=None, episode_start=None, deterministic=False) -> (action, state)`
takes a single observation dict (each value 1-D) or a batched one (each value 2-D, one row per
env, as SB3's VecEnv and `evaluate_policy` pass) and returns candidate indices of shape
(slate_size,) or (n_envs, slate_size). Learning agents also implement `update`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
from gymnasium import spaces

from recsim_env.config import EnvConfig
from simulators.base import UserSimulator
from simulators.behaviours import DEFAULT_BEHAVIOURS, DEFAULT_REWARDS


def is_batched(observation: dict[str, np.ndarray]) -> bool:
    """True when the observation holds one row per env (its 1-D keys are 2-D)."""
    key = "candidate_features" if "candidate_features" in observation else "candidate_ids"
    return np.asarray(observation[key]).ndim == 2


def as_batch(observation: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """View a single observation as a batch of one."""
    if is_batched(observation):
        return {k: np.asarray(v) for k, v in observation.items()}
    return {k: np.asarray(v)[None] for k, v in observation.items()}


class SlateAgent:
    """Base class: subclasses implement `act(batch_obs, deterministic) -> (n, slate_size)`."""

    name = "agent"
    user_independent = False
    """True when a user's slates depend only on that user's observations (no RNG draws shared
    across the batch, no learning), so splitting users across processes gives each user the
    same slates (`evaluation.distributed` splits only such agents' users)."""

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
    ok = np.asarray((item_ids.reshape(n, -1) >= 0).all(axis=1))
    mask = info.get("_item_ids")
    if mask is not None:
        ok &= np.asarray(mask, dtype=bool).reshape(n)
    return ok


def batch_responses(info: dict[str, Any], n: int) -> np.ndarray:
    """The step's responses as int64 (n, slate_size) (a single env's (k,) gets a batch axis)."""
    return np.asarray(info["responses"], dtype=np.int64).reshape(n, -1)


def default_reward_per_code(reward_per_code: np.ndarray | None) -> np.ndarray:
    """The given reward per behaviour code, or the default (skip 0, click 1, buy 1 + 3)."""
    if reward_per_code is None:
        return DEFAULT_BEHAVIOURS.reward_per_code(DEFAULT_REWARDS)
    return np.asarray(reward_per_code, dtype=np.float64)


def slot_rewards(responses: np.ndarray, reward_per_code: np.ndarray) -> np.ndarray:
    """Reward earned by each slot: `reward_per_code[code]` (0 for -1, no transition)."""
    r = np.asarray(responses)
    table = np.asarray(reward_per_code, dtype=np.float64)
    return np.where(r >= 0, table[np.clip(r, 0, len(table) - 1)], 0.0)


def candidate_matrix(obs: dict[str, np.ndarray]) -> np.ndarray:
    """Batched candidate features reshaped to (n, num_candidates, F) float64.

    F is the width of `clicked_features_mean` (the same item features), so no catalog ids are
    needed.
    """
    feats = np.asarray(obs["candidate_features"], dtype=np.float64)
    f = np.asarray(obs["clicked_features_mean"]).shape[-1]
    return feats.reshape(feats.shape[0], -1, f)


SLATE_AGENT_KEYS: tuple[str, ...] = (
    "profile",
    "candidate_ids",
    "candidate_features",
    "history_items",
    "history_responses",
    "clicked_features_mean",
    "session_features",
)
"""What the baseline agents read: the whole observation with catalog ids."""


def require_slate_agent_env(
    observation_space: spaces.Space, action_space: spaces.Space, who: str
) -> None:
    """Raise a clear error when an agent meets an env built for generic learners.

    The baselines give slates (`action_mode='slate'`) and read the whole observation with the
    catalog ids; `recsim_env.config.SLATE_AGENT_KWARGS` builds such an env.

    Raises:
        AgentNeedsSlateEnv: naming the env arguments.
    """
    keys = getattr(observation_space, "spaces", {})
    missing = [k for k in SLATE_AGENT_KEYS if k not in keys]
    if missing or not isinstance(action_space, spaces.MultiDiscrete):
        what = f"observes no {missing}" if missing else f"takes {action_space} actions"
        raise AgentNeedsSlateEnv(
            f"{who} gives slates and reads the whole observation, this env {what}: build it with "
            "action_mode='slate', observation='full', include_item_ids=True "
            "(recsim_env.config.SLATE_AGENT_KWARGS; recsim_env.episodes.make_episode_env does)"
        )


class AgentNeedsSlateEnv(ValueError):
    """A baseline met an env without slate actions or the whole observation with ids."""


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


@dataclass
class EnvView:
    """What an agent may read of the env it acts in.

    Attributes:
        simulators: the simulator behind each batch row of the observations (the same object
            repeated for a native vector env, one per sub-env for SB3's DummyVecEnv).
        rows: (n,) the simulator row of each batch row.
        config: the env's EnvConfig.
        observation_space / action_space: one user's spaces.
    """

    simulators: list[UserSimulator]
    rows: np.ndarray
    config: EnvConfig
    observation_space: spaces.Space
    action_space: spaces.Space

    @property
    def simulator(self) -> UserSimulator:
        """The simulator of batch row 0."""
        return self.simulators[0]

    @property
    def slate_size(self) -> int:
        """Items per slate."""
        return self.config.slate_size

    @property
    def reward_per_code(self) -> np.ndarray:
        """The env's reward of a slot per behaviour code (R,)."""
        return self.config.reward_per_code(self.simulator.behaviours)


def env_view(env: Any) -> EnvView:
    """The simulators, rows, config and spaces behind an env.

    The env is a single env, a native vector env (or a wrapper of either), our SB3
    `SlateVecEnv`, or an SB3 `DummyVecEnv` of single envs.

    Raises:
        ValueError: no simulator can be reached (e.g. a subprocess VecEnv).
    """
    from recsim_env.env import SlateUserEnv
    from recsim_env.vector_env import SlateUserVectorEnv

    try:
        base = env.unwrapped
    except AttributeError:
        raise ValueError(f"{type(env).__name__} is not an env (no .unwrapped)") from None
    if isinstance(base, SlateUserEnv):
        sims = [base.simulator]
        return EnvView(
            sims, np.zeros(1, np.int64), base.config, base.observation_space, base.action_space
        )
    if isinstance(base, SlateUserVectorEnv):
        sims = [base.simulator] * base.num_envs
        return EnvView(
            sims,
            np.arange(base.num_envs, dtype=np.int64),
            base.config,
            base.single_observation_space,
            base.single_action_space,
        )
    from stable_baselines3.common.vec_env import DummyVecEnv

    from agents.sb3.vec_env import SlateVecEnv

    if isinstance(base, SlateVecEnv):
        return env_view(base.venv)
    if isinstance(base, DummyVecEnv):
        parts = [env_view(e) for e in base.envs]
        return EnvView(
            [p.simulator for p in parts],
            np.zeros(len(parts), dtype=np.int64),
            parts[0].config,
            parts[0].observation_space,
            parts[0].action_space,
        )
    raise ValueError(
        f"cannot find a simulator behind {type(env).__name__}: agents that read the simulator "
        "need an LLMUserSim/ParametricUserSim env, its native vector env, or an in-process "
        "SB3 VecEnv of them"
    )
