"""`llm-usersim validate`: how faithful is a simulated user, and do policies transfer?

With no arguments: the embedded default simulator against the default ground-truth world on
fresh held-out users (seed 99991, never used in training). See `evaluation.fidelity.report` for
what each section measures and where the held-out events come from.
"""

from __future__ import annotations

import argparse
import logging
from pathlib import Path

from recsim_env.cli import UsageError
from recsim_env.cli._common import progress_enabled, write_json
from recsim_env.log_generation import POLICIES

HELP = "Fidelity report: responses, sessions, ground truth, policy ranking, sim-to-real."


def add_arguments(p: argparse.ArgumentParser) -> None:
    """Flags of validate."""
    from evaluation.fidelity.report import DEFAULT_HELDOUT_SEED, ValidateConfig

    d = ValidateConfig()
    p.add_argument("--sim", default=None, help="simulator checkpoint (default: the embedded one)")
    p.add_argument(
        "--logs",
        default=None,
        help="log directory to validate on (default: fresh held-out users of the world); "
        "for the simulator's own training logs, the users train-sim held out are used",
    )
    p.add_argument(
        "--world",
        default=d.world,
        help="ground truth: auto (the logs' or the training logs' world), default, none, or a "
        "JSON file of WorldConfig fields",
    )
    p.add_argument(
        "--users",
        type=int,
        default=d.users,
        help=f"held-out users (default {d.users}; at most this many with --logs)",
    )
    p.add_argument(
        "--seed",
        type=int,
        default=DEFAULT_HELDOUT_SEED,
        help=f"seed of the held-out users and of the ranking's users (default {DEFAULT_HELDOUT_SEED})",
    )
    p.add_argument(
        "--policy",
        default=None,
        choices=POLICIES,
        help="logging policy of fresh held-out users (default: the training logs')",
    )
    p.add_argument(
        "--baseline-users",
        type=int,
        default=d.baseline_users,
        help="fresh users the click baselines are fitted on when the training logs are unknown",
    )
    p.add_argument(
        "--warm-users",
        type=int,
        default=d.warm_users,
        help="training users evaluated as warm users (with the training logs as --logs)",
    )
    p.add_argument(
        "--policies",
        default=",".join(d.policies),
        help="comma-separated policies of the ranking (agents.registry names, SB3 specs)",
    )
    p.add_argument(
        "--policy-users", type=int, default=d.policy_users, help="users per policy and env"
    )
    p.add_argument(
        "--policy-envs", type=int, default=d.policy_envs, help="rows of the ranking's envs"
    )
    p.add_argument("--no-ranking", action="store_true", help="skip the policy ranking")
    p.add_argument("--ppo", default=None, help="a trained SB3 model to rank ('ppo:PATH' or .zip)")
    p.add_argument(
        "--sim2real",
        action="store_true",
        help="train PPO on the simulator and on the world (same budget), compare on the world",
    )
    p.add_argument(
        "--ppo-steps",
        type=int,
        default=d.ppo_steps,
        help=f"env steps of each --sim2real PPO run (default {d.ppo_steps})",
    )
    p.add_argument("--pool", type=int, default=d.pool, help="batch rows of simulated sessions")
    p.add_argument("--device", default=d.device, help="simulator device (cpu, cuda, ...)")
    p.add_argument(
        "--threads",
        type=int,
        default=1,
        help="CPU threads of torch and numpy's BLAS (default 1: the per-step forwards are "
        "small, and extra threads spin against other processes on a shared machine)",
    )
    p.add_argument("--ppo-envs", type=int, default=d.ppo_envs, help="envs of each PPO run")
    p.add_argument(
        "--ppo-seeds",
        type=int,
        default=d.ppo_seeds,
        help=f"--sim2real PPO pairs, one per seed; the ratio is of their mean returns "
        f"(default {d.ppo_seeds})",
    )
    p.add_argument("--json", default=None, help="write the figures as JSON")
    p.add_argument("--report", default=None, help="write a Markdown report (plots beside it)")


