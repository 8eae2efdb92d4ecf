"""How long a slate may be: one rule, applied up front by the importers, train-sim and validate.

A step of a k-item slate takes 1 + 3k tokens (`simulators.tokenization.step_block_length`: the
control token, the k slate items, and each item re-stated before its response), so its cost per
slate item is constant: 3 tokens. What grows with the slate is the span one token attends over,
and the rule sizes that span from the data instead of a fixed constant:

- **A slate has at most `MAX_SLATE_ITEMS` (300) items.** The importers cut longer slates to
  their first 300 items (one warning naming the first row); `train-sim` and `validate` refuse
  logs that hold a longer one, naming file, row and column, before any work starts.
- **`train-sim` sizes the context from the logs** (`context_for_slates`): the default 512
  tokens, or more when the longest slate needs it, so that the longest step plus one earlier
  step fit (`prefix + 2 x (1 + 3 k_max)`, rounded up to 64): a 300-item slate gives 1,856 tokens
  with the 17-token profile prefix of a 16-slot profile.
- **A full-attention simulator takes slates up to `(context - prefix - 1) // 3` items**
  (absolute positions end at its context; a longer slate is an error naming the row). A
  recency-attention simulator has no absolute positions: it takes every slate up to the cap, its
  KV ring and its validation windows are sized to the slates it meets.

Cost per slate item, so, is 3 tokens; each token attends to at most the context (full
attention: about 6 x k_max tokens at the auto size) or to the profile plus N + 1 step blocks
(recency attention over N steps); the MLPs cost the same per token at any slate length.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING

import numpy as np

from simulators.log_validation import LogFormatError, located
from simulators.tokenization import step_block_length

if TYPE_CHECKING:
    from simulators.lm.model import SimulatorConfig
    from simulators.logs import InteractionLogs

MAX_SLATE_ITEMS = 300
"""Longest slate any part of the pipeline takes (importers cut longer ones, with a warning)."""

DEFAULT_CONTEXT = 512
"""Context (tokens) of a simulator whose longest slate fits it with room to spare."""

_CONTEXT_GRAIN = 64


def slate_lengths(logs: InteractionLogs) -> np.ndarray:
    """(steps,) int64 number of items of every slate, in the steps table's row order."""
    return logs.steps["items"].map(len).to_numpy(dtype=np.int64)


def context_for_slates(max_items: int, prefix: int) -> int:
    """The context train-sim gives a new simulator whose longest slate has `max_items` items.

    The default (512), or the smallest multiple of 64 that holds the profile prefix and two
    steps of the longest slate (the step and one earlier step as context).
    """
    need = prefix + 2 * step_block_length(max(int(max_items), 1))
    return max(DEFAULT_CONTEXT, _CONTEXT_GRAIN * math.ceil(need / _CONTEXT_GRAIN))


def max_slate_items(sim_config: SimulatorConfig, prefix: int) -> int:
    """Longest slate a simulator with these settings takes (see the module docstring)."""
    if sim_config.attention_window_steps:
        return MAX_SLATE_ITEMS
    return min(MAX_SLATE_ITEMS, (sim_config.context_length - prefix - 1) // 3)


def window_length(sim_config: SimulatorConfig, prefix: int, max_items: int) -> int:
    """Tokens of the rows sessions are windowed into (training, teacher forcing).

    The context; with recency attention (no absolute positions) at least what
    `context_for_slates` gives the longest slate, so a longer slate than the simulator was
    trained on still fits a window.
    """
    if sim_config.attention_window_steps:
        return max(sim_config.context_length, context_for_slates(max_items, prefix))
    return sim_config.context_length


def check_slates(
    logs: InteractionLogs, limit: int = MAX_SLATE_ITEMS, source: str = "<memory>", why: str = ""
) -> int:
    """Refuse logs with a slate longer than `limit` items; returns the longest slate's length.

    Args:
        logs: the log set.
        limit: most items a slate may have (at most `MAX_SLATE_ITEMS`).
        source: the log directory (errors name `{source}/steps.parquet`).
        why: what sets the limit, for the message (default: the pipeline's cap).

    Raises:
        LogFormatError: naming the file, the first too-long slate's row (0-based, as in
            `simulators.logs`) and the column `items`.
    """
    lengths = slate_lengths(logs)
    if not len(lengths):
        return 0
    limit = min(int(limit), MAX_SLATE_ITEMS)
    over = np.nonzero(lengths > limit)[0]
    if len(over):
        r = int(over[0])
        k = int(lengths[r])
        reason = why or (
            f"the pipeline takes at most {MAX_SLATE_ITEMS} items per slate (the importers cut "
            "longer slates to their first items)"
        )
        raise located(
            f"{source}/steps.parquet",
            r,
            "items",
            f"a slate of {k} items ({step_block_length(k)} tokens per step) is longer than "
            f"{limit} items: {reason}; {len(over)} slate(s) are too long",
        )
    return int(lengths.max())


__all__ = [
    "DEFAULT_CONTEXT",
    "MAX_SLATE_ITEMS",
    "LogFormatError",
    "check_slates",
    "context_for_slates",
    "max_slate_items",
    "slate_lengths",
    "window_length",
]
