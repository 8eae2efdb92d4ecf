"""User-level differentially private fine-tuning: DP-SGD with the *user* as the protected unit.

A simulator trained on real logs is a summary of real people. With `TrainConfig.dp` (train-sim
`--dp-epsilon E [--dp-delta D]`) every optimiser step is the subsampled Gaussian mechanism over
users, so the trained weights are (epsilon, delta)-differentially private with respect to adding
or removing one user and *all* of that user's sessions:

1. Poisson sampling: each training user joins the step independently with probability
   q = expected_users / N (N training users), drawn from a secret seed.
2. A sampled user's windows are packed into rows of that user alone (`user_rows`; the ordinary
   trainer's `pack_rows` mixes users in a row), at most `max_rows_per_user` of them.
3. The user's loss is their mean NLL per user token (`row_nll`, a fixed-shape form of
   `packed_loss`: no boolean indexing, so `torch.func.vmap` takes it). A mean rather than a sum
   keeps the gradient's scale independent of how much a user logged (summed NLL gave norms of
   37-83 at initialisation in the research notes) and needs no data-dependent constant.
4. Per-user gradients by `torch.func` (`functional_call` + `vmap(grad)`, one vmap element = one
   user's (R, T) block of rows); each user's whole gradient (every trainable parameter) is
   clipped to norm C (`max_grad_norm`), summed, N(0, (sigma C)^2) is added to every coordinate,
   and the sum is divided by the *expected* number of users q N (as Opacus's DPOptimizer does).
5. AdamW takes the step: post-processing, no further privacy cost.

sigma is chosen before training (`opacus.accountants.utils.get_noise_multiplier`, RDP
accountant) so that the planned steps spend at most the target epsilon; the spent epsilon is
recomputed from the steps actually taken (Opacus `RDPAccountant`). Opacus's module hooks are
not used: UserLM's forward is functional (`torch.addmm` on the weights over (B*T, d) rows), so
hooks would see no calls or per-token "samples", and they give per-row, not per-user,
gradients.

What DP-SGD does not cover is listed in `NOT_COVERED` and written into the checkpoint and the
model card. What this module does about it: the checkpoint's population is synthetic
(`synthetic_population`), not the training users' profiles, and every catalog item counts as
known (no per-item bit computed from the logs).

The module holds the mechanism, its accounting and its saved state: one piece, as they must
agree on sigma, q and the steps.
"""

from __future__ import annotations

import contextlib
import logging
import math
import secrets
import warnings
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
import torch
from torch import nn

from simulators.catalog import PROFILE_PAD, ProfileEncoder
from simulators.lm.model import UserLM, packed_inputs
from simulators.training.data import CHANNELS, drop_items, pack_rows

log = logging.getLogger(__name__)

INSTALL_HINT = "pip install 'llm-usersim[dp]' (opacus)"
"""What to install for differentially private training."""
RDP_ORDERS: tuple[int, ...] = (*range(2, 65), 80, 96, 128, 192, 256, 384, 512, 1024)
"""RDP orders of the accountant: integers (fast to evaluate: choosing sigma took 0.3-0.6 s here
against 1-5 s with Opacus's default fractional orders) plus large ones (with small sigma and many
users Opacus warned that its largest default order, 63, was the optimum). Fewer orders give a
looser, still valid bound: sigma 1-3% larger than with the finest orders at epsilon 8, the same
at epsilon 1."""
WIDTH_STEP = 128
"""Rows are cut to the smallest multiple of this many tokens that holds their content, and users
with the same (rows, width) are differentiated together: padding costs at most 127 tokens."""
NOT_COVERED: tuple[str, ...] = (
    "The vocabulary: the profile tokens (field=value strings) are every value found in the "
    "users table, training and validation users alike, without noise; a rare value tells that "
    "someone in the logs has it. The item catalog is assumed public.",
    "Validation users: the checkpoint kept is the step with the lowest validation loss, and "
    "early stopping reads the same losses; the held-out users are not protected by DP-SGD "
    "(they influence which step is kept, not the weights).",
    "Statistics of the logs chosen before training: the context length (from the longest "
    "slate), the number of training users N (in the sampling rate) and the default delta.",
    "OUT/training/: the training state holds the secret noise seed (whoever has it can remove "
    "the noise) and TensorBoard's training losses of the sampled users, computed without "
    "noise. Ship only the checkpoint files.",
    "The noise is drawn with torch's Mersenne Twister (seeded with 63 bits from os.urandom), "
    "not a cryptographic generator, in floating point (no defence against attacks on the "
    "floating-point Gaussian).",
)
"""What DP-SGD's guarantee does not extend to (recorded in the checkpoint and the model card)."""


