"""Policy ranking in the simulator vs the ground truth, and sim-to-real PPO.

Every policy plays the same users in the LLMUserSim-v0 dynamics (the checkpoint under test) and
in the ParametricUserSim-v0 dynamics through the shared episode runner
(`recsim_env.episodes.run_episodes`): user i is seeded seed + i on both sides, and is the same
user (profile, candidates) in both, because the simulator is given the world's population to
draw from.

Greedy is "greedy under the env's own response model": the oracle (true probabilities) in the
world, and the simulator's own probabilities in the simulator (`UserSimulator.score_slates`).
"""

from __future__ import annotations

import logging
import time
from typing import Any

import numpy as np
from gymnasium.vector import AutoresetMode

from agents.registry import BASELINES
from evaluation.distributed import RayConfig
from recsim_env.episodes import run_episodes
from recsim_env.vector_env import SlateUserVectorEnv

log = logging.getLogger(__name__)

DEFAULT_POLICIES: tuple[str, ...] = BASELINES
"""Every baseline agent."""


def make_policy(
    name: Any, vec: Any, seed: int, counts: np.ndarray | None, trust_sb3_zip: bool = False
) -> Any:
    """Build a policy for one env.

    The policy is a baseline name or SB3 spec (`agents.registry.make_agent`), or an object
    with `predict` (used as is). Greedy reads the env's own simulator: the true probabilities
    in the world, the simulator's own in the simulator.
    """
    from agents.registry import make_agent

    if not isinstance(name, str):
        return name
    kwargs = {"counts": counts} if name == "popular" and counts is not None else {}
    return make_agent(name, vec, seed=seed, trust_sb3_zip=trust_sb3_zip, **kwargs)


def side_env(side: str, sim: Any, world: Any, cfg: Any, n: int) -> SlateUserVectorEnv:
    """A DISABLED-mode vector env of n rows on the simulator ("sim") or the world ("true")."""
    from simulators.parametric import ParametricUserModel

    disabled = AutoresetMode.DISABLED
    if side == "sim":
        sim.ensure_capacity(n)
        return SlateUserVectorEnv(sim, n, cfg, disabled)
    return SlateUserVectorEnv(ParametricUserModel(world.config, n), n, cfg, disabled)


def world_population(sim: Any, world: Any) -> np.ndarray:
    """The world's population in the simulator's profile vocabulary (both envs draw it)."""
    world_users = world.users_table(
        [f"p{i}" for i in range(len(world.population))], world.population
    )
    return sim.profile_encoder.encode(world_users)


def rank_policies(
    policies: dict[str, Any],
    sim: Any,
    world: Any,
    env_kwargs: dict[str, Any],
    users: int,
    seed: int,
    num_envs: int,
    counts: np.ndarray | None,
    progress: bool = False,
    trust_sb3_zip: bool = False,
    ray: RayConfig | None = None,
    sim_path: str | None = None,
    device: str = "cpu",
) -> dict[str, dict[str, Any]]:
    """Returns per user of every policy in the simulator and in the world (same users).

    Args:
        policies: label -> name/spec/object for `make_policy` (an object is used on both sides).
        sim: the GPT2UserSimulator under test; its population is temporarily replaced by the
            world's (in the simulator's vocabulary) so both envs draw the same users.
        world: the ParametricUserModel.
        env_kwargs: EnvConfig fields of both envs.
        users: users per policy and env.
        seed: user i is seeded seed + i.
        num_envs: rows of the vector envs.
        counts: clicks per item for `popular`.
        progress: log each policy's result.
        trust_sb3_zip: allow SB3 .zip policies (unpickled on load).
        ray: play the named policies' users on Ray actors
            (`evaluation.fidelity.ranking_ray.rank_policies_on_ray`): the same returns.
        sim_path: the simulator's checkpoint (what the actors load; needed with `ray`).
        device: the simulator's device (with `ray`: CUDA gives every actor a GPU).

    Returns:
        {label: {"sim": returns, "true": returns, "seconds": {"sim", "true"}}}; a policy that
        cannot be built on a side is left out with a logged warning.
    """
    if ray is not None:
        from evaluation.fidelity.ranking_ray import rank_policies_on_ray

        if sim_path is None:
            raise ValueError("rank_policies with ray= needs sim_path= (the actors load it)")
        args = (policies, sim, world, env_kwargs, users, seed, num_envs, counts, progress)
        return rank_policies_on_ray(
            *args, ray=ray, sim_path=sim_path, device=device, trust_sb3_zip=trust_sb3_zip
        )
    from agents.registry import AgentUnavailable
    from recsim_env.config import SLATE_AGENT_KWARGS, EnvConfig

    # the baselines act with slates and read the whole observation with the catalog ids
    cfg = EnvConfig(**{**env_kwargs, **SLATE_AGENT_KWARGS})
    saved_population = sim.population
    sim.population = world_population(sim, world)
    n = max(1, min(num_envs, users))
    out: dict[str, dict[str, Any]] = {}
    try:
        for label, spec in policies.items():
            res: dict[str, Any] = {"seconds": {}}
            for side in ("sim", "true"):
                vec = side_env(side, sim, world, cfg, n)
                try:
                    agent = make_policy(spec, vec, seed, counts, trust_sb3_zip)
                except (AgentUnavailable, ImportError) as exc:
                    log.warning("policy %s unavailable on the %s side: %s", label, side, exc)
                    res = {}
                    break
                t0 = time.perf_counter()
                res[side] = run_episodes(agent, vec, users, seed).returns
                res["seconds"][side] = round(time.perf_counter() - t0, 2)
            if res:
                out[label] = res
                if progress:
                    log_policy(label, res)
    finally:
        sim.population = saved_population
    return out


def log_policy(label: str, res: dict[str, Any]) -> None:
    """One progress line: a policy's mean returns on both sides."""
    log.warning(
        "policy %s: sim %.2f, true %.2f (%.0fs)",
        label,
        float(np.mean(res["sim"])),
        float(np.mean(res["true"])),
        sum(res["seconds"].values()),
    )


def train_ppo(
    env_id: str,
    env_kwargs: dict[str, Any],
    steps: int,
    seed: int,
    num_envs: int = 16,
) -> Any:
    """A PPO policy (`agents.sb3`, tuned defaults) trained for `steps` env steps."""
    from agents.sb3 import make_model, make_sb3_vec_env
    from recsim_env.config import SLATE_AGENT_KWARGS

    kwargs = {**env_kwargs, **SLATE_AGENT_KWARGS}  # what SlatePolicy reads
    venv = make_sb3_vec_env(env_id, num_envs, seed=seed, **kwargs)
    model = make_model("ppo", venv, seed=seed)
    try:
        model.learn(steps)
    finally:
        venv.close()
    return model
