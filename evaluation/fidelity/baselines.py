"""Click baselines fitted on the training part of the logs: what the LLM user adds over them.

- `Popularity`: the item's click rate in the training part, shrunk toward its category's rate
  (so an item the simulator never saw, a cold item, is scored by its category's popularity:
  popularity-by-category).
- `LogisticBaseline`: scikit-learn logistic regression on item one-hot (known items only),
  item features (category one-hot, log price), position, profile multi-hot, whether an earlier
  slot of the slate was clicked, and the step index: the same information the simulator reads
  about one event, without sequence modelling.
- `GradientBoostingBaseline`: gradient-boosted trees on the same features plus history features
  (the user's past click rate in the session, the item's click rate, category affinity,
  position, slate length): the strongest of the three, and the one the simulator has to beat
  on real logs.

All of them know exactly the items the simulator knows (`known`): a cold item has no
item-level statistics in any.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd
from scipy import sparse

from evaluation.fidelity.events import Events

if TYPE_CHECKING:
    from sklearn.linear_model import LogisticRegression

MAX_POSITIONS = 20
"""Positions with their own one-hot column; later positions share the last one."""


@dataclass
class Popularity:
    """Item click rates with category backoff (see module docstring)."""

    item_rate: np.ndarray  # (num_items,) smoothed click rate per item
    category_rate: np.ndarray  # (num_items,) click rate of the item's category

    def predict(self, events: Events) -> np.ndarray:
        """(n,) click scores of the events' items."""
        return self.item_rate[events.item]

    def predict_category(self, events: Events) -> np.ndarray:
        """(n,) click scores from the items' categories only."""
        return self.category_rate[events.item]


def item_categories(items: pd.DataFrame) -> np.ndarray:
    """(num_items,) int category index of every catalog item (one category when absent)."""
    if "category" not in items.columns:
        return np.zeros(len(items), dtype=np.int64)
    codes, _ = pd.factorize(items["category"].fillna("").astype(str))
    return codes.astype(np.int64)


def fit_popularity(
    train: Events, categories: np.ndarray, known: np.ndarray, strength: float = 10.0
) -> Popularity:
    """Fit item and category click rates on training events.

    Args:
        train: training-part events.
        categories: (num_items,) category index per item.
        known: (num_items,) bool, items the simulator saw in training; the others get their
            category's rate.
        strength: pseudo-impressions of the category rate added to every item.
    """
    num_items = len(categories)
    clicked = train.clicked.astype(np.float64)
    shown = np.bincount(train.item, minlength=num_items).astype(np.float64)
    clicks = np.bincount(train.item, weights=clicked, minlength=num_items)
    n_cat = int(categories.max()) + 1
    cat_shown = np.bincount(categories, weights=shown, minlength=n_cat)
    cat_clicks = np.bincount(categories, weights=clicks, minlength=n_cat)
    overall = clicks.sum() / max(shown.sum(), 1.0)
    cat_rate = (cat_clicks + strength * overall) / (cat_shown + strength)
    prior = cat_rate[categories]
    shown_k = np.where(known, shown, 0.0)
    clicks_k = np.where(known, clicks, 0.0)
    item_rate = (clicks_k + strength * prior) / (shown_k + strength)
    return Popularity(item_rate=item_rate, category_rate=prior)


