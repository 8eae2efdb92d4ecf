"""Import your own impression logs: one row per shown slate, with a response per item.

Input (CSV or Parquet), one row per slate:

- `user_id`: any id (read as a string).
- `timestamp`: unix seconds or an ISO 8601 datetime (naive datetimes are read as UTC).
- `items`: item ids in display order; a space-separated string, or a list in Parquet.
- `responses`: one per item, same form as `items`: a behaviour name (any case) or its code;
  `skip`/`click`/`buy` or `0`/`1`/`2` by default. With your own behaviours
  (`behaviours=["click", "like", "follow"]`, shallowest first; no engagement is `skip`) the
  labels are those names. Or, with `behaviour_columns=True`, no `responses` column but one
  column per behaviour (`click`, `like`, `follow`), each a 0/1 flag per item: an item's
  response is the deepest behaviour flagged (a deeper level implies the ones before).
- `session_id` (optional): when absent, a user's rows are split into sessions wherever
  consecutive rows are more than 30 minutes apart (`session_gap_minutes`).

Optional ITEMS table: `item_id`, `title`, `category`, `price` (extra columns are kept).
Optional USERS table: `user_id` plus any profile columns (strings; lists joined with `|`).

Example:
    >>> logs = import_impressions("impressions.csv", items_path="items.csv")  # doctest: +SKIP
    >>> write_logs(logs, "logs/mine")  # doctest: +SKIP
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from simulators.behaviours import DEFAULT_BEHAVIOURS, BehaviourSet
from simulators.importers._common import (
    DEFAULT_SESSION_GAP_MINUTES,
    MAX_SLATE_ITEMS,
    check_session_gap,
    fail,
    finish_steps,
    gap_sessions,
    is_missing,
    items_with_missing,
    parse_timestamps,
    read_table,
    require_columns,
    response_code,
    session_numbers,
    split_cell,
    summarize,
    to_id,
    truncate_slates,
    users_with_missing,
)
from simulators.logs import InteractionLogs
from simulators.wording import plural

REQUIRED_COLUMNS = ("user_id", "timestamp", "items", "responses")


def _ids(df: pd.DataFrame, file: str | Path, column: str) -> list[str]:
    """A non-empty, duplicate-free id column (1-based rows in errors)."""
    ids = [to_id(v) for v in df[column]]
    first: dict[str, int] = {}
    for r, value in enumerate(ids, start=1):
        if not value:
            raise fail(file, r, column, "id is empty")
        if value in first:
            raise fail(file, r, column, f"duplicate id {value!r} (first at row {first[value]})")
        first[value] = r
    return ids


def _text(value: Any) -> str:
    if is_missing(value):
        return ""
    if isinstance(value, (list, tuple, np.ndarray)):
        return "|".join(to_id(v) for v in value if not is_missing(v))
    return to_id(value)


def read_items(path: str | Path) -> pd.DataFrame:
    """An ITEMS table: `item_id` (required), `title`, `category`, `price`, extra columns kept."""
    df = read_table(path)
    require_columns(df, ["item_id"], path)
    out = df.copy()
    out["item_id"] = _ids(df, path, "item_id")
    for col in ("title", "category"):
        out[col] = df[col].map(_text) if col in df.columns else ""
    if "price" in df.columns:
        raw = df["price"]
        text = raw.map(lambda v: "" if is_missing(v) else str(v).strip())
        price = pd.to_numeric(text.where(text != "", None), errors="coerce").astype(float)
        bad = (price.isna() & (text != "")) | (price < 0) | np.isinf(price)
        if bad.any():
            r = int(np.argmax(bad.to_numpy()))
            raise fail(path, r + 1, "price", f"expected a non-negative number, got {raw.iloc[r]!r}")
        out["price"] = price
    else:
        out["price"] = np.nan
    first = ["item_id", "title", "category", "price"]
    return out[first + [c for c in out.columns if c not in first]].reset_index(drop=True)


def read_users(path: str | Path) -> pd.DataFrame:
    """A USERS table: `user_id` (required) plus profile columns, all as strings."""
    df = read_table(path)
    require_columns(df, ["user_id"], path)
    out = pd.DataFrame({"user_id": _ids(df, path, "user_id")})
    for col in df.columns:
        if col != "user_id":
            out[str(col)] = df[col].map(_text).to_numpy()
    return out


def behaviour_set(names: BehaviourSet | Sequence[str] | str | None) -> BehaviourSet:
    """A behaviour set from engagement levels, shallowest first (`skip` is added in front).

    Accepts a BehaviourSet, a list of names or one string of names separated by commas or
    spaces (`"click like follow"`); None gives skip, click, buy.

    Raises:
        ValueError: a name that is not allowed, a repeat, or no engagement level.
    """
    if names is None:
        return DEFAULT_BEHAVIOURS
    if isinstance(names, BehaviourSet):
        return names
    if isinstance(names, str):
        names = names.replace(",", " ").split()
    levels = [str(n).strip().lower() for n in names if str(n).strip()]
    if levels and levels[0] == "skip":
        levels = levels[1:]
    if not levels:
        raise ValueError("behaviours: give at least one engagement level, e.g. 'click like'")
    return BehaviourSet(("skip", *levels))


def _flag(value: Any) -> bool | None:
    """A 0/1 (true/false, yes/no) flag cell; None when it is neither."""
    if isinstance(value, (bool, np.bool_)):
        return bool(value)
    word = str(value).strip().lower()
    if word in ("1", "1.0", "true", "yes", "y"):
        return True
    if word in ("0", "0.0", "false", "no", "n"):
        return False
    return None


def _codes(tokens: list[Any], behaviours: BehaviourSet, path: str | Path, row: int) -> list[int]:
    """Behaviour codes of one row's `responses` labels (errors name the row)."""
    allowed = ", ".join(behaviours.names)
    codes = []
    for tok in tokens:
        code = response_code(tok, behaviours)
        if code is None:
            raise fail(
                path,
                row,
                "responses",
                f"unknown response {tok!r} (expected {allowed} or 0..{behaviours.deepest}; "
                "declare other behaviours with --behaviours)",
            )
        codes.append(code)
    return codes


