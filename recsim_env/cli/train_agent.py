"""`llm-usersim train-agent`: train a stable-baselines3 agent (PPO, A2C, DQN) on simulated users.

All `--num-envs` users are stepped in one batch (`agents.sb3.SlateVecEnv` over the native vector
env: one simulator call per step). PPO and A2C use `agents.sb3.SlatePolicy` (a MultiInputPolicy
that scores candidates with a shared network) unless `--policy mlp`; DQN acts with Discrete
actions, "the candidate to lead the slate with", the rest filled by the candidates most similar
to it (`recsim_env.wrappers.discrete_to_slate`).

Writes the policy as OUT/policy.safetensors + OUT/policy.json (loaded without running any code
from the files: `agents.sb3.policy_files.load_policy`, or `llm-usersim benchmark --agents
ppo:OUT`), OUT/train_config.json and TensorBoard logs in OUT/tb. At the end
the model and a random policy play one episode each with `--eval-users` users (user i seeded
`--eval-seed` + i, as in the benchmark); the mean returns and 95% CIs are printed.

Nothing is pickled: the policy is safetensors + JSON like the simulators.

Reference budget (PPO, default hyperparameters, `--steps 100000`, CPU, 1 torch thread; 500
evaluation users, mean return with 95% CI):

- ParametricUserSim-v0, `--num-envs 32`: about 1.5 min; PPO 18.8 (16.4-21.3) vs random 7.3
  (6.4-8.1); seed 1: 21.2 (18.3-24.0).
- LLMUserSim-v0 (embedded default simulator), `--num-envs 64`: about 6 min on a busy 2-core
  machine (264 steps/s); PPO 13.5 (11.8-15.2) vs random 8.4 (7.3-9.5), paired difference +5.1
  (+3.5 to +6.7); seed 1: 14.3 (12.5-16.1).
"""

from __future__ import annotations

import argparse
from typing import Any

from recsim_env.cli import UsageError
from recsim_env.cli._common import progress_enabled, write_json
from recsim_env.cli.args import (
    device,
    env_id,
    env_kwargs_json,
    existing_dir,
    float_in,
    int_at_least,
    json_object,
    misplaced_env_kwarg,
    nonnegative_int,
    output_dir,
    output_file,
    unit_interval,
)

HELP = (
    "Train a stable-baselines3 agent (ppo, a2c, dqn) on simulated users; saves its policy in OUT."
)
ALGOS = ("ppo", "a2c", "dqn")
DEFAULT_ENV = "LLMUserSim-v0"


def add_arguments(p: argparse.ArgumentParser) -> None:
    """Flags of train-agent."""
    from evaluation.agent_training import AgentTrainingConfig

    d = AgentTrainingConfig()
    p.add_argument("--algo", default=d.algo, choices=ALGOS, help="SB3 algorithm")
    p.add_argument("--env", type=env_id, default=DEFAULT_ENV, help="env id")
    p.add_argument(
        "--steps",
        type=int_at_least(1, 10**10),
        default=d.steps,
        help="environment steps to train (PPO/A2C round up to whole rollouts of "
        "n-steps x num-envs)",
    )
    p.add_argument(
        "--out",
        type=output_dir,
        required=True,
        help="output directory (policy.safetensors + policy.json, train_config.json, tb/)",
    )
    p.add_argument(
        "--num-envs",
        type=int_at_least(1, 1 << 16),
        default=d.num_envs,
        help="users stepped together",
    )
    p.add_argument(
        "--seed", type=nonnegative_int, default=d.seed, help="seed of the model and training users"
    )
    p.add_argument(
        "--sim",
        type=existing_dir,
        default=None,
        help="LLMUserSim-v0 simulator checkpoint directory",
    )
    p.add_argument("--device", type=device, default=None, help="LLMUserSim-v0 simulator device")
    p.add_argument(
        "--policy",
        default=d.policy,
        choices=("slate", "mlp"),
        help="slate: candidate-scoring policy; mlp: SB3's plain MultiInputPolicy",
    )
    p.add_argument(
        "--lr",
        type=float_in(0.0, 1.0, low_open=True),
        default=None,
        help="learning rate (default: tuned)",
    )
    p.add_argument(
        "--n-steps",
        type=int_at_least(1, 1 << 20),
        default=None,
        help="PPO/A2C rollout length per env",
    )
    p.add_argument(
        "--batch-size", type=int_at_least(1, 1 << 20), default=None, help="PPO/DQN minibatch size"
    )
    p.add_argument(
        "--ent-coef", type=float_in(0.0, 10.0), default=None, help="PPO/A2C entropy coefficient"
    )
    p.add_argument("--gamma", type=unit_interval, default=None, help="discount factor in [0, 1]")
    p.add_argument(
        "--hyperparams",
        type=json_object,
        default=None,
        help="more SB3 keyword arguments as JSON, e.g. '{\"n_epochs\": 10}'",
    )
    p.add_argument(
        "--env-kwargs",
        type=env_kwargs_json,
        default=None,
        help='env arguments as JSON, e.g. \'{"slate_size": 3, "num_candidates": 8}\'',
    )
    p.add_argument(
        "--eval-users",
        type=int_at_least(0, 10**7),
        default=d.eval_users,
        help="users of the final evaluation",
    )
    p.add_argument(
        "--eval-seed", type=nonnegative_int, default=d.eval_seed, help="seed of evaluation user 0"
    )
    p.add_argument(
        "--no-random", action="store_true", help="skip the random-policy reference evaluation"
    )
    p.add_argument(
        "--progress",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="progress bar (default: unless --quiet)",
    )
    p.add_argument("--json", type=output_file, default=None, help="write the summary as JSON")


