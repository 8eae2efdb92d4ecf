"""The fidelity report as Markdown with PNG plots beside it (matplotlib, no display needed).

One module, though long: the plots and the text render the same report dict section by section
with the same number formatting, and a section's figure and its table change together.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from evaluation.fidelity.render_sections import (
    behaviour_lines,
    comparison_lines,
    deeper_label,
    fmt,
    privacy_lines,
    profile_lines,
    table,
)
from simulators.atomic import atomic_write, atomic_write_text
from simulators.wording import plural


def _figure(ncols: int = 1, width: float = 5.0, height: float = 3.6) -> tuple[Any, Any]:
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(width * ncols, height), layout="constrained")
    FigureCanvasAgg(fig)
    axes = fig.subplots(1, ncols)
    return fig, np.atleast_1d(axes)


def _save(fig: Any, path: Path) -> None:
    atomic_write(path, lambda tmp: fig.savefig(tmp, format="png", dpi=100))


def _none_to_nan(x: list[Any]) -> np.ndarray:
    return np.array([np.nan if v is None else v for v in x], dtype=np.float64)


def plot_reliability(res: dict[str, Any], path: Path) -> None:
    """Reliability diagram of click probabilities (simulator, and oracle when known)."""
    fig, (ax, ax_hist) = _figure(2)
    ax.plot([0, 1], [0, 1], color="grey", linestyle=":", label="perfect")
    for name, color in (("sim", "C0"), ("oracle", "C2")):
        src = res["responses"].get(name)
        if not src:
            continue
        rel = src["reliability_click"]
        mp, fp = _none_to_nan(rel["mean_pred"]), _none_to_nan(rel["frac_pos"])
        label = f"{name} (ECE {fmt(src['ece_click'])})"
        ax.plot(mp, fp, marker="o", color=color, label=label)
        edges = np.asarray(rel["edges"])
        ax_hist.bar(
            edges[:-1] + (0.0 if name == "sim" else 0.5) * np.diff(edges),
            rel["count"],
            width=0.5 * np.diff(edges),
            align="edge",
            color=color,
            label=name,
        )
    ax.set_xlabel("predicted click probability")
    ax.set_ylabel("observed click frequency")
    ax.set_title("Reliability (15 bins)")
    ax.legend(fontsize=8)
    ax_hist.set_yscale("log")
    ax_hist.set_xlabel("predicted click probability")
    ax_hist.set_ylabel("events")
    ax_hist.legend(fontsize=8)
    _save(fig, path)


def plot_positions(res: dict[str, Any], path: Path) -> None:
    """Click rate per slate position: logged, rollout and expected under each model."""
    fig, (ax,) = _figure()
    styles = {
        "logged": ("k", "o", "logged"),
        "sim_rollout": ("C0", "s", "simulator (free-running)"),
        "sim_expected": ("C1", "^", "simulator p(click), teacher-forced"),
        "oracle_expected": ("C2", "v", "true p(click)"),
    }
    for key, (color, marker, label) in styles.items():
        vals = res["click_rate_per_position"].get(key)
        if vals:
            ax.plot(
                np.arange(1, len(vals) + 1),
                _none_to_nan(vals),
                color=color,
                marker=marker,
                label=label,
            )
    ax.set_xlabel("slate position")
    ax.set_ylabel("click rate")
    ax.set_title("Click rate per position")
    ax.legend(fontsize=8)
    _save(fig, path)


def plot_session_lengths(res: dict[str, Any], path: Path) -> None:
    """Session-length histograms and ECDFs, simulated vs logged."""
    s = res["sessions"]
    fig, (ax, ax_cdf) = _figure(2)
    for key, color, label in (("logged", "k", "logged"), ("sim", "C0", "simulator")):
        h = np.asarray(s[key]["length_hist"], dtype=np.float64)
        x = np.arange(1, len(h) + 1)
        frac = h / max(h.sum(), 1)
        ax.step(
            x, frac, where="mid", color=color, label=f"{label} (mean {s[key]['mean_length']:.2f})"
        )
        ax_cdf.step(x, np.cumsum(frac), where="post", color=color, label=label)
    ax.set_xlabel("session length (steps)")
    ax.set_ylabel("fraction of sessions")
    ax.set_title("Session lengths")
    ax.legend(fontsize=8)
    ax_cdf.set_xlabel("session length (steps)")
    ax_cdf.set_ylabel("ECDF")
    ax_cdf.set_title(f"KS statistic {fmt(s['session_length_ks'])}")
    ax_cdf.legend(fontsize=8)
    _save(fig, path)


def plot_session_rates(res: dict[str, Any], path: Path) -> None:
    """Click and buy rates by step index, simulated vs logged."""
    r = res["sessions"]["rates_along_session"]
    fig, axes = _figure(2)
    x = np.asarray(r["step"]) + 1
    for ax, what in zip(axes, ("click", "buy")):
        ax.plot(x, _none_to_nan(r[f"logged_{what}_rate"]), color="k", marker=".", label="logged")
        ax.plot(x, _none_to_nan(r[f"sim_{what}_rate"]), color="C0", marker=".", label="simulator")
        ax.set_xlabel("step of the session")
        ax.set_ylabel(f"{what} rate per shown item")
        ax.set_title(f"{what.capitalize()} rate along the session")
        ax.legend(fontsize=8)
    _save(fig, path)


def plot_policies(res: dict[str, Any], path: Path) -> None:
    """Mean return per policy in the simulator vs the ground truth, with 95% CIs."""
    from evaluation.plotting import agent_label, colours

    pol = res["ranking"]["policies"]
    names = sorted(pol, key=lambda n: pol[n]["true"])
    fig, (ax,) = _figure(width=6.5, height=4.6)
    for n, colour in zip(names, colours(len(names))):
        p = pol[n]
        xerr = [[p["true"] - p["true_ci95"][0]], [p["true_ci95"][1] - p["true"]]]
        yerr = [[p["sim"] - p["sim_ci95"][0]], [p["sim_ci95"][1] - p["sim"]]]
        ax.errorbar(
            p["true"], p["sim"], xerr=xerr, yerr=yerr, fmt="o", color=colour, label=agent_label(n)
        )
    lo = min(min(p["true_ci95"][0], p["sim_ci95"][0]) for p in pol.values())
    hi = max(max(p["true_ci95"][1], p["sim_ci95"][1]) for p in pol.values())
    ax.plot([lo, hi], [lo, hi], color="grey", linestyle=":", label="simulator = world")
    ax.set_xlabel("mean return in the ground-truth world (reward per user, 95% CI)")
    ax.set_ylabel("mean return in the simulator (95% CI)")
    ax.set_title(f"Policy returns (Kendall tau-b {fmt(res['kendall_tau'], 3)})")
    ax.legend(fontsize=8)
    _save(fig, path)


def headline_table(rows: list[list[Any]]) -> list[str]:
    """The headline rows that have a figure; what does not apply is named once, not shown empty."""
    shown = [r for r in rows if r[1] is not None or r[2] is not None]
    absent = [str(r[0]) for r in rows if r[1] is None and r[2] is None]
    if any(r[2] is not None for r in shown):
        out = [table(["metric", "simulator", "oracle / floor"], shown)]
    else:  # no ground truth: no oracle column
        out = [table(["metric", "simulator"], [r[:2] for r in shown])]
    if absent:
        out += [
            "",
            "Not shown, as they do not apply here (no ground-truth world, no policy ranking, no "
            f"events of the kind, or no --sim2real): {', '.join(absent)}.",
        ]
    return out


def write_report(res: dict[str, Any], path: str | Path) -> list[Path]:
    """Write the Markdown report at path and its PNG plots beside it; returns the files."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    stem = path.stem
    figs = {
        "reliability": plot_reliability,
        "positions": plot_positions,
        "session_lengths": plot_session_lengths,
        "session_rates": plot_session_rates,
    }
    if res.get("ranking") and res["ranking"]["policies"]:
        figs["policies"] = plot_policies
    written: dict[str, Path] = {}
    for name, fn in figs.items():
        p = path.with_name(f"{stem}_{name}.png")
        fn(res, p)
        written[name] = p
    atomic_write_text(path, markdown(res, {k: v.name for k, v in written.items()}))
    return [path, *written.values()]


