"""Argument types that check what a user passes before any work starts.

Each is an argparse `type=`: a bad value stops the command at parse time with one line on
stderr, naming the flag, what was given and what is allowed, and exit status 2 (see
`OneLineParser`). Output paths are checked here too, so `speed --json DIR` fails at once rather
than after 83 seconds of measuring.
"""

from __future__ import annotations

import argparse
import difflib
import json
import math
import os
import sys
import tempfile
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, NoReturn


class OneLineParser(argparse.ArgumentParser):
    """An ArgumentParser whose errors are one line on stderr and exit status 2."""

    def error(self, message: str) -> NoReturn:
        """Print `PROG: error: MESSAGE (see PROG --help)` and exit 2."""
        print(f"{self.prog}: error: {message} (see {self.prog} --help)", file=sys.stderr)
        sys.exit(2)


class HelpFormatter(argparse.ArgumentDefaultsHelpFormatter):
    """Shows every flag's default once, except where there is none to show.

    A help text that already names its default ("(default 60; ...)") gets no second one, and a
    list or tuple default reads as comma-separated values, not a Python repr.
    """

    def _get_help_string(self, action: argparse.Action) -> str | None:
        text = action.help or ""
        default = action.default  # identity: 0 == False, and a seed of 0 is worth showing
        if (
            "%(default)" in text
            or "(default" in text.lower()
            or default is None
            or default is False
            or default == argparse.SUPPRESS
        ):
            return text
        if action.option_strings or action.nargs in (argparse.OPTIONAL, argparse.ZERO_OR_MORE):
            if isinstance(default, (list, tuple)):
                shown = ", ".join(str(v) for v in default).replace("%", "%%")
                return f"{text} (default: {shown})"
            return text + " (default: %(default)s)"
        return text


def _number(text: str, kind: type, what: str) -> Any:
    try:
        value = kind(text)
    except (TypeError, ValueError):
        raise argparse.ArgumentTypeError(f"expected {what}, got {text!r}") from None
    if isinstance(value, float) and not math.isfinite(value):
        raise argparse.ArgumentTypeError(f"expected a finite number, got {text!r}")
    return value


def int_at_least(low: int, high: int | None = None) -> Callable[[str], int]:
    """An integer >= low (and <= high)."""

    def parse(text: str) -> int:
        value = _number(text, int, "an integer")
        if value < low or (high is not None and value > high):
            bound = f">= {low}" if high is None else f"in [{low}, {high}]"
            raise argparse.ArgumentTypeError(f"must be {bound}, got {value}")
        return int(value)

    parse.__name__ = "integer"
    return parse


positive_int = int_at_least(1)
nonnegative_int = int_at_least(0)


def float_in(
    low: float | None = None,
    high: float | None = None,
    low_open: bool = False,
    high_open: bool = False,
) -> Callable[[str], float]:
    """A finite float within bounds (open or closed at each end; None: unbounded)."""

    def parse(text: str) -> float:
        value = float(_number(text, float, "a number"))
        too_low = low is not None and (value <= low if low_open else value < low)
        too_high = high is not None and (value >= high if high_open else value > high)
        if too_low or too_high:
            lo = "(-inf" if low is None else f"{'(' if low_open else '['}{low:g}"
            hi = "inf)" if high is None else f"{high:g}{')' if high_open else ']'}"
            raise argparse.ArgumentTypeError(f"must be in {lo}, {hi}, got {value:g}")
        return value

    parse.__name__ = "number"
    return parse


positive_float = float_in(0.0, low_open=True)
nonnegative_float = float_in(0.0)
unit_interval = float_in(0.0, 1.0)
"""A probability or discount in [0, 1]."""


def _check_writable_folder(p: Path, text: str) -> None:
    """The nearest existing folder on the way to `p` takes a new file (tried, then removed).

    Outputs are written as a temporary sibling renamed into place, so what counts is whether a
    file can be created there; a folder that refuses it (read-only, /sys, /proc) is refused
    now rather than after the work.
    """
    for parent in p.parents:
        if parent.exists():
            if not parent.is_dir():
                raise argparse.ArgumentTypeError(f"{parent} is a file, so {text} cannot be written")
            try:
                fd, probe = tempfile.mkstemp(prefix=".llm-usersim-probe.", dir=parent)
            except OSError as e:
                raise argparse.ArgumentTypeError(
                    f"cannot write {text}: {parent} takes no new file ({e.strerror})"
                ) from None
            os.close(fd)
            os.unlink(probe)
            return


def output_file(text: str) -> Path:
    """A file to write: a regular file or none yet, in a folder that takes files.

    A symbolic link is followed (its target is written, the link kept); a device, FIFO or
    socket is refused, since the output replaces the file by renaming a new one over it.
    """
    if text.strip() == "":
        raise argparse.ArgumentTypeError("expected a file path, got ''")
    p = Path(text)
    if p.is_dir():  # these follow symbolic links
        raise argparse.ArgumentTypeError(f"{text} is a directory; give a file path")
    if p.exists() and not p.is_file():
        raise argparse.ArgumentTypeError(
            f"{text} is not a regular file (a device, FIFO or socket); give a file path"
        )
    if p.is_symlink():
        p = p.resolve()
    _check_writable_folder(p, text)
    return p


