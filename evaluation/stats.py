"""The one confidence-interval helper every report uses."""

from __future__ import annotations

import numpy as np

Z95 = 1.96
"""Normal quantile of a two-sided 95% interval."""


def mean_ci95(x: np.ndarray) -> tuple[float | None, list[float] | None]:
    """Mean and normal-approximation 95% confidence interval of the mean.

    Args:
        x: (n,) values (one per user, episode or seed).

    Returns:
        (mean, [low, high]); (None, None) for no values, a zero-width interval for one.
    """
    x = np.asarray(x, dtype=np.float64)
    if len(x) == 0:
        return None, None
    m = float(x.mean())
    half = Z95 * float(x.std(ddof=1)) / np.sqrt(len(x)) if len(x) > 1 else 0.0
    return m, [m - half, m + half]
