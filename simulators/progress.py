"""Progress of long work: a bar on a terminal, one line at a time on stderr otherwise.

Long jobs (training, validation, benchmarks, speed and soak runs) report through
`progress_bar(total, desc, unit)`. On an interactive terminal it is a tqdm bar; when stderr is a
file or a pipe (CI, `nohup`, a notebook's captured output) it writes a line such as

    train-sim: 400/2000 steps (20%), 1m12s elapsed, ETA 4m48s, loss 0.3561

at most every `LINE_INTERVAL_SECONDS` and once at the end, so a log shows the work is moving
without a carriage-return flood. `set_quiet(True)` (the CLI's `--quiet`) silences both.
"""

from __future__ import annotations

import os
import sys
import time
from typing import Any

LINE_INTERVAL_SECONDS = 15.0
"""Seconds between two progress lines when stderr is not a terminal."""

_quiet = os.environ.get("LLM_USERSIM_QUIET", "") not in ("", "0")


def set_quiet(quiet: bool) -> None:
    """Silence (or restore) every progress report of this process."""
    global _quiet
    _quiet = bool(quiet)


def is_quiet() -> bool:
    """Whether progress reports are silenced."""
    return _quiet


def _duration(seconds: float) -> str:
    s = round(seconds)
    if s < 60:
        return f"{s}s"
    if s < 3600:
        return f"{s // 60}m{s % 60:02d}s"
    return f"{s // 3600}h{(s % 3600) // 60:02d}m"


class LineProgress:
    """tqdm's small interface as occasional lines on stderr (see the module docstring).

    `update`, `set_postfix`, `set_postfix_str`, `set_description` and `close`, as tqdm has them.
    """

    def __init__(
        self,
        total: float | None,
        desc: str,
        unit: str,
        initial: float = 0,
        interval: float = LINE_INTERVAL_SECONDS,
    ) -> None:
        """Start the clock."""
        self.total, self.desc, self.unit, self.n = total, desc, unit, float(initial)
        self.interval = interval
        self.start = time.monotonic()
        self.last = self.start
        self.postfix = ""
        self.closed = False

    def update(self, n: float = 1) -> None:
        """Advance by n; writes a line when the interval has passed."""
        self.n += n
        now = time.monotonic()
        if now - self.last >= self.interval:
            self.last = now
            self._write()

    def set_postfix(self, **kwargs: Any) -> None:
        """Extra figures shown after the counts (e.g. loss=0.35)."""
        self.postfix = ", ".join(f"{k} {v}" for k, v in kwargs.items())

    def set_postfix_str(self, text: str) -> None:
        """Extra text shown after the counts (e.g. the agent running)."""
        self.postfix = str(text)

    def set_description(self, desc: str) -> None:
        """Rename the work."""
        self.desc = desc

    def _write(self) -> None:
        elapsed = time.monotonic() - self.start
        count = f"{self.n:g}"
        parts = []
        if self.total:
            frac = min(self.n / self.total, 1.0)
            count += f"/{self.total:g} {self.unit} ({100 * frac:.0f}%)"
            parts.append(f"{_duration(elapsed)} elapsed")
            if 0 < frac < 1:
                parts.append(f"ETA {_duration(elapsed * (1 - frac) / frac)}")
        else:
            count += f" {self.unit}"
            parts.append(f"{_duration(elapsed)} elapsed")
        if self.postfix:
            parts.append(self.postfix)
        print(f"{self.desc}: {count}, {', '.join(parts)}", file=sys.stderr, flush=True)

    def close(self) -> None:
        """Write the final line (once)."""
        if not self.closed:
            self.closed = True
            self._write()

    def __enter__(self) -> LineProgress:
        """Use as a context manager."""
        return self

    def __exit__(self, *exc: object) -> None:
        """Close."""
        self.close()


class _Silent(LineProgress):
    def _write(self) -> None:
        return


def progress_bar(
    total: float | None, desc: str, unit: str = "it", enabled: bool = True, initial: float = 0
) -> Any:
    """A progress reporter: tqdm on a terminal, lines on stderr otherwise.

    Nothing is shown when disabled or quiet (see the module docstring).
    """
    if not enabled or _quiet:
        return _Silent(total, desc, unit, initial)
    if sys.stderr.isatty():
        from tqdm.auto import tqdm

        return tqdm(total=total, desc=desc, unit=unit, initial=initial)
    return LineProgress(total, desc, unit, initial)
