"""The `llm-usersim` command line: one subcommand per module in this package.

Each subcommand module defines `HELP` (one line), `add_arguments(parser)` and `run(args) -> int`.
Errors a user can fix (bad input, missing files) print one line on stderr and exit 2; `--debug`
shows the traceback instead.
"""

from __future__ import annotations

import argparse
import importlib
import logging
import sys
from collections.abc import Sequence

SUBCOMMANDS: dict[str, str] = {
    "generate-logs": "recsim_env.cli.generate_logs",
    "train-sim": "recsim_env.cli.train_sim",
    "validate": "recsim_env.cli.validate",
    "benchmark": "recsim_env.cli.benchmark",
    "train-agent": "recsim_env.cli.train_agent",
    "speed": "recsim_env.cli.speed",
    "import": "recsim_env.cli.import_data",
    "soak": "recsim_env.cli.soak",
}


class UsageError(Exception):
    """A problem with the user's input: reported as one line, no traceback."""


def build_parser(argv: Sequence[str] | None = None) -> argparse.ArgumentParser:
    """The top-level parser; only the chosen subcommand's module is imported (torch is slow)."""
    chosen = next((a for a in (argv or []) if not a.startswith("-")), None)
    parser = argparse.ArgumentParser(
        prog="llm-usersim",
        description="Simulated users for slate recommendation: logs, GPT-2 simulators, agents.",
    )
    parser.add_argument("--debug", action="store_true", help="show tracebacks on errors")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name, module_name in SUBCOMMANDS.items():
        if chosen in SUBCOMMANDS and name != chosen:
            sub.add_parser(name)
            continue
        module = importlib.import_module(module_name)
        p = sub.add_parser(name, help=module.HELP, description=module.HELP)
        p.add_argument(
            "--debug",
            action="store_true",
            default=argparse.SUPPRESS,
            help="show tracebacks on errors",
        )
        module.add_arguments(p)
        p.set_defaults(_run=module.run)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the console script."""
    argv = list(sys.argv[1:] if argv is None else argv)
    args = build_parser(argv).parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(message)s")
    try:
        return int(args._run(args) or 0)
    except KeyboardInterrupt:
        print("llm-usersim: interrupted", file=sys.stderr)
        return 130
    except Exception as exc:
        if getattr(args, "debug", False) or not _is_user_error(exc):
            raise
        msg = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        print(f"llm-usersim {args.command}: error: {msg}", file=sys.stderr)
        return 2


def _is_user_error(exc: BaseException) -> bool:
    """Errors a user can fix from the message (bad input, missing files, unknown env ids)."""
    from gymnasium.error import Error as GymError

    return isinstance(
        exc,
        (
            UsageError,
            ValueError,
            FileNotFoundError,
            NotADirectoryError,
            IsADirectoryError,
            PermissionError,
            KeyError,
            GymError,
        ),
    )


if __name__ == "__main__":  # python -m recsim_env.cli
    sys.exit(main())