def _cold_item_label(res: dict[str, Any]) -> str:
    """The headline's cold-item row, with the events behind it (a handful decides nothing)."""
    cold = ((res.get("warm_cold") or {}).get("items") or {}).get("cold") or {}
    n = cold.get("events")
    if n is None:
        return "cold-item click AUC"
    few = ": too few to decide anything" if n < 100 else ""
    return f"cold-item click AUC ({n:,} events{few})"


def markdown(res: dict[str, Any], images: dict[str, str]) -> str:
    """The report text (images: plot name -> file name relative to the report)."""
    setup = res["setup"]
    out = ["# Fidelity report", ""]
    out.append(
        f"Simulator `{setup['simulator']}`; {setup['heldout']}: {setup['heldout_users']} users, "
        f"{setup['heldout_steps']} slates, {setup['heldout_events']} slot events"
        + (f" (seed {setup['heldout_seed']})" if setup.get("heldout_seed") is not None else "")
        + (f", logging policy `{setup['logging_policy']}`" if setup.get("logging_policy") else "")
        + f". Run time {setup['seconds']['total']:.0f} s."
    )
    cal = (setup.get("simulator_training") or {}).get("calibration")
    if cal:
        users = plural(cal["users"], "calibration user")
        out.append("")
        if cal.get("fitted", True):
            out.append(
                f"Its click odds are calibrated (slope {cal['slope']:.3f}, intercept "
                f"{cal['intercept']:.3f}) on {users} that train-sim did not train on "
                "(`--calibration-fraction`): a monotone map of the click odds, so click AUC "
                "is what the network's own odds give (a deeper behaviour's AUC can move)."
            )
        else:
            out.append(
                f"Calibration on {users} (`--calibration-fraction`) was not fitted "
                f"({cal['reason']}): its probabilities are the network's own."
            )
    out.append("")
    out += ["## Headline figures", ""]
    rows = [
        ["click AUC", res["click_auc"], res["oracle_click_auc"]],
        [
            f"best baseline click AUC ({res.get('best_baseline') or '–'})",
            res.get("best_baseline_click_auc"),
            None,
        ],
        [_cold_item_label(res), res.get("cold_item_click_auc"), None],
        [f"{deeper_label(res)} AUC", res["buy_auc"], res["oracle_buy_auc"]],
        ["click log-loss", res["click_logloss"], res["oracle_click_logloss"]],
        ["click ECE (15 bins)", res["ece_click"], res["oracle_ece_click"]],
        ["KL(true || sim) per slot (nats)", res["kl_per_slot"], res["kl_floor"]],
        ["KL(true || sim) of leaving (nats)", res["kl_leave"], res["kl_floor"]],
        ["session-length KS", res["session_length_ks"], None],
        ["Kendall tau-b (CI ties)", res["kendall_tau"], None],
        ["sim-to-real ratio", res["sim2real_ratio"], None],
    ]
    out += headline_table(rows)
    out.append("")
    out += ["### Targets", ""]
    out.append(
        table(
            ["target", "value", "bound", "met", "95% interval over users"],
            [
                [k, v["value"], v["target"], v["met"], interval_cell(v.get("ci95"))]
                for k, v in res["targets"].items()
            ],
        )
    )
    out += ["", *interval_lines(res)]
    if res.get("kl_floor_note") and not res.get("ground_truth"):
        out += ["", f"**Floor.** {res['kl_floor_note']}"]  # (else said once, in section 3)
    out += ["", "## 1. Responses on held-out events", ""]
    resp = res["responses"]
    out.append(
        "Teacher-forced: at every logged slot the simulator gives p(response | profile, history, "
        "slate, earlier responses of the slate) with the logged responses in its context."
    )
    out.append("")
    rows = []
    for name in ("sim", "oracle"):
        s = resp.get(name)
        if s:
            rows.append(
                [
                    name,
                    s["click_auc"],
                    s["click_logloss"],
                    s["ece_click"],
                    s["buy_auc"],
                    s["buy_logloss"],
                    s["buy_given_click_auc"],
                ]
            )
    out.append(
        table(
            [
                "source",
                "click AUC",
                "click log-loss",
                "click ECE",
                f"{deeper_label(res)} AUC",
                f"{deeper_label(res)} log-loss",
                f"{deeper_label(res)}|click AUC",
            ],
            rows,
        )
    )
    out += ["", "Precision / recall / F1 of responses sampled from the model vs logged ones:", ""]
    rows = []
    for name in ("sim", "oracle"):
        s = resp.get(name)
        if s:
            for r, v in s["precision_recall_f1"].items():
                rows.append([name, r, v["precision"], v["recall"], v["f1"], v["support"]])
    out.append(table(["source", "response", "precision", "recall", "F1", "support"], rows))
    out += behaviour_lines(res)
    pos = res["click_rate_per_position"]
    keys = [k for k in ("logged", "sim_rollout", "sim_expected", "oracle_expected") if pos.get(k)]
    n_pos = max(len(pos[k]) for k in keys)
    out += ["", "Click rate per position:", ""]
    out.append(
        table(
            ["position", *keys],
            [
                [j + 1, *[pos[k][j] if j < len(pos[k]) else None for k in keys]]
                for j in range(n_pos)
            ],
        )
    )
    out += [
        "",
        f"![reliability]({images['reliability']})",
        "",
        f"![positions]({images['positions']})",
    ]
    wc = res["warm_cold"]
    out += ["", "### Simulator and baselines: all events, cold and warm items and users", ""]
    out += [wc["note"] + ".", "", *comparison_lines(res)]
    out += profile_lines(res)
    s = res["sessions"]
    out += ["", "## 2. Sessions", "", f"Simulated with {s['simulated_with']}.", ""]
    out.append(
        table(
            ["", "sessions", "mean length", "left (not cut)", "click rate", "buy rate"],
            [
                [
                    "logged",
                    s["logged"]["sessions"],
                    s["logged"]["mean_length"],
                    s["logged"]["left_fraction"],
                    resp["click_rate"]["logged"],
                    resp["buy_rate"]["logged"],
                ],
                [
                    "simulator",
                    s["sim"]["sessions"],
                    s["sim"]["mean_length"],
                    s["sim"]["left_fraction"],
                    s["click_rate_rollout"],
                    s["buy_rate_rollout"],
                ],
            ],
        )
    )
    out += [
        "",
        f"Kolmogorov-Smirnov statistic of session lengths: {fmt(s['session_length_ks'])} "
        f"(p = {fmt(s['session_length_ks_pvalue'])}).",
        "",
        f"![session lengths]({images['session_lengths']})",
        "",
        f"![rates along the session]({images['session_rates']})",
    ]
    gt = res.get("ground_truth")
    out += ["", "## 3. Against the ground truth", ""]
    if gt is None:
        out.append("No ground-truth world for these logs: this section is skipped.")
    else:
        out.append(
            table(
                ["figure", "value"],
                [
                    ["mean KL(true || sim) per slot, 3-way conditional", gt["kl_per_slot"]],
                    ["  ... before the slate's first click", gt["kl_per_slot_before_first_click"]],
                    ["  ... 95th percentile", gt["kl_per_slot_p95"]],
                    ["mean KL of the leave decision", gt["kl_leave"]],
                    ["simulator click AUC", res["click_auc"]],
                    ["oracle click AUC (true probabilities)", res["oracle_click_auc"]],
                    ["kl_floor", res["kl_floor"]],
                    ["floor_click_auc", res["floor_click_auc"]],
                    ["kl_floor_context (the context window's floor)", gt["kl_floor_context"]],
                    ["floor_context_click_auc", gt["floor_context_click_auc"]],
                    ["share of events beyond the full context", gt["events_beyond_context"]],
                ],
            )
        )
        out += ["", "KL per position: " + ", ".join(fmt(v) for v in gt["kl_per_position"]), ""]
        out.append(gt["note"])
    out += ["", "## 4. Policy ranking", ""]
    rk = res.get("ranking")
    if not rk:
        out.append("Skipped (needs a ground-truth world; or `--no-ranking`).")
    else:
        out.append(
            f"{rk['users']} users per policy, the same users (profiles, candidates) in both envs. "
            f"{rk['greedy_note']}."
        )
        out.append("")
        rows = [
            [n, p["sim"], _ci(p["sim_ci95"]), p["true"], _ci(p["true_ci95"]), p["relative_error"]]
            for n, p in rk["policies"].items()
        ]
        out.append(
            table(["policy", "sim", "sim 95% CI", "true", "true 95% CI", "rel. error"], rows)
        )
        out += [
            "",
            f"Kendall tau-b {fmt(rk['kendall_tau'], 3)} (pairs whose true means lie in each other's "
            f"95% CI count as tied in both rankings: {', '.join('/'.join(p) for p in rk.get('tied_pairs', [])) or 'none'}); "
            f"without ties {fmt(rk['kendall_tau_strict'], 3)}.",
            "",
            f"Ranking in the simulator: {' > '.join(rk.get('rank_sim', []))}; "
            f"in the ground truth: {' > '.join(rk.get('rank_true', []))}.",
        ]
        if "policies" in images:
            out += ["", f"![policies]({images['policies']})"]
    out += ["", "## 5. Sim-to-real", ""]
    s2r = res.get("sim2real")
    if not s2r:
        out.append("Not run (use `--sim2real`).")
    else:
        out.append(
            table(
                ["figure", "value"],
                [
                    [
                        "PPO trained on the simulator, return in the world",
                        s2r["ppo_sim_true_return"],
                    ],
                    ["PPO trained on the world, return in the world", s2r["ppo_true_true_return"]],
                    ["sim2real_ratio", s2r["sim2real_ratio"]],
                    ["random policy, return in the world", s2r["random_true_return"]],
                    ["PPO budget (env steps each)", s2r["ppo_steps"]],
                    ["PPO pairs (seeds), returns averaged", s2r.get("ppo_seeds", 1)],
                    [
                        "ratio per seed",
                        ", ".join(fmt(p["ratio"], 3) for p in s2r.get("per_seed", [])) or "-",
                    ],
                    [
                        "training seconds (sim / world)",
                        f"{s2r['train_seconds']['sim']} / {s2r['train_seconds']['true']}",
                    ],
                ],
            )
        )
    out += ["", "## 6. Privacy", "", *privacy_lines(res.get("privacy"))]
    if res.get("notes"):
        out += ["", "## Notes", ""] + [f"- {n}" for n in res["notes"]]
    out += [
        "",
        "Section times (s): " + ", ".join(f"{k} {v}" for k, v in setup["seconds"].items()),
        "",
    ]
    return "\n".join(out)


