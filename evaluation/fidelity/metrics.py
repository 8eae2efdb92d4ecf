"""Fidelity metrics on plain arrays: any source of per-event probabilities can be scored.

Every function takes numpy arrays (outcomes and predicted or true probabilities), so the
simulator, the ground truth, a baseline or a test's hand-made predictor are scored by the same
code. Undefined results (an AUC with one class only, an empty group) are None, never NaN, so
they survive JSON.
"""

from __future__ import annotations

import numpy as np

EPS = 1e-7
"""Probabilities are clipped to [EPS, 1 - EPS] in log-losses and KL divergences."""


def _finite(x: float) -> float | None:
    return float(x) if np.isfinite(x) else None


def roc_auc(y: np.ndarray, p: np.ndarray) -> float | None:
    """Area under the ROC curve of scores p for binary outcomes y (None with one class).

    Ties count one half (the Mann-Whitney statistic), so a constant predictor scores 0.5.

    Example:
        >>> roc_auc(np.array([0, 1, 1]), np.array([0.1, 0.8, 0.3]))
        1.0
    """
    y = np.asarray(y, dtype=bool).reshape(-1)
    p = np.asarray(p, dtype=np.float64).reshape(-1)
    n_pos = int(y.sum())
    n_neg = len(y) - n_pos
    if n_pos == 0 or n_neg == 0:
        return None
    from scipy.stats import rankdata

    ranks = rankdata(p)  # average ranks: ties count one half
    return float((ranks[y].sum() - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg))


def binary_log_loss(y: np.ndarray, p: np.ndarray) -> float | None:
    """Mean negative log-likelihood (nats) of binary outcomes y under probabilities p."""
    y = np.asarray(y, dtype=np.float64).reshape(-1)
    if len(y) == 0:
        return None
    p = np.clip(np.asarray(p, dtype=np.float64).reshape(-1), EPS, 1 - EPS)
    return float(-(y * np.log(p) + (1 - y) * np.log1p(-p)).mean())


def reliability(y: np.ndarray, p: np.ndarray, bins: int = 15) -> dict[str, list]:
    """Equal-width reliability bins over [0, 1]: count, mean prediction, observed frequency.

    Returns:
        {"edges": (bins + 1,), "count": (bins,), "mean_pred": (bins,), "frac_pos": (bins,)},
        the means None for empty bins.
    """
    y = np.asarray(y, dtype=np.float64).reshape(-1)
    p = np.asarray(p, dtype=np.float64).reshape(-1)
    edges = np.linspace(0.0, 1.0, bins + 1)
    idx = np.clip(np.digitize(p, edges[1:-1], right=False), 0, bins - 1)
    count = np.bincount(idx, minlength=bins)
    sum_p = np.bincount(idx, weights=p, minlength=bins)
    sum_y = np.bincount(idx, weights=y, minlength=bins)
    with np.errstate(invalid="ignore", divide="ignore"):
        mean_p = sum_p / count
        frac = sum_y / count
    return {
        "edges": edges.tolist(),
        "count": count.astype(int).tolist(),
        "mean_pred": [_finite(v) for v in mean_p],
        "frac_pos": [_finite(v) for v in frac],
    }


def expected_calibration_error(y: np.ndarray, p: np.ndarray, bins: int = 15) -> float | None:
    """ECE: sum over equal-width bins of (bin share) * |mean prediction - observed frequency|."""
    y = np.asarray(y, dtype=np.float64).reshape(-1)
    if len(y) == 0:
        return None
    rel = reliability(y, p, bins)
    total = 0.0
    for n, mp, fp in zip(rel["count"], rel["mean_pred"], rel["frac_pos"]):
        if n:
            total += n * abs(mp - fp)
    return float(total / len(y))


def kl_categorical(p_true: np.ndarray, p_model: np.ndarray) -> np.ndarray:
    """KL(p_true || p_model) in nats over the last axis: (..., C) -> (...).

    Terms with p_true = 0 contribute 0; p_model is floored at EPS, so a model that rules out
    something that happens costs a large but finite amount (and identical inputs give exactly 0).
    """
    p = np.asarray(p_true, dtype=np.float64)
    q = np.maximum(np.asarray(p_model, dtype=np.float64), EPS)
    with np.errstate(divide="ignore", invalid="ignore"):
        terms = np.where(p > 0, p * (np.log(np.maximum(p, EPS)) - np.log(q)), 0.0)
    return np.maximum(terms.sum(axis=-1), 0.0)


def kl_bernoulli(p_true: np.ndarray, p_model: np.ndarray) -> np.ndarray:
    """KL(Bernoulli(p_true) || Bernoulli(p_model)) in nats, elementwise."""
    p = np.asarray(p_true, dtype=np.float64)
    q = np.asarray(p_model, dtype=np.float64)
    return kl_categorical(np.stack([1 - p, p], axis=-1), np.stack([1 - q, q], axis=-1))


