"""Importers of real data: impressions, MovieLens, Open Bandit, OTTO (fixtures in tests/fixtures)."""

from __future__ import annotations

import gzip
import json
import logging
import math
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from simulators.base import Response
from simulators.importers import (
    MAX_SLATE_ITEMS,
    ImportFormatError,
    import_impressions,
    import_movielens,
    import_open_bandit,
    import_otto,
    stars_to_response,
)
from simulators.logs import LogFormatError, read_logs, write_logs

FIXTURES = Path(__file__).parent / "fixtures"
IMPRESSIONS = FIXTURES / "impressions"
MOVIELENS = FIXTURES / "movielens"
OPEN_BANDIT = FIXTURES / "open_bandit"
OTTO = FIXTURES / "otto" / "train_20sessions.jsonl"
HEADER = "user_id,timestamp,items,responses\n"


def _round_trip(logs, tmp_path: Path):
    out = write_logs(logs, tmp_path / "logs")
    back = read_logs(out)
    assert back.steps["step"].tolist() == logs.steps["step"].tolist()
    assert back.steps["leave"].tolist() == logs.steps["leave"].tolist()
    assert back.steps["session_id"].tolist() == logs.steps["session_id"].tolist()
    assert [list(x) for x in back.steps["items"]] == [list(x) for x in logs.steps["items"]]
    assert [[int(v) for v in x] for x in back.steps["responses"]] == [
        [int(v) for v in x] for x in logs.steps["responses"]
    ]
    assert back.items["item_id"].tolist() == logs.items["item_id"].tolist()
    assert back.users["user_id"].tolist() == logs.users["user_id"].tolist()
    return back


def _check_sessions(steps: pd.DataFrame) -> None:
    """Steps 0..n-1 within every session, leave only on the last."""
    for _, s in steps.groupby("session_id", sort=False):
        assert s["step"].tolist() == list(range(len(s)))
        assert s["leave"].tolist() == [False] * (len(s) - 1) + [True]
        assert s["user_id"].nunique() == 1


def _write(tmp_path: Path, body: str, name: str = "data.csv") -> Path:
    path = tmp_path / name
    path.write_text(HEADER + body)
    return path


# ---------------------------------------------------------------------------- impressions
def test_impressions_fixture_sessions_items_users(tmp_path):
    logs = import_impressions(
        IMPRESSIONS / "impressions.csv",
        items_path=IMPRESSIONS / "items.csv",
        users_path=IMPRESSIONS / "users.csv",
    )
    steps = logs.steps
    _check_sessions(steps)
    # alice: 09:00, 09:05 | 12:00 (gap > 30 min); bob: 09:00, 09:30 (exactly 30 min: same) | 10:01
    assert steps["session_id"].tolist() == [
        "alice_s0",
        "alice_s0",
        "alice_s1",
        "bob_s0",
        "bob_s0",
        "bob_s1",
    ]
    assert steps["items"].tolist()[0] == ["i1", "i2", "i3"]
    assert steps["responses"].tolist()[0] == [Response.SKIP, Response.CLICK, Response.SKIP]
    assert steps["responses"].tolist()[1] == [Response.SKIP, Response.BUY]
    assert steps["responses"].tolist()[5] == [Response.BUY, Response.CLICK]
    items = logs.items.set_index("item_id")
    assert items.loc["i2", "title"] == "Wool coat, navy"
    assert math.isnan(items.loc["i3", "price"])
    assert items.loc["i6", "title"] == ""  # referenced, not in ITEMS
    users = logs.users.set_index("user_id")
    assert users.loc["alice", "interests"] == "coats|shoes"
    assert users.loc["bob", "interests"] == ""  # not in USERS
    assert logs.meta["proxy"] is False and logs.meta["items_without_metadata"] == 1
    back = _round_trip(logs, tmp_path)
    assert back.items.set_index("item_id").loc["i1", "price"] == pytest.approx(39.9)


