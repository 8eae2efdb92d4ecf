"""Gymnasium envs for slate recommendation against simulated users.

Importing this package registers:

- ``LLMUserSim-v0``: users played by a fine-tuned GPT-2 (the embedded default unless
  ``simulator=PATH``); ``gym.make_vec(..., vectorization_mode="vector_entry_point")`` gives the
  native batched env.
- ``ParametricUserSim-v0``: the ground-truth parametric world with the same contract.
"""

from gymnasium.envs.registration import register, registry

from recsim_env.config import EnvConfig

MAX_EPISODE_STEPS = EnvConfig().max_episode_steps

if "LLMUserSim-v0" not in registry:
    register(
        id="LLMUserSim-v0",
        entry_point="recsim_env.env:LLMUserSimEnv",
        vector_entry_point="recsim_env.vector_env:make_llm_vector_env",
        max_episode_steps=MAX_EPISODE_STEPS,
    )
if "ParametricUserSim-v0" not in registry:
    register(
        id="ParametricUserSim-v0",
        entry_point="recsim_env.env:ParametricUserSimEnv",
        vector_entry_point="recsim_env.vector_env:make_parametric_vector_env",
        max_episode_steps=MAX_EPISODE_STEPS,
    )

__all__ = ["EnvConfig"]
