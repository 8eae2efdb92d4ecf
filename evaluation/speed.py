"""Throughput of simulated users, measured in one run so that the ratios are comparable.

Figures (user-steps per second: one user answering one slate, leave decision included):

- naive_h{h}: the prompt-style simulator. One user at a time, the whole history (clipped to the
  context: profile + as many recent steps as fit) is re-encoded by a full forward of the same
  model for every slot decision and for the leave decision (k + 1 forwards per step, no cache).
- batched_{n}: the native vector env of LLMUserSim-v0 (`gym.make_vec(...,
  vectorization_mode="vector_entry_point")`) with random valid actions, episodes ending as they
  do (leaves, time limit, autoreset included).
- batched_{n}_h{h}: the batched simulator driven directly (start_sessions / step, the leave flag
  ignored) at h steps of history: the mean time per step over steps h .. h + W - 1, where W is
  the sliding-window refill period when a refill falls in that span (so its cost is amortised
  exactly once) and 5 steps otherwise. A recency-attention simulator (ring KV cache) never
  refills: its cost grows only until the ring is full (attention_window_steps + 1 steps).
- parametric_{n}: the ParametricUserSim-v0 vector env with fixed valid actions.
- clients at n users (`client_num_envs`, default 256; `evaluation.speed_clients`): the same
  users through every RL client's path, in one run: `direct_{n}` (the simulator driven
  directly on its tensor path, no env), `torchrl_{n}` (the TorchRL-native env), `sb3_{n}` (the
  SB3 fast path), and under `clients` also the native vector env and the per-user single-env
  routes (SB3's DummyVecEnv, Tianshou's DummyVectorEnv where installed);
  `torchrl_vs_direct_{n}` and `sb3_vs_direct_{n}` are the fractions of the direct rate kept.
- achieved FLOP/s: the matmul FLOPs a step needs (projections and MLP of every token of the
  step's block and of refilled windows, attention over each query's causal length; no padding
  and no speculative re-runs, so the figure does not reward wasted work), counted analytically
  from the cache lengths, over the wall time of the simulator's `step` calls in the history
  sweep. peak_fraction divides it by the best of a large `torch.mm` and a large oneDNN linear in
  the same dtype, timed in the same run. `executed_flops_per_second` counts what the simulator
  actually ran (its own counter, speculative re-runs and padding-free attention included).

Every figure is given per wall-clock second and, under `per_cpu_second`, per second of this
process's CPU time. With one torch thread the latter is per core and barely moves when other
processes take the machine (the wall clock then measures this process's share of it), so on a
shared machine compare ratios from one run, preferably per CPU second.

This module defines the figures, what a run covers (`SpeedConfig`) and runs it (`measure`); the
single measurements are in `evaluation.speed_measurements`.
"""

from __future__ import annotations

import functools
import math
import os
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from evaluation.speed_clients import (
    SINGLE_ENV_CLIENTS_MAX,
    direct_rate,
    sb3_rate,
    single_env_client_rates,
    torchrl_available,
    torchrl_rate,
    vector_env_rate,
)
from evaluation.speed_measurements import (
    Clock,
    history_sweep,
    matmul_peak,
    naive_user_steps_per_second,
    peak_rss_mb,
    rss_mb,
    vector_env_user_steps_per_second,
)
from recsim_env.config import EnvConfig

CPU_NUM_ENVS: tuple[int, ...] = (1, 16, 64, 256, 1024)
GPU_NUM_ENVS: tuple[int, ...] = (1, 16, 64, 256, 1024, 4096, 16384, 65536)
HISTORIES: tuple[int, ...] = (1, 50, 200)
NAIVE_HISTORIES: tuple[int, ...] = (1, 50)
SWEEP_NUM_ENVS = 256
PARAMETRIC_NUM_ENVS = 256
TARGETS: dict[str, tuple[str, float]] = {
    "batched_vs_naive_h50": (">=", 100.0),
    "history_cost_ratio_200_vs_1": ("<=", 1.3),
    "peak_fraction": (">=", 0.5),
    "parametric_256": (">=", 100_000.0),
    "torchrl_vs_direct_256": (">=", 1 / 1.2),
    "sb3_vs_direct_256": (">=", 1 / 1.2),
    "torchrl_65536": (">=", 1_000_000.0),
}


