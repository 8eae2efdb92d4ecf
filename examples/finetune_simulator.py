"""Fine-tune a GPT-2 user simulator on logs and play it as LLMUserSim-v0.

1. Generate interaction logs of ground-truth users (ParametricUserSim's world, random slates).
2. Fine-tune a GPT-2 user on them (loss on the user's response tokens only).
3. Load the checkpoint in LLMUserSim-v0 and show a few slates to a simulated user.

The same with the command line:
    llm-usersim generate-logs --users 2000 --out runs/logs
    llm-usersim train-sim --logs runs/logs --out runs/sim --size small --max-steps 600
    python -c "import gymnasium as gym, recsim_env; gym.make('LLMUserSim-v0', simulator='runs/sim')"

Run:
    python examples/finetune_simulator.py            # a real (small) run, minutes on CPU
    python examples/finetune_simulator.py --smoke    # seconds
"""

from __future__ import annotations

import dataclasses
import time
from dataclasses import dataclass
from pathlib import Path

import gymnasium as gym
import numpy as np
import torch
from _args import parse_dataclass  # examples/_args.py

import recsim_env  # noqa: F401  (registers the env ids)
from recsim_env.config import EnvConfig
from recsim_env.log_generation import generate, summarize
from simulators.lm.model import SimulatorConfig
from simulators.logs import write_logs
from simulators.parametric import ParametricUserModel, WorldConfig
from simulators.training import SimulatorTrainer, TrainConfig


@dataclass
class Args:
    """Settings; defaults do a real run, --smoke a tiny one."""

    out: str = "runs/finetune_simulator"
    """Directory for the logs (OUT/logs) and the simulator checkpoint (OUT/sim)."""
    users: int = 2000
    """Users in the generated logs (one session each)."""
    size: str = "small"
    """GPT-2 size: tiny, small, medium (built from a config, no download)."""
    max_steps: int = 600
    """Optimiser steps."""
    batch_size: int = 16
    context_length: int = 512
    play_steps: int = 5
    """Slates shown to one simulated user at the end."""
    seed: int = 0
    threads: int = 1
    """torch threads (keep it small on a shared machine)."""
    smoke: bool = False
    """Tiny settings: a few seconds."""


def parse_args() -> Args:
    """Args from the command line (one flag per field, CleanRL style)."""
    args = parse_dataclass(Args, __doc__)
    if args.smoke:
        args = dataclasses.replace(
            args, users=60, size="tiny", max_steps=6, batch_size=4, context_length=128
        )
    return args


def main() -> None:
    """Generate logs, fine-tune, play."""
    args = parse_args()
    torch.set_num_threads(args.threads)
    out = Path(args.out)
    if args.smoke:  # a small world keeps the tiny run fast
        world = ParametricUserModel(
            WorldConfig(num_items=50, num_topics=5, population_size=200, seed=args.seed)
        )
        env_cfg = EnvConfig(slate_size=3, num_candidates=8, history_length=4, max_episode_steps=12)
    else:
        world, env_cfg = ParametricUserModel(WorldConfig(seed=args.seed)), EnvConfig()

    # 1. logs of ground-truth users
    logs = generate(args.users, "random", args.seed, env_cfg, world)
    write_logs(logs, out / "logs")
    stats = summarize(logs)
    print(
        f"logs: {stats['sessions']} sessions, {stats['steps']} slates, "
        f"click rate {stats['click_rate']:.3f}, buy rate {stats['buy_rate']:.3f}"
    )

    # 2. fine-tune a GPT-2 user on them
    t0 = time.perf_counter()
    cfg = TrainConfig(
        size=args.size,
        max_steps=args.max_steps,
        batch_size=args.batch_size,
        context_length=args.context_length,
        eval_every=max(1, args.max_steps // 4),
        seed=args.seed,
    )
    sim_cfg = SimulatorConfig(context_length=args.context_length)
    state = SimulatorTrainer(logs, out / "sim", cfg, sim_cfg, progress=not args.smoke).train()
    print(
        f"simulator: {state['step']} steps in {time.perf_counter() - t0:.0f}s, "
        f"best validation loss {state['best_val']:.4f}; saved to {out / 'sim'}"
    )

    # 3. the checkpoint as LLMUserSim-v0
    env = gym.make(
        "LLMUserSim-v0",
        simulator=str(out / "sim"),
        slate_size=env_cfg.slate_size,
        num_candidates=env_cfg.num_candidates,
        history_length=env_cfg.history_length,
    )
    env.reset(seed=args.seed)
    env.action_space.seed(args.seed)
    names = env.unwrapped.simulator.behaviours.names
    for t in range(args.play_steps):
        _, reward, terminated, truncated, info = env.step(env.action_space.sample())
        answers = ", ".join(names[r] for r in np.asarray(info["responses"]))
        print(f"step {t}: items {info['item_ids'].tolist()} -> {answers} (reward {reward:g})")
        if terminated or truncated:
            print("the user left" if terminated else "time limit")
            break
    env.close()


if __name__ == "__main__":
    main()
