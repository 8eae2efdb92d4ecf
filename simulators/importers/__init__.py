"""Importers of real interaction data into the Parquet log format (`simulators.logs`).

Each importer reads its whole input into memory, checks it, and returns an `InteractionLogs`;
pass that to `write_logs`. Malformed input raises `ImportFormatError` (a `ValueError`) naming
file, 1-based data row and column. Mappings and their proxy nature: docs/importers.md.

Example:
    >>> from simulators.importers import import_otto
    >>> from simulators.logs import write_logs
    >>> write_logs(import_otto("train_20sessions.jsonl"), "logs/otto")  # doctest: +SKIP
"""

from simulators.importers._common import (
    DEFAULT_SESSION_GAP_MINUTES,
    MAX_SLATE_ITEMS,
    SESSION_GAP_RULE,
    ImportFormatError,
    check_session_gap,
    summarize,
)
from simulators.importers.impressions import import_impressions, read_items, read_users
from simulators.importers.movielens import import_movielens, stars_to_response
from simulators.importers.open_bandit import CAMPAIGNS, POLICIES, import_open_bandit
from simulators.importers.otto import EVENT_RESPONSES, import_otto

__all__ = [
    "CAMPAIGNS",
    "DEFAULT_SESSION_GAP_MINUTES",
    "EVENT_RESPONSES",
    "MAX_SLATE_ITEMS",
    "POLICIES",
    "SESSION_GAP_RULE",
    "ImportFormatError",
    "check_session_gap",
    "import_impressions",
    "import_movielens",
    "import_open_bandit",
    "import_otto",
    "read_items",
    "read_users",
    "stars_to_response",
    "summarize",
]