@dataclass(frozen=True, kw_only=True)
class SpeedConfig:
    """What `measure` runs."""

    sim: str | None = None
    """Simulator checkpoint directory (None: the embedded default)."""
    random_size: str | None = None
    """Time a randomly initialised network of this named size (user_lm.MODEL_SIZES, e.g.
    'gpt2' for GPT-2-small's 12 layers x 768) in place of the checkpoint's, with the
    checkpoint's vocabulary, catalog and attention layout: what a bigger simulator would cost
    before anyone trains one. Speed only; its responses mean nothing."""
    device: str = "cpu"
    """'cpu' or 'cuda'."""
    dtype: str = "float32"
    """'float32' or 'bfloat16'."""
    quick: bool = False
    """Fewer repetitions (about 1-2 minutes of CPU with the default model)."""
    smoke: bool = False
    """One or two repetitions of everything, a small peak matmul (tests: every figure, no
    meaningful timing)."""
    num_envs: tuple[int, ...] | None = None
    """Batch sizes of the vector env (default: CPU_NUM_ENVS, or GPU_NUM_ENVS on CUDA)."""
    histories: tuple[int, ...] = HISTORIES
    """History lengths of the sweep at SWEEP_NUM_ENVS."""
    naive_histories: tuple[int, ...] = NAIVE_HISTORIES
    """History lengths of the naive re-encoding baseline."""
    sweep_num_envs: int = SWEEP_NUM_ENVS
    """Batch of the history sweep."""
    parametric_num_envs: int = PARAMETRIC_NUM_ENVS
    """Batch of the parametric env."""
    client_num_envs: tuple[int, ...] = (SWEEP_NUM_ENVS,)
    """Batches at which every client's path is timed (`evaluation.speed_clients`)."""
    env_kwargs: dict[str, Any] = field(default_factory=dict)
    """EnvConfig fields for the envs (slate_size, num_candidates, ...)."""
    seed: int = 0
    """Seed of users, slates and actions."""

    def __post_init__(self) -> None:
        """Validate."""
        if self.device not in ("cpu", "cuda"):
            raise ValueError(f"device must be 'cpu' or 'cuda', got {self.device!r}")
        if self.dtype not in ("float32", "bfloat16"):
            raise ValueError(f"dtype must be 'float32' or 'bfloat16', got {self.dtype!r}")
        if self.device == "cuda" and not torch.cuda.is_available():
            raise ValueError("device 'cuda' requested but torch.cuda.is_available() is False")
        for name in ("histories", "naive_histories"):
            if any(h < 1 for h in getattr(self, name)):
                raise ValueError(f"{name} must be >= 1")
        if self.num_envs is not None and any(n < 1 for n in self.num_envs):
            raise ValueError("num_envs must be >= 1")
        if any(n < 1 for n in self.client_num_envs):
            raise ValueError("client_num_envs must be >= 1")
        if self.random_size is not None:
            from simulators.lm.gpt2 import MODEL_SIZES

            if self.random_size not in MODEL_SIZES:
                raise ValueError(
                    f"random_size must be one of {sorted(MODEL_SIZES)}, got {self.random_size!r}"
                )


def _load(cfg: SpeedConfig, capacity: int) -> Any:
    from simulators.gpt2_user import GPT2UserSimulator, load_batched_simulator

    if cfg.random_size is None:
        return load_batched_simulator(
            cfg.sim, device=cfg.device, dtype=cfg.dtype, capacity=capacity
        )
    ckpt, model = _random_network(cfg.sim, cfg.random_size, cfg.seed)
    return GPT2UserSimulator(
        model,
        ckpt.tokenizer,
        ckpt.profile_encoder,
        ckpt.population,
        ckpt.items,
        ckpt.extra,
        cfg.device,
        cfg.dtype,
        capacity,
    )


