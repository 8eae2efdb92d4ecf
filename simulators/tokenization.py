"""SimTokenizer: sessions as one token sequence, with role, slot and item channels.

A session is encoded as::

    BOS p_1 .. p_S | X s_1 .. s_k  i_1 r_1  i_2 r_2 .. i_k r_k | X s_1 .. | ... [LEAVE]

- ``p_*``: profile tokens (``field=value``), padded to S slots with PROFILE_PAD.
- ``X``: START before the first slate, CONT before every later one (the user stayed).
- ``s_j``: the slate's items in display order (the recommender's tokens: never a target).
- ``i_j r_j``: each item re-stated right before the user's response to it, so the response is
  predicted at the item it answers while the whole slate and the earlier responses are in view.
- ``LEAVE``: the session ended because the user left (absent when it was cut by a step limit).

Targets are only what the user writes: at each ``i_j`` the next token ``r_j`` (one response token
per behaviour of the simulator's `BehaviourSet`, by default skip, click, buy) and at each ``r_k``
the next token CONT or LEAVE. Beside the token id every position carries a
role (profile, slate item, re-stated item, response, control), a slot (1-based slot of the item a
token belongs to, 0 otherwise) and an item index (-1 for non-item tokens), from which the model
adds role/slot embeddings and item side information (features and title text), so an item never
seen in training still gets a meaningful input through its text and features.

A fifth channel, the *session summary*, gives every item token (slate and re-stated) a code of how
much of the item's category the user has consumed earlier in the session: clicks (buys included)
and buys (any level deeper than a click), each capped (`summary_codes`). Attention sees only a recent window of steps, while
a session's earlier consumption can still shape its interests; the code carries that part of the
history at a fixed cost. A simulator built with `SimulatorConfig.session_summary` adds a learned
embedding of it; for other simulators the channel is ignored.
"""

from __future__ import annotations

import itertools
import zlib
from dataclasses import dataclass

import numpy as np

from simulators.behaviours import DEEPER, DEFAULT_BEHAVIOURS, SKIP, BehaviourSet

PAD, BOS, START, CONT, LEAVE = range(5)
"""Control tokens every vocabulary starts with; the behaviours' response tokens follow them,
then <unk_item> and <profile_pad> (for skip, click, buy: ids 5-7, 8 and 9)."""
CONTROL_TOKENS = ("<pad>", "<bos>", "<start>", "<cont>", "<leave>")
RESPONSE_BASE = len(CONTROL_TOKENS)
VOCAB_FORMAT_VERSION = 2
"""vocab.json version: 2 stores the behaviour set (version 1 had skip, click, buy built in)."""

ROLE_CONTROL, ROLE_PROFILE, ROLE_SLATE, ROLE_RESTATED, ROLE_RESPONSE = range(5)
NUM_ROLES = 5

SUMMARY_CLICK_LEVELS = 8
"""Clicks on a category so far, as 0..7 (7: seven or more)."""
SUMMARY_BUY_LEVELS = 4
"""Buys (responses deeper than a click) in a category so far, as 0..3 (3: three or more)."""
NUM_SUMMARY_CODES = SUMMARY_CLICK_LEVELS * SUMMARY_BUY_LEVELS

# target kinds at a position
TARGET_NONE, TARGET_RESPONSE, TARGET_LEAVE = 0, 1, 2


def step_block_length(k: int) -> int:
    """Tokens one step of a k-item slate takes: X, k slate items, k (item, response) pairs."""
    return 1 + 3 * k


@dataclass
class EncodedSession:
    """Parallel arrays of one encoded session (length T)."""

    input_ids: np.ndarray  # (T,) int64
    roles: np.ndarray  # (T,) int64
    slots: np.ndarray  # (T,) int64
    items: np.ndarray  # (T,) int64 item index or -1
    target_kind: np.ndarray  # (T,) TARGET_*: what the token at t + 1 is
    target: np.ndarray  # (T,) int64 class of the next token (0..2 response, 0..1 cont/leave)
    step_start: np.ndarray  # (num_steps,) position of each step's X token
    summary: np.ndarray  # (T,) int64 session-summary code (0 outside item tokens)


def summary_codes(clicks: np.ndarray, buys: np.ndarray) -> np.ndarray:
    """Session-summary codes of per-category counts.

    0 for nothing consumed (and for every non-item token), else clicks and buys, each capped,
    combined into one index.
    """
    c = np.minimum(clicks, SUMMARY_CLICK_LEVELS - 1)
    b = np.minimum(buys, SUMMARY_BUY_LEVELS - 1)
    return (c * SUMMARY_BUY_LEVELS + b).astype(np.int64)


