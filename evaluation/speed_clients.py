"""Throughput of the same users through each RL client's path, measured side by side.

Every path steps N users of one simulator network with random valid slates (drawn before
timing), episodes ending as they do (the user leaves, or 50 steps), and resets included:

- `direct`: the simulator driven directly through its tensor path
  (`TensorUserSimulator.start_sessions_tensors` / `step_tensors`, sessions restarted when their
  user leaves): the ceiling, no env at all.
- `torchrl_env`: `recsim_env.torchrl_env.SlateTorchRLEnv`, stepped as TorchRL's collectors step
  it (`step_and_maybe_reset`).
- `sb3_fast_path`: `agents.sb3.make_sb3_vec_env` (the native vector env as one SB3 VecEnv, in a
  VecMonitor), stepped as SB3 steps it.
- `vector_env`: the native Gymnasium vector env (what a CleanRL-style loop steps).
- `sb3_dummy_vec_env` / `tianshou_dummy_vector_env`: N single envs stepped one after another
  (SB3's `DummyVecEnv`, Tianshou's `DummyVectorEnv`); only up to `SINGLE_ENV_CLIENTS_MAX` users,
  as each user costs its own forward.

A client whose library is not installed (TorchRL, Tianshou) is left out.
"""

from __future__ import annotations

import importlib.util
from collections.abc import Callable
from typing import Any, cast

import numpy as np

from evaluation.speed_measurements import Clock

SINGLE_ENV_CLIENTS_MAX = 256
"""Largest batch timed through per-user single envs."""
MAX_STEPS = 50
"""Episode step limit of every path (the registered one)."""


def _rate(
    step: Callable[[int], object], users: int, steps: int, warmup: int, clock: Clock
) -> np.ndarray:
    """User-steps per [wall, CPU] second of `step(i)` calls that each step `users` users."""
    for i in range(warmup):
        step(i)
    t0 = clock()
    for i in range(steps):
        step(warmup + i)
    return users * steps / np.maximum(clock() - t0, 1e-9)


def _slate_pool(rng: np.random.Generator, n: int, c: int, k: int) -> list[np.ndarray]:
    """Eight sets of random valid slates (n, k) of candidate indices."""
    return [np.argsort(rng.random((n, c)), axis=1)[:, :k] for _ in range(8)]


def direct_rate(
    sim: Any, n: int, k: int, steps: int, warmup: int, seed: int, clock: Clock
) -> np.ndarray:
    """The simulator driven directly on its device (see the module docstring)."""
    import torch

    dev = sim.device
    g = torch.Generator(device="cpu").manual_seed(seed)
    rows = torch.arange(n, device=dev)
    pop = torch.as_tensor(np.asarray(sim.population), device=dev)
    draw = lambda m: pop[torch.randint(len(pop), (m,), generator=g).to(dev)]
    slates = [  # distinct items per row: the k largest of random keys
        torch.rand(n, sim.num_items, generator=g).topk(k).indices.to(dev) for _ in range(8)
    ]
    uni = [torch.rand(n, k + 1, generator=g, dtype=torch.float64).to(dev) for _ in range(8)]
    sim.ensure_capacity(n)
    sim.start_sessions_tensors(rows, draw(n))
    age = torch.zeros(n, dtype=torch.long, device=dev)

    def step(i: int) -> None:
        nonlocal age
        out = sim.step_tensors(rows, slates[i % 8], uni[i % 8])
        age += 1
        ended = torch.nonzero(out.leave | (age >= MAX_STEPS)).reshape(-1)
        if len(ended):
            sim.start_sessions_tensors(ended, draw(len(ended)))
            age[ended] = 0

    return _rate(step, n, steps, warmup, clock)


