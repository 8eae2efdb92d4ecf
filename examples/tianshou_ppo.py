"""PPO with Tianshou 2.0 and a slate actor (needs the `tianshou` extra).

Tianshou takes only its own vector envs (a Gymnasium VectorEnv is rejected), so the users run
as single envs in a `DummyVectorEnv` (or `SubprocVectorEnv`: workers build them from
"recsim_env:LLMUserSim-v0"). Dict observations reach the networks as a Tianshou `Batch` with
the same keys. The actor scores every candidate with one shared network and draws a slate
without repeats (`agents.torch_slate.PlackettLuceSlate` as `dist_fn`), so PPO trains the
log-probability of the slate shown.

Install: pip install "llm-usersim[tianshou]" (tianshou 2.0.1 pins pandas < 3).

Run:
    python examples/tianshou_ppo.py                       # LLMUserSim-v0, embedded default
    python examples/tianshou_ppo.py --smoke               # seconds
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import gymnasium as gym
import numpy as np
import torch
from _args import parse_dataclass  # examples/_args.py
from torch import nn

import recsim_env  # noqa: F401  (registers the ids)
from agents.torch_slate import PlackettLuceSlate

KEYS = ("profile", "clicked_features_mean", "session_features")


@dataclass
class Args:
    """Settings; defaults do a real run, --smoke a tiny one."""

    env_id: str = "LLMUserSim-v0"
    num_envs: int = 8
    epochs: int = 10
    steps_per_epoch: int = 2_000
    collect_steps: int = 512
    batch_size: int = 128
    lr: float = 3e-3
    gamma: float = 0.5
    seed: int = 0
    threads: int = 1
    smoke: bool = False


def _tensor(x) -> torch.Tensor:
    return torch.as_tensor(np.asarray(x), dtype=torch.float32)


class Trunk(nn.Module):
    """Per-candidate embeddings (B, C, 64) and the context (B, 64) from a Batch of observations."""

    def __init__(self, space: gym.spaces.Dict) -> None:
        super().__init__()
        self.f = space["clicked_features_mean"].shape[0]
        ctx = sum(int(np.prod(space[k].shape)) for k in KEYS)
        self.context = nn.Sequential(nn.Linear(ctx, 64), nn.Tanh())
        self.candidate = nn.Sequential(nn.Linear(self.f + 64, 64), nn.Tanh())

    def forward(self, obs) -> tuple[torch.Tensor, torch.Tensor]:
        ctx = self.context(torch.cat([_tensor(obs[k]).flatten(1) for k in KEYS], 1))
        feats = _tensor(obs["candidate_features"])
        feats = feats.view(len(feats), -1, self.f)  # (B, C, F)
        both = torch.cat([feats, ctx[:, None].expand(-1, feats.shape[1], -1)], 2)
        return self.candidate(both), ctx


class SlateActor(nn.Module):
    """Tianshou's actor protocol: forward(obs, state, info) -> (dist input, state)."""

    def __init__(self, space: gym.spaces.Dict) -> None:
        super().__init__()
        self.trunk, self.head = Trunk(space), nn.Linear(64, 1)

    def forward(self, obs, state=None, info=None):
        return self.head(self.trunk(obs)[0]).squeeze(-1), state  # (B, C) logits


class Critic(nn.Module):
    def __init__(self, space: gym.spaces.Dict) -> None:
        super().__init__()
        self.trunk, self.head = Trunk(space), nn.Linear(64, 1)

    def forward(self, obs, **kwargs):
        return self.head(self.trunk(obs)[1])


def main() -> None:
    from tianshou.algorithm import PPO
    from tianshou.algorithm.modelfree.reinforce import ProbabilisticActorPolicy
    from tianshou.algorithm.optim import AdamOptimizerFactory
    from tianshou.data import Collector, CollectStats, VectorReplayBuffer
    from tianshou.env import DummyVectorEnv
    from tianshou.trainer import OnPolicyTrainerParams

    args = parse_dataclass(Args, __doc__)
    if args.smoke:
        args = dataclasses.replace(
            args, num_envs=2, epochs=1, steps_per_epoch=32, collect_steps=16, batch_size=16
        )
    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    make = lambda: gym.make(args.env_id, action_mode="slate")  # the slate actor picks indices
    probe = make()
    k = len(probe.action_space.nvec)
    policy = ProbabilisticActorPolicy(
        actor=SlateActor(probe.observation_space),
        dist_fn=lambda logits: PlackettLuceSlate(logits, k),
        action_space=probe.action_space,
        observation_space=probe.observation_space,
        deterministic_eval=True,
        action_scaling=False,
        action_bound_method=None,
    )
    algo = PPO(
        policy=policy,
        critic=Critic(probe.observation_space),
        optim=AdamOptimizerFactory(lr=args.lr),
        gamma=args.gamma,
        gae_lambda=0.9,
        ent_coef=0.0,
    )
    envs = DummyVectorEnv([make for _ in range(args.num_envs)])
    envs.seed(args.seed)
    collector = Collector[CollectStats](
        algo, envs, VectorReplayBuffer(args.collect_steps, args.num_envs)
    )
    result = algo.run_training(
        OnPolicyTrainerParams(
            training_collector=collector,
            max_epochs=args.epochs,
            epoch_num_steps=args.steps_per_epoch,
            collection_step_num_env_steps=args.collect_steps,
            update_step_num_repetitions=4,
            batch_size=args.batch_size,
            show_progress=False,
            verbose=False,
        )
    )
    print(f"trained {result.train_step} user-steps, {result.update_step} updates")
    stats = collector.collect(n_episode=args.num_envs, reset_before_collect=True)
    print(f"mean return {stats.returns_stat.mean:.2f} over {stats.n_collected_episodes} episodes")
    envs.close()


if __name__ == "__main__":
    main()