def test_impressions_without_items_or_users(tmp_path):
    logs = import_impressions(IMPRESSIONS / "impressions.csv")
    assert list(logs.users.columns) == ["user_id"]
    assert logs.users["user_id"].tolist() == ["alice", "bob"]
    assert (logs.items["title"] == "").all()
    assert sorted(logs.items["item_id"]) == [f"i{i}" for i in range(1, 7)]
    _round_trip(logs, tmp_path)


@pytest.mark.parametrize(("minutes", "sessions"), [(29, 1), (31, 2)])
def test_impressions_split_at_30_minute_gap(tmp_path, minutes, sessions):
    t0 = 1_700_000_000
    path = _write(tmp_path, f"u,{t0},a,click\nu,{t0 + minutes * 60},b,skip\n")
    logs = import_impressions(path)
    assert logs.steps["session_id"].nunique() == sessions
    _check_sessions(logs.steps)


def test_impressions_gap_is_strictly_more_than_30_minutes(tmp_path):
    t0 = 1_700_000_000
    body = f"u,{t0},a,click\nu,{t0 + 1800},b,skip\nu,{t0 + 1800 + 1801},c,buy\n"
    logs = import_impressions(_write(tmp_path, body))
    assert logs.steps["session_id"].tolist() == ["u_s0", "u_s0", "u_s1"]
    assert (
        import_impressions(_write(tmp_path, body), session_gap_minutes=60)
        .steps["session_id"]
        .nunique()
        == 1
    )


def test_impressions_steps_in_timestamp_order_and_session_column(tmp_path):
    path = tmp_path / "s.csv"
    path.write_text(
        "user_id,session_id,timestamp,items,responses\n"
        "u1,a,2024-01-01T10:10:00,x,click\n"
        "u1,a,2024-01-01T10:00:00+00:00,y,skip\n"
        "u1,a,2024-01-01T15:00:00,z,buy\n"  # a 5 h gap, but the session is given
        "u2,b,1704103200.5,x y,1 0\n"
    )
    logs = import_impressions(path)
    assert logs.steps["session_id"].tolist() == ["a", "a", "a", "b"]
    assert logs.steps["items"].tolist()[:3] == [["y"], ["x"], ["z"]]
    _check_sessions(logs.steps)
    assert logs.meta["sessions_from"] == "session_id column"


def test_impressions_parquet_variable_slate_lengths_round_trip(tmp_path, caplog):
    lengths = [1, 2, 3, 7, 50, 299, 300, 301, 350]
    rows = []
    for n, k in enumerate(lengths):
        rows.append(
            {
                "user_id": f"u{n % 3}",
                "timestamp": pd.Timestamp("2024-01-01", tz="UTC") + pd.Timedelta(minutes=n),
                "items": [f"it{(n * 7 + j) % 400}" for j in range(k)],
                "responses": [j % 3 for j in range(k)],
            }
        )
    path = tmp_path / "slates.parquet"
    pd.DataFrame(rows).to_parquet(path)
    with caplog.at_level(logging.WARNING):
        logs = import_impressions(path)
    assert "2 slate(s) longer than 300 items were truncated" in caplog.text
    assert "first at row 8" in caplog.text
    got = sorted(logs.steps["items"].map(len).tolist())
    assert got == sorted(min(k, MAX_SLATE_ITEMS) for k in lengths)
    assert logs.meta["truncated_slates"] == 2
    back = _round_trip(logs, tmp_path)
    assert max(len(x) for x in back.steps["items"]) == MAX_SLATE_ITEMS
    _check_sessions(back.steps)


def test_impressions_parquet_int_ids_and_word_lists(tmp_path):
    path = tmp_path / "typed.parquet"
    pd.DataFrame(
        {
            "user_id": [7, 7],
            "timestamp": [1_700_000_000, 1_700_000_060],
            "items": [[1, 2], [3]],
            "responses": [["Click", "SKIP"], ["buy"]],
        }
    ).to_parquet(path)
    logs = import_impressions(path)
    assert logs.steps["user_id"].tolist() == ["7", "7"]
    assert logs.steps["items"].tolist() == [["1", "2"], ["3"]]
    assert logs.steps["responses"].tolist() == [[1, 0], [2]]


