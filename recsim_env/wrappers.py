"""Small single-purpose wrappers for the slate envs (single env and native vector env).

- `DiscreteSlateWrapper` / `DiscreteSlateVectorWrapper`: a `Discrete(num_candidates)` action
  for algorithms that need one (DQN). Action `c` shows candidate `c` in the top slot and fills
  the other slots with the candidates most similar to it ("more like this", see
  `discrete_to_slate`).
- `RewardWeights` / `RewardWeightsVector`: recompute the reward from the step's responses with
  other weights (e.g. clicks only, or a bonus per step the user stays).

Example:
    >>> import gymnasium as gym, recsim_env
    >>> env = DiscreteSlateWrapper(gym.make("ParametricUserSim-v0"))
    >>> obs, _ = env.reset(seed=0)
    >>> obs, reward, terminated, truncated, info = env.step(3)
    >>> info["slate_action"].shape
    (5,)
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, SupportsFloat, cast

import gymnasium as gym
import numpy as np
from gymnasium import spaces
from gymnasium.vector import VectorEnv, VectorWrapper

DISCRETE_SLATE_RULE = "top1_similar"
"""Name of the Discrete-to-slate rule, stored with saved models that use it."""


def discrete_to_slate(
    candidate_features: np.ndarray, index: np.ndarray, slate_size: int
) -> np.ndarray:
    """Map Discrete actions to slates: the chosen candidate first, then its nearest neighbours.

    Slot 0 holds candidate `index`; slots 1..slate_size-1 hold the other candidates in order of
    decreasing cosine similarity of their item features (category one-hot, standardised log
    price) to it, ties broken by the lower candidate index. The rule reads only the observation,
    so a DQN agent picks "the item to lead with" and the slate is "more like this"; it is the
    same rule at training time (the wrappers) and when a saved model is loaded
    (`agents.sb3.load_sb3_model`).

    Args:
        candidate_features: (n, num_candidates, F) float features (the observation's flat
            `candidate_features` reshaped), or (num_candidates, F) with a scalar index.
        index: (n,) int candidate indices, or a scalar.
        slate_size: slots to fill.

    Returns:
        int64 (n, slate_size) candidate indices, distinct in each row ((slate_size,) when
        unbatched).
    """
    idx = np.asarray(index, dtype=np.int64)
    feats = np.asarray(candidate_features, dtype=np.float64)
    single = idx.ndim == 0
    if single:
        idx, feats = idx[None], feats[None]
    if feats.ndim != 3 or feats.shape[0] != len(idx):
        raise ValueError(
            f"candidate_features must be (n, num_candidates, F) for {len(idx)} actions "
            f"(or (num_candidates, F) with a scalar action), got shape {feats.shape[int(single) :]}"
        )
    n = len(idx)
    c = feats.shape[1]
    if slate_size > c:
        raise ValueError(f"slate_size ({slate_size}) exceeds num_candidates ({c})")
    if idx.min(initial=0) < 0 or idx.max(initial=0) >= c:
        raise ValueError(f"discrete action out of range [0, {c}): {idx.tolist()}")
    unit = feats / np.maximum(np.linalg.norm(feats, axis=-1, keepdims=True), 1e-12)
    lead = unit[np.arange(n), idx]  # (n, F)
    sim = np.einsum("ncf,nf->nc", unit, lead)  # (n, C)
    sim[np.arange(n), idx] = np.inf  # the chosen candidate goes first
    order = np.argsort(-sim, axis=1, kind="stable")[:, :slate_size]
    return order[0] if single else order


def _need_slates(action_space: spaces.Space, observation_space: spaces.Space) -> None:
    """The Discrete wrappers expand into slates of observed candidates."""
    keys = getattr(observation_space, "spaces", {})
    if not isinstance(action_space, spaces.MultiDiscrete) or "candidate_features" not in keys:
        raise ValueError(
            "a Discrete slate action needs an env with action_mode='slate' (got "
            f"{action_space}) that observes candidate_features"
        )


def _candidate_matrix(obs: dict[str, np.ndarray], num_candidates: int) -> np.ndarray:
    feats = np.asarray(obs["candidate_features"])
    lead = feats.shape[:-1]
    return feats.reshape(*lead, num_candidates, -1)


class DiscreteSlateWrapper(gym.Wrapper, gym.utils.RecordConstructorArgs):
    """`Discrete(num_candidates)` actions on a single slate env (see `discrete_to_slate`).

    The slate actually requested is in `info["slate_action"]`.
    """

    def __init__(self, env: gym.Env) -> None:
        """Replace the MultiDiscrete slate action by a Discrete lead-candidate action."""
        gym.utils.RecordConstructorArgs.__init__(self)
        gym.Wrapper.__init__(self, env)
        _need_slates(env.action_space, env.observation_space)
        nvec = np.asarray(cast(spaces.MultiDiscrete, env.action_space).nvec)
        self.slate_size = len(nvec)
        self.num_candidates = int(nvec[0])
        self.action_space = spaces.Discrete(self.num_candidates)
        self._obs: dict[str, np.ndarray] | None = None

    def reset(
        self, *, seed: int | None = None, options: dict[str, Any] | None = None
    ) -> tuple[Any, dict[str, Any]]:
        """Reset and remember the observation the next action refers to."""
        obs, info = self.env.reset(seed=seed, options=options)
        self._obs = obs
        return obs, info

    def step(self, action: Any) -> tuple[Any, SupportsFloat, bool, bool, dict[str, Any]]:
        """Expand the Discrete action into a slate and step."""
        if self._obs is None:
            raise RuntimeError("step() called before reset(); call reset() first")
        feats = _candidate_matrix(self._obs, self.num_candidates)[None]
        slate = discrete_to_slate(feats, np.asarray([int(action)]), self.slate_size)[0]
        obs, reward, terminated, truncated, info = self.env.step(slate)
        self._obs = obs
        info = {**info, "slate_action": slate}
        return obs, reward, terminated, truncated, info


class DiscreteSlateVectorWrapper(VectorWrapper):
    """`Discrete(num_candidates)` actions on a native vector env (see `discrete_to_slate`).

    `step` takes (num_envs,) integers; the slates requested are in `info["slate_action"]`.
    """

    def __init__(self, env: VectorEnv) -> None:
        """Replace the batched slate action by a batched Discrete action."""
        super().__init__(env)
        _need_slates(env.single_action_space, env.single_observation_space)
        nvec = np.asarray(cast(spaces.MultiDiscrete, env.single_action_space).nvec)
        self.slate_size = len(nvec)
        self.num_candidates = int(nvec[0])
        self.single_action_space = spaces.Discrete(self.num_candidates)
        self.action_space = spaces.MultiDiscrete(np.full(env.num_envs, self.num_candidates))
        self._obs: dict[str, np.ndarray] | None = None

    def reset(
        self,
        *,
        seed: int | list[int | None] | None = None,
        options: dict[str, Any] | None = None,
    ) -> tuple[Any, dict[str, Any]]:
        """Reset and remember the observations the next actions refer to."""
        # gymnasium types VectorEnv.reset's seed as int | None; its vector envs take a list too
        obs, info = self.env.reset(seed=seed, options=options)  # type: ignore[arg-type]
        self._obs = obs
        return obs, info

    def step(self, actions: Any) -> tuple[Any, np.ndarray, np.ndarray, np.ndarray, dict[str, Any]]:
        """Expand the Discrete actions into slates and step."""
        if self._obs is None:
            raise RuntimeError("step() called before reset(); call reset() first")
        feats = _candidate_matrix(self._obs, self.num_candidates)
        slates = discrete_to_slate(feats, np.asarray(actions).reshape(-1), self.slate_size)
        obs, reward, terminated, truncated, info = self.env.step(slates)
        self._obs = obs
        info = {**info, "slate_action": slates}
        return obs, reward, terminated, truncated, info


def weighted_reward(
    responses: np.ndarray, reward_per_code: np.ndarray, step_reward: float = 0.0
) -> np.ndarray:
    """Reward of slates from their responses: (..., k) int -> (...,) float64.

    `reward_per_code[c]` per slot answered with behaviour code c (`EnvConfig.reward_per_code`),
    plus `step_reward` per slate answered; slots of -1 (no transition) earn nothing, and a slate
    of only -1 earns no step reward either.
    """
    r = np.asarray(responses)
    table = np.asarray(reward_per_code, dtype=np.float64)
    per_slot = np.where(r >= 0, table[np.clip(r, 0, len(table) - 1)], 0.0)
    answered = (r >= 0).any(axis=-1)
    return per_slot.sum(axis=-1) + step_reward * answered


def _reward_table(
    env: Any, rewards: Mapping[str, float] | None, named: dict[str, float]
) -> np.ndarray:
    """Reward per code of the env's behaviours under new weights (see `RewardWeights`)."""
    base = env.unwrapped
    behaviours = base.simulator.behaviours
    weights = {**behaviours.default_rewards(), **(rewards or {})}
    for key, value in named.items():
        if not key.endswith("_reward"):
            raise TypeError(f"unexpected argument {key!r}; pass rewards= or <behaviour>_reward=")
        weights[key[: -len("_reward")]] = value
    return behaviours.reward_per_code(weights)


