"""`PlackettLuceSlate`: a slate distribution for any torch RL library (TorchRL, Tianshou, ...).

A policy that scores every candidate (one logit each) picks a slate of k distinct candidates
by drawing them one after another without replacement (Plackett-Luce): slot j takes candidate
c with probability softmax(logits over the candidates not yet shown)[c]. So a slate never
repeats a candidate, and `log_prob` is that of the slate actually shown (independent per-slot
categoricals repeat candidates, 42-47% of slates for SB3's plain PPO, which the env then
dedupes, training the log-probability of a slate never shown). Sampling uses the Gumbel top-k
trick: the k largest of logits + Gumbel noise are a Plackett-Luce draw.

Example (TorchRL):
    >>> actor = ProbabilisticActor(scorer, in_keys=["logits"], spec=env.action_spec,
    ...     distribution_class=PlackettLuceSlate, distribution_kwargs={"slate_size": 5},
    ...     return_log_prob=True)
"""

from __future__ import annotations

import torch
from torch.distributions import Distribution


class PlackettLuceSlate(Distribution):
    """Slates (..., k) of distinct candidate indices from logits (..., C).

    Args:
        logits: one score per candidate, (..., C).
        slate_size: k (at most C).
    """

    arg_constraints: dict = {}  # noqa: RUF012  (torch's Distribution protocol)
    has_rsample = False

    def __init__(self, logits: torch.Tensor, slate_size: int) -> None:
        """Store the scores; batch shape logits.shape[:-1], event shape (k,)."""
        if not 1 <= slate_size <= logits.shape[-1]:
            raise ValueError(
                f"slate_size must be in [1, {logits.shape[-1]}] (the candidates), got {slate_size}"
            )
        self.logits = logits
        self.k = int(slate_size)
        super().__init__(logits.shape[:-1], torch.Size([self.k]), validate_args=False)

    def sample(self, sample_shape: torch.Size | list[int] | tuple[int, ...] = ()) -> torch.Tensor:
        """Draw slates (*sample_shape, ..., k) int64 (Gumbel top-k)."""
        with torch.no_grad():
            shape = torch.Size(sample_shape) + self.logits.shape
            u = torch.rand(shape, device=self.logits.device).clamp(1e-12, 1.0 - 1e-7)
            return (self.logits.expand(shape) - torch.log(-torch.log(u))).topk(self.k).indices

    @property
    def mode(self) -> torch.Tensor:
        """The k best candidates, best first."""
        return self.logits.topk(self.k).indices

    @property
    def variance(self) -> torch.Tensor:
        """NaN (..., k): undefined for orderings (as torch's Categorical; Tianshou logs it)."""
        return torch.full(self.mode.shape, float("nan"), device=self.logits.device)

    @property
    def deterministic_sample(self) -> torch.Tensor:
        """The mode (what TorchRL's deterministic exploration takes)."""
        return self.mode

    def _slot_log_probs(self, value: torch.Tensor) -> torch.Tensor:
        """Log p(a_j | a_<j) per slot (..., k) of slates `value` (..., k)."""
        logits = self.logits.expand(*value.shape[:-1], self.logits.shape[-1])
        value = value.long()
        taken = torch.zeros_like(logits, dtype=torch.bool)
        out = []
        for j in range(value.shape[-1]):
            free = logits.masked_fill(taken, float("-inf"))
            pick = value[..., j : j + 1]
            out.append((free.gather(-1, pick) - torch.logsumexp(free, -1, keepdim=True))[..., 0])
            taken = taken.scatter(-1, pick, True)
        return torch.stack(out, dim=-1)

    def log_prob(self, value: torch.Tensor) -> torch.Tensor:
        """Log-probability of whole slates (...,) (the sum over their slots)."""
        return self._slot_log_probs(value).sum(-1)

    def entropy(self) -> torch.Tensor:
        """The slot entropies summed along the mode slate.

        A differentiable stand-in: the exact entropy sums over all k-permutations.
        """
        logits = self.logits
        taken = torch.zeros_like(logits, dtype=torch.bool)
        total = torch.zeros(logits.shape[:-1], device=logits.device, dtype=logits.dtype)
        for j in range(self.k):
            free = logits.masked_fill(taken, float("-inf"))
            logp = torch.log_softmax(free, -1)
            total = total - (logp.exp() * logp.masked_fill(taken, 0.0)).sum(-1)
            taken = taken.scatter(-1, self.mode[..., j : j + 1], True)
        return total


__all__ = ["PlackettLuceSlate"]
