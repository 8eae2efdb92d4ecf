"""SlateSessionBatch: the env logic for a batch of user sessions, shared by every env class.

The single env is a batch of one, the native vector env a batch of N; every simulator (ground
truth, GPT-2, or your own) plugs in behind the `simulators.base.UserSimulator` protocol. Random numbers come
from per-row counter-based streams (`simulators.rng`), so row i's trajectory depends only on its
own seed and actions.
"""

from __future__ import annotations

from dataclasses import replace

import numpy as np
from gymnasium import spaces

from recsim_env.config import DEFAULT_MAX_EPISODE_STEPS, SESSION_STEPS_SCALE, EnvConfig
from recsim_env.spaces import FEATURE_BOUND, make_observation_space
from simulators.base import StepOutcome, UserSimulator
from simulators.behaviours import engaged
from simulators.rng import distinct_choices, uniforms

POPULARITY_SEED = 10**9
"""Seed of the first user of the random-policy run behind `EnvConfig.item_popularity` (the
benchmarks evaluate on users seeded from 10**6)."""
POPULARITY_ROWS = 64
"""Sessions run side by side in that run (bounds the simulator rows it needs)."""


def seed_to_key(seed: int) -> np.uint64:
    """A row's stream key from an integer seed (any Python int)."""
    return np.uint64(np.random.SeedSequence(int(seed) % (2**128)).generate_state(1, np.uint64)[0])


def top_k_slates(scores: np.ndarray, k: int) -> np.ndarray:
    """The k best candidates per row in order of decreasing score, ties to the lower index.

    (n, C) float scores -> (n, k) int64 candidate indices, distinct in every row.
    """
    return np.argsort(-np.asarray(scores, dtype=np.float64), axis=1, kind="stable")[:, :k]


def numeric_action(action: object, allowed: str) -> np.ndarray:
    """`action` as an integer or float (not bool) array, else ValueError ending in `allowed`."""
    try:
        arr = np.asarray(action)
    except Exception as exc:
        raise ValueError(f"action could not be read as an array ({exc}); {allowed}") from None
    if arr.dtype == bool or not (
        np.issubdtype(arr.dtype, np.integer) or np.issubdtype(arr.dtype, np.floating)
    ):
        raise ValueError(f"action has dtype {arr.dtype}; {allowed}")
    return arr


def validate_scores(
    action: object,
    batch: int | None,
    cfg: EnvConfig,
    candidate_features: np.ndarray | None = None,
) -> np.ndarray:
    """Check a `scores` or `weights` action; the slate it shows as int64 (batch, slate_size).

    `scores`: one score per candidate. `weights`: one weight per item feature, a candidate's
    score being its features . weights (`candidate_features` (batch or 1, C, F) needed).
    Values outside the action space's bounds are accepted (only the order of the scores
    counts; SB3 clips them anyway).

    Raises:
        ValueError: wrong shape or dtype, or a non-finite value.
    """
    weights = cfg.action_mode == "weights"
    if weights:
        if candidate_features is None:
            raise ValueError("the weights action mode needs the candidates' features")
        width, what = candidate_features.shape[-1], "one weight per item feature"
    else:
        width, what = cfg.num_candidates, "one score per candidate"
    expected = (width,) if batch is None else (batch, width)
    allowed = f"allowed: finite floats with shape {expected} ({what})"
    arr = numeric_action(action, allowed)
    if arr.shape != expected:
        hint = (
            " (a slate of candidate indices needs action_mode='slate')"
            if arr.shape[-1:] == (cfg.slate_size,)
            else ""
        )
        raise ValueError(f"action has shape {arr.shape}; {allowed}{hint}")
    if not np.all(np.isfinite(arr)):
        raise ValueError(f"action has non-finite values; {allowed}")
    arr = arr.reshape(-1, width).astype(np.float64)
    if weights:
        assert candidate_features is not None
        arr = np.einsum("ncf,nf->nc", np.asarray(candidate_features, np.float64), arr)
    return top_k_slates(arr, cfg.slate_size)


