"""What an input is worth to the simulator: the same held-out events with the input taken away.

- `profile_effect`: the held-out users' profiles shuffled among them (a derangement: every user
  gets another user's profile), everything else as logged. The drop in click AUC and the rise in
  log-loss say how much the simulator predicts from who the user is; the oracle's drop (where a
  ground-truth world is known) is what the profiles are worth, so a simulator that uses them
  shows an effect close to the oracle's.
- `text_effect`: for a simulator with a sentence encoder (`SimulatorConfig.text_encoder`), the
  cold-item click AUC with the title embeddings and with them zeroed (the hashed title words
  alone).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import numpy as np

from evaluation.fidelity import metrics as M
from evaluation.fidelity.events import build_events, teacher_forced, world_replay
from evaluation.fidelity.sections import click_probability
from simulators.logs import InteractionLogs

if TYPE_CHECKING:
    from evaluation.fidelity.inputs import ValidationRun


def shuffled_profiles(logs: InteractionLogs, users: list[str], seed: int) -> InteractionLogs:
    """The logs with the profiles of `users` passed on among them (no one keeps their own).

    Profile columns are every users-table column but `user_id`.
    """
    table = logs.users.assign(user_id=logs.users["user_id"].astype(str)).drop_duplicates("user_id")
    table = table.set_index("user_id")
    fields = list(table.columns)
    order = np.random.default_rng(seed).permutation(len(users))
    donor = np.roll(order, -1)  # user order[i] gets the profile of order[i + 1]
    taken = table.loc[[users[i] for i in donor], fields].to_numpy()
    shuffled = table.copy()
    shuffled.loc[[users[i] for i in order], fields] = taken
    return InteractionLogs(
        steps=logs.steps,
        items=logs.items,
        users=shuffled.reset_index(),
        meta=logs.meta,
        source=logs.source,
    )


def _compare(y: np.ndarray, p_true: np.ndarray, p_shuffled: np.ndarray) -> dict[str, Any]:
    auc_t, auc_s = M.roc_auc(y, p_true), M.roc_auc(y, p_shuffled)
    ll_t, ll_s = M.binary_log_loss(y, p_true), M.binary_log_loss(y, p_shuffled)
    return {
        "click_auc_true_profiles": auc_t,
        "click_auc_shuffled_profiles": auc_s,
        "click_auc_difference": None if auc_t is None or auc_s is None else auc_t - auc_s,
        "click_logloss_true_profiles": ll_t,
        "click_logloss_shuffled_profiles": ll_s,
        "click_logloss_difference": None if ll_t is None or ll_s is None else ll_s - ll_t,
    }


def profile_effect(run: ValidationRun) -> dict[str, Any]:
    """Click AUC and log-loss of the same held-out events with true vs shuffled profiles.

    Differences are true minus shuffled for AUC and shuffled minus true for log-loss: positive
    when the profiles help.
    """
    sim, events, logs = run.sim, run.events, run.heldout
    fields = [c for c in logs.users.columns if c != "user_id"]
    users = list(dict.fromkeys(str(u) for u in events.session_user))
    base: dict[str, Any] = {"users": len(users), "profile_fields": fields, "sim": None}
    base["oracle"] = None
    if not fields or len(users) < 2:
        base["note"] = (
            "the logs have no profile fields" if not fields else "fewer than two held-out users"
        )
        return base
    shuffled = shuffled_profiles(logs, users, run.cfg.seed + 17)
    ev = build_events(shuffled, sim.profile_encoder)
    changed = float(np.mean(np.any(ev.profiles != events.profiles, axis=1)))
    sp, _ = teacher_forced(sim, shuffled, ev)
    assert run.sim_probs is not None  # teacher-forced before the sections
    y = events.clicked
    base["sim"] = _compare(y, click_probability(run.sim_probs), click_probability(sp))
    if run.world is not None and run.true_probs is not None:
        tp, _ = world_replay(run.world, shuffled, ev)
        base["oracle"] = _compare(y, click_probability(run.true_probs), click_probability(tp))
    base["sessions_with_another_profile"] = changed
    base["note"] = (
        "held-out users' profiles passed on among them (every user gets another's); positive "
        "differences: the profiles help"
    )
    return base


def text_effect(run: ValidationRun, cold: np.ndarray) -> dict[str, Any] | None:
    """Cold-item click AUC with and without the title embeddings (None: hashed words only).

    Args:
        run: the validation run (its simulator's network is restored afterwards).
        cold: (n,) bool, the cold-item events.
    """
    model = run.sim.model
    encoder = model.sim_config.text_encoder
    if encoder == "hashed" or model.item_text_emb is None:
        return None
    assert run.sim_probs is not None  # teacher-forced before the sections
    kept = model.item_text_emb
    try:
        model.item_text_emb = kept.new_zeros(kept.shape)
        words_only, _ = teacher_forced(run.sim, run.heldout, run.events)
    finally:
        model.item_text_emb = kept
    y = run.events.clicked[cold]
    return {
        "text_encoder": encoder,
        "cold_item_events": int(cold.sum()),
        "cold_item_click_auc": M.roc_auc(y, click_probability(run.sim_probs)[cold]),
        "cold_item_click_auc_title_words_only": M.roc_auc(y, click_probability(words_only)[cold]),
        "note": "the same network with the title embeddings zeroed: the hashed title words alone",
    }
