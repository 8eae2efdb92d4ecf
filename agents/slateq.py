"""SlateQ (Ie et al., IJCAI 2019): slate values decomposed into item-level Q-values.

Under a conditional-logit user choice model with a null (no click) item,

    P(i | s, A) = v(s, i) / (v(s, ⊥) + Σ_{j∈A} v(s, j)),
    Q(s, A)     = Σ_{i∈A∪{⊥}} P(i | s, A) Q̄(s, i),

so one item-level Q̄ suffices. The item Q̄(s, i) of the consumed item (Q̄(s, ⊥) when nothing was
clicked) is regressed on the TD target

    y = r_i + γ (1 - terminated) Σ_{j∈A'∪{⊥}} P(j | s', A') Q̄(s', j),

the value of the slate A' at the NEXT state s' (SARSA: the slate actually shown at s'; Q-learning:
the slate the selection rule picks from s''s candidates). RecSim's reference implementation once
computed this with the current state's features; here the next-state values come only from
`next_obs`, and tests/test_agents.py checks it on a two-state toy.

The pure functions mirror RecSim's `slate_decomp_q_agent` (batched over users): `choice_probs`,
`slate_value`, `select_slate_topk`, `select_slate_greedy`, `slateq_target`. `SlateQAgent` is a
thin online learner around them: linear per-category models (the features of
`agents.bandits.PairFeatures`) for the choice logits and for Q̄, fitted with Adam on a replay
buffer at every `update`, a target copy of Q̄ synced each update, and epsilon-greedy slates.
The functions and the learner stay in one module, as in RecSim: the learner is only their
training loop, and both are read against the derivation above.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from agents.bandits import PairFeatures
from agents.base import (
    SlateAgent,
    batch_responses,
    default_reward_per_code,
    slot_rewards,
    transition_rows,
)
from simulators.behaviours import engaged

# ----------------------------------------------------------------------------- pure functions


def choice_probs(s_no_click: np.ndarray, s: np.ndarray) -> np.ndarray:
    """Conditional-logit choice probabilities, null item first.

    Args:
        s_no_click: (n,) positive score of not clicking.
        s: (n, k) positive scores of the slate's items.

    Returns:
        (n, k + 1): [P(⊥), P(slot 1), ..., P(slot k)], rows sum to 1.
    """
    scores = np.concatenate([np.asarray(s_no_click)[:, None], np.asarray(s)], axis=1)
    return scores / scores.sum(axis=1, keepdims=True)


def slate_value(
    s_no_click: np.ndarray, s: np.ndarray, q_no_click: np.ndarray, q: np.ndarray
) -> np.ndarray:
    """Q(s, A) = Σ_{i∈A∪{⊥}} P(i | s, A) Q̄(s, i) for slates given by item scores s, q (n, k)."""
    p = choice_probs(s_no_click, s)
    return p[:, 0] * np.asarray(q_no_click) + (p[:, 1:] * np.asarray(q)).sum(axis=1)


def select_slate_topk(
    slate_size: int, s_no_click: np.ndarray, s: np.ndarray, q: np.ndarray
) -> np.ndarray:
    """RecSim's top-k rule: the slate_size candidates with the largest s * q, best first.

    Args:
        slate_size: items per slate.
        s_no_click: (n,) null scores (unused by this rule; kept for a common signature).
        s: (n, C) candidate choice scores.
        q: (n, C) candidate Q-values.

    Returns:
        (n, slate_size) int64 candidate indices.
    """
    del s_no_click
    return np.argsort(-(np.asarray(s) * np.asarray(q)), axis=1, kind="stable")[:, :slate_size]


def select_slate_greedy(
    slate_size: int, s_no_click: np.ndarray, s: np.ndarray, q: np.ndarray
) -> np.ndarray:
    """RecSim's greedy rule: add the candidate that maximises the slate value, slot by slot.

    The value of a partial slate A is (s_⊥ q_⊥ + Σ s q) / (s_⊥ + Σ s), with q_⊥ = 0 as in RecSim.
    Arguments and result as `select_slate_topk`.
    """
    s, q = np.asarray(s, dtype=np.float64), np.asarray(q, dtype=np.float64)
    n, c = s.shape
    num = np.zeros(n)
    den = np.asarray(s_no_click, dtype=np.float64).copy()
    used = np.zeros((n, c), dtype=bool)
    out = np.zeros((n, slate_size), dtype=np.int64)
    for j in range(slate_size):
        value = (num[:, None] + s * q) / (den[:, None] + s)
        value[used] = -np.inf
        best = np.argmax(value, axis=1)
        out[:, j] = best
        used[np.arange(n), best] = True
        num += s[np.arange(n), best] * q[np.arange(n), best]
        den += s[np.arange(n), best]
    return out


def slateq_target(
    rewards: np.ndarray,
    next_s_no_click: np.ndarray,
    next_s: np.ndarray,
    next_q_no_click: np.ndarray,
    next_q: np.ndarray,
    terminated: np.ndarray,
    gamma: float,
) -> np.ndarray:
    """TD target of the consumed item: r + γ (1 - terminated) Q(s', A').

    Every `next_*` argument describes the NEXT state s' and its slate A' (scores (n,), (n, k)),
    never the state the reward was earned in.

    Args:
        rewards: (n,) reward of the consumed item (0 for the null item).
        next_s_no_click: (n,) choice score at s' of ⊥.
        next_s: (n, k) choice scores at s' of A''s items.
        next_q_no_click: (n,) Q̄ at s' of ⊥.
        next_q: (n, k) Q̄ at s' of A''s items.
        terminated: (n,) bool, the session ended (no bootstrap).
        gamma: discount.

    Returns:
        (n,) float64 targets.
    """
    v_next = slate_value(next_s_no_click, next_s, next_q_no_click, next_q)
    return (
        np.asarray(rewards, dtype=np.float64)
        + gamma * (1.0 - np.asarray(terminated, dtype=np.float64)) * v_next
    )


# ----------------------------------------------------------------------------- agent


class _Adam:
    """Adam over a dict of numpy parameters."""

    def __init__(self, params: dict[str, np.ndarray], lr: float) -> None:
        self.lr = lr
        self.m = {k: np.zeros_like(v) for k, v in params.items()}
        self.v = {k: np.zeros_like(v) for k, v in params.items()}
        self.t = 0

    def step(self, params: dict[str, np.ndarray], grads: dict[str, np.ndarray]) -> None:
        self.t += 1
        b1, b2 = 0.9, 0.999
        for k, g in grads.items():
            self.m[k] = b1 * self.m[k] + (1 - b1) * g
            self.v[k] = b2 * self.v[k] + (1 - b2) * g * g
            mh = self.m[k] / (1 - b1**self.t)
            vh = self.v[k] / (1 - b2**self.t)
            params[k] -= self.lr * mh / (np.sqrt(vh) + 1e-8)


class SlateQAgent(SlateAgent):
    """Online SlateQ with linear per-category models (see the module docstring).

    Args:
        slate_size: items per slate.
        gamma: discount.
        target: "q" (Q-learning: A' chosen by `select` from the next candidates) or "sarsa"
            (A' = the slate this agent actually showed at s').
        select: "topk" or "greedy" slate selection (acting and Q-learning targets).
        lr: Adam step size of both models.
        epsilon: probability that a row's slate is uniformly random (while `training`).
        buffer_size / batch_size / gradient_steps: replay capacity (transitions), minibatch
            size and Adam steps per `update` call.
        reward_per_code: (R,) the env's reward of each behaviour code; None: the default.
        num_categories: see `agents.bandits.PairFeatures`.
        seed: seed of the agent's own RNG.

    `deterministic` is ignored while `training` is True (the agent explores and learns online,
    also under SB3's `evaluate_policy`); set `training = False` to act greedily and freeze it.
    """

    name = "slateq"

    def __init__(
        self,
        slate_size: int,
        gamma: float = 0.9,
        target: str = "q",
        select: str = "topk",
        lr: float = 0.05,
        epsilon: float = 0.02,
        buffer_size: int = 50_000,
        batch_size: int = 512,
        gradient_steps: int = 8,
        reward_per_code: np.ndarray | None = None,
        num_categories: int | None = None,
        seed: int | None = None,
    ) -> None:
        """Set hyperparameters; parameters are allocated on the first observation."""
        super().__init__(slate_size, seed)
        if target not in ("q", "sarsa"):
            raise ValueError(f"target must be 'q' or 'sarsa', got {target!r}")
        if select not in ("topk", "greedy"):
            raise ValueError(f"select must be 'topk' or 'greedy', got {select!r}")
        self.gamma = gamma
        self.target = target
        self.select = select_slate_topk if select == "topk" else select_slate_greedy
        self.epsilon = epsilon
        self.buffer_size = buffer_size
        self.batch_size = batch_size
        self.gradient_steps = gradient_steps
        self.reward_per_code = default_reward_per_code(reward_per_code)
        self.lr = lr
        self.features = PairFeatures(num_categories)
        self.training = True
        self.params: dict[str, np.ndarray] | None = None
        self.target_params: dict[str, np.ndarray] = {}
        self._buf: dict[str, np.ndarray] = {}
        self._size = 0
        self._next = 0
        self._serial = 0
        self._pending: dict[int, tuple[int, int]] = {}  # env row -> (buffer slot, serial)

    # ------------------------------------------------------------------ parameters
    def _ensure(self, obs: dict[str, np.ndarray]) -> None:
        if self.params is not None:
            return
        _, x = self.features(obs)
        d = x.shape[-1]
        du = d - self._extra_dim(obs)
        m = self.features.num_blocks
        self.params = {
            "choice": np.zeros((m, d)),  # item choice logit, per category
            "pos": np.zeros(self.slate_size),  # position offsets of the choice logit
            "null": np.zeros(du),  # no-click logit on the user context
            "q": np.zeros((m, d)),  # item Q̄, per category
            "q_null": np.zeros(du),  # Q̄ of the null item
        }
        self._opt = _Adam(self.params, self.lr)
        self._sync_target()

    def _learnt(self) -> dict[str, np.ndarray]:
        """The parameters, allocated by `_ensure` on the first observation."""
        assert self.params is not None
        return self.params

    def _extra_dim(self, obs: dict[str, np.ndarray]) -> int:
        f = np.asarray(obs["clicked_features_mean"]).shape[-1]
        return f - int(self.features.num_categories or 0)

    def _sync_target(self) -> None:
        self.target_params = {k: v.copy() for k, v in self._learnt().items()}

    def _split(self, obs: dict[str, np.ndarray]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(user context (n, du), candidate category (n, C), candidate extras (n, C, e))."""
        cat, x = self.features(obs)
        du = x.shape[-1] - self._extra_dim(obs)
        return x[:, 0, :du], cat, x[..., du:]

    @staticmethod
    def _item_scores(
        w: np.ndarray, user: np.ndarray, cat: np.ndarray, extra: np.ndarray
    ) -> np.ndarray:
        """Linear per-category score: (n, m) for items with category cat (n, m), extras (n, m, e)."""
        wc = w[cat]  # (n, m, d)
        du = user.shape[1]
        return np.einsum("nmd,nd->nm", wc[..., :du], user) + np.einsum(
            "nme,nme->nm", wc[..., du:], extra
        )

    def _choice_logits(
        self, p: dict[str, np.ndarray], user: np.ndarray, cat: np.ndarray, extra: np.ndarray
    ) -> tuple[np.ndarray, np.ndarray]:
        """(null logit (n,), item logits (n, m)) without position offsets."""
        return user @ p["null"], self._item_scores(p["choice"], user, cat, extra)

    # ------------------------------------------------------------------ acting
    def _candidate_values(
        self, p: dict[str, np.ndarray], user: np.ndarray, cat: np.ndarray, extra: np.ndarray
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        """(s_⊥ (n,), s (n, C), q_⊥ (n,), q (n, C)) with scores rescaled per row for stability."""
        u0, u = self._choice_logits(p, user, cat, extra)
        top = np.maximum(u0, u.max(axis=1))
        s0, s = np.exp(u0 - top), np.exp(u - top[:, None])
        q0 = user @ p["q_null"]
        q = self._item_scores(p["q"], user, cat, extra)
        return s0, s, q0, q

    def act(self, obs: dict[str, np.ndarray], deterministic: bool) -> np.ndarray:
        """Slates by the selection rule on s * Q̄ (epsilon-greedy while training)."""
        self._ensure(obs)
        user, cat, extra = self._split(obs)
        s0, s, _, q = self._candidate_values(self._learnt(), user, cat, extra)
        n, c = s.shape
        # random tie-breaking before anything is learnt
        q = q + 1e-9 * self.rng.random(q.shape)
        slates = self.select(self.slate_size, s0, s, q)
        if self.training and self.epsilon > 0:
            rand = self.rng.random(int(n)) < self.epsilon
            if rand.any():
                noise = self.rng.random((int(rand.sum()), c))
                slates[rand] = np.argsort(noise, axis=1)[:, : self.slate_size]
        return slates

    # ------------------------------------------------------------------ learning
    def _pack(
        self,
        obs: dict[str, np.ndarray],
        action: np.ndarray,
        info: dict[str, Any],
        next_obs: dict[str, np.ndarray],
        terminated: np.ndarray | None,
        rows: np.ndarray,
    ) -> dict[str, np.ndarray]:
        """The transitions of `rows` as flat arrays (the replay buffer's layout)."""
        n = len(np.asarray(obs["candidate_ids"]))
        act = np.asarray(action, dtype=np.int64).reshape(n, -1)
        user, cat, extra = self._split(obs)
        nuser, ncat, nextra = self._split(next_obs)
        resp = batch_responses(info, n)
        term = (
            np.zeros(n, dtype=bool)
            if terminated is None
            else np.asarray(terminated, dtype=bool).reshape(n)
        )
        return {
            "user": user[rows],
            "cat": np.take_along_axis(cat, act, axis=1)[rows],
            "extra": np.take_along_axis(extra, act[..., None], axis=1)[rows],
            "resp": resp[rows],
            "next_user": nuser[rows],
            "next_cat": ncat[rows],
            "next_extra": nextra[rows],
            "next_action": np.zeros((int(np.sum(rows)), act.shape[1]), dtype=np.int64),
            "ready": term[rows] | (self.target == "q"),
            "terminated": term[rows],
            "serial": np.zeros(int(np.sum(rows)), dtype=np.int64),
        }

    def _targets(self, batch: dict[str, np.ndarray]) -> np.ndarray:
        """TD target of every transition's consumed item(s), from its NEXT state: (B,)."""
        tp, params = self.target_params, self._learnt()
        s0, s, q0, q = self._candidate_values(
            {**params, "q": tp["q"], "q_null": tp["q_null"]},
            batch["next_user"],
            batch["next_cat"],
            batch["next_extra"],
        )
        if self.target == "q":
            nxt = self.select(self.slate_size, s0, s, q)
        else:
            nxt = batch["next_action"]
        s_sl = np.take_along_axis(s, nxt, axis=1) * np.exp(params["pos"][: nxt.shape[1]])
        q_sl = np.take_along_axis(q, nxt, axis=1)
        rewards = slot_rewards(batch["resp"], self.reward_per_code).sum(axis=1)
        return slateq_target(rewards, s0, s_sl, q0, q_sl, batch["terminated"], self.gamma)

    def td_targets(
        self,
        obs: dict[str, np.ndarray],
        action: np.ndarray,
        info: dict[str, Any],
        next_obs: dict[str, np.ndarray],
        terminated: np.ndarray | None = None,
        next_action: np.ndarray | None = None,
    ) -> np.ndarray:
        """TD targets of a batch of transitions, exactly as training computes them: (n,)."""
        from agents.base import as_batch

        obs, next_obs = as_batch(obs), as_batch(next_obs)
        self._ensure(obs)
        n = len(obs["candidate_ids"])
        batch = self._pack(obs, action, info, next_obs, terminated, np.ones(n, dtype=bool))
        if next_action is not None:
            batch["next_action"] = np.asarray(next_action, dtype=np.int64).reshape(n, -1)
        return self._targets(batch)

    def _push(self, batch: dict[str, np.ndarray]) -> np.ndarray:
        """Append to the ring buffer; returns the slots written."""
        m = len(batch["user"])
        if not self._buf:
            self._buf = {
                k: np.zeros((self.buffer_size, *v.shape[1:]), dtype=v.dtype)
                for k, v in batch.items()
            }
        slots = (self._next + np.arange(m)) % self.buffer_size
        batch["serial"] = self._serial + np.arange(m)
        self._serial += m
        for k, v in batch.items():
            self._buf[k][slots] = v
        self._next = int((self._next + m) % self.buffer_size)
        self._size = min(self._size + m, self.buffer_size)
        return slots

    def update(
        self,
        obs: dict[str, np.ndarray],
        action: np.ndarray,
        info: dict[str, Any],
        next_obs: dict[str, np.ndarray] | None = None,
        terminated: np.ndarray | None = None,
    ) -> None:
        """Store the transitions (next_obs is required) and take a few Adam steps."""
        if not self.training:
            return
        if next_obs is None:
            raise ValueError("SlateQAgent.update needs next_obs (TD targets use the next state)")
        from agents.base import as_batch, is_batched

        if not is_batched(obs):
            obs, next_obs = as_batch(obs), as_batch(next_obs)
            action = np.asarray(action)[None]
            info = {k: np.asarray(v)[None] for k, v in info.items() if not k.startswith("_")}
            terminated = None if terminated is None else np.asarray(terminated).reshape(1)
        self._ensure(obs)
        n = len(obs["candidate_ids"])
        rows = transition_rows(info, n)
        act = np.asarray(action, dtype=np.int64).reshape(n, -1)
        if self.target == "sarsa":
            self._complete_pending(obs, act, rows)
        if not rows.any():
            return
        batch = self._pack(obs, act, info, next_obs, terminated, rows)
        slots = self._push(batch)
        if self.target == "sarsa":
            for r, slot, done in zip(np.nonzero(rows)[0], slots, batch["terminated"]):
                if not done:
                    self._pending[int(r)] = (int(slot), int(self._buf["serial"][slot]))
        self._sync_target()
        for _ in range(self.gradient_steps):
            self._train_step()

    def _complete_pending(
        self, obs: dict[str, np.ndarray], act: np.ndarray, rows: np.ndarray
    ) -> None:
        """SARSA: the slate shown now is A' of the row's previous transition."""
        fresh = np.asarray(obs["session_features"])[:, 0] == 0  # a new session started
        for r in list(self._pending):
            slot, serial = self._pending.pop(r)
            if r >= len(rows) or not rows[r] or fresh[r] or self._buf["serial"][slot] != serial:
                continue
            self._buf["next_action"][slot] = act[r]
            self._buf["ready"][slot] = True

    def _train_step(self) -> None:
        ready = np.nonzero(self._buf["ready"][: self._size])[0]
        if len(ready) == 0:
            return
        idx = ready[self.rng.integers(0, len(ready), min(self.batch_size, len(ready)))]
        b = {k: v[idx] for k, v in self._buf.items()}
        p = self._learnt()
        grads = {k: np.zeros_like(v) for k, v in p.items()}
        bsz, k = b["resp"].shape
        m = p["choice"].shape[0]
        user, cat, extra = b["user"], b["cat"], b["extra"]
        du = user.shape[1]
        xs = np.concatenate([np.broadcast_to(user[:, None], (*cat.shape, du)), extra], axis=-1)
        onehot = np.eye(m)[cat.reshape(-1)]  # (B*k, M)
        clicked = engaged(b["resp"])  # (B, k)

        # conditional-logit choice model: cross-entropy against the clicked slot(s) or ⊥
        u0, u = self._choice_logits(p, user, cat, extra)
        logits = np.concatenate([u0[:, None], u + p["pos"][None, :k]], axis=1)
        logits -= logits.max(axis=1, keepdims=True)
        prob = np.exp(logits)
        prob /= prob.sum(axis=1, keepdims=True)
        target = np.concatenate([~clicked.any(axis=1, keepdims=True), clicked], axis=1)
        target = target / target.sum(axis=1, keepdims=True)
        g = (prob - target) / bsz  # (B, k + 1)
        grads["null"] = user.T @ g[:, 0]
        grads["pos"][:k] = g[:, 1:].sum(axis=0)
        grads["pos"][0] = 0.0  # slot 0 is the reference
        grads["choice"] = onehot.T @ (g[:, 1:].reshape(-1, 1) * xs.reshape(-1, xs.shape[-1]))

        # item-level Q̄ of the consumed item(s), toward targets from the next state
        y = self._targets(b)
        q_items = self._item_scores(p["q"], user, cat, extra)
        q_null = user @ p["q_null"]
        err_items = np.where(clicked, q_items - y[:, None], 0.0) / bsz
        err_null = np.where(clicked.any(axis=1), 0.0, q_null - y) / bsz
        grads["q"] = onehot.T @ (err_items.reshape(-1, 1) * xs.reshape(-1, xs.shape[-1]))
        grads["q_null"] = user.T @ err_null
        self._opt.step(p, grads)
