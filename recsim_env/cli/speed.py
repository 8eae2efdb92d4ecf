"""`llm-usersim speed`: simulated users per second, naive re-encoding vs the batched simulator.

Measured in one run (see evaluation.speed for the definitions): the prompt-style
baseline that re-encodes each user's history for every slot decision, the native vector env of
LLMUserSim-v0 at several batch sizes, the batched simulator at 1, 50 and 200 steps of history,
the parametric world, the achieved FLOP/s of the simulator's forward against a matmul peak
timed in the same run, and the same users through every RL client's path (the simulator driven
directly, the TorchRL env, the SB3 fast path, the native vector env, per-user single envs). On a shared CPU the absolute figures move with the load; the ratios
within one run are what to compare.
"""

from __future__ import annotations

import argparse
import math
import sys
from typing import Any

from recsim_env.cli import UsageError
from recsim_env.cli._common import progress_enabled, write_json
from recsim_env.cli.args import (
    device,
    existing_dir,
    int_at_least,
    int_list,
    nonnegative_int,
    output_file,
    positive_int,
)

HELP = "Measure simulated user-steps per second (naive vs batched), FLOP/s and memory."


def add_arguments(p: argparse.ArgumentParser) -> None:
    """Flags of speed."""
    p.add_argument("--quick", action="store_true", help="fewer repetitions (1-2 minutes of CPU)")
    p.add_argument(
        "--smoke", action="store_true", help="one repetition of everything (tests; no timing)"
    )
    p.add_argument("--json", type=output_file, default=None, help="write the figures as JSON")
    p.add_argument(
        "--sim",
        type=existing_dir,
        default=None,
        help="simulator checkpoint directory (default: the embedded one)",
    )
    p.add_argument(
        "--random-size",
        default=None,
        choices=("tiny", "small", "medium", "gpt2"),
        help="time a randomly initialised network of this size (gpt2 = GPT-2-small's 12x768) "
        "with the checkpoint's vocabulary and layout",
    )
    p.add_argument("--device", type=device, default="cpu", help="cpu, cuda or cuda:N")
    p.add_argument(
        "--dtype", default="float32", choices=("float32", "bfloat16"), help="inference dtype"
    )
    p.add_argument(
        "--num-envs",
        type=int_list,
        default=None,
        help="comma-separated batch sizes of the vector env (default: 1,16,64,256,1024; on "
        "CUDA up to 65536)",
    )
    p.add_argument(
        "--histories",
        type=int_list,
        default=(1, 50, 200),
        help="history lengths of the sweep (comma-separated)",
    )
    p.add_argument(
        "--sweep-num-envs",
        type=int_at_least(1, 1 << 20),
        default=256,
        help="batch of the history sweep",
    )
    p.add_argument(
        "--client-num-envs",
        type=int_list,
        default=(256,),
        help="comma-separated batch sizes at which every client's path is timed (direct, "
        "TorchRL env, SB3 fast path, vector env, single envs up to 256)",
    )
    p.add_argument("--slate-size", type=positive_int, default=None, help="EnvConfig slate_size")
    p.add_argument(
        "--num-candidates", type=positive_int, default=None, help="EnvConfig num_candidates"
    )
    p.add_argument("--seed", type=nonnegative_int, default=0, help="seed of the measured users")


def _fmt(v: Any) -> str:
    if isinstance(v, float):
        if not math.isfinite(v):
            return str(v)
        if abs(v) >= 1000:
            return f"{v:,.0f}"
        return f"{v:.3g}" if abs(v) < 10 else f"{v:.1f}"
    return str(v)


