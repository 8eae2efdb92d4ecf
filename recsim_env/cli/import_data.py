"""`llm-usersim import SOURCE ...`: turn real interaction data into the Parquet log format.

Sources: `impressions` (your own slates and responses), `movielens`, `open-bandit`, `otto`.
Everything is read and checked in memory first; the output directory is only written (by
`write_logs`, file by file, meta.json last) once the whole input is valid. The mappings, and
which of them are proxies, are documented in docs/importers.md.
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from recsim_env.cli.args import (
    HelpFormatter,
    OneLineParser,
    existing_dir,
    existing_file,
    int_at_least,
    output_dir,
)
from simulators.atomic import exclusive_output
from simulators.importers import (
    CAMPAIGNS,
    DEFAULT_SESSION_GAP_MINUTES,
    POLICIES,
    SESSION_GAP_RULE,
    check_session_gap,
    import_impressions,
    import_movielens,
    import_open_bandit,
    import_otto,
)
from simulators.logs import InteractionLogs, check_log_output, write_logs

OUT_HELP = "output log directory (new, empty, or an earlier log set, replaced whole)"
HELP = "Import real interaction data (impressions CSV/Parquet, MovieLens, Open Bandit, OTTO)."


def session_gap(text: str) -> float:
    """Minutes > 0, or `inf`: never split, each user's rows are one session (whole history)."""
    try:
        return check_session_gap(float(text))
    except ValueError:
        raise argparse.ArgumentTypeError(f"must be {SESSION_GAP_RULE}, got {text!r}") from None


session_gap.__name__ = "session gap"


def _gap(p: argparse.ArgumentParser, default: float | None, extra: str = "") -> None:
    p.add_argument(
        "--session-gap",
        type=session_gap,
        default=default,
        metavar="MINUTES",
        help="a gap longer than this between a user's consecutive rows starts a new session; "
        f"inf: never, each user's rows are one session (its whole history in view){extra}",
    )


class _SourceParser(OneLineParser):
    """One source's parser: one-line errors, defaults in the help."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        kwargs.setdefault("formatter_class", HelpFormatter)
        super().__init__(*args, **kwargs)


def add_arguments(p: argparse.ArgumentParser) -> None:
    """Sub-subcommands of import, one per source."""
    sub = p.add_subparsers(
        dest="source",
        required=True,
        metavar="SOURCE",
        parser_class=_SourceParser,
    )

    imp = sub.add_parser(
        "impressions",
        help="your own logs: one row per shown slate (CSV or Parquet)",
        description="Columns: user_id, timestamp (unix seconds or ISO 8601), items (ids in "
        "display order, space-separated or a Parquet list), responses (skip/click/buy or "
        "0/1/2, one per item; or the labels of --behaviours; or, with --behaviour-columns, one "
        "0/1 column per behaviour), optional session_id. Errors name file, 1-based data row "
        "(not counting the CSV header) and column.",
    )
    imp.add_argument(
        "file", type=existing_file, help="impressions table (.csv, .csv.gz or .parquet)"
    )
    imp.add_argument(
        "--items", type=existing_file, help="items table: item_id, optional title, category, price"
    )
    imp.add_argument(
        "--users", type=existing_file, help="users table: user_id plus any profile columns"
    )
    imp.add_argument(
        "--behaviours",
        default=None,
        metavar="NAMES",
        help="your engagement levels, shallowest first, e.g. 'click,like,follow' or "
        "'click,cart,order' (no engagement is skip; default click,buy): the labels of the "
        "responses column",
    )
    imp.add_argument(
        "--behaviour-columns",
        action="store_true",
        help="no responses column: one column per behaviour of --behaviours, each a 0/1 flag "
        "per item (an item's response is the deepest behaviour flagged)",
    )
    imp.add_argument("--out", type=output_dir, required=True, help=OUT_HELP)
    _gap(imp, DEFAULT_SESSION_GAP_MINUTES, "; ignored with a session_id column")

    ml = sub.add_parser(
        "movielens",
        help="MovieLens ratings (latest-small layout) as proxy slates",
        description="Per user, 5 consecutive ratings form a slate; >= 4.5 stars buy, >= 3.5 "
        "click, otherwise skip. A proxy: ratings are not impressions.",
    )
    ml.add_argument("dir", type=existing_dir, help="folder with ratings.csv and movies.csv")
    ml.add_argument("--out", type=output_dir, required=True, help=OUT_HELP)
    ml.add_argument("--slate-size", type=int_at_least(1, 300), default=5, help="ratings per slate")
    _gap(ml, DEFAULT_SESSION_GAP_MINUTES)
    ml.add_argument(
        "--genres-in-title",
        action="store_true",
        help="append all genres to the title text (the simulator reads titles, not genres)",
    )

    ob = sub.add_parser(
        "open-bandit",
        help="Open Bandit Dataset: each impression row is a slate of 1 item",
        description="Rows sharing timestamp and user features are merged into one slate; "
        "user ids are hashes of the user features (segments); one step per session.",
    )
    ob.add_argument(
        "dir", type=existing_dir, help="dataset root (random/, bts/) or one campaign folder"
    )
    ob.add_argument("--out", type=output_dir, required=True, help=OUT_HELP)
    ob.add_argument("--policy", default="random", choices=POLICIES, help="logging policy")
    ob.add_argument(
        "--campaign",
        default=None,
        choices=CAMPAIGNS,
        help="campaign (default: the campaign folder's own file, or 'all' under the root)",
    )

    ot = sub.add_parser(
        "otto",
        help="OTTO sessions (JSON lines): clicks, carts and orders as click, cart, buy",
        description="One OTTO session is one user and one log session; events sharing a "
        "timestamp form one slate, other events are 1-item slates.",
    )
    ot.add_argument("file", type=existing_file, help="OTTO .jsonl or .jsonl.gz")
    ot.add_argument("--out", type=output_dir, required=True, help=OUT_HELP)
    _gap(ot, None, " (default: never, one log session per OTTO session)")


def load(args: argparse.Namespace) -> InteractionLogs:
    """Run the importer the arguments name (nothing is written)."""
    if args.source == "impressions":
        return import_impressions(
            args.file,
            args.items,
            args.users,
            args.session_gap,
            behaviours=args.behaviours,
            behaviour_columns=args.behaviour_columns,
        )
    if args.source == "movielens":
        return import_movielens(
            args.dir, args.slate_size, args.session_gap, genres_in_title=args.genres_in_title
        )
    if args.source == "open-bandit":
        return import_open_bandit(args.dir, args.policy, args.campaign)
    if args.source == "otto":
        return import_otto(args.file, args.session_gap)
    raise ValueError(f"unknown source {args.source!r}")


def run(args: argparse.Namespace) -> int:
    """Import, write the logs, print their statistics."""
    check_log_output(args.out)  # before reading: an output that cannot take logs fails now
    with exclusive_output(args.out):  # a second writer of the same --out fails at once
        logs = load(args)
        write_logs(logs, Path(args.out))
    stats = logs.meta["stats"]
    print(
        f"wrote {stats['steps']} steps of {stats['sessions']} sessions "
        f"({stats['users']} users, {stats['catalog_items']} items) to {args.out}"
    )
    if logs.meta.get("proxy"):
        print(f"  proxy mapping: {logs.meta['proxy_note']}")
    for key, value in stats.items():
        print(f"  {key}: {round(value, 4) if isinstance(value, float) else value}")
    return 0