def _flag_codes(
    df: pd.DataFrame, behaviours: BehaviourSet, path: str | Path, n_items: list[int]
) -> list[list[int]]:
    """Codes from one 0/1 column per behaviour: the deepest level flagged per item."""
    levels = list(behaviours.names[1:])
    require_columns(df, levels, path)
    out = [[0] * n for n in n_items]
    for code, name in enumerate(levels, start=1):
        for r, (cell, n) in enumerate(zip(df[name], n_items), start=1):
            flags = split_cell(cell)
            if len(flags) != n:
                raise fail(path, r, name, f"{plural(len(flags), 'flag')} for {plural(n, 'item')}")
            for j, f in enumerate(flags):
                flag = _flag(f)
                if flag is None:
                    raise fail(path, r, name, f"expected a 0/1 flag per item, got {f!r}")
                if flag:
                    out[r - 1][j] = code
    return out


def import_impressions(
    path: str | Path,
    items_path: str | Path | None = None,
    users_path: str | Path | None = None,
    session_gap_minutes: float = DEFAULT_SESSION_GAP_MINUTES,
    behaviours: BehaviourSet | Sequence[str] | str | None = None,
    behaviour_columns: bool = False,
) -> InteractionLogs:
    """Read an impressions table (plus optional ITEMS and USERS tables) into a log set.

    Args:
        path: CSV or Parquet file, one row per shown slate (see the module docstring).
        items_path: optional ITEMS table; items referenced but missing get an empty title.
        users_path: optional USERS table; without it the users table has only `user_id`.
        session_gap_minutes: without a `session_id` column, a gap strictly longer than this
            between consecutive rows of a user starts a new session.
        behaviours: the engagement levels, shallowest first (`behaviour_set`); default
            click, buy. The log set stores them (meta.json).
        behaviour_columns: read one 0/1 column per behaviour instead of `responses`.

    Returns:
        The log set, not yet written (pass it to `write_logs`). Steps are numbered 0.. within a
        session in timestamp order (file order among equal timestamps); `leave` is True on the
        last step of every session; slates longer than `MAX_SLATE_ITEMS` are truncated.

    Raises:
        ImportFormatError: a malformed cell, naming file, 1-based data row and column.
    """
    session_gap_minutes = check_session_gap(session_gap_minutes)
    sessions_from, gap_value = gap_sessions(session_gap_minutes)
    vocab = behaviour_set(behaviours)
    df = read_table(path)
    required = [c for c in REQUIRED_COLUMNS if not (behaviour_columns and c == "responses")]
    require_columns(df, required, path)
    if len(df) == 0:
        raise fail(path, None, None, "no data rows")
    has_sessions = "session_id" in df.columns
    times = parse_timestamps(df["timestamp"], path, "timestamp")

    users: list[str] = []
    sessions: list[str] = []
    items: list[list[str]] = []
    responses: list[list[int]] = []
    session_cells = df["session_id"] if has_sessions else [None] * len(df)
    response_cells = [None] * len(df) if behaviour_columns else df["responses"]
    for r, (u, its, resp, sess) in enumerate(
        zip(df["user_id"], df["items"], response_cells, session_cells), start=1
    ):
        uid = to_id(u)
        if not uid:
            raise fail(path, r, "user_id", "user id is empty")
        ids = [to_id(x) for x in split_cell(its)]
        if not ids:
            raise fail(path, r, "items", "no items (expected item ids separated by spaces)")
        if not all(ids):
            raise fail(path, r, "items", f"empty item id in {its!r}")
        if not behaviour_columns:
            tokens = split_cell(resp)
            if len(tokens) != len(ids):
                raise fail(
                    path,
                    r,
                    "responses",
                    f"{plural(len(tokens), 'response')} for {plural(len(ids), 'item')}",
                )
            responses.append(_codes(tokens, vocab, path, r))
        if has_sessions:
            sid = to_id(sess)
            if not sid:
                raise fail(path, r, "session_id", "session id is empty")
            sessions.append(sid)
        users.append(uid)
        items.append(ids)
    if behaviour_columns:
        responses = _flag_codes(df, vocab, path, [len(i) for i in items])
    rows = list(range(1, len(df) + 1))
    truncated = truncate_slates(items, responses, path, rows)

    order = np.arange(len(df))
    if has_sessions:
        owner: dict[str, tuple[str, int]] = {}
        for r, (uid, sid) in enumerate(zip(users, sessions), start=1):
            if owner.setdefault(sid, (uid, r))[0] != uid:
                first_user, first_row = owner[sid]
                raise fail(
                    path,
                    r,
                    "session_id",
                    f"session {sid!r} belongs to user {first_user!r} (row {first_row}), "
                    f"not {uid!r}; session ids must be unique across users",
                )
        session_ids = np.asarray(sessions, dtype=object)
    else:
        user_codes, _ = pd.factorize(pd.Series(users, dtype=object))
        idx = np.lexsort((order, times, user_codes))
        sorted_users = np.asarray(users, dtype=object)[idx]
        numbers = session_numbers(sorted_users, times[idx], session_gap_minutes * 60.0)
        session_ids = np.empty(len(df), dtype=object)
        session_ids[idx] = [f"{u}_s{n}" for u, n in zip(sorted_users, numbers)]

    slates = pd.DataFrame(
        {
            "user_id": users,
            "session_id": session_ids,
            "time": times,
            "order": order,
            "items": items,
            "responses": responses,
        }
    )
    steps = finish_steps(slates)

    item_table = (
        read_items(items_path)
        if items_path is not None
        else pd.DataFrame({"item_id": [], "title": [], "category": [], "price": []})
    )
    item_table, items_missing = items_with_missing(
        item_table, (i for slate in steps["items"] for i in slate)
    )
    user_table = read_users(users_path) if users_path is not None else pd.DataFrame({"user_id": []})
    user_table, users_missing = users_with_missing(user_table, steps["user_id"])
    meta = {
        "source": "impressions",
        "importer": "llm-usersim import impressions",
        "input": str(path),
        "items_file": None if items_path is None else str(items_path),
        "users_file": None if users_path is None else str(users_path),
        "proxy": False,
        "sessions_from": "session_id column" if has_sessions else sessions_from,
        "session_gap_minutes": None if has_sessions else gap_value,
        "max_slate_items": MAX_SLATE_ITEMS,
        "behaviours": vocab.to_dict(),
        "responses_from": (
            f"one 0/1 column per behaviour ({', '.join(vocab.names[1:])})"
            if behaviour_columns
            else "the responses column"
        ),
        "truncated_slates": truncated,
        "items_without_metadata": items_missing,
        "users_without_profile": users_missing if users_path is not None else None,
    }
    logs = InteractionLogs(steps=steps, items=item_table, users=user_table, meta=meta)
    logs.meta["stats"] = summarize(logs)
    return logs
