"""Logs are validated once, on read and before write: every malformed case names its place."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from simulators.log_validation import LogFormatError, validate_log_tables
from simulators.logs import InteractionLogs, read_logs, write_logs


def _good() -> InteractionLogs:
    items = pd.DataFrame(
        {
            "item_id": ["a", "b", "c"],
            "title": ["A", "B", "C"],
            "category": "k",
            "price": [1.0, 2.0, np.nan],
        }
    )
    users = pd.DataFrame({"user_id": ["u1", "u2"], "age": ["20", "30"]})
    steps = pd.DataFrame(
        {
            "user_id": ["u1", "u1", "u1", "u2", "u2"],
            "session_id": ["s1", "s1", "s1", "s2", "s2"],
            "step": np.array([0, 1, 2, 0, 1], dtype=np.int32),
            "items": [["a", "b"], ["c"], ["a"], ["b", "c"], ["a"]],
            "responses": [[0, 1], [2], [0], [1, 0], [0]],
            "leave": [False, False, True, False, False],
        }
    )
    return InteractionLogs(steps, items, users, meta={})


def _steps(**changes: list) -> InteractionLogs:
    logs = _good()
    return InteractionLogs(logs.steps.assign(**changes), logs.items, logs.users, logs.meta)


CASES = [
    # (what is wrong, logs, the message must contain)
    (
        "string step column",
        _steps(step=["0", "1", "2", "0", "1"]),
        "row 0, column 'step': expected an integer",
    ),
    ("float step", _steps(step=[0.0, 1.5, 2.0, 0.0, 1.0]), "column 'step'"),
    ("negative step", _steps(step=[-1, 1, 2, 0, 1]), "row 0, column 'step'"),
    (
        "duplicate step",
        _steps(step=[0, 1, 1, 0, 1]),
        "row 2, column 'step': step 1 of session 's1' appears twice",
    ),
    (
        "gap in steps",
        _steps(step=[0, 1, 3, 0, 1]),
        "row 2, column 'step': session 's1' has 3 steps but a step 3",
    ),
    (
        "leave mid-session",
        _steps(leave=[True, False, False, False, False]),
        "row 0, column 'leave': session 's1' leaves at step 0",
    ),
    (
        "two users in a session",
        _steps(user_id=["u1", "u2", "u1", "u2", "u2"]),
        "row 1, column 'user_id': session 's1' belongs to user 'u1'",
    ),
    (
        "float response",
        _steps(responses=[[0, 1.5], [2], [0], [1, 0], [0]]),
        "row 0, column 'responses': response code 1.5",
    ),
    (
        "response outside the vocabulary",
        _steps(responses=[[0, 1], [3], [0], [1, 0], [0]]),
        "row 1, column 'responses': response code 3",
    ),
    (
        "negative response",
        _steps(responses=[[0, 1], [2], [-1], [1, 0], [0]]),
        "row 2, column 'responses'",
    ),
    (
        "bool response",
        _steps(responses=[[0, True], [2], [0], [1, 0], [0]]),
        "row 0, column 'responses'",
    ),
    (
        "responses shorter than items",
        _steps(responses=[[0], [2], [0], [1, 0], [0]]),
        "row 0, column 'responses': expected a list of 2",
    ),
    (
        "responses not a list",
        _steps(responses=["0 1", [2], [0], [1, 0], [0]]),
        "row 0, column 'responses'",
    ),
    (
        "unknown item",
        _steps(items=[["a", "zz"], ["c"], ["a"], ["b", "c"], ["a"]]),
        "row 0, column 'items': item 'zz'",
    ),
    (
        "empty slate",
        _steps(
            items=[["a", "b"], [], ["a"], ["b", "c"], ["a"]],
            responses=[[0, 1], [], [0], [1, 0], [0]],
        ),
        "row 1, column 'items'",
    ),
    (
        "unknown user",
        _steps(user_id=["u1", "u1", "u1", "u9", "u9"]),
        "row 3, column 'user_id': user 'u9'",
    ),
    (
        "empty session id",
        _steps(session_id=["s1", "s1", "s1", "", ""]),
        "row 3, column 'session_id'",
    ),
    ("non-bool leave", _steps(leave=[0, 0, 1, 0, 0]), "row 0, column 'leave': expected a boolean"),
]


@pytest.mark.parametrize(("case", "logs", "match"), CASES, ids=[c[0] for c in CASES])
def test_every_malformed_step_table_is_refused_with_its_place(case, logs, match) -> None:
    with pytest.raises(LogFormatError) as exc:
        validate_log_tables(logs, "LOGS")
    assert "LOGS/steps.parquet" in str(exc.value)
    assert match in str(exc.value), str(exc.value)


@pytest.mark.parametrize(
    ("table", "change", "match"),
    [
        (
            "items",
            {"item_id": ["a", "a", "c"]},
            "items.parquet, row 1, column 'item_id': duplicate id 'a'",
        ),
        ("items", {"price": [1.0, float("inf"), 2.0]}, "items.parquet, row 1, column 'price'"),
        ("items", {"price": [1.0, -2.0, 2.0]}, "items.parquet, row 1, column 'price'"),
        ("items", {"price": [1.0, "cheap", 2.0]}, "items.parquet, row 1, column 'price'"),
        (
            "users",
            {"user_id": ["u1", "u1"]},
            "users.parquet, row 1, column 'user_id': duplicate id",
        ),
    ],
)
def test_malformed_items_and_users_are_refused(table, change, match) -> None:
    logs = _good()
    setattr(logs, table, getattr(logs, table).assign(**change))
    with pytest.raises(LogFormatError, match=match.replace("(", r"\(")):
        validate_log_tables(logs, "LOGS")


def test_a_good_log_set_passes_and_round_trips(tmp_path) -> None:
    validate_log_tables(_good())
    out = write_logs(_good(), tmp_path / "logs")
    back = read_logs(out)
    assert back.steps["step"].tolist() == [0, 1, 2, 0, 1]


def test_a_malformed_log_set_is_never_written(tmp_path) -> None:
    with pytest.raises(LogFormatError):
        write_logs(_steps(step=[0, 1, 1, 0, 1]), tmp_path / "logs")
    assert not (tmp_path / "logs" / "meta.json").exists()


def test_validation_of_a_large_log_is_fast() -> None:
    import time

    n = 100_000
    items = pd.DataFrame({"item_id": [f"i{i}" for i in range(500)]})
    users = pd.DataFrame({"user_id": [f"u{i}" for i in range(n // 10)]})
    user = np.repeat(np.arange(n // 10), 10)
    steps = pd.DataFrame(
        {
            "user_id": [f"u{u}" for u in user],
            "session_id": [f"s{u}" for u in user],
            "step": np.tile(np.arange(10), n // 10).astype(np.int32),
            "items": [[f"i{(j * 7 + k) % 500}" for k in range(5)] for j in range(n)],
            "responses": [[0, 1, 0, 0, 2]] * n,
            "leave": np.tile(np.arange(10) == 9, n // 10),
        }
    )
    t0 = time.perf_counter()
    validate_log_tables(InteractionLogs(steps, items, users, {}))
    assert time.perf_counter() - t0 < 20  # generous on a shared machine; about 2 s quiet
