"""make_agent: build any baseline by name, or load a stable-baselines3 model by path.

Names: random, popular, greedy, linucb, thompson, slateq, text_sim. A policy trained with
`llm-usersim train-agent` is given as "ppo:DIR", "a2c:DIR" or "dqn:DIR" (the directory it wrote:
safetensors + JSON, nothing executed). A third-party SB3 .zip ("ppo:FILE.zip") is unpickled on
load, which runs code from the file, so it needs `trust_sb3_zip=True` (`--trust-sb3-zip`). Only
these forms resolve: a name that is not a baseline never falls back to a file of that name.

Example:
    >>> import gymnasium as gym, recsim_env
    >>> env = gym.make("ParametricUserSim-v0")
    >>> agent = make_agent("greedy", env)
    >>> obs, _ = env.reset(seed=0)
    >>> action, _ = agent.predict(obs)
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, cast

import numpy as np

from agents.base import SlateAgent, category_block_size, env_view, require_slate_agent_env

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


def _popularity_counts(env: Any, users: int, seed: int) -> np.ndarray:
    """Clicks per item logged by a random policy on a fresh copy of the env (same spec)."""
    from agents.popularity import collect_click_counts
    from recsim_env.episodes import make_episode_env

    spec = getattr(env, "spec", None) or getattr(getattr(env, "unwrapped", None), "spec", None)
    if spec is None:
        raise AgentUnavailable("popular: pass counts= or logs= (the env has no spec to copy)")
    kwargs = {
        k: v
        for k, v in spec.kwargs.items()
        if k
        not in (
            "num_envs",
            "vectorization_mode",
            "max_episode_steps",
            "autoreset_mode",
            "render_mode",
        )
    }
    vec = make_episode_env(spec.id, min(users, 256), **kwargs)
    try:
        return collect_click_counts(vec, users, seed)
    finally:
        vec.close()


def make_agent(
    name: str, env: Any, seed: int | None = None, trust_sb3_zip: bool = False, **kwargs: Any
) -> Any:
    """Build an agent for env (a single env, a native vector env or an SB3 VecEnv).

    Args:
        name: a baseline name (see BASELINES) or a trained policy ("ppo:DIR").
        env: the env the agent will act in (greedy's oracle reads its simulator).
        seed: seed of the agent's own RNG.
        trust_sb3_zip: allow "KIND:FILE.zip", which unpickles (runs code from) the file.
        **kwargs: agent options; `popular` also takes `counts=` (clicks per item) or `logs=`
            (a log directory) and otherwise logs `log_users` (1000) random-policy sessions
            on a fresh copy of the env with seeds from `log_seed` (10**6).

    The baselines give slates and read the whole observation with the candidates' catalog ids:
    build the env with `**recsim_env.config.SLATE_AGENT_KWARGS` (the benchmark's
    `recsim_env.episodes.make_episode_env` does).

    Raises:
        AgentUnavailable: the env's simulator lacks what the agent needs.
        agents.base.AgentNeedsSlateEnv: the env is not built for slate agents.
        ValueError: unknown name.
    """
    from agents.bandits import LinUCBAgent, ThompsonAgent
    from agents.greedy import GreedyAgent
    from agents.popularity import PopularityAgent
    from agents.random_agent import RandomAgent
    from agents.slateq import SlateQAgent
    from agents.text_similarity import TextSimilarityAgent

    if name not in BASELINES:
        return load_sb3_agent(name, env, trust_sb3_zip=trust_sb3_zip)
    view = env_view(env)
    k = view.slate_size
    rewards = view.reward_per_code
    require_slate_agent_env(view.observation_space, view.action_space, f"the {name!r} agent")
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
        except (ValueError, KeyError) as exc:
            raise AgentUnavailable(f"greedy: {exc}") from exc
    if name in ("linucb", "thompson", "slateq"):
        cls = {"linucb": LinUCBAgent, "thompson": ThompsonAgent, "slateq": SlateQAgent}[name]
        num_categories = category_block_size(np.asarray(view.simulator.item_features))
        return cls(k, reward_per_code=rewards, num_categories=num_categories, seed=seed, **kwargs)
    try:
        return TextSimilarityAgent.from_env(env, seed=seed, **kwargs)
    except (ValueError, KeyError) as exc:
        raise AgentUnavailable(f"text_sim: {exc}") from exc


def parse_agent_spec(spec: str) -> tuple[str, Path | None]:
    """(baseline name, None) or (algorithm, path) of an agent spec; nothing is loaded.

    Raises:
        ValueError: neither a baseline name nor `KIND:PATH` (KIND one of SB3_ALGOS); a
            near-miss of a baseline name is suggested. A file that merely exists under the name
            is never used: `thompsn` is a typo, not a model.
    """
    if spec in BASELINES:
        return spec, None
    kind, sep, path = spec.partition(":")
    if sep and kind.lower() in SB3_ALGOS and path:
        return kind.lower(), Path(path)
    import difflib

    close = difflib.get_close_matches(spec, BASELINES, n=1)
    hint = f" (did you mean {close[0]}?)" if close else ""
    raise ValueError(
        f"unknown agent {spec!r}{hint}: use one of {', '.join(BASELINES)}, or KIND:PATH for a "
        f"policy trained with train-agent (KIND one of {', '.join(SB3_ALGOS)}, PATH its directory)"
    )


def check_agent_spec(spec: str, trust_sb3_zip: bool = False) -> None:
    """Check an agent spec before any work.

    A baseline, or KIND:PATH that exists and can be loaded safely (a policy directory; an SB3
    .zip only with `trust_sb3_zip`).

    Raises:
        ValueError: an unknown name, or a .zip without trust.
        FileNotFoundError: PATH does not exist.
    """
    kind, path = parse_agent_spec(spec)
    if path is None:
        return
    if path.is_dir():
        return
    if path.is_file() and path.suffix == ".zip":
        if not trust_sb3_zip:
            from agents.sb3.loading import UntrustedModelError

            raise UntrustedModelError(
                f"{path} is an SB3 .zip, which is loaded with pickle and can run code from the "
                "file; pass --trust-sb3-zip only for a file you trust, or give the directory "
                "train-agent wrote"
            )
        return
    if path.exists():
        raise ValueError(f"{path}: not a policy directory (policy.json) or an SB3 .zip")
    raise FileNotFoundError(f"{path}: no such policy directory or file")


def load_sb3_agent(spec: str, env: Any = None, trust_sb3_zip: bool = False) -> Any:
    """Load `KIND:PATH` as a slate policy.

    A directory saved by train-agent (safetensors + JSON, nothing executed), or an SB3 .zip
    only with `trust_sb3_zip`. The model's spaces are then checked against env's.

    Raises:
        FileNotFoundError: the path does not exist.
        ValueError: an unknown spec, an untrusted zip, an unreadable policy, or a model trained
            on different spaces.
    """
    check_agent_spec(spec, trust_sb3_zip)
    kind, path = parse_agent_spec(spec)
    assert path is not None
    if path.is_dir():
        from agents.sb3.policy_files import METADATA_ATTR, load_policy

        agent = load_policy(path)
        saved = str((getattr(agent.model, METADATA_ATTR, None) or {}).get("algo") or "")
        if saved in SB3_ALGOS and saved != kind:  # a label that would mislead the results
            raise ValueError(
                f"{spec}: {path} holds a {saved} policy, not {kind} (write {saved}:{path})"
            )
    else:
        from agents.sb3 import load_sb3_model

        slate_size = None if env is None else env_view(env).slate_size
        agent = load_sb3_model(path, kind, trust=True, slate_size=slate_size)
    if env is not None:
        _check_spaces(agent.model, env, path)
    return agent


def _check_spaces(model: Any, env: Any, path: Path) -> None:
    """Refuse a model trained on other observation/action spaces (another catalog/config)."""
    from gymnasium import spaces

    view = env_view(env)
    obs_space, act_space = view.observation_space, view.action_space
    num_candidates = view.config.num_candidates
    act = model.action_space
    act_ok = act == act_space or (
        isinstance(act, spaces.Discrete)
        and int(act.n) == int(cast(spaces.MultiDiscrete, act_space).nvec[0])
    )
    # a model of a score action mode acts through its top slate_size candidates
    clicked = cast(spaces.Box, cast(spaces.Dict, obs_space)["clicked_features_mean"])
    num_features = int(clicked.shape[0])
    act_ok = act_ok or (
        isinstance(act, spaces.Box) and act.shape in ((num_candidates,), (num_features,))
    )
    # the env may observe more keys (catalog ids) than the model was trained on
    env_keys = cast(spaces.Dict, obs_space).spaces
    model_keys = getattr(model.observation_space, "spaces", {})
    obs_ok = bool(model_keys) and all(
        key in env_keys and env_keys[key] == space for key, space in model_keys.items()
    )
    if not obs_ok or not act_ok:
        raise ValueError(
            f"{path}: the model's observation/action spaces differ from the env's "
            f"({_trained_with(path)})"
        )


def _trained_with(path: Path) -> str:
    """What a policy directory says it was trained on, to put in a mismatch error."""
    import json

    try:
        trained = json.loads((path / "train_config.json").read_text())
    except (OSError, ValueError):
        return "trained on another catalog or EnvConfig?"
    from recsim_env.config import SLATE_AGENT_KWARGS

    given = dict(trained.get("env_kwargs") or {})
    # what the benchmark fixes (action mode, observation) or takes by its own flags stays out
    left_out = {*SLATE_AGENT_KWARGS, "simulator", "device", "dtype"}
    kwargs = {k: v for k, v in given.items() if k not in left_out}
    hints = [f"--env-kwargs '{json.dumps(kwargs)}'"] if kwargs else []
    if "simulator" in given:
        hints.append(f"--simulator {given['simulator']}")
    env = trained.get("env", "another env")
    if not hints:
        return f"trained on {env} with its default EnvConfig"
    return f"trained on {env}; benchmark it with {' '.join(hints)}"


__all__ = [
    "BASELINES",
    "AgentUnavailable",
    "SlateAgent",
    "load_sb3_agent",
    "make_agent",
]
