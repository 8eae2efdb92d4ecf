"""Train RLlib's PPO on LLMUserSim-v0 with several EnvRunners (Ray 2.60, new API stack).

The config is `agents.rllib.ppo_config`: the env by its module-qualified id (gymnasium imports
`recsim_env` in every EnvRunner), each EnvRunner stepping `envs_per_runner` users through the
native vector env (one batched GPT-2 call per step), the Dict observation flattened by RLlib's
`FlattenObservations` connector (raw catalog ids dropped), the MultiDiscrete slate as it is.
Every iteration prints the mean episode return and the rollout throughput per EnvRunner; the
trained algorithm is saved with `algo.save_to_path` (`Algorithm.from_checkpoint` restores it).

Needs `pip install 'llm-usersim[ray]'` (ray==2.60.0 and dm_tree; not `ray[rllib]`, which would
downgrade gymnasium).

Run:
    python examples/rllib_ppo.py                         # embedded default simulator, 2 runners
    python examples/rllib_ppo.py --env-runners 4 --iterations 50
    RAY_ADDRESS=HOST:PORT python examples/rllib_ppo.py   # on a running cluster
    python examples/rllib_ppo.py --smoke                 # one small iteration (about 40 s)
"""

from __future__ import annotations

import dataclasses
import os
import time
from dataclasses import dataclass
from pathlib import Path

import torch
from _args import parse_dataclass  # examples/_args.py

from agents.rllib import ppo_config, rollout_throughput
from evaluation.distributed import import_ray


@dataclass
class Args:
    """Settings; defaults do a real run, --smoke a tiny one."""

    env_id: str = "LLMUserSim-v0"
    simulator: str = ""
    """Checkpoint directory (empty: the embedded default)."""
    env_runners: int = 2
    """EnvRunner actors (one CPU each)."""
    envs_per_runner: int = 32
    """Users each EnvRunner steps together."""
    iterations: int = 20
    """Training iterations (`algo.train()` calls)."""
    train_batch: int = 4096
    """Env steps per iteration (all runners)."""
    minibatch: int = 512
    epochs: int = 4
    seed: int = 0
    out: str = "runs/rllib_ppo"
    """Directory of the saved algorithm (OUT/checkpoint)."""
    smoke: bool = False
    """One small iteration with short episodes."""


def main() -> None:
    """Train, report, save."""
    args = parse_dataclass(Args, __doc__)
    if args.smoke:
        args = dataclasses.replace(
            args, iterations=1, envs_per_runner=4, train_batch=128, minibatch=64, epochs=1
        )
    torch.set_num_threads(1)
    env_kwargs: dict = {"max_episode_steps": 12} if args.smoke else {}
    if args.simulator:
        env_kwargs["simulator"] = args.simulator
    ray = import_ray()
    t0 = time.perf_counter()
    if os.environ.get("RAY_ADDRESS"):
        ray.init(include_dashboard=False, log_to_driver=False)
    else:
        ray.init(num_cpus=args.env_runners, include_dashboard=False, log_to_driver=False)
    config = ppo_config(
        args.env_id,
        env_runners=args.env_runners,
        envs_per_runner=args.envs_per_runner,
        env_kwargs=env_kwargs,
        train_batch=args.train_batch,
        minibatch=args.minibatch,
        epochs=args.epochs,
        seed=args.seed,
    )
    algo = config.build_algo()
    print(f"built PPO with {args.env_runners} env runners in {time.perf_counter() - t0:.0f}s")
    try:
        for i in range(args.iterations):
            t = rollout_throughput(algo.train(), args.env_runners)
            print(
                f"iteration {i}: return {t['episode_return_mean']:.2f}, {t['env_steps']:.0f} env "
                f"steps, {t['per_env_runner']:.0f} env steps/s per env runner while sampling "
                f"({t['iteration']:.0f}/s for the whole iteration)"
            )
        path = algo.save_to_path(str(Path(args.out).resolve() / "checkpoint"))
        print(f"saved {path}")
    finally:
        algo.stop()
        ray.shutdown()


if __name__ == "__main__":
    main()
