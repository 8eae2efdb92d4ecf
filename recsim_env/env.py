"""Single-user slate envs: SlateUserEnv and its two faces, ParametricUserSim and LLMUserSim.

Both take Gymnasium's standard keyword arguments (`render_mode=None` or `'ansi'`), every
EnvConfig field and `<behaviour>_reward=`; anything else raises TypeError in Python's own
phrasing ("__init__() got an unexpected keyword argument 'x'"), which tools that probe optional
arguments (TorchRL's `GymEnv` passes `frameskip=`) recognise and drop.
"""

from __future__ import annotations

import difflib
import os
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import gymnasium as gym
import numpy as np
import pandas as pd

from recsim_env.config import EnvConfig
from recsim_env.sessions import SlateSessionBatch, validate_actions
from recsim_env.spaces import make_action_space
from simulators.base import UserSimulator
from simulators.behaviours import DEFAULT_BEHAVIOURS

_ROW = np.zeros(1, dtype=np.int64)
RENDER_MODES: tuple[str, ...] = ("ansi",)
"""Render modes of every env: 'ansi' gives the last slate and the user's answers as text."""


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


def reject_unknown(owner: str, rest: dict[str, Any], own: Iterable[str]) -> None:
    """Raise Python's own TypeError for the first unexpected keyword, listing the valid ones.

    Args:
        owner: the callable's name, e.g. 'LLMUserSimEnv.__init__'.
        rest: the keywords left after the known ones were taken.
        own: the callable's own keywords besides the EnvConfig fields.

    Raises:
        TypeError: "<owner>() got an unexpected keyword argument 'x' [(did you mean 'y'?)];
            valid: ...".
    """
    if not rest:
        return
    name = next(iter(rest))
    valid = [*EnvConfig.field_names(), "<behaviour>_reward", *own]
    # the default behaviours' reward keywords stand for the placeholder; case is ignored
    rewards = [f"{b}_reward" for b in DEFAULT_BEHAVIOURS.names]
    candidates = [v for v in valid if not v.startswith("<")] + rewards
    close = difflib.get_close_matches(str(name).lower(), candidates, n=1)
    hint = f" (did you mean {close[0]!r}?)" if close else ""
    raise TypeError(
        f"{owner}() got an unexpected keyword argument {name!r}{hint}; valid: {', '.join(valid)}"
    )


class RenderModeError(ValueError, TypeError):
    """An unsupported render mode: a ValueError, and a TypeError too, because tools probe for it.

    SB3's `make_vec_env` first passes `render_mode="rgb_array"` and falls back to no render mode
    only on a TypeError, as for a keyword the env does not take.
    """


def check_render_mode(render_mode: str | None) -> str | None:
    """Validate a render mode (None or one of RENDER_MODES).

    Raises:
        RenderModeError: naming the allowed modes (a ValueError and a TypeError).
    """
    if render_mode is not None and render_mode not in RENDER_MODES:
        raise RenderModeError(
            f"render_mode must be None or one of {list(RENDER_MODES)}, got {render_mode!r}"
        )
    return render_mode


def render_step(
    sim: UserSimulator, step: int, slate: np.ndarray | None, responses: np.ndarray | None
) -> str:
    """One user's last step as text: 'step 3: item 12 (jazz) click | item 40 (rock) skip ...'."""
    if slate is None or responses is None:
        return f"step {step}: no slate shown yet"
    names = sim.behaviours.names
    cats = sim.items_table()["category"].to_numpy()
    parts = [
        f"item {int(i)} ({cats[int(i)]}) {names[int(r)] if r >= 0 else '-'}"
        for i, r in zip(slate, responses)
    ]
    return f"step {step}: " + " | ".join(parts)


