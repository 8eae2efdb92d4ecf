"""The settings of a network train-sim builds, sized from the logs (`simulators.slate_fit`).

The context holds the logs' longest slate and one earlier step unless it is given, a fresh
network gets a slot embedding for every slot of that slate and reads titles through the text
encoder asked for, and the slate rule is applied with the final context: a slate the simulator
cannot take is refused, naming file, row and column, before anything is trained.
"""

from __future__ import annotations

import logging
from dataclasses import replace
from typing import TYPE_CHECKING, Any

from simulators.lm.model import SimulatorConfig
from simulators.slate_fit import (
    DEFAULT_CONTEXT,
    MAX_SLATE_ITEMS,
    check_slates,
    context_for_slates,
    max_slate_items,
)
from simulators.text_encoder import resolve_text_encoder

if TYPE_CHECKING:
    from simulators.logs import InteractionLogs

log = logging.getLogger(__name__)


def sized_config(
    sim_config: SimulatorConfig | None,
    context_length: int | None,
    text_encoder: str,
    logs: InteractionLogs,
    longest: int,
    prefix: int,
    start: Any = None,
) -> SimulatorConfig:
    """The simulator settings train-sim trains with (see the module docstring).

    Args:
        sim_config: settings given by the caller (None: the defaults), or the checkpoint's.
        context_length: an explicit context (then a given `sim_config`'s own is kept), or None
            to size it from the logs.
        text_encoder: `auto`, `hashed` or `minilm` (`simulators.text_encoder`), for a fresh
            network.
        logs: the training logs.
        longest: the longest slate's items.
        prefix: tokens of BOS and the profile.
        start: the checkpoint continued (`init_sim`), or None. With full attention it keeps its
            context (its absolute positions end there); with recency attention it may read
            longer rows (no absolute positions).

    Raises:
        LogFormatError: a slate longer than the final context takes.
    """
    fixed = start is not None
    if sim_config is None:
        sim_config = SimulatorConfig(context_length=context_length or DEFAULT_CONTEXT)
    if context_length is None and not (fixed and not sim_config.attention_window_steps):
        auto = context_for_slates(longest, prefix)
        context = max(auto, sim_config.context_length) if fixed else auto
        slots = sim_config.max_slots
        if not fixed:
            slots = max(slots, min(longest, MAX_SLATE_ITEMS))
        sim_config = replace(sim_config, context_length=context, max_slots=slots)
    if not fixed:
        titles = logs.items["title"].fillna("") if "title" in logs.items else None
        titled = titles is not None and bool((titles != "").any())
        if text_encoder == "minilm" and not titled:
            log.warning("--text-encoder minilm: no item has a title; using hashed words")
        encoder = resolve_text_encoder(text_encoder) if titled else "hashed"
        sim_config = replace(sim_config, text_encoder=encoder)
    else:
        start.model.sim_config = sim_config
    limit = max_slate_items(sim_config, prefix)
    check_slates(
        logs,
        limit,
        logs.source,
        f"the simulator's context of {sim_config.context_length} tokens holds at most {limit} "
        f"items per slate after the {prefix}-token profile (leave --context-length out to size "
        "it from the logs)",
    )
    return sim_config
