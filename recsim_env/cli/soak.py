"""`llm-usersim soak`: drive a vector env for N user-steps with random valid actions, watch memory.

Prints a table of memory samples (RSS, and allocated CUDA memory on a GPU) and the growth after
warm-up, rss_growth_fraction = (final RSS - RSS after warm-up) / RSS after warm-up; a healthy run
stays under 0.05 over a million user-steps.
"""

from __future__ import annotations

import argparse

from recsim_env.cli import UsageError
from recsim_env.cli._common import progress_enabled, write_json
from recsim_env.cli.args import (
    device,
    env_id,
    existing_dir,
    int_at_least,
    nonnegative_int,
    output_file,
)
from simulators.progress import progress_bar

HELP = "Soak test: N user-steps of random valid actions, memory sampled as it runs."


def add_arguments(p: argparse.ArgumentParser) -> None:
    """Flags of soak."""
    p.add_argument(
        "--steps", type=int_at_least(1, 10**12), default=1_000_000, help="user-steps to simulate"
    )
    p.add_argument(
        "--json", type=output_file, default=None, help="write the figures and samples as JSON"
    )
    p.add_argument(
        "--num-envs", type=int_at_least(1, 1 << 20), default=256, help="users per env step"
    )
    p.add_argument(
        "--sim",
        type=existing_dir,
        default=None,
        help="LLMUserSim-v0 simulator checkpoint directory (default: the embedded one)",
    )
    p.add_argument("--env", type=env_id, default="LLMUserSim-v0", help="env id")
    p.add_argument("--device", type=device, default="cpu", help="cpu, cuda or cuda:N")
    p.add_argument(
        "--dtype", default="float32", choices=("float32", "bfloat16"), help="inference dtype"
    )
    p.add_argument(
        "--samples", type=int_at_least(1, 100_000), default=50, help="memory samples over the run"
    )
    p.add_argument("--seed", type=nonnegative_int, default=0, help="seed of the users")


def format_samples(fig: dict) -> str:
    """The memory samples as a table, then the summary line."""
    cuda = "final_cuda_allocated_mb" in fig
    head = f"{'user-steps':>12}  {'seconds':>9}  {'RSS MB':>9}" + ("  CUDA MB" if cuda else "")
    lines = [head]
    for s in fig["samples"]:
        line = f"{s['user_steps']:>12,}  {s['seconds']:>9.1f}  {s['rss_mb']:>9.1f}"
        if cuda:
            line += f"  {s['cuda_allocated_mb']:>7.1f}"
        if s.get("warmup"):
            line += "  <- after warm-up"
        lines.append(line)
    lines.append(
        f"{fig['env']}: {fig['steps']:,} user-steps ({fig['num_envs']} envs) in "
        f"{fig['seconds']:.0f} s, {fig['steps_per_second']:,.0f} user-steps/s; RSS "
        f"{fig['rss_after_warmup_mb']:.1f} MB after warm-up -> {fig['final_rss_mb']:.1f} MB, "
        f"rss_growth_fraction {fig['rss_growth_fraction']:+.4f}"
    )
    if cuda:
        lines.append(f"cuda_growth_fraction {fig['cuda_growth_fraction']:+.4f}")
    return "\n".join(lines)


def run(args: argparse.Namespace) -> int:
    """Soak, print the samples, write JSON."""
    from evaluation.soak import SoakConfig, soak

    llm_only = [f for f, v in (("--sim", args.sim), ("--dtype", args.dtype != "float32")) if v]
    if args.env != "LLMUserSim-v0" and (llm_only or args.device != "cpu"):
        raise UsageError(
            f"{', '.join(llm_only) or '--device'} applies to LLMUserSim-v0, not {args.env}"
        )
    cfg = SoakConfig(
        steps=args.steps,
        num_envs=args.num_envs,
        env_id=args.env,
        sim=None if args.sim is None else str(args.sim),
        device=args.device,
        dtype=args.dtype,
        samples=args.samples,
        seed=args.seed,
    )
    total = -(-args.steps // args.num_envs) * args.num_envs
    bar = progress_bar(total, "soak", "user-steps", enabled=progress_enabled())

    def advance(n: int, last: dict) -> None:
        bar.update(n)
        bar.set_postfix(rss_mb=f"{last['rss_mb']:.0f}")

    fig = soak(cfg, advance)
    bar.close()
    print(format_samples(fig))
    write_json(args.json, fig)
    if args.json:
        print(f"wrote JSON to {args.json}")
    return 0
