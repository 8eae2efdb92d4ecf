"""Explanations of simulated users: situations, a table, a plot, and a check against the world.

The check holds the simulator's attributions against the ground-truth world's own
counterfactuals.

`simulators.explanations.explain` computes the attributions. Here:

- `situation_from_logs` / `generated_situation`: a user state and a slate to explain, from a
  logged session (its slates before the step explained) or from a fresh user of the world.
- `explanation_table` / `plot_explanation`: what a person reads.
- `world_agreement`: for many fresh users, the Spearman rank correlation between the
  simulator's attributions (profile fields and history steps, change of p(engaged) summed over
  the slate) and the world's exact ones for the same situation.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from simulators.base import UserSimulator
from simulators.explanations import Explanation, explain


@dataclass
class Situation:
    """A user state and a slate to explain.

    Attributes:
        profile: (slots,) profile token indices in the simulator's vocabulary.
        history: (items, responses) of every earlier step.
        slate: (k,) item indices of the slate explained.
        source: where it comes from (for the report).
    """

    profile: np.ndarray
    history: list[tuple[np.ndarray, np.ndarray]]
    slate: np.ndarray
    source: str
    world_profile: np.ndarray | None = None
    """The same profile in the world's vocabulary (generated situations)."""


def _catalog_index(sim: UserSimulator) -> dict[str, int]:
    return {str(i): k for k, i in enumerate(sim.items_table()["item_id"])}


def item_indices(sim: UserSimulator, item_ids: list[str]) -> np.ndarray:
    """Catalog indices of item ids.

    Raises:
        ValueError: an item outside the simulator's catalog (naming it and a few known ids).
    """
    index = _catalog_index(sim)
    missing = [i for i in item_ids if i not in index]
    if missing:
        known = ", ".join(list(index)[:5])
        raise ValueError(
            f"{len(missing)} item(s) are not in the simulator's catalog (e.g. {missing[0]!r}); "
            f"its ids look like {known}, ..."
        )
    return np.array([index[i] for i in item_ids], dtype=np.int64)


def situation_from_logs(sim: UserSimulator, logs: Any, session: str, step: int | None) -> Situation:
    """The slate of `step` (default: the last) of a logged session, with its earlier steps.

    Raises:
        ValueError: unknown session or step, or items outside the simulator's catalog.
    """
    steps = logs.steps[logs.steps["session_id"].astype(str) == str(session)]
    if steps.empty:
        ids = list(dict.fromkeys(logs.steps["session_id"].astype(str).head(200)))[:3]
        raise ValueError(
            f"session {session!r} is not in the logs; their session ids look like "
            f"{', '.join(ids)}, ..."
        )
    steps = steps.sort_values("step")
    last = int(steps["step"].max())
    t = last if step is None else step
    if not 0 <= t <= last:
        raise ValueError(f"step must be in [0, {last}] for session {session!r}, got {t}")
    rows = steps.iloc[: t + 1]
    history = [
        (
            item_indices(sim, [str(i) for i in r["items"]]),
            np.asarray(r["responses"], dtype=np.int64),
        )
        for _, r in rows.iloc[:-1].iterrows()
    ]
    slate = item_indices(sim, [str(i) for i in rows.iloc[-1]["items"]])
    uid = str(rows.iloc[0]["user_id"])
    users = logs.users.assign(user_id=logs.users["user_id"].astype(str))
    profile = sim.profile_encoder.encode(users[users["user_id"] == uid])[0]
    return Situation(profile, history, slate, f"session {session}, step {t} of the logs")


def generated_situation(
    sim: UserSimulator, world: Any, seed: int, history_steps: int, slate_size: int
) -> Situation:
    """A fresh user of the world, a history it answered, and a random slate to explain.

    `history_steps` random slates are answered by the world; items are catalog positions, so
    the simulator's catalog must be the world's.
    """
    rng = np.random.default_rng(seed)
    profile_w = world.sample_profiles(1, rng)[0]
    vocab = world.profile_encoder.vocab
    profile = np.full(sim.profile_encoder.slots, -1, dtype=np.int64)
    toks = [
        sim.profile_encoder.index[vocab[t]]
        for t in profile_w
        if t >= 0 and vocab[t] in sim.profile_encoder.index
    ]
    profile[: len(toks)] = toks[: len(profile)]
    w = type(world)(world.config, capacity=1)
    w.start_sessions(np.zeros(1, np.int64), profile_w[None])
    history = []
    for _ in range(history_steps):
        items = rng.choice(world.num_items, slate_size, replace=False)
        out = w.step(np.zeros(1, np.int64), items[None], rng.random((1, slate_size + 1)))
        history.append((items, out.responses[0]))
    slate = rng.choice(world.num_items, slate_size, replace=False)
    return Situation(profile, history, slate, f"a fresh user of the world (seed {seed})", profile_w)


