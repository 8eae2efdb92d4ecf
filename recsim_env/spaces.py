"""Observation and action spaces (flat Dicts of 1-D spaces, as stable-baselines3 expects)."""

from __future__ import annotations

import numpy as np
from gymnasium import spaces

from recsim_env.config import EnvConfig

FEATURE_BOUND = 5.0
SCORE_BOUND = 5.0
"""Scores and weights of the score action modes lie in [-SCORE_BOUND, SCORE_BOUND]. Only their
order counts; the bound is wide so that PPO's Gaussian (standard deviation 1 at the start)
is rarely clipped (clipped values tie, and ties go to the lower candidate index: with a
bound of 1, SB3's default PPO reached 1.6x random's return instead of 1.9x at 100k steps)."""


def make_action_space(cfg: EnvConfig, num_item_features: int) -> spaces.MultiDiscrete | spaces.Box:
    """The action of one user.

    `slate` mode: slate_size candidate indices, each in [0, num_candidates). `scores` mode: one
    float32 score per candidate; `weights` mode: one float32 weight per item feature (a
    candidate's score is its features . weights). Scores and weights lie in
    [-SCORE_BOUND, SCORE_BOUND]; the env shows the slate_size best candidates.
    """
    if cfg.action_mode == "scores":
        return spaces.Box(-SCORE_BOUND, SCORE_BOUND, (cfg.num_candidates,), np.float32)
    if cfg.action_mode == "weights":
        return spaces.Box(-SCORE_BOUND, SCORE_BOUND, (num_item_features,), np.float32)
    return spaces.MultiDiscrete(np.full(cfg.slate_size, cfg.num_candidates, dtype=np.int64))


def make_observation_space(
    cfg: EnvConfig,
    num_items: int,
    num_profile_tokens: int,
    num_item_features: int,
    num_behaviours: int = 3,
) -> spaces.Dict:
    """The observation space (which keys: `EnvConfig.observation`, `include_item_ids`).

    Keys:
        profile: multi-hot of the user's profile tokens (`field=value`).
        clicked_features_mean: mean features of items clicked this session (0 if none).
        session_features: [min(steps / 50, 1), min(slates since last click / 10, 1)] (fixed
            scales: the step limit does not change an observation).
        candidate_features (observation 'full', or an action that picks candidates): the
            candidates' item features (category one-hot, standardised log price, and
            popularity with `item_popularity`), flattened (num_candidates * F,).
        history_responses (observation 'full'): the responses to the last history_length
            slates (behaviour codes 0..num_behaviours-1), oldest first, -1 where the session is
            younger.
        candidate_ids / history_items (`include_item_ids`): catalog indices of the candidates,
            and of the items of the last history_length slates (-1 padded). Indices to embed,
            not magnitudes.
    """
    hk = cfg.history_length * cfg.slate_size
    f = num_item_features
    keys: dict[str, spaces.Space] = {"profile": spaces.MultiBinary(max(num_profile_tokens, 1))}
    if cfg.include_item_ids:
        keys["candidate_ids"] = spaces.Box(0, num_items - 1, (cfg.num_candidates,), np.int64)
        keys["history_items"] = spaces.Box(-1, num_items - 1, (hk,), np.int64)
    if cfg.observes_candidates:
        keys["candidate_features"] = spaces.Box(
            -FEATURE_BOUND, FEATURE_BOUND, (cfg.num_candidates * f,), np.float32
        )
    if cfg.observes_history:
        keys["history_responses"] = spaces.Box(-1, num_behaviours - 1, (hk,), np.int64)
    keys["clicked_features_mean"] = spaces.Box(-FEATURE_BOUND, FEATURE_BOUND, (f,), np.float32)
    keys["session_features"] = spaces.Box(0.0, 1.0, (2,), np.float32)
    return spaces.Dict(keys)
