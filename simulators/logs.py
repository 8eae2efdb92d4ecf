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

`write_logs` validates first (`simulators.log_validation`), writes the whole set into a hidden
temporary sibling and swaps it in place of the output with one atomic exchange, holding a lock
on the output meanwhile: an interrupted write (a kill, a full disk) leaves the earlier complete
log set as it was, and a second concurrent writer fails at once. `read_logs` validates once.
Row numbers in errors are 0-based positions in the Parquet tables.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from simulators.atomic import (
    atomic_write,
    atomic_write_text,
    exclusive_output,
    swap_directory,
    temporary_sibling,
)
from simulators.behaviours import BehaviourSet
from simulators.log_validation import STEP_COLUMNS, LogFormatError, validate_log_tables

LOG_FORMAT = "llm-usersim-logs"
LOG_VERSION = 1

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


@dataclass
class InteractionLogs:
    """An in-memory log set: steps, items and users tables plus metadata."""

    steps: pd.DataFrame
    items: pd.DataFrame
    users: pd.DataFrame
    meta: dict = field(default_factory=dict)
    source: str = "<memory>"
    """Where the logs were read from (errors name its files); not part of the log set."""

    def item_index(self) -> dict[str, int]:
        """item_id -> row position in the items table."""
        return {iid: i for i, iid in enumerate(self.items["item_id"].tolist())}

    def fingerprint(self) -> str:
        """A content hash of the three tables and the behaviour set (16 hex digits)."""
        h = hashlib.sha256(json.dumps(self.behaviours.to_dict()).encode())
        steps = self.steps
        for col in ("user_id", "session_id", "step", "leave"):
            h.update("\x1e".join(map(str, steps[col].tolist())).encode())
        for col in ("items", "responses"):
            h.update("\x1e".join("\x1f".join(map(str, x)) for x in steps[col]).encode())
        h.update(self.items.to_csv(index=False).encode())
        h.update(self.users.to_csv(index=False).encode())
        return h.hexdigest()[:16]

    @property
    def behaviours(self) -> BehaviourSet:
        """The behaviour set the response codes refer to (meta.json; default skip, click, buy)."""
        return BehaviourSet.from_dict(self.meta.get("behaviours"))


def check_log_output(out_dir: str | Path) -> Path:
    """Refuse an output that is neither absent, an empty directory, nor a log set.

    A log set is replaced whole; anything else there would be lost. Call it before any work.

    Raises:
        LogFormatError: the output is a file, or a directory holding other things.
    """
    out = Path(out_dir)
    if out.exists() and not out.is_dir():
        raise LogFormatError(f"{out}: exists and is a file, not a log directory")
    if out.is_dir() and any(out.iterdir()) and not (out / "meta.json").is_file():
        raise LogFormatError(
            f"{out}: exists and holds other files; give a new or empty directory, or an earlier "
            "log set to replace"
        )
    return out


def write_logs(logs: InteractionLogs, out_dir: str | Path) -> Path:
    """Validate a log set and write it to out_dir as a whole (see the module docstring).

    Raises:
        LogFormatError: the logs are malformed, or out_dir is not a place for logs.
        simulators.atomic.OutputBusyError: another process is writing out_dir.
    """
    out = check_log_output(out_dir)
    validate_log_tables(logs, source=str(out))
    with exclusive_output(out):
        tmp = temporary_sibling(out)
        try:
            _write_files(logs, tmp)
            swap_directory(tmp, out)
        except BaseException:
            import shutil

            shutil.rmtree(tmp, ignore_errors=True)
            raise
    return out


def _write_files(logs: InteractionLogs, out: Path) -> None:
    meta_path = out / "meta.json"
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
        source=str(d),
    )
    if validate:
        validate_log_tables(logs, source=str(d))
    return logs


def sessions_in_order(steps: pd.DataFrame) -> pd.DataFrame:
    """Steps sorted by (user_id, session_id, step): the order sessions are tokenised in."""
    return steps.sort_values(["user_id", "session_id", "step"], kind="stable").reset_index(
        drop=True
    )
