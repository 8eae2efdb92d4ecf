"""CleanRL-style PPO in one file, on the native vector env (all users in one simulator call).

`gym.make_vec(id, N, vectorization_mode="vector_entry_point")` steps N users together; the
observation is a Dict (kept per key, in a fixed key order), the action a slate of distinct
candidates drawn by a Plackett-Luce actor: one shared network scores every candidate from its
features and the user's context, and the slate takes candidates one after another without
replacement, so the log-probability trained is that of the slate shown (written out below, as
CleanRL would; `agents.torch_slate.PlackettLuceSlate` is the same thing as a library class).

The vector env resets a finished row on the *next* step (Gymnasium's NEXT_STEP autoreset): that
step ignores the action and earns nothing (`info["_item_ids"]` is False for the row). Those
steps are masked out of the loss and cut the advantage chain; the observation returned when an
episode ends is its real last observation, so a truncated episode is bootstrapped from it.

Run:
    python examples/cleanrl_ppo.py                          # LLMUserSim-v0, embedded default
    python examples/cleanrl_ppo.py --env-id ParametricUserSim-v0 --total-timesteps 200000
    python examples/cleanrl_ppo.py --smoke                  # seconds
"""

from __future__ import annotations

import dataclasses
import time
from dataclasses import dataclass

import gymnasium as gym
import numpy as np
import torch
from _args import parse_dataclass  # examples/_args.py
from torch import nn

import recsim_env  # noqa: F401  (registers the ids)


@dataclass
class Args:
    """Settings; defaults do a real run, --smoke a tiny one."""

    env_id: str = "LLMUserSim-v0"
    total_timesteps: int = 100_000
    """User-steps, all users together."""
    num_envs: int = 64
    num_steps: int = 16
    """Steps per rollout (a rollout is num_envs x num_steps user-steps)."""
    learning_rate: float = 3e-3
    gamma: float = 0.5
    """Rewards are mostly immediate (clicks on this slate): a short horizon learns fastest."""
    gae_lambda: float = 0.9
    update_epochs: int = 4
    num_minibatches: int = 4
    clip_coef: float = 0.2
    vf_coef: float = 0.5
    seed: int = 0
    threads: int = 1
    smoke: bool = False


KEYS = (
    "profile",
    "candidate_features",
    "history_responses",
    "clicked_features_mean",
    "session_features",
)
"""Observation keys in a fixed order (a Dict space sorts its keys, the env's dict does not)."""


