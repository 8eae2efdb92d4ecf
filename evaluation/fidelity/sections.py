"""The report's sections computed from arrays: responses, leaving, ground truth, sessions, ranking.

Each function takes held-out `Events` plus per-event probabilities (or per-user returns) from any
source and returns a JSON-ready dict; `evaluation.fidelity.report` feeds them.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np

from evaluation.fidelity import metrics as M
from evaluation.fidelity.events import Events
from evaluation.stats import mean_ci95
from simulators.behaviours import DEEPER, SKIP, BehaviourSet

ECE_BINS = 15
MAX_POSITIONS_SHOWN = 20


def click_probability(p: np.ndarray) -> np.ndarray:
    """p(any engagement) from response probabilities (n, R): a purchase is also a click."""
    return p[:, SKIP + 1 :].sum(axis=1)


def deeper_probability(p: np.ndarray) -> np.ndarray:
    """p(engagement past a click) from response probabilities (n, R) (a buy by default)."""
    return p[:, DEEPER:].sum(axis=1)


def response_metrics(
    events: Events,
    sim_probs: np.ndarray,
    true_probs: np.ndarray | None,
    seed: int,
    behaviours: BehaviourSet | None = None,
) -> dict[str, Any]:
    """AUC, log-loss, ECE, reliability, precision/recall/F1 and position click rates.

    "click" is any engagement and "buy" engagement past a click (the deepest levels).

    Args:
        events: held-out events.
        sim_probs: (n, R) the simulator's conditional probabilities at the events.
        true_probs: (n, R) the ground truth's, or None.
        seed: seed of the response samples.
        behaviours: the behaviour set of the codes (default: skip, click, buy).
    """
    names = list((behaviours or BehaviourSet()).names)
    y_click, y_buy = events.clicked, events.bought
    sources = {"sim": sim_probs} if true_probs is None else {"sim": sim_probs, "oracle": true_probs}
    out: dict[str, Any] = {"events": len(events)}
    for name, p in sources.items():
        pc = click_probability(p)
        out[name] = {
            "click_auc": M.roc_auc(y_click, pc),
            "click_logloss": M.binary_log_loss(y_click, pc),
            "ece_click": M.expected_calibration_error(y_click, pc, ECE_BINS),
            "buy_auc": M.roc_auc(y_buy, deeper_probability(p)),
            "buy_logloss": M.binary_log_loss(y_buy, deeper_probability(p)),
            "reliability_click": M.reliability(y_click, pc, ECE_BINS),
        }
        clicked = y_click
        out[name]["buy_given_click_auc"] = M.roc_auc(
            y_buy[clicked], deeper_probability(p)[clicked] / np.maximum(pc[clicked], 1e-12)
        )
        sampled = M.sample_responses(p, np.random.default_rng(seed))
        out[name]["precision_recall_f1"] = M.precision_recall_f1(events.response, sampled, names)
        out[name]["per_behaviour"] = behaviour_metrics(events.response, p, sampled, names)
    k = min(int(events.slot.max()) + 1, MAX_POSITIONS_SHOWN)
    pos = {"logged": M.rate_by_index(events.slot, y_click, k)}
    for name, p in sources.items():
        pos[f"{name}_expected"] = M.rate_by_index(events.slot, click_probability(p), k)
    out["click_rate_per_position"] = pos
    out["click_rate"] = {"logged": float(y_click.mean())}
    out["buy_rate"] = {"logged": float(y_buy.mean())}
    for name, p in sources.items():
        out["click_rate"][f"{name}_expected"] = float(click_probability(p).mean())
        out["buy_rate"][f"{name}_expected"] = float(deeper_probability(p).mean())
    return out


def behaviour_metrics(
    response: np.ndarray, probs: np.ndarray, sampled: np.ndarray, names: list[str]
) -> dict[str, dict[str, Any]]:
    """AUC, log-loss, ECE and precision/recall/F1 per behaviour level (every one past skip).

    A level is reached when the response is that behaviour or a deeper one (a purchase is also
    a click): its probability is the sum over those codes, and a sampled response reaches it
    the same way, so each behaviour of a custom set (`click like follow`) gets its own figures.

    Args:
        response: (n,) logged behaviour codes.
        probs: (n, R) a model's conditional probabilities.
        sampled: (n,) responses sampled from probs (for precision/recall/F1).
        names: behaviour names by code.
    """
    out: dict[str, dict[str, Any]] = {}
    for code in range(1, len(names)):
        y = response >= code
        p = probs[:, code:].sum(axis=1)
        pred = sampled >= code
        prf = M.precision_recall_f1(y.astype(np.int64), pred.astype(np.int64), ["no", "yes"])
        out[names[code]] = {
            **M.click_scores(y, p, ECE_BINS),
            "rate_logged": float(y.mean()) if len(y) else None,
            "rate_expected": float(p.mean()) if len(p) else None,
            **{k: prf["yes"][k] for k in ("precision", "recall", "f1", "support")},
        }
    return out


def leave_metrics(events: Events, sim_leave: np.ndarray, true_leave: np.ndarray | None) -> dict:
    """AUC and log-loss of the leave decisions (where one was logged)."""
    m = events.step_has_target
    y = events.step_leave[m]
    out: dict[str, Any] = {
        "decisions": int(m.sum()),
        "logged_leave_rate": float(y.mean()) if len(y) else None,
    }
    sources = {"sim": sim_leave} if true_leave is None else {"sim": sim_leave, "oracle": true_leave}
    for name, p in sources.items():
        out[name] = {"auc": M.roc_auc(y, p[m]), "logloss": M.binary_log_loss(y, p[m])}
    return out


def ground_truth_metrics(
    events: Events,
    sim_probs: np.ndarray,
    true_probs: np.ndarray,
    sim_leave: np.ndarray,
    true_leave: np.ndarray,
    context_probs: np.ndarray | None = None,
    context_mask: np.ndarray | None = None,
) -> dict[str, Any]:
    """Mean KL(true || sim) per slot (3-way conditional) and of the leave decision.

    Args:
        events: held-out events.
        sim_probs: (n, 3) the simulator's conditional response probabilities.
        true_probs: (n, 3) the world's conditional response probabilities.
        sim_leave: (m,) the simulator's leave probabilities (NaN where no decision was logged).
        true_leave: (m,) the world's leave probabilities (NaN where no decision was logged).
        context_probs: (n, 3) the world's probabilities given only what the simulator's context
            window shows (`world_replay(..., spans=context_spans(...))`), for the context floor.
        context_mask: (n,) bool, events whose window lacks earlier steps of the session.
    """
    kl = M.kl_categorical(true_probs, sim_probs)
    m = events.step_has_target
    kl_leave = M.kl_bernoulli(true_leave[m], sim_leave[m])
    k = min(int(events.slot.max()) + 1, MAX_POSITIONS_SHOWN)
    first_click = events.clicks_before == 0
    floor: dict[str, Any] = {"kl_floor_context": 0.0, "floor_context_click_auc": None}
    if context_probs is not None:
        floor["kl_floor_context"] = float(M.kl_categorical(true_probs, context_probs).mean())
        floor["floor_context_click_auc"] = M.roc_auc(
            events.clicked, click_probability(context_probs)
        )
    floor["events_beyond_context"] = (
        float(np.mean(context_mask)) if context_mask is not None else 0.0
    )
    return {
        **floor,
        "kl_per_slot": float(kl.mean()),
        "kl_per_slot_before_first_click": float(kl[first_click].mean())
        if first_click.any()
        else None,
        "kl_per_position": M.rate_by_index(events.slot, kl, k),
        "kl_leave": float(kl_leave.mean()) if len(kl_leave) else None,
        "kl_per_slot_p95": float(np.percentile(kl, 95)),
    }


def group_metrics(
    mask: np.ndarray, events: Events, preds: Mapping[str, np.ndarray | None], kl: np.ndarray | None
) -> dict[str, Any]:
    """Click rate, each source's click AUC, log-loss and ECE and (with kl) the mean KL of a group.

    Args:
        mask: (n,) bool, the events of the group.
        events: held-out events.
        preds: (n,) click probabilities per source (None: the source is missing).
        kl: (n,) KL(true || sim) per event, or None without a world.
    """
    n = int(mask.sum())
    res: dict[str, Any] = {
        "events": n,
        "click_rate": float(events.clicked[mask].mean()) if n else None,
    }
    for name, p in preds.items():
        scores = (
            M.click_scores(events.clicked[mask], p[mask], ECE_BINS)
            if n and p is not None
            else {"auc": None, "logloss": None, "ece": None}
        )
        res[f"{name}_click_auc"] = scores["auc"]
        res[f"{name}_click_logloss"] = scores["logloss"]
        res[f"{name}_ece_click"] = scores["ece"]
    if kl is not None:
        res["kl_per_slot"] = float(kl[mask].mean()) if n else None
    return res


def session_metrics(events: Events, rollouts: Any, max_steps: int) -> dict[str, Any]:
    """Session lengths (KS) and click/buy rates along the session, simulated vs logged."""
    from evaluation.fidelity.rollouts import click_buy

    logged_len = events.session_length
    sim_len = rollouts.lengths
    ks = M.ks_two_sample(sim_len, logged_len)
    t_max = int(min(max(logged_len.max(), sim_len.max()), max(max_steps, 1)))
    step_clicks = np.add.reduceat(events.clicked.astype(float), events.step_first_slot)
    step_buys = np.add.reduceat(events.bought.astype(float), events.step_first_slot)
    c, b, shown = click_buy(rollouts.responses)
    n_shown = shown.sum(1)

    def per_t(index: np.ndarray, num: np.ndarray, den: np.ndarray) -> list[float | None]:
        keep = index < t_max
        d = np.bincount(index[keep], weights=den[keep], minlength=t_max)
        s = np.bincount(index[keep], weights=num[keep], minlength=t_max)
        return [float(s[i] / d[i]) if d[i] else None for i in range(t_max)]

    hist_bins = np.arange(1, t_max + 2)
    return {
        "session_length_ks": ks["statistic"],
        "session_length_ks_pvalue": ks["pvalue"],
        "logged": {
            "sessions": len(logged_len),
            "mean_length": float(logged_len.mean()),
            "left_fraction": float(events.session_left.mean()),
            "length_hist": np.histogram(logged_len, hist_bins)[0].tolist(),
        },
        "sim": {
            "sessions": len(sim_len),
            "mean_length": float(sim_len.mean()),
            "left_fraction": float(rollouts.left.mean()),
            "length_hist": np.histogram(sim_len, hist_bins)[0].tolist(),
        },
        "rates_along_session": {
            "step": list(range(t_max)),
            "logged_click_rate": per_t(
                events.step_index, step_clicks, events.step_size.astype(float)
            ),
            "sim_click_rate": per_t(rollouts.step, c.sum(1).astype(float), n_shown.astype(float)),
            "logged_buy_rate": per_t(events.step_index, step_buys, events.step_size.astype(float)),
            "sim_buy_rate": per_t(rollouts.step, b.sum(1).astype(float), n_shown.astype(float)),
            "logged_sessions_alive": np.bincount(events.step_index, minlength=t_max)[
                :t_max
            ].tolist(),
            "sim_sessions_alive": np.bincount(rollouts.step, minlength=t_max)[:t_max].tolist(),
        },
        "click_rate_per_position_rollout": {
            "sim": [
                float(c[:, j].sum() / shown[:, j].sum()) if shown[:, j].any() else None
                for j in range(min(c.shape[1], MAX_POSITIONS_SHOWN))
            ]
        },
        "click_rate_rollout": float(c.sum() / max(shown.sum(), 1)),
        "buy_rate_rollout": float(b.sum() / max(shown.sum(), 1)),
    }


def ranking_metrics(returns: dict[str, dict[str, Any]]) -> dict[str, Any]:
    """Means, CIs, relative errors and Kendall's tau-b (ties from overlapping true CIs)."""
    names = list(returns)
    table: dict[str, dict[str, Any]] = {}
    for name in names:
        row: dict[str, Any] = {}
        for side in ("sim", "true"):
            m, ci = mean_ci95(returns[name][side])
            row[side], row[f"{side}_ci95"] = m, ci
        row["relative_error"] = (
            (row["sim"] - row["true"]) / abs(row["true"]) if row["true"] else None
        )
        row["seconds"] = returns[name].get("seconds")
        row["users"] = len(returns[name]["true"])
        table[name] = row
    out: dict[str, Any] = {"policies": table, "kendall_tau": None, "kendall_tau_strict": None}
    if len(names) >= 2:
        sim = np.array([table[n]["sim"] for n in names])
        true = np.array([table[n]["true"] for n in names])
        lo = np.array([table[n]["true_ci95"][0] for n in names])
        hi = np.array([table[n]["true_ci95"][1] for n in names])
        ties = M.ci_ties(true, lo, hi)
        # a pair tied on the true side is tied in both rankings: tau = 1 when every pair the
        # ground truth tells apart is ordered the same way by the simulator
        out["kendall_tau"] = M.kendall_tau_b(true, sim, x_ties=ties, y_ties=ties)
        out["kendall_tau_strict"] = M.kendall_tau_b(true, sim)
        out["tied_pairs"] = [
            [names[i], names[j]]
            for i in range(len(names))
            for j in range(i + 1, len(names))
            if ties[i, j]
        ]
        out["rank_sim"] = [names[i] for i in np.argsort(-sim, kind="stable")]
        out["rank_true"] = [names[i] for i in np.argsort(-true, kind="stable")]
    return out


# ----------------------------------------------------------------------------- main
