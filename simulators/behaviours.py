"""The behaviour vocabulary: what a user can do with one slate item, defined once, as data.

A `BehaviourSet` is an ordered list of engagement levels, shallowest first. Code 0 is no
engagement (``skip``); code 1 is the first engagement (``click``); every deeper level implies
the ones before it (a purchase is also a click, an order also a cart). The default set is
``skip, click, buy``; a shop log might use ``skip, click, cart, buy`` and a short-video log
``skip, click, like, follow``.

Everything that depends on the behaviours derives from this one definition: the simulator's
output head and response tokens (`simulators.tokenization`), the envs' spaces and rewards, the
agents' slot rewards and the fidelity report's per-behaviour metrics. A checkpoint and a log set
store the names, so a simulator trained on carts answers with carts.

Rewards are given per behaviour and add up along the levels: with the default
``{"click": 1.0, "buy": 3.0}`` a click earns 1 and a purchase 1 + 3 = 4.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np

BEHAVIOUR_FORMAT_VERSION = 1
"""Version of the stored form (`BehaviourSet.to_dict`)."""

_NAME = re.compile(r"^[a-z][a-z0-9_]{0,31}$")

SKIP, CLICK = 0, 1
"""Codes every behaviour set shares: no engagement, and the first engagement (a "click")."""
DEEPER = 2
"""Codes from here on are engagement past a click (a purchase in the default set)."""


@dataclass(frozen=True)
class BehaviourSet:
    """Ordered engagement levels a user can give one slate item (see the module docstring).

    Attributes:
        names: level names, shallowest first; names[0] is no engagement.
    """

    names: tuple[str, ...] = ("skip", "click", "buy")

    def __post_init__(self) -> None:
        """Check the names: at least two, unique, short lower-case identifiers."""
        names = tuple(self.names)
        object.__setattr__(self, "names", names)
        if len(names) < 2:
            raise ValueError(
                f"a behaviour set needs at least two levels (no engagement and one engagement), "
                f"got {list(names)}"
            )
        for name in names:
            if not isinstance(name, str) or not _NAME.match(name):
                raise ValueError(
                    f"behaviour name {name!r} is not allowed: use lower-case letters, digits and "
                    "'_', starting with a letter, at most 32 characters"
                )
        if len(set(names)) != len(names):
            raise ValueError(f"behaviour names repeat: {list(names)}")

    @property
    def size(self) -> int:
        """Number of levels (the width of every per-slot probability vector)."""
        return len(self.names)

    @property
    def deepest(self) -> int:
        """Code of the deepest level."""
        return len(self.names) - 1

    def code(self, name: str) -> int:
        """The code of a behaviour name.

        Raises:
            ValueError: naming the allowed behaviours.
        """
        try:
            return self.names.index(name)
        except ValueError:
            raise ValueError(
                f"unknown behaviour {name!r}; this behaviour set has {list(self.names)}"
            ) from None

    def reward_per_code(self, rewards: Mapping[str, float]) -> np.ndarray:
        """Reward of a slot answered with each code: (size,) float64, cumulative over levels.

        Args:
            rewards: reward per behaviour name (names[0], no engagement, earns nothing and
                may not be given); levels not named earn 0 of their own.

        Raises:
            ValueError: a name outside the set, the no-engagement level, or a non-finite value.
        """
        per_level = np.zeros(self.size)
        for name, value in rewards.items():
            code = self.code(name)
            if code == SKIP:
                raise ValueError(f"{name!r} is no engagement and earns no reward")
            v = float(value)
            if not np.isfinite(v):
                raise ValueError(f"reward of {name!r} must be a finite number, got {value!r}")
            per_level[code] = v
        return np.cumsum(per_level)

    def default_rewards(self) -> dict[str, float]:
        """The default rewards restricted to this set's names (click 1, buy 3)."""
        return {k: v for k, v in DEFAULT_REWARDS.items() if k in self.names}

    def to_dict(self) -> dict[str, Any]:
        """Stored form (checkpoints' vocab.json, logs' meta.json)."""
        return {"names": list(self.names), "version": BEHAVIOUR_FORMAT_VERSION}

    @classmethod
    def from_dict(cls, d: Mapping[str, Any] | list[str] | None) -> BehaviourSet:
        """Inverse of `to_dict` (a bare list of names is accepted; None gives the default)."""
        if d is None:
            return DEFAULT_BEHAVIOURS
        if isinstance(d, list):
            return cls(tuple(d))
        version = d.get("version", BEHAVIOUR_FORMAT_VERSION)
        if version != BEHAVIOUR_FORMAT_VERSION:
            raise ValueError(
                f"behaviour set version {version!r} is not supported (this reader takes "
                f"{BEHAVIOUR_FORMAT_VERSION})"
            )
        return cls(tuple(d["names"]))


DEFAULT_BEHAVIOURS = BehaviourSet()
"""skip, click, buy."""

DEFAULT_REWARDS: dict[str, float] = {"click": 1.0, "buy": 3.0}
"""Reward per behaviour of the envs by default (a purchase earns 1 + 3)."""


def engaged(responses: np.ndarray) -> np.ndarray:
    """True where a response is any engagement (a click or deeper)."""
    return np.asarray(responses) >= CLICK
