"""The simulator contract: what envs, agents and evaluation may use of a user simulator.

Every user simulator (the ground-truth world, the GPT-2 user, or one of your own) answers a whole
batch of users at once. A step takes the slates shown to some rows of the batch and uniform
random numbers drawn by the env (one per slot plus one for leaving), and samples responses slot
by slot from the conditional distribution p(r_j | state, slate, r_<j), then the leave flag from
p(leave | ..., r_1..r_k). Because the env supplies the uniforms, two simulators with the same
probabilities produce the same responses, and a user's trajectory never depends on who else
shares the batch.

`UserSimulator` lists everything the rest of the project uses; envs, agents and evaluation are
typed against it and never probe for optional methods. `tests/test_protocol.py` runs a tiny
simulator written against this protocol alone in both envs.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass
from enum import IntEnum
from typing import TYPE_CHECKING, Protocol

import numpy as np

from simulators.behaviours import BehaviourSet

if TYPE_CHECKING:
    import pandas as pd

    from simulators.catalog import ProfileEncoder


class Response(IntEnum):
    """Codes of the default behaviour set (skip, click, buy); see `simulators.behaviours`."""

    SKIP = 0
    CLICK = 1
    BUY = 2


@dataclass
class StepOutcome:
    """Result of one batched step.

    Attributes:
        responses: (B, k) int64 behaviour codes.
        response_probs: (B, k, R) float64 conditional probabilities the responses were drawn
            from (R: the simulator's behaviour count).
        leave: (B,) bool, True when the user ends the session after this slate.
        leave_prob: (B,) float64 probability of leaving.
    """

    responses: np.ndarray
    response_probs: np.ndarray
    leave: np.ndarray
    leave_prob: np.ndarray


def sample_categorical(probs: np.ndarray, uniforms: np.ndarray) -> np.ndarray:
    """Inverse-CDF sampling: probs (B, n) and uniforms (B,) -> (B,) int64 indices."""
    cdf = np.cumsum(probs, axis=-1)
    idx = (uniforms[:, None] >= cdf[:, :-1]).sum(axis=-1)
    return idx.astype(np.int64)


class UserSimulator(Protocol):
    """A population of users answering slates in batches (rows are independent sessions).

    Attributes:
        behaviours: the response vocabulary; every probability vector has `behaviours.size`
            entries.
        num_items: catalog size; items are indices 0..num_items-1 in `items_table()` order.
        item_features: (num_items, F) float32 item features (the envs' candidate features).
        profile_encoder: maps users-table rows to profile token indices (and multi-hot).
        population: (P, slots) int64 profile token indices the envs draw users from.
        capacity: rows currently allocated (`ensure_capacity` grows it).
        item_side_channels: the parts of an item's side information the simulator reads
            besides the item itself (e.g. attributes, title) that `without_item_side` can take
            away; () when items are not read through side information (the world).
    """

    behaviours: BehaviourSet
    num_items: int
    item_features: np.ndarray
    profile_encoder: ProfileEncoder
    population: np.ndarray
    capacity: int

    @property
    def item_side_channels(self) -> tuple[str, ...]:
        """See the class docstring."""
        ...

    def items_table(self) -> pd.DataFrame:
        """The catalog: item_id, title, category, price (rows in item-index order)."""
        ...

    def ensure_capacity(self, capacity: int) -> None:
        """Make rows 0..capacity-1 usable (may drop running sessions)."""
        ...

    def start_sessions(self, rows: np.ndarray, profiles: np.ndarray) -> None:
        """Begin fresh sessions for `rows` with profiles (len(rows), slots) of token indices."""
        ...

    def step(
        self,
        rows: np.ndarray,
        slates: np.ndarray,
        uniforms: np.ndarray | None = None,
        forced_responses: np.ndarray | None = None,
        forced_leave: np.ndarray | None = None,
    ) -> StepOutcome:
        """Show slates (len(rows), k) of item indices to `rows` and advance them.

        Args:
            rows: (B,) distinct batch rows.
            slates: (B, k) item indices.
            uniforms: (B, k + 1) uniforms in [0, 1) for sampling; may be None only when both
                responses and leave are forced.
            forced_responses: (B, k) codes to replay instead of sampling (teacher forcing); the
                returned probabilities are then those of the given responses.
            forced_leave: (B,) bool leave flags to replay.
        """
        ...

    def score_slates(self, rows: np.ndarray, slates: np.ndarray) -> np.ndarray:
        """Probabilities of a hypothetical slate at the rows' current state; nothing advances.

        Args:
            rows: (n,) batch rows; a row may repeat (several hypothetical slates per user).
            slates: (n, k) item indices.

        Returns:
            (n, k, R) float64: p(r_j | state, slate, earlier slots skipped). For a one-item
            slate this is the response distribution of that item shown alone.
        """
        ...

    def without_item_side(
        self, items: np.ndarray, channel: str
    ) -> contextlib.AbstractContextManager[None]:
        """Within the block, `score_slates` sees `items` without that side-information channel.

        The item counterfactual of `simulators.explanations`; ValueError for a channel not in
        `item_side_channels`.
        """
        ...

    def close(self) -> None:
        """Release memory (device memory too)."""
        ...