def _env_kwargs(args: argparse.Namespace) -> dict[str, Any]:
    kwargs = dict(args.env_kwargs or {})
    misplaced = misplaced_env_kwarg(kwargs, args.env)
    if misplaced:
        raise UsageError(misplaced)
    llm = args.env == "LLMUserSim-v0"
    if args.sim is not None:
        if not llm:
            raise UsageError(f"--sim applies to LLMUserSim-v0, not {args.env}")
        kwargs["simulator"] = str(args.sim)
    if args.device is not None:
        if not llm:
            raise UsageError(f"--device applies to LLMUserSim-v0, not {args.env}")
        kwargs["device"] = args.device
    return kwargs


def _hyperparams(args: argparse.Namespace) -> dict[str, Any]:
    hp = dict(args.hyperparams or {})
    flags = {
        "learning_rate": args.lr,
        "n_steps": args.n_steps,
        "batch_size": args.batch_size,
        "ent_coef": args.ent_coef,
        "gamma": args.gamma,
    }
    for key, value in flags.items():
        if value is None:
            continue
        if args.algo == "dqn" and key in ("n_steps", "ent_coef"):
            raise UsageError(f"--{key.replace('_', '-')} does not apply to dqn")
        if args.algo == "a2c" and key == "batch_size":
            raise UsageError("--batch-size does not apply to a2c")
        hp[key] = value
    return hp


def run(args: argparse.Namespace) -> int:
    """Train, save, evaluate against random and report."""
    from evaluation.agent_training import AgentTrainingConfig, train_and_evaluate

    cfg = AgentTrainingConfig(
        algo=args.algo,
        env=args.env,
        steps=args.steps,
        out=args.out,
        num_envs=args.num_envs,
        seed=args.seed,
        policy=args.policy,
        hyperparams=_hyperparams(args),
        env_kwargs=_env_kwargs(args),
        eval_users=args.eval_users,
        eval_seed=args.eval_seed,
        random_reference=not args.no_random,
    )
    progress = progress_enabled() if args.progress is None else args.progress
    res = train_and_evaluate(cfg, progress=progress)
    steps, seconds = res["timesteps"], res["seconds"]
    print(
        f"trained {args.algo} for {steps} steps in {seconds:.0f}s "
        f"({steps / max(seconds, 1e-9):.0f} steps/s); saved {res['model']}"
    )
    if "mean_return" in res:
        lo, hi = res["return_ci95"]
        print(
            f"{args.algo}: mean return {res['mean_return']:.3f} (95% CI {lo:.3f} to {hi:.3f}) "
            f"over {args.eval_users} users"
        )
    if "random_mean_return" in res:
        (rlo, rhi), (dlo, dhi) = res["random_return_ci95"], res["gain_over_random_ci95"]
        print(
            f"random: mean return {res['random_mean_return']:.3f} (95% CI {rlo:.3f} to "
            f"{rhi:.3f}) over {args.eval_users} users\n"
            f"{args.algo} - random: {res['gain_over_random']:+.3f} (paired 95% CI {dlo:+.3f} "
            f"to {dhi:+.3f})"
        )
    write_json(args.json, res)
    return 0
