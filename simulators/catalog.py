"""Item and profile encodings shared by every env and simulator.

Both envs must expose identical observation spaces for the same catalog, so that a policy trained
on the GPT-2 user can be evaluated in the ground-truth world. The encodings therefore derive from
the log tables alone (items table, users table), never from a particular simulator.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

import numpy as np
import pandas as pd

PROFILE_PAD = -1
MULTI_VALUE_SEPARATOR = "|"


def item_feature_matrix(items: pd.DataFrame) -> np.ndarray:
    """Dense item features: category one-hot (sorted categories) then standardised log price.

    Args:
        items: the items table, rows ordered by internal item index; columns `category` and
            `price` are optional.

    Returns:
        (num_items, F) float32 array with values in [-5, 5].
    """
    return item_features_like(items, items)


def item_features_like(reference: pd.DataFrame, items: pd.DataFrame) -> np.ndarray:
    """Features of `items` in the feature space of `reference` (its `item_feature_matrix`).

    The category one-hot has the reference's categories (an item of another category has none
    set), and the price is standardised with the reference's log-price mean and spread, so a
    simulator trained on the reference catalog reads a new item as it would read its own:
    `item_features_like(items, items)` equals `item_feature_matrix(items)`.

    Returns:
        (len(items), F) float32 array with values in [-5, 5].
    """
    n = len(items)
    blocks = []
    if "category" in reference.columns:
        names = sorted(reference["category"].fillna("").astype(str).unique())
        col = {c: i for i, c in enumerate(names)}
        cats = (
            items["category"].fillna("").astype(str)
            if "category" in items.columns
            else pd.Series([""] * n)
        )
        onehot = np.zeros((n, len(names)), dtype=np.float32)
        idx = cats.map(col).to_numpy(dtype=np.float64)
        known = ~np.isnan(idx)
        onehot[np.nonzero(known)[0], idx[known].astype(np.int64)] = 1.0
        blocks.append(onehot)
    if "price" in reference.columns:
        ref = pd.to_numeric(reference["price"], errors="coerce").to_numpy(dtype=np.float64)
        ref_logp = np.log1p(np.clip(np.nan_to_num(ref, nan=0.0), 0.0, None))
        ref_known = ~np.isnan(ref)
        mean = ref_logp[ref_known].mean() if ref_known.any() else 0.0
        std = ref_logp[ref_known].std() if ref_known.sum() > 1 else 1.0
        price = (
            pd.to_numeric(items["price"], errors="coerce").to_numpy(dtype=np.float64)
            if "price" in items.columns
            else np.full(n, np.nan)
        )
        logp = np.log1p(np.clip(np.nan_to_num(price, nan=0.0), 0.0, None))
        z = np.where(~np.isnan(price), (logp - mean) / (std if std > 0 else 1.0), 0.0)
        blocks.append(np.clip(z, -5, 5).astype(np.float32)[:, None])
    if not blocks:
        return np.zeros((n, 1), dtype=np.float32)
    return np.concatenate(blocks, axis=1)


def item_category_index(items: pd.DataFrame) -> np.ndarray:
    """(num_items,) int64 index of each item's category among the sorted categories.

    The order is that of `item_feature_matrix`'s one-hot block; all 0 when the table has no
    category column.
    """
    if "category" not in items.columns:
        return np.zeros(len(items), dtype=np.int64)
    cats = items["category"].fillna("").astype(str)
    names = sorted(cats.unique())
    return cats.map({c: i for i, c in enumerate(names)}).to_numpy().astype(np.int64)


def profile_tokens(row: dict, fields: Sequence[str]) -> list[str]:
    """Turn one users-table row into `field=value` strings (multi-valued fields split on '|')."""
    out: list[str] = []
    for field in fields:
        value = row.get(field)
        if value is None or (isinstance(value, float) and np.isnan(value)):
            continue
        for part in str(value).split(MULTI_VALUE_SEPARATOR):
            part = part.strip()
            if part:
                out.append(f"{field}={part}")
    return out


class ProfileEncoder:
    """Maps users-table rows to padded arrays of profile-token indices.

    The vocabulary is the sorted set of `field=value` strings, so the same users table (or the
    same world schema) always gives the same indices.
    """

    def __init__(self, vocab: Iterable[str], fields: Sequence[str], slots: int) -> None:
        """Build from an explicit vocabulary, the profile columns and the padded length."""
        self.vocab: list[str] = sorted(set(vocab))
        self.fields: list[str] = list(fields)
        self.slots = int(slots)
        self.index = {tok: i for i, tok in enumerate(self.vocab)}

    @classmethod
    def from_users(cls, users: pd.DataFrame, max_slots: int = 16) -> ProfileEncoder:
        """Build from a users table: every column but `user_id` is a profile field."""
        fields = [c for c in users.columns if c != "user_id"]
        rows = users[fields].to_dict("records")
        toks = [profile_tokens(r, fields) for r in rows]
        slots = min(max((len(t) for t in toks), default=0), max_slots)
        return cls({t for ts in toks for t in ts}, fields, max(slots, 1))

    def encode(self, users: pd.DataFrame) -> np.ndarray:
        """(n, slots) int64 token indices, PROFILE_PAD where absent or unknown.

        Raises:
            ValueError: the users table lacks one of the profile fields (a column of empty
                values is how to say that nothing is known).
        """
        missing = [f for f in self.fields if f not in users.columns]
        if missing:
            raise ValueError(
                f"the users table has no {', '.join(missing)} column (profile fields of this "
                f"simulator: {', '.join(self.fields)})"
            )
        out = np.full((len(users), self.slots), PROFILE_PAD, dtype=np.int64)
        for i, row in enumerate(users[self.fields].to_dict("records") if self.fields else []):
            ids = [self.index[t] for t in profile_tokens(row, self.fields) if t in self.index]
            ids = ids[: self.slots]
            out[i, : len(ids)] = ids
        return out

    def multi_hot(self, profiles: np.ndarray) -> np.ndarray:
        """(n, slots) indices -> (n, len(vocab)) int8 multi-hot."""
        out = np.zeros((len(profiles), len(self.vocab)), dtype=np.int8)
        rows, cols = np.nonzero(profiles >= 0)
        out[rows, profiles[rows, cols]] = 1
        return out

    def to_dict(self) -> dict:
        """JSON-serialisable form."""
        return {"vocab": self.vocab, "fields": self.fields, "slots": self.slots}

    @classmethod
    def from_dict(cls, d: dict) -> ProfileEncoder:
        """Inverse of to_dict."""
        return cls(d["vocab"], d["fields"], d["slots"])
