"""Train an SB3 agent on simulated users, save it, and score it against random on the same users.

What `llm-usersim train-agent` runs: all `num_envs` users are stepped in one batch
(`agents.sb3.SlateVecEnv` over the native vector env: one simulator call per step); the saved
model and a random policy then play one episode each with `eval_users` users (user i seeded
`eval_seed` + i, as in the benchmark), and the paired difference of their returns says whether
training helped.
"""

from __future__ import annotations

import json
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from evaluation.episodes import evaluate_returns
from evaluation.stats import mean_ci95
from recsim_env.config import SLATE_AGENT_KWARGS

EVAL_SEED = 10**6
"""Seed of evaluation user 0 (far from the training users' seeds)."""


@dataclass(frozen=True, kw_only=True)
class AgentTrainingConfig:
    """One training run."""

    algo: str = "ppo"
    """ppo, a2c or dqn."""
    env: str = "LLMUserSim-v0"
    """Env id."""
    steps: int = 200_000
    """Environment steps to train."""
    out: str = "runs/agent"
    """Output directory (policy.safetensors + policy.json, train_config.json, tb/)."""
    num_envs: int = 32
    """Users stepped together."""
    seed: int = 0
    """Seed of the model and of the training users."""
    policy: str = "slate"
    """slate (candidate scoring) or mlp (SB3's plain MultiInputPolicy)."""
    hyperparams: dict[str, Any] = field(default_factory=dict)
    """SB3 keyword arguments replacing the tuned defaults."""
    env_kwargs: dict[str, Any] = field(default_factory=dict)
    """Env arguments."""
    eval_users: int = 500
    """Users of the final evaluation (0: none)."""
    eval_seed: int = EVAL_SEED
    """Seed of evaluation user 0."""
    random_reference: bool = True
    """Also evaluate a random policy on the same users."""

    def __post_init__(self) -> None:
        """Validate ranges."""
        if self.steps < 1:
            raise ValueError(f"steps must be >= 1, got {self.steps}")
        if self.num_envs < 1:
            raise ValueError(f"num_envs must be >= 1, got {self.num_envs}")
        if self.eval_users < 0:
            raise ValueError(f"eval_users must be >= 0, got {self.eval_users}")


class EpisodeReturns:
    """Every finished training episode's return and the step it ended at.

    Collected by an SB3 callback from the VecMonitor's `info["episode"]`, for the learning curve.
    """

    def __init__(self) -> None:
        """Start empty."""
        self.steps: list[int] = []
        self.returns: list[float] = []

    def callback(self) -> Any:
        """The SB3 BaseCallback to pass to `learn`."""
        from stable_baselines3.common.callbacks import BaseCallback

        owner = self

        class _Collect(BaseCallback):
            def _on_step(self) -> bool:
                for info in self.locals.get("infos", []):
                    episode = info.get("episode")
                    if episode is not None:
                        owner.steps.append(int(self.num_timesteps))
                        owner.returns.append(float(episode["r"]))
                return True

        return _Collect()


LEARNING_CURVE_WINDOW = 200
"""Episodes per point of the learning curve (a moving mean with its 95% CI)."""


def plot_learning_curve(
    episodes: EpisodeReturns,
    path: str | Path,
    title: str,
    reference: float | None = None,
    evaluated: float | None = None,
) -> None:
    """Training return against env steps, as a PNG.

    The moving mean of the last episodes with its 95% CI (the stochastic training policy), and
    as lines where known the trained policy's evaluated return (deterministic) and the random
    policy's on the same users.
    """
    import numpy as np

    from evaluation.plotting import OKABE_ITO, new_figure, save_png

    steps, returns = np.asarray(episodes.steps), np.asarray(episodes.returns)
    fig = new_figure(7, 4.2)
    ax = fig.subplots()
    if len(returns):
        w = min(LEARNING_CURVE_WINDOW, len(returns))
        means, lows, highs = [], [], []
        for i in range(len(returns)):
            m, ci = mean_ci95(returns[max(0, i - w + 1) : i + 1])
            assert m is not None and ci is not None
            means.append(m)
            lows.append(ci[0])
            highs.append(ci[1])
        ax.plot(steps, means, color=OKABE_ITO[0], label=f"training episodes (mean of last {w})")
        ax.fill_between(steps, lows, highs, color=OKABE_ITO[0], alpha=0.25, label="95% CI")
    if reference is not None:
        ax.axhline(
            reference, color=OKABE_ITO[1], linestyle="--", label="random policy (evaluation)"
        )
    ax.set_xlabel("environment steps (user-steps)")
    ax.set_ylabel("episode return (reward per user)")
    ax.set_title(title)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, loc="lower right")
    save_png(fig, path)


