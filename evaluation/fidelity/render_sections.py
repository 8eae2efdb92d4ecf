"""Markdown of the report's comparison sections: every predictor side by side, behaviours, inputs.

`evaluation.fidelity.render` writes the report; these functions render the parts that compare
the simulator with the baselines on groups of events (all, cold and warm items, cold and warm
users), the figures per behaviour, and what the profile and the title text are worth. Each
returns Markdown lines.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from evaluation.fidelity.privacy import MIN_ATTACK_USERS
from simulators.wording import plural

SOURCES = {
    "sim": "simulator",
    "oracle": "oracle (true probabilities)",
    "popularity": "item popularity",
    "popularity_by_category": "popularity by category",
    "logreg": "logistic regression",
    "gbdt": "gradient-boosted trees (+ history)",
}
"""Predictors of the comparison table, in their order, with their names in the report."""
GROUPS = (
    ("all held-out events", ("all",)),
    ("cold items", ("items", "cold")),
    ("warm items", ("items", "warm")),
    ("cold users", ("users", "cold")),
    ("warm users (in-sample)", ("users", "warm")),
)


ABSENT_REASONS = {
    "warm items": "no held-out item had a token in training",
    "cold items": "every held-out item had a token in training",
    "warm users (in-sample)": "the held-out users are new to the simulator (pass its training "
    "logs as --logs to see warm users)",
    "cold users": "every held-out user was one of its training users",
}
"""Why a group of events can be empty (said once instead of empty rows)."""


def deeper_label(res: dict[str, Any]) -> str:
    """What the report's "buy" figures are about: engagement past the first level, named.

    `buy` for the default behaviours, else the deeper behaviours joined (e.g. `like+follow`).
    """
    levels = list(res.get("per_behaviour") or ["click", "buy"])
    if levels == ["click", "buy"]:
        return "buy"
    return "+".join(levels[1:]) or "deeper"


def fmt(v: Any, digits: int = 4) -> str:
    """One value as report text (– for None, fixed decimals for floats)."""
    if v is None:
        return "–"
    if isinstance(v, bool):
        return "yes" if v else "no"
    if isinstance(v, (int, np.integer)):
        return str(int(v))
    if isinstance(v, (float, np.floating)):
        return f"{v:.{digits}f}"
    return str(v)


def table(header: list[str], rows: list[list[Any]]) -> str:
    """A Markdown table (pipes inside cells escaped)."""
    cell = lambda v: fmt(v).replace("|", "\\|")
    lines = ["| " + " | ".join(cell(h) for h in header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(cell(c) for c in r) + " |" for r in rows]
    return "\n".join(lines)


def _group(wc: dict[str, Any], path: tuple[str, ...]) -> dict[str, Any] | None:
    d: Any = wc
    for key in path:
        d = (d or {}).get(key)
    return d


def comparison_lines(res: dict[str, Any]) -> list[str]:
    """Every predictor's click AUC, log-loss and ECE on each group of events."""
    wc = res["warm_cold"]
    out = [
        "Click predictions of the simulator (teacher-forced) and of the baselines fitted on the "
        "training part, on the same events; "
        + (
            f"the best baseline on all events is {SOURCES.get(res['best_baseline'], '–')}."
            if res.get("best_baseline")
            else "no baseline could be fitted (no training part)."
        ),
        "",
    ]
    rows = []
    absent = []
    for label, path in GROUPS:
        g = _group(wc, path)
        if g is None or not g.get("events"):
            if label in ABSENT_REASONS:
                absent.append(label)
            continue
        for key, name in SOURCES.items():
            auc = g.get(f"{key}_click_auc")
            if auc is None and g.get(f"{key}_click_logloss") is None:
                continue
            rows.append(
                [
                    label,
                    name,
                    g["events"],
                    auc,
                    g.get(f"{key}_click_logloss"),
                    g.get(f"{key}_ece_click"),
                ]
            )
    out.append(table(["events", "predictor", "n", "click AUC", "log-loss", "ECE"], rows))
    if absent:
        reasons = "; ".join(ABSENT_REASONS[g] for g in absent)
        out += ["", f"No {' or '.join(absent)} events here: {reasons}."]
    cold = wc["items"]["cold"]
    out += [
        "",
        f"{cold['events']} events of cold items, {cold.get('new_item_events', 0)} of them on "
        f"{cold.get('new_items', 0)} items outside the simulator's catalog (they enter by their "
        "side information).",
    ]
    text = cold.get("text")
    if text:
        out += [
            "",
            f"Title text ({text['text_encoder']}): cold-item click AUC "
            f"{fmt(text['cold_item_click_auc'])} with the title embeddings, "
            f"{fmt(text['cold_item_click_auc_title_words_only'])} with the hashed title words "
            f"alone ({text['note']}).",
        ]
    return out


