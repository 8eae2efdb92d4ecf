import json

import numpy as np
import pandas as pd
import pytest

from recsim_env.log_generation import generate
from simulators.logs import InteractionLogs, LogFormatError, read_logs, write_logs
from tests.conftest import TINY_ENV, TINY_WORLD


def _logs(seed=0, users=30):
    from simulators.parametric import ParametricUserModel

    return generate(users, "random", seed, TINY_ENV, ParametricUserModel(TINY_WORLD))


def test_same_seed_gives_identical_files_and_rows_round_trip(tmp_path):
    a = write_logs(_logs(), tmp_path / "a")
    b = write_logs(_logs(), tmp_path / "b")
    for name in ("steps.parquet", "items.parquet", "users.parquet", "meta.json"):
        assert (a / name).read_bytes() == (b / name).read_bytes(), name
    original = _logs()
    back = read_logs(a)
    assert len(back.steps) == len(original.steps)
    for col in ("user_id", "session_id", "step", "leave"):
        assert back.steps[col].tolist() == original.steps[col].tolist()
    assert [list(x) for x in back.steps["items"]] == [list(x) for x in original.steps["items"]]
    assert [list(x) for x in back.steps["responses"]] == [
        list(x) for x in original.steps["responses"]
    ]
    assert back.meta["version"] == 1 and back.meta["format"] == "llm-usersim-logs"


def test_different_seed_differs():
    assert not _logs(0).steps["responses"].map(list).equals(_logs(1).steps["responses"].map(list))


def test_variable_slate_lengths_round_trip(tmp_path):
    items = pd.DataFrame(
        {"item_id": [f"x{i}" for i in range(400)], "title": "t", "category": "c", "price": 1.0}
    )
    steps = pd.DataFrame(
        {
            "user_id": ["u", "u", "u"],
            "session_id": ["s", "s", "s"],
            "step": [0, 1, 2],
            "items": [["x1"], [f"x{i}" for i in range(300)], ["x2", "x3"]],
            "responses": [[1], [0] * 299 + [2], [0, 0]],
            "leave": [False, False, True],
        }
    )
    write_logs(InteractionLogs(steps, items, pd.DataFrame({"user_id": ["u"]})), tmp_path)
    back = read_logs(tmp_path)
    assert [len(x) for x in back.steps["items"]] == [1, 300, 2]


@pytest.mark.parametrize(
    ("mutate", "match"),
    [
        (
            lambda s: s.assign(responses=[[0, 1], *s["responses"].tolist()[1:]]),
            r"row 0, column 'responses'",
        ),
        (
            lambda s: s.assign(items=[["nope"] * 3, *s["items"].tolist()[1:]]),
            r"row 0, column 'items': item 'nope'",
        ),
        (lambda s: s.assign(step=[-1, *s["step"].tolist()[1:]]), r"row 0, column 'step'"),
        (lambda s: s.drop(columns=["leave"]), r"column 'leave': required column is missing"),
        (
            lambda s: s.assign(responses=[[0, 7, 0], *s["responses"].tolist()[1:]]),
            r"response code 7",
        ),
    ],
)
def test_malformed_logs_name_file_row_and_column(tmp_path, mutate, match):
    logs = _logs()
    logs.steps = mutate(logs.steps)
    with pytest.raises(LogFormatError, match=match) as exc:
        write_logs(logs, tmp_path)
    assert "steps.parquet" in str(exc.value)
    assert not (tmp_path / "meta.json").exists()


def test_truncated_or_interrupted_files_never_read_as_valid(tmp_path):
    d = write_logs(_logs(), tmp_path / "ok")
    data = (d / "steps.parquet").read_bytes()
    (d / "steps.parquet").write_bytes(data[: len(data) // 2])
    with pytest.raises(LogFormatError, match=r"steps\.parquet: not a readable Parquet file"):
        read_logs(d)
    d2 = write_logs(_logs(), tmp_path / "interrupted")
    (d2 / "meta.json").unlink()  # what a crash before the last write leaves
    with pytest.raises(LogFormatError, match="interrupted write"):
        read_logs(d2)
    d3 = write_logs(_logs(), tmp_path / "version")
    meta = json.loads((d3 / "meta.json").read_text())
    meta["version"] = 99
    (d3 / "meta.json").write_text(json.dumps(meta))
    with pytest.raises(LogFormatError, match="version 99"):
        read_logs(d3)


def test_wrongly_typed_column_is_rejected(tmp_path):
    d = write_logs(_logs(), tmp_path)
    steps = pd.read_parquet(d / "steps.parquet")
    steps["leave"] = steps["leave"].map(lambda v: "yes" if v else "no")
    steps.to_parquet(d / "steps.parquet", index=False)
    with pytest.raises(LogFormatError, match=r"row 0, column 'leave': expected a boolean"):
        read_logs(d)


def test_summary_statistics_are_sane():
    from recsim_env.log_generation import summarize

    stats = summarize(_logs(users=200))
    assert 0 < stats["buy_rate"] < stats["click_rate"] < 0.5
    assert stats["mean_session_length"] > 1
    assert np.argmax(stats["click_rate_per_position"]) == 0
