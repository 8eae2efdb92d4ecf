"""Training data of the GPT-2 user: logs -> encoded sessions -> context windows -> packed rows.

- Sessions are packed into rows of `context_length` tokens with a block-diagonal causal mask and
  positions restarting per session (length-sorted batches hurt leave prediction; packing wastes
  nothing). A session longer than the context is cut into windows exactly as inference refills
  its cache: profile + the last `window_steps` steps as context (no loss), then new steps.
- Validation is split by user.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import torch

from simulators.catalog import ProfileEncoder, item_category_index
from simulators.logs import InteractionLogs
from simulators.tokenization import EncodedSession, SimTokenizer

CHANNELS = (
    "input_ids",
    "roles",
    "slots",
    "items",
    "summary",
    "position_ids",
    "step_ids",
    "segment_ids",
    "target_kind",
    "target",
)


@dataclass
class SessionData:
    """Encoded sessions of a log set and the vocabulary they were encoded with."""

    tokenizer: SimTokenizer
    profile_encoder: ProfileEncoder
    sessions: list[EncodedSession]
    users: list[str]
    profiles: np.ndarray
    meta: dict = field(default_factory=dict)


def encode_logs(
    logs: InteractionLogs,
    profile_encoder: ProfileEncoder | None = None,
    known_items: np.ndarray | None = None,
) -> SessionData:
    """Encode every session of a log set (items indexed by their row in the items table)."""
    encoder = profile_encoder or ProfileEncoder.from_users(logs.users)
    item_index = logs.item_index()
    tok = SimTokenizer(encoder.vocab, len(item_index), encoder.slots, logs.behaviours)
    users = logs.users.assign(user_id=logs.users["user_id"].astype(str)).drop_duplicates("user_id")
    prof = dict(zip(users["user_id"], encoder.encode(users)))
    steps = logs.steps.sort_values(["user_id", "session_id", "step"], kind="stable")
    category = item_category_index(logs.items)
    sessions, session_users, profiles = [], [], []
    for (uid, _sid), g in steps.groupby(["user_id", "session_id"], sort=False):
        slates = [np.array([item_index[i] for i in items], dtype=np.int64) for items in g["items"]]
        resp = [np.asarray(r, dtype=np.int64) for r in g["responses"]]
        p = prof[uid]
        sessions.append(
            tok.encode_session(p, slates, resp, bool(g["leave"].iloc[-1]), known_items, category)
        )
        session_users.append(uid)
        profiles.append(p)
    return SessionData(
        tok, encoder, sessions, session_users, np.asarray(profiles).reshape(len(profiles), -1)
    )


def split_by_user(users: list[str], val_fraction: float, seed: int) -> np.ndarray:
    """Boolean mask of validation sessions: a seeded random subset of users."""
    uniq = sorted(set(users))
    rng = np.random.default_rng(seed)
    n_val = max(1, round(val_fraction * len(uniq))) if len(uniq) > 1 else 0
    val_users = set(rng.permutation(np.array(uniq, dtype=object))[:n_val].tolist())
    return np.array([u in val_users for u in users], dtype=bool)


def session_step_ids(s: EncodedSession) -> np.ndarray:
    """Step index of every token of a session: what recency attention measures distances in.

    -1 for BOS and the profile; the closing LEAVE belongs to the last step.
    """
    return np.searchsorted(s.step_start, np.arange(len(s.input_ids)), side="right") - 1


def session_windows(
    s: EncodedSession, context: int, window_steps: int, prefix: int
) -> list[dict[str, np.ndarray]]:
    """Cut a session into windows that fit the context, mirroring the inference refill.

    A window holds the profile, up to `window_steps` earlier steps as context (no loss: as many
    whole steps as fit beside the window's first new step) and then as many new steps as fit.

    Raises:
        ValueError: a single step does not fit the context after the profile.
    """
    total = len(s.input_ids)
    channels = {
        "input_ids": s.input_ids,
        "roles": s.roles,
        "slots": s.slots,
        "items": s.items,
        "summary": s.summary,
        "step_ids": session_step_ids(s),
        "target_kind": s.target_kind,
        "target": s.target,
    }
    if total <= context:
        return [channels]
    starts = [*list(s.step_start), total]
    out = []
    first = 0  # first step of the window (context from window_steps earlier)
    n_steps = len(s.step_start)
    while first < n_steps:
        if prefix + starts[first + 1] - starts[first] > context:
            raise ValueError(
                f"one step of {starts[first + 1] - starts[first]} tokens does not fit the context "
                f"{context} after the {prefix}-token profile"
            )
        # as many earlier steps as context (at most window_steps) as fit beside this step: the
        # refill keeps the same whole steps (`GPT2UserSimulator._refill`)
        ctx_first = max(0, first - window_steps)
        while prefix + starts[first + 1] - starts[ctx_first] > context:
            ctx_first += 1
        begin = starts[ctx_first]
        end_step = first
        while end_step < n_steps and prefix + starts[end_step + 1] - begin <= context:
            end_step += 1
        stop = starts[end_step] if end_step < n_steps else total
        w = {}
        for name, arr in channels.items():
            piece = np.concatenate([arr[:prefix], arr[begin:stop]])
            w[name] = piece
        if ctx_first < first:  # context steps carry no loss: the model only reads them
            w["target_kind"] = w["target_kind"].copy()
            w["target_kind"][prefix : prefix + starts[first] - begin] = 0
        out.append(w)
        first = end_step
    return out


def pack_rows(
    windows: list[dict[str, np.ndarray]], context: int, order: np.ndarray
) -> list[dict[str, np.ndarray]]:
    """First-fit packing of windows (in `order`) into rows of `context` tokens."""
    rows: list[dict[str, np.ndarray]] = []
    cur: list[dict[str, np.ndarray]] = []
    used = 0

    def flush() -> None:
        row = {name: np.zeros(context, dtype=np.int64) for name in CHANNELS}
        row["items"][:] = -1
        row["segment_ids"][:] = -1
        row["step_ids"][:] = -1
        pos = 0
        for seg, w in enumerate(cur):
            n = len(w["input_ids"])
            for name in (
                "input_ids",
                "roles",
                "slots",
                "items",
                "summary",
                "step_ids",
                "target_kind",
                "target",
            ):
                row[name][pos : pos + n] = w[name]
            row["position_ids"][pos : pos + n] = np.arange(n)
            row["segment_ids"][pos : pos + n] = seg
            pos += n
        rows.append(row)

    for i in order:
        w = windows[i]
        n = len(w["input_ids"])
        if used + n > context and cur:
            flush()
            cur, used = [], 0
        cur.append(w)
        used += n
    if cur:
        flush()
    return rows


def drop_items(
    batch: dict[str, torch.Tensor], p: float, unk_item: int, generator: torch.Generator
) -> dict[str, torch.Tensor]:
    """Item dropout: each item token becomes <unk_item> with chance p (teaches cold start)."""
    drop = (torch.rand(batch["items"].shape, generator=generator) < p) & (batch["items"] >= 0)
    out = dict(batch)
    out["input_ids"] = torch.where(
        drop, torch.full_like(batch["input_ids"], unk_item), batch["input_ids"]
    )
    return out


def hide_unknown_items(
    rows: list[dict[str, np.ndarray]], known: np.ndarray, unk_item: int
) -> list[dict[str, np.ndarray]]:
    """Rows whose items outside `known` read as <unk_item>, as the saved simulator reads them.

    Validation and calibration users can be shown items no training user saw; their own token
    embeddings never trained, and the saved simulator (`validate`, the envs) reads such items
    as <unk_item> plus their side information. Item tokens only (slate and re-stated items
    carry the items channel); the rows are changed in place and returned.
    """
    for row in rows:
        items = row["items"]
        cold = (items >= 0) & ~known[np.clip(items, 0, None)]
        row["input_ids"][cold] = unk_item
    return rows


def collate(rows: list[dict[str, np.ndarray]]) -> dict[str, torch.Tensor]:
    """Stack packed rows into (B, T) tensors."""
    return {name: torch.from_numpy(np.stack([r[name] for r in rows])) for name in CHANNELS}