def validate_actions(
    action: object,
    batch: int | None,
    cfg: EnvConfig,
    candidate_features: np.ndarray | None = None,
) -> np.ndarray:
    """Check an action and return the slate it shows as int64 (batch, slate_size).

    Args:
        action: `slate` mode: one slate (slate_size,) for the single env (batch None), or
            (batch, slate_size); `scores` mode: (num_candidates,) or (batch, num_candidates)
            scores; `weights` mode: (F,) or (batch, F) weights (see `validate_scores`).
        batch: number of rows expected, or None for a single env.
        cfg: env config (action_mode, slate_size, num_candidates, duplicate_policy).
        candidate_features: (batch or 1, C, F) features of the rows' candidates (the
            `weights` mode scores them).

    Returns:
        The candidate indices shown: repeats of a `slate` action replaced by the lowest free
        candidates (duplicate_policy 'dedupe'), or the top slate_size by score.

    Raises:
        ValueError: with what was wrong and what is allowed.
    """
    if cfg.action_mode in ("scores", "weights"):
        return validate_scores(action, batch, cfg, candidate_features)
    expected = (cfg.slate_size,) if batch is None else (batch, cfg.slate_size)
    allowed = (
        f"allowed: integer candidate indices in [0, {cfg.num_candidates}) with shape {expected}"
    )
    arr = numeric_action(action, allowed)
    if arr.shape != expected:
        raise ValueError(f"action has shape {arr.shape}; {allowed}")
    if np.issubdtype(arr.dtype, np.floating):
        if not np.all(np.isfinite(arr)) or np.any(arr != np.round(arr)):
            raise ValueError(
                f"action has non-integer or non-finite values {arr.tolist()}; {allowed}"
            )
    # the range is checked in the given dtype, so 1e30 or 2**64 - 1 are reported as given
    out_of_range = (arr < 0) | (arr >= cfg.num_candidates)
    if out_of_range.any():
        raise ValueError(
            f"action has out-of-range candidate indices {arr[out_of_range].tolist()}; {allowed}"
        )
    arr = arr.astype(np.int64).reshape(-1, cfg.slate_size)
    used = np.zeros((len(arr), cfg.num_candidates), dtype=bool)
    is_dup = np.zeros(arr.shape, dtype=bool)
    rows = np.arange(len(arr))
    for j in range(cfg.slate_size):
        is_dup[:, j] = used[rows, arr[:, j]]
        used[rows, arr[:, j]] = True
    if is_dup.any():
        if cfg.duplicate_policy == "error":
            r = int(np.nonzero(is_dup.any(axis=1))[0][0])
            raise ValueError(
                f"action repeats a candidate in a slate ({arr[r].tolist()}); "
                f"{allowed}, all distinct (duplicate_policy='error')"
            )
        # each repeat takes the lowest-index candidate not yet in its slate, in slot order
        free = np.argsort(used, axis=1, kind="stable")
        rank = np.cumsum(is_dup, axis=1) - 1
        arr = np.where(is_dup, np.take_along_axis(free, np.maximum(rank, 0), axis=1), arr)
    return arr


def candidate_pool(
    candidate_items: np.ndarray | None, num_items: int, num_candidates: int
) -> np.ndarray | None:
    """The distinct catalog indices candidates are drawn from (None: the whole catalog).

    Raises:
        ValueError: fewer items in the pool than `num_candidates`.
    """
    pool = None if candidate_items is None else np.unique(np.asarray(candidate_items, np.int64))
    size = num_items if pool is None else len(pool)
    if num_candidates > size:
        raise ValueError(f"num_candidates ({num_candidates}) exceeds the catalog ({size} items)")
    return pool


