"""Logging policies and `generate`: sessions of fresh ground-truth users, as interaction logs.

The logging policies decide which candidates a user is shown while the world writes logs (what a
learned simulator is trained on, and what the fidelity report rolls out again); `generate` runs
them over fresh users of the world (or of any simulator sharing its profile vocabulary) through
the envs' own session logic, so logs and envs draw candidates and responses identically.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from recsim_env.config import EnvConfig
from recsim_env.sessions import SlateSessionBatch
from simulators.base import Response, UserSimulator
from simulators.logs import InteractionLogs
from simulators.parametric import ParametricUserModel
from simulators.progress import progress_bar
from simulators.rng import uniforms

POLICIES = ("random", "popular", "personalized", "mixed", "varied")
"""Logging policies: random slates; the most popular items first; items sampled by the user's
appeal (a recommender that knows the user's profile-given tastes, with exploration); 'mixed':
half the users random, half popular; 'varied': a third of the users each of random, popular
and personalized (the coverage a simulator needs to judge personalising policies)."""
POLICY_DESCRIPTIONS: dict[str, str] = {
    "random": "random slates",
    "popular": "the most popular candidates first",
    "personalized": "candidates sampled by the user's appeal (Plackett-Luce, temperature 0.5)",
    "mixed": "half the users see random slates, half popularity-ranked ones",
    "varied": "a third of the users each see random, popularity-ranked and personalized slates",
}
RANDOM, POPULAR, PERSONALIZED = 0, 1, 2
PERSONALIZED_TEMPERATURE = 0.5
"""Gumbel noise scale of the personalized policy: slates are a Plackett-Luce draw from
softmax(appeal / temperature), so they lean to the user's interests but keep exploring."""


def item_popularity(world: ParametricUserModel) -> np.ndarray:
    """Mean click appeal of every item over the world's population (the 'popular' ranking)."""
    u0, _ = world.initial_state(world.population[:2000])
    cfg = world.config
    appeal = np.exp(cfg.a_int * u0[:, world.item_topic] + cfg.a_q * world.item_quality)
    return appeal.mean(axis=0)


def user_appeal(world: ParametricUserModel, profiles: np.ndarray) -> np.ndarray:
    """(n, num_items) click utility of every item for users of world profiles, at session start.

    What the personalized logging policy ranks by: a recommender that has learned each user's
    profile-given tastes (not the drift within the session, which it does not see).
    """
    u0, _ = world.initial_state(np.asarray(profiles))
    cfg = world.config
    return cfg.a_int * u0[:, world.item_topic] + cfg.a_q * world.item_quality


def row_kinds(policy: str, keys: np.ndarray) -> np.ndarray:
    """Per user (by its session key), which slates it is shown: RANDOM, POPULAR or PERSONALIZED."""
    if policy not in POLICIES:
        raise ValueError(f"--policy must be one of {POLICIES}, got {policy!r}")
    keys = np.asarray(keys, dtype=np.uint64)
    if policy == "mixed":
        return np.where(keys & np.uint64(1), POPULAR, RANDOM)
    if policy == "varied":
        return (keys % np.uint64(3)).astype(np.int64)
    fixed = {"random": RANDOM, "popular": POPULAR, "personalized": PERSONALIZED}[policy]
    return np.full(len(keys), fixed, dtype=np.int64)


def needs_appeal(policy: str) -> bool:
    """Whether the policy ranks by the users' appeal (`user_appeal`)."""
    return policy in ("personalized", "varied")


def choose_slates(
    batch: SlateSessionBatch,
    rows: np.ndarray,
    popularity: np.ndarray,
    kinds: np.ndarray,
    appeal: np.ndarray | None = None,
) -> np.ndarray:
    """Candidate indices (len(rows), k) under the logging policy.

    Args:
        batch: the session batch (candidates, per-row policy noise streams).
        rows: the batch rows that step.
        popularity: (num_items,) popularity of every catalog item.
        kinds: (len(rows),) `row_kinds` of those rows.
        appeal: (len(rows), num_items) `user_appeal` of those rows' users (personalized rows).
    """
    k, c = batch.cfg.slate_size, batch.cfg.num_candidates
    keys, ctr = batch.keys[rows], batch.counters[rows]
    noise = uniforms(keys ^ np.uint64(0xA5A5A5A5), ctr, c)  # a separate stream for the policy
    cands = batch.candidates[rows]
    score = np.where((kinds == POPULAR)[:, None], popularity[cands] * (1.0 + 0.1 * noise), noise)
    personal = kinds == PERSONALIZED
    if personal.any():
        if appeal is None:
            raise ValueError("the personalized logging policy needs the users' appeal")
        gumbel = -np.log(-np.log(np.clip(noise[personal], 1e-12, 1.0 - 1e-12)))
        own = np.take_along_axis(appeal[personal], cands[personal], axis=1)
        # appeal is a utility (log scale), popularity a mean exp-utility: only compared per row
        score[personal] = own + PERSONALIZED_TEMPERATURE * gumbel
    return np.argsort(-score, axis=1)[:, :k]


def generate(
    users: int,
    policy: str,
    seed: int,
    cfg: EnvConfig,
    world: ParametricUserModel,
    batch_size: int = 1024,
    progress: bool = False,
    simulator: UserSimulator | None = None,
) -> InteractionLogs:
    """Simulate one session per fresh user and return the logs.

    Users (profiles) and the popularity ranking come from the world; the responses come from
    `simulator` when given (e.g. a GPT-2 user whose profile vocabulary is the world's), so the
    same users and policy can be rolled out in the world and in a learned simulator.
    """
    dynamics: UserSimulator = world if simulator is None else simulator
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
    bar = progress_bar(users, "generate-logs", "users", enabled=progress)
    for start in range(0, users, batch_size):
        ids = np.arange(start, min(start + batch_size, users))
        batch = SlateSessionBatch(dynamics, cfg, len(ids))
        rows = np.arange(len(ids))
        batch.reset_rows(rows, [int(s) for s in rng.integers(0, 2**63, len(ids))])
        batch.profiles[:] = profiles[ids]
        dynamics.start_sessions(rows, profiles[ids])
        kinds = row_kinds(policy, batch.keys)
        appeal = user_appeal(world, profiles[ids]) if needs_appeal(policy) else None
        alive = rows
        for step in range(cfg.max_episode_steps):
            actions = choose_slates(
                batch, alive, popularity, kinds[alive], None if appeal is None else appeal[alive]
            )
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
