"""Fidelity of a simulated user: responses, sessions, ground truth, policy ranking, sim-to-real.

`llm-usersim validate` is `run_validation` + `write_report`. The metric functions
(`evaluation.fidelity.metrics`) take plain arrays of outcomes and probabilities, so any source
of per-event probabilities (the GPT-2 user, the ground truth, a baseline) is scored the same way.

Example:
    >>> from evaluation.fidelity import ValidateConfig, run_validation, write_report
    >>> res = run_validation(ValidateConfig(sim="ckpt", users=500))  # doctest: +SKIP
    >>> write_report(res, "fidelity/report.md")  # doctest: +SKIP
"""

from evaluation.fidelity.config import REQUIRED_KEYS, ValidateConfig
from evaluation.fidelity.metrics import (
    binary_log_loss,
    expected_calibration_error,
    kendall_tau_b,
    kl_bernoulli,
    kl_categorical,
    roc_auc,
)
from evaluation.fidelity.render import write_report
from evaluation.fidelity.report import run_validation

__all__ = [
    "REQUIRED_KEYS",
    "ValidateConfig",
    "binary_log_loss",
    "expected_calibration_error",
    "kendall_tau_b",
    "kl_bernoulli",
    "kl_categorical",
    "roc_auc",
    "run_validation",
    "write_report",
]