def output_dir(text: str) -> Path:
    """A directory to write: not an existing file, no file on the way to it."""
    p = Path(text)
    if text.strip() == "":
        raise argparse.ArgumentTypeError("expected a directory path, got ''")
    if p.exists() and not p.is_dir():
        raise argparse.ArgumentTypeError(f"{text} is a file; give a directory path")
    _check_writable_folder(p, text)
    return p


def nonempty(text: str) -> str:
    """Any non-blank string."""
    if not text.strip():
        raise argparse.ArgumentTypeError("expected a value, got ''")
    return text


def existing_dir(text: str) -> Path:
    """A directory that exists."""
    p = Path(text)
    if not p.is_dir():
        raise argparse.ArgumentTypeError(
            f"{text}: no such directory" if not p.exists() else f"{text} is a file, not a directory"
        )
    return p


def existing_file(text: str) -> Path:
    """A file that exists."""
    p = Path(text)
    if not p.is_file():
        raise argparse.ArgumentTypeError(
            f"{text}: no such file" if not p.exists() else f"{text} is a directory, not a file"
        )
    return p


def device_name(text: str) -> str:
    """A torch device name: cpu, cuda or cuda:N (whether this machine has it is not checked).

    For commands whose work may run elsewhere (`--ray` with a cluster address): the GPUs are
    the cluster's; `check_device_here` checks this machine's when the work runs here.
    """
    name = text.strip().lower()
    if name == "cpu" or name == "cuda" or (name.startswith("cuda:") and name[5:].isdigit()):
        return name
    raise argparse.ArgumentTypeError(f"unknown device {text!r}; allowed: cpu, cuda, cuda:N")


def check_device_here(name: str) -> str:
    """`name` if this machine has that device, else ArgumentTypeError saying what it has."""
    if name == "cpu":
        return name
    import torch

    if not torch.cuda.is_available():
        raise argparse.ArgumentTypeError(f"{name}: this machine has no CUDA device; use cpu")
    index = int(name[5:]) if ":" in name else 0
    if index >= torch.cuda.device_count():
        raise argparse.ArgumentTypeError(
            f"{name}: there are {torch.cuda.device_count()} CUDA devices"
        )
    return name


def device(text: str) -> str:
    """A torch device this machine has: cpu, cuda or cuda:N (N below the GPU count)."""
    return check_device_here(device_name(text))


ENV_IDS = ("LLMUserSim-v0", "ParametricUserSim-v0")


def closest(name: str, choices: Sequence[str]) -> str | None:
    """The choice a misspelt `name` most likely meant (None when none is close)."""
    close = difflib.get_close_matches(name, list(choices), n=1)
    return close[0] if close else None


def env_id(text: str) -> str:
    """One of the project's env ids (the ones with a native vector env)."""
    if text not in ENV_IDS:
        close = closest(text, ENV_IDS)
        hint = f"; did you mean {close}?" if close else ""
        raise argparse.ArgumentTypeError(
            f"unknown env {text!r}; allowed: {', '.join(ENV_IDS)}{hint}"
        )
    return text


def json_object(text: str) -> dict[str, Any]:
    """A JSON object given on the command line."""
    try:
        value = json.loads(text)
    except json.JSONDecodeError as exc:
        raise argparse.ArgumentTypeError(f"not valid JSON ({exc.msg} at char {exc.pos})") from None
    if not isinstance(value, dict):
        raise argparse.ArgumentTypeError(f"expected a JSON object {{...}}, got {text!r}")
    return value


def int_list(text: str) -> tuple[int, ...]:
    """Comma-separated positive integers."""
    parts = [p.strip() for p in text.split(",") if p.strip()]
    if not parts:
        raise argparse.ArgumentTypeError("expected comma-separated positive integers, got nothing")
    return tuple(positive_int(p) for p in parts)


def name_list(text: str) -> tuple[str, ...]:
    """Comma-separated names (at least one)."""
    names = tuple(dict.fromkeys(p.strip() for p in text.split(",") if p.strip()))
    if not names:
        raise argparse.ArgumentTypeError("expected comma-separated names, got nothing")
    return names


def env_kwargs_json(text: str) -> dict[str, Any]:
    """A JSON object of env arguments, checked against EnvConfig now (unknown fields refused)."""
    from recsim_env.config import EnvConfig

    value = json_object(text)
    try:
        _, rest = EnvConfig.from_kwargs(value)
    except (TypeError, ValueError) as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None
    extras = ("simulator", "world", "device", "dtype")
    unknown = sorted(set(rest) - set(extras))
    if unknown:
        known = [*EnvConfig.field_names(), *extras]
        hints = [
            f"{name}: did you mean {close}?" for name in unknown if (close := closest(name, known))
        ]
        raise argparse.ArgumentTypeError(
            f"unknown env arguments {unknown}"
            + (f" ({'; '.join(hints)})" if hints else "")
            + "; EnvConfig fields, <behaviour>_reward, simulator, world, device or dtype"
        )
    return value


def misplaced_env_kwarg(kwargs: dict[str, Any], env: str) -> str | None:
    """Why an env argument does not apply to `env` (None when all apply).

    `simulator`, `device` and `dtype` are LLMUserSim-v0's, `world` is ParametricUserSim-v0's.
    """
    llm, world = "LLMUserSim-v0", "ParametricUserSim-v0"
    owners = {"simulator": llm, "device": llm, "dtype": llm, "world": world}
    for key, owner in owners.items():
        if key in kwargs and env != owner:
            return f"--env-kwargs: {key} applies to {owner}, not {env}"
    return None