MALFORMED = [
    (
        "u,1,a,click\n" * 6 + "u,1,a b c d,click skip click\n",
        "row 7, column 'responses': 3 responses for 4 items",
    ),
    ("u,1,a,click\nu,yesterday,a,click\n", "row 2, column 'timestamp': cannot parse 'yesterday'"),
    ("u,1,a,click\nu,,a,click\n", "row 2, column 'timestamp': timestamp is empty"),
    ("u,1,a b,click like\n", "row 1, column 'responses': unknown response 'like'"),
    ("u,1,a b,click 3\n", "row 1, column 'responses': unknown response '3'"),
    ("u,1,a,click\nu,2,,\n", "row 2, column 'items': no items"),
    (",1,a,click\n", "row 1, column 'user_id': user id is empty"),
    ("u,1,a,click\nu,2,a,click,extra\n", "row 2: 5 fields where the header has 4"),
]


@pytest.mark.parametrize(("body", "message"), MALFORMED)
def test_impressions_malformed_rows_name_file_row_column(tmp_path, body, message):
    path = _write(tmp_path, body)
    with pytest.raises(ImportFormatError) as info:
        import_impressions(path)
    assert str(info.value).startswith(f"{path}, {message}")
    assert isinstance(info.value, ValueError) and isinstance(info.value, LogFormatError)


def test_impressions_missing_column(tmp_path):
    path = tmp_path / "data.csv"
    path.write_text("user_id,timestamp,items\nu,1,a\n")
    with pytest.raises(ImportFormatError, match=r"data\.csv, column 'responses': required column"):
        import_impressions(path)


def test_impressions_session_shared_by_two_users(tmp_path):
    path = tmp_path / "s.csv"
    path.write_text("user_id,session_id,timestamp,items,responses\nu1,s,1,a,0\nu2,s,2,b,1\n")
    with pytest.raises(ImportFormatError, match=r"row 2, column 'session_id': session 's'"):
        import_impressions(path)


def test_items_and_users_tables_are_checked(tmp_path):
    data = _write(tmp_path, "u,1,a,click\n")
    items = tmp_path / "items.csv"
    items.write_text("item_id,title,price\na,A,1\nb,B,-2\n")
    with pytest.raises(ImportFormatError, match=r"items\.csv, row 2, column 'price'"):
        import_impressions(data, items_path=items)
    items.write_text("item_id,title\na,A\na,B\n")
    with pytest.raises(ImportFormatError, match=r"row 2, column 'item_id': duplicate id 'a'"):
        import_impressions(data, items_path=items)
    users = tmp_path / "users.csv"
    users.write_text("name\nu\n")
    with pytest.raises(ImportFormatError, match=r"users\.csv, column 'user_id'"):
        import_impressions(data, users_path=users)


def test_cli_error_writes_nothing(tmp_path, capsys):
    from recsim_env.cli import main

    bad = _write(tmp_path, "u,1,a,click\nu,2,a b c d,click skip click\n")
    out = tmp_path / "out"
    assert main(["import", "impressions", str(bad), "--out", str(out)]) == 2
    err = capsys.readouterr().err.strip()
    assert err == (
        f"llm-usersim import: error: {bad}, row 2, column 'responses': 3 responses for 4 items"
    )
    assert not (out / "meta.json").exists()
    assert not out.exists()

    # an earlier good import in the same directory is left untouched by a failing one
    assert main(["import", "otto", str(OTTO), "--out", str(out)]) == 0
    before = {p.name: p.read_bytes() for p in out.iterdir()}
    assert main(["import", "impressions", str(bad), "--out", str(out)]) == 2
    assert {p.name: p.read_bytes() for p in out.iterdir()} == before
    assert read_logs(out).meta["source"] == "otto"


