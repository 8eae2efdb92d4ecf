"""`make_model`: an SB3 model for a slate VecEnv with hyperparameters tuned here."""

from __future__ import annotations

from typing import Any, cast

from gymnasium import spaces
from stable_baselines3.common.vec_env import VecEnv

from agents.sb3.loading import METADATA_ATTR, SB3_ALGOS
from agents.sb3.policy import SlateFeaturesExtractor, SlatePolicy
from agents.sb3.vec_env import SlateVecEnv
from recsim_env.wrappers import DISCRETE_SLATE_RULE

POLICIES: tuple[str, ...] = ("slate", "mlp")
"""`slate`: SlatePolicy (candidate scoring, PPO/A2C) or MultiInputPolicy with
SlateFeaturesExtractor (DQN); `mlp`: SB3's plain MultiInputPolicy (CombinedExtractor)."""


ROLLOUT_SIZE = 1024
"""PPO collects about this many transitions per update (n_steps = ROLLOUT_SIZE // num_envs)."""


def default_hyperparams(algo: str) -> dict[str, Any]:
    """Hyperparameters tuned on ParametricUserSim-v0 (20 candidates, slates of 5).

    Rewards here are mostly immediate (clicks on this slate), and the policy gradient of a
    whole slate is noisy, so a short horizon (gamma 0.5) learns far faster than the usual 0.99
    (0.8 and 0.95 were clearly slower within 150k steps); small rollouts with many epochs give
    enough policy updates in a CPU budget of a few minutes.
    """
    algo = algo.lower()
    if algo == "ppo":
        return {
            "n_steps": 32,
            "batch_size": 256,
            "n_epochs": 10,
            "learning_rate": 3e-3,
            "gamma": 0.5,
            "gae_lambda": 0.9,
            "clip_range": 0.3,
            "ent_coef": 0.0,
        }
    if algo == "a2c":
        return {"n_steps": 8, "learning_rate": 1e-3, "gamma": 0.5, "ent_coef": 0.0}
    if algo == "dqn":
        return {
            "learning_rate": 1e-3,
            "buffer_size": 50_000,
            "learning_starts": 1_000,
            "batch_size": 128,
            "gamma": 0.5,
            "train_freq": 4,
            "target_update_interval": 1_000,
            "exploration_fraction": 0.3,
            "exploration_final_eps": 0.05,
        }
    raise ValueError(f"unknown algorithm {algo!r}; one of {', '.join(SB3_ALGOS)}")


def console_logger(verbose: int) -> Any:
    """An SB3 logger that writes to stdout (verbose >= 1) or nowhere, and no folder.

    SB3's own logger without `tensorboard_log` still creates an empty folder in the temp
    directory at every `learn()`.
    """
    import sys

    from stable_baselines3.common.logger import HumanOutputFormat, Logger

    return Logger(folder=None, output_formats=[HumanOutputFormat(sys.stdout)] if verbose else [])


def make_model(
    algo: str,
    venv: VecEnv,
    policy: str = "slate",
    seed: int | None = None,
    tensorboard_log: str | None = None,
    verbose: int = 0,
    device: str = "cpu",
    **overrides: Any,
) -> Any:
    """An SB3 model for a slate VecEnv (from `make_sb3_vec_env`) with our defaults.

    Args:
        algo: ppo, a2c or dqn (dqn needs `make_sb3_vec_env(..., discrete=True)`).
        venv: the training VecEnv.
        policy: see POLICIES.
        seed: seed of the model (SB3's `seed`).
        tensorboard_log: TensorBoard directory (None: no logs).
        verbose: SB3's verbosity.
        device: torch device of the policy.
        **overrides: hyperparameters replacing `default_hyperparams(algo)`.
    """
    import stable_baselines3 as sb3

    algo = algo.lower()
    if policy not in POLICIES:
        raise ValueError(f"unknown policy {policy!r}; one of {', '.join(POLICIES)}")
    discrete = isinstance(venv.action_space, spaces.Discrete)
    observed = getattr(venv.observation_space, "spaces", {})
    if policy == "slate" and (
        not (discrete or isinstance(venv.action_space, spaces.MultiDiscrete))
        or not {"history_responses", "candidate_ids"} <= set(observed)
    ):
        raise ValueError(
            "the slate policy gives slates and reads the whole observation: build the env with "
            "make_sb3_vec_env(id, n, **recsim_env.config.SLATE_AGENT_KWARGS); on the default env "
            f"({venv.action_space} actions, observing {sorted(observed)}) use policy='mlp' or "
            "SB3's own PPO('MultiInputPolicy', venv)"
        )
    if (algo == "dqn") != discrete:
        raise ValueError(
            "DQN needs Discrete actions (make_sb3_vec_env(..., discrete=True)) and PPO/A2C "
            f"the slate's MultiDiscrete actions; got {algo} with {venv.action_space}"
        )
    hp = {**default_hyperparams(algo), **overrides}
    if algo == "ppo" and "n_steps" not in overrides:
        # about ROLLOUT_SIZE transitions per update, whatever the number of envs: the policy
        # needs many small updates more than long rollouts
        hp["n_steps"] = max(8, ROLLOUT_SIZE // venv.num_envs)
        if "batch_size" not in overrides:
            hp["batch_size"] = min(hp["batch_size"], hp["n_steps"] * venv.num_envs)
    cls = {"ppo": sb3.PPO, "a2c": sb3.A2C, "dqn": sb3.DQN}[algo]
    if policy == "mlp":
        policy_cls: Any = "MultiInputPolicy"
    elif algo == "dqn":
        policy_cls = "MultiInputPolicy"
        hp.setdefault("policy_kwargs", {"features_extractor_class": SlateFeaturesExtractor})
    else:
        policy_cls = SlatePolicy
    model = cls(
        policy_cls,
        venv,
        seed=seed,
        tensorboard_log=tensorboard_log,
        verbose=verbose,
        device=device,
        **hp,
    )
    if tensorboard_log is None:  # SB3 would make an empty /tmp/SB3-<time> folder per learn()
        model.set_logger(console_logger(verbose))
    spec = getattr(venv.unwrapped, "spec", None)
    setattr(
        model,
        METADATA_ATTR,
        {
            "algo": algo,
            "policy": policy,
            "env_id": getattr(spec, "id", None),
            "slate_size": int(cast(SlateVecEnv, venv.unwrapped).config.slate_size),
            "action": DISCRETE_SLATE_RULE if discrete else "slate",
            "hyperparams": {k: v for k, v in hp.items() if isinstance(v, (int, float, str, bool))},
        },
    )
    return model
