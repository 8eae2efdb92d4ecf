"""PPO with TorchRL on the TorchRL-native env: a Collector, GAE and ClipPPOLoss.

`recsim_env.torchrl_env.make_torchrl_env` gives N users as one TorchRL env of batch size [N] on
a torch device: actions in, observations, rewards and done flags out, as tensors that stay on
the device (sessions, observation building, rewards and random streams included). The
collector resets finished rows through the env's `_reset` mask. The actor scores every
candidate with one shared network and draws a slate without repeats
(`agents.torch_slate.PlackettLuceSlate`), so the loss trains the slate actually shown.

Run:
    python examples/torchrl_ppo.py                               # LLMUserSim-v0, CPU
    python examples/torchrl_ppo.py --device cuda --dtype bfloat16 --num-envs 4096
    python examples/torchrl_ppo.py --smoke                       # seconds
"""

from __future__ import annotations

import dataclasses
import time
from dataclasses import dataclass

import torch
from _args import parse_dataclass  # examples/_args.py
from tensordict.nn import TensorDictModule
from torch import nn
from torchrl.collectors import Collector
from torchrl.modules import ProbabilisticActor, ValueOperator
from torchrl.objectives import ClipPPOLoss
from torchrl.objectives.value import GAE

from agents.torch_slate import PlackettLuceSlate
from recsim_env.torchrl_env import make_torchrl_env


@dataclass
class Args:
    """Settings; defaults do a real run, --smoke a tiny one."""

    env_id: str = "LLMUserSim-v0"
    device: str = "cpu"
    dtype: str = "float32"
    """The GPT-2 user's inference dtype (bfloat16 on a GPU)."""
    num_envs: int = 64
    frames_per_batch: int = 1024
    total_frames: int = 100_000
    """User-steps, all users together."""
    epochs: int = 4
    minibatch: int = 256
    lr: float = 3e-3
    gamma: float = 0.5
    """Rewards are mostly immediate (clicks on this slate): a short horizon learns fastest."""
    seed: int = 0
    threads: int = 1
    smoke: bool = False


OBS = ["candidate_features", "profile", "clicked_features_mean", "session_features"]


class Scorer(nn.Module):
    """One logit per candidate from its features and the user's context: (..., C)."""

    def __init__(self, f: int, p: int) -> None:
        super().__init__()
        self.context = nn.Sequential(nn.Linear(p + f + 2, 64), nn.Tanh())
        self.score = nn.Sequential(nn.Linear(f + 64, 64), nn.Tanh(), nn.Linear(64, 1))

    def forward(
        self, feats, profile, clicked, session
    ):  # (..., C, F), (..., P), (..., F), (..., 2)
        ctx = self.context(torch.cat([profile, clicked, session], -1))
        ctx = ctx.unsqueeze(-2).expand(*feats.shape[:-1], ctx.shape[-1])
        return self.score(torch.cat([feats, ctx], -1)).squeeze(-1)


class Critic(nn.Module):
    def __init__(self, f: int, p: int) -> None:
        super().__init__()
        self.net = nn.Sequential(nn.Linear(p + 2 * f + 2, 64), nn.Tanh(), nn.Linear(64, 1))

    def forward(self, feats, profile, clicked, session):
        return self.net(torch.cat([feats.mean(-2), profile, clicked, session], -1))


def main() -> None:
    args = parse_dataclass(Args, __doc__)
    if args.smoke:
        args = dataclasses.replace(
            args, num_envs=8, frames_per_batch=64, total_frames=128, minibatch=32
        )
    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    env = make_torchrl_env(
        args.env_id,
        num_envs=args.num_envs,
        device=args.device,
        dtype=args.dtype,
        seed=args.seed,
        action_mode="slate",  # candidate indices: the Plackett-Luce actor picks k distinct ones
    )
    spec = env.observation_spec
    f, p = spec["clicked_features_mean"].shape[-1], spec["profile"].shape[-1]
    k = env.config.slate_size
    actor = ProbabilisticActor(
        TensorDictModule(Scorer(f, p), in_keys=OBS, out_keys=["logits"]),
        in_keys=["logits"],
        spec=env.action_spec,
        distribution_class=PlackettLuceSlate,
        distribution_kwargs={"slate_size": k},
        return_log_prob=True,
    ).to(args.device)
    critic = ValueOperator(Critic(f, p), in_keys=OBS).to(args.device)
    advantage = GAE(gamma=args.gamma, lmbda=0.9, value_network=critic, average_gae=True)
    loss_fn = ClipPPOLoss(actor, critic, clip_epsilon=0.2, entropy_coeff=0.0)
    optim = torch.optim.Adam(loss_fn.parameters(), lr=args.lr)
    collector = Collector(
        env,
        actor,
        frames_per_batch=args.frames_per_batch,
        total_frames=args.total_frames,
        device=args.device,
        auto_register_policy_transforms=False,
    )
    start, frames = time.time(), 0
    for i, data in enumerate(collector):  # (num_envs, frames_per_batch / num_envs)
        frames += data.numel()
        reward = data["next", "reward"]
        done = data["next", "done"]
        for _ in range(args.epochs):
            with torch.no_grad():
                advantage(data)
            flat = data.reshape(-1)
            for idx in torch.randperm(flat.numel(), device=flat.device).split(args.minibatch):
                losses = loss_fn(flat[idx])
                loss = losses["loss_objective"] + losses["loss_critic"]
                optim.zero_grad()
                loss.backward()
                nn.utils.clip_grad_norm_(loss_fn.parameters(), 0.5)
                optim.step()
        print(
            f"batch {i}: {frames} user-steps, reward per step {reward.mean():.3f}, "
            f"episodes ended {int(done.sum())}, {frames / (time.time() - start):.0f} user-steps/s"
        )
    collector.shutdown()
    env.close()


if __name__ == "__main__":
    main()
