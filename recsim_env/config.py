"""EnvConfig: the knobs shared by ParametricUserSim-v0 and LLMUserSim-v0."""

from __future__ import annotations

from dataclasses import asdict, dataclass

DUPLICATE_POLICIES = ("dedupe", "error")


@dataclass(frozen=True, kw_only=True)
class EnvConfig:
    """Slate env settings.

    Defaults: slate_size 5 out of num_candidates 20 candidates drawn uniformly from the catalog
    each step; reward = 1 per click (a purchase is also a click) + 3 per purchase; episodes are
    truncated after 50 steps by the TimeLimit wrapper `gym.make` adds.
    """

    slate_size: int = 5
    """Items shown per step."""
    num_candidates: int = 20
    """Candidates offered to the agent per step (the action indexes them)."""
    history_length: int = 10
    """Past steps shown in the observation."""
    click_reward: float = 1.0
    """Reward per click (clicks and purchases both count as clicks)."""
    buy_reward: float = 3.0
    """Extra reward per purchase."""
    max_episode_steps: int = 50
    """Step limit applied by `gym.make` (truncation)."""
    duplicate_policy: str = "dedupe"
    """What a slate that repeats a candidate does: 'dedupe' replaces each repeat by the
    lowest-index candidate not yet in the slate (so random and RL policies always act);
    'error' raises ValueError."""

    def __post_init__(self) -> None:
        """Validate ranges and choices."""
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

    def to_dict(self) -> dict:
        """JSON-serialisable form."""
        return asdict(self)
