"""Held-out logged events and the probabilities each model assigns to them.

A log set is flattened into slot events (one per shown item) and step events (one per slate),
in the order `simulators.finetune.encode_logs` tokenises sessions (sorted by user, session,
step). Two sources give probabilities for the same events:

- `teacher_forced`: the GPT-2 user reads every session with the logged responses in place
  (packed rows, the training windows) and gives p(r_j | profile, history, slate, r_<j) at every
  slot and p(leave | ..., r_1..r_k) after every slate that has a continue/leave target.
- `world_replay`: the ground-truth world replays the session with the logged responses and
  leave flags forced (its state is a deterministic function of profile and history), giving the
  exact conditional probabilities of the same events.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any, cast

import numpy as np
import pandas as pd
import torch

from simulators.behaviours import DEEPER, engaged
from simulators.catalog import ProfileEncoder
from simulators.logs import InteractionLogs
from simulators.progress import progress_bar

log = logging.getLogger(__name__)

PACK_WIDTHS: tuple[int, ...] = (128, 256)
"""Row widths short windows are packed into before the full context (less padded attention)."""


@dataclass
class Events:
    """A log set flattened into slot, step and session arrays (see module docstring).

    Slot arrays have one entry per shown item, step arrays one per slate, session arrays one
    per session; `step_first_slot[i]` is the index of step i's first slot.
    """

    session: np.ndarray  # (n,) session index of each slot
    step: np.ndarray  # (n,) step index within the session
    slot: np.ndarray  # (n,) 0-based position in the slate
    item: np.ndarray  # (n,) catalog index (the simulator's catalog)
    response: np.ndarray  # (n,) behaviour code
    clicks_before: np.ndarray  # (n,) clicks (or buys) earlier in the same slate
    step_session: np.ndarray  # (m,) session index of each step
    step_index: np.ndarray  # (m,) step index within the session
    step_size: np.ndarray  # (m,) slate length
    step_first_slot: np.ndarray  # (m,) index of the step's first slot
    step_leave: np.ndarray  # (m,) bool, the user left after this slate
    step_has_target: np.ndarray  # (m,) bool, a continue/leave decision was logged
    session_user: np.ndarray  # (s,) user id (str)
    session_length: np.ndarray  # (s,) steps
    session_left: np.ndarray  # (s,) bool, ended by leaving (not cut)
    profiles: np.ndarray  # (s, slots) profile token indices of each session's user

    @property
    def clicked(self) -> np.ndarray:
        """(n,) bool: the logged response is any engagement (a click or deeper)."""
        return engaged(self.response)

    @property
    def bought(self) -> np.ndarray:
        """(n,) bool: the logged response is engagement past a click (a buy by default)."""
        return self.response >= DEEPER

    def __len__(self) -> int:
        """Number of slot events."""
        return len(self.response)


def shown_item_ids(logs: InteractionLogs) -> list[str]:
    """Distinct item ids the slates of `logs` show, in order of first appearance."""
    if not len(logs.steps):
        return []
    flat = np.concatenate([np.asarray(x, dtype=object) for x in logs.steps["items"]])
    return list(dict.fromkeys(str(i) for i in flat))


def add_shown_items(sim: Any, logs: InteractionLogs) -> int:
    """Add the items `logs` show that the simulator's catalog lacks; returns how many.

    They enter by the side information the logs' items table gives them (title, category,
    price; `GPT2UserSimulator.add_items`), else by the learned unknown-item input alone.
    """
    known = set(sim.items_table()["item_id"].astype(str))
    missing = [i for i in shown_item_ids(logs) if i not in known]
    if not missing:
        return 0
    table = logs.items.assign(item_id=logs.items["item_id"].astype(str)).set_index("item_id")
    rows = table.reindex(missing).reset_index()
    sim.add_items(rows)
    return len(missing)


def align_items(logs: InteractionLogs, items: pd.DataFrame) -> InteractionLogs:
    """The same logs with the items table replaced by `items` (a simulator's catalog).

    Item indices then mean the simulator's catalog positions.

    Raises:
        ValueError: when the logs show items the catalog lacks (`add_shown_items` adds them).
    """
    known = set(items["item_id"].astype(str))
    missing = [i for i in shown_item_ids(logs) if i not in known]
    if missing:
        raise ValueError(
            f"{len(missing)} logged items (e.g. {missing[0]!r}) are not in the simulator's "
            "catalog; add them first (evaluation.fidelity.events.add_shown_items)"
        )
    return InteractionLogs(
        steps=logs.steps,
        items=items.reset_index(drop=True),
        users=logs.users,
        meta=logs.meta,
        source=logs.source,
    )


def sorted_steps(logs: InteractionLogs) -> pd.DataFrame:
    """Steps in tokenisation order (user, session, step), as encode_logs reads them."""
    return logs.steps.sort_values(["user_id", "session_id", "step"], kind="stable").reset_index(
        drop=True
    )


def select_users(logs: InteractionLogs, users: set[str]) -> InteractionLogs:
    """The sessions of the given users (the tables are kept whole)."""
    keep = logs.steps["user_id"].astype(str).isin(users)
    return InteractionLogs(
        steps=logs.steps[keep].reset_index(drop=True),
        items=logs.items,
        users=logs.users,
        meta=logs.meta,
        source=logs.source,
    )


def build_events(logs: InteractionLogs, encoder: ProfileEncoder) -> Events:
    """Flatten logs (items already aligned to the catalog of interest) into Events."""
    steps = sorted_steps(logs)
    if len(steps) == 0:
        raise ValueError("the logs hold no steps to validate on")
    index = logs.item_index()
    uid = steps["user_id"].astype(str).to_numpy()
    sid = steps["session_id"].astype(str).to_numpy()
    new = np.ones(len(steps), dtype=bool)
    new[1:] = (uid[1:] != uid[:-1]) | (sid[1:] != sid[:-1])
    step_session = np.cumsum(new) - 1
    starts = np.nonzero(new)[0]
    n_sessions = len(starts)
    session_length = np.diff(np.append(starts, len(steps)))
    step_index = np.arange(len(steps)) - starts[step_session]
    sizes = steps["items"].map(len).to_numpy().astype(np.int64)
    items_flat = np.concatenate([np.asarray(x, dtype=object) for x in steps["items"]])
    item = pd.Series(items_flat).astype(str).map(index).to_numpy().astype(np.int64)
    response = np.concatenate([np.asarray(x, dtype=np.int64) for x in steps["responses"]])
    slot_step = np.repeat(np.arange(len(steps)), sizes)
    first = np.concatenate([[0], np.cumsum(sizes)[:-1]])
    slot = np.arange(len(item)) - first[slot_step]
    clicked = engaged(response).astype(np.int64)
    cum = np.cumsum(clicked)
    clicks_before = cum - clicked - (cum[first] - clicked[first])[slot_step]
    leave = steps["leave"].to_numpy().astype(bool)
    last = np.zeros(len(steps), dtype=bool)
    last[starts[1:] - 1] = True
    last[-1] = True
    session_left = leave[last]
    has_target = ~last | leave
    users = logs.users.assign(user_id=logs.users["user_id"].astype(str)).drop_duplicates("user_id")
    session_user = uid[starts]
    prof = encoder.encode(users.set_index("user_id").loc[session_user].reset_index())
    return Events(
        session=step_session[slot_step],
        step=step_index[slot_step],
        slot=slot,
        item=item,
        response=response,
        clicks_before=clicks_before,
        step_session=step_session,
        step_index=step_index,
        step_size=sizes,
        step_first_slot=first,
        step_leave=leave,
        step_has_target=has_target,
        session_user=session_user.astype(object),
        session_length=session_length,
        session_left=session_left,
        profiles=prof.reshape(n_sessions, -1),
    )


@torch.inference_mode()
def teacher_forced(
    sim: Any,
    logs: InteractionLogs,
    events: Events,
    rows_per_batch: int = 32,
    progress: bool = False,
) -> tuple[np.ndarray, np.ndarray]:
    """The GPT-2 user's conditional probabilities at every logged event.

    Sessions are encoded exactly as for training (profile, slates, re-stated items, logged
    responses; sessions longer than the context are cut into the training windows, which mirror
    the inference refill) and packed into rows; one forward per batch of rows.

    Args:
        sim: a GPT2UserSimulator (its model, tokenizer, profile encoder and item_known).
        logs: the logs of `events`, items aligned to the simulator's catalog.
        events: `build_events(logs, sim.profile_encoder)`.
        rows_per_batch: packed rows per forward.
        progress: show a progress bar.

    Returns:
        (response probs (n, R) float64 in slot order, leave probs (m,) float64 per step, NaN
        where no continue/leave decision was logged).
    """
    from simulators.lm.model import packed_probs
    from simulators.slate_fit import window_length
    from simulators.training.data import collate, encode_logs, pack_rows, session_windows

    model = sim.model
    known = model.item_known.detach().cpu().numpy()
    data = encode_logs(logs, sim.profile_encoder, known)
    if len(data.sessions) != len(events.session_length):
        raise RuntimeError("encoded sessions do not match the events (ordering changed?)")
    prefix = 1 + data.tokenizer.profile_slots
    context = window_length(model.sim_config, prefix, int(events.step_size.max()))
    windows = [
        w
        for s in data.sessions
        for w in session_windows(s, context, model.sim_config.window_steps, prefix)
    ]
    lengths = np.array([len(w["input_ids"]) for w in windows])
    widths = [w for w in PACK_WIDTHS if w < context] + [context]
    out: list[np.ndarray | None] = [None] * len(windows)
    kinds: list[np.ndarray | None] = [None] * len(windows)
    dev = next(model.parameters()).device
    lower = 0
    plan = []
    for width in widths:
        idx = np.nonzero((lengths > lower) & (lengths <= width))[0]
        lower = width
        if len(idx):
            plan.append(
                (width, idx, pack_rows([windows[i] for i in idx], width, np.arange(len(idx))))
            )
    bar = progress_bar(
        sum(len(p[2]) for p in plan), "validate: teacher-forced", "rows", enabled=progress
    )
    for _width, idx, rows in plan:
        probs_parts, kind_parts = [], []
        for i in range(0, len(rows), rows_per_batch):
            batch = {k: v.to(dev) for k, v in collate(rows[i : i + rows_per_batch]).items()}
            p, k = packed_probs(model, batch)
            probs_parts.append(p.double().cpu().numpy())
            kind_parts.append(k.cpu().numpy())
            bar.update(len(rows[i : i + rows_per_batch]))
        probs = np.concatenate(probs_parts)
        kind = np.concatenate(kind_parts)
        counts = [int((windows[i]["target_kind"] > 0).sum()) for i in idx]
        offsets = np.concatenate([[0], np.cumsum(counts)])
        if offsets[-1] != len(probs):
            raise RuntimeError("packed targets do not match the windows")
        for j, win in enumerate(idx):
            out[win] = probs[offsets[j] : offsets[j + 1]]
            kinds[win] = kind[offsets[j] : offsets[j + 1]]
    bar.close()
    # every window lies in exactly one width's plan, so none is left None
    probs = np.concatenate(cast("list[np.ndarray]", out))
    kind = np.concatenate(cast("list[np.ndarray]", kinds))
    r = model.num_behaviours
    resp = probs[kind == 1, :r]
    leave_t = probs[kind == 2, r + 1]
    if len(resp) != len(events) or len(leave_t) != int(events.step_has_target.sum()):
        raise RuntimeError(
            f"teacher forcing gave {len(resp)} response and {len(leave_t)} leave targets for "
            f"{len(events)} slots and {int(events.step_has_target.sum())} decisions"
        )
    leave = np.full(len(events.step_leave), np.nan)
    leave[events.step_has_target] = leave_t
    return resp, leave


def context_spans(sim: Any, logs: InteractionLogs, events: Events) -> np.ndarray:
    """What the simulator reads at every step: its training/inference windows as step spans.

    A session that fits the context is one span (0, 0, length). A longer one is read in windows
    (`simulators.finetune.session_windows`, mirroring the inference refill): profile + a few
    context steps, then the steps it predicts.

    Returns:
        (R, 4) int64 rows (session, first context step, first predicted step, end step).
    """
    from simulators.slate_fit import window_length
    from simulators.tokenization import CONT, START
    from simulators.training.data import encode_logs, session_windows

    model = sim.model
    data = encode_logs(logs, sim.profile_encoder, model.item_known.detach().cpu().numpy())
    prefix = 1 + data.tokenizer.profile_slots
    context = window_length(model.sim_config, prefix, int(events.step_size.max()))
    spans = []
    for s, enc in enumerate(data.sessions):
        windows = session_windows(enc, context, model.sim_config.window_steps, prefix)
        first = 0
        for w in windows:
            ids = w["input_ids"][prefix:]
            xs = np.nonzero((ids == START) | (ids == CONT))[0]
            targets = np.nonzero(w["target_kind"][prefix:] > 0)[0]
            # steps (X tokens) before the first target, less the first predicted step's own X
            n_ctx = int((xs < targets[0]).sum()) - 1 if len(targets) else 0
            start = first - n_ctx
            spans.append((s, start, first, start + len(xs)))
            first = start + len(xs)
        if first != events.session_length[s]:
            raise RuntimeError(f"windows of session {s} cover {first} of its steps")
    return np.asarray(spans, dtype=np.int64).reshape(-1, 4)


def world_replay(
    world: Any, logs: InteractionLogs, events: Events, spans: np.ndarray | None = None
) -> tuple[np.ndarray, ...]:
    """The ground truth's probabilities at every logged event (replay with forcing).

    Args:
        world: a ParametricUserModel whose catalog holds the logged item ids and whose profile
            vocabulary holds the users' profile values.
        logs: the logs of `events`.
        events: `build_events(logs, ...)`.
        spans: None for the exact probabilities (every session replayed from its start), or
            `context_spans(...)`: each span is replayed from a fresh state at its first context
            step, so the world sees only what the simulator's window shows (the floor a
            predictor with the world's equations has at that context length).

    Returns:
        (response probs (n, R), leave probs (m,)): p(r_j | state, slate, r_<j) and
        p(leave | state, slate, r_1..r_k), float64.
    """
    from simulators.parametric import ParametricUserModel

    if not isinstance(world, ParametricUserModel):
        raise TypeError(f"world must be a ParametricUserModel, got {type(world).__name__}")
    lengths = events.session_length
    if spans is None:
        spans = np.stack([np.arange(len(lengths)), 0 * lengths, 0 * lengths, lengths], axis=1)
    spans = np.asarray(spans, dtype=np.int64)
    w = ParametricUserModel(world.config, capacity=max(len(spans), 1))
    world_index = {iid: i for i, iid in enumerate(w.items_table()["item_id"])}
    ids = logs.items["item_id"].astype(str).tolist()
    try:
        to_world = np.array([world_index[i] for i in ids], dtype=np.int64)
    except KeyError as exc:
        raise ValueError(
            f"item {exc.args[0]!r} of the logs is not in the world's catalog"
        ) from None
    users = logs.users.assign(user_id=logs.users["user_id"].astype(str)).drop_duplicates("user_id")
    prof = w.profile_encoder.encode(
        users.set_index("user_id").loc[events.session_user].reset_index()
    )
    w.start_sessions(np.arange(len(spans)), prof[spans[:, 0]])
    first_step = np.concatenate([[0], np.cumsum(lengths)[:-1]])  # step id of each session's t=0
    nr = w.behaviours.size
    resp = np.full((len(events), nr), np.nan)
    leave = np.full(len(events.step_leave), np.nan)
    for rel in range(int((spans[:, 3] - spans[:, 1]).max(initial=0))):
        t = spans[:, 1] + rel
        rows_t = np.nonzero(t < spans[:, 3])[0]
        steps_t = first_step[spans[rows_t, 0]] + t[rows_t]
        for k in np.unique(events.step_size[steps_t]):
            sel = events.step_size[steps_t] == k
            rows, st = rows_t[sel], steps_t[sel]
            slot_idx = events.step_first_slot[st][:, None] + np.arange(k)  # (B, k)
            out = w.step(
                rows,
                to_world[events.item[slot_idx]],
                forced_responses=events.response[slot_idx],
                forced_leave=events.step_leave[st],
            )
            rec = t[rows] >= spans[rows, 2]
            resp[slot_idx[rec].reshape(-1)] = out.response_probs[rec].reshape(-1, nr)
            leave[st[rec]] = out.leave_prob[rec]
    return resp, leave
