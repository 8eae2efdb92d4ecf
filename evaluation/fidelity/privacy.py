"""Privacy of a simulator: its training's DP record and a membership-inference attack.

The attack is the loss-threshold attack (Yeom et al., 2018): a user whose sessions the
simulator finds unusually likely was probably in its training data. Its score for a user is
minus the simulator's mean NLL per user token over that user's sessions (teacher-forced, every
response and continue/leave decision: the training loss). Members are training users of the
simulator, non-members the users train-sim held out from the same logs (the same
distribution, never trained on): the AUC of the score separating them is the attack's success,
0.5 meaning the simulator tells nothing about who was in its training data. A threshold that an
attacker calibrates can only reach this AUC's ranking, so the AUC bounds every threshold's
trade-off at once.

It needs the training users: `validate --logs` with the simulator's own training logs (the same
meta.json). Otherwise the section says why it cannot be computed.
"""

from __future__ import annotations

import math
import time
from typing import Any

import numpy as np

from evaluation.fidelity.events import Events, build_events, select_users, teacher_forced
from evaluation.fidelity.inputs import ValidationRun
from evaluation.fidelity.metrics import roc_auc

ATTACK = (
    "loss threshold (Yeom et al. 2018): score = minus the simulator's mean NLL per user token "
    "over the user's sessions; members = training users, non-members = the users train-sim "
    "held out from the same logs"
)
"""How the attack works, for the JSON and the report."""


def user_nll(events: Events, probs: np.ndarray, leave: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Each user's mean NLL per user token (every response and continue/leave decision).

    Args:
        events: the logged events.
        probs: (n, R) teacher-forced response probabilities of the events.
        leave: (m,) leave probabilities per step (NaN where no decision was logged).

    Returns:
        (user ids (U,), mean NLL (U,)), users sorted.
    """
    tiny = 1e-12
    resp = -np.log(np.clip(probs[np.arange(len(events)), events.response], tiny, 1.0))
    has = events.step_has_target
    p_leave = leave[has]
    decided = -np.log(np.clip(np.where(events.step_leave[has], p_leave, 1 - p_leave), tiny, 1.0))
    owners = np.concatenate(
        [
            events.session_user[events.session],
            events.session_user[events.step_session[has]],
        ]
    ).astype(str)
    users, index = np.unique(owners, return_inverse=True)
    total = np.bincount(index, weights=np.concatenate([resp, decided]), minlength=len(users))
    return users, total / np.bincount(index, minlength=len(users))


def auc_ci95(auc: float, positives: int, negatives: int) -> list[float]:
    """A 95% interval of an AUC (Hanley and McNeil, 1982: normal approximation)."""
    q1, q2 = auc / (2 - auc), 2 * auc**2 / (1 + auc)
    var = (auc * (1 - auc) + (positives - 1) * (q1 - auc**2) + (negatives - 1) * (q2 - auc**2)) / (
        positives * negatives
    )
    half = 1.96 * math.sqrt(max(var, 0.0))
    return [max(0.0, auc - half), min(1.0, auc + half)]


MIN_ATTACK_USERS = 10
"""Members and non-members each needed for the attack AUC's interval: with fewer, the normal
approximation collapses (1 vs 1 users gives AUC 0 or 1 with a zero-width interval)."""


def membership_attack(member_nll: np.ndarray, nonmember_nll: np.ndarray) -> dict[str, Any]:
    """The loss-threshold attack's AUC from per-user NLLs of members and non-members.

    No interval (None) below `MIN_ATTACK_USERS` on either side.
    """
    y = np.concatenate([np.ones(len(member_nll)), np.zeros(len(nonmember_nll))])
    auc = roc_auc(y, -np.concatenate([member_nll, nonmember_nll]))
    enough = min(len(member_nll), len(nonmember_nll)) >= MIN_ATTACK_USERS
    return {
        "membership_attack_auc": auc,
        "membership_attack_auc_ci95": (
            None
            if auc is None or not enough
            else auc_ci95(auc, len(member_nll), len(nonmember_nll))
        ),
        "membership_members": len(member_nll),
        "membership_nonmembers": len(nonmember_nll),
        "member_mean_nll": float(member_nll.mean()) if len(member_nll) else None,
        "nonmember_mean_nll": float(nonmember_nll.mean()) if len(nonmember_nll) else None,
    }


def privacy_section(run: ValidationRun) -> dict[str, Any]:
    """The checkpoint's DP record and the membership attack (or why it cannot be run)."""
    t0 = time.perf_counter()
    record = (run.sim.extra or {}).get("privacy")
    out: dict[str, Any] = {
        "dp": record is not None,
        "dp_epsilon": None if record is None else record.get("epsilon"),
        "dp_delta": None if record is None else record.get("delta"),
        "training_record": record,
        "membership_attack": ATTACK,
        "membership_attack_auc": None,
        "membership_note": None,
    }
    data = run.data
    if not data.members_known or data.train is None or run.sim_probs is None:
        out["membership_note"] = (
            "not computed: the simulator's training users are not known (pass its training "
            "logs as --logs: the users it held out are then the non-members)"
        )
        run.lap("privacy", t0)
        return out
    assert run.sim_leave is not None  # teacher-forced with sim_probs
    _, held = user_nll(run.events, run.sim_probs, run.sim_leave)
    candidates = sorted(set(data.train.steps["user_id"].astype(str)) - data.not_members)
    rng = np.random.default_rng([run.cfg.seed, 7])
    pick = rng.choice(len(candidates), min(len(held), len(candidates)), replace=False)
    members = select_users(data.train, {candidates[i] for i in pick})
    events = build_events(members, run.sim.profile_encoder)
    probs, leave = teacher_forced(run.sim, members, events)
    _, trained = user_nll(events, probs, leave)
    out.update(membership_attack(trained, held))
    run.lap("privacy", t0)
    return out