class SlateSessionBatch:
    """N independent user sessions against one batched simulator."""

    def __init__(
        self,
        simulator: UserSimulator,
        cfg: EnvConfig,
        num_rows: int,
        candidate_items: np.ndarray | None = None,
    ) -> None:
        """Allocate per-row buffers for num_rows sessions.

        Args:
            simulator: the batched simulator.
            cfg: the env settings.
            num_rows: sessions run side by side.
            candidate_items: catalog indices candidates are drawn from (default: the whole
                catalog).

        Raises:
            ValueError: the config does not fit the simulator (catalog size, reward names).
        """
        self.sim = simulator
        self.cfg = cfg
        self.n = num_rows
        self.behaviours = simulator.behaviours
        self.reward_per_code = cfg.reward_per_code(simulator.behaviours)
        """Reward of a slot answered with each behaviour code (R,)."""
        self.num_items = int(simulator.num_items)
        self.candidate_items = candidate_pool(candidate_items, self.num_items, cfg.num_candidates)
        """Catalog indices candidates are drawn from (None: all)."""
        self.item_features = env_item_features(simulator, cfg, self.candidate_items)
        self.num_features = self.item_features.shape[1]
        self.num_profile_tokens = len(simulator.profile_encoder.vocab)
        hk = cfg.history_length * cfg.slate_size
        self.keys = np.zeros(num_rows, dtype=np.uint64)
        self.counters = np.zeros(num_rows, dtype=np.uint64)
        self.profiles = np.full((num_rows, simulator.profile_encoder.slots), -1, dtype=np.int64)
        self.candidates = np.zeros((num_rows, cfg.num_candidates), dtype=np.int64)
        self.history_items = np.full((num_rows, hk), -1, dtype=np.int64)
        self.history_responses = np.full((num_rows, hk), -1, dtype=np.int64)
        self.clicked_sum = np.zeros((num_rows, self.num_features), dtype=np.float32)
        self.clicked_count = np.zeros(num_rows, dtype=np.int64)
        self.steps = np.zeros(num_rows, dtype=np.int64)
        self.since_click = np.zeros(num_rows, dtype=np.int64)

    def reset_rows(self, rows: np.ndarray, seeds: list[int]) -> None:
        """Start new sessions in rows, each with its own seed (profile, candidates, responses)."""
        rows = np.asarray(rows, dtype=np.int64)
        self.keys[rows] = [seed_to_key(s) for s in seeds]
        self.counters[rows] = 0
        pick = uniforms(self.keys[rows], self.counters[rows], 1)[:, 0]
        self.counters[rows] += np.uint64(1)
        population = self.sim.population
        self.profiles[rows] = population[(pick * len(population)).astype(np.int64)]
        self.sim.start_sessions(rows, self.profiles[rows])
        self.history_items[rows] = -1
        self.history_responses[rows] = -1
        self.clicked_sum[rows] = 0.0
        self.clicked_count[rows] = 0
        self.steps[rows] = 0
        self.since_click[rows] = 0
        self._draw_candidates(rows)

    def _profile_multi_hot(self, rows: np.ndarray) -> np.ndarray:
        """(len(rows), max(vocab, 1)) int8: a log without profile fields still has one column."""
        hot = self.sim.profile_encoder.multi_hot(self.profiles[rows])
        if hot.shape[1] == 0:
            return np.zeros((len(rows), 1), dtype=np.int8)
        return hot

    def observation_space(self) -> spaces.Dict:
        """The observation space of one user (`recsim_env.spaces.make_observation_space`)."""
        return make_observation_space(
            self.cfg,
            self.num_items,
            self.num_profile_tokens,
            self.num_features,
            self.behaviours.size,
        )

    def candidate_features(self, rows: np.ndarray) -> np.ndarray:
        """(len(rows), C, F) float32 features of the rows' current candidates."""
        return self.item_features[self.candidates[rows]]

    def _draw_candidates(self, rows: np.ndarray) -> None:
        keys, ctr = self.keys[rows], self.counters[rows]
        pool = self.candidate_items
        size = self.num_items if pool is None else len(pool)
        drawn = distinct_choices(keys, ctr, size, self.cfg.num_candidates)
        self.candidates[rows] = drawn if pool is None else pool[drawn]
        self.counters[rows] = ctr

    def step(
        self, rows: np.ndarray, actions: np.ndarray
    ) -> tuple[StepOutcome, np.ndarray, np.ndarray]:
        """Show the slates picked by actions (len(rows), k) and advance those rows.

        Returns:
            (outcome, rewards (len(rows),) float64, slates (len(rows), k) item ids).
        """
        cfg = self.cfg
        k = cfg.slate_size
        slates = np.take_along_axis(self.candidates[rows], actions, axis=1)
        u = uniforms(self.keys[rows], self.counters[rows], k + 1)
        self.counters[rows] += np.uint64(k + 1)
        out = self.sim.step(rows, slates, u)
        clicked = engaged(out.responses)
        rewards = self.reward_per_code[out.responses].sum(axis=1)
        self.history_items[rows] = np.concatenate([self.history_items[rows][:, k:], slates], axis=1)
        self.history_responses[rows] = np.concatenate(
            [self.history_responses[rows][:, k:], out.responses], axis=1
        )
        feats = (self.item_features[slates] * clicked[..., None]).sum(axis=1)
        self.clicked_sum[rows] += feats
        self.clicked_count[rows] += clicked.sum(axis=1)
        self.steps[rows] += 1
        any_click = clicked.any(axis=1)
        self.since_click[rows] = np.where(any_click, 0, self.since_click[rows] + 1)
        self._draw_candidates(rows)
        return out, rewards.astype(np.float64), slates

    def observations(self, rows: np.ndarray | None = None) -> dict[str, np.ndarray]:
        """Batched observation arrays for rows (all rows when None)."""
        rows = np.arange(self.n) if rows is None else rows
        cand = self.candidates[rows]
        count = np.maximum(self.clicked_count[rows], 1)[:, None].astype(np.float32)
        cfg = self.cfg
        obs = {
            "profile": self._profile_multi_hot(rows),
            "clicked_features_mean": np.clip(self.clicked_sum[rows] / count, -5, 5),
            "session_features": np.stack(
                [
                    np.minimum(self.steps[rows] / SESSION_STEPS_SCALE, 1.0),
                    np.minimum(self.since_click[rows] / 10.0, 1.0),
                ],
                axis=1,
            ).astype(np.float32),
        }
        if cfg.observes_candidates:
            obs["candidate_features"] = self.candidate_features(rows).reshape(len(rows), -1)
        if cfg.observes_history:
            obs["history_responses"] = self.history_responses[rows].copy()
        if cfg.include_item_ids:
            obs["candidate_ids"] = cand.copy()
            obs["history_items"] = self.history_items[rows].copy()
        return obs


