"""`SlateVecEnv`: the native vector env as SB3's VecEnv (one batched simulator call per step).

SB3's DummyVecEnv would step N single envs one after another, N forwards of the GPT-2 user
instead of one. Infos become SB3's list of dicts with `terminal_observation` and
`TimeLimit.truncated`. `make_sb3_vec_env(env_id, num_envs, ...)` builds it (with a VecMonitor,
so SB3 logs episode returns), optionally with Discrete actions for DQN
(`recsim_env.wrappers.discrete_to_slate`); `as_sb3_env(env)` converts a vector env you built.

The fast path in one line (any SB3 algorithm, the users stepped in one batch):

    >>> model = PPO("MultiInputPolicy", make_sb3_vec_env("ParametricUserSim-v0", num_envs=16))

SB3 does not take a Gymnasium VectorEnv (it raises "The environment is of type ..., not a
Gymnasium environment. In this case, we expect OpenAI Gym to be installed"): pass
`as_sb3_env(vec)` instead of `vec`.
"""

from __future__ import annotations

from typing import Any, cast

import gymnasium as gym
import numpy as np
from gymnasium import spaces
from gymnasium.vector import AutoresetMode, VectorEnv
from stable_baselines3.common.vec_env import VecEnv, VecMonitor

from recsim_env.vector_env import SlateUserVectorEnv
from recsim_env.wrappers import DiscreteSlateVectorWrapper


class SlateVecEnv(VecEnv):
    """SB3 VecEnv over a gymnasium VectorEnv in SAME_STEP autoreset mode.

    Each `step` is one call of the wrapped vector env (one batched simulator call for all
    users). Per-row infos carry the vector env's per-row entries (`item_ids`, `responses`,
    `response_probs`, `leave_prob`, ...), `TimeLimit.truncated` (time limit, user did not
    leave) and, where an episode ended, `terminal_observation`. SB3 seeds through `seed(s)`:
    row i is then reset with s + i, like the native vector env's `reset(seed=s)`.

    The simulator, config and single-user spaces of the wrapped env are exposed as
    `simulator`, `config`, `single_observation_space` and `single_action_space`, so baselines
    that read them (`agents.base.env_view`) work on this VecEnv too.
    """

    def __init__(self, venv: VectorEnv) -> None:
        """Wrap venv, whose metadata must say autoreset mode SAME_STEP."""
        mode = venv.metadata.get("autoreset_mode")
        if mode != AutoresetMode.SAME_STEP:
            raise ValueError(
                f"SlateVecEnv needs a vector env with autoreset_mode=AutoresetMode.SAME_STEP, "
                f"got {mode}; pass autoreset_mode=AutoresetMode.SAME_STEP to gym.make_vec"
            )
        self.venv = venv
        self._actions: np.ndarray | None = None
        super().__init__(venv.num_envs, venv.single_observation_space, venv.single_action_space)

    # the wrapped env's parts, for agents that read them (agents.base.env_view)
    @property
    def simulator(self) -> Any:
        """The batched simulator behind the wrapped vector env."""
        return cast(SlateUserVectorEnv, self.venv.unwrapped).simulator

    @property
    def config(self) -> Any:
        """The EnvConfig of the wrapped vector env."""
        return cast(SlateUserVectorEnv, self.venv.unwrapped).config

    @property
    def single_observation_space(self) -> spaces.Space:
        """Observation space of one user."""
        return self.venv.single_observation_space

    @property
    def single_action_space(self) -> spaces.Space:
        """Action space of one user."""
        return self.venv.single_action_space

    @property
    def spec(self) -> Any:
        """The gymnasium spec of the wrapped vector env (id and kwargs), if made by make_vec."""
        return getattr(self.venv.unwrapped, "spec", None)

    def reset(self) -> dict[str, np.ndarray]:
        """Reset every row (with the seeds set by `seed()`, once)."""
        seeds = None if all(s is None for s in self._seeds) else list(self._seeds)
        options = self._options[0] if any(self._options) else None
        # gymnasium types VectorEnv.reset's seed as int | None; its vector envs take a list too
        obs, _ = self.venv.reset(seed=seeds, options=options)  # type: ignore[arg-type]
        self.reset_infos = [{} for _ in range(self.num_envs)]
        self._reset_seeds()
        self._reset_options()
        return obs

    def step_async(self, actions: np.ndarray) -> None:
        """Store the actions of the next step_wait."""
        self._actions = np.asarray(actions)

    def step_wait(self) -> tuple[dict[str, np.ndarray], np.ndarray, np.ndarray, list[dict]]:
        """One batched step; rows whose episode ended are reset at once (SAME_STEP)."""
        if self._actions is None:
            raise RuntimeError("step_wait() called without step_async()")
        obs, rewards, terminated, truncated, info = self.venv.step(self._actions)
        self._actions = None
        terminated = np.asarray(terminated, dtype=bool)
        truncated = np.asarray(truncated, dtype=bool)
        dones = terminated | truncated
        infos: list[dict[str, Any]] = [
            {"TimeLimit.truncated": bool(truncated[i] and not terminated[i])}
            for i in range(self.num_envs)
        ]
        for key, value in info.items():
            if key.startswith("_") or key in ("final_obs", "final_info"):
                continue
            mask = info.get(f"_{key}")
            for i in range(self.num_envs):
                if mask is None or mask[i]:
                    infos[i][key] = value[i]
        if dones.any():
            final = info.get("final_obs")
            if final is None:
                raise RuntimeError("the vector env ended an episode without info['final_obs']")
            for row in np.nonzero(dones)[0]:
                infos[row]["terminal_observation"] = final[row]
        return obs, np.asarray(rewards, dtype=np.float32), dones, infos

    def close(self) -> None:
        """Close the wrapped vector env (frees the simulator)."""
        self.venv.close()

    def get_attr(self, attr_name: str, indices: Any = None) -> list[Any]:
        """The wrapped env's attribute, once per requested row (all rows share one env)."""
        if attr_name == "render_mode":
            value = getattr(self.venv, "render_mode", None)
        else:
            value = getattr(self.venv, attr_name)
        return [value for _ in self._get_indices(indices)]

    def set_attr(self, attr_name: str, value: Any, indices: Any = None) -> None:
        """Set an attribute of the wrapped env (shared by all rows)."""
        setattr(self.venv, attr_name, value)

    def env_method(
        self, method_name: str, *method_args: Any, indices: Any = None, **method_kwargs: Any
    ) -> list[Any]:
        """Call a method of the wrapped env once; its result is repeated per requested row."""
        result = getattr(self.venv, method_name)(*method_args, **method_kwargs)
        return [result for _ in self._get_indices(indices)]

    def env_is_wrapped(self, wrapper_class: type[gym.Wrapper], indices: Any = None) -> list[bool]:
        """Rows are not single gymnasium envs, so no gymnasium wrapper applies."""
        return [False for _ in self._get_indices(indices)]


