"""`llm-usersim generate-logs`: sessions of fresh ground-truth users, written as Parquet logs."""

from __future__ import annotations

import argparse
from pathlib import Path

from recsim_env.cli._common import progress_enabled
from recsim_env.cli.args import int_at_least, nonnegative_int, output_dir, positive_int
from recsim_env.config import EnvConfig
from recsim_env.log_generation import POLICIES, generate, summarize
from simulators.atomic import exclusive_output
from simulators.logs import check_log_output, write_logs
from simulators.parametric import ParametricUserModel, WorldConfig

HELP = "Write interaction logs of fresh ground-truth-world users (Parquet)."
MAX_USERS = 5_000_000
"""Users one run may log: the sessions are built in memory (about 2 KB a user) before the
set is written whole."""


def add_arguments(p: argparse.ArgumentParser) -> None:
    """Flags of generate-logs."""
    p.add_argument(
        "--users", type=int_at_least(1, MAX_USERS), default=2000, help="users (one session each)"
    )
    p.add_argument(
        "--policy",
        default="random",
        choices=POLICIES,
        help="logging policy: random slates, most popular first, sampled by the user's appeal "
        "(personalized), half random/half popular per user (mixed), or a third each (varied)",
    )
    p.add_argument(
        "--seed", type=nonnegative_int, default=0, help="seed of the users and their responses"
    )
    p.add_argument(
        "--out",
        type=output_dir,
        required=True,
        help="output log directory (new, empty, or an earlier log set, replaced whole)",
    )
    d = EnvConfig()
    p.add_argument("--slate-size", type=positive_int, default=d.slate_size, help="items per slate")
    p.add_argument(
        "--num-candidates", type=positive_int, default=d.num_candidates, help="candidates per step"
    )
    p.add_argument(
        "--max-steps",
        type=positive_int,
        default=d.max_episode_steps,
        help="steps per session at most",
    )
    p.add_argument(
        "--world-seed", type=nonnegative_int, default=WorldConfig().seed, help="seed of the world"
    )
    p.add_argument("--batch", type=positive_int, default=1024, help="users simulated together")


def run(args: argparse.Namespace) -> int:
    """Generate and write the logs, then print their statistics."""
    cfg = EnvConfig(
        slate_size=args.slate_size,
        num_candidates=args.num_candidates,
        max_episode_steps=args.max_steps,
    )
    world = ParametricUserModel(WorldConfig(seed=args.world_seed))
    if cfg.num_candidates > world.num_items:
        raise ValueError(
            f"--num-candidates {cfg.num_candidates} exceeds the world's {world.num_items} items"
        )
    check_log_output(args.out)  # before the work: an output that cannot take logs fails now
    with exclusive_output(args.out):  # a second writer of the same --out fails at once
        logs = generate(
            args.users, args.policy, args.seed, cfg, world, args.batch, progress_enabled()
        )
        write_logs(logs, Path(args.out))
    stats = summarize(logs)
    print(f"wrote {stats['steps']} steps of {stats['sessions']} sessions to {args.out}")
    for key, value in stats.items():
        print(f"  {key}: {value}")
    return 0
