"""The versioned interaction-log format (Parquet), with a validating reader.

A log directory holds:

- ``steps.parquet``: one row per shown slate. Columns: ``user_id`` (string), ``session_id``
  (string), ``step`` (int32, 0-based within the session), ``items`` (list<string>, item ids in
  display order, any length >= 1), ``responses`` (list<int8>, same length: codes of the log's
  behaviours, by default 0 skip, 1 click, 2 buy), ``leave`` (bool, the user ended the session
  after this slate).
- ``items.parquet``: ``item_id`` (string), ``title`` (string), ``category`` (string),
  ``price`` (float64, NaN when unknown).
- ``users.parquet``: ``user_id`` (string) plus any profile columns (strings; multi-valued
  fields are ``|``-separated).
- ``meta.json``: ``{"format": "llm-usersim-logs", "version": 1, "behaviours": {"names": [...]},
  ...}`` plus provenance; without ``behaviours`` the codes are skip, click, buy.

Every file is written to a temporary name and renamed into place, and ``meta.json`` is written
last: a directory without it (an interrupted write) never reads as valid.
"""

from __future__ import annotations

import json
import os
import tempfile
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from simulators.behaviours import BehaviourSet

LOG_FORMAT = "llm-usersim-logs"
LOG_VERSION = 1
STEP_COLUMNS = ("user_id", "session_id", "step", "items", "responses", "leave")

STEPS_SCHEMA = pa.schema(
    [
        ("user_id", pa.string()),
        ("session_id", pa.string()),
        ("step", pa.int32()),
        ("items", pa.list_(pa.string())),
        ("responses", pa.list_(pa.int8())),
        ("leave", pa.bool_()),
    ]
)


class LogFormatError(ValueError):
    """A log file is missing, unreadable or malformed; the message names file, row and column."""


@dataclass
class InteractionLogs:
    """An in-memory log set: steps, items and users tables plus metadata."""

    steps: pd.DataFrame
    items: pd.DataFrame
    users: pd.DataFrame
    meta: dict = field(default_factory=dict)

    def item_index(self) -> dict[str, int]:
        """item_id -> row position in the items table."""
        return {iid: i for i, iid in enumerate(self.items["item_id"].tolist())}

    @property
    def behaviours(self) -> BehaviourSet:
        """The behaviour set the response codes refer to (meta.json; default skip, click, buy)."""
        return BehaviourSet.from_dict(self.meta.get("behaviours"))


def atomic_write(path: str | Path, write: Callable[[str], object]) -> None:
    """Call write(tmp_path) then rename tmp_path onto path, so readers never see a partial file."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    try:
        write(tmp)
        os.chmod(tmp, 0o644)
        with open(tmp, "rb") as fh:
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def atomic_write_text(path: str | Path, text: str) -> None:
    """Atomically write a text file."""
    atomic_write(path, lambda tmp: Path(tmp).write_text(text))


def write_logs(logs: InteractionLogs, out_dir: str | Path) -> Path:
    """Write a log set to out_dir (validating it first); returns the directory."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    meta_path = out / "meta.json"
    if meta_path.exists():
        meta_path.unlink()  # the set is invalid until every file is in place again
    validate_tables(logs, source=str(out))
    steps = pa.Table.from_pandas(
        logs.steps[list(STEP_COLUMNS)].reset_index(drop=True),
        schema=STEPS_SCHEMA,
        preserve_index=False,
    )
    items = logs.items.copy()
    for col, default in (("title", ""), ("category", "")):
        if col not in items.columns:
            items[col] = default
    if "price" not in items.columns:
        items["price"] = np.nan
    items = items.astype({"item_id": str, "title": str, "category": str, "price": "float64"})
    users = logs.users.astype(str).reset_index(drop=True)
    atomic_write(out / "steps.parquet", lambda p: pq.write_table(steps, p))
    atomic_write(
        out / "items.parquet", lambda p: items.reset_index(drop=True).to_parquet(p, index=False)
    )
    atomic_write(out / "users.parquet", lambda p: users.to_parquet(p, index=False))
    meta = {
        "format": LOG_FORMAT,
        "version": LOG_VERSION,
        **logs.meta,
        "behaviours": logs.behaviours.to_dict(),
    }
    atomic_write_text(meta_path, json.dumps(meta, indent=2, sort_keys=True) + "\n")
    return out


def _read_parquet(path: Path) -> pd.DataFrame:
    if not path.exists():
        raise LogFormatError(f"{path}: file is missing")
    try:
        return pq.read_table(path).to_pandas()
    except Exception as exc:  # pyarrow raises several types for truncated/corrupt files
        raise LogFormatError(f"{path}: not a readable Parquet file ({exc})") from None


