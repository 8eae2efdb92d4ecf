"""Train PPO on LLMUserSim-v0 (users played by a GPT-2) and compare it with a random policy.

All `num_envs` users are stepped in one batch (`agents.sb3.make_sb3_vec_env`: one GPT-2 call per
step for all of them); the policy is `agents.sb3.SlatePolicy`, a MultiInputPolicy that scores
every candidate with one shared network and fills the slate without repeats. The trained model is
saved in SB3's format (`OUT/model.zip`) and can be benchmarked:
    llm-usersim benchmark --agents random,greedy,OUT/model.zip

The same run with the command line:
    llm-usersim train-agent --algo ppo --env LLMUserSim-v0 --steps 100000 --num-envs 64 --out OUT

Run:
    python examples/train_ppo.py                              # embedded default simulator
    python examples/train_ppo.py --simulator PATH --total-timesteps 200000
    python examples/train_ppo.py --smoke                      # seconds (a tiny simulator)
"""

from __future__ import annotations

import dataclasses
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import torch
from _args import parse_dataclass  # examples/_args.py

from agents.random_agent import RandomAgent
from agents.sb3 import make_model, make_sb3_vec_env
from evaluation.episodes import evaluate_returns
from evaluation.stats import mean_ci95
from recsim_env.config import SLATE_AGENT_KWARGS
from simulators.gpt2_user import DEFAULT_SIMULATOR_DIR


@dataclass
class Args:
    """Settings; defaults do a real run, --smoke a tiny one."""

    env_id: str = "LLMUserSim-v0"
    simulator: str = ""
    """Checkpoint directory (empty: the embedded default)."""
    total_timesteps: int = 100_000
    """Environment steps (all users together)."""
    num_envs: int = 64
    """Users stepped together (bigger batches use the GPT-2 better)."""
    eval_users: int = 500
    """Users of the final evaluation (one episode each)."""
    seed: int = 0
    out: str = "runs/ppo_llm"
    """Directory for model.zip and TensorBoard logs (OUT/tb)."""
    threads: int = 1
    """torch threads."""
    smoke: bool = False
    """Tiny settings and a tiny simulator trained on the spot: a few seconds."""


def parse_args() -> Args:
    """Args from the command line (one flag per field, CleanRL style)."""
    args = parse_dataclass(Args, __doc__)
    if args.smoke:
        args = dataclasses.replace(args, total_timesteps=128, num_envs=4, eval_users=8)
    return args


def tiny_simulator(out: Path, seed: int = 0) -> dict:
    """Train a tiny GPT-2 user on logs of a tiny world (seconds); returns the env kwargs."""
    from recsim_env.config import EnvConfig
    from recsim_env.log_generation import generate
    from simulators.lm.model import SimulatorConfig
    from simulators.parametric import ParametricUserModel, WorldConfig
    from simulators.training import SimulatorTrainer, TrainConfig

    env_cfg = EnvConfig(slate_size=3, num_candidates=8, history_length=4, max_episode_steps=12)
    world = ParametricUserModel(WorldConfig(num_items=50, num_topics=5, population_size=200))
    logs = generate(60, "random", seed, env_cfg, world)
    cfg = TrainConfig(size="tiny", max_steps=4, eval_every=4, batch_size=4, context_length=128)
    SimulatorTrainer(logs, out, cfg, SimulatorConfig(context_length=128), progress=False).train()
    return {"simulator": str(out), "slate_size": 3, "num_candidates": 8, "history_length": 4}


def main() -> None:
    """Train, save, evaluate."""
    args = parse_args()
    torch.set_num_threads(args.threads)
    out = Path(args.out)
    env_kwargs: dict = {}
    tmp = None
    if args.simulator:
        env_kwargs["simulator"] = args.simulator
    elif args.smoke and not (DEFAULT_SIMULATOR_DIR / "config.json").exists():
        tmp = tempfile.TemporaryDirectory()
        env_kwargs = tiny_simulator(Path(tmp.name) / "sim", args.seed)
    if args.smoke:
        env_kwargs["max_episode_steps"] = 12

    # SlatePolicy (make_model's default) gives slates, reads the whole observation and embeds
    # the candidates' catalog ids
    env_kwargs.update(SLATE_AGENT_KWARGS)
    venv = make_sb3_vec_env(args.env_id, num_envs=args.num_envs, seed=args.seed, **env_kwargs)
    hp = {"n_steps": 16, "batch_size": 32, "n_epochs": 2} if args.smoke else {}
    model = make_model("ppo", venv, seed=args.seed, tensorboard_log=str(out / "tb"), **hp)
    t0 = time.perf_counter()
    model.learn(args.total_timesteps, progress_bar=not args.smoke)
    print(f"trained {model.num_timesteps} steps in {time.perf_counter() - t0:.0f}s")
    model.save(out / "model.zip")
    venv.close()

    slate_size = venv.unwrapped.config.slate_size
    for name, policy in (("ppo", model), ("random", RandomAgent(slate_size, seed=args.seed))):
        returns = evaluate_returns(
            policy, args.env_id, users=args.eval_users, seed=10**6, **env_kwargs
        )
        mean, (lo, hi) = mean_ci95(returns)
        print(
            f"{name:>6}: mean return {mean:.2f} (95% CI {lo:.2f} to {hi:.2f}, {len(returns)} users)"
        )
    print(f"saved {out / 'model.zip'}")
    if tmp is not None:
        tmp.cleanup()


if __name__ == "__main__":
    main()
