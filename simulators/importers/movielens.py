"""Import MovieLens (latest-small layout) ratings as *proxy* slate logs.

MovieLens holds star ratings, not impressions, so the log this builds is a proxy:

- Per user, ratings are sorted by timestamp (ties keep file order, i.e. by movieId) and split
  into sessions wherever consecutive ratings are more than 30 minutes apart.
- Within a session, every `slate_size` (5) consecutive ratings form one slate, in rating
  order; the last slate of a session may be shorter. Only rated movies are shown: there are
  no sampled negatives, low ratings play the part of skips.
- Response per movie from its stars: >= 4.5 buy, >= 3.5 click, otherwise skip.
- Items: every movie of movies.csv as `m{movieId}`, title with year, category = first genre
  (empty for "(no genres listed)"), and an extra `genres` column with all genres
  (`|`-separated; `genres_in_title` also appends them to the title text). Users: `u{userId}`, no profile (MovieLens small has no demographics).

The data are under the GroupLens usage licence (research only, no commercial use; cite Harper &
Konstan 2015); the licence is recorded in the log's meta.json.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from simulators.base import Response  # the default behaviours' codes
from simulators.importers._common import (
    DEFAULT_SESSION_GAP_MINUTES,
    check_session_gap,
    fail,
    finish_steps,
    gap_sessions,
    items_with_missing,
    read_table,
    require_columns,
    session_numbers,
    summarize,
)
from simulators.logs import InteractionLogs

BUY_STARS = 4.5
CLICK_STARS = 3.5
NO_GENRES = "(no genres listed)"
LICENCE = (
    "MovieLens data (GroupLens Research, University of Minnesota): research use only, no "
    "commercial use, redistribution under the same conditions; cite F. M. Harper and J. A. "
    "Konstan, The MovieLens Datasets: History and Context, ACM TiiS 5(4), 2015."
)


def stars_to_response(stars: np.ndarray) -> np.ndarray:
    """Star ratings -> Response codes (int8): >= 4.5 buy, >= 3.5 click, else skip (a proxy)."""
    stars = np.asarray(stars, dtype=float)
    out = np.full(stars.shape, int(Response.SKIP), dtype=np.int8)
    out[stars >= CLICK_STARS] = Response.CLICK
    out[stars >= BUY_STARS] = Response.BUY
    return out


def _numeric(df: pd.DataFrame, column: str, file: Path, integer: bool) -> np.ndarray:
    text = df[column].astype(str).str.strip()
    values = pd.to_numeric(text, errors="coerce").astype(float)
    bad = values.isna() | np.isinf(values)
    if integer:
        bad |= values != np.round(values)
    if bad.any():
        r = int(np.argmax(bad.to_numpy()))
        kind = "an integer" if integer else "a number"
        raise fail(file, r + 1, column, f"expected {kind}, got {df[column].iloc[r]!r}")
    return values.to_numpy()


def _movies(path: Path, genres_in_title: bool) -> pd.DataFrame:
    df = read_table(path)
    require_columns(df, ["movieId", "title", "genres"], path)
    ids = _numeric(df, "movieId", path, integer=True).astype(np.int64)
    genres = df["genres"].astype(str).str.strip()
    genres = genres.where(genres != NO_GENRES, "")
    titles = df["title"].astype(str).str.strip()
    if genres_in_title:
        listed = genres.str.replace("|", ", ", regex=False)
        titles = titles.where(genres == "", titles + " [" + listed + "]")
    items = pd.DataFrame(
        {
            "item_id": [f"m{i}" for i in ids],
            "title": titles.to_numpy(),
            "category": genres.str.split("|").str[0].fillna("").to_numpy(),
            "price": np.nan,
            "genres": genres.to_numpy(),
        }
    )
    dup = items["item_id"].duplicated()
    if dup.any():
        r = int(np.argmax(dup.to_numpy()))
        raise fail(path, r + 1, "movieId", f"duplicate movie id {int(ids[r])}")
    return items


def import_movielens(
    directory: str | Path,
    slate_size: int = 5,
    session_gap_minutes: float = DEFAULT_SESSION_GAP_MINUTES,
    genres_in_title: bool = False,
) -> InteractionLogs:
    """Read `ratings.csv` and `movies.csv` of a MovieLens directory into a proxy log set.

    Args:
        directory: a MovieLens folder in the latest-small layout (ratings.csv, movies.csv).
        slate_size: consecutive ratings per slate (the last slate of a session may be shorter).
        session_gap_minutes: a gap strictly longer than this between a user's consecutive
            ratings starts a new session.
        genres_in_title: append all genres to the title, `"Heat (1995) [Action, Crime]"`, so
            that models reading only title text (the GPT-2 simulator) see them too.

    Returns:
        The log set (not yet written); meta.json records that responses are a proxy.

    Raises:
        ImportFormatError: a malformed cell, naming file, 1-based data row and column.
    """
    if slate_size < 1:
        raise ValueError(f"slate size must be >= 1, got {slate_size}")
    session_gap_minutes = check_session_gap(session_gap_minutes)
    sessions_from, gap_value = gap_sessions(session_gap_minutes)
    d = Path(directory)
    if not d.is_dir():
        raise NotADirectoryError(f"{d}: not a directory (expected ratings.csv and movies.csv)")
    ratings_path, movies_path = d / "ratings.csv", d / "movies.csv"
    items = _movies(movies_path, genres_in_title)
    ratings = read_table(ratings_path)
    require_columns(ratings, ["userId", "movieId", "rating", "timestamp"], ratings_path)
    if len(ratings) == 0:
        raise fail(ratings_path, None, None, "no data rows")
    user_num = _numeric(ratings, "userId", ratings_path, integer=True).astype(np.int64)
    movie_num = _numeric(ratings, "movieId", ratings_path, integer=True).astype(np.int64)
    stars = _numeric(ratings, "rating", ratings_path, integer=False)
    times = _numeric(ratings, "timestamp", ratings_path, integer=False)
    bad = (stars < 0) | (stars > 5)
    if bad.any():
        r = int(np.argmax(bad))
        raise fail(ratings_path, r + 1, "rating", f"expected 0 to 5 stars, got {stars[r]:g}")

    order = np.arange(len(ratings))
    idx = np.lexsort((order, times, user_num))
    users = np.array([f"u{u}" for u in user_num[idx]], dtype=object)
    sess = session_numbers(users, times[idx], session_gap_minutes * 60.0)
    df = pd.DataFrame(
        {
            "user_id": users,
            "session_id": [f"{u}_s{n}" for u, n in zip(users, sess)],
            "item": [f"m{m}" for m in movie_num[idx]],
            "response": stars_to_response(stars[idx]),
            "time": times[idx],
            "order": order[idx],
        }
    )
    df["slate"] = df.groupby("session_id", sort=False).cumcount() // slate_size
    slates = (
        df.groupby(["session_id", "slate"], sort=False)
        .agg(
            user_id=("user_id", "first"),
            time=("time", "first"),
            order=("order", "first"),
            items=("item", list),
            responses=("response", lambda s: [int(v) for v in s]),
        )
        .reset_index()
    )
    steps = finish_steps(slates)
    items, missing = items_with_missing(items, df["item"])
    user_table = pd.DataFrame({"user_id": pd.unique(users)})
    meta = {
        "source": "movielens",
        "importer": "llm-usersim import movielens",
        "input": str(d),
        "proxy": True,
        "proxy_note": (
            "MovieLens has ratings, not impressions: each slate is "
            f"{slate_size} consecutive ratings of one user (rated movies only, no sampled "
            f"negatives) and responses come from stars: >= {BUY_STARS} buy, >= {CLICK_STARS} "
            "click, otherwise skip"
        ),
        "slate_size": slate_size,
        "sessions_from": sessions_from,
        "session_gap_minutes": gap_value,
        "response_from_stars": {"buy": f">= {BUY_STARS}", "click": f">= {CLICK_STARS}"},
        "genres_in_title": genres_in_title,
        "items_without_metadata": missing,
        "licence": LICENCE,
    }
    logs = InteractionLogs(steps=steps, items=items, users=user_table, meta=meta)
    logs.meta["stats"] = summarize(logs)
    return logs
