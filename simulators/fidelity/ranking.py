"""Policy ranking in the simulator vs the ground truth, and sim-to-real PPO.

Every policy plays the same users in the LLMUserSim-v0 dynamics (the checkpoint under test) and
in the ParametricUserSim-v0 dynamics: both vector envs are reset with the same seed, and row i's
j-th episode is the same user (profile, candidates) in both, because the simulator is given the
world's population to draw from. `QuotaVectorEnv` (the native vector env, with rows that stop
after their quota of episodes) only steps rows with a user in session, so the simulator's work
is the users' steps rather than rows times the longest session.

Greedy is "greedy under the env's own response model": the oracle (true probabilities) in the
world, and the simulator's own probabilities in the simulator, read with
`GPT2UserSimulator.step(..., peek=True)` (`SimPeekResponseModel`).
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable
from typing import Any

import numpy as np

from recsim_env.vector_env import SlateUserVectorEnv

log = logging.getLogger(__name__)

DEFAULT_POLICIES: tuple[str, ...] = (
    "random",
    "popular",
    "greedy",
    "linucb",
    "thompson",
    "slateq",
    "text_sim",
)


class SimPeekResponseModel:
    """A GreedyAgent response model reading the GPT-2 user's own probabilities (no advance).

    `bind(obs)` returns `probs(batch_idx, slates) -> (m, j, 3)` marginal probabilities of
    hypothetical slates at the users' current state: batch row i of the observation is
    simulator row i (the native vector env). Each call `step(rows, slates, peek=True)` takes
    distinct rows, so queries are split by occurrence (a user asked about 20 candidates costs 20
    peeks). Slot j's marginal is P(r_1..r_{j-1} all skip) * p(r_j | earlier skips), exact when
    a slate gets at most one click (as in the ground-truth world).
    """

    def __init__(self, sim: Any, live: Callable[[], np.ndarray] | None = None) -> None:
        """Wrap the simulator the env steps; `live()` gives the rows worth asking about."""
        self.sim = sim
        self.live = live

    def bind(self, obs: dict[str, np.ndarray]) -> Callable[[np.ndarray, np.ndarray], np.ndarray]:
        """A probability function for the users of this batched observation."""
        sim = self.sim
        live = None if self.live is None else np.asarray(self.live(), dtype=bool)

        def probs(batch_idx: np.ndarray, slates: np.ndarray) -> np.ndarray:
            out = np.zeros((*np.shape(slates), 3))
            out[..., 0] = 1.0  # rows not asked about (parked) answer "skip"
            keep = np.ones(len(batch_idx), dtype=bool) if live is None else live[batch_idx]
            where = np.nonzero(keep)[0]
            batch_idx = np.asarray(batch_idx, dtype=np.int64)[where]
            slates = np.asarray(slates, dtype=np.int64)[where]
            order = np.argsort(batch_idx, kind="stable")
            sorted_idx = batch_idx[order]
            first = np.searchsorted(sorted_idx, sorted_idx, side="left")
            occ = np.empty(len(batch_idx), dtype=np.int64)
            occ[order] = np.arange(len(batch_idx)) - first
            for r in range(int(occ.max()) + 1 if len(occ) else 0):
                sel = np.nonzero(occ == r)[0]
                cond = sim.step(batch_idx[sel], slates[sel], peek=True).response_probs
                skip_before = np.cumprod(
                    np.concatenate([np.ones((len(sel), 1)), cond[:, :-1, 0]], axis=1), axis=1
                )
                marg = cond * skip_before[..., None]
                marg[..., 0] = 1.0 - marg[..., 1:].sum(-1)
                out[where[sel]] = marg
            return out

        return probs


class QuotaVectorEnv(SlateUserVectorEnv):
    """A native vector env whose rows each play a quota of episodes, then stop (parked).

    `SlateUserVectorEnv` (NEXT_STEP autoreset, row i seeded seed + i), except that a row that
    has finished its `episodes_per_row` episodes is neither reset nor stepped any more, so the
    simulator only answers rows with a user in session: the work is the users' steps, not rows
    times the longest session. `live` says which rows still play; `episodes` counts each row's
    finished episodes.
    """

    def __init__(
        self, simulator: Any, num_envs: int, config: Any, episodes_per_row: int = 1
    ) -> None:
        """Wrap a batched simulator for num_envs rows of episodes_per_row episodes each."""
        super().__init__(simulator, num_envs, config)
        self.episodes_per_row = int(episodes_per_row)
        self.episodes = np.zeros(num_envs, dtype=np.int64)

    @property
    def live(self) -> np.ndarray:
        """(num_envs,) bool: rows that have not finished their quota."""
        return self.episodes < self.episodes_per_row

    def reset(
        self, *, seed: int | list[int | None] | None = None, options: dict[str, Any] | None = None
    ) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
        """Reset every row and its episode count."""
        self.episodes[:] = 0
        return super().reset(seed=seed, options=options)

    def _live_rows(self) -> np.ndarray:
        return self.live

    def step(
        self, actions: Any
    ) -> tuple[dict[str, np.ndarray], np.ndarray, np.ndarray, np.ndarray, dict[str, Any]]:
        """Step the live rows (parked rows get no transition: `info["_item_ids"]` False)."""
        obs, rewards, terminated, truncated, info = super().step(actions)
        self.episodes[terminated | truncated] += 1
        return obs, rewards, terminated, truncated, info


def play(agent: Any, vec: Any, seed: int) -> np.ndarray:
    """Returns of every counted episode of agent in a `QuotaVectorEnv`.

    Row i is seeded seed + i; user (row i, episode e) is index e * num_envs + i. Learning
    agents get `update` calls for the rows that stepped (as in the benchmark).
    """
    n = vec.num_envs
    obs, _ = vec.reset(seed=seed)
    running = np.zeros(n)
    returns = np.full((vec.episodes_per_row, n), np.nan)
    update = getattr(agent, "update", None)
    while vec.live.any():
        action, _ = agent.predict(obs, deterministic=True)
        action = np.asarray(action, dtype=np.int64)
        before = vec.episodes.copy()
        next_obs, reward, term, trunc, info = vec.step(action)
        active = np.asarray(info["_item_ids"], dtype=bool)
        running += np.where(active, reward, 0.0)
        if update is not None:
            update(obs, action, info, next_obs=next_obs, terminated=term)
        ended = np.nonzero((term | trunc) & active)[0]
        returns[before[ended], ended] = running[ended]
        running[ended] = 0.0
        obs = next_obs
    return returns.reshape(-1)


def make_policy(
    name: str, vec: Any, side: str, seed: int, counts: np.ndarray | None, sim: Any = None
) -> Any:
    """Build a policy for one env.

    Args:
        name: a baseline name, or an SB3 spec ("ppo:PATH", PATH.zip), or an object with
            `predict` (used as is).
        vec: the native vector env it acts in.
        side: "sim" or "true"; greedy uses the env's own response model.
        seed: agent seed.
        counts: clicks per item for `popular` (the same counts on both sides).
        sim: the GPT-2 simulator behind vec (for greedy on the sim side).
    """
    from agents.registry import make_agent

    if not isinstance(name, str):
        return name
    if name == "greedy" and side == "sim":
        from agents.greedy import GreedyAgent

        cfg = vec.unwrapped.config
        live = getattr(vec, "live", None)
        return GreedyAgent(
            SimPeekResponseModel(sim, None if live is None else lambda: vec.live),
            cfg.slate_size,
            click_reward=cfg.click_reward,
            buy_reward=cfg.buy_reward,
        )
    kwargs = {"counts": counts} if name == "popular" and counts is not None else {}
    return make_agent(name, vec, seed=seed, **kwargs)


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
) -> dict[str, dict[str, Any]]:
    """Returns per user of every policy in the simulator and in the world (same users).

    Args:
        policies: label -> name/spec/object for `make_policy` (an object is used on both sides).
        sim: the GPT2UserSimulator under test; its population is temporarily replaced by the
            world's (in the simulator's vocabulary) so both envs draw the same users.
        world: the ParametricUserModel.
        env_kwargs: EnvConfig fields of both envs.
        users: users per policy and env (rounded up to a multiple of the rows).
        seed: seed of row 0.
        num_envs: rows of the vector envs (each plays ceil(users / num_envs) episodes).
        counts: clicks per item for `popular`.
        progress: log each policy's result.

    Returns:
        {label: {"sim": returns, "true": returns, "seconds": {"sim", "true"}}}; a policy that
        cannot be built on a side is left out with a logged warning.
    """
    from agents.registry import AgentUnavailable
    from recsim_env.config import EnvConfig
    from simulators.parametric import ParametricUserModel

    cfg = EnvConfig(**env_kwargs)
    world_users = world.users_table(
        [f"p{i}" for i in range(len(world.population))], world.population
    )
    saved_population = sim.population
    sim.population = sim.profile_encoder.encode(world_users)
    n = max(1, min(num_envs, users))
    per_row = math.ceil(users / n)
    out: dict[str, dict[str, Any]] = {}
    try:
        for label, spec in policies.items():
            res: dict[str, Any] = {"seconds": {}}
            for side in ("sim", "true"):
                if side == "sim":
                    sim.ensure_capacity(n)
                    vec = QuotaVectorEnv(sim, n, cfg, per_row)
                else:
                    vec = QuotaVectorEnv(ParametricUserModel(world.config, n), n, cfg, per_row)
                try:
                    agent = make_policy(spec, vec, side, seed, counts, sim)
                except (AgentUnavailable, ImportError) as exc:
                    log.warning("policy %s unavailable on the %s side: %s", label, side, exc)
                    res = {}
                    break
                t0 = time.perf_counter()
                res[side] = play(agent, vec, seed)
                res["seconds"][side] = round(time.perf_counter() - t0, 2)
            if res:
                out[label] = res
                if progress:
                    log.warning(
                        "policy %s: sim %.2f, true %.2f (%.0fs)",
                        label,
                        float(np.mean(res["sim"])),
                        float(np.mean(res["true"])),
                        sum(res["seconds"].values()),
                    )
    finally:
        sim.population = saved_population
    return out


def train_ppo(
    env_id: str,
    env_kwargs: dict[str, Any],
    steps: int,
    seed: int,
    num_envs: int = 16,
) -> Any:
    """A PPO policy trained for `steps` env steps (agents.sb3 if present, else plain SB3).

    Returns the trained model (SB3 `predict` on batched dict observations).
    """
    try:
        from agents.sb3 import make_model, make_sb3_vec_env
    except ImportError:  # the project's SB3 glue is optional: fall back to plain SB3
        make_model = make_sb3_vec_env = None
    if make_sb3_vec_env is not None:
        venv = make_sb3_vec_env(env_id, num_envs, seed=seed, **env_kwargs)
        model = make_model("ppo", venv, seed=seed)
    else:
        import gymnasium as gym
        from stable_baselines3 import PPO
        from stable_baselines3.common.vec_env import DummyVecEnv

        import recsim_env  # noqa: F401

        venv = DummyVecEnv([lambda: gym.make(env_id, **env_kwargs) for _ in range(num_envs)])
        venv.seed(seed)
        model = PPO("MultiInputPolicy", venv, seed=seed, n_steps=128, batch_size=256)
    try:
        model.learn(steps)
    finally:
        venv.close()
    return model