class SlateUserEnv(gym.Env):
    """A simulated user answering slates, one session per episode.

    ## Description
    Each step the agent sees `num_candidates` candidate items and shows `slate_size` of them.
    The user answers every slot with skip, click or buy (at most what the simulator allows;
    responses are sampled slot by slot, each conditioned on the earlier ones) and then continues
    or leaves.

    ## Action Space
    `action_mode='weights'` (default): `Box(-5, 5, (F,))`, one weight per item feature; each
    candidate scores features . weights and the slate_size best are shown, best first.
    `action_mode='scores'`: `Box(-5, 5, (num_candidates,))`, one score per candidate, the best
    shown the same way. In both no slate repeats a candidate (PPO, SAC and TD3 act on them
    unmodified). `action_mode='slate'`: `MultiDiscrete([num_candidates] * slate_size)`,
    candidate indices in display order; a slate that repeats a candidate shows, in each repeated
    slot, the lowest-index candidate not yet in the slate (`duplicate_policy='dedupe'`, default;
    a policy sampling slots independently repeats often, 42-47% of slates for SB3's plain PPO)
    or raises ValueError (`'error'`). Either way `info["slate"]` holds the candidate indices
    actually shown. Wrong shape, dtype or NaN values, and slate indices out of range, raise
    ValueError; weights and scores outside the Box are accepted (only their order counts).

    ## Observation Space
    See `recsim_env.spaces.make_observation_space`. `observation='context'` (default): profile
    multi-hot, clicked-item feature mean and session features, plus the candidates' features
    in the scores and slate modes. `'full'`: also the responses to the last `history_length`
    slates. Catalog ids (`candidate_ids`, `history_items`) only with `include_item_ids=True`.

    ## Rewards
    A reward per behaviour, adding up along the levels (`EnvConfig.rewards`): by default 1.0 per
    click plus 3.0 per purchase (a purchase is also a click).

    ## Starting State
    A user drawn from the simulator's population, with an empty history.

    ## Episode End
    Terminated when the user leaves. Truncated after `max_episode_steps` steps: by the TimeLimit
    wrapper of `gym.make` (the registered 50, or `gym.make(id, max_episode_steps=N)`); an env
    constructed directly truncates itself when given `max_episode_steps=` (`truncate_after`).
    Nothing else depends on the limit.

    ## Arguments
    Any EnvConfig field as a keyword, `render_mode` (None or 'ansi'), plus the simulator's own
    (see subclasses). Built in a fresh process (a subprocess vector env, a Ray worker) from the
    id `"recsim_env:LLMUserSim-v0"`, `gym.make` imports `recsim_env` first, which registers it.

    ## Version History
    - v0: initial release. Later in v0: `candidate_ids` / `history_items` left the default
      observation (`include_item_ids=True` keeps them), `session_features[0]` is scaled by a
      fixed 50 steps, `action_mode='scores'` and `'weights'` (now the default, with the
      `context` observation), `info["slate"]`, `render_mode`.
    """

    metadata = {"render_modes": list(RENDER_MODES), "render_fps": 4}  # noqa: RUF012

    def __init__(
        self,
        simulator: UserSimulator,
        config: EnvConfig | None = None,
        render_mode: str | None = None,
        truncate_after: int | None = None,
        candidate_items: np.ndarray | None = None,
    ) -> None:
        """Wrap a batched simulator (any `simulators.base.UserSimulator`) as a single-user env.

        Args:
            simulator: the users.
            config: env settings (default EnvConfig()).
            render_mode: None or 'ansi'.
            truncate_after: truncate episodes after this many steps (None: the env's
                registered spec's `max_episode_steps` when `gym.make` built it, else only a
                TimeLimit wrapper truncates).
            candidate_items: catalog indices the candidates are drawn from (None: the whole
                catalog).
        """
        self.config = cfg = config or EnvConfig()
        self.simulator = simulator
        self.render_mode = check_render_mode(render_mode)
        self.truncate_after = truncate_after
        self._batch = SlateSessionBatch(simulator, cfg, 1, candidate_items)
        self.action_space = make_action_space(cfg, self._batch.num_features)
        self.observation_space = self._batch.observation_space()
        self._needs_reset = True
        self._last: tuple[np.ndarray, np.ndarray] | None = None

    def reset(
        self, *, seed: int | None = None, options: dict[str, Any] | None = None
    ) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
        """Start a new session with a freshly drawn user (numpy integer seeds are accepted)."""
        super().reset(seed=as_seed(seed))
        self._batch.reset_rows(_ROW, [int(self.np_random.integers(2**63))])
        self._needs_reset = False
        self._last = None
        return self._get_obs(), {}

    def step(self, action: Any) -> tuple[dict[str, np.ndarray], float, bool, bool, dict[str, Any]]:
        """Show a slate; see the class docstring for the contract."""
        if self._needs_reset:
            raise RuntimeError(
                "step() called before reset() or after the episode ended; call reset() first"
            )
        weights = self.config.action_mode == "weights"
        feats = self._batch.candidate_features(_ROW) if weights else None
        actions = validate_actions(action, None, self.config, feats)
        out, rewards, slates = self._batch.step(_ROW, actions)
        terminated = bool(out.leave[0])
        limit = self.truncate_after
        truncated = not terminated and limit is not None and int(self._batch.steps[0]) >= limit
        self._needs_reset = terminated or truncated
        self._last = (slates[0], out.responses[0])
        info = {
            "slate": actions[0],
            "item_ids": slates[0],
            "responses": out.responses[0],
            "response_probs": out.response_probs[0],
            "leave_prob": float(out.leave_prob[0]),
        }
        return self._get_obs(), float(rewards[0]), terminated, truncated, info

    def render(self) -> str | None:
        """The last slate and the user's answers as text ('ansi'), or None without a mode."""
        if self.render_mode is None:
            gym.logger.warn("render() called without a render_mode; pass render_mode='ansi'")
            return None
        slate, responses = self._last if self._last is not None else (None, None)
        return render_step(self.simulator, int(self._batch.steps[0]), slate, responses)

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
        TypeError: anything else than a DataFrame or a path.
    """
    if isinstance(items, pd.DataFrame):
        return items
    if not isinstance(items, (str, os.PathLike)):
        raise TypeError(
            f"items= must be a DataFrame (item_id and optionally title, category, price), a "
            f"CSV/Parquet items file or a log directory, got {type(items).__name__}"
        )
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

    Arguments: EnvConfig fields, `world` (a WorldConfig, dict or ParametricUserModel) and
    `render_mode`.
    """

    def __init__(self, world: Any = None, render_mode: str | None = None, **kwargs: Any) -> None:
        """Build the world and the env."""
        cfg, rest = split_env_kwargs(kwargs)
        reject_unknown("ParametricUserSimEnv.__init__", rest, ("world", "render_mode"))
        limit = cfg.max_episode_steps if "max_episode_steps" in kwargs else None
        super().__init__(
            make_parametric_simulator(world), cfg, render_mode=render_mode, truncate_after=limit
        )


