"""How sure the click comparison is: bootstrap intervals over held-out users.

Held-out events are not independent: a user's events share that user's taste and base rate, and
a few dozen users decide a real log's figures. So the intervals here resample *users* (each
drawn user brings all of their events) and recompute the metric on every resample:

- `paired_auc_difference`: the simulator's click AUC minus a baseline's on the same resampled
  events (paired, so what the two share cancels out);
- `ece_interval`: the interval of one predictor's click ECE.

Both use weighted forms of `evaluation.fidelity.metrics`' AUC (ties count one half) and ECE
(the same 15 equal-width bins), with each event weighted by how often its user was drawn, so a
resample costs two `bincount`s rather than a sort. Each interval is the full-sample value
± 1.96 bootstrap standard errors (seeded). Not percentiles: ECE sums absolute gaps, so a
resample's ECE is biased upward and a well-calibrated model's own ECE would fall below its
percentile interval.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from typing import Any

import numpy as np

from evaluation.stats import Z95

RESAMPLES = 1000
"""Bootstrap resamples of the held-out users."""
BOOTSTRAP_SEED = 0
MIN_CLASS_EVENTS = 20
"""Clicks, and events without one, needed for an interval: with a handful of clicks (Open
Bandit's held-out users hold 4) the resamples keep or drop the same few clicking users, and the
interval comes out far narrower than what those clicks can tell."""


def user_weights(users: np.ndarray, resamples: int, seed: int) -> Iterator[np.ndarray]:
    """Per resample, the (n,) weight of each event: how often its user was drawn.

    One vector at a time, so memory stays at one weight per event whatever `resamples` is.

    Args:
        users: (n,) the user of each event (any labels).
        resamples: number of bootstrap resamples.
        seed: seed of the draws (the same seed gives the same resamples).
    """
    labels, index = np.unique(np.asarray(users).astype(str), return_inverse=True)
    index = index.reshape(-1)
    rng = np.random.default_rng(seed)
    for _ in range(resamples):
        drawn = np.bincount(rng.integers(0, len(labels), len(labels)), minlength=len(labels))
        yield drawn[index].astype(np.float64)


class _Levels:
    """Scores reduced once to their sorted distinct levels, for weighted AUCs by `bincount`."""

    def __init__(self, y: np.ndarray, p: np.ndarray) -> None:
        self.y = np.asarray(y, dtype=bool).reshape(-1)
        _, self.level = np.unique(np.asarray(p, dtype=np.float64), return_inverse=True)
        self.level = self.level.reshape(-1)
        self.count = int(self.level.max()) + 1 if len(self.level) else 0

    def auc(self, w: np.ndarray) -> float:
        """AUC under event weights w (ties count one half); NaN with one class only."""
        pos = np.bincount(self.level, weights=w * self.y, minlength=self.count)
        neg = np.bincount(self.level, weights=w * ~self.y, minlength=self.count)
        below = np.cumsum(neg) - neg  # weight of the negatives scored strictly lower
        total = pos.sum() * neg.sum()
        return float((pos * (below + 0.5 * neg)).sum() / total) if total > 0 else np.nan


def weighted_auc(y: np.ndarray, p: np.ndarray, weights: Iterable[np.ndarray]) -> np.ndarray:
    """Click AUC of scores p under each (n,) vector of event weights (ties count one half).

    Returns:
        One AUC per weight vector; NaN where the weighted events hold one class only.
    """
    levels = _Levels(y, p)
    return np.array([levels.auc(w) for w in weights])


def weighted_ece(
    y: np.ndarray, p: np.ndarray, weights: Iterable[np.ndarray], bins: int = 15
) -> np.ndarray:
    """Click ECE of probabilities p (equal-width bins) under each vector of event weights."""
    y = np.asarray(y, dtype=np.float64).reshape(-1)
    p = np.asarray(p, dtype=np.float64).reshape(-1)
    edges = np.linspace(0.0, 1.0, bins + 1)
    idx = np.clip(np.digitize(p, edges[1:-1], right=False), 0, bins - 1)
    out = []
    for w in weights:
        gap = np.bincount(idx, weights=w * p, minlength=bins) - np.bincount(
            idx, weights=w * y, minlength=bins
        )
        total = w.sum()
        out.append(np.abs(gap).sum() / total if total > 0 else np.nan)
    return np.array(out)


def too_few(y: np.ndarray, users: np.ndarray) -> str | None:
    """Why no interval can be given (None: one can): fewer than 2 users or `MIN_CLASS_EVENTS`."""
    y = np.asarray(y, dtype=bool).reshape(-1)
    n_users = _count_users(users)
    if n_users < 2:
        return f"intervals need at least 2 held-out users, here {n_users}"
    clicks, others = int(y.sum()), int((~y).sum())
    if min(clicks, others) < MIN_CLASS_EVENTS:
        return (
            f"intervals need at least {MIN_CLASS_EVENTS} held-out events with a click and "
            f"{MIN_CLASS_EVENTS} without, here {clicks} and {others}"
        )
    return None


def _count_users(users: np.ndarray) -> int:
    return len(np.unique(np.asarray(users).astype(str)))


def _interval(point: float | None, values: np.ndarray, low: float = -np.inf) -> list[float] | None:
    """Point ± Z95 standard deviations of the finite resampled values, not below `low`.

    None where undefined (no point value, fewer than two finite resamples).
    """
    values = values[np.isfinite(values)]
    if point is None or not np.isfinite(point) or len(values) < 2:
        return None
    half = Z95 * float(values.std(ddof=1))
    return [max(float(point) - half, low), float(point) + half]


def _check(y: np.ndarray, users: np.ndarray, **probs: np.ndarray) -> None:
    """One outcome, user and probability per event, probabilities finite in [0, 1]."""
    n = len(np.asarray(y).reshape(-1))
    if len(np.asarray(users).reshape(-1)) != n:
        raise ValueError(f"{len(np.asarray(users).reshape(-1))} users for {n} events")
    for name, p in probs.items():
        p = np.asarray(p, dtype=np.float64).reshape(-1)
        if len(p) != n:
            raise ValueError(f"{name}: {len(p)} probabilities for {n} events")
        if not np.isfinite(p).all() or (p < 0).any() or (p > 1).any():
            bad = int(np.argmax(~np.isfinite(p) | (p < 0) | (p > 1)))
            raise ValueError(
                f"{name}: probabilities must be finite in [0, 1], event {bad} is {p[bad]}"
            )


def paired_auc_difference(
    y: np.ndarray,
    p_sim: np.ndarray,
    p_other: np.ndarray,
    users: np.ndarray,
    resamples: int = RESAMPLES,
    seed: int = BOOTSTRAP_SEED,
) -> list[float] | None:
    """95% interval of AUC(p_sim) - AUC(p_other), users resampled with replacement.

    None where `too_few` says why (fewer than two users, or fewer than `MIN_CLASS_EVENTS`
    clicks or non-clicks).

    Raises:
        ValueError: lengths that differ, or probabilities not finite in [0, 1].
    """
    _check(y, users, p_sim=p_sim, p_other=p_other)
    if too_few(y, users):
        return None
    sim, other = _Levels(y, p_sim), _Levels(y, p_other)
    diffs = [sim.auc(w) - other.auc(w) for w in user_weights(users, resamples, seed)]
    one = np.ones(len(sim.y))
    return _interval(sim.auc(one) - other.auc(one), np.array(diffs))


def ece_interval(
    y: np.ndarray,
    p: np.ndarray,
    users: np.ndarray,
    resamples: int = RESAMPLES,
    seed: int = BOOTSTRAP_SEED,
) -> list[float] | None:
    """95% interval of the click ECE over users resampled with replacement (None: `too_few`).

    Its low end is clipped at 0 (an ECE is never negative).
    """
    _check(y, users, p=p)
    if too_few(y, users):
        return None
    resampled = weighted_ece(y, p, user_weights(users, resamples, seed))
    return _interval(float(weighted_ece(y, p, [np.ones(len(p))])[0]), resampled, low=0.0)


def comparison_intervals(
    y: np.ndarray,
    preds: dict[str, np.ndarray | None],
    best: str | None,
    users: np.ndarray,
) -> dict[str, Any]:
    """The intervals behind the real-log targets: the simulator against the best baseline.

    Args:
        y: (n,) clicks of the held-out events.
        preds: click probabilities per source (`sim` and the baselines; None: not fitted).
        best: the best baseline's name on all events (None: none fitted).
        users: (n,) the user of each event.
    """
    sim = preds.get("sim")
    if sim is None:
        raise ValueError("comparison_intervals needs the simulator's predictions (preds['sim'])")
    other = preds.get(best) if best else None
    return {
        "users": _count_users(users),
        "resamples": RESAMPLES,
        "method": "value ± 1.96 bootstrap standard errors over held-out users (each drawn "
        "user brings all of their events), seeded",
        "baseline": best,
        "none_because": too_few(y, users),
        "click_auc_minus_best_baseline_ci95": (
            None if other is None else paired_auc_difference(y, sim, other, users)
        ),
        "ece_click_ci95": ece_interval(y, sim, users),
        "best_baseline_ece_click_ci95": None if other is None else ece_interval(y, other, users),
    }
