"""Linear contextual bandits learning online: LinUCB and linear Thompson sampling.

Features of a (user, candidate) pair are the outer product of the candidate's category one-hot
with a user/item context
    z = [1, profile multi-hot, clicked_features_mean, session_features, candidate numeric features]
(the numeric features are the standardised log price). Because the category part is one-hot, a
ridge regression on the outer product splits exactly into one independent ridge model per
category on z: that is what is stored (per category a (d, d) precision and a (d,) vector), so
each step costs a few small matrix operations whatever the batch size.

The reward of a slot is the env's reward of the behaviour given to the item shown there;
the top-scored candidate takes the top slot. Both agents explore by construction (an upper
confidence bonus, a posterior sample), so `deterministic` is ignored.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from agents.base import (
    SlateAgent,
    as_batch,
    batch_responses,
    candidate_matrix,
    category_block_size,
    default_reward_per_code,
    slot_rewards,
    top_k,
    transition_rows,
)


class PairFeatures:
    """Builds (category, context) per candidate from a batched observation.

    Args:
        num_categories: leading one-hot columns of the candidate features; None infers it from
            the first observation (`agents.base.category_block_size`); 0 means no categories
            (one shared model).
    """

    def __init__(self, num_categories: int | None = None) -> None:
        """Remember the category block size (or infer it later)."""
        self.num_categories = num_categories

    def __call__(self, obs: dict[str, np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
        """(category (n, C) int64, context (n, C, d) float64) for every candidate."""
        feats = candidate_matrix(obs)  # (n, C, F)
        n, c, f = feats.shape
        if self.num_categories is None:
            self.num_categories = category_block_size(feats.reshape(n * c, f))
        m = self.num_categories
        cat = np.argmax(feats[..., :m], axis=-1) if m else np.zeros((n, c), dtype=np.int64)
        user = np.concatenate(
            [
                np.ones((n, 1)),
                np.asarray(obs["profile"], dtype=np.float64).reshape(n, -1),
                np.asarray(obs["clicked_features_mean"], dtype=np.float64).reshape(n, -1),
                np.asarray(obs["session_features"], dtype=np.float64).reshape(n, -1),
            ],
            axis=1,
        )
        x = np.concatenate(
            [np.broadcast_to(user[:, None], (n, c, user.shape[1])), feats[..., m:]], -1
        )
        return cat, x

    @property
    def num_blocks(self) -> int:
        """Number of per-category models (at least 1)."""
        return max(int(self.num_categories or 0), 1)


class LinearBanditAgent(SlateAgent):
    """Shared state of the linear bandits: per-category ridge regression on slot rewards.

    Args:
        slate_size: items per slate.
        ridge: prior precision (L2 penalty) of every model.
        reward_per_code: (R,) the env's reward of each behaviour code (the slot reward;
            `EnvConfig.reward_per_code`); None: the default (click 1, buy 3).
        num_categories: see `PairFeatures`.
        seed: seed of the agent's own RNG.
    """

    def __init__(
        self,
        slate_size: int,
        ridge: float = 1.0,
        reward_per_code: np.ndarray | None = None,
        num_categories: int | None = None,
        seed: int | None = None,
    ) -> None:
        """Set hyperparameters; the models are allocated on the first observation."""
        super().__init__(slate_size, seed)
        self.ridge = ridge
        self.reward_per_code = default_reward_per_code(reward_per_code)
        self.features = PairFeatures(num_categories)
        self.A: np.ndarray | None = None  # (M, d, d) precision per category
        self.b: np.ndarray | None = None  # (M, d)
        self.A_inv: np.ndarray | None = None
        self.theta: np.ndarray | None = None  # (M, d) posterior mean

    def _ensure(self, d: int) -> None:
        if self.A is None:
            m = self.features.num_blocks
            self.A = np.tile(self.ridge * np.eye(d), (m, 1, 1))
            self.b = np.zeros((m, d))
            self.A_inv = np.tile(np.eye(d) / self.ridge, (m, 1, 1))
            self.theta = np.zeros((m, d))
            self._refresh(np.arange(m))

    def _models(self) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        """(A, b, A_inv, theta), allocated by `_ensure` on the first observation."""
        assert self.A is not None and self.b is not None
        assert self.A_inv is not None and self.theta is not None
        return self.A, self.b, self.A_inv, self.theta

    def _refresh(self, cats: np.ndarray) -> None:
        """Recompute inverse and mean of the touched categories."""
        a, b, a_inv, theta = self._models()
        for c in cats:
            a_inv[c] = np.linalg.inv(a[c])
            theta[c] = a_inv[c] @ b[c]

    def _score(self, cat: np.ndarray, x: np.ndarray) -> np.ndarray:
        raise NotImplementedError

    def act(self, obs: dict[str, np.ndarray], deterministic: bool) -> np.ndarray:
        """Top slate_size candidates by the bandit score, best first."""
        cat, x = self.features(obs)
        self._ensure(x.shape[-1])
        return top_k(self._score(cat, x), self.slate_size)

    def update(
        self,
        obs: dict[str, np.ndarray],
        action: np.ndarray,
        info: dict[str, Any],
        next_obs: dict[str, np.ndarray] | None = None,
        terminated: np.ndarray | None = None,
    ) -> None:
        """Add every shown item's (context, slot reward) to its category's regression."""
        cat, x = self.features(as_batch(obs))
        self._ensure(x.shape[-1])
        n = cat.shape[0]
        rows = transition_rows(info, n)
        if not rows.any():
            return
        act = np.asarray(action, dtype=np.int64).reshape(n, -1)[rows]
        r = slot_rewards(batch_responses(info, n)[rows], self.reward_per_code)
        xs = np.take_along_axis(x[rows], act[..., None], axis=1).reshape(-1, x.shape[-1])
        cs = np.take_along_axis(cat[rows], act, axis=1).reshape(-1)
        r = r.reshape(-1)
        touched = np.unique(cs)
        a, b, _, _ = self._models()
        for c in touched:
            sel = cs == c
            a[c] += xs[sel].T @ xs[sel]
            b[c] += xs[sel].T @ r[sel]
        self._refresh(touched)


class LinUCBAgent(LinearBanditAgent):
    """LinUCB (Li et al. 2010): score = x·θ_c + alpha * sqrt(x^T A_c^-1 x).

    Example:
        >>> import gymnasium as gym, recsim_env
        >>> env = gym.make("ParametricUserSim-v0")
        >>> agent = LinUCBAgent(slate_size=5, seed=0)
        >>> obs, _ = env.reset(seed=0)
        >>> action, _ = agent.predict(obs)
        >>> obs2, r, term, trunc, info = env.step(action)
        >>> agent.update(obs, action, info)
    """

    name = "linucb"

    def __init__(self, slate_size: int, alpha: float = 0.5, **kwargs: Any) -> None:
        """alpha: width of the confidence bonus; other arguments as LinearBanditAgent."""
        super().__init__(slate_size, **kwargs)
        self.alpha = alpha

    def _score(self, cat: np.ndarray, x: np.ndarray) -> np.ndarray:
        _, _, a_inv, theta = self._models()
        mean = np.einsum("ncd,ncd->nc", x, theta[cat])
        width = np.zeros_like(mean)
        for c in np.unique(cat):
            sel = cat == c
            xc = x[sel]
            width[sel] = np.einsum("md,de,me->m", xc, a_inv[c], xc)
        return mean + self.alpha * np.sqrt(np.maximum(width, 0.0))


class ThompsonAgent(LinearBanditAgent):
    """Linear Thompson sampling: θ̃_c ~ N(θ_c, v² A_c^-1) per user row, score = x·θ̃_c."""

    name = "thompson"

    def __init__(self, slate_size: int, v: float = 0.5, **kwargs: Any) -> None:
        """v: posterior scale; other arguments as LinearBanditAgent."""
        super().__init__(slate_size, **kwargs)
        self.v = v
        self._chol: np.ndarray | None = None

    def _refresh(self, cats: np.ndarray) -> None:
        super()._refresh(cats)
        _, _, a_inv, _ = self._models()
        if self._chol is None:
            self._chol = np.zeros_like(a_inv)
        for c in cats:
            # Cholesky of the inverse precision, symmetrised against round-off
            self._chol[c] = np.linalg.cholesky((a_inv[c] + a_inv[c].T) / 2)

    def _score(self, cat: np.ndarray, x: np.ndarray) -> np.ndarray:
        n, _, d = x.shape
        _, _, _, mean = self._models()
        assert self._chol is not None  # set by _refresh, which _ensure runs
        m = mean.shape[0]
        z = self.rng.standard_normal((n, m, d))
        theta = mean[None] + self.v * np.einsum("mde,nme->nmd", self._chol, z)
        sampled = theta[np.arange(n)[:, None], cat]  # (n, C, d)
        return np.einsum("ncd,ncd->nc", x, sampled)
