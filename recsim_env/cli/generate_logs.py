"""`llm-usersim generate-logs`: sessions of fresh ground-truth users, written as Parquet logs."""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import pandas as pd
from tqdm.auto import tqdm

from recsim_env.cli._common import progress_enabled
from recsim_env.config import EnvConfig
from recsim_env.sessions import SlateSessionBatch
from simulators.base import Response
from simulators.logs import InteractionLogs, write_logs
from simulators.parametric import ParametricUserModel, WorldConfig
from simulators.rng import uniforms

HELP = "Write interaction logs of fresh ground-truth-world users (Parquet)."
POLICIES = ("random", "popular", "mixed")


def add_arguments(p: argparse.ArgumentParser) -> None:
    """Flags of generate-logs."""
    p.add_argument("--users", type=int, default=2000, help="number of users (one session each)")
    p.add_argument(
        "--policy",
        default="random",
        choices=POLICIES,
        help="logging policy: random slates, most popular first, or half/half per user",
    )
    p.add_argument("--seed", type=int, default=0, help="seed of the users and their responses")
    p.add_argument("--out", required=True, help="output directory")
    p.add_argument("--slate-size", type=int, default=EnvConfig().slate_size)
    p.add_argument("--num-candidates", type=int, default=EnvConfig().num_candidates)
    p.add_argument("--max-steps", type=int, default=EnvConfig().max_episode_steps)
    p.add_argument("--world-seed", type=int, default=WorldConfig().seed)
    p.add_argument("--batch", type=int, default=1024, help="users simulated together")


def item_popularity(world: ParametricUserModel) -> np.ndarray:
    """Mean click appeal of every item over the world's population (the 'popular' ranking)."""
    u0, _ = world.initial_state(world.population[:2000])
    cfg = world.config
    appeal = np.exp(cfg.a_int * u0[:, world.item_topic] + cfg.a_q * world.item_quality)
    return appeal.mean(axis=0)


def choose_slates(
    policy: str,
    batch: SlateSessionBatch,
    rows: np.ndarray,
    popularity: np.ndarray,
    greedy_rows: np.ndarray,
) -> np.ndarray:
    """Candidate indices (len(rows), k) under the logging policy."""
    k, c = batch.cfg.slate_size, batch.cfg.num_candidates
    keys, ctr = batch.keys[rows], batch.counters[rows]
    noise = uniforms(keys ^ np.uint64(0xA5A5A5A5), ctr, c)  # a separate stream for the policy
    if policy == "random":
        score = noise
    else:
        score = popularity[batch.candidates[rows]] * (1.0 + 0.1 * noise)
        if policy == "mixed":
            score = np.where(greedy_rows[:, None], score, noise)
    return np.argsort(-score, axis=1)[:, :k]


def generate(
    users: int,
    policy: str,
    seed: int,
    cfg: EnvConfig,
    world: ParametricUserModel,
    batch_size: int = 1024,
    progress: bool = False,
    simulator: object | None = None,
) -> InteractionLogs:
    """Simulate one session per fresh user and return the logs.

    Users (profiles) and the popularity ranking come from the world; the responses come from
    `simulator` when given (e.g. a GPT-2 user whose profile vocabulary is the world's), so the
    same users and policy can be rolled out in the world and in a learned simulator.
    """
    dynamics = world if simulator is None else simulator
    if simulator is not None and simulator.profile_encoder.vocab != world.profile_encoder.vocab:
        raise ValueError("the simulator's profile vocabulary differs from the world's")
    if users < 1:
        raise ValueError(f"--users must be >= 1, got {users}")
    if policy not in POLICIES:
        raise ValueError(f"--policy must be one of {POLICIES}, got {policy!r}")
    rng = np.random.default_rng(seed)
    profiles = world.sample_profiles(users, rng)
    user_ids = [f"u{seed}_{i}" for i in range(users)]
    popularity = item_popularity(world)
    item_names = np.array([f"i{i}" for i in range(world.num_items)], dtype=object)
    records: list[dict] = []
    bar = tqdm(total=users, desc="generate-logs", unit="user", disable=not progress)
    for start in range(0, users, batch_size):
        ids = np.arange(start, min(start + batch_size, users))
        batch = SlateSessionBatch(dynamics, cfg, len(ids))
        rows = np.arange(len(ids))
        batch.reset_rows(rows, [int(s) for s in rng.integers(0, 2**63, len(ids))])
        batch.profiles[:] = profiles[ids]
        dynamics.start_sessions(rows, profiles[ids])
        greedy_rows = (batch.keys & np.uint64(1)).astype(bool)
        alive = rows
        for step in range(cfg.max_episode_steps):
            actions = choose_slates(policy, batch, alive, popularity, greedy_rows[alive])
            out, _, slates = batch.step(alive, actions)
            for r, sl, resp, lv in zip(alive, slates, out.responses, out.leave):
                uid = user_ids[ids[r]]
                records.append(
                    {
                        "user_id": uid,
                        "session_id": f"{uid}_s0",
                        "step": step,
                        "items": item_names[sl].tolist(),
                        "responses": resp.astype(np.int8).tolist(),
                        "leave": bool(lv),
                    }
                )
            alive = alive[~out.leave]
            if len(alive) == 0:
                break
        bar.update(len(ids))
    bar.close()
    steps = pd.DataFrame.from_records(
        records, columns=["user_id", "session_id", "step", "items", "responses", "leave"]
    )
    meta = {
        "generator": "llm-usersim generate-logs",
        "policy": policy,
        "seed": seed,
        "users": users,
        "world": world.config.to_dict(),
        "env": cfg.to_dict(),
    }
    return InteractionLogs(
        steps=steps,
        items=world.items_table(),
        users=world.users_table(user_ids, profiles),
        meta=meta,
    )


def summarize(logs: InteractionLogs) -> dict:
    """Click rate, buy rate, session length and click rate per position of a log set."""
    slates = [np.asarray(r, dtype=np.int64) for r in logs.steps["responses"]]
    k = max(len(r) for r in slates)
    resp = np.full((len(slates), k), -1, dtype=np.int64)  # -1 where a slate is shorter
    for i, r in enumerate(slates):
        resp[i, : len(r)] = r
    shown = resp >= 0
    lengths = logs.steps.groupby(["user_id", "session_id"]).size()
    per_position = (resp > Response.SKIP).sum(axis=0) / np.maximum(shown.sum(axis=0), 1)
    return {
        "sessions": len(lengths),
        "steps": len(logs.steps),
        "click_rate": float((resp > Response.SKIP).sum() / shown.sum()),
        "buy_rate": float((resp == Response.BUY).sum() / shown.sum()),
        "mean_session_length": float(lengths.mean()),
        "click_rate_per_position": per_position.round(4)[:10].tolist(),
    }


def run(args: argparse.Namespace) -> int:
    """Generate and write the logs, then print their statistics."""
    cfg = EnvConfig(
        slate_size=args.slate_size,
        num_candidates=args.num_candidates,
        max_episode_steps=args.max_steps,
    )
    world = ParametricUserModel(WorldConfig(seed=args.world_seed))
    logs = generate(args.users, args.policy, args.seed, cfg, world, args.batch, progress_enabled())
    write_logs(logs, Path(args.out))
    stats = summarize(logs)
    print(f"wrote {stats['steps']} steps of {stats['sessions']} sessions to {args.out}")
    for key, value in stats.items():
        print(f"  {key}: {value}")
    return 0
