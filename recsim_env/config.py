"""EnvConfig: the knobs shared by ParametricUserSim-v0 and LLMUserSim-v0."""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np

from simulators.behaviours import BehaviourSet

DUPLICATE_POLICIES = ("dedupe", "error")


@dataclass(frozen=True, kw_only=True)
class EnvConfig:
    """Slate env settings.

    Defaults: slate_size 5 out of num_candidates 20 candidates drawn uniformly from the catalog
    each step; reward = 1 per click (a purchase is also a click) + 3 per purchase; episodes are
    truncated after 50 steps.

    `gym.make` also takes a reward per behaviour as `<behaviour>_reward=` (`click_reward=`,
    `buy_reward=`, `cart_reward=` ...), which fills `rewards`.
    """

    slate_size: int = 5
    """Items shown per step."""
    num_candidates: int = 20
    """Candidates offered to the agent per step (the action indexes them)."""
    history_length: int = 10
    """Past steps shown in the observation."""
    rewards: Mapping[str, float] | None = None
    """Reward per behaviour, adding up along the levels (a purchase earns the click's and the
    buy's), on top of the defaults click 1 and buy 3 (as far as the simulator has those
    behaviours, `simulators.behaviours`): `{"buy": 5.0}` keeps the click's 1."""
    max_episode_steps: int = 50
    """Step limit applied by `gym.make` (truncation)."""
    duplicate_policy: str = "dedupe"
    """What a slate that repeats a candidate does: 'dedupe' replaces each repeat by the
    lowest-index candidate not yet in the slate (so random and RL policies always act);
    'error' raises ValueError."""

    def __post_init__(self) -> None:
        """Validate types, ranges and choices (each error names the field)."""
        for name in ("slate_size", "num_candidates", "history_length", "max_episode_steps"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
                raise ValueError(
                    f"{name} must be an integer, got {value!r} ({type(value).__name__})"
                )
            object.__setattr__(self, name, int(value))
        if self.slate_size < 1:
            raise ValueError(f"slate_size must be >= 1, got {self.slate_size}")
        if self.num_candidates < self.slate_size:
            raise ValueError(
                f"num_candidates ({self.num_candidates}) must be >= slate_size ({self.slate_size})"
            )
        if self.history_length < 1:
            raise ValueError(f"history_length must be >= 1, got {self.history_length}")
        if self.max_episode_steps < 1:
            raise ValueError(f"max_episode_steps must be >= 1, got {self.max_episode_steps}")
        if self.duplicate_policy not in DUPLICATE_POLICIES:
            raise ValueError(
                f"duplicate_policy must be one of {DUPLICATE_POLICIES}, got {self.duplicate_policy!r}"
            )

        if self.rewards is not None:
            if not isinstance(self.rewards, Mapping):
                raise ValueError(
                    f"rewards must be a mapping of behaviour to reward, got {self.rewards!r}"
                )
            for name, value in self.rewards.items():
                if isinstance(value, bool) or not isinstance(value, (int, float, np.number)):
                    raise ValueError(f"reward of {name!r} must be a number, got {value!r}")
                if not math.isfinite(float(value)):
                    raise ValueError(f"reward of {name!r} must be finite, got {value!r}")
            object.__setattr__(self, "rewards", {str(k): float(v) for k, v in self.rewards.items()})

    def reward_per_code(self, behaviours: BehaviourSet) -> np.ndarray:
        """Reward of a slot answered with each behaviour code: (R,) float64.

        Raises:
            ValueError: `rewards` names a behaviour the simulator does not have.
        """
        return behaviours.reward_per_code({**behaviours.default_rewards(), **(self.rewards or {})})

    def to_dict(self) -> dict[str, Any]:
        """JSON-serialisable form."""
        return asdict(self)

    @classmethod
    def from_kwargs(cls, kwargs: Mapping[str, Any]) -> tuple[EnvConfig, dict[str, Any]]:
        """Split plain keyword arguments into an EnvConfig and the rest.

        `<behaviour>_reward=` keywords (not EnvConfig fields) become entries of `rewards`.
        """
        from dataclasses import fields

        names = {f.name for f in fields(cls)}
        own = {k: v for k, v in kwargs.items() if k in names}
        per_behaviour = {
            k[: -len("_reward")]: v
            for k, v in kwargs.items()
            if k not in names and k.endswith("_reward") and len(k) > len("_reward")
        }
        if per_behaviour:
            own["rewards"] = {**(own.get("rewards") or {}), **per_behaviour}
        rest = {
            k: v
            for k, v in kwargs.items()
            if k not in names and not (k.endswith("_reward") and len(k) > len("_reward"))
        }
        return cls(**own), rest