class LogisticBaseline:
    """Logistic regression on per-event features (see module docstring).

    Args:
        item_features: (num_items, F) dense item features (the simulator's `item_features`).
        known: (num_items,) bool, items with an own one-hot column.
        num_profile_tokens: size of the profile vocabulary.
        max_train: training events used at most (a seeded subsample beyond that).
        seed: seed of the subsample and of the solver.
    """

    def __init__(
        self,
        item_features: np.ndarray,
        known: np.ndarray,
        num_profile_tokens: int,
        max_train: int = 200_000,
        seed: int = 0,
    ) -> None:
        """Store the encodings; call `fit`."""
        self.item_features = np.asarray(item_features, dtype=np.float64)
        self.known = np.asarray(known, dtype=bool)
        self.num_profile_tokens = int(num_profile_tokens)
        self.max_train = max_train
        self.seed = seed
        self.model: LogisticRegression | None = None

    def design(self, events: Events) -> sparse.csr_matrix:
        """Sparse feature matrix (n, D) of events."""
        n = len(events)
        num_items = len(self.known)
        rows = np.arange(n)
        item_known = self.known[events.item]
        item_oh = sparse.csr_matrix(
            (np.ones(int(item_known.sum())), (rows[item_known], events.item[item_known])),
            shape=(n, num_items),
        )
        feats = sparse.csr_matrix(self.item_features[events.item])
        pos = np.minimum(events.slot, MAX_POSITIONS - 1)
        pos_oh = sparse.csr_matrix((np.ones(n), (rows, pos)), shape=(n, MAX_POSITIONS))
        prof = events.profiles[events.session]  # (n, slots)
        pr, pc = np.nonzero(prof >= 0)
        prof_oh = sparse.csr_matrix(
            (np.ones(len(pr)), (pr, prof[pr, pc])), shape=(n, max(self.num_profile_tokens, 1))
        )
        dense = np.stack(
            [
                (events.clicks_before > 0).astype(np.float64),
                np.log1p(events.step),
                np.log1p(events.slot),
            ],
            axis=1,
        )
        return sparse.hstack([item_oh, feats, pos_oh, prof_oh, sparse.csr_matrix(dense)]).tocsr()

    def fit(self, train: Events) -> LogisticBaseline:
        """Fit on training events (subsampled to max_train)."""
        from sklearn.linear_model import LogisticRegression

        x = self.design(train)
        y = train.clicked
        if len(y) > self.max_train:
            keep = np.random.default_rng(self.seed).choice(len(y), self.max_train, replace=False)
            x, y = x[keep], y[keep]
        if y.all() or not y.any():
            raise ValueError("the training part has a single click class; cannot fit")
        self.model = LogisticRegression(C=1.0, max_iter=500, random_state=self.seed)
        self.model.fit(x, y)
        return self

    def predict(self, events: Events) -> np.ndarray:
        """(n,) click probabilities."""
        if self.model is None:
            raise RuntimeError("call fit() first")
        return self.model.predict_proba(self.design(events))[:, 1]


HISTORY_PRIOR = 5.0
"""Pseudo-events of the overall (or category) rate added to every history rate (smoothing)."""
ITEM_DROPOUT = 0.1
"""Share of training events whose item statistics are hidden, so the trees learn to score an
item without them (a cold item), as the simulator's training drops items out."""
ITEM_FOLDS = 5
"""Training events get their item statistics from the other users' events (5 folds by user):
an event's own click never counts toward its features."""


