"""Single-user slate envs: SlateUserEnv and its two faces, ParametricUserSim and LLMUserSim."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import gymnasium as gym
import numpy as np
import pandas as pd

from recsim_env.config import EnvConfig
from recsim_env.sessions import SlateSessionBatch, validate_actions
from recsim_env.spaces import make_action_space
from simulators.base import UserSimulator

_ROW = np.zeros(1, dtype=np.int64)


def as_seed(seed: object) -> int | None:
    """A Python int (or None) from any integer seed, numpy's included.

    Raises:
        ValueError: a seed that is not a non-negative integer (a float, a bool, a string).
    """
    if seed is None:
        return None
    if isinstance(seed, (bool, np.bool_)) or not isinstance(seed, (int, np.integer)):
        raise ValueError(
            f"seed must be a non-negative integer, got {seed!r} ({type(seed).__name__})"
        )
    if seed < 0:
        raise ValueError(f"seed must be a non-negative integer, got {seed}")
    return int(seed)


def split_env_kwargs(kwargs: dict[str, Any]) -> tuple[EnvConfig, dict[str, Any]]:
    """Split plain keyword arguments into an EnvConfig and the rest (simulator options)."""
    return EnvConfig.from_kwargs(kwargs)


class SlateUserEnv(gym.Env):
    """A simulated user answering slates, one session per episode.

    ## Description
    Each step the agent sees `num_candidates` candidate items and shows `slate_size` of them.
    The user answers every slot with skip, click or buy (at most what the simulator allows;
    responses are sampled slot by slot, each conditioned on the earlier ones) and then continues
    or leaves.

    ## Action Space
    `MultiDiscrete([num_candidates] * slate_size)`: candidate indices in display order. Repeats
    are replaced by the lowest free candidate (`duplicate_policy='dedupe'`, default) or raise
    ValueError (`'error'`). Wrong shape, dtype, NaN or out-of-range values raise ValueError.

    ## Observation Space
    See `recsim_env.spaces.make_observation_space`: profile multi-hot, candidate ids and
    features, the last `history_length` slates and responses, clicked-item feature mean and
    session features.

    ## Rewards
    A reward per behaviour, adding up along the levels (`EnvConfig.rewards`): by default 1.0 per
    click plus 3.0 per purchase (a purchase is also a click).

    ## Starting State
    A user drawn from the simulator's population, with an empty history.

    ## Episode End
    Terminated when the user leaves; truncated after `max_episode_steps` (50) by `gym.make`.

    ## Arguments
    Any EnvConfig field as a keyword, plus the simulator's own (see subclasses).

    ## Version History
    - v0: initial release.
    """

    metadata = {"render_modes": []}  # noqa: RUF012

    def __init__(
        self,
        simulator: UserSimulator,
        config: EnvConfig | None = None,
        candidate_items: np.ndarray | None = None,
    ) -> None:
        """Wrap a batched simulator (any `simulators.base.UserSimulator`) as a single-user env.

        `candidate_items` (catalog indices) limits the candidates to part of the catalog.
        """
        self.config = cfg = config or EnvConfig()
        self.simulator = simulator
        self._batch = SlateSessionBatch(simulator, cfg, 1, candidate_items)
        self.action_space = make_action_space(cfg)
        self.observation_space = self._batch.observation_space()
        self._needs_reset = True

    def reset(
        self, *, seed: int | None = None, options: dict[str, Any] | None = None
    ) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
        """Start a new session with a freshly drawn user (numpy integer seeds are accepted)."""
        super().reset(seed=as_seed(seed))
        self._batch.reset_rows(_ROW, [int(self.np_random.integers(2**63))])
        self._needs_reset = False
        return self._get_obs(), {}

    def step(self, action: Any) -> tuple[dict[str, np.ndarray], float, bool, bool, dict[str, Any]]:
        """Show a slate; see the class docstring for the contract."""
        if self._needs_reset:
            raise RuntimeError(
                "step() called before reset() or after the episode ended; call reset() first"
            )
        actions = validate_actions(action, None, self.config)
        out, rewards, slates = self._batch.step(_ROW, actions)
        terminated = bool(out.leave[0])
        self._needs_reset = terminated
        info = {
            "item_ids": slates[0],
            "responses": out.responses[0],
            "response_probs": out.response_probs[0],
            "leave_prob": float(out.leave_prob[0]),
        }
        return self._get_obs(), float(rewards[0]), terminated, False, info

    def _get_obs(self) -> dict[str, np.ndarray]:
        return {k: v[0] for k, v in self._batch.observations(_ROW).items()}

    def close(self) -> None:
        """Free the simulator (and its device memory)."""
        self.simulator.close()


def make_parametric_simulator(world: Any = None, capacity: int = 1) -> UserSimulator:
    """The ground-truth world from a WorldConfig, a dict of its fields, or an existing model."""
    from simulators.parametric import ParametricUserModel, WorldConfig

    if world is None or isinstance(world, WorldConfig):
        return ParametricUserModel(world, capacity=capacity)
    if isinstance(world, dict):
        return ParametricUserModel(WorldConfig.from_dict(world), capacity=capacity)
    if isinstance(world, ParametricUserModel):
        world.ensure_capacity(capacity)
        return world
    raise ValueError(
        f"world must be a WorldConfig, a dict of its fields or a ParametricUserModel, got {type(world)}"
    )


def make_llm_simulator(
    simulator: Any = None, device: str = "cpu", dtype: str = "float32", capacity: int = 1
) -> UserSimulator:
    """The simulator of LLMUserSim-v0.

    The embedded default (None), a checkpoint directory, or any object implementing
    `simulators.base.UserSimulator` (used as it is).
    """
    from simulators.gpt2_user import load_batched_simulator

    return load_batched_simulator(simulator, device=device, dtype=dtype, capacity=capacity)


def read_catalog(items: Any) -> pd.DataFrame:
    """An items table from a DataFrame, a CSV/Parquet file or a log directory.

    Raises:
        FileNotFoundError: a path that does not exist.
    """
    if isinstance(items, pd.DataFrame):
        return items
    path = Path(items)
    if path.is_dir():
        from simulators.logs import read_logs

        return read_logs(path).items
    from simulators.importers import read_items

    return read_items(path)


def env_catalog(simulator: UserSimulator, items: Any) -> np.ndarray | None:
    """Catalog indices of an env's items (`items=`), adding those the simulator never saw.

    None without `items` (candidates come from the simulator's whole catalog). New items enter
    the GPT-2 user by their side information (`GPT2UserSimulator.add_items`).

    Raises:
        ValueError: `items` for a simulator that cannot take new items.
    """
    if items is None:
        return None
    from simulators.gpt2_user import GPT2UserSimulator

    if not isinstance(simulator, GPT2UserSimulator):
        raise ValueError(
            f"items= needs a GPT-2 user simulator (it reads new items by their side "
            f"information), got {type(simulator).__name__}"
        )
    return simulator.add_items(read_catalog(items))


class ParametricUserSimEnv(SlateUserEnv):
    """`ParametricUserSim-v0`: the ground-truth world as an env (see SlateUserEnv).

    Arguments: EnvConfig fields and `world` (a WorldConfig, dict or ParametricUserModel).
    """

    def __init__(self, world: Any = None, **kwargs: Any) -> None:
        """Build the world and the env."""
        cfg, rest = split_env_kwargs(kwargs)
        if rest:
            raise TypeError(f"unexpected arguments {sorted(rest)}; EnvConfig fields or world=")
        super().__init__(make_parametric_simulator(world), cfg)


class LLMUserSimEnv(SlateUserEnv):
    """`LLMUserSim-v0`: users played by a fine-tuned GPT-2 (see SlateUserEnv).

    Arguments: EnvConfig fields, `simulator` (None for the embedded default, a checkpoint
    directory, or any `simulators.base.UserSimulator` object), `device` ('cpu', 'cuda', ...),
    `dtype`, and `items`: the env's catalog (a DataFrame with `item_id` and optionally `title`,
    `category`, `price`; a CSV/Parquet items file; or a log directory): candidates are drawn
    from these items, and those the simulator never saw enter by their side information.
    """

    def __init__(
        self,
        simulator: Any = None,
        device: str = "cpu",
        dtype: str = "float32",
        items: Any = None,
        **kwargs: Any,
    ) -> None:
        """Load the simulator and build the env."""
        cfg, rest = split_env_kwargs(kwargs)
        if rest:
            raise TypeError(
                f"unexpected arguments {sorted(rest)}; EnvConfig fields, simulator=, device=, "
                "dtype=, items="
            )
        sim = make_llm_simulator(simulator, device=device, dtype=dtype)
        super().__init__(sim, cfg, env_catalog(sim, items))
