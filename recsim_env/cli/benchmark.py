"""`llm-usersim benchmark`: evaluate baseline agents and saved SB3 models on simulated users.

What is measured and how is `evaluation.benchmark`; this module parses flags, reports progress
and writes the table, JSON, CSV and plot.
"""

from __future__ import annotations

import argparse
import json

from recsim_env.cli import UsageError
from recsim_env.cli._common import progress_enabled, write_json
from recsim_env.cli.args import (
    check_device_here,
    device_name,
    env_id,
    env_kwargs_json,
    existing_dir,
    int_at_least,
    misplaced_env_kwarg,
    name_list,
    nonnegative_int,
    output_file,
)

HELP = "Evaluate baseline agents and SB3 models on simulated users (table, JSON, CSV, plot)."


def add_arguments(p: argparse.ArgumentParser) -> None:
    """Flags of benchmark."""
    from evaluation.benchmark import BenchmarkConfig

    d = BenchmarkConfig()
    p.add_argument("--env", type=env_id, default=d.env, help="env id")
    p.add_argument(
        "--agents",
        type=name_list,
        default=None,
        help="comma-separated agents: baselines (random, popular, greedy, linucb, thompson, "
        "slateq, text_sim) and models trained with train-agent ('ppo:DIR'); default: all "
        "baselines",
    )
    p.add_argument(
        "--users",
        type=int_at_least(1, 10**7),
        default=d.users,
        help="simulated users (one episode each)",
    )
    p.add_argument(
        "--seed", type=nonnegative_int, default=d.seed, help="user i is seeded with seed + i"
    )
    p.add_argument("--json", type=output_file, default=None, help="write the figures as JSON")
    p.add_argument("--csv", type=output_file, default=None, help="write the figures as CSV")
    p.add_argument(
        "--plot",
        type=output_file,
        default=None,
        help="write the figures as a PNG plot (mean ± 95%% CI)",
    )
    p.add_argument(
        "--batch",
        type=int_at_least(1, 1 << 20),
        default=d.batch,
        help="users simulated together (num_envs)",
    )
    p.add_argument(
        "--logs",
        type=existing_dir,
        default=None,
        help="log directory for the popularity counts (default: a random-policy run)",
    )
    p.add_argument(
        "--log-users",
        type=int_at_least(1, 10**7),
        default=None,
        help="users of the random-policy popularity run (default: --users)",
    )
    p.add_argument(
        "--simulator", type=existing_dir, default=None, help="LLMUserSim-v0 simulator checkpoint"
    )
    p.add_argument(
        "--device", type=device_name, default=None, help="LLMUserSim-v0 device (cpu, cuda, cuda:N)"
    )
    p.add_argument(
        "--env-kwargs",
        type=env_kwargs_json,
        default=None,
        help="env arguments as JSON for every agent, e.g. '{\"item_popularity\": true}' for a "
        "policy trained with them (train-agent --env-kwargs)",
    )
    p.add_argument(
        "--trust-sb3-zip",
        action="store_true",
        help="allow agents given as KIND:FILE.zip (third-party SB3 models): loading one "
        "unpickles it, which RUNS CODE stored in the file; use only for files you trust",
    )
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


def run(args: argparse.Namespace) -> int:
    """Evaluate every agent, print the table and write the requested files."""
    from threadpoolctl import threadpool_limits

    from agents.registry import check_agent_spec
    from evaluation.benchmark import (
        BenchmarkConfig,
        format_table,
        run_benchmark,
        write_csv,
        write_plot,
    )
    from evaluation.distributed import DistributedError, RayConfig
    from simulators.progress import progress_bar

    llm_only = [f for f, v in (("--simulator", args.simulator), ("--device", args.device)) if v]
    if args.env != "LLMUserSim-v0" and llm_only:
        raise UsageError(f"{', '.join(llm_only)} applies to LLMUserSim-v0, not {args.env}")
    for name in args.agents or ():
        check_agent_spec(name, args.trust_sb3_zip)  # fails now, not after the popularity run
    env_kwargs: dict[str, object] = _checked_env_kwargs(args.env_kwargs or {}, args.env)
    if args.simulator is not None:
        env_kwargs["simulator"] = str(args.simulator)
    if args.device is not None:
        env_kwargs["device"] = args.device
    cfg = BenchmarkConfig(
        env=args.env,
        agents=tuple(args.agents or ()),
        users=args.users,
        seed=args.seed,
        batch=args.batch,
        logs=args.logs,
        log_users=args.log_users,
        env_kwargs=env_kwargs,
        trust_sb3_zip=args.trust_sb3_zip,
    )
    if args.device and args.ray is None:  # with --ray the actors' machines have the GPUs
        try:
            check_device_here(args.device)
        except argparse.ArgumentTypeError as exc:
            raise UsageError(f"argument --device: {exc}") from None
    ray = None if args.ray is None else RayConfig(address=args.ray or None)
    from agents.registry import BASELINES

    bar = progress_bar(
        len(cfg.agents or BASELINES) * cfg.users, "benchmark", "user", progress_enabled()
    )
    # the agents' matrices are small: threaded BLAS made SlateQ over 10x slower on 2 shared cores
    with threadpool_limits(limits=1, user_api="blas"):
        try:
            results = run_benchmark(cfg, on_agent=bar.set_postfix_str, on_done=bar.update, ray=ray)
        except DistributedError as exc:  # the cluster's fault, told as one line
            raise UsageError(str(exc)) from exc
    bar.close()  # not on an error: its one line is the last thing on stderr
    settings = f", env kwargs {json.dumps(args.env_kwargs)}" if args.env_kwargs else ""
    print(f"{args.env}: {args.users} users, seed {args.seed}{settings} (mean ± 95% CI half-width)")
    print(format_table(results))
    figures = {"agents": results, "env": args.env, "users": args.users, "seed": args.seed}
    write_json(args.json, {**figures, "env_kwargs": dict(args.env_kwargs or {})})
    if args.csv:
        write_csv(args.csv, results)
    if args.plot:
        write_plot(args.plot, results, f"{args.env}, {args.users} users, seed {args.seed}")
    for label, path in (("JSON", args.json), ("CSV", args.csv), ("plot", args.plot)):
        if path:
            print(f"wrote {label} to {path}")
    return 0


def _checked_env_kwargs(kwargs: dict[str, object], env_id: str) -> dict[str, object]:
    """`--env-kwargs` minus what the benchmark fixes or takes by its own flags (UsageError)."""
    from recsim_env.config import SLATE_AGENT_KWARGS

    fixed = sorted(
        k for k, v in kwargs.items() if k in SLATE_AGENT_KWARGS and v != SLATE_AGENT_KWARGS[k]
    )
    if fixed:
        raise UsageError(
            f"--env-kwargs: {', '.join(fixed)} cannot be changed: every agent acts on slates and "
            "reads the full observation with catalog ids (a policy trained on another action "
            "mode or observation acts through them)"
        )
    for key, flag in (("simulator", "--simulator"), ("device", "--device")):
        if key in kwargs:
            raise UsageError(f"--env-kwargs: give {key} as {flag}")
    misplaced = misplaced_env_kwarg(kwargs, env_id)
    if misplaced:
        raise UsageError(misplaced)
    return dict(kwargs)