def logged_click_counts(
    simulator: UserSimulator,
    cfg: EnvConfig,
    users: int,
    seed: int,
    candidate_items: np.ndarray | None = None,
) -> np.ndarray:
    """Clicks (a buy is a click) per catalog item of a uniformly random slate policy.

    `users` fresh sessions (`reset_rows` seeds i-th with seed + i), each run until the user
    leaves or after DEFAULT_MAX_EPISODE_STEPS slates (not `cfg.max_episode_steps`: a
    `gym.make` build applies that outside the env, and the counts must not depend on the
    build), with cfg's slate size and candidates, POPULARITY_ROWS sessions side by side
    whatever the simulator's capacity (the random slates are drawn in that order, so the counts
    depend on nothing else). The run restarts simulator rows 0..POPULARITY_ROWS-1 and grows
    its capacity to that: on a simulator object shared with a live env, it ends those sessions.

    Returns:
        (num_items,) float64 counts.
    """
    plain = replace(cfg, action_mode="slate", item_popularity=False)
    n = min(int(users), POPULARITY_ROWS)
    simulator.ensure_capacity(n)
    batch = SlateSessionBatch(simulator, plain, n, candidate_items)
    counts = np.zeros(batch.num_items)
    rng = np.random.default_rng(seed)
    for start in range(0, int(users), n):
        live = np.arange(min(n, int(users) - start))
        batch.reset_rows(live, [seed + start + int(r) for r in live])
        for _ in range(DEFAULT_MAX_EPISODE_STEPS):
            if len(live) == 0:
                break
            order = np.argsort(rng.random((len(live), cfg.num_candidates)), axis=1)
            out, _, slates = batch.step(live, order[:, : cfg.slate_size])
            np.add.at(counts, slates[engaged(out.responses)], 1.0)
            live = live[~np.asarray(out.leave, dtype=bool)]
    return counts


def popularity_feature(counts: np.ndarray) -> np.ndarray:
    """(num_items,) float32 standardised log(1 + counts), within the feature bounds."""
    logs = np.log1p(np.asarray(counts, dtype=np.float64))
    z = (logs - logs.mean()) / max(float(logs.std()), 1e-9)
    return np.clip(z, -FEATURE_BOUND, FEATURE_BOUND).astype(np.float32)


def env_item_features(
    simulator: UserSimulator, cfg: EnvConfig, pool: np.ndarray | None = None
) -> np.ndarray:
    """(num_items, F) float32 item features an env observes and the `weights` action weighs.

    The simulator's own features (category one-hot, log price), clipped to the feature bounds,
    then the item's popularity when `cfg.item_popularity` (`logged_click_counts` of
    `cfg.popularity_users` users from POPULARITY_SEED, standardised over the candidate pool
    (`candidate_pool`'s; None: the whole catalog); 0 for items outside it). The values follow the simulator's numerics: a bfloat16 GPT-2
    user counts other clicks than a float32 one.
    """
    feats = np.clip(
        np.asarray(simulator.item_features, dtype=np.float32), -FEATURE_BOUND, FEATURE_BOUND
    )
    if not cfg.item_popularity:
        return feats
    counts = logged_click_counts(simulator, cfg, cfg.popularity_users, POPULARITY_SEED, pool)
    # standardised over the items that can be candidates (the others are never observed)
    popularity = np.zeros(len(counts), dtype=np.float32)
    if pool is None:
        popularity = popularity_feature(counts)
    else:
        popularity[pool] = popularity_feature(counts[pool])
    return np.concatenate([feats, popularity[:, None]], axis=1)