def run(args: argparse.Namespace) -> int:
    """Validate, print the headline figures, write the requested files."""
    from evaluation.fidelity.render import write_report
    from evaluation.fidelity.report import ValidateConfig, run_validation

    logging.basicConfig(level=logging.WARNING, format="%(message)s")
    if args.logs is not None and not Path(args.logs).is_dir():
        raise FileNotFoundError(f"{args.logs}: no such log directory")
    if args.sim is not None and not Path(args.sim).is_dir():
        raise FileNotFoundError(f"{args.sim}: no such simulator directory")
    if args.threads < 1:
        raise UsageError(f"--threads must be >= 1, got {args.threads}")
    import torch

    torch.set_num_threads(args.threads)
    policies = tuple(s.strip() for s in args.policies.split(",") if s.strip())
    if not policies and not args.no_ranking:
        raise UsageError("--policies is empty")
    cfg = ValidateConfig(
        sim=args.sim,
        logs=args.logs,
        world=args.world,
        users=args.users,
        seed=args.seed,
        policy=args.policy,
        baseline_users=args.baseline_users,
        warm_users=args.warm_users,
        ranking=not args.no_ranking,
        policies=policies,
        policy_users=args.policy_users,
        policy_envs=args.policy_envs,
        ppo=args.ppo,
        sim2real=args.sim2real,
        ppo_steps=args.ppo_steps,
        ppo_envs=args.ppo_envs,
        ppo_seeds=args.ppo_seeds,
        pool=args.pool,
        device=args.device,
        progress=progress_enabled(),
    )
    try:  # numpy's BLAS threads too (scikit-learn depends on threadpoolctl)
        from threadpoolctl import threadpool_limits
    except ImportError:  # pragma: no cover
        res = run_validation(cfg)
    else:
        with threadpool_limits(limits=args.threads):
            res = run_validation(cfg)
    print(summary(res))
    write_json(args.json, res)
    if args.json:
        print(f"wrote JSON to {args.json}")
    if args.report:
        files = write_report(res, args.report)
        print(f"wrote report to {args.report} ({len(files) - 1} plots beside it)")
    return 0


def summary(res: dict) -> str:
    """The headline figures as aligned text lines."""

    def f(v: object) -> str:
        return "-" if v is None else (f"{v:.4f}" if isinstance(v, float) else str(v))

    s = res["setup"]
    lines = [
        f"validate: {s['simulator']} on {s['heldout_users']} held-out users "
        f"({s['heldout_events']} slot events), {s['seconds']['total']:.0f}s",
        f"  click AUC {f(res['click_auc'])} (oracle {f(res['oracle_click_auc'])}, popularity "
        f"{f(res['popularity_click_auc'])}, logreg {f(res['logreg_click_auc'])}, gbdt "
        f"{f(res['gbdt_click_auc'])}); cold items {f(res['cold_item_click_auc'])}",
        f"  buy AUC {f(res['buy_auc'])}  click log-loss {f(res['click_logloss'])}  "
        f"ECE {f(res['ece_click'])}",
        f"  KL per slot {f(res['kl_per_slot'])} (floor {f(res['kl_floor'])})  "
        f"KL leave {f(res['kl_leave'])}  session-length KS {f(res['session_length_ks'])}",
        f"  Kendall tau-b {f(res['kendall_tau'])}  sim2real ratio {f(res['sim2real_ratio'])}",
    ]
    pe = res.get("profile_effect") or {}
    if pe.get("sim"):
        oracle = pe.get("oracle") or {}
        lines.append(
            f"  profile effect: click AUC {f(pe['sim']['click_auc_difference'])} (oracle "
            f"{f(oracle.get('click_auc_difference'))}), log-loss "
            f"{f(pe['sim']['click_logloss_difference'])} (oracle "
            f"{f(oracle.get('click_logloss_difference'))})"
        )
    for name, r in res["policy_returns"].items():
        lines.append(f"    {name:<10} sim {r['sim']:8.2f}  true {r['true']:8.2f}")
    return "\n".join(lines)
