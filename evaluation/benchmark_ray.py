"""The benchmark on Ray actors: `run_benchmark_on_ray`, the same figures as one process.

`llm-usersim benchmark --ray [ADDRESS]` (`run_benchmark(cfg, ray=RayConfig(...))`). The work is
cut into units (`evaluation.distributed`): one that logs the popularity counts and builds every
agent, then the users of every agent, split or not (see `run_benchmark_on_ray`). Each actor
keeps one vector env per row count and reuses it for all its units.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

import numpy as np

from evaluation.benchmark import (
    BenchmarkConfig,
    SlateRecorder,
    build_agents,
    item_novelty,
    make_benchmark_agent,
    popularity_counts,
    simulator_feature_count,
    summarize,
)
from evaluation.distributed import (
    ActorPool,
    RayConfig,
    Unit,
    WorkerState,
    ray_runtime,
    user_shards,
)
from recsim_env.episodes import EpisodeStats, make_episode_env, run_episodes

log = logging.getLogger(__name__)


def _unit_env(state: WorkerState, cfg: BenchmarkConfig, rows: int) -> Any:
    """The actor's vector env of `rows` rows (made once per actor and reused)."""
    kwargs = state.env_kwargs(cfg.env_kwargs)
    key = ("benchmark", cfg.env, rows, repr(sorted(kwargs.items())))
    return state.cached(key, lambda: make_episode_env(cfg.env, rows, **kwargs))


def _plan_unit(state: WorkerState, cfg: BenchmarkConfig) -> dict[str, Any]:
    """On an actor: the popularity counts and which agents exist and split by user."""
    vec = _unit_env(state, cfg, min(cfg.users, cfg.batch))
    counts = popularity_counts(cfg, vec)
    agents, notes = build_agents(cfg, vec, counts)
    return {
        "counts": counts,
        "agents": [
            (n, label, bool(getattr(a, "user_independent", False))) for n, label, a in agents
        ],
        "notes": notes,
    }


def _users_unit(
    state: WorkerState,
    cfg: BenchmarkConfig,
    name: str,
    counts: np.ndarray,
    first: int,
    users: int,
    rows: int,
) -> dict[str, Any]:
    """On an actor: users first .. first + users - 1 of one agent (seeded seed + i)."""
    vec = _unit_env(state, cfg, rows)
    agent = make_benchmark_agent(name, vec, cfg, counts)
    recorder = SlateRecorder(users, item_novelty(counts), simulator_feature_count(vec))
    stats = run_episodes(agent, vec, users, cfg.seed + first, observer=recorder)
    return {"first": first, "stats": stats, "recorder": recorder.state()}


def run_benchmark_on_ray(
    cfg: BenchmarkConfig,
    ray: RayConfig,
    on_agent: Callable[[str], None] | None = None,
    on_done: Callable[[int], None] | None = None,
) -> dict[str, dict[str, Any]]:
    """`run_benchmark` with the users split across Ray actors; the same figures.

    One actor first logs the popularity counts and builds every agent (on a vector env of the
    single-process run's rows). Then the users of an agent whose slates depend only on the
    user (`user_independent`: popular, greedy, SB3 models) are split into one contiguous
    shard per actor; an agent with shared randomness or online learning (random, LinUCB,
    Thompson, SlateQ, text similarity) plays all its users on one actor, on a vector env of
    the single-process rows, exactly as in one process (agents run in parallel instead). So
    every user's figures, and the JSON, equal the single-process run's; `seconds` is the sum
    of the agent's units' run times.
    """
    device = str(cfg.env_kwargs.get("device", "cpu"))
    rows_all = min(cfg.users, cfg.batch)
    with ray_runtime(ray), ActorPool(ray, device) as pool:
        plan = pool.run([Unit(_plan_unit, (cfg,), "the popularity counts")])[0]
        for note in plan["notes"]:
            log.warning("%s", note)
        counts = plan["counts"]
        units: list[Unit] = []
        owner: list[str] = []
        for name, label, independent in plan["agents"]:
            shards = user_shards(cfg.users, pool.size) if independent else [(0, cfg.users)]
            for first, n in shards:
                rows = min(n, cfg.batch) if independent else rows_all
                args = (cfg, name, counts, first, n, rows)
                units.append(Unit(_users_unit, args, f"{label} (users {first}-{first + n - 1})"))
                owner.append(label)

        def progress(i: int, part: dict[str, Any]) -> None:
            if on_agent is not None:
                on_agent(owner[i])
            if on_done is not None:
                on_done(len(part["stats"].returns))

        parts = pool.run(units, on_result=progress)
    novelty = item_novelty(counts)
    results: dict[str, dict[str, Any]] = {}
    for _name, label, _independent in plan["agents"]:
        mine = [p for p, o in zip(parts, owner) if o == label]
        stats = EpisodeStats(
            **{
                f: np.concatenate([getattr(p["stats"], f) for p in mine])
                for f in ("returns", "engaged", "deeper", "steps", "shown")
            },
            seconds=sum(p["stats"].seconds for p in mine),
        )
        recorder = SlateRecorder(cfg.users, novelty)
        for p in mine:
            recorder.absorb(p["recorder"], p["first"])
        results[label] = summarize(stats, recorder, cfg.seed)
    return results
