"""User simulators: the parametric ground-truth world and the GPT-2 user model."""

from simulators.base import Response, StepOutcome

__all__ = ["Response", "StepOutcome"]