def test_cli_imports_every_fixture(tmp_path, capsys):
    from recsim_env.cli import main

    cases = {
        "impressions": [
            str(IMPRESSIONS / "impressions.csv"),
            "--items",
            str(IMPRESSIONS / "items.csv"),
        ],
        "movielens": [str(MOVIELENS)],
        "open-bandit": [str(OPEN_BANDIT)],
        "otto": [str(OTTO), "--session-gap", "30"],
    }
    for source, argv in cases.items():
        out = tmp_path / source
        assert main(["import", source, *argv, "--out", str(out)]) == 0
        logs = read_logs(out)
        assert logs.meta["source"] == source
        assert "wrote" in capsys.readouterr().out


# ---------------------------------------------------------------------------- MovieLens
def test_stars_to_response_thresholds():
    got = stars_to_response(np.array([0.5, 3.0, 3.4, 3.5, 4.0, 4.5, 5.0]))
    assert got.tolist() == [0, 0, 0, 1, 1, 2, 2]


def test_movielens_fixture(tmp_path):
    logs = import_movielens(MOVIELENS)
    ratings = pd.read_csv(MOVIELENS / "ratings.csv")
    # expected slates, computed independently: sessions at > 30 min gaps, chunks of 5
    expected_steps, expected_sessions = 0, 0
    for _, r in ratings.sort_values(["userId", "timestamp", "movieId"]).groupby("userId"):
        t = r["timestamp"].to_numpy()
        cuts = np.flatnonzero(np.diff(t) > 1800) + 1
        for part in np.split(np.arange(len(t)), cuts):
            expected_sessions += 1
            expected_steps += math.ceil(len(part) / 5)
    steps = logs.steps
    assert len(steps) == expected_steps and steps["session_id"].nunique() == expected_sessions
    assert expected_sessions > 4  # the fixture users have several sessions
    assert steps["user_id"].unique().tolist() == ["u1", "u3", "u6", "u16"]
    assert set(steps["items"].map(len)) <= set(range(1, 6))
    _check_sessions(steps)
    shown = [
        (u, i, r)
        for u, its, rs in zip(steps.user_id, steps["items"], steps.responses)
        for i, r in zip(its, rs)
    ]
    assert len(shown) == len(ratings)
    stars = {
        (f"u{u}", f"m{m}"): s for u, m, s in zip(ratings.userId, ratings.movieId, ratings.rating)
    }
    for u, i, r in shown:
        assert r == stars_to_response(np.array([stars[(u, i)]]))[0]
    # the first slate of user 1 is their five earliest ratings, in time order
    first = ratings[ratings.userId == 1].sort_values(["timestamp", "movieId"]).head(5)
    assert steps["items"].iloc[0] == [f"m{m}" for m in first.movieId]
    items = logs.items.set_index("item_id")
    assert items.loc["m50", "title"] == "Usual Suspects, The (1995)"
    assert items.loc["m50", "category"] == "Crime"
    assert items.loc["m50", "genres"] == "Crime|Mystery|Thriller"
    assert list(logs.users.columns) == ["user_id"]
    assert logs.meta["proxy"] is True and "not impressions" in logs.meta["proxy_note"]
    back = _round_trip(logs, tmp_path)
    assert back.items.set_index("item_id").loc["m60", "genres"] == "Adventure|Children|Fantasy"


