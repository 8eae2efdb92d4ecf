"""Calibration users: a Platt scaling of the engagement odds, fitted on users never trained on.

A network regularised for ranking (dropout, a weight average) ranks held-out users' items well
but is over-confident on them: on MovieLens its engagement log-odds need a slope of 0.82-0.84
to be calibrated on the held-out users (0.87-0.98 on calibration users: README, "Real logs at
real sizes"). The slope cannot be fitted on the training users (the network has seen them)
nor on the validation users (`validate` scores those), so train-sim holds out a third share of
users, the calibration users, and fits (slope, intercept) of p(engage) = sigmoid(slope * z +
intercept) on their logged responses, z being the network's log p(engage) - log p(skip). The
pair is saved in the checkpoint's `SimulatorConfig.response_calibration` and applied by
`simulators.lm.model.calibrated_logits` to every prediction. A monotone map of z: it changes
no click ranking (click AUC), only the probabilities; a deeper behaviour's probability (p(engage)
times its share of the engagements) can re-rank, so its AUC can move.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from simulators.lm.model import UserLM, engagement_log_odds, target_logits
from simulators.training.data import collate
from simulators.wording import plural

CALIBRATION_SEED = 11
"""Mixed with the training seed to draw the calibration users (apart from the validation
split, which keeps its users whatever the calibration share)."""


def calibration_mask(
    users: list[str], is_val: np.ndarray, fraction: float, seed: int
) -> np.ndarray:
    """Sessions of the calibration users: a seeded `fraction` of all users.

    They are drawn from the users not in validation, so the validation split is unchanged.

    Returns:
        bool (n_sessions,), False everywhere when `fraction` is 0.

    Raises:
        ValueError: the share leaves no training user.
    """
    mask = np.zeros(len(users), dtype=bool)
    if fraction <= 0:
        return mask
    everyone = sorted(set(users))
    candidates = sorted({u for u, v in zip(users, is_val) if not v})
    n = max(1, round(fraction * len(everyone)))  # at least one whole user
    if len(candidates) < 2:
        raise ValueError(
            "calibration needs a user of its own: the logs leave "
            f"{plural(len(candidates), 'user')} after validation, for training; use "
            "calibration_fraction 0 (or logs of more users)"
        )
    if n >= len(candidates):
        most = (len(candidates) - 1) / len(everyone)
        raise ValueError(
            f"calibration_fraction {fraction} takes {n} of the {len(candidates)} users left "
            f"after validation (whole users, at least one): no training user would remain; "
            f"use at most {most:.3g}"
        )
    rng = np.random.default_rng([seed, CALIBRATION_SEED])
    chosen = set(rng.permutation(np.array(candidates, dtype=object))[:n].tolist())
    mask[:] = [u in chosen for u in users]
    return mask


@torch.no_grad()
def engagement_evidence(
    model: UserLM, rows: list[dict[str, Any]], per: int, device: torch.device, autocast: Any
) -> tuple[np.ndarray, np.ndarray]:
    """The network's engagement log-odds and the logged outcome at every response of `rows`.

    The model must predict its own (uncalibrated) distribution.

    Returns:
        (z (n,) float64, engaged (n,) bool).
    """
    was_training = model.training
    model.eval()
    zs, ys = [], []
    for i in range(0, len(rows), per):
        batch = {k: v.to(device) for k, v in collate(rows[i : i + per]).items()}
        with autocast():
            logits, kind = target_logits(model, batch)
        resp = kind == 1
        target = batch["target"][batch["target_kind"] > 0][resp]
        zs.append(engagement_log_odds(logits[resp], model.num_behaviours).double().cpu().numpy())
        ys.append((target > 0).cpu().numpy())
    model.train(was_training)
    if not zs:
        return np.zeros(0), np.zeros(0, dtype=bool)
    return np.concatenate(zs), np.concatenate(ys)


def fit_platt(z: np.ndarray, engaged: np.ndarray, iterations: int = 50) -> tuple[float, float]:
    """(slope, intercept) maximising the Bernoulli likelihood of `engaged` given z (Newton).

    A tiny ridge (1e-6) keeps the Newton step defined.

    Raises:
        ValueError: fewer than two outcomes of either kind (nothing to fit), or a slope that
            is not positive and finite (odds that do not rank the responses).
    """
    y = engaged.astype(np.float64)
    if y.sum() < 2 or (1 - y).sum() < 2:
        raise ValueError(
            f"calibration needs engaged and skipped responses, got {int(y.sum())} engaged of "
            f"{len(y)}"
        )
    x = np.stack([z, np.ones_like(z)], 1)
    w = np.array([1.0, 0.0])
    for _ in range(iterations):
        p = np.exp(-np.logaddexp(0.0, -(x @ w)))  # sigmoid without overflow
        grad = x.T @ (p - y)
        hess = (x * (p * (1 - p))[:, None]).T @ x + 1e-6 * np.eye(2)
        step = np.linalg.solve(hess, grad)
        w -= step
        if np.abs(step).max() < 1e-10:
            break
    slope, intercept = float(w[0]), float(w[1])
    if not (np.isfinite(slope) and np.isfinite(intercept) and slope > 0):
        raise ValueError(
            f"calibration gave slope {slope}, intercept {intercept}: the network's odds do "
            "not rank the calibration users' responses"
        )
    return slope, intercept


def engagement_log_loss(
    z: np.ndarray, engaged: np.ndarray, slope: float = 1.0, intercept: float = 0.0
) -> float:
    """Mean Bernoulli log-loss of engagement at odds slope * z + intercept."""
    s = slope * z + intercept
    # log(1 + exp(-s)) for engaged, log(1 + exp(s)) for skipped, stably
    return float(np.mean(np.logaddexp(0.0, np.where(engaged, -s, s))))
