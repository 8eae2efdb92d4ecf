"""make_agent: build any baseline by name, or load a stable-baselines3 model by path.

Names: random, popular, greedy, linucb, thompson, slateq, text_sim. A saved SB3 model is given as
"ppo:PATH", "a2c:PATH", "dqn:PATH" or just PATH (a .zip; the algorithm is read from the file,
else PPO, A2C and DQN are tried in turn).

Example:
    >>> import gymnasium as gym, recsim_env
    >>> env = gym.make("ParametricUserSim-v0")
    >>> agent = make_agent("greedy", env)
    >>> obs, _ = env.reset(seed=0)
    >>> action, _ = agent.predict(obs)
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from agents.base import SlateAgent, category_block_size, env_parts, single_spaces

BASELINES: tuple[str, ...] = (
    "random",
    "popular",
    "greedy",
    "linucb",
    "thompson",
    "slateq",
    "text_sim",
)
SB3_ALGOS: tuple[str, ...] = ("ppo", "a2c", "dqn")


class AgentUnavailable(ValueError):
    """The agent cannot be built for this env (its simulator lacks what the agent needs)."""


def _env_info(env: Any) -> dict[str, Any]:
    """slate_size, reward weights and number of item categories of an env."""
    _, act_space = single_spaces(env)
    try:
        sims, _, cfg = env_parts(env)
        sim = sims[0]
    except ValueError:
        sim, cfg = None, None
    feats = getattr(sim, "item_features", None)
    return {
        "slate_size": len(act_space.nvec),
        "click_reward": float(getattr(cfg, "click_reward", 1.0)),
        "buy_reward": float(getattr(cfg, "buy_reward", 3.0)),
        "num_categories": None if feats is None else category_block_size(np.asarray(feats)),
        "simulator": sim,
    }


def _popularity_counts(env: Any, users: int, seed: int) -> np.ndarray:
    """Clicks per item logged by a random policy on a fresh copy of the env (same spec)."""
    import gymnasium as gym

    from agents.popularity import collect_click_counts

    spec = getattr(env, "spec", None) or getattr(getattr(env, "unwrapped", None), "spec", None)
    if spec is None:
        raise AgentUnavailable("popular: pass counts= or logs= (the env has no spec to copy)")
    kwargs = {
        k: v
        for k, v in spec.kwargs.items()
        if k not in ("num_envs", "vectorization_mode", "max_episode_steps")
    }
    vec = gym.make_vec(
        spec.id,
        num_envs=min(users, 256),
        vectorization_mode="vector_entry_point",
        **kwargs,
    )
    try:
        return collect_click_counts(vec, users, seed)
    finally:
        vec.close()


def make_agent(name: str, env: Any, seed: int | None = None, **kwargs: Any) -> Any:
    """Build an agent for env (a single env, a native vector env or an SB3 VecEnv).

    Args:
        name: a baseline name (see BASELINES) or an SB3 model ("ppo:PATH", "PATH.zip").
        env: the env the agent will act in (greedy's oracle reads its simulator).
        seed: seed of the agent's own RNG.
        **kwargs: agent options; `popular` also takes `counts=` (clicks per item) or `logs=`
            (a log directory) and otherwise logs `log_users` (1000) random-policy sessions
            on a fresh copy of the env with seeds from `log_seed` (10**6).

    Raises:
        AgentUnavailable: the env's simulator lacks what the agent needs.
        ValueError: unknown name.
    """
    from agents.bandits import LinUCBAgent, ThompsonAgent
    from agents.greedy import GreedyAgent
    from agents.popularity import PopularityAgent
    from agents.random_agent import RandomAgent
    from agents.slateq import SlateQAgent
    from agents.text_similarity import TextSimilarityAgent

    if name not in BASELINES:
        return load_sb3_agent(name, env)
    info = _env_info(env)
    k = info["slate_size"]
    rewards = {"click_reward": info["click_reward"], "buy_reward": info["buy_reward"]}
    if name == "random":
        return RandomAgent(k, seed)
    if name == "popular":
        counts, logs = kwargs.pop("counts", None), kwargs.pop("logs", None)
        log_users = int(kwargs.pop("log_users", 1000))
        log_seed = int(kwargs.pop("log_seed", 10**6))
        if counts is None and logs is not None:
            counts = PopularityAgent.from_logs(logs, k).counts
        if counts is None:
            counts = _popularity_counts(env, log_users, log_seed)
        return PopularityAgent(counts, k, seed)
    if name == "greedy":
        try:
            return GreedyAgent.from_env(env, **kwargs)
        except (ValueError, AttributeError, KeyError) as exc:
            raise AgentUnavailable(f"greedy: {exc}") from exc
    if name in ("linucb", "thompson", "slateq"):
        cls = {"linucb": LinUCBAgent, "thompson": ThompsonAgent, "slateq": SlateQAgent}[name]
        return cls(k, **rewards, num_categories=info["num_categories"], seed=seed, **kwargs)
    try:
        return TextSimilarityAgent.from_env(env, seed=seed, **kwargs)
    except (ValueError, AttributeError, KeyError) as exc:
        raise AgentUnavailable(f"text_sim: {exc}") from exc


class SB3Agent:
    """A loaded stable-baselines3 model behind the agent interface (update is a no-op).

    Used only when `agents.sb3` (the SB3 glue with `load_sb3_model`) is not importable.
    """

    def __init__(self, model: Any, name: str) -> None:
        """Wrap model; name labels it in benchmark tables."""
        self.model = model
        self.name = name

    def predict(
        self,
        observation: dict[str, np.ndarray],
        state: Any = None,
        episode_start: np.ndarray | None = None,
        deterministic: bool = False,
    ) -> tuple[np.ndarray, Any]:
        """The model's own predict (single or batched observations)."""
        return self.model.predict(observation, state, episode_start, deterministic)

    def update(self, *args: Any, **kwargs: Any) -> None:
        """Saved models do not learn during evaluation."""


def _load_plain(p: Path, algo: str) -> SB3Agent:
    """Fallback loader: try the given algorithm, else PPO, A2C and DQN in turn."""
    import stable_baselines3 as sb3

    classes = {"ppo": sb3.PPO, "a2c": sb3.A2C, "dqn": sb3.DQN}
    errors = []
    for a in [algo] if algo else list(SB3_ALGOS):
        try:
            return SB3Agent(classes[a].load(str(p), device="cpu"), f"{a}:{p.stem}")
        except Exception as exc:  # SB3 raises many types for a mismatching file
            errors.append(f"{a}: {exc}")
    raise ValueError(f"{p}: could not be loaded as an SB3 model ({'; '.join(errors)})")


def load_sb3_agent(spec: str, env: Any = None) -> Any:
    """Load "algo:PATH" or a bare PATH (see the module docstring) as a slate policy.

    Loading goes through `agents.sb3.load_sb3_model` (algorithm detection, Discrete DQN actions
    expanded to slates); the model's spaces are then checked against env's.

    Raises:
        FileNotFoundError: the file does not exist.
        ValueError: the spec is neither a known agent nor a loadable SB3 model, or the model was
            trained on different spaces.
    """
    algo, _, path = spec.partition(":")
    if not path or algo.lower() not in SB3_ALGOS:
        algo, path = "", spec
    algo = algo.lower()
    p = Path(path)
    if not p.exists() and p.with_suffix(".zip").exists():
        p = p.with_suffix(".zip")
    if not p.exists():
        if not algo and not path.endswith(".zip"):
            raise ValueError(
                f"unknown agent {spec!r}: use one of {', '.join(BASELINES)} or an SB3 model "
                "('ppo:PATH.zip' or PATH.zip)"
            )
        raise FileNotFoundError(f"{p}: no such SB3 model file")
    try:
        from agents.sb3 import load_sb3_model
    except ImportError:
        agent = _load_plain(p, algo)
    else:
        agent = load_sb3_model(p, algo or None)
    if env is not None:
        _check_spaces(agent.model, env, p)
    return agent


def _check_spaces(model: Any, env: Any, path: Path) -> None:
    """Refuse a model trained on other observation/action spaces (another catalog/config)."""
    from gymnasium import spaces

    obs_space, act_space = single_spaces(env)
    act = model.action_space
    act_ok = act == act_space or (
        isinstance(act, spaces.Discrete) and int(act.n) == int(act_space.nvec[0])
    )
    if model.observation_space != obs_space or not act_ok:
        raise ValueError(
            f"{path}: the model's observation/action spaces differ from the env's "
            "(trained on another catalog or EnvConfig?)"
        )


__all__ = [
    "BASELINES",
    "AgentUnavailable",
    "SB3Agent",
    "SlateAgent",
    "load_sb3_agent",
    "make_agent",
]
