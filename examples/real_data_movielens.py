"""Real data end to end: MovieLens latest-small -> logs -> GPT-2 user simulator -> fidelity.

    python examples/real_data_movielens.py --data path/to/ml-latest-small --out runs/movielens
    python examples/real_data_movielens.py --smoke      # a few seconds, on the bundled fixture

A log this small (671 users) overfits within one epoch, so the simulator trains with dropout,
weight decay and item dropout, keeps a moving average of its weights, is validated every 25
steps and calibrates its click odds on 10% of the users it does not train on (the flags below;
README, "Real logs at real sizes", has the figures with and without them).

MovieLens has ratings, not impressions, so the import is a proxy (see docs/importers.md): each
slate is 5 consecutive ratings of one user and stars map to skip/click/buy. Each user's ratings
are one session (`--session-gap inf`), so the simulator reads the user's earlier ratings when it
predicts the next ones, as the baselines' history features do. The validate step
scores the simulator on held-out users against the baselines (item popularity, a logistic
regression and gradient-boosted trees with history features: AUC, log-loss, ECE) and splits the
figures into warm and cold items and users.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from _args import parse_dataclass  # examples/_args.py

from recsim_env.cli import main as cli

FIXTURE = Path(__file__).resolve().parent.parent / "tests" / "fixtures" / "movielens"


@dataclass
class Args:
    """Options (defaults do the real run)."""

    data: str = str(FIXTURE)
    out: str = "runs/movielens"
    size: str = "small"
    max_minutes: float = 15.0
    dropout: float = 0.2
    """Regularisation for a small log (671 users overfit within an epoch without it)."""
    weight_decay: float = 0.1
    item_dropout: float = 0.3
    lr: float = 1e-3
    ema_decay: float = 0.9
    """Validate and keep a moving average of the weights (smooths the noisy validation loss)."""
    eval_every: int = 25
    """Validate often: the best checkpoint comes within a few hundred steps."""
    patience: int = 4
    session_gap: str = "inf"
    """Import's session gap in minutes; inf: each user's ratings are one session (30: sessions
    split at half-hour gaps, each starting without the user's history)."""
    calibration_fraction: float = 0.1
    """Users held out of training to calibrate the click odds on (the regularised network is
    over-confident on users it has not seen: a Platt scaling fitted on these fixes the slope)."""
    seed: int = 0
    """Seed of train-sim (its split of held-out users, batch order, weights)."""
    smoke: bool = False


def parse() -> Args:
    """Args from the command line."""
    return parse_dataclass(Args, __doc__)


def run(args: Args) -> dict:
    """Import, train, validate; returns the validation figures."""
    out = Path(args.out)
    logs, ckpt, report = out / "logs", out / "sim", out / "validate.json"
    imp = ["import", "movielens", args.data, "--out", str(logs), "--genres-in-title"]
    assert cli([*imp, "--session-gap", args.session_gap]) == 0
    train = ["train-sim", "--logs", str(logs), "--out", str(ckpt)]
    flags = ("size", "max_minutes", "dropout", "weight_decay", "item_dropout", "lr", "ema_decay")
    for name in (*flags, "eval_every", "patience", "calibration_fraction", "seed"):
        train += [f"--{name.replace('_', '-')}", str(getattr(args, name))]
    if args.smoke:
        train = [
            "train-sim",
            "--logs",
            str(logs),
            "--out",
            str(ckpt),
            "--size",
            "tiny",
            "--max-steps",
            "6",
            "--eval-every",
            "3",
            "--batch-size",
            "2",
            "--context-length",
            "256",
            "--ema-decay",
            str(args.ema_decay),
            "--calibration-fraction",
            str(args.calibration_fraction),
        ]
    assert cli(train) == 0
    assert (
        cli(
            [
                "validate",
                "--logs",
                str(logs),
                "--sim",
                str(ckpt),
                "--json",
                str(report),
                "--report",
                str(out / "validate.md"),
            ]
        )
        == 0
    )
    figures = json.loads(report.read_text())
    keys = [k for k in figures if "auc" in k and not isinstance(figures[k], dict)]
    for key in sorted(keys):
        print(f"{key}: {figures[key]}")
    return figures


if __name__ == "__main__":
    a = parse()
    if a.smoke and a.out == Args().out:
        a.out = "runs/movielens-smoke"
    run(a)
