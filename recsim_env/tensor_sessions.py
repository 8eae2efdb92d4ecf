"""TensorSessionBatch: `SlateSessionBatch` on a torch device, for the TorchRL env.

The same session logic as `recsim_env.sessions.SlateSessionBatch` (candidates, the slate shown,
history, clicked-feature means, session features, reward), kept in tensors on the simulator's
device, with the same counter-based random streams (`simulators.rng.torch_uniforms`): a user
seeded like a NumPy env's user draws the same profile, candidates and uniforms, and a
`TensorUserSimulator` answers them the same way (`tests/test_torchrl_env.py` pins the first
episodes to the NumPy vector env). Nothing goes through the host in a step except what the
simulator itself needs (a GPT-2 step synchronises on how many rows decode again; candidate
draws synchronise once per redraw round, usually one or two).

Observations keep their structure (candidates x features, history steps x slots) instead of
the flat 1-D keys stable-baselines3 needs.
"""

from __future__ import annotations

import numpy as np
import torch

from recsim_env.config import SESSION_STEPS_SCALE, EnvConfig
from recsim_env.sessions import candidate_pool, env_item_features, seed_to_key
from recsim_env.spaces import FEATURE_BOUND
from simulators.base import TensorStepOutcome, TensorUserSimulator
from simulators.behaviours import CLICK
from simulators.rng import keys_to_torch, torch_distinct_choices, torch_splitmix64, torch_uniforms

_NEXT_EPISODE = 0x5851F42D4C957F2D
"""Mixed into a row's key to derive its next episode's key on the device (an odd constant)."""


def first_keys(seeds: list[int]) -> np.ndarray:
    """The stream keys of users seeded like the NumPy envs' (uint64 (B,)).

    A NumPy env reset with seed s draws its user's key from `gymnasium.utils.seeding.np_random(s)`;
    the same key here gives the same user.
    """
    from gymnasium.utils import seeding

    return np.array(
        [seed_to_key(int(seeding.np_random(int(s))[0].integers(2**63))) for s in seeds],
        dtype=np.uint64,
    )


def next_episode_keys(keys: torch.Tensor) -> torch.Tensor:
    """The keys of the rows' next episodes, derived on the device from the current ones."""
    return torch_splitmix64(keys ^ _NEXT_EPISODE)