def test_session_gap_inf_makes_each_users_history_one_session(tmp_path, capsys):
    from recsim_env.cli import main

    out = tmp_path / "whole"
    assert (
        main(["import", "movielens", str(MOVIELENS), "--session-gap", "inf", "--out", str(out)])
        == 0
    )
    logs = read_logs(out)
    ratings = pd.read_csv(MOVIELENS / "ratings.csv")
    sessions = logs.steps.groupby("user_id")["session_id"].nunique()
    assert (sessions == 1).all() and len(sessions) == ratings["userId"].nunique()
    per_user = ratings.groupby("userId").size()
    assert len(logs.steps) == sum(math.ceil(n / 5) for n in per_user)  # slates of 5 across gaps
    assert logs.meta["session_gap_minutes"] is None  # JSON has no infinity: words say it
    assert json.loads((out / "meta.json").read_text(), parse_constant=_no_constants)
    assert logs.meta["sessions_from"] == "one session per user (never split at a gap)"
    otto = tmp_path / "otto"  # OTTO: never splitting is its default (whole OTTO sessions)
    assert main(["import", "otto", str(OTTO), "--session-gap", "INF", "--out", str(otto)]) == 0
    assert read_logs(otto).meta["sessions_from"] == "one per OTTO session"
    assert json.loads((otto / "meta.json").read_text(), parse_constant=_no_constants)
    capsys.readouterr()
    for bad in ("0", "nan", "-1", "abc", ""):
        argv = ["import", "movielens", str(MOVIELENS), "--out", str(out), f"--session-gap={bad}"]
        assert main(argv) == 2
        err = capsys.readouterr().err
        assert "must be > 0 minutes, or inf (never split" in err and repr(bad) in err
    for bad in (float("nan"), 0, "inf", None, True):  # the Python API says the same
        with pytest.raises(ValueError, match=r"must be > 0 minutes, or inf"):
            import_movielens(MOVIELENS, session_gap_minutes=bad)  # type: ignore[arg-type]
    assert (
        import_movielens(MOVIELENS, session_gap_minutes=1e400).meta["session_gap_minutes"] is None
    )


def _no_constants(name: str) -> None:
    raise ValueError(f"not strict JSON: {name}")


def test_movielens_slate_size_genres_in_title_and_bad_rating(tmp_path):
    logs = import_movielens(MOVIELENS, slate_size=1, genres_in_title=True)
    assert len(logs.steps) == len(pd.read_csv(MOVIELENS / "ratings.csv"))
    title = logs.items.set_index("item_id").loc["m50", "title"]
    assert title == "Usual Suspects, The (1995) [Crime, Mystery, Thriller]"
    d = tmp_path / "ml"
    d.mkdir()
    (d / "movies.csv").write_text((MOVIELENS / "movies.csv").read_text())
    (d / "ratings.csv").write_text("userId,movieId,rating,timestamp\n1,1,4.0,10\n1,2,great,20\n")
    with pytest.raises(ImportFormatError, match=r"ratings\.csv, row 2, column 'rating'"):
        import_movielens(d)


# ---------------------------------------------------------------------------- Open Bandit
def test_open_bandit_fixture(tmp_path):
    logs = import_open_bandit(OPEN_BANDIT)  # the root: random/all by default
    raw = pd.read_csv(OPEN_BANDIT / "random" / "all" / "all.csv.gz", index_col=0)
    steps = logs.steps
    pairs = raw.groupby(["timestamp", "user_feature_2", "user_feature_3"]).size()
    assert len(raw) == 500 and (pairs == 2).sum() == 4
    assert len(steps) == 500 - 4  # the 4 rows sharing an impression are merged in pairs
    assert sorted(steps["items"].map(len).unique()) == [1, 2]
    assert (steps["step"] == 0).all() and steps["leave"].all()
    assert steps["session_id"].is_unique
    clicks = sum(int(r == Response.CLICK) for rs in steps.responses for r in rs)
    assert clicks == int(raw["click"].sum()) == 2
    assert all(r in (Response.SKIP, Response.CLICK) for rs in steps.responses for r in rs)
    # a merged slate is ordered by position: rows 1714 (position 1) and 1715 (position 3)
    assert ["12", "8"] in steps["items"].tolist()
    assert len(logs.items) == 80 and (logs.items["title"] == "").all()
    assert logs.items["category"].str.len().eq(32).all()
    assert list(logs.users.columns) == ["user_id", *[f"user_feature_{i}" for i in range(4)]]
    assert logs.users["user_id"].str.startswith("ob").all()
    assert logs.meta["campaign"] == "all" and logs.meta["policy"] == "random"
    _round_trip(logs, tmp_path)
    leaf = import_open_bandit(OPEN_BANDIT / "random" / "all")
    assert leaf.steps["items"].tolist() == steps["items"].tolist()