def behaviour_lines(res: dict[str, Any]) -> list[str]:
    """AUC, ECE and precision/recall/F1 per behaviour level (a level implies the ones before)."""
    rows = []
    for source in ("sim", "oracle"):
        per = (res["responses"].get(source) or {}).get("per_behaviour") or {}
        for name, d in per.items():
            rows.append(
                [
                    SOURCES[source],
                    name,
                    d["rate_logged"],
                    d["rate_expected"],
                    d["auc"],
                    d["logloss"],
                    d["ece"],
                    d["precision"],
                    d["recall"],
                    d["f1"],
                ]
            )
    if not rows:
        return []
    header = ["source", "behaviour (or deeper)", "logged rate", "expected rate", "AUC"]
    header += ["log-loss", "ECE", "precision", "recall", "F1"]
    return [
        "",
        "Per behaviour (precision/recall/F1 of sampled responses):",
        "",
        table(header, rows),
    ]


def profile_lines(res: dict[str, Any]) -> list[str]:
    """The profile effect: true vs shuffled profiles, simulator and oracle."""
    pe = res.get("profile_effect")
    out = ["", "### Profile effect", ""]
    if not pe or not pe.get("sim"):
        return [*out, f"Not measured: {(pe or {}).get('note', 'no held-out users')}."]
    rows = []
    for source in ("sim", "oracle"):
        d = pe.get(source)
        if d:
            rows.append(
                [
                    SOURCES[source],
                    d["click_auc_true_profiles"],
                    d["click_auc_shuffled_profiles"],
                    d["click_auc_difference"],
                    d["click_logloss_true_profiles"],
                    d["click_logloss_shuffled_profiles"],
                    d["click_logloss_difference"],
                ]
            )
    header = ["source", "AUC true", "AUC shuffled", "AUC difference", "log-loss true"]
    header += ["log-loss shuffled", "log-loss difference"]
    return [
        *out,
        f"{plural(pe['users'], 'held-out user')}, profile fields {', '.join(pe['profile_fields'])}: "
        f"{pe['note']}.",
        "",
        table(header, rows),
    ]


def privacy_lines(priv: dict[str, Any] | None) -> list[str]:
    """The privacy section: the training's DP record and the membership attack."""
    if priv is None:
        return ["Not computed."]
    rec = priv.get("training_record")
    out = [
        (
            f"Trained with user-level DP-SGD: epsilon {fmt(rec['epsilon'], 3)}, delta "
            f"{rec['delta']:.3g} ({rec['steps']} steps, noise multiplier "
            f"{fmt(rec['noise_multiplier'], 3)}, clip {rec['max_grad_norm']:g}, sampling rate "
            f"{rec['sample_rate']:.4g}; {rec['accountant']})."
            if rec
            else "Trained without differential privacy (no formal guarantee)."
        ),
        "",
        f"Membership inference, {priv['membership_attack']}.",
        "",
    ]
    if priv.get("membership_attack_auc") is None:
        return [*out, str(priv.get("membership_note") or "Not computed.")]
    ci = priv["membership_attack_auc_ci95"]
    rows = [
        ["attack AUC (0.5: no better than chance)", priv["membership_attack_auc"]],
        [
            "95% interval",
            f"[{ci[0]:.3f}, {ci[1]:.3f}]"
            if ci
            else f"– (needs {MIN_ATTACK_USERS} members and {MIN_ATTACK_USERS} non-members)",
        ],
        [
            "members / non-members (users)",
            f"{priv['membership_members']} / {priv['membership_nonmembers']}",
        ],
        ["mean NLL per user token: members", priv["member_mean_nll"]],
        ["mean NLL per user token: non-members", priv["nonmember_mean_nll"]],
    ]
    return [*out, table(["figure", "value"], rows)]