def require_opacus() -> Any:
    """The `opacus.accountants` module, or ImportError saying what to install."""
    try:
        from opacus import accountants
        from opacus.accountants import utils  # noqa: F401  (get_noise_multiplier)
    except ImportError:
        raise ImportError(
            f"differentially private training (--dp-epsilon) needs opacus: {INSTALL_HINT}"
        ) from None
    return accountants


@dataclass(frozen=True, kw_only=True)
class DPConfig:
    """Settings of user-level DP-SGD (`TrainConfig.dp`; None there: no DP)."""

    epsilon: float
    """Target epsilon of the whole planned run (> 0, finite)."""
    delta: float | None = None
    """Target delta in (0, 1); None: min(1e-5, 1 / (10 N)) for N training users, well below the
    1/N at which releasing one random user's data would qualify."""
    max_grad_norm: float = 1.0
    """C: every user's whole gradient (of their mean NLL per token) is clipped to this norm."""
    expected_users: int = 64
    """Users per step on average (Poisson sampling at rate expected_users / N): more users per
    step mean less noise relative to the signal (the noise on the averaged gradient has
    standard deviation sigma C / expected_users)."""
    max_rows_per_user: int = 4
    """A sampled user contributes at most this many rows (of the context length) per step: it
    bounds compute; privacy comes from the clipping."""
    noise_seed: int | None = None
    """Seed of the sampling and the noise; None (the default): 63 secret bits from os.urandom,
    kept in the training state only. A given seed is recorded in the checkpoint's
    train_config, which voids the guarantee against anyone holding it: for tests."""

    def __post_init__(self) -> None:
        """Validate ranges."""
        if not (math.isfinite(self.epsilon) and self.epsilon > 0):
            raise ValueError(f"dp epsilon must be a finite number > 0, got {self.epsilon}")
        if self.delta is not None and not 0.0 < self.delta < 1.0:
            raise ValueError(f"dp delta must be in (0, 1), got {self.delta}")
        if not (math.isfinite(self.max_grad_norm) and self.max_grad_norm > 0):
            raise ValueError(f"dp max_grad_norm must be > 0, got {self.max_grad_norm}")
        if self.expected_users < 1:
            raise ValueError(f"dp expected_users must be >= 1, got {self.expected_users}")
        if self.max_rows_per_user < 1:
            raise ValueError(f"dp max_rows_per_user must be >= 1, got {self.max_rows_per_user}")

    def to_dict(self) -> dict[str, Any]:
        """JSON-serialisable form."""
        return asdict(self)


def default_delta(users: int) -> float:
    """min(1e-5, 1 / (10 N)): the delta used when none is given."""
    return min(1e-5, 1.0 / (10 * max(1, users)))