class LLMUserSimEnv(SlateUserEnv):
    """`LLMUserSim-v0`: users played by a fine-tuned GPT-2 (see SlateUserEnv).

    Arguments: EnvConfig fields, `simulator` (None for the embedded default, a checkpoint
    directory, or any `simulators.base.UserSimulator` object), `device` ('cpu', 'cuda', ...),
    `dtype`, `render_mode`, and `items`: the env's catalog (a DataFrame with `item_id` and
    optionally `title`, `category`, `price`; a CSV/Parquet items file; or a log directory):
    candidates are drawn from these items, and those the simulator never saw enter by their
    side information.
    """

    def __init__(
        self,
        simulator: Any = None,
        device: str = "cpu",
        dtype: str = "float32",
        render_mode: str | None = None,
        items: Any = None,
        **kwargs: Any,
    ) -> None:
        """Load the simulator and build the env."""
        cfg, rest = split_env_kwargs(kwargs)
        own = ("simulator", "device", "dtype", "render_mode", "items")
        reject_unknown("LLMUserSimEnv.__init__", rest, own)
        check_render_mode(render_mode)
        limit = cfg.max_episode_steps if "max_episode_steps" in kwargs else None
        sim = make_llm_simulator(simulator, device=device, dtype=dtype)
        super().__init__(
            sim,
            cfg,
            render_mode=render_mode,
            truncate_after=limit,
            candidate_items=env_catalog(sim, items),
        )