def item_statistics(
    train: Events, num_items: int, events: Events | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """Per-event (clicks, impressions) of each event's item in the training part.

    For held-out `events` the whole training part counts; for the training events themselves
    (`events` None) each gets the counts of the users outside its fold (`ITEM_FOLDS`).
    """
    y = train.clicked.astype(np.float64)
    clicks = np.bincount(train.item, weights=y, minlength=num_items)
    shown = np.bincount(train.item, minlength=num_items).astype(np.float64)
    if events is not None:
        return clicks[events.item], shown[events.item]
    user = pd.factorize(train.session_user[train.session])[0]
    n_users = int(user.max()) + 1 if len(user) else 0
    fold = np.random.default_rng(n_users).permutation(n_users)[user] % ITEM_FOLDS
    ec, es = np.empty(len(train)), np.empty(len(train))
    for f in range(ITEM_FOLDS):
        own = fold == f
        c = clicks - np.bincount(train.item[own], weights=y[own], minlength=num_items)
        n = shown - np.bincount(train.item[own], minlength=num_items)
        ec[own], es[own] = c[train.item[own]], n[train.item[own]]
    return ec, es


def history_features(
    events: Events,
    categories: np.ndarray,
    item_stats: tuple[np.ndarray, np.ndarray] | None,
    known: np.ndarray,
) -> np.ndarray:
    """Per-event history features (n, 7) float64 (NaN where nothing is known).

    Columns: the user's click rate on the earlier slates of the session, how many items the
    session showed before (log1p), the user's click rate on the session's earlier items of this
    item's category (category affinity), the item's click rate in the training part (known
    items only), the item's training impressions (log1p), the category's click rate, and the
    slate length. The user's history is the session's, as the simulator reads it (it starts
    every session from the profile): the trees know what the simulator knows, summarised.

    Args:
        events: the events (sorted by user, session, step as `build_events` gives them).
        categories: (num_items,) category index per item.
        item_stats: per event, the (clicks, impressions) of its item in the training part
            (`item_statistics`), or None (no item columns).
        known: (num_items,) bool, items with item-level statistics.
    """
    y = events.clicked.astype(np.float64)
    n = len(events)
    user = events.session  # the history of this session (see the docstring)
    step_key = events.step  # one slate of the session
    overall = y.mean() if n else 0.0
    # the session's earlier slates: cumulative sums per session, excluding the current slate
    frame = pd.DataFrame({"user": user, "slate": step_key, "y": y, "one": 1.0})
    per_slate = frame.groupby(["user", "slate"], sort=False)[["y", "one"]].sum()
    before = per_slate.groupby(level="user").cumsum() - per_slate
    idx = pd.MultiIndex.from_arrays([user, step_key])
    clicks_before = before["y"].reindex(idx).to_numpy()
    shown_before = before["one"].reindex(idx).to_numpy()
    user_rate = (clicks_before + HISTORY_PRIOR * overall) / (shown_before + HISTORY_PRIOR)
    # the same within the item's category (category affinity)
    cat = categories[events.item]
    frame["cat"] = cat
    per_cat = frame.groupby(["user", "cat", "slate"], sort=False)[["y", "one"]].sum()
    before_c = per_cat.groupby(level=["user", "cat"]).cumsum() - per_cat
    idx_c = pd.MultiIndex.from_arrays([user, cat, step_key])
    c_before = before_c["y"].reindex(idx_c).to_numpy()
    c_shown = before_c["one"].reindex(idx_c).to_numpy()
    if item_stats is None:
        item_rate = np.full(n, np.nan)
        item_shown = np.full(n, np.nan)
        cat_rate = np.full(n, overall)
    else:
        ic, ishown = item_stats
        per_item = pd.DataFrame({"cat": cat, "item": events.item, "c": ic, "n": ishown})
        # category rates from each item's counts once (the first event's fold for training)
        by_cat = per_item.drop_duplicates("item").groupby("cat")[["c", "n"]].sum()
        base = by_cat["c"].sum() / max(by_cat["n"].sum(), 1.0)
        rates = (by_cat["c"] + HISTORY_PRIOR * base) / (by_cat["n"] + HISTORY_PRIOR)
        cat_rate = rates.reindex(cat).to_numpy()
        item_rate = (ic + HISTORY_PRIOR * cat_rate) / (ishown + HISTORY_PRIOR)
        item_shown = np.log1p(ishown)
        cold = ~known[events.item]
        item_rate[cold] = np.nan
        item_shown[cold] = np.nan
    affinity = (c_before + HISTORY_PRIOR * user_rate) / (c_shown + HISTORY_PRIOR)
    slot_step = np.searchsorted(events.step_first_slot, np.arange(n), "right") - 1
    return np.stack(
        [
            user_rate,
            np.log1p(shown_before),
            affinity,
            item_rate,
            item_shown,
            cat_rate,
            events.step_size[slot_step].astype(np.float64),
        ],
        axis=1,
    ).astype(np.float64)


class GradientBoostingBaseline:
    """Gradient-boosted trees (scikit-learn's HistGradientBoostingClassifier) on event features.

    The logistic regression's features (item features, position, profile, earlier clicks of
    the slate, step) plus history features (`history_features`: the user's past click rate,
    the item's click rate, category affinity, slate length and more).

    Fitted on the training users' events, whose history features come from their sessions'
    earlier events (the item statistics from the other users' events, `item_statistics`, and a
    share of events hide them, as cold items have none); the held-out users' history features
    come from their own sessions and the training part's item statistics.

    Args:
        item_features: (num_items, F) dense item features.
        categories: (num_items,) category index per item.
        known: (num_items,) bool, items with item-level statistics (the simulator's warm items).
        num_profile_tokens: size of the profile vocabulary (multi-hot columns, at most 512).
        max_train: training events used at most (a seeded subsample beyond that).
        seed: seed of the subsample, the hidden item statistics and the trees.
    """

    MAX_PROFILE_COLUMNS = 512

    def __init__(
        self,
        item_features: np.ndarray,
        categories: np.ndarray,
        known: np.ndarray,
        num_profile_tokens: int,
        max_train: int = 200_000,
        seed: int = 0,
    ) -> None:
        """Store the encodings; call `fit`."""
        self.item_features = np.asarray(item_features, dtype=np.float64)
        self.categories = np.asarray(categories, dtype=np.int64)
        self.known = np.asarray(known, dtype=bool)
        self.num_profile_tokens = min(int(num_profile_tokens), self.MAX_PROFILE_COLUMNS)
        self.max_train = max_train
        self.seed = seed
        self.train: Events | None = None
        self.model: Any = None

    def design(self, events: Events, training: bool = False) -> np.ndarray:
        """Dense feature matrix (n, D) of events (NaN: unknown); `training`: the fitted events."""
        n = len(events)
        prof = np.zeros((n, max(self.num_profile_tokens, 1)))
        p = events.profiles[events.session]
        pr, pc = np.nonzero((p >= 0) & (p < self.num_profile_tokens))
        prof[pr, p[pr, pc]] = 1.0
        base = np.stack(
            [
                events.slot.astype(np.float64),
                (events.clicks_before > 0).astype(np.float64),
                events.clicks_before.astype(np.float64),
                events.step.astype(np.float64),
            ],
            axis=1,
        )
        stats = None
        if self.train is not None:
            stats = item_statistics(self.train, len(self.known), None if training else events)
        hist = history_features(events, self.categories, stats, self.known)
        return np.hstack([self.item_features[events.item], base, prof, hist])

    def fit(self, train: Events) -> GradientBoostingBaseline:
        """Fit on training events (subsampled to max_train)."""
        from sklearn.ensemble import HistGradientBoostingClassifier

        y_all = train.clicked
        self.train = train
        x = self.design(train, training=True)
        rng = np.random.default_rng(self.seed)
        hide = rng.random(len(x)) < ITEM_DROPOUT
        x[hide, -4:-2] = np.nan  # item rate and impressions: as for a cold item
        y = y_all
        if len(y) > self.max_train:
            keep = rng.choice(len(y), self.max_train, replace=False)
            x, y = x[keep], y[keep]
        if y.all() or not y.any():
            raise ValueError("the training part has a single click class; cannot fit")
        self.model = HistGradientBoostingClassifier(
            max_iter=300,
            learning_rate=0.1,
            max_leaf_nodes=31,
            early_stopping=len(y) > 2_000,
            validation_fraction=0.1,
            n_iter_no_change=20,
            random_state=self.seed,
        )
        self.model.fit(x, y)
        return self

    def predict(self, events: Events) -> np.ndarray:
        """(n,) click probabilities."""
        if self.model is None:
            raise RuntimeError("call fit() first")
        return self.model.predict_proba(self.design(events))[:, 1]
