"""The simulator beside the click baselines, on all events, cold and warm items and users.

`baseline_section(run)` fits the baselines of `evaluation.fidelity.baselines` on the training
part of the logs and scores every source (the simulator, the oracle where a world is known,
each baseline) with click AUC, log-loss and ECE on each group of held-out events; the report
(`evaluation.fidelity.report`) puts the result under `baselines` and `warm_cold`.
"""

from __future__ import annotations

import time
from typing import Any

import numpy as np

from evaluation.fidelity import metrics as M
from evaluation.fidelity.events import Events, build_events, teacher_forced
from evaluation.fidelity.inputs import ValidationRun
from evaluation.fidelity.sections import click_probability, group_metrics
from evaluation.fidelity.uncertainty import comparison_intervals

BASELINES = ("popularity", "popularity_by_category", "logreg", "gbdt")
"""The click baselines, weakest first (`evaluation.fidelity.baselines`)."""


def fit_baselines(run: ValidationRun, train_events: Events) -> dict[str, Any]:
    """The baselines fitted on the training part (each a function events -> click scores)."""
    from evaluation.fidelity.baselines import (
        GradientBoostingBaseline,
        LogisticBaseline,
        fit_popularity,
        item_categories,
    )

    sim, known = run.sim, run.known
    categories = item_categories(sim.items_table())
    pop = fit_popularity(train_events, categories, known)
    fitted: dict[str, Any] = {
        "popularity": pop.predict,
        "popularity_by_category": pop.predict_category,
    }
    n_prof = len(sim.profile_encoder.vocab)
    for name, make in (
        ("logreg", lambda: LogisticBaseline(sim.item_features, known, n_prof, seed=run.cfg.seed)),
        (
            "gbdt",
            lambda: GradientBoostingBaseline(
                sim.item_features, categories, known, n_prof, seed=run.cfg.seed
            ),
        ),
    ):
        t1 = time.perf_counter()
        try:
            fitted[name] = make().fit(train_events).predict
        except ValueError as exc:
            run.notes.append(f"{name} baseline skipped: {exc}")
        run.timings[f"fit_{name}"] = round(time.perf_counter() - t1, 2)
    return fitted


def baseline_section(run: ValidationRun) -> tuple[dict[str, Any], dict[str, Any], Events | None]:
    """Click baselines and the warm/cold split; returns (baselines, warm_cold, train events).

    Every source (the simulator, the oracle where there is a world, each baseline) is scored
    with click AUC, log-loss and ECE on all held-out events, on cold and warm items and on
    cold (held-out) and warm (training) users.
    """
    t0 = time.perf_counter()
    sim, events, known = run.sim, run.events, run.known
    assert run.sim_probs is not None  # teacher-forced before the sections
    sim_click = click_probability(run.sim_probs)
    preds: dict[str, np.ndarray | None] = {
        "sim": sim_click,
        "oracle": None if run.true_probs is None else click_probability(run.true_probs),
    }
    baselines: dict[str, Any] = {"fitted_on_events": 0}
    train_events = None
    fitted: dict[str, Any] = {}
    if run.data.train is not None and len(run.data.train.steps):
        train_events = build_events(run.data.train, sim.profile_encoder)
        fitted = fit_baselines(run, train_events)
        baselines["fitted_on_events"] = len(train_events)
    for name in BASELINES:
        preds[name] = fitted[name](events) if name in fitted else None
    y = events.clicked
    for name in ("sim", *BASELINES):
        p = preds[name]
        scores = M.click_scores(y, p) if p is not None else {}
        baselines[f"{name}_click_auc"] = scores.get("auc")
        baselines[f"{name}_click_logloss"] = scores.get("logloss")
        baselines[f"{name}_ece_click"] = scores.get("ece")
    ranked = [n for n in BASELINES if baselines[f"{n}_click_auc"] is not None]
    best = max(ranked, key=lambda n: baselines[f"{n}_click_auc"]) if ranked else None
    baselines["best"] = best
    baselines["best_click_auc"] = None if best is None else baselines[f"{best}_click_auc"]
    users = events.session_user[events.session]
    baselines["intervals"] = comparison_intervals(events.clicked, preds, best, users)
    kl = None if run.true_probs is None else M.kl_categorical(run.true_probs, run.sim_probs)
    item_warm = known[events.item]
    every = np.ones(len(events), dtype=bool)
    new = run.new_items if run.new_items is not None else np.zeros(len(known), dtype=bool)
    cold = group_metrics(~item_warm, events, preds, kl)
    cold["new_items"] = int(np.unique(events.item[new[events.item]]).size)
    cold["new_item_events"] = int(new[events.item].sum())
    warm_cold: dict[str, Any] = {
        "all": group_metrics(every, events, preds, kl),
        "items": {"warm": group_metrics(item_warm, events, preds, kl), "cold": cold},
        "users": {"cold": group_metrics(every, events, preds, kl), "warm": None},
        "note": "cold items: item_known is False in the checkpoint (never in its training logs, "
        "including items outside its catalog: new_items); held-out users are cold users (not "
        "in the simulator's training)",
    }
    if run.data.warm is not None and len(run.data.warm.steps):
        wev = build_events(run.data.warm, sim.profile_encoder)
        wp, _ = teacher_forced(sim, run.data.warm, wev)
        wpreds: dict[str, np.ndarray | None] = {"sim": click_probability(wp)}
        for name in BASELINES:
            wpreds[name] = fitted[name](wev) if name in fitted else None
        warm = group_metrics(np.ones(len(wev), dtype=bool), wev, wpreds, None)
        warm_cold["users"]["warm"] = {**warm, "note": "sessions of training users (in-sample)"}
    run.lap("baselines", t0)
    return baselines, warm_cold, train_events