def train_and_evaluate(cfg: AgentTrainingConfig, progress: bool = False) -> dict[str, Any]:
    """Train, save and evaluate; returns the summary.

    OUT gets the policy (safetensors + JSON), train_config.json and learning_curve.png (beside
    TensorBoard's OUT/tb).

    Raises:
        ValueError: bad hyperparameters (an unknown SB3 keyword) or env arguments.
    """
    import torch

    from agents.random_agent import RandomAgent
    from agents.sb3 import make_model, make_sb3_vec_env
    from agents.sb3.policy_files import save_policy

    out = Path(cfg.out)
    out.mkdir(parents=True, exist_ok=True)
    # PPO/A2C/DQN here act with slates; the slate policy also reads the whole observation and
    # embeds the candidates' catalog ids (a generic MLP policy gets neither)
    base = dict(SLATE_AGENT_KWARGS) if cfg.policy == "slate" else {"action_mode": "slate"}
    env_kwargs = {**base, **cfg.env_kwargs}
    venv = make_sb3_vec_env(
        cfg.env, cfg.num_envs, seed=cfg.seed, discrete=cfg.algo == "dqn", **env_kwargs
    )
    try:
        try:
            model = make_model(
                cfg.algo,
                venv,
                policy=cfg.policy,
                seed=cfg.seed,
                tensorboard_log=str(out / "tb"),
                **cfg.hyperparams,
            )
        except TypeError as exc:  # an unknown SB3 keyword
            raise ValueError(f"bad hyperparameters: {exc}") from None
        t0 = time.perf_counter()
        episodes = EpisodeReturns()
        model.learn(
            cfg.steps, progress_bar=progress, tb_log_name=cfg.algo, callback=episodes.callback()
        )
        seconds = time.perf_counter() - t0
    finally:
        venv.close()
    save_policy(model, out)  # safetensors + JSON: loading it never runs code from the files
    config = {
        **{k: v for k, v in asdict(cfg).items() if k not in ("hyperparams", "out")},
        "hyperparams": model.llm_usersim["hyperparams"],
        "torch_threads": torch.get_num_threads(),
    }
    (out / "train_config.json").write_text(json.dumps(config, indent=2, default=str) + "\n")
    summary: dict[str, Any] = {
        **config,
        "timesteps": int(model.num_timesteps),
        "seconds": round(seconds, 1),
        "model": str(out),
    }
    if cfg.eval_users > 0:
        t1 = time.perf_counter()
        # evaluated like the benchmark evaluates it: through slates, on the full observation
        # (a weights or scores model acts through its top candidates)
        env_settings = {k: v for k, v in cfg.env_kwargs.items() if k not in SLATE_AGENT_KWARGS}
        kw = {"users": cfg.eval_users, "seed": cfg.eval_seed, **env_settings}
        returns = evaluate_returns(model, cfg.env, **kw)
        summary["mean_return"], summary["return_ci95"] = mean_ci95(returns)
        if cfg.random_reference:
            slate_size = int(model.llm_usersim["slate_size"])
            rand = evaluate_returns(RandomAgent(slate_size, seed=cfg.eval_seed), cfg.env, **kw)
            summary["random_mean_return"], summary["random_return_ci95"] = mean_ci95(rand)
            # the same users met both policies: a paired CI of the difference
            summary["gain_over_random"], summary["gain_over_random_ci95"] = mean_ci95(
                returns - rand
            )
        summary["eval_seconds"] = round(time.perf_counter() - t1, 1)
    plot_learning_curve(
        episodes,
        out / "learning_curve.png",
        f"{cfg.algo.upper()} on {cfg.env}",
        summary.get("random_mean_return"),
        summary.get("mean_return"),
    )
    summary["learning_curve"] = str(out / "learning_curve.png")
    summary["training_episodes"] = len(episodes.returns)
    return summary
