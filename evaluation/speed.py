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
"""

from __future__ import annotations

import functools
import math
import os
import resource
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, cast

import numpy as np
import torch

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
        if self.random_size is not None:
            from simulators.lm.gpt2 import MODEL_SIZES

            if self.random_size not in MODEL_SIZES:
                raise ValueError(
                    f"random_size must be one of {sorted(MODEL_SIZES)}, got {self.random_size!r}"
                )


class _Clock:
    """(wall-clock seconds, process CPU seconds) as an array, after waiting for the device.

    Both are kept: on a shared machine the wall clock measures the share of the CPU this process
    got as much as the code, while CPU time (with one torch thread, one core) measures the code.
    """

    def __init__(self, device: str) -> None:
        self.cuda = device == "cuda"

    def __call__(self) -> np.ndarray:
        if self.cuda:
            torch.cuda.synchronize()
        return np.array([time.perf_counter(), time.process_time()])


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


def _random_slates(rng: np.random.Generator, n: int, num_items: int, k: int) -> np.ndarray:
    """(n, k) distinct item indices per row."""
    return np.argsort(rng.random((n, num_items)), axis=1)[:, :k]


# ------------------------------------------------------------------------------- naive baseline
def naive_user_steps_per_second(
    sim: Any, history: int, k: int, user_steps: int, rng: np.random.Generator, clock: _Clock
) -> tuple[np.ndarray, float]:
    """User-steps/s of full re-encoding at `history` steps, one user at a time.

    Returns:
        (user-steps per [wall, CPU] second, mean tokens per forward).
    """
    from simulators.lm.attention import FullAttention, window_bias
    from simulators.lm.model import TokenBlock
    from simulators.tokenization import step_block_length

    model, tok = sim.model, sim.tokenizer
    nr = sim.behaviours.size
    dev = sim.device
    known = model.item_known.cpu().numpy()
    c = sim.sim_config.context_length
    block = step_block_length(k)
    p = sim.prefix_length
    profile = sim.population[int(rng.integers(len(sim.population)))]
    slates = [_random_slates(rng, 1, sim.num_items, k)[0] for _ in range(history + user_steps)]
    resp = [(rng.random(k) < 0.15).astype(np.int64) for _ in range(history)]
    cats = sim.item_category
    enc = tok.encode_session(profile, slates[:history], resp, False, known, cats)
    keep = min(history, (c - p - block) // block)  # whole recent steps that fit with a new block
    start = len(enc.input_ids) - keep * block
    chan = chan_of(enc)
    window = [np.concatenate([a[:p], a[start:]]) for a in chan]
    resp_pos = p + k + 2 + 2 * np.arange(k)  # r_j in an encoded single step
    forwards = tokens = 0
    with torch.inference_mode():
        t0 = clock()
        for s in range(user_steps):
            blk = chan_of(
                tok.encode_session(
                    profile, [slates[history + s]], [np.zeros(k)], False, known, cats
                )
            )
            for j in range(k + 1):
                upto = p + (k + 2 + 2 * j if j < k else block)  # through i_{j+1}, or r_k
                seq = [np.concatenate([w, b[p:upto]]) for w, b in zip(window, blk)]
                t = len(seq[0])
                tokens_in = TokenBlock(*(torch.as_tensor(a, device=dev)[None] for a in seq))
                pos = torch.arange(t, device=dev)[None]
                mask = torch.ones(t, t, dtype=torch.bool, device=dev).tril()[None, None]
                if sim.window:  # recency attention: the same context under the window bias
                    steps = torch.clamp((pos - p) // block, min=-1)
                    mask = window_bias(steps, steps, mask[:, 0], sim.window, sim.slopes, sim.dtype)
                    pos = torch.zeros_like(pos)
                h = model(tokens_in, pos, FullAttention(mask))
                logits = model.output_logits(h[:, -1])[0]
                forwards += 1
                tokens += t
                if j < k:
                    probs = torch.softmax(logits[:nr], -1).cpu().numpy()
                    r = int((rng.random() >= np.cumsum(probs)[:-1]).sum())
                    blk[0][resp_pos[j]] = tok.response_tokens[r]
                else:
                    float(torch.softmax(logits[nr : nr + 2], -1)[1])
        dt = clock() - t0
    return user_steps / np.maximum(dt, 1e-9), tokens / forwards


def chan_of(enc: Any) -> list[np.ndarray]:
    """The five input channels of an EncodedSession (ids, roles, slots, items, summary)."""
    return [enc.input_ids, enc.roles, enc.slots, enc.items, enc.summary]


# ------------------------------------------------------------------------------- vector envs
def vector_env_user_steps_per_second(
    env_id: str,
    num_envs: int,
    steps: int,
    warmup: int,
    seed: int,
    clock: _Clock,
    fixed_actions: bool = False,
    **kwargs: Any,
) -> np.ndarray:
    """User-steps per [wall, CPU] second of a native vector env of `env_id`.

    The env is `gym.make_vec(env_id, num_envs, vectorization_mode="vector_entry_point")`.
    Actions are random valid slates (distinct candidates), drawn before timing, or the first
    slate_size candidates every step with fixed_actions.
    """
    import gymnasium as gym

    import recsim_env  # noqa: F401  (registers the ids)

    vec = gym.make_vec(env_id, num_envs=num_envs, vectorization_mode="vector_entry_point", **kwargs)
    try:
        vec.reset(seed=seed)
        act_space = cast(gym.spaces.MultiDiscrete, vec.single_action_space)
        k = int(act_space.shape[0])
        nc = int(act_space.nvec[0])
        if fixed_actions:
            pool = [np.tile(np.arange(k), (num_envs, 1))]
        else:
            rng = np.random.default_rng(seed)
            pool = [np.argsort(rng.random((num_envs, nc)), axis=1)[:, :k] for _ in range(8)]
        for i in range(warmup):
            vec.step(pool[i % len(pool)])
        t0 = clock()
        for i in range(steps):
            vec.step(pool[i % len(pool)])
        dt = clock() - t0
    finally:
        vec.close()
    return num_envs * steps / np.maximum(dt, 1e-9)


# ------------------------------------------------------------------------------- history sweep
def refill_period(sim: Any, k: int) -> tuple[int, int]:
    """(first step that refills, steps between refills) of the sliding window for slate size k.

    (-1, 0) for a recency-attention simulator, which never refills.
    """
    from simulators.tokenization import step_block_length

    if sim.window:
        return -1, 0

    c = sim.sim_config.context_length
    block = step_block_length(k)
    p = sim.prefix_length
    w = max(1, min(sim.sim_config.window_steps, (c - p) // block - 1))
    first = (c - p) // block  # lengths p + s * block; refill when + block > c
    first = next(s for s in range(first + 2) if p + s * block + block > c)
    keep = p + w * block
    period = next(j for j in range(1, c) if keep + j * block + block > c)
    return first, period


def history_sweep(
    sim: Any,
    num_envs: int,
    histories: tuple[int, ...],
    k: int,
    rng: np.random.Generator,
    clock: _Clock,
    progress: Callable[[int], None] | None = None,
) -> dict[str, Any]:
    """Drive the simulator through start_sessions/step (leave ignored) past every history.

    Returns per history: user-steps/s, the steps of its window, achieved FLOP/s, tokens per
    user-step; plus the sweep's total FLOPs and seconds.
    """
    first_refill, period = refill_period(sim, k)

    def window(h: int) -> int:
        if not period:
            return 5
        refills = [
            s
            for s in range(h, h + period)
            if s >= first_refill and (s - first_refill) % period == 0
        ]
        return period if refills else 5

    total = max(h + window(h) for h in histories)
    rows = np.arange(num_envs)
    profiles = sim.population[rng.integers(len(sim.population), size=num_envs)]
    slates = [_random_slates(rng, num_envs, sim.num_items, k) for _ in range(min(total, 32))]
    uni = [rng.random((num_envs, k + 1)) for _ in range(min(total, 32))]
    # warm-up: every attended length the sweep starts with (the ring's growth, or the first
    # cache lengths) has run once, so one-off kernel selection and allocation (CUDA, oneDNN)
    # stay out of the timed steps
    sim.start_sessions(rows, profiles)
    for s in range(min(total, sim.window + 3)):
        sim.step(rows, slates[s % len(slates)], uni[s % len(uni)])
    sim.start_sessions(rows, profiles)
    times = np.zeros((total, 2))
    flops = np.zeros(total)
    executed = np.zeros(total)
    tokens = np.zeros(total)
    stats = sim.stats  # executed work
    ring = bool(sim.window)
    for s in range(total):
        if ring:
            before = sim.steps_done[: len(rows)].cpu().numpy().copy()
        else:
            before = sim.cache.lengths.cpu().numpy().copy()
        f0 = stats["flops"] if stats else 0.0
        t0 = clock()
        sim.step(rows, slates[s % len(slates)], uni[s % len(uni)])
        times[s] = clock() - t0
        if ring:
            flops[s], tokens[s] = useful_flops_ring(sim, before, k)
        else:
            after = sim.cache.lengths.cpu().numpy()
            flops[s], tokens[s] = useful_flops(sim, before, after, k)
        executed[s] = (stats["flops"] - f0) if stats else np.nan
        if progress is not None:
            progress(1)
    out: dict[str, Any] = {"period": period, "first_refill": first_refill, "per_history": {}}
    for h in histories:
        sl = slice(h, h + window(h))
        sec = np.maximum(times[sl].sum(axis=0), 1e-9)  # (wall, cpu)
        m = sl.stop - sl.start
        out["per_history"][h] = {
            "user_steps_per_second": float(num_envs * m / sec[0]),
            "user_steps_per_cpu_second": float(num_envs * m / sec[1]),
            "seconds_per_step": float(sec[0] / m),
            "cpu_seconds_per_step": float(sec[1] / m),
            "steps": [sl.start, sl.stop - 1],
            "achieved_flops": float(flops[sl].sum() / sec[0]),
            "achieved_flops_per_cpu_second": float(flops[sl].sum() / sec[1]),
            "executed_flops_per_second": float(executed[sl].sum() / sec[0]),
            "useful_tokens_per_user_step": float(tokens[sl].sum())
            / num_envs
            / (sl.stop - sl.start),
        }
    out["flops"] = float(flops.sum())
    out["executed_flops"] = float(executed.sum())
    out["seconds"] = float(times[:, 0].sum())
    out["cpu_seconds"] = float(times[:, 1].sum())
    out["steps"] = total
    return out


def useful_flops(sim: Any, before: np.ndarray, after: np.ndarray, k: int) -> tuple[float, float]:
    """Matmul FLOPs a step must do, from the cache lengths before and after it.

    Counted: the block's tokens, plus the re-encoded window of rows that were refilled, each
    token's projections and MLP plus attention over its causal length (no padding, no
    speculative re-runs).

    Returns:
        (FLOPs, tokens).
    """
    from simulators.tokenization import step_block_length

    bb = sim.model.backbone
    d, nl = bb.hidden_size, bb.n_layer
    block = step_block_length(k)
    per_token = 24 * d * d * nl
    attn = 4 * d * nl  # per (query, key) pair
    start = np.where(after - block == before, before, after - block)  # a refilled row restarts
    refilled = after - block != before
    kept = (after - block)[refilled].astype(np.float64)
    n_tok = len(before) * block + kept.sum()
    pairs = (block * (start + 1) + block * (block - 1) / 2).sum() + (kept * (kept + 1) / 2).sum()
    return float(n_tok * per_token + pairs * attn), float(n_tok)


def useful_flops_ring(sim: Any, steps_before: np.ndarray, k: int) -> tuple[float, float]:
    """`useful_flops` of a recency-attention simulator.

    Every query of the block attends to the profile, the min(steps, window) earlier steps of
    its ring and its own block causally.

    Returns:
        (FLOPs, tokens).
    """
    from simulators.tokenization import step_block_length

    bb = sim.model.backbone
    d, nl = bb.hidden_size, bb.n_layer
    block = step_block_length(k)
    past = sim.prefix_length + np.minimum(steps_before, sim.window) * block
    pairs = (block * past + block * (block + 1) / 2).sum()
    n_tok = len(steps_before) * block
    return float(n_tok * 24 * d * d * nl + pairs * 4 * d * nl), float(n_tok)


# ------------------------------------------------------------------------------- peak and memory
def matmul_peak(
    device: str, dtype: str, reps: int, clock: _Clock, small: bool = False
) -> tuple[np.ndarray, str]:
    """Best FLOP per [wall, CPU] second of a large square matmul in dtype, and the best kernel.

    The kernels are torch.mm, and oneDNN's linear on CPU; the name returned is that of the
    kernel with the best wall-clock rate.
    """
    dt = getattr(torch, dtype)
    n = 256 if small else 2048 if device == "cpu" else 8192
    a = torch.randn(n, n, device=device, dtype=dt)
    b = torch.randn(n, n, device=device, dtype=dt)
    zero = torch.zeros(n, device=device, dtype=dt)
    kernels: dict[str, Callable[[], torch.Tensor]] = {"torch.mm": lambda: torch.mm(a, b)}
    if device == "cpu" and torch.backends.mkldnn.is_available():
        try:
            lin = torch.ops.mkldnn._linear_pointwise
            lin(a[:4], b, zero, "none", [], "")
            kernels["onednn.linear"] = lambda: lin(a, b, zero, "none", [], "")
        except (RuntimeError, AttributeError, TypeError, NotImplementedError):
            pass
    best, name = np.zeros(2), ""
    with torch.inference_mode():
        for kname, fn in kernels.items():
            fn()
            for _ in range(reps):
                t0 = clock()
                fn()
                rate = 2 * n**3 / np.maximum(clock() - t0, 1e-9)
                if rate[0] > best[0]:
                    name = kname
                best = np.maximum(best, rate)
    return best, name


def rss_mb() -> float:
    """Resident set size of this process now, in MiB."""
    import psutil

    return psutil.Process().memory_info().rss / 2**20


def peak_rss_mb() -> float:
    """Peak resident set size of this process so far, in MiB (getrusage)."""
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak / 2**20 if sys.platform == "darwin" else peak / 2**10


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
    clock = _Clock(cfg.device)
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


def _met(value: float | None, op: str, bound: float) -> bool | None:
    if value is None or not math.isfinite(value):
        return None
    return value >= bound if op == ">=" else value <= bound


def default_checkpoint_exists() -> bool:
    """Whether the embedded default simulator is present."""
    from simulators.gpt2_user import DEFAULT_SIMULATOR_DIR

    return Path(DEFAULT_SIMULATOR_DIR, "model.safetensors").is_file()
