"""Where a training run stands, as one line: step, loss, validation loss, elapsed time, ETA.

`SimulatorTrainer` feeds a `Progress` every optimiser step and shows its line in the tqdm bar on
a terminal, or logs it (`simulators.training.trainer`'s logger, INFO) every `PROGRESS_SECONDS`
and after every validation when there is no terminal to draw a bar on.
"""

from __future__ import annotations

import time
from typing import Any

PROGRESS_SECONDS = 30.0
"""Seconds between progress lines in the log."""


class Progress:
    """Smoothed loss and step rate of one `train` call (the ETA counts this call's steps).

    Args:
        total: the step budget.
        max_minutes: the time budget (None: none).
    """

    def __init__(self, total: int, max_minutes: float | None) -> None:
        """Start with no step seen."""
        self.total, self.max_minutes = total, max_minutes
        self.loss: float | None = None
        self.last_line = time.time()
        self._start: tuple[int, float] | None = None

    def step(self, step: int, loss: float) -> None:
        """Record an optimiser step's loss (an exponential average over about 20 steps)."""
        self.loss = loss if self.loss is None else 0.95 * self.loss + 0.05 * loss
        if self._start is None:
            self._start = (step, time.time())

    def due(self) -> bool:
        """True every `PROGRESS_SECONDS` (and then resets the clock)."""
        if time.time() - self.last_line < PROGRESS_SECONDS:
            return False
        self.last_line = time.time()
        return True

    def line(self, state: dict[str, Any], short: bool = False) -> str:
        """Step, loss, validation loss (and, unless short, the best, elapsed time and ETA).

        The ETA is the sooner of the step budget at the current rate and the time budget;
        early stopping (validation patience) can end training before either.
        """
        history = state["history"]
        parts = [f"step {state['step']}/{self.total}"]
        parts.append("loss -" if self.loss is None else f"loss {self.loss:.4f}")
        parts.append(f"val {history[-1]['val_loss']:.4f}" if history else "val -")
        if short:
            return ", ".join(parts)
        if state["best_val"] is not None:
            parts.append(f"best {state['best_val']:.4f} at {state.get('best_step')}")
        elapsed = float(state["train_seconds"])
        eta = None
        if self._start is not None and state["step"] > self._start[0]:
            s0, t0 = self._start
            eta = (self.total - state["step"]) * (time.time() - t0) / (state["step"] - s0)
        if self.max_minutes is not None:
            left = max(0.0, 60 * self.max_minutes - elapsed)
            eta = left if eta is None else min(eta, left)
        parts.append(f"{elapsed / 60:.1f} min")
        parts.append("ETA -" if eta is None else f"ETA {eta / 60:.1f} min")
        return ", ".join(parts)