class RewardWeights(gym.Wrapper, gym.utils.RecordConstructorArgs):
    """Recompute a single env's reward with other weights per behaviour and a per-step term.

    Weights are given as `rewards={"click": 1.0, "buy": 0.0}` or as `click_reward=1.0, ...`
    (adding up along the levels, like the env's own); the original reward stays in
    `info["env_reward"]`.
    """

    def __init__(
        self,
        env: gym.Env,
        rewards: Mapping[str, float] | None = None,
        step_reward: float = 0.0,
        **behaviour_rewards: float,
    ) -> None:
        """Resolve the weights against the env's behaviours (see `weighted_reward`)."""
        args: dict[str, Any] = {
            "rewards": rewards,
            "step_reward": step_reward,
            **behaviour_rewards,
        }
        gym.utils.RecordConstructorArgs.__init__(self, **args)
        gym.Wrapper.__init__(self, env)
        self.reward_per_code = _reward_table(env, rewards, behaviour_rewards)
        self.step_reward = float(step_reward)

    def step(self, action: Any) -> tuple[Any, float, bool, bool, dict[str, Any]]:
        """Step and replace the reward."""
        obs, reward, terminated, truncated, info = self.env.step(action)
        new = float(weighted_reward(info["responses"], self.reward_per_code, self.step_reward))
        return obs, new, terminated, truncated, {**info, "env_reward": reward}


