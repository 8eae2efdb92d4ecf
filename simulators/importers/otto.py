"""Import OTTO sessions (otto-de/recsys-dataset JSON lines) as *proxy* slate logs.

Each line is `{"session": int, "events": [{"aid": int, "ts": ms, "type": ...}]}` with type
`clicks`, `carts` or `orders`. OTTO logs what users did, not what they were shown, so:

- One OTTO session is one user (`user_id` = the session number) and, by default, one log
  session (`session_id` = the same number); `session_gap_minutes` optionally splits it at gaps.
- Events are taken in timestamp order; events with the same timestamp (to the millisecond,
  e.g. the items of one order) form one slate, every other event is a slate of one item.
  An item that appears twice in one slate is kept once with its strongest response.
- Behaviours: skip, click, cart, buy (`OTTO_BEHAVIOURS`); clicks -> click, carts -> cart,
  orders -> buy, each deeper level implying the ones before. There are no skips: OTTO has no
  impressions, so every shown item was interacted with (the click rate is 1).
- Items: every aid seen, as a string, with no title, category or price (OTTO has none).

Data: CC BY 4.0, attribute "OTTO (otto-de/recsys-dataset)".
"""

from __future__ import annotations

import gzip
import json
import math
import zlib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from simulators.behaviours import BehaviourSet
from simulators.importers._common import (
    check_session_gap,
    fail,
    finish_steps,
    gap_sessions,
    session_numbers,
    summarize,
)
from simulators.logs import InteractionLogs

OTTO_BEHAVIOURS = BehaviourSet(("skip", "click", "cart", "buy"))
"""OTTO's funnel: a cart implies a click, an order (buy) a cart."""
EVENT_RESPONSES: dict[str, int] = {
    "clicks": OTTO_BEHAVIOURS.code("click"),
    "carts": OTTO_BEHAVIOURS.code("cart"),
    "orders": OTTO_BEHAVIOURS.code("buy"),
}
LICENCE = 'OTTO recsys-dataset, CC BY 4.0; attribute "OTTO (otto-de/recsys-dataset)".'


def _int(value: Any) -> int | None:
    if isinstance(value, bool):
        return None
    if isinstance(value, int):
        return value
    if isinstance(value, float) and value.is_integer():
        return int(value)
    if isinstance(value, str) and value.strip().isdigit():
        return int(value)
    return None


def _lines(path: Path) -> Iterator[tuple[int, str]]:
    """(1-based line number, text) of a .jsonl or .jsonl.gz file.

    A file that is not valid gzip or UTF-8, or ends early, raises ImportFormatError naming the
    file and the line.
    """
    opener = gzip.open if path.name.endswith(".gz") else open
    line_no = 0
    try:
        with opener(path, "rt", encoding="utf-8") as fh:
            for line_no, line in enumerate(fh, start=1):
                yield line_no, line
    except (OSError, EOFError, zlib.error) as exc:  # gzip.BadGzipFile is an OSError
        raise fail(
            path,
            line_no + 1,
            None,
            f"not a readable {'gzip ' if path.name.endswith('.gz') else ''}file ({exc})",
        ) from None
    except UnicodeDecodeError as exc:
        raise fail(
            path, line_no + 1, None, f"not UTF-8 text ({exc.reason} at byte {exc.start})"
        ) from None


