"""Privacy against utility: user-level DP training at epsilon = inf (no DP), 8 and 1.

On logs of the ground-truth world (generate-logs), the same simulator is trained three times,
without DP and with `--dp-epsilon 8` and `--dp-epsilon 1`, and each is validated on its own
training logs: utility (KL per slot to the world, click AUC) on the users train-sim held out,
and the membership-inference attack (loss threshold: training users against those held-out
users) in the same run. Prints one row per epsilon.

    python examples/dp_privacy_utility.py                 # README figures: ~20-30 min, 1 thread
    python examples/dp_privacy_utility.py --smoke         # seconds

The same with the command line (per epsilon; drop --dp-epsilon for epsilon = inf):
    llm-usersim generate-logs --users 4000 --seed 1 --out runs/dp/logs
    llm-usersim train-sim --logs runs/dp/logs --out runs/dp/sim-eps8 --size tiny \
        --max-steps 400 --eval-every 50 --val-fraction 0.25 --dp-epsilon 8 --json train.json
    llm-usersim validate --sim runs/dp/sim-eps8 --logs runs/dp/logs --no-ranking --json v.json

Needs the `dp` extra (pip install 'llm-usersim[dp]').
"""

from __future__ import annotations

import json
import math
import time
from dataclasses import dataclass
from pathlib import Path

from _args import parse_dataclass  # examples/_args.py

from recsim_env.cli import main as cli


@dataclass
class Args:
    """Options (defaults do the README run)."""

    out: str = "runs/dp_privacy_utility"
    users: int = 4000
    """Users in the logs (one session each); a quarter are held out (the non-members)."""
    size: str = "tiny"
    steps: int = 600
    """Optimiser steps without DP (16 packed rows a step)."""
    dp_steps: int = 400
    """Optimiser steps with DP (the budget is planned over them)."""
    dp_users_per_step: int = 64
    epsilons: str = "inf,8,1"
    seed: int = 0
    smoke: bool = False
    """Tiny settings: seconds."""


def run(a: Args) -> list[dict]:
    """Generate, train per epsilon, validate; returns one row of figures per epsilon."""
    out = Path(a.out)
    logs = out / "logs"
    if not (logs / "meta.json").exists():
        assert (
            cli(["generate-logs", "--users", str(a.users), "--seed", "1", "--out", str(logs)]) == 0
        )
    rows = []
    for eps in [float(e) for e in a.epsilons.split(",")]:
        name = "inf" if math.isinf(eps) else f"{eps:g}"
        sim, tj, vj = (
            out / f"sim-eps{name}",
            out / f"train-eps{name}.json",
            out / f"val-eps{name}.json",
        )
        dp = math.isfinite(eps)
        steps = a.dp_steps if dp else a.steps
        train = ["train-sim", "--logs", str(logs), "--out", str(sim), "--size", a.size]
        train += ["--max-steps", str(steps), "--eval-every", str(max(1, steps // 8))]
        train += ["--val-fraction", "0.25", "--seed", str(a.seed), "--json", str(tj), "--quiet"]
        if dp:
            train += ["--dp-epsilon", f"{eps:g}", "--dp-users-per-step", str(a.dp_users_per_step)]
        if a.smoke:
            train += ["--batch-size", "2", "--context-length", "256"]
        t0 = time.perf_counter()
        assert cli(train) == 0
        train_s = time.perf_counter() - t0
        val = ["validate", "--sim", str(sim), "--logs", str(logs), "--no-ranking", "--quiet"]
        assert cli([*val, "--json", str(vj)]) == 0
        t, v = json.loads(tj.read_text()), json.loads(vj.read_text())
        rows.append(
            {
                "epsilon_target": name,
                "epsilon_spent": t["dp_epsilon"],
                "delta": t["dp_delta"],
                "steps": t["steps"],
                "best_val_loss": t["best_val_loss"],
                "kl_per_slot": v["kl_per_slot"],
                "click_auc": v["click_auc"],
                "oracle_click_auc": v["oracle_click_auc"],
                "membership_attack_auc": v["membership_attack_auc"],
                "membership_attack_auc_ci95": v["privacy"]["membership_attack_auc_ci95"],
                "members": v["privacy"]["membership_members"],
                "nonmembers": v["privacy"]["membership_nonmembers"],
                "train_wall_s": round(train_s, 1),
            }
        )
    (out / "summary.json").write_text(json.dumps(rows, indent=1) + "\n")
    print("| epsilon | spent (delta) | KL per slot | click AUC | attack AUC [95%] | users in/out |")
    print("|---|---|---|---|---|---|")
    for r in rows:
        spent = (
            "-" if r["epsilon_spent"] is None else f"{r['epsilon_spent']:.2f} ({r['delta']:.0e})"
        )
        ci = r["membership_attack_auc_ci95"] or [math.nan, math.nan]
        print(
            f"| {r['epsilon_target']} | {spent} | {r['kl_per_slot']:.4f} | {r['click_auc']:.4f} "
            f"| {r['membership_attack_auc']:.4f} [{ci[0]:.3f}, {ci[1]:.3f}] "
            f"| {r['members']}/{r['nonmembers']} |"
        )
    return rows


if __name__ == "__main__":
    args = parse_dataclass(Args, __doc__)
    if args.smoke:
        if args.out == Args().out:
            args.out = "runs/dp_privacy_utility-smoke"
        args.users, args.steps, args.dp_steps, args.dp_users_per_step = 120, 4, 4, 8
    run(args)