def dedupe_slates(actions: torch.Tensor, num_candidates: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Replace each repeated candidate by the lowest-index one not yet in its slate.

    The rule of `recsim_env.sessions.validate_actions` ('dedupe'), on the device.

    Args:
        actions: (B, k) int64 candidate indices.
        num_candidates: C.

    Returns:
        (slates (B, k) with distinct candidates, is_dup (B, k) bool: the slots replaced).
    """
    b, k = actions.shape
    rows = torch.arange(b, device=actions.device)
    used = torch.zeros(b, num_candidates, dtype=torch.bool, device=actions.device)
    is_dup = torch.zeros(b, k, dtype=torch.bool, device=actions.device)
    for j in range(k):
        is_dup[:, j] = used[rows, actions[:, j]]
        used[rows, actions[:, j]] = True
    free = torch.argsort(used.to(torch.int8), dim=1, stable=True)  # free candidates first
    rank = (torch.cumsum(is_dup.long(), dim=1) - 1).clamp(min=0)
    return torch.where(is_dup, torch.gather(free, 1, rank), actions), is_dup


def top_k_tensor(scores: torch.Tensor, k: int) -> torch.Tensor:
    """The k best candidates per row, ties to the lower index (`sessions.top_k_slates`)."""
    return torch.argsort(-scores, dim=1, stable=True)[:, :k]


class TensorSessionBatch:
    """N user sessions on a torch device (see the module docstring).

    Args:
        simulator: the users (a `TensorUserSimulator`).
        cfg: env settings.
        num_rows: N.
        device: where the session state lives (the simulator's device, normally).
    """

    def __init__(
        self,
        simulator: TensorUserSimulator,
        cfg: EnvConfig,
        num_rows: int,
        device: torch.device | str,
        candidate_items: np.ndarray | None = None,
    ) -> None:
        """Allocate the per-row state on the device."""
        self.sim = simulator
        self.cfg = cfg
        self.n = num_rows
        dev = self.device = torch.device(device)
        self.num_items = int(simulator.num_items)
        pool = candidate_pool(candidate_items, self.num_items, cfg.num_candidates)
        self.candidate_pool = None if pool is None else torch.as_tensor(pool, device=dev)
        """Catalog indices candidates are drawn from (None: the whole catalog)."""
        simulator.ensure_capacity(num_rows)
        self.reward_per_code = torch.as_tensor(
            cfg.reward_per_code(simulator.behaviours), dtype=torch.float32, device=dev
        )
        feats = env_item_features(simulator, cfg, pool)
        self.item_features = torch.as_tensor(feats, device=dev)  # (num_items, F)
        self.num_features = int(feats.shape[1])
        self.num_profile_tokens = len(simulator.profile_encoder.vocab)
        self.population = torch.as_tensor(np.asarray(simulator.population, np.int64), device=dev)
        n, k, h = num_rows, cfg.slate_size, cfg.history_length
        z = lambda *shape, fill=0, dtype=torch.long: torch.full(
            shape, fill, dtype=dtype, device=dev
        )
        self.rows = torch.arange(n, device=dev)
        self.keys = z(n)
        self.counters = z(n)
        self.profiles = z(n, simulator.profile_encoder.slots, fill=-1)
        self.candidates = z(n, cfg.num_candidates)
        self.history_items = z(n, h, k, fill=-1)
        self.history_responses = z(n, h, k, fill=-1)
        self.clicked_sum = z(n, self.num_features, dtype=torch.float32)
        self.clicked_count = z(n)
        self.steps = z(n)
        self.since_click = z(n)

    # ----------------------------------------------------------------------------- resets
    def reset_rows(self, rows: torch.Tensor, keys: torch.Tensor) -> None:
        """Start new sessions in rows (R,) with stream keys (R,) (int64 words of uint64 keys)."""
        if len(rows) == 0:
            return
        self.keys[rows] = keys
        ctr = torch.zeros_like(keys)
        pick = torch_uniforms(keys, ctr, 1)[:, 0]
        self.counters[rows] = ctr
        index = (pick * len(self.population)).long()
        self.profiles[rows] = self.population[index]
        self.sim.start_sessions_tensors(rows, self.profiles[rows])
        self.history_items[rows] = -1
        self.history_responses[rows] = -1
        self.clicked_sum[rows] = 0.0
        self.clicked_count[rows] = 0
        self.steps[rows] = 0
        self.since_click[rows] = 0
        ctr = self.counters[rows]
        self.candidates[rows] = self._draw_candidates(keys, ctr)
        self.counters[rows] = ctr

    def keys_for_seeds(self, seeds: list[int]) -> torch.Tensor:
        """Device keys of users seeded like the NumPy envs' (see `first_keys`)."""
        return keys_to_torch(first_keys(seeds), self.device)

    # ----------------------------------------------------------------------------- stepping
    def slates_of(self, action: torch.Tensor) -> torch.Tensor:
        """The candidate indices an action shows (B, k): deduped slate, or top k of scores."""
        cfg = self.cfg
        if cfg.action_mode == "scores":
            return top_k_tensor(action, cfg.slate_size)
        if cfg.action_mode == "weights":  # scores in float64, as the NumPy envs compute them
            feats = self.item_features[self.candidates].double()  # (B, C, F)
            return top_k_tensor((feats @ action.double()[..., None])[..., 0], cfg.slate_size)
        slates, is_dup = dedupe_slates(action.long(), cfg.num_candidates)
        if cfg.duplicate_policy == "error" and bool(is_dup.any()):
            raise ValueError(
                "action repeats a candidate in a slate; all distinct (duplicate_policy='error')"
            )
        return slates

    def step(
        self, action: torch.Tensor
    ) -> tuple[TensorStepOutcome, torch.Tensor, torch.Tensor, torch.Tensor]:
        """Show every row the slate of its action and advance all rows.

        Returns:
            (outcome, rewards (N,) float32, candidate indices shown (N, k), item ids (N, k)).
        """
        cfg = self.cfg
        k = cfg.slate_size
        shown = self.slates_of(action)
        items = torch.gather(self.candidates, 1, shown)
        u = torch_uniforms(self.keys, self.counters, k + 1)
        out = self.sim.step_tensors(self.rows, items, u)
        responses = out.responses.clone()  # (a normal tensor, whatever mode the sim ran in)
        clicked = responses >= CLICK
        rewards = self.reward_per_code[responses].sum(dim=1)
        self.history_items = torch.cat([self.history_items[:, 1:], items[:, None]], dim=1)
        self.history_responses = torch.cat(
            [self.history_responses[:, 1:], responses[:, None]], dim=1
        )
        self.clicked_sum += (self.item_features[items] * clicked[..., None]).sum(dim=1)
        self.clicked_count += clicked.sum(dim=1)
        self.steps += 1
        self.since_click = torch.where(clicked.any(dim=1), 0, self.since_click + 1)
        self.candidates = self._draw_candidates(self.keys, self.counters)
        return out, rewards, shown, items

    def _draw_candidates(self, keys: torch.Tensor, counters: torch.Tensor) -> torch.Tensor:
        """Distinct candidates per row from the pool (advances `counters` in place)."""
        pool = self.candidate_pool
        size = self.num_items if pool is None else len(pool)
        drawn = torch_distinct_choices(keys, counters, size, self.cfg.num_candidates)
        return drawn if pool is None else pool[drawn]

    # ----------------------------------------------------------------------------- observation
    def observations(self) -> dict[str, torch.Tensor]:
        """Every row's observation (new tensors; see `recsim_env.torchrl_env` for the keys)."""
        n = self.n
        v = max(self.num_profile_tokens, 1)
        hot = torch.zeros(n, v + 1, dtype=torch.float32, device=self.device)
        idx = torch.where(self.profiles >= 0, self.profiles, v)
        hot.scatter_(1, idx, 1.0)
        count = self.clicked_count.clamp(min=1)[:, None].to(torch.float32)
        session = torch.stack(  # in float64 first, rounded once, as the NumPy envs do
            [
                (self.steps.double() / SESSION_STEPS_SCALE).clamp(max=1.0),
                (self.since_click.double() / 10.0).clamp(max=1.0),
            ],
            dim=1,
        ).to(torch.float32)
        obs = {
            "profile": hot[:, :v],  # (a vocabulary of none still has one, empty, column)
            "clicked_features_mean": (self.clicked_sum / count).clamp(
                -FEATURE_BOUND, FEATURE_BOUND
            ),
            "session_features": session,
        }
        if self.cfg.observes_candidates:
            obs["candidate_features"] = self.item_features[self.candidates]
        if self.cfg.observes_history:
            obs["history_responses"] = self.history_responses.clone()
        if self.cfg.include_item_ids:
            obs["candidate_ids"] = self.candidates.clone()
            obs["history_items"] = self.history_items.clone()
        return obs