def _ci(ci: list[float] | None) -> str:
    return "–" if ci is None else f"[{ci[0]:.2f}, {ci[1]:.2f}]"


def interval_cell(ci: list[float] | None) -> str:
    """'[lo, hi]' with 4 decimals, or '–' (the report's table and validate's summary)."""
    return "–" if ci is None else f"[{ci[0]:.4f}, {ci[1]:.4f}]"


def interval_lines(res: dict[str, Any]) -> list[str]:
    """What the targets' intervals are, and which verdicts other users could turn."""
    intervals = (res.get("baselines") or {}).get("intervals") or {}
    users = int(intervals.get("users") or 0)
    with_ci = [k for k, v in res["targets"].items() if v.get("ci95") is not None]
    if not with_ci:
        why = intervals.get("none_because") or "no target has one"
        return [f"Intervals over users: none ({why})."]
    paired = (
        "; the AUC difference is paired, both models on the same resample"
        if "click_auc_minus_best_baseline" in with_ci
        else ""
    )
    undecided = [k for k in with_ci if res["targets"][k].get("bound_in_ci95")]
    if not undecided:
        verdict = "No target's bound lies inside its interval."
    elif len(undecided) == 1:
        verdict = (
            f"The bound lies inside the interval of {undecided[0]}: other users like these "
            "could turn that verdict."
        )
    else:
        verdict = (
            f"The bounds lie inside the intervals of {', '.join(undecided)}: other users like "
            "these could turn those verdicts."
        )
    return [
        f"Intervals: {int(intervals['resamples']):,} bootstrap resamples of the "
        f"{plural(users, 'held-out user')} (each drawn user brings all of their events{paired}). "
        + verdict
    ]
