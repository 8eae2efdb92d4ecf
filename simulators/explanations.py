"""Why would this user do that? Counterfactual attributions of a simulated user's responses.

For a user state (a profile and the slates shown so far with the responses given) and a slate,
`explain` gives the per-slot behaviour probabilities and, for every profile field and every
history step, how much they move when that field or step is taken away: the exact
counterfactual, computed by replaying the session without it and scoring the slate again. All
variants run as rows of one batch (one replay, one scoring call), through the simulator contract
alone (`start_sessions`, `step` with forced responses, `score_slates`), so the same explanation
runs on the GPT-2 user and on the ground-truth world: the world's own counterfactuals are the
yardstick of the simulator's (`evaluation.explain` reports their rank correlation).

An attribution is `p(slot engaged | everything) - p(slot engaged | without it)`: positive when
the field or step makes the user more likely to engage with the item, per slot and per
behaviour (`Explanation.effects`). The slate's items are questioned the same way: each channel
of their side information (`UserSimulator.item_side_channels`: attributes such as category and
price, the title) is taken away in turn and the slate scored again (`item:<channel>`); the item's
own learned embedding stays, so a large effect says the simulator reads the item through that
channel rather than by its identity.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from simulators.base import UserSimulator


@dataclass
class Explanation:
    """Probabilities of a slate and their counterfactual attributions.

    Attributes:
        behaviours: behaviour names (the last axis of every probability array).
        slate: (k,) item indices shown.
        probs: (k, R) probabilities of each slot given everything, earlier slots skipped
            (`UserSimulator.score_slates`).
        features: names of the attributed inputs: `profile:<field>`, `history:<step>` and
            `item:<channel>`.
        masked_probs: (len(features), k, R) the same probabilities without each input.
    """

    behaviours: tuple[str, ...]
    slate: np.ndarray
    probs: np.ndarray
    features: list[str] = field(default_factory=list)
    masked_probs: np.ndarray = field(default_factory=lambda: np.zeros((0, 0, 0)))

    @property
    def effects(self) -> np.ndarray:
        """(len(features), k, R) probability changes: with the input minus without it."""
        return self.probs[None] - self.masked_probs

    @property
    def engagement_effects(self) -> np.ndarray:
        """(len(features), k) change of p(any engagement) per input and slot."""
        engaged = 1.0 - self.probs[:, 0]
        return engaged[None] - (1.0 - self.masked_probs[..., 0])

    def to_dict(self) -> dict:
        """JSON form."""
        return {
            "behaviours": list(self.behaviours),
            "slate": self.slate.tolist(),
            "probs": self.probs.tolist(),
            "features": self.features,
            "engagement_effects": self.engagement_effects.tolist(),
            "effects": self.effects.tolist(),
        }


def profile_field_masks(sim: UserSimulator, profile: np.ndarray) -> list[tuple[str, np.ndarray]]:
    """(`profile:<field>`, the profile without that field's tokens) for every field present."""
    enc = sim.profile_encoder
    profile = np.asarray(profile, dtype=np.int64)
    present = [int(t) for t in profile if t >= 0]
    by_field: dict[str, list[int]] = {}
    for tok in present:
        by_field.setdefault(enc.vocab[tok].split("=", 1)[0], []).append(tok)
    out = []
    for name, toks in by_field.items():
        kept = [t for t in present if t not in toks]
        masked = np.full(len(profile), -1, dtype=np.int64)
        masked[: len(kept)] = kept
        out.append((f"profile:{name}", masked))
    return out


def explain(
    sim: UserSimulator,
    profile: np.ndarray,
    history: list[tuple[np.ndarray, np.ndarray]],
    slate: np.ndarray,
    row_offset: int = 0,
) -> Explanation:
    """Counterfactual attributions of a slate's probabilities (see the module docstring).

    Args:
        sim: any simulator; rows row_offset.. are used (and their sessions replaced).
        profile: (slots,) profile token indices (-1 padded), in the simulator's vocabulary.
        history: the session so far: (slate item indices (k_t,), responses (k_t,)) per step.
        slate: (k,) item indices of the slate to explain.
        row_offset: first simulator row to use.

    Returns:
        The Explanation; `features` are the profile fields present, then `history:0..T-1`,
        then `item:<channel>` for the simulator's `item_side_channels` (the slate's items
        without that part of their side information, e.g. their title; the world has none).
    """
    profile = np.asarray(profile, dtype=np.int64)
    slate = np.asarray(slate, dtype=np.int64)
    variants = [("", profile, -1)]
    variants += [(name, masked, -1) for name, masked in profile_field_masks(sim, profile)]
    variants += [(f"history:{t}", profile, t) for t in range(len(history))]
    n = len(variants)
    rows = row_offset + np.arange(n)
    sim.ensure_capacity(row_offset + n)
    sim.start_sessions(rows, np.stack([v[1] for v in variants]))
    skip = np.array([v[2] for v in variants])
    for t, (items, responses) in enumerate(history):
        live = rows[skip != t]
        k = len(items)
        sim.step(
            live,
            np.tile(np.asarray(items, dtype=np.int64), (len(live), 1)),
            forced_responses=np.tile(np.asarray(responses, dtype=np.int64), (len(live), 1)),
            forced_leave=np.zeros(len(live), dtype=bool),
            uniforms=np.zeros((len(live), k + 1)),
        )
    probs = sim.score_slates(rows, np.tile(slate, (n, 1)))
    features = [v[0] for v in variants[1:]]
    masked = [probs[1:]]
    for channel in sim.item_side_channels:  # the full-context row, the slate's items masked
        with sim.without_item_side(slate, channel):
            masked.append(sim.score_slates(rows[:1], slate[None]))
        features.append(f"item:{channel}")
    return Explanation(
        behaviours=sim.behaviours.names,
        slate=slate,
        probs=probs[0],
        features=features,
        masked_probs=np.concatenate(masked),
    )