# ---------------------------------------------------------------------------- OTTO
def test_otto_fixture_click_cart_buy_mapping(tmp_path):
    logs = import_otto(OTTO)
    sessions = [json.loads(line) for line in OTTO.read_text().splitlines()]
    types = {"clicks": 0, "carts": 0, "orders": 0}
    expected: dict[tuple[str, int], dict[str, int]] = {}
    code = {"clicks": 1, "carts": 2, "orders": 3}  # skip, click, cart, buy
    for s in sessions:
        for e in s["events"]:
            types[e["type"]] += 1
            slot = expected.setdefault((str(s["session"]), e["ts"]), {})
            slot[str(e["aid"])] = max(slot.get(str(e["aid"]), 0), int(code[e["type"]]))
    assert types == {"clicks": 800, "carts": 52, "orders": 10}
    steps = logs.steps
    assert len(steps) == len(expected)  # one step per distinct (session, timestamp)
    resp = [r for rs in steps.responses for r in rs]
    assert logs.behaviours.names == ("skip", "click", "cart", "buy")
    assert [resp.count(c) for c in range(4)] == [0, 800, 52, 10]
    got = {}
    for uid, its, rs in zip(steps.user_id, steps["items"], steps.responses):
        got.setdefault(uid, []).append(dict(zip(its, rs)))
    for uid in got:
        want = [v for (u, _ts), v in sorted(expected.items()) if u == uid]
        assert got[uid] == want
    # session 0: aid 461689 is carted, then ordered together with 305831 (buy, buy)
    s0 = steps[steps.user_id == "0"]
    assert s0["items"].iloc[7] == ["461689"] and s0["responses"].iloc[7] == [2]
    assert s0["items"].iloc[8] == ["305831", "461689"]
    assert s0["responses"].iloc[8] == [3, 3]
    assert steps["session_id"].nunique() == 20 and (steps.user_id == steps.session_id).all()
    _check_sessions(steps)
    _round_trip(logs, tmp_path)


def test_otto_session_gap_and_errors(tmp_path):
    split = import_otto(OTTO, session_gap_minutes=30)
    assert split.steps["user_id"].nunique() == 20
    assert split.steps["session_id"].nunique() > 20
    _check_sessions(split.steps)
    gz = tmp_path / "o.jsonl.gz"
    with gzip.open(gz, "wt") as fh:
        fh.write(OTTO.read_text())
    assert len(import_otto(gz).steps) == len(import_otto(OTTO).steps)
    bad = tmp_path / "bad.jsonl"
    bad.write_text(
        '{"session": 1, "events": [{"aid": 5, "ts": 1000, "type": "clicks"}]}\n'
        '{"session": 2, "events": [{"aid": 5, "ts": 1000, "type": "views"}]}\n'
    )
    with pytest.raises(ImportFormatError, match=r"row 2, column 'events\[0\]\.type'"):
        import_otto(bad)


def test_a_cut_gzip_input_is_named_in_one_line(tmp_path, capsys):
    from recsim_env.cli import main

    whole = gzip.compress((IMPRESSIONS / "impressions.csv").read_bytes())
    cut = tmp_path / "cut.csv.gz"
    cut.write_bytes(whole[:100])
    assert main(["import", "impressions", str(cut), "--out", str(tmp_path / "o")]) == 2
    err = capsys.readouterr().err
    assert f"{cut}: not a readable compressed file (Compressed file ended" in err
    assert "Traceback" not in err and not (tmp_path / "o").exists()
