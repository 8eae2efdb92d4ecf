"""The `llm-usersim` command line: one subcommand per module in this package.

Each subcommand module defines `HELP` (one line), `add_arguments(parser)` and `run(args) -> int`.
Errors a user can fix (bad input, missing files) print one line on stderr and exit 2, before any
work starts where the input can be checked up front (`recsim_env.cli.args`); `--debug` shows the
traceback instead.

Every subcommand also takes `--threads N` (CPU threads of torch and of numpy's BLAS, applied
before any work; default `DEFAULT_THREADS`, chosen from the measurements in the README: on a
shared 2-core machine extra threads spin against the other processes) and `--quiet` (no
progress reports; progress is a bar on a terminal and one line every 15 s on stderr otherwise).
"""

from __future__ import annotations

import argparse
import importlib
import logging
import os
import sys
from collections.abc import Sequence

from recsim_env.cli.args import HelpFormatter, OneLineParser, positive_int

SUBCOMMANDS: dict[str, str] = {
    "generate-logs": "recsim_env.cli.generate_logs",
    "train-sim": "recsim_env.cli.train_sim",
    "validate": "recsim_env.cli.validate",
    "benchmark": "recsim_env.cli.benchmark",
    "train-agent": "recsim_env.cli.train_agent",
    "speed": "recsim_env.cli.speed",
    "import": "recsim_env.cli.import_data",
    "soak": "recsim_env.cli.soak",
    "explain": "recsim_env.cli.explain",
}


DEFAULT_THREADS = 1
"""CPU threads of every command unless `--threads` says otherwise (see the README's table: on the
2-core machine the main job took 92 s with one thread and 170 s with two beside one busy process,
169 s and 934 s beside other sessions' jobs; two threads gained 15% only with both cores free)."""


class UsageError(Exception):
    """A problem with the user's input: reported as one line, no traceback."""


def apply_threads(n: int) -> None:
    """Limit torch and numpy's BLAS (and libraries started later) to n CPU threads."""
    for var in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS"):
        os.environ[var] = str(n)
    import torch

    torch.set_num_threads(n)
    from threadpoolctl import threadpool_limits

    threadpool_limits(limits=n)  # stays in effect for the process


def build_parser(argv: Sequence[str] | None = None) -> argparse.ArgumentParser:
    """The top-level parser; only the chosen subcommand's module is imported (torch is slow)."""
    chosen = next((a for a in (argv or []) if not a.startswith("-")), None)
    parser = OneLineParser(
        prog="llm-usersim",
        description="Simulated users for slate recommendation: logs, GPT-2 simulators, agents.",
    )
    parser.add_argument("--debug", action="store_true", help="show tracebacks on errors")
    sub = parser.add_subparsers(
        dest="command", required=True, metavar="COMMAND", parser_class=OneLineParser
    )
    for name, module_name in SUBCOMMANDS.items():
        if chosen in SUBCOMMANDS and name != chosen:
            sub.add_parser(name)
            continue
        module = importlib.import_module(module_name)
        p = sub.add_parser(
            name, help=module.HELP, description=module.HELP, formatter_class=HelpFormatter
        )
        common = p.add_argument_group("common options")
        common.add_argument(
            "--debug",
            action="store_true",
            default=argparse.SUPPRESS,
            help="show tracebacks on errors",
        )
        common.add_argument(
            "--threads",
            type=positive_int,
            default=DEFAULT_THREADS,
            help="CPU threads of torch and numpy's BLAS",
        )
        common.add_argument("--quiet", action="store_true", help="no progress reports")
        module.add_arguments(p)
        p.set_defaults(_run=module.run, _parser=p)
    return parser


def _common_option_before_command(argv: list[str]) -> str | None:
    """The error for a subcommand's common option given before the subcommand (None: none).

    Only --debug belongs to the top level; `--threads 2 benchmark` would otherwise read "2" as
    the command.
    """
    for arg in argv:
        if not arg.startswith("-"):
            return None
        flag = arg.split("=", 1)[0]
        if flag in ("--quiet", "--threads"):
            command = next((a for a in argv if a in SUBCOMMANDS), "COMMAND")
            value = " N" if flag == "--threads" else ""
            return (
                f"{flag} goes after the command: llm-usersim {command} {flag}{value} ... "
                "(only --debug comes before it)"
            )
    return None


def unknown_arguments(unknown: list[str], options: list[str]) -> str:
    """The error for arguments no flag takes, with the closest flag for each misspelt one."""
    from recsim_env.cli.args import closest

    hints = []
    for arg in unknown:
        flag = arg.split("=", 1)[0]
        close = closest(flag, options) if flag.startswith("--") else None
        hints += [f"{flag}: did you mean {close}?"] if close else []
    text = f"unrecognized arguments: {' '.join(unknown)}"
    return text + (f" ({'; '.join(hints)})" if hints else "")


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the console script."""
    argv = list(sys.argv[1:] if argv is None else argv)
    try:
        misplaced = _common_option_before_command(argv)
        if misplaced:
            OneLineParser(prog="llm-usersim").error(misplaced)
        parser = build_parser(argv)
        args, unknown = parser.parse_known_args(argv)
        if unknown:
            chosen = getattr(args, "_parser", parser)
            chosen.error(unknown_arguments(unknown, list(chosen._option_string_actions)))
    except SystemExit as exc:  # --help (0), or a bad argument already reported in one line (2)
        return exc.code if isinstance(exc.code, int) else 2
    logging.basicConfig(level=logging.WARNING, format="%(message)s")
    from simulators.progress import set_quiet

    set_quiet(args.quiet)
    apply_threads(args.threads)
    try:
        return int(args._run(args) or 0)
    except KeyboardInterrupt:
        print("llm-usersim: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:  # the reader of stdout went away (`| head`): stop quietly
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())  # no flush error at exit
        return 141  # 128 + SIGPIPE, as a shell reports it
    except Exception as exc:
        if getattr(args, "debug", False) or not _is_user_error(exc):
            raise
        msg = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        print(f"llm-usersim {args.command}: error: {msg}", file=sys.stderr)
        return 2


def _is_user_error(exc: BaseException) -> bool:
    """Errors a user can fix from the message (bad input, missing files, unknown env ids)."""
    from gymnasium.error import Error as GymError

    from simulators.atomic import OutputBusyError

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
            OutputBusyError,
        ),
    )


if __name__ == "__main__":  # python -m recsim_env.cli
    sys.exit(main())
