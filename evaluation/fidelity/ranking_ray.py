"""The fidelity report's policy ranking on Ray actors: the same returns as one process.

`llm-usersim validate --ray [ADDRESS]` (`run_validation(cfg, ray=RayConfig(...))`) plays the
ranking's users (`evaluation.fidelity.ranking.rank_policies`) on actors: every named policy on
both sides (the simulator under test and the ground-truth world) is a unit or, for a policy whose
slates depend only on the user (`user_independent`: popular, greedy, SB3 models), one unit per
actor with a contiguous shard of the users. Each actor loads the simulator once (from its
checkpoint, on its own device) with the world's population, as the driver does. Policies given
as objects (the PPO models `--sim2real` trains in the driver) are played in the driver.
"""

from __future__ import annotations

import logging
import time
from typing import Any

import numpy as np

from evaluation.distributed import (
    ActorPool,
    RayConfig,
    Unit,
    WorkerState,
    ray_runtime,
    user_shards,
)
from evaluation.fidelity.ranking import (
    log_policy,
    make_policy,
    rank_policies,
    side_env,
    world_population,
)
from recsim_env.episodes import run_episodes

log = logging.getLogger(__name__)


def _actor_sim(state: WorkerState, sim_path: str, world_config: Any, rows: int) -> Any:
    """The actor's copy of the simulator under test, drawing the world's population."""
    from simulators.gpt2_user import load_batched_simulator
    from simulators.parametric import ParametricUserModel

    def load() -> Any:
        sim = load_batched_simulator(sim_path, device=state.device, capacity=rows)
        sim.population = world_population(sim, ParametricUserModel(world_config))
        return sim

    return state.cached(("ranking-sim", sim_path, repr(world_config)), load)


def _side_unit(
    state: WorkerState,
    side: str,
    spec: str,
    sim_path: str,
    world_config: Any,
    env_kwargs: dict[str, Any],
    counts: np.ndarray | None,
    seed: int,
    first: int,
    users: int,
    rows: int,
    trust_sb3_zip: bool = False,
) -> tuple[np.ndarray, float]:
    """On an actor: returns of users first .. first + users - 1 of one policy on one side."""
    from recsim_env.config import SLATE_AGENT_KWARGS, EnvConfig
    from simulators.parametric import ParametricUserModel

    sim = _actor_sim(state, sim_path, world_config, rows) if side == "sim" else None
    world = ParametricUserModel(world_config)
    vec = side_env(side, sim, world, EnvConfig(**{**env_kwargs, **SLATE_AGENT_KWARGS}), rows)
    agent = make_policy(spec, vec, seed, counts, trust_sb3_zip)
    t0 = time.perf_counter()
    returns = run_episodes(agent, vec, users, seed + first).returns
    return returns, time.perf_counter() - t0


def rank_policies_on_ray(
    policies: dict[str, Any],
    sim: Any,
    world: Any,
    env_kwargs: dict[str, Any],
    users: int,
    seed: int,
    num_envs: int,
    counts: np.ndarray | None,
    progress: bool,
    *,
    ray: RayConfig,
    sim_path: str,
    device: str = "cpu",
    trust_sb3_zip: bool = False,
) -> dict[str, dict[str, Any]]:
    """`rank_policies` with the named policies' users played on Ray actors.

    Which policies exist on each side and which split by user is decided in the driver by
    building them there, as `rank_policies` does (so the same ones are left out); a policy with
    shared randomness or online learning plays all its users on one actor with the
    single-process rows. `seconds` per side is the sum of the units' run times.
    """
    from agents.registry import AgentUnavailable
    from recsim_env.config import SLATE_AGENT_KWARGS, EnvConfig

    cfg = EnvConfig(**{**env_kwargs, **SLATE_AGENT_KWARGS})  # what the baselines act on
    n = max(1, min(num_envs, users))
    named: dict[str, bool] = {}  # label -> split by user
    local: dict[str, Any] = {}
    saved_population = sim.population
    sim.population = world_population(sim, world)
    try:
        for label, spec in policies.items():
            if not isinstance(spec, str):
                local[label] = spec
                continue
            independent = True
            try:
                for side in ("sim", "true"):
                    env = side_env(side, sim, world, cfg, n)
                    agent = make_policy(spec, env, seed, counts, trust_sb3_zip)
                    independent &= bool(getattr(agent, "user_independent", False))
            except (AgentUnavailable, ImportError) as exc:
                log.warning("policy %s unavailable on the %s side: %s", label, side, exc)
                continue
            named[label] = independent
    finally:
        sim.population = saved_population
    out: dict[str, dict[str, Any]] = {}
    if named:
        with ray_runtime(ray), ActorPool(ray, device) as pool:
            units: list[Unit] = []
            owner: list[tuple[str, str]] = []
            for label, independent in named.items():
                shards = user_shards(users, pool.size) if independent else [(0, users)]
                for side in ("sim", "true"):
                    for first, count in shards:
                        rows = min(count, num_envs) if independent else n
                        spec = policies[label]
                        args: tuple[Any, ...] = (side, spec, sim_path, world.config)
                        args += (
                            env_kwargs,
                            counts,
                            seed,
                            first,
                            count,
                            max(1, rows),
                            trust_sb3_zip,
                        )
                        where = f"users {first}-{first + count - 1}"
                        units.append(
                            Unit(_side_unit, args, f"{label} on the {side} side ({where})")
                        )
                        owner.append((label, side))
            parts = pool.run(units)
        for label in named:
            res: dict[str, Any] = {"seconds": {}}
            for side in ("sim", "true"):
                mine = [p for p, o in zip(parts, owner) if o == (label, side)]
                res[side] = np.concatenate([r for r, _s in mine])
                res["seconds"][side] = round(sum(s for _r, s in mine), 2)
            out[label] = res
            if progress:
                log_policy(label, res)
    if local:
        out.update(
            rank_policies(local, sim, world, env_kwargs, users, seed, num_envs, counts, progress)
        )
    return {label: out[label] for label in policies if label in out}
