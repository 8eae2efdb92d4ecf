"""Observation and action spaces (flat Dicts of 1-D spaces, as stable-baselines3 expects)."""

from __future__ import annotations

import numpy as np
from gymnasium import spaces

from recsim_env.config import EnvConfig

FEATURE_BOUND = 5.0


def make_action_space(cfg: EnvConfig) -> spaces.MultiDiscrete:
    """A slate: slate_size candidate indices, each in [0, num_candidates)."""
    return spaces.MultiDiscrete(np.full(cfg.slate_size, cfg.num_candidates, dtype=np.int64))


def make_observation_space(
    cfg: EnvConfig,
    num_items: int,
    num_profile_tokens: int,
    num_item_features: int,
    num_behaviours: int = 3,
) -> spaces.Dict:
    """The observation space.

    Keys:
        profile: multi-hot of the user's profile tokens (`field=value`).
        candidate_ids: catalog indices of the candidates.
        candidate_features: their item features (category one-hot, log price), flattened.
        history_items / history_responses: the last history_length slates and responses
            (behaviour codes 0..num_behaviours-1), oldest first, -1 where the session is
            younger.
        clicked_features_mean: mean features of items clicked this session (0 if none).
        session_features: [steps / max_episode_steps, slates since last click / 10], in [0, 1].
    """
    hk = cfg.history_length * cfg.slate_size
    f = num_item_features
    return spaces.Dict(
        {
            "profile": spaces.MultiBinary(max(num_profile_tokens, 1)),
            "candidate_ids": spaces.Box(0, num_items - 1, (cfg.num_candidates,), np.int64),
            "candidate_features": spaces.Box(
                -FEATURE_BOUND, FEATURE_BOUND, (cfg.num_candidates * f,), np.float32
            ),
            "history_items": spaces.Box(-1, num_items - 1, (hk,), np.int64),
            "history_responses": spaces.Box(-1, num_behaviours - 1, (hk,), np.int64),
            "clicked_features_mean": spaces.Box(-FEATURE_BOUND, FEATURE_BOUND, (f,), np.float32),
            "session_features": spaces.Box(0.0, 1.0, (2,), np.float32),
        }
    )
