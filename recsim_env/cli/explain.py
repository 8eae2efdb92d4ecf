"""`llm-usersim explain`: why would this simulated user do that? Counterfactual attributions.

For a situation (a logged session's step, or a fresh user of the world with a few answered
slates) the simulator's per-slot probabilities are shown with the effect of every profile field
and every history step on them (`simulators.explanations`); `--check-world` measures how well
the simulator's attributions rank like the ground-truth world's own (`evaluation.explain`).
"""

from __future__ import annotations

import argparse

from recsim_env.cli import UsageError
from recsim_env.cli._common import write_json
from recsim_env.cli.args import (
    existing_dir,
    int_at_least,
    name_list,
    nonnegative_int,
    output_file,
    positive_int,
)

HELP = (
    "Explain a simulated user's responses: counterfactual effects of profile fields, history "
    "steps and the slate items' side information (attributes, title)."
)


def add_arguments(p: argparse.ArgumentParser) -> None:
    """Flags of explain."""
    p.add_argument(
        "--sim",
        type=existing_dir,
        default=None,
        help="simulator checkpoint (default: the embedded one)",
    )
    p.add_argument(
        "--logs", type=existing_dir, default=None, help="explain a step of a logged session"
    )
    p.add_argument("--session", default=None, help="the logged session id (with --logs)")
    p.add_argument(
        "--step", type=nonnegative_int, default=None, help="its step to explain (default: the last)"
    )
    p.add_argument(
        "--seed", type=nonnegative_int, default=0, help="seed of the fresh user (without --logs)"
    )
    p.add_argument(
        "--history-steps",
        type=int_at_least(0, 200),
        default=6,
        help="slates the fresh user has answered before the one explained",
    )
    p.add_argument(
        "--slate-size", type=int_at_least(1, 50), default=5, help="items of the fresh user's slates"
    )
    p.add_argument(
        "--slate",
        type=slate_items,
        default=None,
        help="item ids of the slate to explain (comma-separated)",
    )
    p.add_argument(
        "--check-world",
        action="store_true",
        help="also measure the rank correlation of the simulator's attributions with the "
        "ground-truth world's on fresh users",
    )
    p.add_argument("--users", type=positive_int, default=100, help="fresh users of --check-world")
    p.add_argument("--json", type=output_file, default=None, help="write the figures as JSON")
    p.add_argument("--plot", type=output_file, default=None, help="write the attributions as a PNG")


def slate_items(text: str) -> tuple[str, ...]:
    """Comma-separated item ids of one slate, each at most once."""
    parts = [p.strip() for p in text.split(",") if p.strip()]
    twice = sorted({p for p in parts if parts.count(p) > 1})
    if twice:
        raise argparse.ArgumentTypeError(
            f"{', '.join(twice)} appear(s) more than once; a slate shows each item once"
        )
    return name_list(text)


def run(args: argparse.Namespace) -> int:
    """Explain, print the table, write the requested files."""
    from evaluation.explain import (
        explanation_table,
        feature_labels,
        generated_situation,
        item_indices,
        plot_explanation,
        short_labels,
        situation_from_logs,
        world_agreement,
    )
    from simulators.explanations import explain
    from simulators.gpt2_user import load_batched_simulator
    from simulators.parametric import ParametricUserModel

    if (args.logs is None) != (args.session is None):
        raise UsageError("--logs and --session go together (a logged session to explain)")
    sim = load_batched_simulator(None if args.sim is None else str(args.sim))
    world = ParametricUserModel()
    if args.logs is not None:
        from simulators.logs import read_logs

        situation = situation_from_logs(sim, read_logs(args.logs), args.session, args.step)
    else:
        situation = generated_situation(sim, world, args.seed, args.history_steps, args.slate_size)
    if args.slate is not None:
        situation.slate = item_indices(sim, list(args.slate))
    expl = explain(sim, situation.profile, situation.history, situation.slate)
    titles = [str(t) for t in sim.items_table().get("title", sim.items_table()["item_id"])]
    print(f"explaining {situation.source}: {len(situation.history)} earlier slates")
    labels = feature_labels(expl, situation, titles)
    print(explanation_table(expl, titles, labels))
    out = {"situation": situation.source, "explanation": expl.to_dict()}
    if args.check_world:
        agreement = world_agreement(
            sim, world, args.users, args.seed + 10**6, args.history_steps, args.slate_size
        )
        out["world_agreement"] = agreement
        print(
            f"rank correlation with the world's own counterfactuals over {agreement['users_compared']} "
            f"fresh users: mean {agreement['spearman_mean']:.3f}, median "
            f"{agreement['spearman_median']:.3f}, positive for {100 * agreement['share_positive']:.0f}%"
        )
    write_json(args.json, out)
    if args.plot:
        plot_explanation(
            expl,
            titles,
            args.plot,
            f"Why this user would engage: {situation.source}",
            short_labels(expl, situation),
        )
        print(f"wrote plot to {args.plot}")
    if args.json:
        print(f"wrote JSON to {args.json}")
    return 0
