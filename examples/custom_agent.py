"""Write your own slate agent and score it with stable-baselines3's `evaluate_policy`.

An agent subclasses `agents.base.SlateAgent` and implements `act(batch_obs, deterministic)`,
returning candidate indices (n, slate_size) for a batch of observations; the base class gives it
SB3's `predict`, so SB3's `evaluate_policy` (and `llm-usersim benchmark`) score it exactly like
an SB3 model. Here: "more of what the user clicked", candidates ranked by the similarity of their
features to the mean features of the items the user clicked this session, random until the
first click.

Run:
    python examples/custom_agent.py                       # ParametricUserSim-v0, 500 episodes
    python examples/custom_agent.py --env-id LLMUserSim-v0 --simulator PATH
    python examples/custom_agent.py --smoke               # seconds
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import numpy as np
import torch
from _args import parse_dataclass  # examples/_args.py
from stable_baselines3.common.evaluation import evaluate_policy

from agents.base import SlateAgent, candidate_matrix, top_k
from agents.random_agent import RandomAgent
from agents.sb3 import make_sb3_vec_env
from recsim_env.config import SLATE_AGENT_KWARGS


class MoreOfTheSameAgent(SlateAgent):
    """Ranks candidates by cosine similarity to the clicked-item feature mean."""

    name = "more_of_the_same"

    def act(self, obs: dict[str, np.ndarray], deterministic: bool) -> np.ndarray:
        """Candidate indices (n, slate_size) for a batch of observations."""
        feats = candidate_matrix(obs)  # (n, C, F)
        liked = np.asarray(obs["clicked_features_mean"], dtype=np.float64)  # (n, F)
        unit = feats / np.maximum(np.linalg.norm(feats, axis=-1, keepdims=True), 1e-9)
        score = np.einsum("ncf,nf->nc", unit, liked)  # 0 for everyone before a first click
        score = score + 1e-3 * self.rng.random(score.shape)  # random tie-break
        return top_k(score, self.slate_size)


@dataclass
class Args:
    """Settings; defaults do a real run, --smoke a tiny one."""

    env_id: str = "ParametricUserSim-v0"
    """ParametricUserSim-v0 or LLMUserSim-v0."""
    simulator: str = ""
    """LLMUserSim-v0 checkpoint directory (empty: the embedded default)."""
    episodes: int = 500
    """Episodes (users) per agent."""
    num_envs: int = 50
    """Users simulated together."""
    seed: int = 0
    threads: int = 1
    smoke: bool = False
    """Tiny settings: a few seconds."""


def parse_args() -> Args:
    """Args from the command line (one flag per field, CleanRL style)."""
    args = parse_dataclass(Args, __doc__)
    if args.smoke:
        args = dataclasses.replace(args, episodes=8, num_envs=4)
    return args


def main() -> None:
    """Evaluate the custom agent and a random one on the same users."""
    args = parse_args()
    torch.set_num_threads(args.threads)
    env_kwargs: dict = dict(SLATE_AGENT_KWARGS)  # slates as actions, catalog ids observed
    if args.env_id.startswith("LLMUserSim") and args.simulator:
        env_kwargs["simulator"] = args.simulator
    if args.smoke and args.env_id.startswith("Parametric"):
        env_kwargs["world"] = {"num_items": 50, "num_topics": 5, "population_size": 200}
    results = {}
    for agent in (MoreOfTheSameAgent(5, seed=args.seed), RandomAgent(5, seed=args.seed)):
        # a fresh env with the same seed: both agents meet the same users
        venv = make_sb3_vec_env(args.env_id, num_envs=args.num_envs, seed=args.seed, **env_kwargs)
        agent.slate_size = venv.unwrapped.config.slate_size
        mean, std = evaluate_policy(agent, venv, n_eval_episodes=args.episodes)
        venv.close()
        results[agent.name] = (mean, 1.96 * std / np.sqrt(args.episodes))
        print(
            f"{agent.name:>16}: mean return {mean:.2f} ± {results[agent.name][1]:.2f} "
            f"(95% CI, {args.episodes} episodes)"
        )
    gain = results["more_of_the_same"][0] - results["random"][0]
    print(f"more_of_the_same - random: {gain:+.2f}")


if __name__ == "__main__":
    main()
