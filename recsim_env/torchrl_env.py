"""SlateTorchRLEnv: the slate envs as a TorchRL `EnvBase`, N users batched on a torch device.

Actions come in and observations, rewards and done flags go out as tensors of `device` (cpu or
cuda); the session state, observation building, reward and random streams live there too
(`recsim_env.tensor_sessions.TensorSessionBatch`), and the simulator steps on the same tensors
(`simulators.base.TensorUserSimulator`). Needs the `torchrl` extra
(`pip install "llm-usersim[torchrl]"`).

    >>> from recsim_env.torchrl_env import make_torchrl_env
    >>> env = make_torchrl_env("LLMUserSim-v0", num_envs=256, device="cuda", dtype="bfloat16")
    >>> td = env.rollout(10, break_when_any_done=False)   # (256, 10)

Keys (batch shape (N,)):

- observation (which keys: `EnvConfig.observation`, as in the Gymnasium envs): `profile`
  (N, V) float 0/1, `clicked_features_mean` (N, F), `session_features` (N, 2),
  `candidate_features` (N, C, F) where the action picks candidates or with observation='full',
  `history_responses` (N, H, k) int64 (-1 padded) with observation='full'; with
  `include_item_ids=True` also `candidate_ids` (N, C) and `history_items` (N, H, k). Under
  `info`: the step's `slate` (candidate indices shown), `item_ids` and `responses` (N, k) int64
  (-1 after a reset).
- action: `Bounded(-SCORE_BOUND, SCORE_BOUND)` (N, F) weights in the default `weights` mode or
  (N, C) scores in the `scores` mode (the top k are shown), or `MultiCategorical([C] * k)`
  (N, k) in the `slate` mode (repeats deduped).
- reward (N, 1) float32; done / terminated (the user left) / truncated (`max_episode_steps`,
  50 by default) (N, 1) bool.

Resets are TorchRL's: `_reset` re-starts exactly the rows of the `"_reset"` mask (the collector
passes the done rows) and leaves the others running. `env.set_seed(s)` makes the next full reset
give row i the user that a NumPy env reset with seed s + i meets (the same profile, candidates
and, from the same simulator, the same answers); later episodes of a row draw their keys on the
device from the row's previous key. Actions are not validated per step (that would synchronise
with the host): they must lie in `action_spec`.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
from tensordict import TensorDict, TensorDictBase
from torchrl.data import Binary, Bounded, Categorical, Composite, MultiCategorical, Unbounded
from torchrl.envs import EnvBase

from recsim_env.config import EnvConfig
from recsim_env.env import (
    env_catalog,
    make_llm_simulator,
    make_parametric_simulator,
    reject_unknown,
    split_env_kwargs,
)
from recsim_env.spaces import FEATURE_BOUND, SCORE_BOUND
from recsim_env.tensor_sessions import TensorSessionBatch, next_episode_keys
from simulators.base import TensorUserSimulator
from simulators.gpt2_user.simulator import check_device
from simulators.rng import torch_splitmix64


class SlateTorchRLEnv(EnvBase):
    """N slate sessions as one TorchRL env of batch size [N] (see the module docstring).

    Args:
        simulator: the users (a `TensorUserSimulator`: both built-in simulators are).
        num_envs: N.
        config: env settings (action_mode, include_item_ids, max_episode_steps, ...).
        device: where tensors live (default: the simulator's device).
        candidate_items: catalog indices candidates are drawn from (None: the whole catalog).
    """

    def __init__(
        self,
        simulator: TensorUserSimulator,
        num_envs: int,
        config: EnvConfig | None = None,
        device: torch.device | str | None = None,
        candidate_items: np.ndarray | None = None,
    ) -> None:
        """Allocate the sessions and declare the specs."""
        if num_envs < 1:
            raise ValueError(f"num_envs must be >= 1, got {num_envs}")
        dev = torch.device(device) if device is not None else simulator.device
        super().__init__(device=dev, batch_size=torch.Size([num_envs]))
        self.config = cfg = config or EnvConfig()
        self.simulator = simulator
        self.num_envs = num_envs
        self._batch = TensorSessionBatch(simulator, cfg, num_envs, dev, candidate_items)
        self._pending_keys: torch.Tensor | None = None
        self._started = False
        self._make_specs()

    def _make_specs(self) -> None:
        cfg, b = self.config, self._batch
        n, c, k, h = self.num_envs, cfg.num_candidates, cfg.slate_size, cfg.history_length
        f, items = b.num_features, b.num_items
        r = self.simulator.behaviours.size
        dev = self.device
        v = max(b.num_profile_tokens, 1)

        def ints(low: int, high: int, *shape: int) -> Bounded:
            return Bounded(low, high, shape=(n, *shape), dtype=torch.int64, device=dev)

        def floats(low: float, high: float, *shape: int) -> Bounded:
            return Bounded(low, high, shape=(n, *shape), dtype=torch.float32, device=dev)

        obs: dict[str, Any] = {
            "profile": Binary(n=v, shape=(n, v), dtype=torch.float32, device=dev),
            "clicked_features_mean": floats(-FEATURE_BOUND, FEATURE_BOUND, f),
            "session_features": floats(0.0, 1.0, 2),
        }
        if cfg.observes_candidates:
            obs["candidate_features"] = floats(-FEATURE_BOUND, FEATURE_BOUND, c, f)
        if cfg.observes_history:
            obs["history_responses"] = ints(-1, r - 1, h, k)
        if cfg.include_item_ids:
            obs["candidate_ids"] = ints(0, items - 1, c)
            obs["history_items"] = ints(-1, items - 1, h, k)
        obs["info"] = Composite(
            slate=ints(-1, c - 1, k),
            item_ids=ints(-1, items - 1, k),
            responses=ints(-1, r - 1, k),
            shape=(n,),
            device=dev,
        )
        self.observation_spec = Composite(obs, shape=(n,), device=dev)
        if cfg.action_mode in ("scores", "weights"):
            width = c if cfg.action_mode == "scores" else f
            self.action_spec = floats(-SCORE_BOUND, SCORE_BOUND, width)
        else:
            self.action_spec = MultiCategorical(
                nvec=[c] * k, shape=(n, k), dtype=torch.int64, device=dev
            )
        self.reward_spec = Unbounded(shape=(n, 1), dtype=torch.float32, device=dev)
        flag = lambda: Categorical(2, shape=(n, 1), dtype=torch.bool, device=dev)
        self.done_spec = Composite(
            done=flag(), terminated=flag(), truncated=flag(), shape=(n,), device=dev
        )

    # ----------------------------------------------------------------------------- seeding
    def _set_seed(self, seed: int | None) -> None:
        """The next full reset gives row i the user of seed + i (as the NumPy envs do)."""
        if seed is None:
            seed = int(np.random.SeedSequence().generate_state(1)[0])
        self._pending_keys = self._batch.keys_for_seeds(
            [int(seed) + i for i in range(self.num_envs)]
        )

    def _fresh_keys(self) -> torch.Tensor:
        """Keys of a full reset: the seeded ones, else the next episode's of every row."""
        if self._pending_keys is not None:
            keys, self._pending_keys = self._pending_keys, None
            return keys
        if not self._started:  # never seeded: a random base, spread on the device
            base = int(np.random.SeedSequence().generate_state(1, np.uint64)[0] >> np.uint64(1))
            return torch_splitmix64(base + self._batch.rows)
        return next_episode_keys(self._batch.keys)

    # ----------------------------------------------------------------------------- reset / step
    def _info(
        self, slate: torch.Tensor, items: torch.Tensor, responses: torch.Tensor
    ) -> TensorDict:
        return TensorDict(
            {"slate": slate, "item_ids": items, "responses": responses},
            batch_size=self.batch_size,
            device=self.device,
        )

    def _reset(self, tensordict: TensorDictBase | None = None, **kwargs: Any) -> TensorDictBase:
        """Start new sessions in the rows of `tensordict["_reset"]` (all rows without one)."""
        b = self._batch
        mask = None if tensordict is None else tensordict.get("_reset", None)
        if mask is None:
            rows = b.rows
            keys = self._fresh_keys()
        else:
            rows = torch.nonzero(mask.reshape(self.num_envs)).reshape(-1)
            keys = next_episode_keys(b.keys[rows])
        b.reset_rows(rows, keys)
        self._started = True
        n, k = self.num_envs, self.config.slate_size
        none = torch.full((n, k), -1, dtype=torch.int64, device=self.device)
        flag = torch.zeros(n, 1, dtype=torch.bool, device=self.device)
        return TensorDict(
            {
                **b.observations(),
                "info": self._info(none, none.clone(), none.clone()),
                "done": flag,
                "terminated": flag.clone(),
                "truncated": flag.clone(),
            },
            batch_size=self.batch_size,
            device=self.device,
        )

    def _step(self, tensordict: TensorDictBase) -> TensorDictBase:
        """Show every row the slate of its action; the next observation, reward and flags."""
        b = self._batch
        out, rewards, shown, items = b.step(tensordict.get("action"))
        terminated = out.leave.clone()
        truncated = ~terminated & (b.steps >= self.config.max_episode_steps)
        return TensorDict(
            {
                **b.observations(),
                "info": self._info(shown, items, out.responses.clone()),
                "reward": rewards[:, None],
                "done": (terminated | truncated)[:, None],
                "terminated": terminated[:, None],
                "truncated": truncated[:, None],
            },
            batch_size=self.batch_size,
            device=self.device,
        )

    def close(self, *, raise_if_closed: bool = True) -> None:
        """Free the simulator (and its device memory)."""
        self.simulator.close()
        super().close(raise_if_closed=raise_if_closed)


def make_torchrl_env(
    env_id: str = "LLMUserSim-v0",
    num_envs: int = 256,
    device: str | torch.device = "cpu",
    dtype: str = "float32",
    simulator: Any = None,
    world: Any = None,
    seed: int | None = None,
    items: Any = None,
    **env_kwargs: Any,
) -> SlateTorchRLEnv:
    """A TorchRL env of one of the registered ids, N users batched on `device`.

    Args:
        env_id: "LLMUserSim-v0" (the GPT-2 user: `simulator` None for the embedded default, a
            checkpoint directory, or a simulator object) or "ParametricUserSim-v0" (the
            ground-truth world: `world` a WorldConfig, dict or model; it steps in NumPy on
            the host, so on a GPU its answers cross to the device every step).
        num_envs: N.
        device: 'cpu' or 'cuda' (the GPT-2 user and the sessions live there).
        dtype: the GPT-2 user's inference dtype ('float32', 'bfloat16').
        simulator: see env_id.
        world: see env_id.
        seed: `set_seed(seed)` before the first reset (row i meets the user of seed + i).
        items: LLMUserSim-v0 only, as `gym.make(..., items=)`: the env's catalog (a DataFrame,
            a CSV/Parquet items file or a log directory); candidates are drawn from it and
            items the simulator never saw enter by their side information.
        **env_kwargs: EnvConfig fields and `<behaviour>_reward=`.

    Raises:
        ValueError: an unknown id or bad EnvConfig value.
        TypeError: an unknown keyword (Python's phrasing, with the valid ones).
    """
    cfg, rest = split_env_kwargs(env_kwargs)
    own = ("env_id", "num_envs", "device", "dtype", "simulator", "world", "seed", "items")
    reject_unknown("make_torchrl_env", rest, own)
    check_device(device)
    sim: Any
    if env_id.split(":")[-1] == "LLMUserSim-v0":
        if world is not None:
            raise ValueError("world= is for ParametricUserSim-v0; LLMUserSim-v0 takes simulator=")
        sim = make_llm_simulator(simulator, device=str(device), dtype=dtype, capacity=num_envs)
    elif env_id.split(":")[-1] == "ParametricUserSim-v0":
        if simulator is not None:
            raise ValueError("simulator= is for LLMUserSim-v0; ParametricUserSim-v0 takes world=")
        if items is not None:
            raise ValueError("items= is for LLMUserSim-v0 (a GPT-2 user reads new items)")
        sim = make_parametric_simulator(world, capacity=num_envs)
    else:
        raise ValueError(
            f"unknown env id {env_id!r}; one of 'LLMUserSim-v0', 'ParametricUserSim-v0'"
        )
    pool = env_catalog(sim, items)
    env = SlateTorchRLEnv(sim, num_envs, cfg, device=device, candidate_items=pool)
    if seed is not None:
        env.set_seed(seed)
    return env


__all__ = ["SlateTorchRLEnv", "make_torchrl_env"]