def as_sb3_env(env: Any, monitor: bool = True) -> Any:
    """What stable-baselines3 can take for env.

    Args:
        env: a Gymnasium VectorEnv in SAME_STEP autoreset mode (the native vector env, also
            under Gymnasium vector wrappers such as RecordEpisodeStatistics), a single
            Gymnasium env, or an SB3 VecEnv.
        monitor: wrap a converted vector env in VecMonitor (SB3 then logs episode returns).

    Returns:
        `SlateVecEnv(env)` (in a VecMonitor) for a vector env; anything SB3 takes already is
        returned as it is.

    Raises:
        ValueError: a vector env in another autoreset mode (saying how to build it), or
            something that is no env.

    Example:
        >>> vec = gym.make_vec("ParametricUserSim-v0", num_envs=16,
        ...     vectorization_mode="vector_entry_point", autoreset_mode=AutoresetMode.SAME_STEP)
        >>> PPO("MultiInputPolicy", as_sb3_env(vec)).learn(10_000)
    """
    if isinstance(env, (VecEnv, gym.Env)):
        return env
    if isinstance(env, VectorEnv):
        mode = env.metadata.get("autoreset_mode")
        if mode != AutoresetMode.SAME_STEP:
            raise ValueError(
                f"stable-baselines3 needs a vector env that resets a finished row at once "
                f"(autoreset_mode=AutoresetMode.SAME_STEP), this one is {mode}: build it with "
                'gym.make_vec(id, num_envs, vectorization_mode="vector_entry_point", '
                "autoreset_mode=AutoresetMode.SAME_STEP), or use "
                "agents.sb3.make_sb3_vec_env(id, num_envs)"
            )
        vec: VecEnv = SlateVecEnv(env)
        return VecMonitor(vec) if monitor else vec
    raise ValueError(
        f"{type(env).__name__} is not an env stable-baselines3 can take (a gymnasium Env or "
        "VectorEnv, or an SB3 VecEnv)"
    )


def make_sb3_vec_env(
    env_id: str,
    num_envs: int = 16,
    seed: int | None = None,
    discrete: bool = False,
    monitor: bool = True,
    **env_kwargs: Any,
) -> VecEnv:
    """An SB3 VecEnv of num_envs users stepped in one batch.

    Args:
        env_id: a registered id with a vector entry point (LLMUserSim-v0, ParametricUserSim-v0).
        num_envs: users per batch.
        seed: row i's first episode is seeded with seed + i (None: random).
        discrete: Discrete(num_candidates) actions (for DQN; see `discrete_to_slate`): the env
            takes slates then (`action_mode='slate'` unless given).
        monitor: wrap with VecMonitor (episode returns in `info["episode"]`, logged by SB3).
        **env_kwargs: env arguments (EnvConfig fields, `simulator=`, `world=`, `device=`, ...).
    """
    import recsim_env  # noqa: F401  (registers the ids)

    if discrete:
        env_kwargs.setdefault("action_mode", "slate")
    venv = gym.make_vec(
        env_id,
        num_envs=num_envs,
        vectorization_mode="vector_entry_point",
        autoreset_mode=AutoresetMode.SAME_STEP,
        **env_kwargs,
    )
    if discrete:
        venv = DiscreteSlateVectorWrapper(venv)
    vec: VecEnv = SlateVecEnv(venv)
    if seed is not None:
        vec.seed(seed)
    return VecMonitor(vec) if monitor else vec
