"""`llm-usersim benchmark`: evaluate baseline agents and saved SB3 models on simulated users.

What is measured and how is `evaluation.benchmark`; this module parses flags, reports progress
and writes the table, JSON, CSV and plot.
"""

from __future__ import annotations

import argparse

from recsim_env.cli import UsageError
from recsim_env.cli._common import progress_enabled, write_json

HELP = "Evaluate baseline agents and SB3 models on simulated users (table, JSON, CSV, plot)."


def add_arguments(p: argparse.ArgumentParser) -> None:
    """Flags of benchmark."""
    from evaluation.benchmark import BenchmarkConfig

    d = BenchmarkConfig()
    p.add_argument("--env", default=d.env, help="env id")
    p.add_argument(
        "--agents",
        default=None,
        help="comma-separated agents: baselines (random, popular, greedy, linucb, thompson, "
        "slateq, text_sim) and SB3 models ('ppo:PATH.zip'); default: all baselines",
    )
    p.add_argument("--users", type=int, default=d.users, help="simulated users (one episode each)")
    p.add_argument("--seed", type=int, default=d.seed, help="user i is seeded with seed + i")
    p.add_argument("--json", default=None, help="write the figures as JSON")
    p.add_argument("--csv", default=None, help="write the figures as CSV")
    p.add_argument("--plot", default=None, help="write a bar plot with 95%% CIs (PNG)")
    p.add_argument("--batch", type=int, default=d.batch, help="users simulated together (num_envs)")
    p.add_argument(
        "--logs",
        default=None,
        help="log directory for the popularity counts (default: a random-policy run)",
    )
    p.add_argument(
        "--log-users",
        type=int,
        default=None,
        help="users of the random-policy popularity run (default: --users)",
    )
    p.add_argument("--simulator", default=None, help="LLMUserSim-v0 simulator checkpoint")
    p.add_argument("--device", default=None, help="LLMUserSim-v0 device (cpu, cuda, ...)")
    p.add_argument(
        "--ray",
        nargs="?",
        const="",
        default=None,
        metavar="ADDRESS",
        help="split the users across Ray actors (one per CPU, or per GPU with --device cuda): "
        "a running cluster's HOST:PORT or auto; no address: start a local Ray runtime "
        "(pip install 'llm-usersim[ray]'); the figures equal a one-process run's",
    )


def _agents(spec: str | None) -> tuple[str, ...]:
    if spec is None:
        return ()
    names = tuple(dict.fromkeys(s.strip() for s in spec.split(",") if s.strip()))
    if not names:
        raise UsageError("--agents is empty: name at least one agent")
    return names


def run(args: argparse.Namespace) -> int:
    """Evaluate every agent, print the table and write the requested files."""
    from threadpoolctl import threadpool_limits
    from tqdm.auto import tqdm

    from evaluation.benchmark import (
        BenchmarkConfig,
        format_table,
        run_benchmark,
        write_csv,
        write_plot,
    )
    from evaluation.distributed import DistributedError, RayConfig

    env_kwargs = {}
    if args.simulator is not None:
        env_kwargs["simulator"] = args.simulator
    if args.device is not None:
        env_kwargs["device"] = args.device
    cfg = BenchmarkConfig(
        env=args.env,
        agents=_agents(args.agents),
        users=args.users,
        seed=args.seed,
        batch=args.batch,
        logs=args.logs,
        log_users=args.log_users,
        env_kwargs=env_kwargs,
    )
    ray = None if args.ray is None else RayConfig(address=args.ray or None)
    from agents.registry import BASELINES

    bar = tqdm(
        total=len(cfg.agents or BASELINES) * cfg.users,
        desc="benchmark",
        unit="user",
        disable=not progress_enabled(),
    )
    # the agents' matrices are small: threaded BLAS made SlateQ over 10x slower on 2 shared cores
    with threadpool_limits(limits=1, user_api="blas"):
        try:
            results = run_benchmark(cfg, on_agent=bar.set_postfix_str, on_done=bar.update, ray=ray)
        except DistributedError as exc:  # the cluster's fault, told as one line
            raise UsageError(str(exc)) from exc
    bar.close()
    print(f"{args.env}: {args.users} users, seed {args.seed} (mean ± 95% CI half-width)")
    print(format_table(results))
    write_json(
        args.json, {"agents": results, "env": args.env, "users": args.users, "seed": args.seed}
    )
    if args.csv:
        write_csv(args.csv, results)
    if args.plot:
        write_plot(args.plot, results, f"{args.env}, {args.users} users, seed {args.seed}")
    for label, path in (("JSON", args.json), ("CSV", args.csv), ("plot", args.plot)):
        if path:
            print(f"wrote {label} to {path}")
    return 0
