"""Pieces every importer shares: errors, id/response/timestamp parsing, sessions, tables.

Every importer builds the whole log set in memory and only then calls `write_logs`, so a bad
input row never leaves a half-written output directory behind.

Row numbers in error messages are 1-based data rows as a user sees them in the file: row 1 is
the first row after a CSV header (CSV line 2), the first row of a Parquet file, or the first
line of a JSON-lines file.
"""

from __future__ import annotations

import logging
import math
import re
import zlib
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pyarrow.parquet as pq

from simulators.behaviours import DEEPER, DEFAULT_BEHAVIOURS, BehaviourSet, engaged
from simulators.logs import STEP_COLUMNS, InteractionLogs, LogFormatError
from simulators.slate_fit import MAX_SLATE_ITEMS

logger = logging.getLogger(__name__)

DEFAULT_SESSION_GAP_MINUTES = 30.0
"""A user's next slate starts a new session when it comes more than this long after the last."""


SESSION_GAP_RULE = "> 0 minutes, or inf (never split: each user's rows are one session)"


def check_session_gap(minutes: object) -> float:
    """A session gap as a float: a number > 0 minutes, or +inf.

    Raises:
        ValueError: anything else (NaN, <= 0, not a number), naming what is allowed.
    """
    if isinstance(minutes, bool) or not isinstance(minutes, (int, float, np.integer, np.floating)):
        raise ValueError(
            f"session gap must be {SESSION_GAP_RULE}, got {minutes!r} ({type(minutes).__name__})"
        )
    value = float(minutes)
    if not value > 0:  # NaN fails too
        raise ValueError(f"session gap must be {SESSION_GAP_RULE}, got {minutes!r}")
    return value


def gap_sessions(minutes: float) -> tuple[str, float | None]:
    """meta.json's `sessions_from` wording and `session_gap_minutes` value of a session gap.

    An infinite gap (`--session-gap inf`) never splits: each user's rows are one session. JSON
    has no infinity, so its value is recorded as None beside words that say so.
    """
    if math.isinf(minutes):
        return "one session per user (never split at a gap)", None
    return f"split at gaps of more than {minutes:g} minutes", minutes


class ImportFormatError(LogFormatError):
    """An input file of an importer is malformed; the message names file, row and column.

    Rows are 1-based data rows (CSV: not counting the header, so row N is line N + 1).
    A subclass of `LogFormatError`, hence of `ValueError`.
    """


def fail(file: str | Path, row: int | None, column: str | None, problem: str) -> ImportFormatError:
    """Build an ImportFormatError `"FILE, row R, column 'C': problem"` (row is 1-based)."""
    where = str(file)
    if row is not None:
        where += f", row {row}"
    if column is not None:
        where += f", column '{column}'"
    return ImportFormatError(f"{where}: {problem}")


def is_missing(value: Any) -> bool:
    """True for None, NaN/NaT and pandas NA (but not for lists or arrays)."""
    if value is None:
        return True
    if isinstance(value, (list, tuple, np.ndarray)):
        return False
    try:
        return bool(pd.isna(value))
    except (TypeError, ValueError):
        return False


def to_id(value: Any) -> str:
    """One id cell as a string: `7`, `7.0` and `"7"` all give `"7"`; missing gives `""`."""
    if is_missing(value):
        return ""
    if isinstance(value, bytes):
        value = value.decode("utf-8", "replace")
    if isinstance(value, (bool, np.bool_)):
        return str(value)
    if isinstance(value, (int, np.integer)):
        return str(int(value))
    if isinstance(value, (float, np.floating)) and float(value).is_integer():
        return str(int(value))
    return str(value).strip()


def split_cell(value: Any) -> list[Any]:
    """A list cell: a space-separated string, or a list/array (Parquet); missing gives []."""
    if isinstance(value, str):
        return value.split()
    if isinstance(value, (list, tuple, np.ndarray)):
        return list(value)
    if is_missing(value):
        return []
    return [value]


def response_code(token: Any, behaviours: BehaviourSet = DEFAULT_BEHAVIOURS) -> int | None:
    """A behaviour name (any case) or its code -> the code; None when unknown.

    With the default behaviours: `skip`/`click`/`buy` or 0/1/2.
    """
    if isinstance(token, (bool, np.bool_)):
        return None
    if isinstance(token, (int, np.integer)) or (
        isinstance(token, (float, np.floating)) and float(token).is_integer()
    ):
        code = int(token)
        return code if 0 <= code < behaviours.size else None
    if isinstance(token, bytes):
        token = token.decode("utf-8", "replace")
    if isinstance(token, str):
        word = token.strip().lower()
        if word.isdigit():
            return response_code(int(word), behaviours)
        return behaviours.names.index(word) if word in behaviours.names else None
    return None


