"""User simulators: the parametric ground-truth world and the GPT-2 user model.

The bottom layer of the project: it imports nothing from the envs (`recsim_env`), the agents or
evaluation. `simulators.base.UserSimulator` is the contract every simulator implements.
"""

from simulators.base import Response, StepOutcome, UserSimulator
from simulators.behaviours import DEFAULT_BEHAVIOURS, BehaviourSet

__all__ = ["DEFAULT_BEHAVIOURS", "BehaviourSet", "Response", "StepOutcome", "UserSimulator"]
