"""RandomAgent: a uniformly random slate of distinct candidates."""

from __future__ import annotations

import numpy as np

from agents.base import SlateAgent, candidate_matrix


class RandomAgent(SlateAgent):
    """Shows slate_size distinct candidates chosen uniformly at random."""

    name = "random"

    def act(self, obs: dict[str, np.ndarray], deterministic: bool) -> np.ndarray:
        """Random distinct candidate indices."""
        n, c = candidate_matrix(obs).shape[:2]
        return np.argsort(self.rng.random((n, c)), axis=1)[:, : self.slate_size]