def read_logs(log_dir: str | Path, validate: bool = True) -> InteractionLogs:
    """Read and (by default) validate a log directory written by `write_logs`."""
    d = Path(log_dir)
    if not d.is_dir():
        raise LogFormatError(f"{d}: not a log directory (expected steps/items/users.parquet)")
    meta_path = d / "meta.json"
    if not meta_path.exists():
        raise LogFormatError(
            f"{meta_path}: file is missing (an interrupted write, or not a log directory)"
        )
    try:
        meta = json.loads(meta_path.read_text())
    except json.JSONDecodeError as exc:
        raise LogFormatError(f"{meta_path}: not valid JSON ({exc})") from None
    if meta.get("format") != LOG_FORMAT or meta.get("version") != LOG_VERSION:
        raise LogFormatError(
            f"{meta_path}: unsupported log format {meta.get('format')!r} version "
            f"{meta.get('version')!r} (this reader takes {LOG_FORMAT!r} version {LOG_VERSION})"
        )
    logs = InteractionLogs(
        steps=_read_parquet(d / "steps.parquet"),
        items=_read_parquet(d / "items.parquet"),
        users=_read_parquet(d / "users.parquet"),
        meta=meta,
    )
    if validate:
        validate_tables(logs, source=str(d))
    return logs


def _fail(file: str, row: int | None, column: str, problem: str) -> LogFormatError:
    where = f", row {row}" if row is not None else ""
    return LogFormatError(f"{file}{where}, column '{column}': {problem}")


def validate_tables(logs: InteractionLogs, source: str = "<memory>") -> None:
    """Check every column and row; raise LogFormatError naming file, row and column."""
    steps_f, items_f, users_f = (
        f"{source}/steps.parquet",
        f"{source}/items.parquet",
        f"{source}/users.parquet",
    )
    for col in ("item_id",):
        if col not in logs.items.columns:
            raise _fail(items_f, None, col, "required column is missing")
    if "user_id" not in logs.users.columns:
        raise _fail(users_f, None, "user_id", "required column is missing")
    item_ids = logs.items["item_id"].astype(str)
    dup = item_ids.duplicated()
    if dup.any():
        r = int(np.argmax(dup.to_numpy()))
        raise _fail(items_f, r, "item_id", f"duplicate item id {item_ids.iloc[r]!r}")
    if "price" in logs.items.columns:
        price = pd.to_numeric(logs.items["price"], errors="coerce")
        bad = price.isna() & logs.items["price"].notna()
        bad |= price < 0
        if bad.any():
            r = int(np.argmax(bad.to_numpy()))
            raise _fail(
                items_f,
                r,
                "price",
                f"expected a non-negative number, got {logs.items['price'].iloc[r]!r}",
            )
    steps = logs.steps
    for col in STEP_COLUMNS:
        if col not in steps.columns:
            raise _fail(
                steps_f, None, col, f"required column is missing (columns: {list(STEP_COLUMNS)})"
            )
    try:
        behaviours = logs.behaviours
    except (ValueError, KeyError, TypeError) as exc:
        raise LogFormatError(f"{source}/meta.json: invalid 'behaviours' ({exc})") from None
    num_codes = behaviours.size
    allowed = ", ".join(f"{i} {n}" for i, n in enumerate(behaviours.names))
    known_items = set(item_ids.tolist())
    known_users = set(logs.users["user_id"].astype(str).tolist())
    step_vals = pd.to_numeric(steps["step"], errors="coerce")
    for r, (uid, sid, step, items, responses, leave) in enumerate(
        zip(
            steps["user_id"],
            steps["session_id"],
            step_vals,
            steps["items"],
            steps["responses"],
            steps["leave"],
        )
    ):
        if not isinstance(uid, str) or not uid:
            raise _fail(steps_f, r, "user_id", f"expected a non-empty string, got {uid!r}")
        if uid not in known_users:
            raise _fail(steps_f, r, "user_id", f"user {uid!r} is not in the users table")
        if not isinstance(sid, str) or not sid:
            raise _fail(steps_f, r, "session_id", f"expected a non-empty string, got {sid!r}")
        if pd.isna(step) or step < 0 or step != int(step):
            raise _fail(
                steps_f,
                r,
                "step",
                f"expected a non-negative integer, got {steps['step'].iloc[r]!r}",
            )
        if items is None or isinstance(items, str) or len(items) == 0:
            raise _fail(
                steps_f, r, "items", f"expected a non-empty list of item ids, got {items!r}"
            )
        if responses is None or isinstance(responses, str) or len(responses) != len(items):
            raise _fail(
                steps_f,
                r,
                "responses",
                f"expected a list of {len(items)} response codes (one per item), got {responses!r}",
            )
        for it in items:
            if it not in known_items:
                raise _fail(steps_f, r, "items", f"item {it!r} is not in the items table")
        for code in responses:
            if code is None or not 0 <= int(code) < num_codes:
                raise _fail(steps_f, r, "responses", f"response code {code!r} not in {allowed}")
        if not isinstance(leave, (bool, np.bool_)):
            raise _fail(steps_f, r, "leave", f"expected a boolean, got {leave!r}")


def sessions_in_order(steps: pd.DataFrame) -> pd.DataFrame:
    """Steps sorted by (user_id, session_id, step): the order sessions are tokenised in."""
    return steps.sort_values(["user_id", "session_id", "step"], kind="stable").reset_index(
        drop=True
    )
