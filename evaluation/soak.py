"""Soak test: drive a native vector env for many user-steps and watch the process's memory.

Memory is sampled (resident set size, and allocated CUDA memory on a GPU) at regular intervals.
The figure of merit is the growth after warm-up::

    rss_growth_fraction = (final RSS - RSS after warm-up) / RSS after warm-up

Warm-up is the first tenth of the run, at most 100 env steps: long enough for every code path to
have run (autoresets, the sliding-window refill, allocator pools filled), short against the run.
Both reference samples are taken after `gc.collect()`.
"""

from __future__ import annotations

import gc
import math
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, cast

import numpy as np
import torch

from evaluation.speed_measurements import peak_rss_mb, rss_mb
from recsim_env.config import SLATE_AGENT_KWARGS

WARMUP_ENV_STEPS = 100
"""Upper bound of the warm-up, in env steps."""


@dataclass(frozen=True, kw_only=True)
class SoakConfig:
    """What `soak` runs."""

    steps: int = 1_000_000
    """User-steps to simulate (rounded up to whole env steps)."""
    num_envs: int = 256
    """Users per env step."""
    env_id: str = "LLMUserSim-v0"
    """A registered id with a native vector entry point."""
    sim: str | None = None
    """LLMUserSim-v0: simulator checkpoint directory (None: the embedded default)."""
    device: str = "cpu"
    """LLMUserSim-v0: 'cpu' or 'cuda'."""
    dtype: str = "float32"
    """LLMUserSim-v0: 'float32' or 'bfloat16'."""
    samples: int = 50
    """Memory samples over the run (besides warm-up and the end)."""
    seed: int = 0
    """Seed of users and actions."""
    env_kwargs: tuple[tuple[str, Any], ...] = ()
    """Extra env keyword arguments (EnvConfig fields)."""

    def __post_init__(self) -> None:
        """Validate."""
        if self.steps < 1:
            raise ValueError(f"steps must be >= 1, got {self.steps}")
        if self.num_envs < 1:
            raise ValueError(f"num_envs must be >= 1, got {self.num_envs}")
        if self.samples < 1:
            raise ValueError(f"samples must be >= 1, got {self.samples}")


def _sample(user_steps: int, seconds: float, cuda: bool) -> dict[str, float]:
    row = {"user_steps": user_steps, "seconds": round(seconds, 3), "rss_mb": rss_mb()}
    if cuda:
        row["cuda_allocated_mb"] = torch.cuda.memory_allocated() / 2**20
    return row


def soak(cfg: SoakConfig, advance: Callable[[int, dict], None] | None = None) -> dict[str, Any]:
    """Run the soak test; `advance(user_steps, last_sample)` is called after every env step."""
    import gymnasium as gym

    import recsim_env  # noqa: F401  (registers the ids)

    kwargs: dict[str, Any] = {**SLATE_AGENT_KWARGS, **dict(cfg.env_kwargs)}  # random slates
    if cfg.env_id.startswith("LLMUserSim"):
        kwargs.update(simulator=cfg.sim, device=cfg.device, dtype=cfg.dtype)
    cuda = cfg.device == "cuda" and cfg.env_id.startswith("LLMUserSim")
    n = cfg.num_envs
    env_steps = math.ceil(cfg.steps / n)
    warmup = max(1, min(WARMUP_ENV_STEPS, env_steps // 10))
    every = max(1, (env_steps - warmup) // cfg.samples)
    vec = gym.make_vec(cfg.env_id, num_envs=n, vectorization_mode="vector_entry_point", **kwargs)
    samples: list[dict[str, float]] = []
    try:
        vec.reset(seed=cfg.seed)
        act_space = cast(gym.spaces.MultiDiscrete, vec.single_action_space)
        k = int(act_space.shape[0])
        nc = int(act_space.nvec[0])
        rng = np.random.default_rng(cfg.seed)
        gc.collect()
        t0 = time.perf_counter()
        samples.append(_sample(0, 0.0, cuda))
        reference: dict[str, float] | None = None
        for i in range(1, env_steps + 1):
            actions = np.argsort(rng.random((n, nc)), axis=1)[:, :k]
            vec.step(actions)
            if i == warmup:
                gc.collect()
                reference = _sample(i * n, time.perf_counter() - t0, cuda)
                reference["warmup"] = True
                samples.append(reference)
            elif i == env_steps:
                gc.collect()
                samples.append(_sample(i * n, time.perf_counter() - t0, cuda))
            elif i > warmup and (i - warmup) % every == 0:
                samples.append(_sample(i * n, time.perf_counter() - t0, cuda))
            if advance is not None:
                advance(n, samples[-1])
        seconds = time.perf_counter() - t0
    finally:
        vec.close()
    assert reference is not None
    final = samples[-1]
    out: dict[str, Any] = {
        "env": cfg.env_id,
        "num_envs": n,
        "steps": env_steps * n,
        "env_steps": env_steps,
        "seconds": seconds,
        "steps_per_second": env_steps * n / seconds,
        "warmup_steps": warmup * n,
        "rss_after_warmup_mb": reference["rss_mb"],
        "final_rss_mb": final["rss_mb"],
        "rss_growth_fraction": (final["rss_mb"] - reference["rss_mb"]) / reference["rss_mb"],
        "max_rss_after_warmup_mb": max(
            s["rss_mb"] for s in samples if s["user_steps"] >= reference["user_steps"]
        ),
        "peak_rss_mb": peak_rss_mb(),
        "samples": samples,
    }
    if cfg.env_id.startswith("LLMUserSim"):
        out.update(checkpoint=cfg.sim or "default", device=cfg.device, dtype=cfg.dtype)
    if cuda:
        out["cuda_allocated_after_warmup_mb"] = reference["cuda_allocated_mb"]
        out["final_cuda_allocated_mb"] = final["cuda_allocated_mb"]
        out["cuda_growth_fraction"] = (
            final["cuda_allocated_mb"] - reference["cuda_allocated_mb"]
        ) / max(reference["cuda_allocated_mb"], 1e-9)
        out["peak_cuda_allocated_mb"] = torch.cuda.max_memory_allocated() / 2**20
    return out
