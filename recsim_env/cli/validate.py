"""`llm-usersim validate`: how faithful is a simulated user, and do policies transfer?

With no arguments: the embedded default simulator against the default ground-truth world on
fresh held-out users (seed 99991, never used in training). See `evaluation.fidelity.report` for
what each section measures and where the held-out events come from.
"""

from __future__ import annotations

import argparse
import json
from typing import Any

from recsim_env.cli import UsageError
from recsim_env.cli._common import progress_enabled, write_json
from recsim_env.cli.args import (
    check_device_here,
    device_name,
    existing_dir,
    existing_file,
    name_list,
    nonnegative_int,
    output_file,
    positive_int,
)
from recsim_env.log_generation import POLICIES
from simulators.wording import plural

HELP = "Fidelity report: responses, sessions, ground truth, policy ranking, sim-to-real."


def add_arguments(p: argparse.ArgumentParser) -> None:
    """Flags of validate."""
    from evaluation.fidelity.report import DEFAULT_HELDOUT_SEED, ValidateConfig

    d = ValidateConfig()
    p.add_argument(
        "--sim",
        type=existing_dir,
        default=None,
        help="simulator checkpoint (default: the embedded one)",
    )
    p.add_argument(
        "--logs",
        type=existing_dir,
        default=None,
        help="log directory to validate on (default: fresh held-out users of the world); "
        "for the simulator's own training logs, the users train-sim held out are used",
    )
    p.add_argument(
        "--world",
        type=world_spec,
        default=d.world,
        help="ground truth: auto (the logs' or the training logs' world), default, none, or a "
        "JSON file of WorldConfig fields",
    )
    p.add_argument(
        "--users",
        type=positive_int,
        default=d.users,
        help="held-out users (at most this many with --logs)",
    )
    p.add_argument(
        "--seed",
        type=nonnegative_int,
        default=DEFAULT_HELDOUT_SEED,
        help="seed of the held-out users and of the ranking's users",
    )
    p.add_argument(
        "--policy",
        default=None,
        choices=POLICIES,
        help="logging policy of fresh held-out users (default: the training logs')",
    )
    p.add_argument(
        "--baseline-users",
        type=positive_int,
        default=d.baseline_users,
        help="fresh users the click baselines are fitted on when the training logs are unknown",
    )
    p.add_argument(
        "--warm-users",
        type=nonnegative_int,
        default=d.warm_users,
        help="training users evaluated as warm users (with the training logs as --logs)",
    )
    p.add_argument(
        "--policies",
        type=name_list,
        default=d.policies,
        help="comma-separated policies of the ranking (agents.registry names, SB3 specs)",
    )
    p.add_argument(
        "--policy-users", type=positive_int, default=d.policy_users, help="users per policy and env"
    )
    p.add_argument(
        "--policy-envs", type=positive_int, default=d.policy_envs, help="rows of the ranking's envs"
    )
    p.add_argument("--no-ranking", action="store_true", help="skip the policy ranking")
    p.add_argument(
        "--ppo", default=None, help="a policy trained with train-agent to rank ('ppo:DIR')"
    )
    p.add_argument(
        "--trust-sb3-zip",
        action="store_true",
        help="allow policies given as KIND:FILE.zip (third-party SB3 models): loading one "
        "unpickles it, which RUNS CODE stored in the file; use only for files you trust",
    )
    p.add_argument(
        "--sim2real",
        action="store_true",
        help="train PPO on the simulator and on the world (same budget), compare on the world",
    )
    p.add_argument(
        "--ppo-steps",
        type=positive_int,
        default=d.ppo_steps,
        help="env steps of each --sim2real PPO run",
    )
    p.add_argument(
        "--pool", type=positive_int, default=d.pool, help="batch rows of simulated sessions"
    )
    p.add_argument(
        "--device", type=device_name, default=d.device, help="simulator device (cpu, cuda, cuda:N)"
    )
    p.add_argument("--ppo-envs", type=positive_int, default=d.ppo_envs, help="envs of each PPO run")
    p.add_argument(
        "--ppo-seeds",
        type=positive_int,
        default=d.ppo_seeds,
        help="--sim2real PPO pairs, one per seed; the ratio is of their mean returns",
    )
    p.add_argument(
        "--ray",
        nargs="?",
        const="",
        default=None,
        metavar="ADDRESS",
        help="play the policy ranking's users on Ray actors (one per CPU, or per GPU with "
        "--device cuda): a running cluster's HOST:PORT or auto; no address: start a local "
        "Ray runtime (pip install 'llm-usersim[ray]'); the figures equal a one-process run's",
    )
    p.add_argument("--json", type=output_file, default=None, help="write the figures as JSON")
    p.add_argument(
        "--report", type=output_file, default=None, help="write a Markdown report (plots beside it)"
    )


def world_spec(text: str) -> str:
    """auto, default, none, or an existing JSON file of WorldConfig fields (checked now)."""
    if text in ("auto", "default", "none"):
        return text
    from simulators.parametric import WorldConfig

    path = existing_file(text)
    try:
        WorldConfig.from_dict(json.loads(path.read_text()), strict=True)
    except json.JSONDecodeError as exc:
        raise argparse.ArgumentTypeError(f"{text}: not valid JSON ({exc.msg})") from None
    except ValueError as exc:
        raise argparse.ArgumentTypeError(f"{text}: {exc}") from None
    return text


