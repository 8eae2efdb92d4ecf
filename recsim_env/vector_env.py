"""SlateUserVectorEnv: N users in one batch, one simulator call per step (native vector env).

A Gymnasium VectorEnv is not a stable-baselines3 VecEnv: `agents.sb3.as_sb3_env(vec)` (or
`agents.sb3.make_sb3_vec_env(id, num_envs)`) gives SB3 this env as one batched VecEnv. SB3 itself
rejects a VectorEnv with "The environment is of type <class ...>, not a Gymnasium environment";
the class's repr carries that pointer, so the message names it.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, cast

import numpy as np
from gymnasium.utils import seeding
from gymnasium.vector import AutoresetMode, VectorEnv
from gymnasium.vector.utils import batch_space

from recsim_env.config import EnvConfig
from recsim_env.env import (
    RENDER_MODES,
    check_render_mode,
    env_catalog,
    make_llm_simulator,
    make_parametric_simulator,
    reject_unknown,
    render_step,
    split_env_kwargs,
)
from recsim_env.sessions import SlateSessionBatch, validate_actions
from recsim_env.spaces import make_action_space
from simulators.base import UserSimulator

SB3_HINT = "for stable-baselines3 wrap it: agents.sb3.as_sb3_env(env)"


class _HintedClass(type):
    """A class whose repr says how stable-baselines3 takes it (SB3's error message shows it)."""

    def __repr__(cls) -> str:
        return f"<class '{cls.__module__}.{cls.__qualname__}'> (a Gymnasium VectorEnv; {SB3_HINT})"


class SlateUserVectorEnv(VectorEnv, metaclass=_HintedClass):
    """N independent sessions stepped together.

    Row i reset with seed s + i behaves exactly like the single env reset with seed s + i (same
    user, candidates and responses under the same actions). Episodes end on leave (terminated)
    or after `max_episode_steps` (truncated). Autoreset follows Gymnasium's modes:

    - NEXT_STEP (default): the step after an episode ends resets that row and ignores its action.
    - SAME_STEP: the row resets at once; the last observation is in `info["final_obs"]` (what
      stable-baselines3's VecEnv expects).
    - DISABLED: a finished row stays idle (not stepped, no reward, `info["_item_ids"]` False)
      until `reset(options={"reset_mask": mask})` starts it again.

    `reset(seed=[...], options={"reset_mask": mask})` resets only the masked rows, each with its
    own seed (Gymnasium's partial reset); the episode runner of `evaluation.episodes` uses it to
    give every row the next user as soon as its user leaves.

    Which mode for which client: Gymnasium's vector observation wrappers (FlattenObservation,
    NormalizeObservation, ...) need NEXT_STEP (the default; NormalizeObservation refuses
    DISABLED, all of them refuse SAME_STEP); stable-baselines3 needs SAME_STEP
    (`agents.sb3.as_sb3_env`); TorchRL's GymWrapper takes SAME_STEP or DISABLED (prefer the
    TorchRL-native `recsim_env.torchrl_env.SlateTorchRLEnv`). Under NEXT_STEP about one step in
    eight of a row is a reset step (no transition, reward 0, `info["_item_ids"]` False; the mean
    session lasts 7-15 slates): mask those out of a learner's loss.
    """

    metadata = {  # noqa: RUF012
        "render_modes": list(RENDER_MODES),
        "render_fps": 4,
        "autoreset_mode": AutoresetMode.NEXT_STEP,
    }

    def __init__(
        self,
        simulator: UserSimulator,
        num_envs: int,
        config: EnvConfig | None = None,
        autoreset_mode: AutoresetMode | str = AutoresetMode.NEXT_STEP,
        candidate_items: np.ndarray | None = None,
        render_mode: str | None = None,
    ) -> None:
        """Wrap a batched simulator for num_envs users.

        Candidates are drawn from `candidate_items` (catalog indices; None: all items);
        render_mode is None or 'ansi'.
        """
        num_envs = check_num_envs(num_envs)
        self.config = cfg = config or EnvConfig()
        self.simulator = simulator
        self.num_envs = num_envs
        self.render_mode = check_render_mode(render_mode)
        self.autoreset_mode = AutoresetMode(autoreset_mode)
        self.metadata = {**self.metadata, "autoreset_mode": self.autoreset_mode}
        self._batch = SlateSessionBatch(simulator, cfg, num_envs, candidate_items)
        self.single_action_space = make_action_space(cfg, self._batch.num_features)
        self.single_observation_space = self._batch.observation_space()
        self.action_space = batch_space(self.single_action_space, num_envs)
        self.observation_space = batch_space(self.single_observation_space, num_envs)
        self._rngs = [seeding.np_random(None)[0] for _ in range(num_envs)]
        self._autoreset = np.zeros(num_envs, dtype=bool)
        """Rows whose episode ended: reset on the next step (NEXT_STEP) or idle (DISABLED)."""
        self._all = np.arange(num_envs)
        self._started = False
        self._last: tuple[np.ndarray, np.ndarray] | None = None

    def reset(
        self, *, seed: int | list[int | None] | None = None, options: dict[str, Any] | None = None
    ) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
        """Reset every row (or the rows of `options["reset_mask"]`).

        Row i is seeded with seed + i (or seed[i]); None keeps each row's own random stream.
        """
        mask = None if options is None else options.get("reset_mask")
        if mask is None:
            rows = self._all
        else:
            mask = np.asarray(mask)
            if mask.dtype != bool or mask.shape != (self.num_envs,):
                raise ValueError(
                    f"options['reset_mask'] must be a bool array of shape ({self.num_envs},), "
                    f"got {mask.dtype} {mask.shape}"
                )
            if not self._started and not mask.all():
                raise RuntimeError("the first reset() must reset every row (no reset_mask)")
            rows = np.nonzero(mask)[0]
        if isinstance(seed, (int, np.integer)) and not isinstance(seed, bool):
            seeds: list[int | None] = [int(seed) + i for i in range(self.num_envs)]
        elif seed is None:
            seeds = [None] * self.num_envs
        else:
            seeds = list(cast("Sequence[int | None]", seed))  # (a bool fails here, as before)
            if len(seeds) != self.num_envs:
                raise ValueError(f"got {len(seeds)} seeds for {self.num_envs} envs")
        for i in rows:
            s = seeds[i]
            if s is not None or not self._started:
                self._rngs[i] = seeding.np_random(None if s is None else int(s))[0]
        self._reset_rows(rows)
        self._autoreset[rows] = False
        self._started = True
        return self._batch.observations(), {}

    def _reset_rows(self, rows: np.ndarray) -> None:
        self._batch.reset_rows(rows, [int(self._rngs[i].integers(2**63)) for i in rows])

    def step(
        self, actions: Any
    ) -> tuple[dict[str, np.ndarray], np.ndarray, np.ndarray, np.ndarray, dict[str, Any]]:
        """Step all rows with actions (num_envs, slate_size)."""
        if not self._started:
            raise RuntimeError("step() called before reset(); call reset() first")
        cfg = self.config
        feats = self._batch.candidate_features(self._all) if cfg.action_mode == "weights" else None
        acts = validate_actions(actions, self.num_envs, cfg, feats)
        n, k = self.num_envs, cfg.slate_size
        rewards = np.zeros(n)
        terminated = np.zeros(n, dtype=bool)
        truncated = np.zeros(n, dtype=bool)
        info: dict[str, Any] = {
            "slate": np.full((n, k), -1, dtype=np.int64),
            "item_ids": np.full((n, k), -1, dtype=np.int64),
            "responses": np.full((n, k), -1, dtype=np.int64),
            "response_probs": np.zeros((n, k, self._batch.behaviours.size)),
            "leave_prob": np.zeros(n),
        }
        if self.autoreset_mode == AutoresetMode.NEXT_STEP:
            resetting = np.nonzero(self._autoreset)[0]
            if len(resetting):
                self._reset_rows(resetting)
        active = np.nonzero(~self._autoreset)[0]
        if len(active):
            out, r, slates = self._batch.step(active, acts[active])
            rewards[active] = r
            terminated[active] = out.leave
            truncated[active] = ~out.leave & (self._batch.steps[active] >= cfg.max_episode_steps)
            info["slate"][active] = acts[active]
            info["item_ids"][active] = slates
            info["responses"][active] = out.responses
            info["response_probs"][active] = out.response_probs
            info["leave_prob"][active] = out.leave_prob
        mask = np.zeros(n, dtype=bool)
        mask[active] = True
        for key in ("slate", "item_ids", "responses", "response_probs", "leave_prob"):
            info[f"_{key}"] = mask
        self._last = (info["item_ids"], info["responses"])
        done = terminated | truncated
        if self.autoreset_mode == AutoresetMode.SAME_STEP and done.any():
            finished = np.nonzero(done)[0]
            final = self._batch.observations()
            info["final_obs"] = np.array(
                [{key: v[i] for key, v in final.items()} if done[i] else None for i in range(n)],
                dtype=object,
            )
            info["_final_obs"] = done.copy()
            self._reset_rows(finished)
            self._autoreset[:] = False
        elif self.autoreset_mode == AutoresetMode.NEXT_STEP:
            self._autoreset = done
        else:  # DISABLED: finished rows stay idle until a masked reset
            self._autoreset |= done
        return self._batch.observations(), rewards, terminated, truncated, info

    def render(self) -> tuple[str, ...] | None:
        """Every row's last slate and answers as text ('ansi'), or None without a mode."""
        if self.render_mode is None:
            return None
        steps = self._batch.steps
        if self._last is None:
            return tuple(render_step(self.simulator, int(s), None, None) for s in steps)
        items, responses = self._last
        return tuple(
            render_step(self.simulator, int(steps[i]), items[i], responses[i])
            for i in range(self.num_envs)
        )

    def close_extras(self, **kwargs: Any) -> None:
        """Free the simulator."""
        self.simulator.close()


def check_num_envs(num_envs: object) -> int:
    """num_envs as an int >= 1.

    Raises:
        ValueError: not an integer, or < 1.
    """
    if isinstance(num_envs, (bool, np.bool_)) or not isinstance(num_envs, (int, np.integer)):
        raise ValueError(f"num_envs must be an integer, got {num_envs!r}")
    if num_envs < 1:
        raise ValueError(f"num_envs must be >= 1, got {num_envs}")
    return int(num_envs)


def make_parametric_vector_env(
    num_envs: int = 1,
    world: Any = None,
    autoreset_mode: AutoresetMode | str = AutoresetMode.NEXT_STEP,
    render_mode: str | None = None,
    **kwargs: Any,
) -> SlateUserVectorEnv:
    """Vector entry point of ParametricUserSim-v0."""
    cfg, rest = split_env_kwargs(kwargs)
    own = ("num_envs", "world", "autoreset_mode", "render_mode")
    reject_unknown("make_parametric_vector_env", rest, own)
    num_envs = check_num_envs(num_envs)
    sim = make_parametric_simulator(world, capacity=num_envs)
    return SlateUserVectorEnv(sim, num_envs, cfg, autoreset_mode, render_mode=render_mode)


def make_llm_vector_env(
    num_envs: int = 1,
    simulator: Any = None,
    device: str = "cpu",
    dtype: str = "float32",
    autoreset_mode: AutoresetMode | str = AutoresetMode.NEXT_STEP,
    render_mode: str | None = None,
    items: Any = None,
    **kwargs: Any,
) -> SlateUserVectorEnv:
    """Vector entry point of LLMUserSim-v0 (one batched GPT-2 forward per slot for all users).

    `items`: the env's catalog, as for `LLMUserSimEnv`.
    """
    cfg, rest = split_env_kwargs(kwargs)
    own = ("num_envs", "simulator", "device", "dtype", "autoreset_mode", "render_mode", "items")
    reject_unknown("make_llm_vector_env", rest, own)
    check_render_mode(render_mode)
    num_envs = check_num_envs(num_envs)
    sim = make_llm_simulator(simulator, device=device, dtype=dtype, capacity=num_envs)
    return SlateUserVectorEnv(
        sim, num_envs, cfg, autoreset_mode, env_catalog(sim, items), render_mode=render_mode
    )
