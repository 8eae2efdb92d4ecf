"""Free-running sessions of a simulator, to compare with logged ones.

Users are played from a queue through a fixed pool of batch rows: when a user leaves (or hits
the step limit) the next user takes the row, so the batched simulator never steps rows that
are done and the work is the number of user-steps, not users times the longest session.

- `rollout_logging_policy`: the env's own session engine (`SlateSessionBatch`: the engine of
  LLMUserSim-v0's vector env, candidates and uniforms from per-user counter streams) with the
  logging policies of `llm-usersim generate-logs` (random, popular, personalized, mixed, varied). With the users and
  seeds of `generate_seeds`, user i meets the same candidates, policy noise and uniforms as
  logged user i: a simulator with the true probabilities would reproduce the logs exactly.
- `rollout_replay`: for logs whose policy is unknown (imported data): each user is shown the
  logged slates of their session in order and, after those run out, slates drawn from other
  held-out sessions.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from simulators.behaviours import DEEPER, engaged
from simulators.progress import progress_bar


@dataclass
class Rollouts:
    """Sessions played by a simulator.

    Step arrays have one entry per shown slate; `responses` is padded with -1 beyond a slate's
    length.
    """

    user: np.ndarray  # (m,) user index
    step: np.ndarray  # (m,) step index within the session
    responses: np.ndarray  # (m, k_max) behaviour codes, -1 padded
    leave: np.ndarray  # (m,) bool
    lengths: np.ndarray  # (U,) steps per user
    left: np.ndarray  # (U,) bool, ended by leaving

    @classmethod
    def from_records(cls, users: int, records: list[tuple]) -> Rollouts:
        """Assemble from (users, steps, responses (B, k), leave) step batches."""
        k_max = max(r[2].shape[1] for r in records)
        resp = np.concatenate(
            [
                np.pad(r[2], ((0, 0), (0, k_max - r[2].shape[1])), constant_values=-1)
                for r in records
            ]
        )
        user = np.concatenate([r[0] for r in records])
        step = np.concatenate([r[1] for r in records])
        leave = np.concatenate([r[3] for r in records])
        lengths = np.bincount(user, minlength=users)
        left = np.zeros(users, dtype=bool)
        left[user[leave]] = True
        return cls(user, step, resp, leave, lengths, left)


def generate_seeds(
    world: Any, users: int, seed: int, batch_size: int = 1024
) -> tuple[np.ndarray, list[int]]:
    """The profiles (world vocabulary) and per-user env seeds `generate(users, ..., seed)` uses.

    Mirrors `recsim_env.log_generation.generate`: profiles are drawn first, then one seed per
    user, batch by batch, from the same generator.
    """
    rng = np.random.default_rng(seed)
    profiles = world.sample_profiles(users, rng)
    seeds: list[int] = []
    for start in range(0, users, batch_size):
        n = min(batch_size, users - start)
        seeds += [int(s) for s in rng.integers(0, 2**63, n)]
    return profiles, seeds


def rollout_logging_policy(
    sim: Any,
    cfg: Any,
    profiles: np.ndarray,
    seeds: list[int],
    policy: str,
    popularity: np.ndarray,
    pool: int = 256,
    progress: bool = False,
    appeal: np.ndarray | None = None,
) -> Rollouts:
    """Play one session per user under a generate-logs policy (see module docstring).

    Args:
        sim: a batched simulator (GPT2UserSimulator or ParametricUserModel).
        cfg: the EnvConfig (slate size, candidates, step limit).
        profiles: (U, slots) profile token indices in the simulator's vocabulary.
        seeds: (U,) env seeds of the users.
        policy: a generate-logs policy.
        popularity: (num_items,) popularity of the simulator's catalog items.
        pool: batch rows.
        progress: show a progress bar.
        appeal: (U, num_items) `user_appeal` of the users (policies that personalise).
    """
    from recsim_env.log_generation import choose_slates, needs_appeal, row_kinds
    from recsim_env.sessions import SlateSessionBatch

    users = len(seeds)
    if needs_appeal(policy) and appeal is None:
        raise ValueError(f"logging policy {policy!r} needs the users' appeal")
    pool = max(1, min(pool, users))
    sim.ensure_capacity(pool)
    batch = SlateSessionBatch(sim, cfg, pool)
    row_user = np.full(pool, -1, dtype=np.int64)
    kinds = np.zeros(pool, dtype=np.int64)
    nxt = 0
    records: list[tuple] = []
    bar = progress_bar(users, "validate: simulated sessions", "users", enabled=progress)

    def start(rows: np.ndarray) -> None:
        nonlocal nxt
        take = min(len(rows), users - nxt)
        rows, done = rows[:take], rows[take:]
        row_user[done] = -1
        if take == 0:
            return
        who = np.arange(nxt, nxt + take)
        nxt += take
        batch.reset_rows(rows, [seeds[u] for u in who])
        batch.profiles[rows] = profiles[who]
        sim.start_sessions(rows, profiles[who])
        row_user[rows] = who
        kinds[rows] = row_kinds(policy, batch.keys[rows])

    start(np.arange(pool))
    while (row_user >= 0).any():
        alive = np.nonzero(row_user >= 0)[0]
        own = None if appeal is None else appeal[row_user[alive]]
        actions = choose_slates(batch, alive, popularity, kinds[alive], own)
        out, _, _ = batch.step(alive, actions)
        records.append(
            (row_user[alive].copy(), batch.steps[alive] - 1, out.responses.copy(), out.leave.copy())
        )
        ended = out.leave | (batch.steps[alive] >= cfg.max_episode_steps)
        if ended.any():
            bar.update(int(ended.sum()))
            start(alive[ended])
    bar.close()
    return Rollouts.from_records(users, records)


def rollout_replay(
    sim: Any,
    slates: list[list[np.ndarray]],
    profiles: np.ndarray,
    seed: int,
    max_steps: int,
    pool: int = 256,
    progress: bool = False,
) -> Rollouts:
    """Show each user its logged slates in order, then slates of other sessions (see module).

    Args:
        sim: a batched simulator.
        slates: per user, the logged slates (catalog indices) in order.
        profiles: (U, slots) profile token indices in the simulator's vocabulary.
        seed: seed of the uniforms (user i has stream seed + i) and of the extra slates.
        max_steps: step limit (sessions still going are cut).
        pool: batch rows.
        progress: show a progress bar.
    """
    from recsim_env.sessions import seed_to_key
    from simulators.rng import uniforms

    users = len(slates)
    pool = max(1, min(pool, users))
    sim.ensure_capacity(pool)
    flat = [s for user in slates for s in user]
    rng = np.random.default_rng(seed)
    keys = np.zeros(pool, dtype=np.uint64)
    counters = np.zeros(pool, dtype=np.uint64)
    steps = np.zeros(pool, dtype=np.int64)
    row_user = np.full(pool, -1, dtype=np.int64)
    nxt = 0
    records: list[tuple] = []
    bar = progress_bar(users, "validate: simulated sessions", "users", enabled=progress)

    def start(rows: np.ndarray) -> None:
        nonlocal nxt
        take = min(len(rows), users - nxt)
        rows, done = rows[:take], rows[take:]
        row_user[done] = -1
        if take == 0:
            return
        who = np.arange(nxt, nxt + take)
        nxt += take
        keys[rows] = [seed_to_key(seed + int(u)) for u in who]
        counters[rows] = 0
        steps[rows] = 0
        sim.start_sessions(rows, profiles[who])
        row_user[rows] = who

    start(np.arange(pool))
    while (row_user >= 0).any():
        alive = np.nonzero(row_user >= 0)[0]
        shown = []
        for r in alive:
            own = slates[row_user[r]]
            t = steps[r]
            shown.append(own[t] if t < len(own) else flat[rng.integers(len(flat))])
        sizes = np.array([len(s) for s in shown])
        for k in np.unique(sizes):
            sel = np.nonzero(sizes == k)[0]
            rows = alive[sel]
            u = uniforms(keys[rows], counters[rows], int(k) + 1)
            counters[rows] += np.uint64(k + 1)
            out = sim.step(rows, np.stack([shown[i] for i in sel]), u)
            steps[rows] += 1
            records.append((row_user[rows].copy(), steps[rows] - 1, out.responses, out.leave))
            ended = out.leave | (steps[rows] >= max_steps)
            if ended.any():
                bar.update(int(ended.sum()))
                start(rows[ended])
    bar.close()
    return Rollouts.from_records(users, records)


def click_buy(responses: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(clicked, bought, shown) bool arrays of -1-padded responses (bought: past a click)."""
    shown = responses >= 0
    return engaged(responses) & shown, (responses >= DEEPER) & shown, shown
