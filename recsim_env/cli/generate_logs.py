"""`llm-usersim generate-logs`: sessions of fresh ground-truth users, written as Parquet logs."""

from __future__ import annotations

import argparse
from pathlib import Path

from recsim_env.cli._common import progress_enabled
from recsim_env.config import EnvConfig
from recsim_env.log_generation import POLICIES, generate, summarize
from simulators.logs import write_logs
from simulators.parametric import ParametricUserModel, WorldConfig

HELP = "Write interaction logs of fresh ground-truth-world users (Parquet)."


def add_arguments(p: argparse.ArgumentParser) -> None:
    """Flags of generate-logs."""
    p.add_argument("--users", type=int, default=2000, help="number of users (one session each)")
    p.add_argument(
        "--policy",
        default="random",
        choices=POLICIES,
        help="logging policy: random slates, most popular first, sampled by the user's appeal "
        "(personalized), half random/half popular per user (mixed), or a third each (varied)",
    )
    p.add_argument("--seed", type=int, default=0, help="seed of the users and their responses")
    p.add_argument("--out", required=True, help="output directory")
    p.add_argument("--slate-size", type=int, default=EnvConfig().slate_size)
    p.add_argument("--num-candidates", type=int, default=EnvConfig().num_candidates)
    p.add_argument("--max-steps", type=int, default=EnvConfig().max_episode_steps)
    p.add_argument("--world-seed", type=int, default=WorldConfig().seed)
    p.add_argument("--batch", type=int, default=1024, help="users simulated together")


def run(args: argparse.Namespace) -> int:
    """Generate and write the logs, then print their statistics."""
    cfg = EnvConfig(
        slate_size=args.slate_size,
        num_candidates=args.num_candidates,
        max_episode_steps=args.max_steps,
    )
    world = ParametricUserModel(WorldConfig(seed=args.world_seed))
    logs = generate(args.users, args.policy, args.seed, cfg, world, args.batch, progress_enabled())
    write_logs(logs, Path(args.out))
    stats = summarize(logs)
    print(f"wrote {stats['steps']} steps of {stats['sessions']} sessions to {args.out}")
    for key, value in stats.items():
        print(f"  {key}: {value}")
    return 0