def format_table(fig: dict[str, Any]) -> str:
    """The figures as an aligned table (per wall-clock second and per CPU second), targets last."""
    cpu = fig.get("per_cpu_second", {})
    rows: list[tuple[str, str, str]] = []

    def add(label: str, key: str, scale: float = 1.0) -> None:
        c = cpu.get(key)
        rows.append((label, _fmt(fig[key] / scale), "" if c is None else _fmt(c / scale)))

    sweep_n = fig.get("history_sweep", {}).get("num_envs", 256)
    for key in sorted(k for k in fig if k.startswith("naive_h") and "tokens" not in k):
        add(f"{key}  (full re-encode per decision)", key)
    batched = sorted(
        (k for k in fig if k.startswith("batched_") and k[8:].isdigit()), key=lambda k: int(k[8:])
    )
    for key in batched:
        add(f"{key}  (vector env)", key)
    hist = sorted(
        (k for k in fig if k.startswith(f"batched_{sweep_n}_h")),
        key=lambda k: int(k.split("h")[-1]),
    )
    for key in hist:
        add(f"{key}  (at history)", key)
    for key in sorted(k for k in fig if k.startswith("parametric_")):
        add(key, key)
    for n, rates in fig.get("clients", {}).items():
        per_cpu = fig.get("clients_per_cpu_second", {}).get(n, {})
        for client, rate in rates.items():
            c = per_cpu.get(client)
            rows.append(
                (f"{client}, {n} users  (client)", _fmt(rate), "" if c is None else _fmt(c))
            )
        for key in ("torchrl", "sb3"):
            if f"{key}_vs_direct_{n}" in fig:
                add(f"{key}_vs_direct_{n}  (fraction of direct)", f"{key}_vs_direct_{n}")
    add("achieved GFLOP/s (simulator forward)", "achieved_flops", 1e9)
    add(f"peak GFLOP/s ({fig['peak_kernel']})", "peak_flops", 1e9)
    rows.append(("peak_rss_mb", _fmt(fig["peak_rss_mb"]), ""))
    if "peak_cuda_allocated_mb" in fig:
        rows.append(("peak_cuda_allocated_mb", _fmt(fig["peak_cuda_allocated_mb"]), ""))
    for key, t in fig["targets"].items():
        mark = {True: "met", False: "NOT met", None: "n/a"}
        val = "-" if t["value"] is None else f"{_fmt(t['value'])} {mark[t['met']]}"
        cval = t.get("value_per_cpu_second")
        cv = "-" if cval is None else f"{_fmt(cval)} {mark[t['met_per_cpu_second']]}"
        rows.append((f"{key}  (target {t['target']})", val, cv))
    width = max(len(a) for a, _, _ in rows)
    w2 = max(len(b) for _, b, _ in [*rows, ("", "per wall s", "")])
    head = (
        f"{fig['checkpoint']} on {fig['device']} ({fig['dtype']}, {fig['torch_threads']} torch "
        f"threads), slate_size {fig['slate_size']}, {fig['seconds']:.0f} s, CPU share "
        f"{fig['cpu_utilisation']:.0%}, load average {fig['load_average']['start'][0]:.1f} -> "
        f"{fig['load_average']['end'][0]:.1f}"
    )
    lines = [head, f"{'':{width}}  {'per wall s':>{w2}}  per CPU s"]
    lines += [f"{a.ljust(width)}  {b:>{w2}}  {c}" for a, b, c in rows]
    return "\n".join(lines)


def run(args: argparse.Namespace) -> int:
    """Measure, print the table, write JSON."""
    from evaluation.speed import SpeedConfig, default_checkpoint_exists, measure

    if args.sim is None and not default_checkpoint_exists():
        raise UsageError("the embedded default simulator is missing; pass --sim PATH")
    env_kwargs = {
        key: val
        for key, val in (("slate_size", args.slate_size), ("num_candidates", args.num_candidates))
        if val is not None
    }
    cfg = SpeedConfig(
        sim=None if args.sim is None else str(args.sim),
        random_size=args.random_size,
        device=args.device,
        dtype=args.dtype,
        quick=args.quick or args.smoke,
        smoke=args.smoke,
        num_envs=args.num_envs,
        histories=tuple(args.histories),
        sweep_num_envs=args.sweep_num_envs,
        client_num_envs=tuple(args.client_num_envs),
        env_kwargs=env_kwargs,
        seed=args.seed,
    )
    show = progress_enabled()
    fig = measure(cfg, progress=(lambda m: print(f"  {m} ...", file=sys.stderr)) if show else None)
    print(format_table(fig))
    write_json(args.json, fig)
    if args.json:
        print(f"wrote JSON to {args.json}")
    return 0
