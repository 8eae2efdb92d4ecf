"""RLlib PPO on the slate envs: the documented config (Ray 2.60, RLlib's new API stack).

`ppo_config(...)` returns an `ray.rllib.algorithms.ppo.PPOConfig` that trains on
`LLMUserSim-v0` (or `ParametricUserSim-v0`) with `env_runners` EnvRunner actors:

- **Registration**: the env is named `"recsim_env:LLMUserSim-v0"`; gymnasium imports `recsim_env`
  (which registers the ids) in every EnvRunner process, so nothing has to be registered with
  `ray.tune.registry.register_env`. `env_kwargs` go to `gym.make_vec` as they are (unknown keys
  fail `build_algo` with a TypeError).
- **Vectorisation**: `gym_env_vectorize_mode="vector_entry_point"`: each EnvRunner steps its
  `envs_per_runner` users through the native vector env, one batched simulator call per step
  (RLlib's default "sync" mode would build that many single envs, each with its own simulator).
- **Observation**: the flat Dict goes through RLlib's `FlattenObservations` connector (its
  default encoders take no Dict), which concatenates Box and MultiBinary values as float32.
  `candidate_ids` and `history_items` are raw catalog indices (0-499), meaningless as
  magnitudes, so they are dropped; the candidates enter through `candidate_features` (category
  one-hot and standardised log price per candidate) and the history through
  `history_responses`.
- **Action**: `MultiDiscrete([num_candidates] * slate_size)` as it is: RLlib's
  `TorchMultiCategorical`, one categorical per slot (nothing keeps two slots from choosing the
  same candidate; the env replaces repeats by the lowest free candidate, its default
  `duplicate_policy="dedupe"`).

Ray is optional (`pip install 'llm-usersim[ray]'`: `ray==2.60.0` and `dm_tree`; never
`ray[rllib]`, whose `gymnasium==1.2.2` pin would downgrade gymnasium 1.4.0). Example:
`examples/rllib_ppo.py` (`--smoke` in seconds).

Example:
    >>> import ray  # doctest: +SKIP
    >>> ray.init(num_cpus=3)  # doctest: +SKIP
    >>> algo = ppo_config(env_runners=2).build_algo()  # doctest: +SKIP
    >>> result = algo.train()  # doctest: +SKIP
    >>> rollout_throughput(result)["per_env_runner"]  # doctest: +SKIP
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

DROPPED_KEYS: tuple[str, ...] = ("candidate_ids", "history_items")
"""Observation keys left out of the network's input: raw catalog indices."""


def ppo_config(
    env_id: str = "LLMUserSim-v0",
    env_runners: int = 2,
    envs_per_runner: int = 16,
    env_kwargs: dict[str, Any] | None = None,
    hidden: Sequence[int] = (64, 64),
    train_batch: int = 2048,
    minibatch: int = 256,
    epochs: int = 4,
    lr: float = 3e-4,
    seed: int = 0,
) -> Any:
    """An RLlib PPOConfig for a slate env (see the module docstring for each choice).

    Args:
        env_id: a registered id of `recsim_env` (LLMUserSim-v0, ParametricUserSim-v0).
        env_runners: EnvRunner actors sampling in parallel (one CPU each).
        envs_per_runner: users each EnvRunner steps together (its native vector env's rows).
        env_kwargs: env arguments (simulator=, device=, slate_size=, ...).
        hidden: widths of the policy and value MLPs.
        train_batch: env steps per training iteration (all runners together).
        minibatch: SGD minibatch.
        epochs: passes over each training batch.
        lr: Adam learning rate.
        seed: seed of the runners' envs and the network.

    Raises:
        ImportError: Ray (RLlib) is not installed.
        ValueError: env_runners or envs_per_runner < 1.
    """
    if env_runners < 1 or envs_per_runner < 1:
        raise ValueError(
            f"env_runners and envs_per_runner must be >= 1, got {env_runners}, {envs_per_runner}"
        )
    import os

    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")  # never report usage over the network
    try:
        from ray.rllib.algorithms.ppo import PPOConfig
    except ImportError as exc:
        raise ImportError(
            f"RLlib needs the [ray] extra: pip install 'llm-usersim[ray]' ({exc})"
        ) from None
    from ray.rllib.core.rl_module.default_model_config import DefaultModelConfig

    return (
        PPOConfig()
        .environment(f"recsim_env:{env_id}", env_config=dict(env_kwargs or {}))
        .framework("torch")
        .env_runners(
            num_env_runners=env_runners,
            num_envs_per_env_runner=envs_per_runner,
            num_cpus_per_env_runner=1,
            gym_env_vectorize_mode="vector_entry_point",
            rollout_fragment_length="auto",
            # RLlib 2.60 types this callable with one argument but calls it with three
            env_to_module_connector=flatten_observations,  # type: ignore[arg-type]
        )
        .learners(num_learners=0)  # the learner in the driver process
        .training(
            train_batch_size_per_learner=train_batch,
            minibatch_size=minibatch,
            num_epochs=epochs,
            lr=lr,
        )
        .rl_module(model_config=DefaultModelConfig(fcnet_hiddens=list(hidden)))
        .debugging(seed=seed)
    )


def flatten_observations(env: Any, spaces: Any, device: Any) -> Any:
    """The env-to-module connector: RLlib's FlattenObservations without `DROPPED_KEYS`.

    RLlib calls it with the vector env (None in the driver's local EnvRunner) and
    `{"__env_single__": (observation space, action space), ...}`.
    """
    from ray.rllib.connectors.env_to_module import FlattenObservations
    from ray.rllib.env import INPUT_ENV_SINGLE_SPACES

    obs, act = (spaces or {}).get(INPUT_ENV_SINGLE_SPACES, (None, None))
    if obs is None and env is not None:
        obs, act = env.single_observation_space, env.single_action_space
    return FlattenObservations(obs, act, keys_to_remove=list(DROPPED_KEYS))


def rollout_throughput(result: dict[str, Any], env_runners: int) -> dict[str, float]:
    """Rollout figures of one `algo.train()` result.

    Returns:
        env_steps (sampled this iteration, all runners), sample_seconds (mean time of one
        runner's `sample()`), per_env_runner (env steps per second of one runner while it
        samples) and iteration (env steps per second of the whole iteration, learning
        included), episode_return_mean.
    """
    runners = result["env_runners"]
    steps = float(runners["num_env_steps_sampled"])
    sample = float(runners["sample"])
    return {
        "env_steps": steps,
        "sample_seconds": sample,
        "per_env_runner": steps / env_runners / sample if sample > 0 else float("nan"),
        "iteration": steps / float(result["time_this_iter_s"]),
        "episode_return_mean": float(runners.get("episode_return_mean", float("nan"))),
    }