@functools.lru_cache(maxsize=1)
def _random_network(sim: str | None, size: str, seed: int) -> tuple[Any, Any]:
    """The checkpoint and a seeded random network of a named size for its catalog.

    Built once per run; each batch size wraps the same module.
    """
    from simulators.gpt2_user import build_user_lm, load_batched_simulator

    ckpt = load_batched_simulator(sim)
    torch.manual_seed(seed)
    model = build_user_lm(
        ckpt.tokenizer,
        ckpt.items,
        ckpt.sim_config,
        size=size,
        item_known=ckpt.model.item_known.cpu().numpy(),
    )
    return ckpt, model


def _cache_bytes(sim: Any, num_envs: int, slate_size: int) -> int:
    bb = sim.model.backbone
    el = torch.finfo(sim.dtype).bits // 8
    return 2 * bb.n_layer * num_envs * sim.cache_positions(slate_size) * bb.hidden_size * el


# ------------------------------------------------------------------------------- the whole run
def measure(cfg: SpeedConfig, progress: Callable[[str], None] | None = None) -> dict[str, Any]:
    """Run every measurement; returns the figures (see the module docstring for definitions).

    The top-level figures are per wall-clock second; `per_cpu_second` holds the same figures per
    second of this process's CPU time (with one torch thread: per core), which a busy machine
    disturbs much less.
    """
    say = progress or (lambda msg: None)
    clock = Clock(cfg.device)
    rng = np.random.default_rng(cfg.seed)
    t_start = clock()
    load_before = os.getloadavg()
    env_cfg = EnvConfig(**cfg.env_kwargs)
    k = env_cfg.slate_size
    q = cfg.quick
    out: dict[str, Any] = {
        "device": cfg.device,
        "dtype": cfg.dtype,
        "torch_threads": torch.get_num_threads(),
        "quick": q,
        "slate_size": k,
    }
    cpu: dict[str, float] = {}

    def put(key: str, rate: np.ndarray) -> None:
        out[key], cpu[key] = float(rate[0]), float(rate[1])

    sim = _load(cfg, 1)
    out["checkpoint"] = str(cfg.sim) if cfg.sim else "default"
    if cfg.random_size:
        out["random_size"] = cfg.random_size
        out["checkpoint"] += f" (random {cfg.random_size}-sized network)"
    out["model"] = {
        "n_layer": sim.model.backbone.n_layer,
        "n_head": sim.model.backbone.n_head,
        "n_embd": sim.model.backbone.hidden_size,
        "parameters": sim.model.backbone.parameter_count(),
        "context_length": sim.sim_config.context_length,
        "window_steps": sim.sim_config.window_steps,
    }
    rss = [rss_mb()]

    say("matmul peak")
    smoke = cfg.smoke
    peak, kernel = matmul_peak(cfg.device, cfg.dtype, 1 if smoke else 3 if q else 6, clock, smoke)
    put("peak_flops", peak)
    out["peak_kernel"] = kernel

    # (a) naive re-encoding
    for h in cfg.naive_histories:
        say(f"naive re-encoding, history {h}")
        steps = 1 if smoke else (4 if h > 10 else 20) if q else (12 if h > 10 else 60)
        naive_user_steps_per_second(sim, h, k, 1, rng, clock)  # warm-up
        rate, tok = naive_user_steps_per_second(sim, h, k, steps, rng, clock)
        put(f"naive_h{h}", rate)
        out[f"naive_h{h}_tokens_per_forward"] = tok
    rss.append(rss_mb())
    sim.close()

    # (b) native vector env of LLMUserSim-v0
    sizes = cfg.num_envs or (GPU_NUM_ENVS if cfg.device == "cuda" else CPU_NUM_ENVS)
    skipped = []
    for n in sizes:
        if cfg.device == "cuda":
            free, _total = torch.cuda.mem_get_info()
            if _cache_bytes(sim, n, k) > 0.6 * free:  # the KV cache alone must fit
                skipped.append(n)
                continue
        say(f"LLMUserSim-v0 vector env, num_envs {n}")
        steps = max(3, min(40, 4096 // n)) if q else max(6, min(150, 16384 // n))
        sim_n = _load(cfg, n)
        rate = vector_env_user_steps_per_second(
            "LLMUserSim-v0",
            n,
            1 if smoke else steps,
            1 if smoke else 2 if q else 5,
            cfg.seed,
            clock,
            simulator=sim_n,
            device=cfg.device,
            dtype=cfg.dtype,
            **cfg.env_kwargs,
        )
        put(f"batched_{n}", rate)
        rss.append(rss_mb())
        del sim_n
    if skipped:
        out["skipped_num_envs"] = skipped

    # (c) history sweep at a fixed batch, simulator driven directly
    n = cfg.sweep_num_envs
    say(f"history sweep at num_envs {n}")
    sim_n = _load(cfg, n)
    sweep = history_sweep(sim_n, n, tuple(cfg.histories), k, rng, clock)
    rss.append(rss_mb())
    sim_n.close()
    per = sweep["per_history"]
    for h, fig in per.items():
        put(
            f"batched_{n}_h{h}",
            np.array([fig["user_steps_per_second"], fig["user_steps_per_cpu_second"]]),
        )
    out["history_sweep"] = {
        "num_envs": n,
        "attention_window_steps": int(sim_n.window),
        "refill_period": sweep["period"],
        "first_refill": sweep["first_refill"],
        "steps": sweep["steps"],
        "per_history": {str(h): v for h, v in per.items()},
    }
    secs = np.maximum([sweep["seconds"], sweep["cpu_seconds"]], 1e-9)
    achieved = sweep["flops"] / secs
    put("achieved_flops", achieved)
    put("peak_fraction", achieved / np.maximum(peak, 1e-9))
    out["executed_flops_per_second"] = sweep["executed_flops"] / secs[0]

    # (d) the parametric world
    n = cfg.parametric_num_envs
    say(f"ParametricUserSim-v0 vector env, num_envs {n}")
    rate = vector_env_user_steps_per_second(
        "ParametricUserSim-v0",
        n,
        5 if smoke else 200 if q else 1000,
        1 if smoke else 20,
        cfg.seed,
        clock,
        fixed_actions=True,
        **cfg.env_kwargs,
    )
    put(f"parametric_{n}", rate)

    # (e) every client's path at the same batch
    for n in cfg.client_num_envs:
        measure_clients(cfg, n, clock, out, cpu, say)

    # ratios, memory, context
    h50 = f"batched_{cfg.sweep_num_envs}_h50"
    for table in (out, cpu):
        if "naive_h50" in table and h50 in table:
            table["batched_vs_naive_h50"] = table[h50] / table["naive_h50"]
    if 1 in per and 200 in per:
        out["history_cost_ratio_200_vs_1"] = (
            per[200]["seconds_per_step"] / per[1]["seconds_per_step"]
        )
        cpu["history_cost_ratio_200_vs_1"] = (
            per[200]["cpu_seconds_per_step"] / per[1]["cpu_seconds_per_step"]
        )
    rss.append(rss_mb())
    out["peak_rss_mb"] = max(max(rss), peak_rss_mb())
    if cfg.device == "cuda":
        out["peak_cuda_allocated_mb"] = torch.cuda.max_memory_allocated() / 2**20
    out["targets"] = {
        key: {
            "target": f"{op} {bound:g}",
            "value": out.get(key),
            "value_per_cpu_second": cpu.get(key),
            "met": _met(out.get(key), op, bound),
            "met_per_cpu_second": _met(cpu.get(key), op, bound),
        }
        for key, (op, bound) in TARGETS.items()
    }
    out["per_cpu_second"] = cpu
    elapsed = clock() - t_start
    out["seconds"] = float(elapsed[0])
    out["cpu_seconds"] = float(elapsed[1])
    out["cpu_utilisation"] = float(elapsed[1] / elapsed[0]) / max(1, torch.get_num_threads())
    out["cpu_count"] = os.cpu_count()
    out["load_average"] = {"start": list(load_before), "end": list(os.getloadavg())}
    return out


def _shared_network(sim: Any, cfg: SpeedConfig) -> Any:
    """A capacity-1 simulator of its own sessions around `sim`'s network (single envs)."""
    from simulators.gpt2_user import GPT2UserSimulator

    return GPT2UserSimulator(
        sim.model,
        sim.tokenizer,
        sim.profile_encoder,
        sim.population,
        sim.items,
        sim.extra,
        cfg.device,
        cfg.dtype,
        1,
    )


def measure_clients(
    cfg: SpeedConfig,
    n: int,
    clock: Clock,
    out: dict[str, Any],
    cpu: dict[str, float],
    say: Callable[[str], None],
) -> None:
    """Time LLMUserSim-v0 through every client's path at n users (see the module docstring).

    Writes `direct_{n}`, `torchrl_{n}`, `sb3_{n}` and the ratios to the direct rate into
    out / cpu, and every client's rate under `clients[str(n)]`.
    """
    k = EnvConfig(**cfg.env_kwargs).slate_size
    q, smoke = cfg.quick, cfg.smoke
    steps = 1 if smoke else max(3, min(40, 4096 // n)) if q else max(6, min(150, 16384 // n))
    warm = 1 if smoke else 2 if q else 5
    env_kw = {"device": cfg.device, "dtype": cfg.dtype, **cfg.env_kwargs}
    rates: dict[str, np.ndarray] = {}
    say(f"clients at num_envs {n}: simulator driven directly")
    sim = _load(cfg, n)
    rates["direct"] = direct_rate(sim, n, k, steps, warm, cfg.seed, clock)
    sim.close()
    say(f"clients at num_envs {n}: native vector env")
    rates["vector_env"] = vector_env_rate(
        "LLMUserSim-v0", n, steps, warm, cfg.seed, clock, simulator=_load(cfg, n), **env_kw
    )
    say(f"clients at num_envs {n}: SB3 fast path")
    rates["sb3_fast_path"] = sb3_rate(
        "LLMUserSim-v0", n, steps, warm, cfg.seed, clock, simulator=_load(cfg, n), **env_kw
    )
    if torchrl_available():
        say(f"clients at num_envs {n}: TorchRL env")
        rates["torchrl_env"] = torchrl_rate(
            "LLMUserSim-v0", n, steps, warm, cfg.seed, clock, simulator=_load(cfg, n), **env_kw
        )
    if n <= SINGLE_ENV_CLIENTS_MAX and cfg.device == "cpu":
        say(f"clients at num_envs {n}: single envs (SB3 DummyVecEnv, Tianshou)")
        base = _load(cfg, 1)
        rates.update(
            single_env_client_rates(
                "LLMUserSim-v0",
                lambda: _shared_network(base, cfg),
                n,
                1 if smoke else 2,
                1,
                cfg.seed,
                clock,
                **cfg.env_kwargs,
            )
        )
    out.setdefault("clients", {})[str(n)] = {c: float(r[0]) for c, r in rates.items()}
    out.setdefault("clients_per_cpu_second", {})[str(n)] = {
        c: float(r[1]) for c, r in rates.items()
    }
    for key, client in (("direct", "direct"), ("torchrl", "torchrl_env"), ("sb3", "sb3_fast_path")):
        if client in rates:
            out[f"{key}_{n}"], cpu[f"{key}_{n}"] = float(rates[client][0]), float(rates[client][1])
    for table in (out, cpu):
        for key in ("torchrl", "sb3"):
            if f"{key}_{n}" in table:
                table[f"{key}_vs_direct_{n}"] = table[f"{key}_{n}"] / table[f"direct_{n}"]


def _met(value: float | None, op: str, bound: float) -> bool | None:
    if value is None or not math.isfinite(value):
        return None
    return value >= bound if op == ">=" else value <= bound


def default_checkpoint_exists() -> bool:
    """Whether the embedded default simulator is present."""
    from simulators.gpt2_user import DEFAULT_SIMULATOR_DIR

    return Path(DEFAULT_SIMULATOR_DIR, "model.safetensors").is_file()