def run(args: argparse.Namespace) -> int:
    """Validate, print the headline figures, write the requested files."""
    from agents.registry import check_agent_spec
    from evaluation.distributed import RayConfig
    from evaluation.fidelity.render import write_report
    from evaluation.fidelity.report import ValidateConfig

    if args.device and args.ray is None:  # with --ray the actors' machines have the GPUs
        try:
            check_device_here(args.device)
        except argparse.ArgumentTypeError as exc:
            raise UsageError(f"argument --device: {exc}") from None
    # fails now, not after the held-out users; a typo is refused even with --no-ranking
    for spec in ([args.ppo] if args.ppo else []) + list(args.policies):
        check_agent_spec(spec, args.trust_sb3_zip)
    cfg = ValidateConfig(
        trust_sb3_zip=args.trust_sb3_zip,
        sim=None if args.sim is None else str(args.sim),
        logs=None if args.logs is None else str(args.logs),
        world=args.world,
        users=args.users,
        seed=args.seed,
        policy=args.policy,
        baseline_users=args.baseline_users,
        warm_users=args.warm_users,
        ranking=not args.no_ranking,
        policies=tuple(args.policies),
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
    ray = None if args.ray is None else RayConfig(address=args.ray or None)
    res = _validate(cfg, ray)  # --threads already limits torch and numpy's BLAS
    print(summary(res))
    write_json(args.json, res)
    if args.json:
        print(f"wrote JSON to {args.json}")
    if args.report:
        files = write_report(res, args.report)
        print(f"wrote report to {args.report} ({len(files) - 1} plots beside it)")
    return 0


def _validate(cfg: Any, ray: Any) -> dict:
    from evaluation.distributed import DistributedError
    from evaluation.fidelity.report import run_validation

    try:
        return run_validation(cfg, ray)
    except DistributedError as exc:  # the cluster's fault, told as one line
        raise UsageError(str(exc)) from exc


def summary(res: dict) -> str:
    """The headline figures as aligned text lines."""
    from evaluation.fidelity.render import interval_cell
    from evaluation.fidelity.render_sections import deeper_label

    def f(v: object) -> str:
        return "-" if v is None else (f"{v:.4f}" if isinstance(v, float) else str(v))

    s = res["setup"]
    deeper = deeper_label(res)  # the "buy" figures, named after the logs' behaviours
    lines = [
        f"validate: {s['simulator']} on {plural(s['heldout_users'], 'held-out user')} "
        f"({plural(s['heldout_events'], 'slot event')}), {s['seconds']['total']:.0f}s",
        f"  click AUC {f(res['click_auc'])} (oracle {f(res['oracle_click_auc'])}, popularity "
        f"{f(res['popularity_click_auc'])}, logreg {f(res['logreg_click_auc'])}, gbdt "
        f"{f(res['gbdt_click_auc'])}); cold items {f(res['cold_item_click_auc'])}",
        f"  {deeper} AUC {f(res['buy_auc'])}  click log-loss {f(res['click_logloss'])}  "
        f"ECE {f(res['ece_click'])}",
        f"  KL per slot {f(res['kl_per_slot'])} (floor {f(res['kl_floor'])})  "
        f"KL leave {f(res['kl_leave'])}  session-length KS {f(res['session_length_ks'])}",
        f"  Kendall tau-b {f(res['kendall_tau'])}  sim2real ratio {f(res['sim2real_ratio'])}",
    ]
    targets = [
        f"{name} {f(t['value'])} ({t['target']}: {'met' if t['met'] else 'not met'}"
        + ("" if t.get("ci95") is None else f"; 95% over users {interval_cell(t['ci95'])}")
        + ")"
        for name, t in res["targets"].items()
        if name in ("click_auc_minus_best_baseline", "ece_click") and t["value"] is not None
    ]
    if targets:
        lines.append("  targets: " + ", ".join(targets))
    pe = res.get("profile_effect") or {}
    if pe.get("sim"):
        oracle = pe.get("oracle") or {}
        lines.append(
            f"  profile effect: click AUC {f(pe['sim']['click_auc_difference'])} (oracle "
            f"{f(oracle.get('click_auc_difference'))}), log-loss "
            f"{f(pe['sim']['click_logloss_difference'])} (oracle "
            f"{f(oracle.get('click_logloss_difference'))})"
        )
    priv = res.get("privacy") or {}
    if priv:
        dp = (
            f"DP epsilon {f(priv['dp_epsilon'])}, delta {priv['dp_delta']:.3g}"
            if priv.get("dp")
            else "no DP"
        )
        if priv.get("membership_attack_auc") is None:
            lines.append(f"  privacy: {dp}; membership attack not computed (no training users)")
        else:
            lines.append(
                f"  privacy: {dp}; membership attack AUC {f(priv['membership_attack_auc'])} "
                f"({priv['membership_members']} training vs {priv['membership_nonmembers']} "
                "held-out users)"
            )
    for name, r in res["policy_returns"].items():
        lines.append(f"    {name:<10} sim {r['sim']:8.2f}  true {r['true']:8.2f}")
    return "\n".join(lines)
