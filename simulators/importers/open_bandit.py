"""Import the Open Bandit Dataset (ZOZOTOWN; Saito et al. 2020) as slate logs.

Each Open Bandit row is one (item, position) impression with a click flag. The released samples
keep a random subset of rows, so whole 3-item slates can mostly not be rebuilt. The mapping:

- Rows with the same timestamp and the same user features are slots of one impression: they
  become one slate, ordered by position. Every other row is a slate of one item. The original
  position (1-3) is not kept: a lone position-3 item is shown at slot 0 of its slate.
- Response: click -> click, otherwise skip (there are no buys).
- Users: the data has no user ids, only four hashed user features. `user_id` is `ob` plus a
  hash of those features, so it names a user *segment* shared by many people; the users table
  keeps the features as profile columns (`user_feature_0` .. `user_feature_3`).
- Sessions: every slate is its own one-step session (leave=True), since consecutive rows of a
  segment are different people.
- Items: from item_context.csv, `item_id` as the dataset's item index (a string), no title,
  category = `item_feature_1` (a hashed category), extra columns `item_feature_0`
  (numeric), `item_feature_2`, `item_feature_3`; price unknown.
- Dropped: propensity scores and user-item affinities (the log format has no place for them).

Apache-2.0; cite Saito, Aihara, Matsutani and Narita, arXiv:2008.07146.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np
import pandas as pd

from simulators.base import Response  # the default behaviours' codes
from simulators.importers._common import (
    fail,
    finish_steps,
    items_with_missing,
    parse_timestamps,
    read_table,
    require_columns,
    summarize,
    to_id,
)
from simulators.logs import InteractionLogs

POLICIES = ("random", "bts")
CAMPAIGNS = ("all", "men", "women")
USER_FEATURES = tuple(f"user_feature_{i}" for i in range(4))
LICENCE = (
    "Open Bandit Dataset (ZOZO, Inc.), Apache-2.0; cite Y. Saito, S. Aihara, M. Matsutani and "
    "Y. Narita, Open Bandit Dataset and Pipeline, arXiv:2008.07146, 2020."
)


def _find(directory: Path, policy: str, campaign: str | None) -> tuple[Path, Path, str]:
    """(impressions csv, item_context.csv, campaign) in a campaign folder or the dataset root."""
    names = CAMPAIGNS if campaign is None else (campaign,)
    here = [
        directory / f"{c}{ext}"
        for c in names
        for ext in (".csv.gz", ".csv")
        if (directory / f"{c}{ext}").exists()
    ]
    if len(here) > 1:
        raise ValueError(f"{directory}: several campaigns here, pick one with --campaign")
    found: Path | None
    if here:
        found = here[0]
    else:
        c = campaign or "all"
        sub = directory / policy / c
        found = next(
            (sub / f"{c}{ext}" for ext in (".csv.gz", ".csv") if (sub / f"{c}{ext}").exists()),
            None,
        )
        if found is None:
            raise FileNotFoundError(
                f"{directory}: no {c}.csv(.gz) here or in {policy}/{c}/ "
                "(expected the Open Bandit layout, e.g. random/all/all.csv.gz)"
            )
    return found, found.parent / "item_context.csv", found.name.split(".")[0]


def segment_id(features: tuple[str, ...]) -> str:
    """Pseudo user id of a user-feature combination: `ob` + 12 hex digits of its SHA-1."""
    return "ob" + hashlib.sha1("|".join(features).encode()).hexdigest()[:12]


def _read(path: Path) -> pd.DataFrame:
    df = read_table(path)
    first = str(df.columns[0]) if len(df.columns) else ""
    if first == "" or first.startswith("Unnamed"):
        df = df.drop(columns=df.columns[0])  # the unnamed row index of the released CSVs
    return df


def _items(path: Path) -> pd.DataFrame:
    df = _read(path)
    require_columns(df, ["item_id", "item_feature_1"], path)
    ids = [to_id(v) for v in df["item_id"]]
    for r, v in enumerate(ids, start=1):
        if not v:
            raise fail(path, r, "item_id", "id is empty")
    items = pd.DataFrame(
        {"item_id": ids, "title": "", "category": df["item_feature_1"].map(to_id), "price": np.nan}
    )
    for col in ("item_feature_0", "item_feature_2", "item_feature_3"):
        if col in df.columns:
            items[col] = df[col].to_numpy()
    if "item_feature_0" in items.columns:
        items["item_feature_0"] = pd.to_numeric(items["item_feature_0"], errors="coerce")
    dup = items["item_id"].duplicated()
    if dup.any():
        r = int(np.argmax(dup.to_numpy()))
        raise fail(path, r + 1, "item_id", f"duplicate item id {ids[r]!r}")
    return items


def import_open_bandit(
    directory: str | Path, policy: str = "random", campaign: str | None = None
) -> InteractionLogs:
    """Read one (policy, campaign) of the Open Bandit Dataset into a log set.

    Args:
        directory: the dataset root (holding `random/` and `bts/`) or one campaign folder
            (holding `{campaign}.csv[.gz]` and `item_context.csv`).
        policy: logging policy folder, `random` or `bts` (only used with the root).
        campaign: `all`, `men` or `women`; None takes the one campaign file of a campaign
            folder, or `all` under the root.

    Returns:
        The log set (not yet written); see the module docstring for the mapping.

    Raises:
        ImportFormatError: a malformed cell, naming file, 1-based data row and column.
    """
    if policy not in POLICIES:
        raise ValueError(f"policy must be one of {POLICIES}, got {policy!r}")
    if campaign is not None and campaign not in CAMPAIGNS:
        raise ValueError(f"campaign must be one of {CAMPAIGNS}, got {campaign!r}")
    d = Path(directory)
    if not d.is_dir():
        raise NotADirectoryError(f"{d}: not a directory")
    data_path, items_path, campaign = _find(d, policy, campaign)
    items = _items(items_path)
    df = _read(data_path)
    require_columns(df, ["timestamp", "item_id", "position", "click", *USER_FEATURES], data_path)
    if len(df) == 0:
        raise fail(data_path, None, None, "no data rows")
    times = parse_timestamps(df["timestamp"], data_path, "timestamp")
    position = pd.to_numeric(df["position"], errors="coerce")
    bad = position.isna() | (position < 1)
    if bad.any():
        r = int(np.argmax(bad.to_numpy()))
        raise fail(
            data_path, r + 1, "position", f"expected 1, 2 or 3, got {df['position'].iloc[r]!r}"
        )
    click = df["click"].map(to_id)
    bad = ~click.isin(["0", "1"])
    if bad.any():
        r = int(np.argmax(bad.to_numpy()))
        raise fail(data_path, r + 1, "click", f"expected 0 or 1, got {df['click'].iloc[r]!r}")
    item_ids = df["item_id"].map(to_id)
    if (item_ids == "").any():
        r = int(np.argmax((item_ids == "").to_numpy()))
        raise fail(data_path, r + 1, "item_id", "item id is empty")
    features = df[list(USER_FEATURES)].map(to_id)
    keys = list(zip(*(features[c] for c in USER_FEATURES)))
    segments = {k: segment_id(k) for k in dict.fromkeys(keys)}

    rows = pd.DataFrame(
        {
            "user_id": [segments[k] for k in keys],
            "time": times,
            "position": position.to_numpy(),
            "order": np.arange(len(df)),
            "item": item_ids.to_numpy(),
            "response": np.where(click == "1", int(Response.CLICK), int(Response.SKIP)),
        }
    ).sort_values(["time", "user_id", "position", "order"], kind="stable")
    slates = (
        rows.groupby(["time", "user_id"], sort=False)
        .agg(
            order=("order", "min"),
            items=("item", list),
            responses=("response", lambda s: [int(v) for v in s]),
        )
        .reset_index()
    )
    slates["session_id"] = [f"ob{o}" for o in slates["order"]]
    steps = finish_steps(slates)

    users = pd.DataFrame([(segments[k], *k) for k in segments], columns=["user_id", *USER_FEATURES])
    items, missing = items_with_missing(items, rows["item"])
    meta = {
        "source": "open-bandit",
        "importer": "llm-usersim import open-bandit",
        "input": str(data_path),
        "items_file": str(items_path),
        "policy": data_path.parent.parent.name
        if data_path.parent.parent.name in POLICIES
        else None,
        "campaign": campaign,
        "proxy": True,
        "proxy_note": (
            "rows are single (item, position) impressions from a random subset: rows sharing "
            "timestamp and user features form one slate (ordered by position, original "
            "positions dropped), every other row is a 1-item slate; every slate is a one-step "
            "session; user_id is a hash of the 4 user features (a segment, not a person); "
            "propensity scores are dropped"
        ),
        "items_without_metadata": missing,
        "licence": LICENCE,
    }
    logs = InteractionLogs(steps=steps, items=items, users=users, meta=meta)
    logs.meta["stats"] = summarize(logs)
    return logs