def text_buckets(title: str, num_buckets: int, max_words: int) -> list[int]:
    """Hash a title's lower-cased words (and word pairs) into buckets 1..num_buckets-1 (0 = pad)."""
    words = [w for w in "".join(c if c.isalnum() else " " for c in title.lower()).split() if w]
    grams = words + [f"{a}_{b}" for a, b in itertools.pairwise(words)]
    return [1 + zlib.crc32(g.encode()) % (num_buckets - 1) for g in grams[:max_words]]


class SimTokenizer:
    """Closed vocabulary: specials, profile tokens, one token per known item.

    The special tokens are the control tokens, one response token per behaviour, <unk_item>
    and <profile_pad>; with the default behaviours (skip, click, buy) the ids are those of
    every checkpoint written before behaviours became data.
    """

    def __init__(
        self,
        profile_vocab: list[str],
        num_items: int,
        profile_slots: int,
        behaviours: BehaviourSet = DEFAULT_BEHAVIOURS,
    ) -> None:
        """Vocabulary from the profile tokens, the catalog size and the behaviour set."""
        self.profile_vocab = list(profile_vocab)
        self.num_items = int(num_items)
        self.profile_slots = int(profile_slots)
        self.behaviours = behaviours
        r = behaviours.size
        self.response_tokens = np.arange(RESPONSE_BASE, RESPONSE_BASE + r)
        """Token id of each behaviour code."""
        self.unk_item = RESPONSE_BASE + r
        self.profile_pad = RESPONSE_BASE + r + 1
        self.profile_base = RESPONSE_BASE + r + 2
        self.output_tokens = (*self.response_tokens.tolist(), CONT, LEAVE)
        """The head's outputs, in this order: one per behaviour, then continue and leave."""
        self.item_base = self.profile_base + len(self.profile_vocab)

    @property
    def special_tokens(self) -> list[str]:
        """Token strings of the ids below `profile_base`."""
        return [
            *CONTROL_TOKENS,
            *(f"<{n}>" for n in self.behaviours.names),
            "<unk_item>",
            "<profile_pad>",
        ]

    @property
    def vocab_size(self) -> int:
        """Total number of token ids."""
        return self.item_base + self.num_items

    def vocab(self) -> list[str]:
        """Token strings by id (saved as vocab.json)."""
        return (
            self.special_tokens
            + [f"<profile:{t}>" for t in self.profile_vocab]
            + [f"<item:{i}>" for i in range(self.num_items)]
        )

    def item_tokens(self, items: np.ndarray, known: np.ndarray | None = None) -> np.ndarray:
        """Item indices -> token ids; items not `known` (cold) map to UNK_ITEM."""
        items = np.asarray(items, dtype=np.int64)
        tok = self.item_base + items
        if known is not None:
            tok = np.where(known[items], tok, self.unk_item)
        return tok

    def prefix(self, profile: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """BOS + padded profile tokens: (ids, roles), length 1 + profile_slots."""
        prof = np.asarray(profile, dtype=np.int64)[: self.profile_slots]
        ids = np.full(1 + self.profile_slots, self.profile_pad, dtype=np.int64)
        ids[0] = BOS
        ids[1 : 1 + len(prof)] = np.where(prof >= 0, self.profile_base + prof, self.profile_pad)
        roles = np.full(len(ids), ROLE_PROFILE, dtype=np.int64)
        roles[0] = ROLE_CONTROL
        return ids, roles

    def encode_session(
        self,
        profile: np.ndarray,
        slates: list[np.ndarray],
        responses: list[np.ndarray],
        left: bool,
        known: np.ndarray | None = None,
        item_category: np.ndarray | None = None,
    ) -> EncodedSession:
        """Encode one session (item indices per step, Response codes per step).

        `item_category` ((num_items,) category index per item) feeds the session-summary
        channel; without it every item counts as one category.
        """
        pid, prole = self.prefix(profile)
        ids, roles, slots, items = (
            [pid],
            [prole],
            [np.zeros(len(pid), np.int64)],
            [np.full(len(pid), -1)],
        )
        kinds, targets = [np.zeros(len(pid), np.int64)], [np.zeros(len(pid), np.int64)]
        summary = [np.zeros(len(pid), np.int64)]
        consumed: dict[int, list[int]] = {}  # category -> [clicks, buys] so far
        starts = []
        pos = len(pid)
        for t, (slate, resp) in enumerate(zip(slates, responses)):
            slate = np.asarray(slate, dtype=np.int64)
            resp = np.asarray(resp, dtype=np.int64)
            k = len(slate)
            n = step_block_length(k)
            b_ids = np.empty(n, np.int64)
            b_role = np.empty(n, np.int64)
            b_slot = np.zeros(n, np.int64)
            b_item = np.full(n, -1, np.int64)
            b_kind = np.zeros(n, np.int64)
            b_tgt = np.zeros(n, np.int64)
            b_ids[0], b_role[0] = (START if t == 0 else CONT), ROLE_CONTROL
            tok = self.item_tokens(slate, known)
            b_ids[1 : 1 + k], b_role[1 : 1 + k] = tok, ROLE_SLATE
            b_slot[1 : 1 + k] = np.arange(1, k + 1)
            b_item[1 : 1 + k] = slate
            pair = 1 + k + 2 * np.arange(k)
            b_ids[pair], b_role[pair], b_slot[pair], b_item[pair] = (
                tok,
                ROLE_RESTATED,
                np.arange(1, k + 1),
                slate,
            )
            b_ids[pair + 1] = self.response_tokens[resp]
            b_role[pair + 1], b_slot[pair + 1] = ROLE_RESPONSE, np.arange(1, k + 1)
            b_kind[pair], b_tgt[pair] = TARGET_RESPONSE, resp
            cats = (
                np.zeros(k, np.int64) if item_category is None else np.asarray(item_category)[slate]
            )
            counts = np.array([consumed.get(int(c), [0, 0]) for c in cats]).reshape(k, 2)
            codes = summary_codes(counts[:, 0], counts[:, 1])
            b_sum = np.zeros(n, np.int64)
            b_sum[1 : 1 + k], b_sum[pair] = codes, codes
            for c, r in zip(cats.tolist(), resp.tolist()):
                if r != SKIP:
                    tally = consumed.setdefault(c, [0, 0])
                    tally[0] += 1
                    tally[1] += int(r >= DEEPER)
            last = t == len(slates) - 1
            if not last or left:
                b_kind[-1], b_tgt[-1] = TARGET_LEAVE, int(last and left)
            ids.append(b_ids)
            roles.append(b_role)
            slots.append(b_slot)
            items.append(b_item)
            kinds.append(b_kind)
            targets.append(b_tgt)
            summary.append(b_sum)
            starts.append(pos)
            pos += n
        if left:
            ids.append(np.array([LEAVE]))
            roles.append(np.array([ROLE_CONTROL]))
            slots.append(np.zeros(1, np.int64))
            items.append(np.full(1, -1))
            kinds.append(np.zeros(1, np.int64))
            targets.append(np.zeros(1, np.int64))
            summary.append(np.zeros(1, np.int64))
        cat = np.concatenate
        return EncodedSession(
            cat(ids),
            cat(roles),
            cat(slots),
            cat(items).astype(np.int64),
            cat(kinds),
            cat(targets),
            np.asarray(starts, dtype=np.int64),
            cat(summary),
        )

    def decode(self, ids: np.ndarray) -> list[str]:
        """Token ids -> token strings (for debugging and round-trip tests)."""
        vocab = self.vocab()
        return [vocab[i] for i in np.asarray(ids).tolist()]

    def to_dict(self) -> dict:
        """JSON form (vocab.json also holds the full token list)."""
        return {
            "format_version": VOCAB_FORMAT_VERSION,
            "behaviours": self.behaviours.to_dict(),
            "profile_vocab": self.profile_vocab,
            "num_items": self.num_items,
            "profile_slots": self.profile_slots,
            "tokens": self.vocab(),
        }

    @classmethod
    def from_dict(cls, d: dict) -> SimTokenizer:
        """Inverse of to_dict; checks the stored token list matches.

        A version-1 vocabulary, without a behaviour set, has skip, click, buy.
        """
        version = d.get("format_version", 1)
        if version not in (1, VOCAB_FORMAT_VERSION):
            raise ValueError(
                f"vocabulary format_version {version!r} is not supported (this reader takes 1 "
                f"and {VOCAB_FORMAT_VERSION})"
            )
        behaviours = BehaviourSet.from_dict(d.get("behaviours"))
        tok = cls(d["profile_vocab"], d["num_items"], d["profile_slots"], behaviours)
        if "tokens" in d and d["tokens"] != tok.vocab():
            raise ValueError(
                "vocabulary token list does not match its profile vocab and item count"
            )
        return tok