def noise_multiplier(epsilon: float, delta: float, sample_rate: float, steps: int) -> float:
    """The noise multiplier sigma such that `steps` steps at `sample_rate` spend at most (epsilon, delta) (RDP).

    Raises:
        ValueError: the budget cannot be met (Opacus gives up above sigma = 2000).
    """
    require_opacus()
    from opacus.accountants.utils import get_noise_multiplier

    try:
        with _quiet_accountant():
            sigma = get_noise_multiplier(
                target_epsilon=epsilon,
                target_delta=delta,
                sample_rate=sample_rate,
                steps=max(1, steps),
                accountant="rdp",
                epsilon_tolerance=0.01,
                alphas=list(RDP_ORDERS),
            )
        return float(sigma)
    except ValueError:
        raise ValueError(
            f"--dp-epsilon {epsilon:g}: no noise level reaches it over {steps} steps at sampling "
            f"rate {sample_rate:.4g}; allow a larger epsilon, fewer steps or more users"
        ) from None


def spent_epsilon(sigma: float, sample_rate: float, steps: int, delta: float) -> float:
    """Epsilon spent by `steps` steps of the subsampled Gaussian mechanism (RDP accountant)."""
    if steps <= 0:
        return 0.0
    accountants = require_opacus()
    acc = accountants.RDPAccountant()
    acc.history = [(sigma, sample_rate, int(steps))]
    with _quiet_accountant():
        return float(acc.get_epsilon(delta=delta, alphas=list(RDP_ORDERS)))


@contextlib.contextmanager
def _quiet_accountant() -> Iterator[None]:
    """Silence Opacus's "optimal order is the smallest/largest alpha" warnings.

    They say a finer set of orders could give a tighter bound; the bound given is still valid,
    and `RDP_ORDERS` was chosen for speed (its docstring). Left on, they broke the one-line
    error of an unreachable epsilon and repeated at every validation.
    """
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="Optimal order is the", category=UserWarning)
        yield


def synthetic_population(encoder: ProfileEncoder, n: int, seed: int) -> np.ndarray:
    """(n, slots) profiles drawn from the vocabulary alone: one uniform value per field.

    With DP the checkpoint must not ship the training users' profiles; these carry nothing of
    the users beyond the vocabulary (not their frequencies, not which values go together).
    """
    rng = np.random.default_rng([seed, 23])
    out = np.full((n, encoder.slots), PROFILE_PAD, dtype=np.int64)
    col = 0
    for field in encoder.fields:
        values = [i for i, tok in enumerate(encoder.vocab) if tok.startswith(f"{field}=")]
        if not values or col >= encoder.slots:
            continue
        out[:, col] = np.asarray(values)[rng.integers(0, len(values), n)]
        col += 1
    return out