class RewardWeightsVector(VectorWrapper):
    """`RewardWeights` for a native vector env (rows being reset earn 0)."""

    def __init__(
        self,
        env: VectorEnv,
        rewards: Mapping[str, float] | None = None,
        step_reward: float = 0.0,
        **behaviour_rewards: float,
    ) -> None:
        """Resolve the weights against the env's behaviours (see `weighted_reward`)."""
        super().__init__(env)
        self.reward_per_code = _reward_table(env, rewards, behaviour_rewards)
        self.step_reward = float(step_reward)

    def step(self, actions: Any) -> tuple[Any, np.ndarray, np.ndarray, np.ndarray, dict[str, Any]]:
        """Step and replace the rewards."""
        obs, reward, terminated, truncated, info = self.env.step(actions)
        new = weighted_reward(info["responses"], self.reward_per_code, self.step_reward)
        return obs, new.astype(np.float64), terminated, truncated, {**info, "env_reward": reward}


__all__ = [
    "DISCRETE_SLATE_RULE",
    "DiscreteSlateVectorWrapper",
    "DiscreteSlateWrapper",
    "RewardWeights",
    "RewardWeightsVector",
    "discrete_to_slate",
    "weighted_reward",
]


class EndedEpisodeGuard(gym.Wrapper, gym.utils.RecordConstructorArgs):
    """Raise on `step()` after an episode ended, whoever ended it (the env or a TimeLimit).

    `gym.make` puts its TimeLimit around the env, so a truncation there is invisible to the
    env, which would go on stepping a user whose session the caller was told is over (a
    directly constructed env given `max_episode_steps=` and the vector env refuse by
    themselves). Not registered as the ids' `additional_wrappers`: `gym.make_vec` refuses the
    vector entry point of a spec with additional wrappers. Use
    `EndedEpisodeGuard(gym.make(id, max_episode_steps=N))`.
    """

    def __init__(self, env: gym.Env) -> None:
        """Wrap env."""
        gym.utils.RecordConstructorArgs.__init__(self)
        gym.Wrapper.__init__(self, env)
        self._ended = True

    def reset(self, **kwargs: Any) -> Any:
        """Reset and allow steps again."""
        out = self.env.reset(**kwargs)
        self._ended = False
        return out

    def step(self, action: Any) -> Any:
        """Step, refusing once the episode has ended.

        Raises:
            RuntimeError: before the first reset, or after the episode ended.
        """
        if self._ended:
            raise RuntimeError(
                "step() called before reset() or after the episode ended (terminated or "
                "truncated, e.g. by gym.make's TimeLimit); call reset() first"
            )
        obs, reward, terminated, truncated, info = self.env.step(action)
        self._ended = bool(terminated or truncated)
        return obs, reward, terminated, truncated, info
