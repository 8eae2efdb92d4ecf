"""Small helpers shared by subcommands: JSON output and progress bars."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np


def _default(obj: Any) -> Any:
    if isinstance(obj, np.generic):
        return obj.item()
    if isinstance(obj, np.ndarray):
        return obj.tolist()
    if isinstance(obj, Path):
        return str(obj)
    raise TypeError(f"not JSON serialisable: {type(obj)}")


def write_json(path: str | Path | None, data: dict) -> None:
    """Atomically write figures as JSON (no-op when path is None)."""
    if path is None:
        return
    from simulators.atomic import atomic_write_text

    atomic_write_text(path, json.dumps(data, indent=2, default=_default) + "\n")


def progress_enabled() -> bool:
    """Progress reports unless `--quiet` (a bar on a terminal, lines on stderr otherwise)."""
    from simulators.progress import is_quiet

    return not is_quiet()
