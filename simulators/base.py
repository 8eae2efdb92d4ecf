"""What every user simulator shares: response codes and the batched step protocol.

Both the ground-truth world and the GPT-2 user answer a whole batch of users at once. A step
takes the slates shown to some rows of the batch and uniform random numbers drawn by the env
(one per slot plus one for leaving), and samples responses slot by slot from the conditional
distribution p(r_j | state, slate, r_<j), then the leave flag from p(leave | ..., r_1..r_k).
Because the env supplies the uniforms, two simulators with the same probabilities produce the
same responses, and a user's trajectory never depends on who else shares the batch.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import IntEnum
from typing import Protocol

import numpy as np


class Response(IntEnum):
    """What a user does with one slot of a slate."""

    SKIP = 0
    CLICK = 1
    BUY = 2


RESPONSE_NAMES: tuple[str, ...] = tuple(r.name.lower() for r in Response)
NUM_RESPONSES = len(Response)


@dataclass
class StepOutcome:
    """Result of one batched step.

    Attributes:
        responses: (B, k) int64 Response codes.
        response_probs: (B, k, 3) float64 conditional probabilities the responses were drawn from.
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


class BatchedUserSimulator(Protocol):
    """A population of users answering slates in batches (rows are independent sessions)."""

    num_items: int
    slate_size_max: int | None

    def start_sessions(self, rows: np.ndarray, profiles: np.ndarray) -> None:
        """Begin fresh sessions for `rows` with the given profile indices into `self.profiles`."""

    def step(self, rows: np.ndarray, slates: np.ndarray, uniforms: np.ndarray) -> StepOutcome:
        """Show `slates` (len(rows), k) item ids to `rows`; uniforms is (len(rows), k + 1)."""
        ...
