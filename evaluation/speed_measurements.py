"""The single measurements behind `evaluation.speed.measure`.

Each one times one thing and returns its rates per [wall, CPU] second, read off a `Clock`: the
naive re-encoding baseline, a native vector env, the batched simulator driven directly through
a history sweep (with the matmul FLOPs each step needs, counted analytically), the peak of a
large matmul, and this process's memory. `evaluation.speed` defines the figures and runs them
in one go.
"""

from __future__ import annotations

import resource
import sys
import time
from collections.abc import Callable
from typing import Any, cast

import numpy as np
import torch


class Clock:
    """(wall-clock seconds, process CPU seconds) as an array, after waiting for the device.

    Both are kept: on a shared machine the wall clock measures the share of the CPU this process
    got as much as the code, while CPU time (with one torch thread, one core) measures the code.
    """

    def __init__(self, device: str) -> None:
        """A clock for `device` ('cuda' synchronises before every reading)."""
        self.cuda = device == "cuda"

    def __call__(self) -> np.ndarray:
        """(wall-clock seconds, process CPU seconds) now."""
        if self.cuda:
            torch.cuda.synchronize()
        return np.array([time.perf_counter(), time.process_time()])


def _random_slates(rng: np.random.Generator, n: int, num_items: int, k: int) -> np.ndarray:
    """(n, k) distinct item indices per row."""
    return np.argsort(rng.random((n, num_items)), axis=1)[:, :k]


# ------------------------------------------------------------------------------- naive baseline
def naive_user_steps_per_second(
    sim: Any, history: int, k: int, user_steps: int, rng: np.random.Generator, clock: Clock
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
    clock: Clock,
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
    from recsim_env.config import SLATE_AGENT_KWARGS

    kwargs = {**SLATE_AGENT_KWARGS, **kwargs}  # random slates, every key (the earlier figures')
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
    clock: Clock,
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
    device: str, dtype: str, reps: int, clock: Clock, small: bool = False
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