def parse_timestamps(values: pd.Series, file: str | Path, column: str) -> np.ndarray:
    """Unix seconds or ISO 8601 datetimes (naive ones read as UTC) -> float64 unix seconds.

    Raises:
        ImportFormatError: naming the first empty or unparseable cell (1-based row).
    """
    values = values.reset_index(drop=True)
    if pd.api.types.is_datetime64_any_dtype(values.dtype):
        dt = pd.to_datetime(values, utc=True)
        out = ((dt - pd.Timestamp(0, tz="UTC")) / pd.Timedelta(seconds=1)).to_numpy(float)
    else:
        if pd.api.types.is_numeric_dtype(values.dtype) and not pd.api.types.is_bool_dtype(
            values.dtype
        ):
            num = pd.to_numeric(values, errors="coerce").astype(float)
        else:
            text = values.map(lambda v: "" if is_missing(v) else str(v).strip())
            num = pd.to_numeric(text.where(text != "", None), errors="coerce").astype(float)
            rest = num.isna() & (text != "")
            if rest.any():
                dt = pd.to_datetime(text[rest], utc=True, format="ISO8601", errors="coerce")
                num[rest] = (dt - pd.Timestamp(0, tz="UTC")) / pd.Timedelta(seconds=1)
        out = num.to_numpy(float)
    bad = ~np.isfinite(out)
    if bad.any():
        r = int(np.argmax(bad))
        raw = values.iloc[r]
        if is_missing(raw) or str(raw).strip() == "":
            raise fail(file, r + 1, column, "timestamp is empty")
        raise fail(
            file,
            r + 1,
            column,
            f"cannot parse {raw!r} as unix seconds or an ISO 8601 datetime",
        )
    if len(out) and np.nanmedian(out) > 1e11:
        logger.warning(
            "%s: column '%s' looks like milliseconds; timestamps are read as unix seconds, "
            "so session gaps will be 1000 times too short",
            file,
            column,
        )
    return out


def require_columns(df: pd.DataFrame, columns: Iterable[str], file: str | Path) -> None:
    """Raise ImportFormatError naming the first required column that is missing."""
    for col in columns:
        if col not in df.columns:
            raise fail(
                file,
                None,
                col,
                f"required column is missing (columns: {list(map(str, df.columns))})",
            )


def read_table(path: str | Path) -> pd.DataFrame:
    """Read a CSV (strings only, nothing turned into NaN) or Parquet (typed) input table."""
    p = Path(path)
    if not p.exists():
        raise FileNotFoundError(f"{path}: no such file")
    if p.is_dir():
        raise ImportFormatError(f"{path}: is a directory, expected a CSV or Parquet file")
    name = p.name.lower()
    if name.endswith((".parquet", ".pq")):
        try:
            return pq.read_table(p).to_pandas()
        except Exception as exc:  # pyarrow raises several types for corrupt files
            raise ImportFormatError(f"{path}: not a readable Parquet file ({exc})") from None
    if name.endswith((".csv", ".csv.gz", ".txt")):
        try:
            return pd.read_csv(
                p, dtype=str, keep_default_na=False, na_filter=False, encoding="utf-8-sig"
            )
        except pd.errors.EmptyDataError:
            raise ImportFormatError(f"{path}: the file is empty (expected a header row)") from None
        except (pd.errors.ParserError, UnicodeDecodeError) as exc:
            msg = str(exc).strip().splitlines()[0]
            fields = re.search(r"Expected (\d+) fields in line (\d+), saw (\d+)", msg)
            if fields:  # pandas counts CSV lines; errors here name data rows (line - 1)
                want, line, saw = (int(g) for g in fields.groups())
                raise ImportFormatError(
                    f"{path}, row {line - 1}: {saw} fields where the header has {want} (a comma "
                    "inside a value needs quotes)"
                ) from None
            raise ImportFormatError(f"{path}: not a readable CSV file ({msg})") from None
        except (EOFError, OSError, zlib.error) as exc:  # a cut or corrupt .gz
            raise ImportFormatError(f"{path}: not a readable compressed file ({exc})") from None
    raise ImportFormatError(f"{path}: unknown file type (expected .csv, .csv.gz or .parquet)")


def session_numbers(
    users: Sequence[str] | np.ndarray, times: np.ndarray, gap_seconds: float
) -> np.ndarray:
    """Per-row session number within its user, for rows sorted by (user, time).

    A row starts a new session when its user differs from the previous row's, or when it comes
    strictly more than `gap_seconds` after the previous row.
    """
    user_arr = np.asarray(users, dtype=object)
    times = np.asarray(times, dtype=float)
    n = len(user_arr)
    if n == 0:
        return np.zeros(0, dtype=np.int64)
    new_user = np.ones(n, dtype=bool)
    new_user[1:] = user_arr[1:] != user_arr[:-1]
    new_session = new_user.copy()
    new_session[1:] |= (times[1:] - times[:-1]) > gap_seconds
    counter = np.cumsum(new_session)
    first_of_user = np.maximum.accumulate(np.where(new_user, np.arange(n), 0))
    return (counter - counter[first_of_user]).astype(np.int64)


