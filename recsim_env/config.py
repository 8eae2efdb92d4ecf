"""EnvConfig: the knobs shared by ParametricUserSim-v0 and LLMUserSim-v0."""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np

from simulators.behaviours import BehaviourSet

DUPLICATE_POLICIES = ("dedupe", "error")
ACTION_MODES = ("slate", "scores", "weights")
"""`slate`: MultiDiscrete candidate indices (repeats deduped); `scores`: a Box of one score per
candidate; `weights`: a Box of one weight per item feature, a candidate's score being its
features . weights. In the two score modes the env shows the top slate_size (no repeats by
construction)."""
OBSERVATIONS = ("context", "full")
"""`context`: the user (profile, clicked-item feature mean, session features), plus the
candidates' features where the action picks candidates; `full`: also the candidates' features
and the responses to the last slates, always."""
SLATE_AGENT_KWARGS: dict[str, object] = {
    "action_mode": "slate",
    "observation": "full",
    "include_item_ids": True,
}
"""What the baseline agents and SB3's `SlatePolicy` need of an env: slates as actions and the
whole observation with catalog ids (`recsim_env.episodes.make_episode_env` applies it)."""
DEFAULT_MAX_EPISODE_STEPS = 50
"""The registered step limit of both ids (gym.make's TimeLimit, gym.make_vec's truncation)."""
SESSION_STEPS_SCALE = 50.0
"""`session_features[0]` is min(steps / SESSION_STEPS_SCALE, 1): a fixed scale, so an
observation never depends on the step limit (the same user looks the same whatever
`max_episode_steps` a build was given)."""


@dataclass(frozen=True, kw_only=True)
class EnvConfig:
    """Slate env settings.

    Defaults: slate_size 5 out of num_candidates 20 candidates drawn uniformly from the catalog
    each step; reward = 1 per click (a purchase is also a click) + 3 per purchase; episodes are
    truncated after 50 steps; the action is a weight per item feature (the env shows the best
    scoring candidates) and the observation is the user's context, without catalog ids.
    `SLATE_AGENT_KWARGS` gives the slate action and full observation the baseline agents read.

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
    max_episode_steps: int = DEFAULT_MAX_EPISODE_STEPS
    """Step limit: episodes are truncated after this many steps, and nothing else depends on it
    (observations do not). `gym.make(id, max_episode_steps=N)` applies it with its TimeLimit
    wrapper, `gym.make_vec(id, n, vectorization_mode="vector_entry_point",
    max_episode_steps=N)` passes it here (both default to the registered 50)."""
    duplicate_policy: str = "dedupe"
    """What a slate that repeats a candidate does: 'dedupe' replaces each repeat by the
    lowest-index candidate not yet in the slate (so random and RL policies always act);
    'error' raises ValueError. (Only the `slate` action mode can repeat a candidate.)"""
    action_mode: str = "weights"
    """'weights' (default): `Box(-5, 5, (F,))`, one weight per item feature (category one-hot,
    log price, and popularity with `item_popularity`); each candidate's score is its
    features . weights, and the env shows the slate_size best, best first (ties: the lower
    candidate index). 'scores': `Box(-5, 5, (num_candidates,))`, one score per candidate, the
    best shown the same way.
    'slate': `MultiDiscrete([num_candidates] * slate_size)`, candidate indices in display
    order (repeats handled by duplicate_policy). The two score modes never repeat a candidate
    and any continuous-action algorithm (PPO, SAC, TD3) acts on them unmodified; 'weights' is
    the hyper-action of slate RL (HAC, KuaiSim): what a user wants, in the items' feature
    space, the same action whichever candidates come up. Every mode reports the slate shown
    in `info["slate"]`."""
    observation: str = "context"
    """'context' (default): `profile`, `clicked_features_mean`, `session_features`, and
    `candidate_features` in the 'scores' and 'slate' modes (they pick among candidates).
    'full': all of these and `history_responses`, in every mode. A generic network learns
    much faster from the context alone (SB3's default PPO, 100k steps: 2.9x random's return
    with the weights action on the context, 1.6x with the candidates' features and the
    history as well, `examples/generic_rl_benchmark.py`)."""
    include_item_ids: bool = False
    """Add the catalog ids `candidate_ids` (num_candidates,) and `history_items` (-1 padded) to
    the observation, for agents that embed items (the baselines, `agents.sb3.SlatePolicy`).
    Off by default: as numbers they mean nothing to a generic network, which would read them
    as magnitudes."""

    item_popularity: bool = False
    """Append one item feature, the item's popularity: standardised log(1 + clicks) that a
    uniformly random slate policy collects on `popularity_users` fresh users (seeded from
    `recsim_env.sessions.POPULARITY_SEED`, apart from the users benchmarks evaluate on), as a
    recommender would count them in its own logs. The feature count F, and so the `weights`
    action, grows by one; both envs compute it the same way, so their spaces stay identical.
    Off by default. Cost: one random-policy run when the env is built (ParametricUserSim-v0,
    1,000 users: about 1 s; the embedded GPT-2 user on one CPU thread: about 15 s)."""
    popularity_users: int = 1000
    """Users of the random-policy run that `item_popularity` counts clicks on."""

    def __post_init__(self) -> None:
        """Validate types, ranges and choices (each error names the field)."""
        for name in (
            "slate_size",
            "num_candidates",
            "history_length",
            "max_episode_steps",
            "popularity_users",
        ):
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
        if self.action_mode not in ACTION_MODES:
            raise ValueError(f"action_mode must be one of {ACTION_MODES}, got {self.action_mode!r}")
        if self.observation not in OBSERVATIONS:
            raise ValueError(f"observation must be one of {OBSERVATIONS}, got {self.observation!r}")
        for name in ("include_item_ids", "item_popularity"):
            value = getattr(self, name)
            if not isinstance(value, (bool, np.bool_)):
                raise ValueError(f"{name} must be a bool, got {value!r}")
            object.__setattr__(self, name, bool(value))
        if self.popularity_users < 1:
            raise ValueError(f"popularity_users must be >= 1, got {self.popularity_users}")
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

    @property
    def observes_candidates(self) -> bool:
        """Whether the observation has `candidate_features` (see `observation`)."""
        return self.observation == "full" or self.action_mode != "weights"

    @property
    def observes_history(self) -> bool:
        """Whether the observation has `history_responses` (see `observation`)."""
        return self.observation == "full"

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
    def field_names(cls) -> tuple[str, ...]:
        """The EnvConfig fields (what `gym.make` takes besides the simulator's own arguments)."""
        from dataclasses import fields

        return tuple(f.name for f in fields(cls))

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
