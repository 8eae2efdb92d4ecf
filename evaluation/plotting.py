"""What every figure shares: a colour-blind-safe palette, readable names, and PNG output.

Plots are drawn with matplotlib's object API on an Agg canvas (no display, no global state) and
written atomically. Colours follow Okabe & Ito (2008), distinguishable under the common forms
of colour blindness; agent and metric names are spelled out as a paper would.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

OKABE_ITO = (
    "#0072B2",  # blue
    "#E69F00",  # orange
    "#009E73",  # bluish green
    "#D55E00",  # vermillion
    "#CC79A7",  # reddish purple
    "#56B4E9",  # sky blue
    "#000000",  # black
    "#F0E442",  # yellow (last: faint on white)
)

AGENT_LABELS = {
    "random": "Random",
    "popular": "Popularity",
    "greedy": "Greedy (model-based)",
    "linucb": "LinUCB",
    "thompson": "Thompson sampling",
    "slateq": "SlateQ",
    "text_sim": "Text similarity",
    "ppo": "PPO",
    "ppo_sim": "PPO trained on the simulator",
    "ppo_true": "PPO trained on the world",
}


def agent_label(name: str) -> str:
    """A readable name of an agent key (`ppo:run1` -> `PPO (run1)`)."""
    if name in AGENT_LABELS:
        return AGENT_LABELS[name]
    kind, sep, rest = name.partition(":")
    if sep and kind in AGENT_LABELS:
        return f"{AGENT_LABELS[kind]} ({rest})"
    return name.replace("_", " ")


def colours(n: int) -> Iterator[str]:
    """N colours of the palette (cycling)."""
    for i in range(n):
        yield OKABE_ITO[i % len(OKABE_ITO)]


def new_figure(width: float, height: float) -> Any:
    """A matplotlib Figure on an Agg canvas (constrained layout)."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(width, height), layout="constrained")
    FigureCanvasAgg(fig)
    return fig


def save_png(fig: Any, path: str | Path, dpi: int = 120) -> None:
    """Write the figure as a PNG (atomically)."""
    from simulators.atomic import atomic_write

    atomic_write(path, lambda tmp: fig.savefig(tmp, format="png", dpi=dpi))
