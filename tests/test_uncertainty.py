"""Bootstrap intervals over held-out users (evaluation.fidelity.uncertainty)."""

import numpy as np
import pytest

from evaluation.fidelity import metrics as M
from evaluation.fidelity.uncertainty import (
    comparison_intervals,
    ece_interval,
    paired_auc_difference,
    user_weights,
    weighted_auc,
    weighted_ece,
)


def _events(users: int, per_user: int, seed: int = 0):
    """Clicks whose rate differs by user, a good predictor and a coarser copy of it."""
    rng = np.random.default_rng(seed)
    user = np.repeat(np.arange(users), per_user)
    rate = rng.uniform(0.2, 0.8, users)[user]
    y = rng.random(len(user)) < rate
    good = np.clip(rate + rng.normal(0, 0.05, len(user)), 0.01, 0.99)
    return user, y, good, np.round(good, 1)  # rounding makes ties


def test_unit_weights_give_the_metrics_own_auc_and_ece_ties_included():
    _, y, good, coarse = _events(30, 20)
    one = [np.ones(len(y))]
    for p in (good, coarse):
        assert weighted_auc(y, p, one)[0] == pytest.approx(M.roc_auc(y, p), abs=1e-12)
        assert weighted_ece(y, p, one)[0] == pytest.approx(
            M.expected_calibration_error(y, p), abs=1e-12
        )
    # a user drawn twice counts twice: the same as repeating that user's events
    w = np.ones(len(y))
    w[:20] = 2.0
    rep = np.r_[np.arange(len(y)), np.arange(20)]
    assert weighted_auc(y, good, [w])[0] == pytest.approx(M.roc_auc(y[rep], good[rep]))


def test_resamples_draw_whole_users_and_are_seeded():
    users = np.repeat(np.array(["a", "b", "c"]), [2, 3, 1])
    draws = list(user_weights(users, 5, seed=3))
    for w in draws:
        assert w.sum() == pytest.approx(
            sum(w[users == u][0] * n for u, n in (("a", 2), ("b", 3), ("c", 1)))
        )
        for u in "abc":  # every event of a user carries the same weight
            assert len(set(w[users == u])) == 1
    again = list(user_weights(users, 5, seed=3))
    assert all(np.array_equal(a, b) for a, b in zip(draws, again))


def test_paired_difference_is_zero_for_the_same_predictor_and_positive_for_a_better_one():
    user, y, good, _ = _events(80, 30)
    assert paired_auc_difference(y, good, good, user) == [0.0, 0.0]
    rng = np.random.default_rng(1)
    noisy = np.clip(good + rng.normal(0, 0.3, len(y)), 0, 1)
    lo, hi = paired_auc_difference(y, good, noisy, user)
    point = M.roc_auc(y, good) - M.roc_auc(y, noisy)
    assert 0 < lo < point < hi  # clearly better: the interval excludes 0
    # fewer users, wider interval
    few = user < 10
    lo_f, hi_f = paired_auc_difference(y[few], good[few], noisy[few], user[few])
    assert hi_f - lo_f > hi - lo
    assert paired_auc_difference(y, good, noisy, np.zeros(len(y))) is None  # one user


def test_ece_interval_holds_the_point_value_and_the_comparison_names_its_baseline():
    user, y, good, coarse = _events(60, 25)
    lo, hi = ece_interval(y, good, user)
    assert lo < M.expected_calibration_error(y, good) < hi
    res = comparison_intervals(y, {"sim": good, "gbdt": coarse, "logreg": None}, "gbdt", user)
    assert res["users"] == 60 and res["baseline"] == "gbdt" and res["resamples"] == 1000
    assert res["click_auc_minus_best_baseline_ci95"] == paired_auc_difference(y, good, coarse, user)
    none = comparison_intervals(y, {"sim": good}, None, user)
    assert none["click_auc_minus_best_baseline_ci95"] is None and none["ece_click_ci95"] is not None


def test_bad_input_is_named_and_an_ece_interval_never_goes_below_zero():
    user, y, good, _ = _events(40, 10)
    with pytest.raises(ValueError, match="399 users for 400 events"):
        ece_interval(y, good, user[1:])
    with pytest.raises(ValueError, match="p_other: 399 probabilities for 400 events"):
        paired_auc_difference(y, good, good[1:], user)
    nan = good.copy()
    nan[7] = np.nan
    with pytest.raises(
        ValueError, match="p_sim: probabilities must be finite in \\[0, 1\\], event 7"
    ):
        paired_auc_difference(y, nan, good, user)
    with pytest.raises(ValueError, match="needs the simulator's predictions"):
        comparison_intervals(y, {"sim": None}, None, user)
    # a calibrated predictor's ECE is near 0: its interval stops at 0
    rate = np.repeat(np.linspace(0.2, 0.8, 40), 10)
    calibrated = np.random.default_rng(2).random(400) < rate
    lo, hi = ece_interval(calibrated, rate, user)
    assert lo >= 0.0 and hi > lo


def test_the_report_says_why_there_is_no_interval_and_counts_its_verdicts():
    from evaluation.fidelity.render import interval_lines

    def res(users, none_because=None, **cis):
        targets = {
            k: {"ci95": ci, "bound_in_ci95": None if ci is None else ci[0] <= 0.0 <= ci[1]}
            for k, ci in cis.items()
        }
        intervals = {"users": users, "resamples": 1000, "none_because": none_because}
        return {"targets": targets, "baselines": {"intervals": intervals}}

    why = "intervals need at least 2 held-out users, here 1"
    one = interval_lines(res(1, why, ece_click=None, click_auc_minus_best_baseline=None))
    assert one == [f"Intervals over users: none ({why})."]
    both = interval_lines(
        res(67, ece_click=[-0.1, 0.1], click_auc_minus_best_baseline=[-0.01, 0.02])
    )
    assert "of the 67 held-out users" in both[0] and "paired" in both[0]
    assert (
        "The bounds lie inside the intervals of ece_click, click_auc_minus_best_baseline" in both[0]
    )
    ece_only = interval_lines(res(9, ece_click=[0.1, 0.2], click_auc_minus_best_baseline=None))
    assert (
        "paired" not in ece_only[0] and "No target's bound lies inside its interval." in ece_only[0]
    )


def test_a_handful_of_clicks_gives_no_interval_and_says_so():
    """Open Bandit's held-out users hold 4 clicks: resampling them says little, so no interval."""
    user, y, good, coarse = _events(30, 20)
    few = y.copy()
    few[np.flatnonzero(y)[19:]] = False  # 19 clicks left
    assert paired_auc_difference(few, good, coarse, user) is None
    assert ece_interval(few, good, user) is None
    res = comparison_intervals(few, {"sim": good, "gbdt": coarse}, "gbdt", user)
    assert res["none_because"] == (
        "intervals need at least 20 held-out events with a click and 20 without, here 19 and 581"
    )
    few[np.flatnonzero(y)[19]] = True  # 20: enough
    assert (
        comparison_intervals(few, {"sim": good, "gbdt": coarse}, "gbdt", user)["none_because"]
        is None
    )
