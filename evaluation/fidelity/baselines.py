"""Click baselines fitted on the training part of the logs: what the LLM user adds over them.

- `Popularity`: the item's click rate in the training part, shrunk toward its category's rate
  (so an item the simulator never saw, a cold item, is scored by its category's popularity:
  popularity-by-category).
- `LogisticBaseline`: scikit-learn logistic regression on item one-hot (known items only),
  item features (category one-hot, log price), position, profile multi-hot, whether an earlier
  slot of the slate was clicked, and the step index: the same information the simulator reads
  about one event, without sequence modelling.

Both know exactly the items the simulator knows (`known`): a cold item has no item-level
statistics in either.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

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