def sample_responses(probs: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """One categorical draw per row of probs (n, C) -> (n,) int64 (inverse CDF)."""
    probs = np.asarray(probs, dtype=np.float64)
    cdf = np.cumsum(probs, axis=-1)
    u = rng.random(len(probs)) * cdf[:, -1]
    return (u[:, None] >= cdf[:, :-1]).sum(axis=-1).astype(np.int64)


def precision_recall_f1(
    y_true: np.ndarray, y_pred: np.ndarray, labels: list[str]
) -> dict[str, dict[str, float | int | None]]:
    """Per-class precision, recall, F1 and support of predicted vs true class indices.

    Args:
        y_true: (n,) true class indices in [0, len(labels)).
        y_pred: (n,) predicted class indices in [0, len(labels)).
        labels: class names, in index order.
    """
    y_true = np.asarray(y_true, dtype=np.int64)
    y_pred = np.asarray(y_pred, dtype=np.int64)
    out: dict[str, dict[str, float | int | None]] = {}
    for c, name in enumerate(labels):
        tp = int(((y_pred == c) & (y_true == c)).sum())
        n_pred = int((y_pred == c).sum())
        n_true = int((y_true == c).sum())
        prec = tp / n_pred if n_pred else None
        rec = tp / n_true if n_true else None
        f1 = 2 * prec * rec / (prec + rec) if prec and rec else (0.0 if n_pred or n_true else None)
        out[name] = {"precision": prec, "recall": rec, "f1": f1, "support": n_true}
    return out


def ks_two_sample(a: np.ndarray, b: np.ndarray) -> dict[str, float | None]:
    """Two-sample Kolmogorov-Smirnov statistic sup |F_a - F_b| and its p-value (scipy)."""
    from scipy.stats import ks_2samp

    a = np.asarray(a, dtype=np.float64)
    b = np.asarray(b, dtype=np.float64)
    if len(a) == 0 or len(b) == 0:
        return {"statistic": None, "pvalue": None}
    res = ks_2samp(a, b)
    return {"statistic": float(res.statistic), "pvalue": float(res.pvalue)}


def rate_by_index(index: np.ndarray, values: np.ndarray, length: int) -> list[float | None]:
    """Mean of values grouped by integer index 0..length-1 (None where a group is empty)."""
    index = np.asarray(index, dtype=np.int64)
    values = np.asarray(values, dtype=np.float64)
    keep = (index >= 0) & (index < length)
    n = np.bincount(index[keep], minlength=length)
    s = np.bincount(index[keep], weights=values[keep], minlength=length)
    return [float(s[i] / n[i]) if n[i] else None for i in range(length)]


def ci_ties(means: np.ndarray, lo: np.ndarray, hi: np.ndarray) -> np.ndarray:
    """(n, n) bool: i and j are tied when each mean lies within the other's interval."""
    m = np.asarray(means, dtype=np.float64)
    lo = np.asarray(lo, dtype=np.float64)
    hi = np.asarray(hi, dtype=np.float64)
    inside = (m[:, None] >= lo[None, :]) & (m[:, None] <= hi[None, :])  # m_i in CI_j
    return inside & inside.T


def kendall_tau_b(
    x: np.ndarray,
    y: np.ndarray,
    x_ties: np.ndarray | None = None,
    y_ties: np.ndarray | None = None,
) -> float | None:
    """Kendall's tau-b between two score vectors, with optional pairwise tie matrices.

    A pair counts as tied on a side when its scores are equal or its tie matrix says so (e.g.
    `ci_ties` of the true returns); tied pairs are neither concordant nor discordant and shrink
    the denominator as in tau-b. None when every pair is tied on one side (undefined).

    Example:
        >>> kendall_tau_b(np.array([1.0, 2.0, 3.0]), np.array([10.0, 30.0, 20.0]))
        0.3333333333333333
    """
    x = np.asarray(x, dtype=np.float64)
    y = np.asarray(y, dtype=np.float64)
    n = len(x)
    if n < 2:
        return None
    tx = x[:, None] == x[None, :]
    ty = y[:, None] == y[None, :]
    if x_ties is not None:
        tx = tx | np.asarray(x_ties, dtype=bool)
    if y_ties is not None:
        ty = ty | np.asarray(y_ties, dtype=bool)
    iu = np.triu_indices(n, 1)
    sx = np.sign(x[:, None] - x[None, :])[iu]
    sy = np.sign(y[:, None] - y[None, :])[iu]
    tx, ty = tx[iu], ty[iu]
    both = ~tx & ~ty
    concordant = int(((sx * sy) > 0)[both].sum())
    discordant = int(((sx * sy) < 0)[both].sum())
    n0 = len(sx)
    denom = np.sqrt(float(n0 - tx.sum()) * float(n0 - ty.sum()))
    if denom == 0:
        return None
    return float((concordant - discordant) / denom)


def click_scores(y: np.ndarray, p: np.ndarray, bins: int = 15) -> dict[str, float | None]:
    """AUC, log-loss and ECE of click predictions p for outcomes y (the report's trio)."""
    return {
        "auc": roc_auc(y, p),
        "logloss": binary_log_loss(y, p),
        "ece": expected_calibration_error(y, p, bins),
    }