def finish_steps(slates: pd.DataFrame) -> pd.DataFrame:
    """Number the steps of a slates table and set `leave`.

    `slates` has columns user_id, session_id, time (unix seconds), order (a tie-breaker, e.g.
    the input row), items and responses. Sessions come grouped by user (users in order of first appearance), then by start time;
    steps are numbered 0.. by (time, order) within a session, and the last step of every
    session has leave=True.
    """
    df = slates.copy()
    df["_user_first"] = df.groupby("user_id", sort=False)["order"].transform("min")
    df["_session_start"] = df.groupby("session_id", sort=False)["time"].transform("min")
    df = df.sort_values(
        ["_user_first", "_session_start", "session_id", "time", "order"], kind="stable"
    ).reset_index(drop=True)
    df["step"] = df.groupby("session_id", sort=False).cumcount().astype(np.int32)
    df["leave"] = ~df["session_id"].duplicated(keep="last")
    return df[list(STEP_COLUMNS)]


def truncate_slates(
    items: list[list[str]], responses: list[list[int]], file: str | Path, rows: Sequence[int]
) -> int:
    """Cut slates longer than MAX_SLATE_ITEMS in place; log one warning; return how many."""
    cut = [i for i, its in enumerate(items) if len(its) > MAX_SLATE_ITEMS]
    for i in cut:
        items[i] = items[i][:MAX_SLATE_ITEMS]
        responses[i] = responses[i][:MAX_SLATE_ITEMS]
    if cut:
        logger.warning(
            "%s: %d slate(s) longer than %d items were truncated to their first %d items "
            "(first at row %d)",
            file,
            len(cut),
            MAX_SLATE_ITEMS,
            MAX_SLATE_ITEMS,
            rows[cut[0]],
        )
    return len(cut)


def items_with_missing(items: pd.DataFrame, referenced: Iterable[str]) -> tuple[pd.DataFrame, int]:
    """Append rows (empty title/category, NaN price) for referenced ids missing from items."""
    known = set(items["item_id"].tolist())
    missing = list(dict.fromkeys(i for i in referenced if i not in known))
    if missing:
        extra = pd.DataFrame({"item_id": missing, "title": "", "category": "", "price": np.nan})
        for col in items.columns:
            if col not in extra.columns:
                extra[col] = np.nan if pd.api.types.is_numeric_dtype(items[col].dtype) else ""
        items = pd.concat([items, extra[items.columns]], ignore_index=True)
    return items.reset_index(drop=True), len(missing)


def users_with_missing(users: pd.DataFrame, referenced: Iterable[str]) -> tuple[pd.DataFrame, int]:
    """Append rows (empty profile fields) for referenced user ids missing from users."""
    known = set(users["user_id"].tolist())
    missing = list(dict.fromkeys(u for u in referenced if u not in known))
    if missing:
        extra = pd.DataFrame({c: "" for c in users.columns}, index=range(len(missing)))
        extra["user_id"] = missing
        users = pd.concat([users, extra], ignore_index=True)
    return users.reset_index(drop=True), len(missing)


def summarize(logs: InteractionLogs) -> dict:
    """Counts and rates of an imported log set (slates may have any length).

    `click_rate` counts any engagement per shown item, `buy_rate` engagement past a click.
    """
    steps = logs.steps
    lengths = steps["items"].map(len).to_numpy()
    resp = (
        np.concatenate([np.asarray(r, dtype=np.int64) for r in steps["responses"]])
        if len(steps)
        else np.zeros(0, dtype=np.int64)
    )
    per_session = steps.groupby("session_id", sort=False).size()
    return {
        "users": int(steps["user_id"].nunique()),
        "sessions": len(per_session),
        "steps": len(steps),
        "shown_items": len(resp),
        "catalog_items": len(logs.items),
        "click_rate": float(engaged(resp).mean()) if len(resp) else 0.0,
        "buy_rate": float((resp >= DEEPER).mean()) if len(resp) else 0.0,
        "mean_slate_length": float(lengths.mean()) if len(lengths) else 0.0,
        "max_slate_length": int(lengths.max()) if len(lengths) else 0,
        "mean_session_steps": float(per_session.mean()) if len(per_session) else 0.0,
        "max_session_steps": int(per_session.max()) if len(per_session) else 0,
    }