def torchrl_rate(
    env_id: str, n: int, steps: int, warmup: int, seed: int, clock: Clock, **kwargs: Any
) -> np.ndarray:
    """`SlateTorchRLEnv` stepped the way a TorchRL collector steps it."""
    import torch

    from recsim_env.torchrl_env import make_torchrl_env

    env = make_torchrl_env(env_id, num_envs=n, seed=seed, action_mode="slate", **kwargs)
    cfg = env.config
    pool = [
        torch.as_tensor(a, device=env.device)
        for a in _slate_pool(np.random.default_rng(seed), n, cfg.num_candidates, cfg.slate_size)
    ]
    td = env.reset()

    def step(i: int) -> None:
        nonlocal td
        td.set("action", pool[i % 8])
        _, td = env.step_and_maybe_reset(td)

    try:
        return _rate(step, n, steps, warmup, clock)
    finally:
        env.close()


def sb3_rate(
    env_id: str, n: int, steps: int, warmup: int, seed: int, clock: Clock, **kwargs: Any
) -> np.ndarray:
    """`make_sb3_vec_env` (SlateVecEnv in a VecMonitor) stepped the way SB3 steps it."""
    from agents.sb3 import make_sb3_vec_env

    venv = make_sb3_vec_env(env_id, num_envs=n, seed=seed, action_mode="slate", **kwargs)
    cfg = cast(Any, venv.unwrapped).config
    pool = _slate_pool(np.random.default_rng(seed), n, cfg.num_candidates, cfg.slate_size)
    venv.reset()
    try:
        return _rate(lambda i: venv.step(pool[i % 8]), n, steps, warmup, clock)
    finally:
        venv.close()


def vector_env_rate(
    env_id: str, n: int, steps: int, warmup: int, seed: int, clock: Clock, **kwargs: Any
) -> np.ndarray:
    """The native Gymnasium vector env (NEXT_STEP autoreset)."""
    import gymnasium as gym

    vec = gym.make_vec(
        env_id, num_envs=n, vectorization_mode="vector_entry_point", action_mode="slate", **kwargs
    )
    cfg = cast(Any, vec.unwrapped).config
    pool = _slate_pool(np.random.default_rng(seed), n, cfg.num_candidates, cfg.slate_size)
    vec.reset(seed=seed)
    try:
        return _rate(lambda i: vec.step(pool[i % 8]), n, steps, warmup, clock)
    finally:
        vec.close()


def single_env_client_rates(
    env_id: str,
    make_simulator: Callable[[], Any],
    n: int,
    steps: int,
    warmup: int,
    seed: int,
    clock: Clock,
    **kwargs: Any,
) -> dict[str, np.ndarray]:
    """SB3's DummyVecEnv and (if installed) Tianshou's DummyVectorEnv of n single envs.

    Each single env gets its own simulator from `make_simulator()` (its own session state; a
    GPT-2 user shares the network).
    """
    import gymnasium as gym
    from stable_baselines3.common.vec_env import DummyVecEnv

    def make() -> gym.Env:
        return gym.make(env_id, simulator=make_simulator(), action_mode="slate", **kwargs)

    out: dict[str, np.ndarray] = {}
    sb3 = DummyVecEnv([make for _ in range(n)])
    sb3.seed(seed)
    sb3.reset()
    space = sb3.action_space
    c, k = int(space.nvec[0]), len(space.nvec)  # type: ignore[attr-defined]
    pool = _slate_pool(np.random.default_rng(seed), n, c, k)
    out["sb3_dummy_vec_env"] = _rate(lambda i: sb3.step(pool[i % 8]), n, steps, warmup, clock)
    sb3.close()
    if importlib.util.find_spec("tianshou") is not None:
        from tianshou.env import DummyVectorEnv

        ts = DummyVectorEnv([make for _ in range(n)])
        ts.seed(seed)
        ts.reset()

        def ts_step(i: int) -> None:
            _, _, term, trunc, _ = ts.step(pool[i % 8])
            done = np.nonzero(np.asarray(term) | np.asarray(trunc))[0]
            if len(done):  # Tianshou's collector resets finished envs itself
                ts.reset(done)

        out["tianshou_dummy_vector_env"] = _rate(ts_step, n, steps, warmup, clock)
        ts.close()
    return out


def torchrl_available() -> bool:
    """Whether TorchRL (the `torchrl` extra) is installed."""
    return importlib.util.find_spec("torchrl") is not None