def world_agreement(
    sim: UserSimulator, world: Any, users: int, seed: int, history_steps: int, slate_size: int
) -> dict[str, Any]:
    """Spearman correlation of the simulator's attributions with the world's, per user.

    For every fresh user the same situation is explained by both; the attribution of each
    input is its change of p(engaged) summed over the slate. The inputs compared are the
    profile fields and history steps (the world has no item side-information channels). Returns the mean, median and
    quartiles of the per-user correlations and the share of users with a positive one.
    """
    from scipy.stats import spearmanr

    if [str(i) for i in sim.items_table()["item_id"]] != [
        str(i) for i in world.items_table()["item_id"]
    ]:
        raise ValueError("the simulator's catalog is not the world's: --world cannot check it")
    rhos = []
    for u in range(users):
        sit = generated_situation(sim, world, seed + u, history_steps, slate_size)
        assert sit.world_profile is not None
        ea = explain(sim, sit.profile, sit.history, sit.slate)
        eb = explain(world, sit.world_profile, sit.history, sit.slate)
        # the inputs both have (profile fields, history steps; the world reads no item side
        # channels), in the world's order
        common = [ea.features.index(f) for f in eb.features]
        a = ea.engagement_effects[common].sum(axis=1)
        b = eb.engagement_effects.sum(axis=1)
        if len(a) >= 3 and np.ptp(a) > 0 and np.ptp(b) > 0:
            rhos.append(float(spearmanr(a, b).statistic))
    r = np.asarray(rhos)
    return {
        "users": users,
        "users_compared": len(r),
        "history_steps": history_steps,
        "spearman_mean": float(r.mean()) if len(r) else None,
        "spearman_median": float(np.median(r)) if len(r) else None,
        "spearman_quartiles": [float(np.quantile(r, 0.25)), float(np.quantile(r, 0.75))]
        if len(r)
        else None,
        "share_positive": float((r > 0).mean()) if len(r) else None,
    }


def feature_labels(expl: Explanation, situation: Situation, titles: list[str]) -> list[str]:
    """Readable names of the inputs.

    Profile fields, and each history step with what the user did there (e.g.
    `step 3: buy 'premium jazz album'`). Steps count from 0, as the logs' `step` column and
    `explain --step` do.
    """
    out = []
    for name in expl.features:
        kind, _, key = name.partition(":")
        if kind == "item":
            out.append(f"item {key} (of the slate's items)")
            continue
        if kind != "history":
            out.append(f"profile field {key}")
            continue
        t = int(key)
        items, responses = situation.history[t]
        engaged = [
            f"{expl.behaviours[r]} '{titles[i][:24]}'" for i, r in zip(items, responses) if r > 0
        ]
        out.append(f"step {t}: " + ("; ".join(engaged) if engaged else "nothing engaged"))
    return out


def short_labels(expl: Explanation, situation: Situation) -> list[str]:
    """Names of the inputs short enough for a plot's axis (e.g. `step 5 (buy)`, `items' title`)."""
    out = []
    for name in expl.features:
        kind, _, key = name.partition(":")
        if kind == "history":
            deepest = int(np.max(situation.history[int(key)][1], initial=0))
            what = expl.behaviours[deepest] if deepest > 0 else "nothing"
            out.append(f"step {int(key)} ({what})")
        elif kind == "item":
            out.append(f"items' {key}")
        else:
            out.append(f"profile: {key}")
    return out


def explanation_table(expl: Explanation, titles: list[str], labels: list[str] | None = None) -> str:
    """A text table: per slot the probabilities, then every input's effect on p(engaged)."""
    k = len(expl.slate)
    head = ["input", *[f"slot {j + 1}" for j in range(k)]]
    rows = [["item", *[titles[i][:18] for i in expl.slate]]]
    for r, name in enumerate(expl.behaviours):
        rows.append([f"p({name})", *[f"{expl.probs[j, r]:.3f}" for j in range(k)]])
    eff = expl.engagement_effects
    for f, name in enumerate(labels or expl.features):
        rows.append([f"{name} (effect on p(engaged))", *[f"{eff[f, j]:+.3f}" for j in range(k)]])
    widths = [max(len(row[c]) for row in [head, *rows]) for c in range(len(head))]
    fmt = lambda row: "  ".join(cell.ljust(w) for cell, w in zip(row, widths)).rstrip()
    return "\n".join([fmt(head), fmt(["-" * w for w in widths]), *map(fmt, rows)])


def plot_explanation(
    expl: Explanation,
    titles: list[str],
    path: str | Path,
    title: str,
    labels: list[str] | None = None,
) -> None:
    """A horizontal bar per input: its effect on p(engaged), summed over the slate and per slot."""
    from evaluation.plotting import OKABE_ITO, new_figure, save_png

    eff = expl.engagement_effects
    order = np.argsort(np.abs(eff.sum(axis=1)))
    names = [(labels or expl.features)[i] for i in order]
    fig = new_figure(9, 0.35 * len(names) + 3.0)
    ax = fig.subplots()
    left = np.zeros(len(order))
    pos = np.clip(eff[order], 0, None)
    neg = np.clip(eff[order], None, 0)
    for j in range(eff.shape[1]):
        colour = OKABE_ITO[j % len(OKABE_ITO)]
        label = f"slot {j + 1}: {titles[expl.slate[j]][:30]}"
        ax.barh(
            np.arange(len(order)), pos[:, j], left=left if j else None, color=colour, label=label
        )
        left = left + pos[:, j]
    neg_left = np.zeros(len(order))
    for j in range(eff.shape[1]):
        ax.barh(
            np.arange(len(order)), neg[:, j], left=neg_left, color=OKABE_ITO[j % len(OKABE_ITO)]
        )
        neg_left = neg_left + neg[:, j]
    ax.axvline(0, color="grey", linewidth=0.8)
    ax.set_yticks(np.arange(len(order)), names)
    ax.set_xlabel("change of p(engaged) when the input is present (summed over the slate's slots)")
    ax.set_title(title)
    fig.legend(fontsize=7, loc="outside lower center", ncols=2)
    save_png(fig, path)