class Agent(nn.Module):
    """A per-candidate scorer (actor) and a context MLP (critic)."""

    def __init__(self, space: gym.spaces.Dict, num_candidates: int) -> None:
        super().__init__()
        self.c = num_candidates
        self.f = space["clicked_features_mean"].shape[0]
        ctx = sum(int(np.prod(space[k].shape)) for k in KEYS if k != "candidate_features")
        self.context = nn.Sequential(nn.Linear(ctx, 64), nn.Tanh())
        self.score = nn.Sequential(nn.Linear(self.f + 64, 64), nn.Tanh(), nn.Linear(64, 1))
        self.value = nn.Sequential(nn.Linear(64, 64), nn.Tanh(), nn.Linear(64, 1))

    def features(self, obs: dict[str, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
        hist = obs["history_responses"].float()
        parts = [
            obs["profile"].float(),
            hist,
            obs["clicked_features_mean"],
            obs["session_features"],
        ]
        ctx = self.context(torch.cat(parts, dim=1))  # (B, 64)
        feats = obs["candidate_features"].view(-1, self.c, self.f)  # (B, C, F)
        return feats, ctx

    def get_value(self, obs: dict[str, torch.Tensor]) -> torch.Tensor:
        return self.value(self.features(obs)[1]).squeeze(-1)

    def get_action_and_value(
        self, obs: dict[str, torch.Tensor], k: int, action: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        feats, ctx = self.features(obs)
        both = torch.cat([feats, ctx[:, None, :].expand(-1, self.c, -1)], dim=2)
        logits = self.score(both).squeeze(-1)  # (B, C)
        if action is None:  # Plackett-Luce draw: the k largest of logits + Gumbel noise
            gumbel = -torch.log(-torch.log(torch.rand_like(logits).clamp(1e-12, 1 - 1e-7)))
            action = (logits + gumbel).topk(k).indices
        taken = torch.zeros_like(logits, dtype=torch.bool)
        logprob = torch.zeros(len(logits))
        for j in range(k):  # log p(a_j | a_<j): softmax over the candidates still free
            free = logits.masked_fill(taken, float("-inf"))
            logprob = logprob + free.gather(1, action[:, j : j + 1])[:, 0] - free.logsumexp(1)
            taken = taken.scatter(1, action[:, j : j + 1], True)
        return action, logprob, self.value(ctx).squeeze(-1)


def to_tensors(obs: dict[str, np.ndarray]) -> dict[str, torch.Tensor]:
    return {k: torch.as_tensor(obs[k], dtype=torch.float32) for k in KEYS}


def main() -> None:
    args = parse_dataclass(Args, __doc__)
    if args.smoke:
        args = dataclasses.replace(args, total_timesteps=256, num_envs=8, num_steps=8)
    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    envs = gym.make_vec(
        args.env_id,
        num_envs=args.num_envs,
        vectorization_mode="vector_entry_point",
        action_mode="slate",  # candidate indices: the Plackett-Luce actor picks k distinct ones
        observation="full",  # with the responses to the last slates
    )
    k = len(envs.single_action_space.nvec)
    agent = Agent(envs.single_observation_space, int(envs.single_action_space.nvec[0]))
    optimizer = torch.optim.Adam(agent.parameters(), lr=args.learning_rate, eps=1e-5)
    n, t_max = args.num_envs, args.num_steps
    obs_buf = {k_: torch.zeros((t_max, n, *envs.single_observation_space[k_].shape)) for k_ in KEYS}
    actions = torch.zeros((t_max, n, k), dtype=torch.long)
    logprobs, rewards, values = (torch.zeros((t_max, n)) for _ in range(3))
    terminated, ended, valid = (torch.zeros((t_max, n)) for _ in range(3))
    next_obs = to_tensors(envs.reset(seed=args.seed)[0])
    episode_return, finished = np.zeros(n), []
    start = time.time()
    iterations = max(1, args.total_timesteps // (n * t_max))
    for iteration in range(1, iterations + 1):
        for t in range(t_max):
            for key in KEYS:
                obs_buf[key][t] = next_obs[key]
            with torch.no_grad():
                action, logprob, value = agent.get_action_and_value(next_obs, k)
            actions[t], logprobs[t], values[t] = action, logprob, value
            obs, reward, term, trunc, info = envs.step(action.numpy())
            stepped = np.asarray(info["_item_ids"], dtype=bool)  # False: a reset step
            valid[t] = torch.as_tensor(stepped, dtype=torch.float32)
            rewards[t] = torch.as_tensor(reward, dtype=torch.float32)
            terminated[t] = torch.as_tensor(term, dtype=torch.float32)
            ended[t] = torch.as_tensor(term | trunc, dtype=torch.float32)
            episode_return += reward
            finished += episode_return[term | trunc].tolist()
            episode_return[term | trunc] = 0.0
            next_obs = to_tensors(obs)
        with torch.no_grad():  # GAE over real transitions; reset steps cut the chain
            next_value = agent.get_value(next_obs)
            advantages = torch.zeros_like(rewards)
            last = torch.zeros(n)
            for t in reversed(range(t_max)):
                v_next = next_value if t == t_max - 1 else values[t + 1]
                delta = rewards[t] + args.gamma * v_next * (1 - terminated[t]) - values[t]
                last = (delta + args.gamma * args.gae_lambda * (1 - ended[t]) * last) * valid[t]
                advantages[t] = last
            returns = advantages + values
        flat = lambda x: x.reshape(n * t_max, *x.shape[2:])
        b_obs = {key: flat(v) for key, v in obs_buf.items()}
        b_act, b_logp, b_adv, b_ret, b_valid = map(
            flat, (actions, logprobs, advantages, returns, valid)
        )
        batch = n * t_max
        mb = batch // args.num_minibatches
        for _ in range(args.update_epochs):
            order = torch.randperm(batch)
            for lo in range(0, batch, mb):
                idx = order[lo : lo + mb]
                w = b_valid[idx]
                if w.sum() == 0:
                    continue
                _, newlogp, newvalue = agent.get_action_and_value(
                    {key: v[idx] for key, v in b_obs.items()}, k, b_act[idx]
                )
                ratio = (newlogp - b_logp[idx]).exp()
                adv = b_adv[idx]
                adv = (adv - adv[w > 0].mean()) / (adv[w > 0].std(unbiased=False) + 1e-8)
                pg = torch.max(
                    -adv * ratio, -adv * ratio.clamp(1 - args.clip_coef, 1 + args.clip_coef)
                )
                v_loss = 0.5 * (newvalue - b_ret[idx]) ** 2
                loss = ((pg + args.vf_coef * v_loss) * w).sum() / w.sum()
                optimizer.zero_grad()
                loss.backward()
                nn.utils.clip_grad_norm_(agent.parameters(), 0.5)
                optimizer.step()
        recent = np.mean(finished[-200:]) if finished else float("nan")
        print(
            f"iteration {iteration}/{iterations}: {iteration * batch} user-steps, "
            f"mean return of recent episodes {recent:.2f}, {iteration * batch / (time.time() - start):.0f} user-steps/s"
        )
    envs.close()


if __name__ == "__main__":
    main()