def row_nll(model: UserLM, rows: dict[str, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
    """Summed NLL of the user's tokens of every packed row, and their number: (B,), (B,).

    The fixed-shape form of `simulators.lm.model.packed_loss`: the head's logits at every
    position, the behaviour or continue/leave log-softmax picked by the target kind instead of
    `h[mask]`, so `vmap` can batch it. Summed over rows it equals packed_loss's response +
    leave NLL (test).
    """
    tokens, pos, attend = packed_inputs(model, rows)
    logits = model.output_logits(model(tokens, pos, attend)).float()  # (B, T, R + 2)
    r = model.num_behaviours
    kind, target = rows["target_kind"], rows["target"]
    resp = logits[..., :r].log_softmax(-1).gather(-1, target.clamp(0, r - 1)[..., None])[..., 0]
    leave = logits[..., r : r + 2].log_softmax(-1).gather(-1, target.clamp(0, 1)[..., None])
    nll = -(torch.where(kind == 1, resp, 0.0) + torch.where(kind == 2, leave[..., 0], 0.0))
    return nll.sum(-1), (kind > 0).sum(-1)


class _UserLoss(nn.Module):
    """`functional_call` needs a module whose forward is the loss: one user's mean NLL."""

    def __init__(self, model: UserLM) -> None:
        super().__init__()
        self.model = model

    def forward(self, rows: dict[str, torch.Tensor]) -> torch.Tensor:
        nll, count = row_nll(self.model, rows)
        return nll.sum() / count.sum().clamp(min=1)


def per_user_gradients(
    model: UserLM, block: dict[str, torch.Tensor]
) -> tuple[dict[str, torch.Tensor], torch.Tensor]:
    """Gradients of each user's mean NLL: {name: (U, *shape)} and the losses (U,).

    Args:
        model: the network (only parameters with requires_grad are differentiated).
        block: (U, R, T) packed rows, user u's rows in block[...][u] (padding rows allowed).
    """
    from torch.func import functional_call, grad, vmap

    wrapper = _UserLoss(model)
    params = {n: p.detach() for n, p in wrapper.named_parameters() if p.requires_grad}
    fixed = {n: p.detach() for n, p in wrapper.named_parameters() if not p.requires_grad}
    fixed.update(dict(wrapper.named_buffers()))

    def loss(p: dict[str, torch.Tensor], rows: dict[str, torch.Tensor]) -> tuple[Any, Any]:
        value = functional_call(wrapper, {**p, **fixed}, (rows,))
        return value, value.detach()

    with warnings.catch_warnings():
        # vmap loops over users for CPU flash attention (no batching rule) and says so at every
        # call; forcing the math kernel, which has one, was no faster here (1.7-1.8 s against
        # 1.3-1.8 s a step of 64 users, tiny size, 1 thread on 2 shared cores)
        warnings.filterwarnings(
            "ignore", message="There is a performance drop", category=UserWarning
        )
        grads, losses = vmap(grad(loss, has_aux=True), in_dims=(None, 0))(params, block)
    return {n[len("model.") :]: g for n, g in grads.items()}, losses


def clip_and_sum(
    grads: dict[str, torch.Tensor], max_norm: float
) -> tuple[dict[str, torch.Tensor], torch.Tensor]:
    """Clip each user's whole gradient to `max_norm` and sum over users.

    Returns:
        ({name: summed clipped gradient}, (U,) norms before clipping).
    """
    first = next(iter(grads.values()))
    u = first.shape[0]
    sq = torch.zeros(u, dtype=torch.float32, device=first.device)
    for g in grads.values():
        sq += g.reshape(u, -1).float().pow(2).sum(1)
    norms = sq.sqrt()
    factor = (max_norm / (norms + 1e-6)).clamp(max=1.0)
    return {n: torch.tensordot(factor.to(g.dtype), g, dims=1) for n, g in grads.items()}, norms


def user_rows(
    windows: list[dict[str, np.ndarray]], context: int, max_rows: int, rng: np.random.Generator
) -> list[dict[str, np.ndarray]]:
    """One user's windows, in a random order, packed into at most `max_rows` rows of their own."""
    return pack_rows(windows, context, rng.permutation(len(windows)))[:max_rows]


def _width(row: dict[str, np.ndarray], context: int) -> int:
    used = int((row["segment_ids"] >= 0).sum())
    return min(context, WIDTH_STEP * max(1, math.ceil(used / WIDTH_STEP)))


class UserLevelDPSGD:
    """The mechanism of one training run: sampling, per-user gradients, noise, accounting.

    Args:
        cfg: the DP settings.
        user_windows: every training user's context windows (`session_windows`), one list per
            user.
        context: tokens per row (the trainer's row length).
        planned_steps: optimiser steps the budget is planned for.
        item_dropout: chance an item token becomes <unk_item> (as in ordinary training).
        unk_item: the <unk_item> token id.
        users_per_call: users differentiated by one vmap call (bounds memory: users_per_call x
            trainable parameters x 4 bytes).
    """

    def __init__(
        self,
        cfg: DPConfig,
        user_windows: list[list[dict[str, np.ndarray]]],
        context: int,
        planned_steps: int,
        item_dropout: float,
        unk_item: int,
        users_per_call: int = 16,
    ) -> None:
        """Choose sigma for the planned steps (nothing is trained yet)."""
        require_opacus()
        self.cfg = cfg
        self.user_windows = [w for w in user_windows if w]
        self.users = len(self.user_windows)
        if cfg.expected_users > self.users:
            raise ValueError(
                f"--dp-users-per-step {cfg.expected_users} exceeds the {self.users} training "
                "users; sample fewer users per step"
            )
        self.context = context
        self.planned_steps = int(planned_steps)
        self.item_dropout = item_dropout
        self.unk_item = unk_item
        self.users_per_call = users_per_call
        self.sample_rate = cfg.expected_users / self.users
        self.delta = cfg.delta if cfg.delta is not None else default_delta(self.users)
        if self.delta >= 1.0 / self.users:
            log.warning(
                "dp delta %.3g is not below 1/N = %.3g (N training users): a mechanism that "
                "publishes one random user's data would meet it",
                self.delta,
                1.0 / self.users,
            )
        self.sigma = noise_multiplier(cfg.epsilon, self.delta, self.sample_rate, self.planned_steps)
        self.noise_seed = cfg.noise_seed if cfg.noise_seed is not None else secrets.randbits(63)
        self.clipped = 0
        """Sampled users whose gradient was clipped so far (a non-private diagnostic)."""
        self.sampled = 0
        """Users sampled so far."""

    @property
    def steps_per_epoch(self) -> int:
        """Steps that sample N users in expectation (1 / q)."""
        return max(1, math.ceil(self.users / self.cfg.expected_users))

    # ------------------------------------------------------------------ one step
    def _rng(self, step: int, stream: int) -> np.random.Generator:
        return np.random.default_rng([self.noise_seed, step, stream])

    def sample_users(self, step: int) -> np.ndarray:
        """Indices of the users of `step` (Poisson sampling at rate q; possibly none)."""
        return np.nonzero(self._rng(step, 0).random(self.users) < self.sample_rate)[0]

    def _blocks(self, step: int) -> Iterator[dict[str, torch.Tensor]]:
        """The sampled users' rows, grouped by shape (rows, width): (U, R, W) tensors each."""
        rng = self._rng(step, 1)
        groups: dict[tuple[int, int], list[list[dict[str, np.ndarray]]]] = {}
        for u in self.sample_users(step):
            rows = user_rows(self.user_windows[u], self.context, self.cfg.max_rows_per_user, rng)
            width = max(_width(r, self.context) for r in rows)
            groups.setdefault((len(rows), width), []).append(
                [{k: v[:width] for k, v in r.items()} for r in rows]
            )
        drop = torch.Generator().manual_seed(int(self._rng(step, 2).integers(2**62)))
        for (n_rows, width), members in sorted(groups.items()):
            block = {
                k: torch.from_numpy(np.stack([np.stack([r[k] for r in m]) for m in members]))
                for k in CHANNELS
            }
            if self.item_dropout > 0:
                flat = {k: v.reshape(-1, width) for k, v in block.items()}
                flat = drop_items(flat, self.item_dropout, self.unk_item, drop)
                block = {k: v.reshape(len(members), n_rows, width) for k, v in flat.items()}
            yield block

    def compute_gradients(
        self,
        model: UserLM,
        step: int,
        autocast: Callable[[], Any] | None = None,
    ) -> float:
        """Set every trainable parameter's `.grad` to step `step`'s private gradient.

        Returns:
            the sampled users' mean loss (NaN when none was sampled; a non-private figure for
            progress reports only).
        """
        params = {n: p for n, p in model.named_parameters() if p.requires_grad}
        dev = next(iter(params.values())).device
        total = {n: torch.zeros_like(p, dtype=torch.float32) for n, p in params.items()}
        losses: list[torch.Tensor] = []
        for block in self._blocks(step):
            n_users = len(block["input_ids"])
            for lo in range(0, n_users, self.users_per_call):
                part = {k: v[lo : lo + self.users_per_call].to(dev) for k, v in block.items()}
                with autocast() if autocast is not None else contextlib.nullcontext():
                    grads, loss = per_user_gradients(model, part)
                summed, norms = clip_and_sum(grads, self.cfg.max_grad_norm)
                for n, g in summed.items():
                    total[n] += g.float()
                losses.append(loss.float().cpu())
                self.clipped += int((norms > self.cfg.max_grad_norm).sum())
                self.sampled += len(norms)
        noise = torch.Generator().manual_seed(int(self._rng(step, 3).integers(2**62)))
        scale = self.cfg.expected_users  # q N: the expected, not the actual, number of users
        for n, p in params.items():
            z = torch.normal(
                0.0,
                self.sigma * self.cfg.max_grad_norm,
                size=tuple(p.shape),
                generator=noise,
            )
            p.grad = ((total[n] + z.to(dev)) / scale).to(p.dtype)
        return float(torch.cat(losses).mean()) if losses else float("nan")

    # ------------------------------------------------------------------ accounting and state
    def spent(self, steps: int) -> float:
        """Epsilon spent after `steps` steps."""
        return spent_epsilon(self.sigma, self.sample_rate, steps, self.delta)

    def record(self, steps: int, checkpoint_step: int | None = None) -> dict[str, Any]:
        """What the checkpoint, the training JSON and the model card state after `steps` steps.

        The kept checkpoint is chosen by comparing validation losses over every step run, so it
        depends on all of them: its epsilon is that of all steps taken so far, not of its own.
        """
        from importlib.metadata import version

        return {
            "mechanism": "user-level DP-SGD: Poisson sampling of users, each user's whole "
            "gradient clipped, Gaussian noise",
            "unit": "user (all of a user's sessions)",
            "epsilon": self.spent(steps),
            "delta": self.delta,
            "target_epsilon": self.cfg.epsilon,
            "steps": int(steps),
            "planned_steps": self.planned_steps,
            "checkpoint_step": checkpoint_step,
            "noise_multiplier": self.sigma,
            "max_grad_norm": self.cfg.max_grad_norm,
            "sample_rate": self.sample_rate,
            "expected_users_per_step": self.cfg.expected_users,
            "max_rows_per_user": self.cfg.max_rows_per_user,
            "training_users": self.users,
            "clipped_fraction": self.clipped / self.sampled if self.sampled else None,
            "accountant": f"RDP (opacus {version('opacus')})",
            "population": "synthetic: one uniform value per profile field (no training "
            "user's profile)",
            "not_covered": list(NOT_COVERED),
        }

    def state_dict(self) -> dict[str, Any]:
        """What `--resume` needs (saved in the training state, never in the checkpoint)."""
        return {
            "noise_seed": self.noise_seed,
            "noise_multiplier": self.sigma,
            "sample_rate": self.sample_rate,
            "delta": self.delta,
            "planned_steps": self.planned_steps,
            "training_users": self.users,
            "clipped": self.clipped,
            "sampled": self.sampled,
        }

    def resume_differences(self, saved: dict[str, Any]) -> list[str]:
        """Why a saved mechanism cannot be continued by this one (empty: it can).

        The privacy budget was planned for the saved run's steps, users and delta: none of
        them may change (a longer run would spend more than the target epsilon).
        """
        now = self.state_dict()
        out = []
        for key in ("planned_steps", "training_users", "delta", "sample_rate"):
            if not math.isclose(float(saved[key]), float(now[key]), rel_tol=1e-12):
                out.append(f"dp {key.replace('_', ' ')}: saved {saved[key]!r}, now {now[key]!r}")
        if out and saved["planned_steps"] != now["planned_steps"]:
            out[0] += " (the privacy budget was planned for the saved steps: keep --max-steps "
            out[0] += "and --epochs)"
        return out

    def load_state_dict(self, saved: dict[str, Any]) -> None:
        """Continue with the saved seed, sigma and counters."""
        self.noise_seed = int(saved["noise_seed"])
        self.sigma = float(saved["noise_multiplier"])
        self.clipped = int(saved.get("clipped", 0))
        self.sampled = int(saved.get("sampled", 0))