def _events(path: Path) -> list[tuple[str, int, list[tuple[int, int, int]]]]:
    """[(session, line, [(ts_ms, aid, response), ...]), ...]; errors name line and field."""
    sessions = []
    seen: dict[str, int] = {}
    for line_no, line in _lines(path):
        if not line.strip():
            continue
        try:
            obj = json.loads(line)
        except json.JSONDecodeError as exc:
            raise fail(path, line_no, None, f"not valid JSON ({exc.msg})") from None
        if not isinstance(obj, dict):
            raise fail(path, line_no, None, "expected a JSON object with session and events")
        sid = _int(obj.get("session"))
        if sid is None:
            raise fail(path, line_no, "session", f"expected an integer, got {obj.get('session')!r}")
        key = str(sid)
        if key in seen:
            raise fail(path, line_no, "session", f"session {sid} repeats line {seen[key]}")
        seen[key] = line_no
        events = obj.get("events")
        if not isinstance(events, list) or not events:
            raise fail(path, line_no, "events", f"expected a non-empty list, got {events!r}")
        out = []
        for j, ev in enumerate(events):
            if not isinstance(ev, dict):
                raise fail(path, line_no, f"events[{j}]", f"expected an object, got {ev!r}")
            aid, ts = _int(ev.get("aid")), _int(ev.get("ts"))
            if aid is None:
                raise fail(
                    path,
                    line_no,
                    f"events[{j}].aid",
                    f"expected an integer, got {ev.get('aid')!r}",
                )
            if ts is None:
                raise fail(
                    path,
                    line_no,
                    f"events[{j}].ts",
                    f"expected integer milliseconds, got {ev.get('ts')!r}",
                )
            response = EVENT_RESPONSES.get(str(ev.get("type")))
            if response is None:
                raise fail(
                    path,
                    line_no,
                    f"events[{j}].type",
                    f"unknown event type {ev.get('type')!r} (expected clicks, carts, orders)",
                )
            out.append((ts, aid, response))
        sessions.append((key, line_no, out))
    if not sessions:
        raise fail(path, None, None, "no sessions (the file is empty)")
    return sessions


def import_otto(path: str | Path, session_gap_minutes: float | None = None) -> InteractionLogs:
    """Read an OTTO JSON-lines file (optionally gzipped) into a proxy log set.

    Args:
        path: `.jsonl` or `.jsonl.gz`, one OTTO session per line.
        session_gap_minutes: None (default) keeps every OTTO session as one log session;
            a number splits it wherever consecutive events are more than that far apart.

    Returns:
        The log set (not yet written); see the module docstring for the mapping.

    Raises:
        ImportFormatError: a malformed line, naming file, line (row) and field (column).
    """
    if session_gap_minutes is not None:
        session_gap_minutes = check_session_gap(session_gap_minutes)
        if math.isinf(session_gap_minutes):
            session_gap_minutes = None  # never split: each OTTO session stays whole
    p = Path(path)
    if not p.exists():
        raise FileNotFoundError(f"{path}: no such file")
    records: list[dict[str, object]] = []
    for key, _line, events in _events(p):
        events = sorted(events, key=lambda e: e[0])  # stable: file order among equal ts
        groups: dict[int, dict[str, int]] = {}
        for ts, aid, response in events:
            slate = groups.setdefault(ts, {})
            slate[str(aid)] = max(slate.get(str(aid), 0), response)
        times = np.array(sorted(groups), dtype=float) / 1000.0
        if session_gap_minutes is None:
            sids = [key] * len(times)
        else:
            nums = session_numbers([key] * len(times), times, session_gap_minutes * 60.0)
            sids = [f"{key}_s{n}" for n in nums]
        for t, sid, ts in zip(times, sids, sorted(groups)):
            slate = groups[ts]
            records.append(
                {
                    "user_id": key,
                    "session_id": sid,
                    "time": t,
                    "order": len(records),
                    "items": list(slate),
                    "responses": list(slate.values()),
                }
            )
    steps = finish_steps(pd.DataFrame.from_records(records))
    aids = list(dict.fromkeys(i for slate in steps["items"] for i in slate))
    items = pd.DataFrame({"item_id": aids, "title": "", "category": "", "price": np.nan})
    users = pd.DataFrame({"user_id": list(dict.fromkeys(steps["user_id"]))})
    meta = {
        "source": "otto",
        "importer": "llm-usersim import otto",
        "input": str(p),
        "proxy": True,
        "proxy_note": (
            "OTTO logs actions, not impressions: each event (or all events sharing a "
            "millisecond timestamp) is a slate of the items acted on; clicks -> click, carts "
            "-> cart, orders -> buy; there are no skips"
        ),
        "behaviours": OTTO_BEHAVIOURS.to_dict(),
        "event_responses": {k: OTTO_BEHAVIOURS.names[v] for k, v in EVENT_RESPONSES.items()},
        "sessions_from": (
            "one per OTTO session"
            if session_gap_minutes is None
            else f"OTTO sessions {gap_sessions(session_gap_minutes)[0]}"
        ),
        "session_gap_minutes": session_gap_minutes,
        "licence": LICENCE,
    }
    logs = InteractionLogs(steps=steps, items=items, users=users, meta=meta)
    logs.meta["stats"] = summarize(logs)
    return logs
