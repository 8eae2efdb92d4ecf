"""`llm-usersim soak`: drive a vector env for N user-steps with random valid actions, watch memory.

Prints a table of memory samples (RSS, and allocated CUDA memory on a GPU) and the growth after
warm-up, rss_growth_fraction = (final RSS - RSS after warm-up) / RSS after warm-up; a healthy run
stays under 0.05 over a million user-steps.
"""

from __future__ import annotations

import argparse
import sys

from tqdm.auto import tqdm

from recsim_env.cli import UsageError
from recsim_env.cli._common import progress_enabled, write_json

HELP = "Soak test: N user-steps of random valid actions, memory sampled as it runs."


def add_arguments(p: argparse.ArgumentParser) -> None:
    """Flags of soak."""
    p.add_argument(
        "--steps", type=int, default=1_000_000, help="user-steps to simulate (default 1,000,000)"
    )
    p.add_argument("--json", default=None, help="write the figures and samples as JSON")
    p.add_argument("--num-envs", type=int, default=256, help="users per env step")
    p.add_argument(
        "--sim", default=None, help="simulator checkpoint directory (default: the embedded one)"
    )
    p.add_argument("--env", default="LLMUserSim-v0", help="env id with a native vector env")
    p.add_argument("--device", default="cpu", choices=("cpu", "cuda"))
    p.add_argument("--dtype", default="float32", choices=("float32", "bfloat16"))
    p.add_argument("--samples", type=int, default=50, help="memory samples over the run")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument(
        "--threads", type=int, default=None, help="torch intra-op threads (default: torch's)"
    )


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
    import gymnasium as gym
    import torch

    from evaluation.soak import SoakConfig, soak

    if args.threads is not None:
        if args.threads < 1:
            raise UsageError(f"--threads must be >= 1, got {args.threads}")
        torch.set_num_threads(args.threads)
    import recsim_env  # noqa: F401

    if args.env not in gym.registry:
        raise UsageError(f"unknown env id {args.env!r}")
    if args.device == "cuda" and not torch.cuda.is_available():
        raise UsageError("--device cuda requested but CUDA is not available")
    for flag, val in (("--steps", args.steps), ("--num-envs", args.num_envs)):
        if val < 1:
            raise UsageError(f"{flag} must be >= 1, got {val}")
    if args.samples < 1:
        raise UsageError(f"--samples must be >= 1, got {args.samples}")
    cfg = SoakConfig(
        steps=args.steps,
        num_envs=args.num_envs,
        env_id=args.env,
        sim=args.sim,
        device=args.device,
        dtype=args.dtype,
        samples=args.samples,
        seed=args.seed,
    )
    total = -(-args.steps // args.num_envs) * args.num_envs
    with tqdm(
        total=total,
        unit="user-step",
        unit_scale=True,
        disable=not progress_enabled(),
        file=sys.stderr,
    ) as bar:

        def advance(n: int, last: dict) -> None:
            bar.update(n)
            bar.set_postfix(rss_mb=f"{last['rss_mb']:.0f}", refresh=False)

        fig = soak(cfg, advance)
    print(format_samples(fig))
    write_json(args.json, fig)
    if args.json:
        print(f"wrote JSON to {args.json}")
    return 0
