"""Fine-tuning the GPT-2 user on interaction logs (see `simulators.training.data` for the data).

- Early stopping on validation loss; the best model is saved as a simulator checkpoint in OUT,
  the latest training state (weights, AdamW moments, counters) in OUT/training/state.safetensors:
  one file, written atomically, so a crash leaves either the old or the new state. `resume=True`
  continues from it and reproduces the uninterrupted run: batch order is a function of
  (seed, epoch) and item dropout of (seed, step).
- accelerate drives devices and precision; `accelerate launch --multi_gpu` or torchrun runs the
  same code data-parallel on several GPUs, machines or (gloo) CPU processes, each rank on a shard
  of every global batch (`simulators.training.parallel`), with the same steps as one process.

The loop, its resumable state (save/load) and early stopping act on one trainer's state, so they
stay in one module; the data side (windows, packing, splits) is `simulators.training.data`.
"""

from __future__ import annotations

import contextlib
import json
import logging
import math
import sys
import time
from collections.abc import Iterator
from dataclasses import MISSING, asdict, dataclass, fields, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors import safe_open
from safetensors.torch import save_file

from simulators.atomic import atomic_write, exclusive_output
from simulators.catalog import ProfileEncoder, item_category_index
from simulators.gpt2_user import GPT2UserSimulator, build_user_lm
from simulators.gpt2_user.checkpoint import update_extra
from simulators.lm.model import SimulatorConfig, UserLM, packed_loss
from simulators.lm.pretrained_text import base_source
from simulators.logs import InteractionLogs
from simulators.progress import progress_bar
from simulators.slate_fit import check_slates, window_length
from simulators.text_encoder import TEXT_ENCODERS
from simulators.training.calibration import (
    calibration_mask,
    engagement_evidence,
    engagement_log_loss,
    fit_platt,
)
from simulators.training.data import (
    SessionData,
    collate,
    drop_items,
    encode_logs,
    hide_unknown_items,
    pack_rows,
    session_windows,
    split_by_user,
)
from simulators.training.dp import DPConfig, UserLevelDPSGD, synthetic_population
from simulators.training.lora import add_lora, merged, trainable_parameters
from simulators.training.parallel import (
    backward_on_shard,
    launched_world_size,
    make_accelerator,
    shard,
    sum_gradients,
    sum_over_ranks,
)
from simulators.training.progress import Progress
from simulators.training.sizing import sized_config
from simulators.wording import plural

log = logging.getLogger(__name__)

DEFAULT_MAX_MINUTES = 60.0
"""Training time budget when none is given: an hour, then the best model so far is kept."""
ROW_TOKENS = 512
"""Tokens of the packed rows `TrainConfig.batch_size` counts."""
RESUMABLE_CHANGES = ("epochs", "max_steps", "max_minutes", "patience")
"""TrainConfig fields `--resume` may change (the budget); any other difference is refused."""


@dataclass(frozen=True, kw_only=True)
class TrainConfig:
    """Hyperparameters of train-sim."""

    size: str = "small"
    """Network size (see simulators.lm.gpt2.MODEL_SIZES) when no base model is given."""
    base_model: str | None = None
    """'gpt2', another hub name or a local directory to start from pretrained GPT-2 weights."""
    init_sim: str | None = None
    """A simulator checkpoint directory to continue from (same catalog, profile vocabulary and
    step layout): its weights and simulator settings replace the fresh network's."""
    epochs: int = 20
    """Maximum passes over the training sessions."""
    max_minutes: float | None = DEFAULT_MAX_MINUTES
    """Stop after this much training time (then keep the best model); None: no time limit.
    Training also stops after `epochs`, `max_steps` or `patience` validations without
    improvement, whichever comes first."""
    batch_size: int = 16
    """Packed rows of 512 tokens per optimiser step (a longer context takes proportionally
    fewer rows, the same tokens per step)."""
    lr: float = 2e-3
    """Peak learning rate (linear warm-up, cosine decay)."""
    weight_decay: float = 0.01
    """AdamW weight decay."""
    dropout: float = 0.0
    """Training dropout on the backbone's block inputs and residual branches
    (`Backbone.dropout`); small real logs overfit within an epoch without it."""
    item_dropout: float | None = None
    """Chance an item token becomes <unk_item> in training (teaches cold start); None: the
    simulator config's (`SimulatorConfig.item_dropout`, 0.1 for a fresh network)."""
    ema_decay: float | None = None
    """Validate and save an exponential moving average of the weights with this decay per
    step (e.g. 0.9: about the last 10 steps) instead of the weights themselves; None: off.
    Small real logs overfit within a few hundred steps and their validation loss is noisy
    from step to step: the average smooths both (`WeightAverage`)."""
    warmup_steps: int = 100
    """Warm-up steps."""
    val_fraction: float = 0.1
    """Share of users held out for validation."""
    calibration_fraction: float = 0.0
    """Share of users held out of training to calibrate the saved model's engagement odds on
    (`simulators.training.calibration`: a Platt scaling saved as
    `SimulatorConfig.response_calibration`); drawn from the users not in validation, so the
    validation users stay the same. 0: no calibration."""
    eval_every: int = 200
    """Optimiser steps between validations (and checkpoints)."""
    eval_minutes: float | None = 5.0
    """Validate also when this much training time passed since the last validation (slow
    steps on a CPU still report a validation loss and keep the best model); None: by steps
    only."""
    patience: int = 5
    """Validations without improvement before stopping early."""
    seed: int = 0
    """Seed of the split, the batch order, item dropout and the initial weights."""
    bf16: bool = False
    """bfloat16 autocast (fast on recent CPUs and GPUs)."""
    context_length: int | None = None
    """Tokens per user context (GPT-2 n_positions); None: sized from the logs' longest slate
    (`simulators.slate_fit.context_for_slates`: 512, or more for slates of over about 80 items)."""
    max_steps: int | None = None
    """Stop after this many optimiser steps (tests and smoke runs)."""
    session_summary: bool = False
    """Switch the session-summary input channel on (see SimulatorConfig.session_summary): for a
    fresh network, or for one continued with `init_sim` (its new embedding starts at zero)."""
    text_encoder: str = "auto"
    """How a fresh network reads item titles (`simulators.text_encoder`): `hashed` words,
    `minilm` (also the sentence embedding; needs the `text` extra) or `auto` (minilm when the
    extra is installed and some item has a title, else hashed)."""
    max_population: int = 50_000
    """Training users' profiles kept in the checkpoint (the env's episodes draw from them); a
    seeded sample when there are more. With `dp`: this many synthetic profiles instead."""
    pretrained_text: bool = True
    """With `base_model`: also read titles and profile tokens with the base's tokenizer and
    pretrained token embeddings (`simulators.lm.pretrained_text`; needs the tokenizer saved
    with the base)."""
    lora_rank: int | None = None
    """With `base_model`: train LoRA adapters of this rank instead of every weight
    (`simulators.training.lora`; needs the `lora` extra). None: full fine-tuning."""
    lora_alpha: int | None = None
    """LoRA alpha (updates scaled by alpha / rank); None: 2 * lora_rank."""
    dp: DPConfig | None = None
    """User-level differential privacy (`simulators.training.dp`; needs the `dp` extra); None:
    ordinary training. One process only."""

    def __post_init__(self) -> None:
        """Validate ranges."""
        for name in ("epochs", "batch_size", "eval_every", "patience", "warmup_steps"):
            if getattr(self, name) < (0 if name == "warmup_steps" else 1):
                raise ValueError(f"{name} must be positive, got {getattr(self, name)}")
        if not 0.0 <= self.dropout < 1.0:
            raise ValueError(f"dropout must be in [0, 1), got {self.dropout}")
        if self.item_dropout is not None and not 0.0 <= self.item_dropout < 1.0:
            raise ValueError(f"item_dropout must be in [0, 1), got {self.item_dropout}")
        if self.weight_decay < 0.0:
            raise ValueError(f"weight_decay must be >= 0, got {self.weight_decay}")
        if self.ema_decay is not None and not 0.0 < self.ema_decay < 1.0:
            raise ValueError(f"ema_decay must be in (0, 1) (or None: off), got {self.ema_decay}")
        if self.max_population < 1:
            raise ValueError(f"max_population must be >= 1, got {self.max_population}")
        if not 0.0 < self.val_fraction < 1.0:
            raise ValueError(f"val_fraction must be in (0, 1), got {self.val_fraction}")
        if not 0.0 <= self.calibration_fraction < 1.0 - self.val_fraction:
            raise ValueError(
                f"calibration_fraction must be in [0, {1.0 - self.val_fraction:g}) (below 1 - "
                f"val_fraction), got {self.calibration_fraction}"
            )
        if self.dp is not None and self.calibration_fraction > 0:
            raise ValueError(
                "--calibration-fraction cannot be combined with --dp-epsilon: the calibration "
                "is fitted on the calibration users' logs without noise"
            )
        if self.eval_minutes is not None and not self.eval_minutes > 0:
            raise ValueError(f"eval_minutes must be > 0 (or None), got {self.eval_minutes}")
        if self.max_minutes is not None and not self.max_minutes > 0:
            raise ValueError(f"max_minutes must be > 0 (or None: no limit), got {self.max_minutes}")
        if self.text_encoder not in ("auto", *TEXT_ENCODERS):
            raise ValueError(
                f"text_encoder must be auto or one of {list(TEXT_ENCODERS)}, got "
                f"{self.text_encoder!r}"
            )
        if self.context_length is not None and self.context_length < 32:
            raise ValueError(f"context_length must be >= 32, got {self.context_length}")
        check_lora_settings(self.lora_rank, self.lora_alpha, self.base_model)
        if self.dp is not None and self.lora_rank is not None:
            raise ValueError(
                "--dp-epsilon and --lora-rank cannot be combined yet: DP's per-user gradients "
                "cover every weight; use one of them"
            )


def lr_at(step: int, total: int, cfg: TrainConfig) -> float:
    """Linear warm-up then cosine decay to 10% (a pure function of the step: nothing to save)."""
    if step < cfg.warmup_steps:
        return cfg.lr * (step + 1) / cfg.warmup_steps
    frac = min(1.0, (step - cfg.warmup_steps) / max(1, total - cfg.warmup_steps))
    return cfg.lr * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * frac)))


class SimulatorTrainer:
    """Trains a UserLM on encoded sessions; see the module docstring."""

    def __init__(
        self,
        logs: InteractionLogs,
        out: str | Path,
        cfg: TrainConfig,
        sim_config: SimulatorConfig | None = None,
        progress: bool = True,
    ) -> None:
        """Encode the logs, split by user and build the model (nothing is trained yet)."""
        if cfg.dp is not None and launched_world_size() > 1:  # before any rank's work
            raise ValueError(
                f"--dp-epsilon trains in one process, not in {launched_world_size()} "
                "data-parallel ones (user-level DP-SGD is not data-parallel): run train-sim "
                "without accelerate launch"
            )
        self.cfg = cfg
        self.out = Path(out)
        self.progress = progress
        self.logs = logs
        self.logs_fingerprint = logs.fingerprint()
        """Content hash of the logs, saved with the training state (`--resume` checks it)."""
        longest = check_slates(logs, source=logs.source)  # the slate rule, before any work
        prefix = 1 + ProfileEncoder.from_users(logs.users).slots
        data = encode_logs(logs)
        self.data = data
        start = _load_init_sim(cfg, data, logs) if cfg.init_sim else None
        if start is not None:  # its settings; a given sim_config may only change the window
            window = (sim_config or start.sim_config).attention_window_steps
            # trained on its own odds; a calibration is fitted again (calibration_fraction)
            sim_config = replace(
                start.sim_config, attention_window_steps=window, response_calibration=None
            )
            start.model.sim_config = sim_config
        sim_config = sized_config(
            sim_config, cfg.context_length, cfg.text_encoder, logs, longest, prefix, start
        )
        if cfg.item_dropout is not None:
            sim_config = replace(sim_config, item_dropout=cfg.item_dropout)
            if start is not None:
                start.model.sim_config = sim_config
        if cfg.session_summary and not sim_config.session_summary:
            sim_config = replace(sim_config, session_summary=True)
            if start is not None:
                start.model.sim_config = sim_config
                start.model.add_session_summary(torch.from_numpy(item_category_index(logs.items)))
        if cfg.base_model and cfg.pretrained_text and start is None:
            sim_config = replace(sim_config, pretrained_text=base_source(cfg.base_model))
        self.sim_config = sim_config
        self.row_length = window_length(sim_config, prefix, longest)
        """Tokens of the packed rows: the context (recency attention: at least what the
        longest slate needs, see `simulators.slate_fit.window_length`)."""
        is_val = split_by_user(data.users, cfg.val_fraction, cfg.seed)
        is_cal = calibration_mask(data.users, is_val, cfg.calibration_fraction, cfg.seed)
        prefix = 1 + data.tokenizer.profile_slots
        self.prefix = prefix
        win = lambda idx: [
            w
            for i in idx
            for w in session_windows(
                data.sessions[i],
                self.row_length,
                self.sim_config.window_steps,
                prefix,
            )
        ]
        is_train = ~is_val & ~is_cal
        self.train_windows = win(np.nonzero(is_train)[0])
        self.val_windows = win(np.nonzero(is_val)[0])
        if not self.train_windows or not self.val_windows:
            raise ValueError("need sessions of at least two users to split training and validation")
        self.val_rows = pack_rows(
            self.val_windows, self.row_length, np.arange(len(self.val_windows))
        )
        cal_windows = win(np.nonzero(is_cal)[0])
        self.calibration_rows = pack_rows(cal_windows, self.row_length, np.arange(len(cal_windows)))
        """Packed rows of the calibration users (empty without `calibration_fraction`)."""
        self.calibration_users = len({u for u, c in zip(data.users, is_cal) if c})
        train_users = sorted({u for u, t in zip(data.users, is_train) if t})
        seen = np.zeros(data.tokenizer.num_items, dtype=bool)
        for s, t in zip(data.sessions, is_train):
            if t:
                seen[s.items[s.items >= 0]] = True
        if cfg.dp is not None:  # no per-item bit computed from the private logs
            seen[:] = True
        self.item_known = seen
        population = data.profiles[is_train]
        if len(population) > cfg.max_population:  # a seeded sample keeps checkpoints small
            pick = np.random.default_rng([cfg.seed, 7]).choice(
                len(population), cfg.max_population, replace=False
            )
            population = population[np.sort(pick)]
        if cfg.dp is not None:  # never the training users' profiles
            population = synthetic_population(data.profile_encoder, cfg.max_population, cfg.seed)
        self.population = population
        self.train_users = train_users
        torch.manual_seed(cfg.seed)
        if start is not None:
            self.model: UserLM = start.model.train()
            with torch.no_grad():  # items of either training set have learned embeddings
                self.model.item_known |= torch.from_numpy(seen)
        else:
            self.model = build_user_lm(
                data.tokenizer,
                logs.items,
                self.sim_config,
                cfg.size,
                cfg.base_model,
                item_known=seen,
            )
            if cfg.lora_rank:
                add_lora(self.model, cfg.lora_rank, cfg.lora_alpha)
        known = self.model.item_known.detach().cpu().numpy()
        unk = data.tokenizer.unk_item
        hide_unknown_items(self.val_rows, known, unk)
        hide_unknown_items(self.calibration_rows, known, unk)
        self.model.backbone.set_dropout(cfg.dropout)
        self.optimizer = torch.optim.AdamW(
            trainable_parameters(self.model), lr=cfg.lr, weight_decay=cfg.weight_decay
        )
        self.rows_per_step = max(1, cfg.batch_size * ROW_TOKENS // max(ROW_TOKENS, self.row_length))
        """Packed rows per optimiser step (`TrainConfig.batch_size` rows of 512 tokens)."""
        self.rows_per_eval_batch = max(1, 32 * ROW_TOKENS // max(ROW_TOKENS, self.row_length))
        """Packed rows per forward of validation and calibration (32 rows of 512 tokens)."""
        self.accelerator = make_accelerator(cfg.bf16)
        self.rank = self.accelerator.process_index
        self.world = self.accelerator.num_processes
        self.model, self.optimizer = self.accelerator.prepare(self.model, self.optimizer)
        self.average = (
            WeightAverage(trainable_parameters(self.model), cfg.ema_decay)
            if cfg.ema_decay is not None
            else None
        )
        """The moving average of the weights that is validated and saved (`ema_decay`)."""
        self.state: dict[str, Any] = {
            "step": 0,
            "epoch": 0,
            "batch_in_epoch": 0,
            "best_val": None,
            "bad_evals": 0,
            "history": [],
            "train_seconds": 0.0,
            "done": False,
        }
        self.dp: UserLevelDPSGD | None = None
        """The DP-SGD mechanism (with `cfg.dp`): it computes every step's gradient."""
        if cfg.dp is None:
            self.steps_per_epoch = math.ceil(len(self._epoch_rows(0)) / self.rows_per_step)
        else:
            self.dp = self._make_dp(cfg.dp, is_val)
            self.steps_per_epoch = self.dp.steps_per_epoch
        self._progress = Progress(0, cfg.max_minutes)
        """Progress of the running `train` call (smoothed loss, rate; see `progress_line`)."""

    def _make_dp(self, dp: DPConfig, is_val: np.ndarray) -> UserLevelDPSGD:
        """The DP-SGD mechanism over the training users' windows, planned for the step budget."""
        by_user: dict[str, list[dict[str, np.ndarray]]] = {}
        for s, u, v in zip(self.data.sessions, self.data.users, is_val):
            if not v:
                by_user.setdefault(u, []).extend(
                    session_windows(s, self.row_length, self.sim_config.window_steps, self.prefix)
                )
        users = [by_user[u] for u in sorted(by_user)]
        per_epoch = math.ceil(len(users) / dp.expected_users)
        return UserLevelDPSGD(
            dp,
            users,
            self.row_length,
            self.cfg.max_steps or self.cfg.epochs * per_epoch,
            self.sim_config.item_dropout,
            self.data.tokenizer.unk_item,
        )

    # ------------------------------------------------------------------ data
    def _epoch_rows(self, epoch: int) -> list[dict[str, np.ndarray]]:
        order = np.random.default_rng([self.cfg.seed, epoch]).permutation(len(self.train_windows))
        return pack_rows(self.train_windows, self.row_length, order)

    def _dropout_items(self, batch: dict[str, torch.Tensor], step: int) -> dict[str, torch.Tensor]:
        p = self.sim_config.item_dropout
        if p <= 0:
            return batch
        gen = torch.Generator().manual_seed(self.cfg.seed * 1_000_003 + step)
        return drop_items(batch, p, self.data.tokenizer.unk_item, gen)

    @property
    def is_main_process(self) -> bool:
        """True in the one process (rank 0) that writes checkpoints, logs and summaries."""
        return bool(self.accelerator.is_main_process)

    # ------------------------------------------------------------------ evaluation
    @torch.no_grad()
    def validate(self) -> dict[str, float]:
        """Mean NLL per user token on the validation users (and its response/leave parts)."""
        model = self.accelerator.unwrap_model(self.model)
        model.eval()
        tot = resp = leave = n = 0.0
        n_resp = 0.0
        dev = self.accelerator.device
        per = self.rows_per_eval_batch
        for j, i in enumerate(range(0, len(self.val_rows), per)):
            if j % self.world != self.rank:  # data-parallel: every rank its share of batches
                continue
            batch = {k: v.to(dev) for k, v in collate(self.val_rows[i : i + per]).items()}
            with self.accelerator.autocast():
                _, r, lv, cnt = packed_loss(model, batch)
            resp += float(r)
            leave += float(lv)
            n += float(cnt)
            n_resp += float((batch["target_kind"] == 1).sum())
        resp, leave, n, n_resp = sum_over_ranks(self.accelerator, [resp, leave, n, n_resp])
        model.train()
        tot = (resp + leave) / max(n, 1)
        return {
            "val_loss": tot,
            "val_response_nll": resp / max(n_resp, 1),
            "val_leave_nll": leave / max(n - n_resp, 1),
        }

    # ------------------------------------------------------------------ checkpoints
    @property
    def state_path(self) -> Path:
        """The training-state file."""
        return self.out / "training" / "state.safetensors"

    def save_state(self) -> None:
        """Write weights, AdamW moments and counters to one safetensors file (atomically).

        Data-parallel: the main process writes; every rank returns once the file is there.
        """
        if not self.is_main_process:
            self.accelerator.wait_for_everyone()
            return
        model = self.accelerator.unwrap_model(self.model)
        tensors = {
            f"model.{k}": v.detach().cpu().contiguous() for k, v in model.state_dict().items()
        }
        opt = self.optimizer.state_dict()
        for pid, st in opt["state"].items():
            for key, val in st.items():
                tensors[f"optim.{pid}.{key}"] = torch.as_tensor(val).detach().cpu().contiguous()
        if self.average is not None:
            for i, avg in enumerate(self.average.averages):
                tensors[f"ema.{i}"] = avg.detach().cpu().contiguous()
        meta = {
            "state": json.dumps(self.state),
            "train_config": json.dumps(asdict(self.cfg)),
            "sim_config": json.dumps(self.sim_config.to_dict()),
            "logs_fingerprint": self.logs_fingerprint,
            **({"dp": json.dumps(self.dp.state_dict())} if self.dp is not None else {}),
            "param_groups": json.dumps(
                [{k: v for k, v in g.items() if k != "params"} for g in opt["param_groups"]]
            ),
        }
        atomic_write(self.state_path, lambda p: save_file(tensors, p, metadata=meta))
        self.accelerator.wait_for_everyone()

    def load_state(self) -> None:
        """Restore weights, AdamW moments and counters written by save_state."""
        path = self.state_path
        if not path.exists():
            raise FileNotFoundError(
                f"{path}: no training state to resume from (train without --resume first)"
            )
        try:
            with safe_open(str(path), framework="pt") as f:
                meta = f.metadata()
                tensors = {k: f.get_tensor(k) for k in f.keys()}
        except Exception as exc:
            raise ValueError(f"{path}: corrupt or truncated training state ({exc})") from None
        self._check_resume(path, meta)
        model = self.accelerator.unwrap_model(self.model)
        model.load_state_dict(
            {k[6:]: v for k, v in tensors.items() if k.startswith("model.")}, strict=True
        )
        opt = self.optimizer.state_dict()
        state: dict[int, dict[str, torch.Tensor]] = {}
        for k, v in tensors.items():
            if k.startswith("optim."):
                _, pid, key = k.split(".", 2)
                state.setdefault(int(pid), {})[key] = v
        groups = json.loads(meta["param_groups"])
        for g, saved in zip(opt["param_groups"], groups):
            g.update(saved)
        opt["state"] = state
        self.optimizer.load_state_dict(opt)
        if self.average is not None:
            self.average.load([tensors[f"ema.{i}"] for i in range(len(self.average.averages))])
        self.state = json.loads(meta["state"])
        if self.dp is not None:
            self.dp.load_state_dict(json.loads(meta["dp"]))

    def _check_resume(self, path: Path, meta: dict[str, str]) -> None:
        """Refuse to continue a run with other settings or other logs, saying what differs.

        Only the budget may change: epochs, max_steps, max_minutes, patience.
        """
        try:
            saved = json.loads(meta["train_config"])
            saved_sim = json.loads(meta.get("sim_config", "null"))
        except (KeyError, json.JSONDecodeError):
            raise ValueError(f"{path}: the training state has no readable settings") from None
        now = asdict(self.cfg)
        # a setting added after the run started counts as its default (the run trained with it)
        added = {
            f.name: f.default
            for f in fields(TrainConfig)
            if f.name not in saved and f.default is not MISSING
        }
        saved = {**added, **saved}
        diffs = [
            f"{key.replace('_', '-')}: saved {saved.get(key)!r}, now {value!r}"
            for key, value in now.items()
            if key not in (*RESUMABLE_CHANGES, "dp") and saved.get(key) != value
        ]
        diffs += _dp_differences(saved.get("dp"), self.cfg.dp, meta.get("dp"), self.dp)
        if saved_sim is not None and saved_sim != self.sim_config.to_dict():
            keys = sorted(
                k for k in saved_sim if saved_sim.get(k) != self.sim_config.to_dict().get(k)
            )
            diffs += [f"simulator {k}: saved {saved_sim.get(k)!r}" for k in keys]
        fp = meta.get("logs_fingerprint")
        if fp is not None and fp != self.logs_fingerprint:
            diffs.append("the logs differ from the ones this run was trained on")
        if diffs:
            raise ValueError(
                f"--resume of {self.out}: the run was started with other settings ("
                + "; ".join(diffs)
                + "); resume with the same settings and logs, or train into another --out"
            )

    def save_simulator(self, directory: Path, extra: dict[str, Any]) -> GPT2UserSimulator | None:
        """Save the current weights as a loadable simulator checkpoint (the main process)."""
        if not self.is_main_process:
            return None
        model = self.accelerator.unwrap_model(self.model)
        sim = GPT2UserSimulator(
            merged(model),  # LoRA: adapters merged into a copy, a plain checkpoint
            self.data.tokenizer,
            self.data.profile_encoder,
            self.population,
            self.logs.items[
                [c for c in ("item_id", "title", "category", "price") if c in self.logs.items]
            ],
            extra=extra,
            device=self.accelerator.device,  # wrapping must not move the training weights
            capacity=1,
        )
        sim.save_pretrained(directory)
        model.train()
        return sim

    # ------------------------------------------------------------------ training
    def train(self, resume: bool = False, stop_after_steps: int | None = None) -> dict[str, Any]:
        """Run (or continue) training; returns the final state with the best validation loss.

        The main process holds the output's write lock throughout (`simulators.atomic`): a
        second run into the same OUT fails at once instead of overwriting this one.

        Raises:
            simulators.atomic.OutputBusyError: another process is writing OUT.
        """
        lock = (
            exclusive_output(self.out)
            if self.accelerator.is_main_process
            else contextlib.nullcontext()
        )
        with lock:
            return self._train(resume, stop_after_steps)

    def _train(self, resume: bool, stop_after_steps: int | None) -> dict[str, Any]:
        cfg = self.cfg
        if resume:
            self.load_state()
        total = cfg.max_steps or cfg.epochs * self.steps_per_epoch
        if self.state["done"] and resume and self._budget_left(total):
            self.state["done"] = False  # resumed with a larger budget: keep training
            self.state["bad_evals"] = 0
        if self.state["done"]:
            return self.state
        model = self.model
        model.train()
        dev = self.accelerator.device
        tb = self.out / "training" / "tb"
        if not resume and self.is_main_process:  # a fresh run: the curves it replaces go
            for old in tb.glob("events.out.tfevents.*"):
                old.unlink()
        writer = _summary_writer(tb) if self.is_main_process else None
        bar = progress_bar(
            total,
            "train-sim",
            "steps",
            # a bar on a terminal; elsewhere the logged progress lines (step, loss, ETA) instead
            enabled=self.progress and self.is_main_process and sys.stderr.isatty(),
            initial=self.state["step"],
        )
        t_start = time.time() - self.state["train_seconds"]
        steps_this_call = 0
        stop = False
        self._progress = Progress(total, cfg.max_minutes)
        while self.state["epoch"] < cfg.epochs and not stop:
            rows = self._epoch_rows(self.state["epoch"]) if self.dp is None else []
            for b in range(self.state["batch_in_epoch"], self.steps_per_epoch):
                step = self.state["step"]
                for g in self.optimizer.param_groups:
                    g["lr"] = lr_at(step, total, cfg)
                self.optimizer.zero_grad(set_to_none=True)
                if self.dp is not None:  # the private gradient of sampled users (`dp`)
                    net = self.accelerator.unwrap_model(model)
                    loss = torch.tensor(
                        self.dp.compute_gradients(net, step, self.accelerator.autocast)
                    )
                else:
                    chunk = rows[b * self.rows_per_step : (b + 1) * self.rows_per_step]
                    if not chunk:
                        break
                    full = self._dropout_items(collate(chunk), step)
                    batch = {k: v.to(dev) for k, v in shard(full, self.rank, self.world).items()}
                    loss = backward_on_shard(self.accelerator, model, batch, full)
                    sum_gradients(self.accelerator, trainable_parameters(model))
                    self.accelerator.clip_grad_norm_(model.parameters(), 1.0)
                self.optimizer.step()
                if self.average is not None:
                    self.average.update(step)
                self.state["step"] = step + 1
                self.state["batch_in_epoch"] = b + 1
                self.state["train_seconds"] = time.time() - t_start
                bar.update(1)
                if math.isfinite(loss.item()):  # NaN: a DP step that sampled no user
                    self._progress.step(step, loss.item())
                bar.set_postfix_str(self.progress_line(short=True))
                if writer is not None:
                    writer.add_scalar("train/loss", loss.item(), step)
                if self._progress.due():
                    log.info("train-sim %s", self.progress_line())
                steps_this_call += 1
                out_of_time = (
                    cfg.max_minutes is not None
                    and self.state["train_seconds"] > 60 * cfg.max_minutes
                )
                if cfg.max_minutes is not None and self.world > 1:  # every rank stops together
                    out_of_time = sum_over_ranks(self.accelerator, [float(out_of_time)])[0] > 0
                last = self.state["step"] >= total or out_of_time
                since = self.state["train_seconds"] - self._last_eval_seconds()
                due = cfg.eval_minutes is not None and since >= 60 * cfg.eval_minutes
                if self.state["step"] % cfg.eval_every == 0 or last or due:
                    if self._evaluate(writer):
                        stop = True
                        self.state["stop_reason"] = (
                            f"{plural(cfg.patience, 'validation')} without improvement (--patience)"
                        )
                    self.save_state()
                if last and not stop:
                    stop = True
                    self.state["stop_reason"] = (
                        f"the time budget of {cfg.max_minutes:g} minutes (--max-minutes)"
                        if out_of_time
                        else f"{plural(total, 'optimiser step')} (--max-steps)"
                        if cfg.max_steps
                        else _epochs_done(cfg.epochs, total)
                    )
                if stop_after_steps is not None and steps_this_call >= stop_after_steps:
                    bar.close()
                    return self.state  # simulate an interruption (tests)
                if stop:
                    break
            if not stop:
                self.state["epoch"] += 1
                self.state["batch_in_epoch"] = 0
                if self.state["epoch"] >= cfg.epochs:
                    self.state["stop_reason"] = _epochs_done(cfg.epochs, self.state["step"])
        if not self.state["history"] or self.state["history"][-1]["step"] != self.state["step"]:
            self._evaluate(writer)  # the epochs ran out between two validations
        self.state["done"] = True
        self.save_state()
        bar.close()
        if writer is not None:
            writer.close()
        return self.state

    def _privacy_extra(self) -> dict[str, Any]:
        """The checkpoint's `privacy` record (with DP): epsilon of every step taken so far."""
        if self.dp is None:
            return {}
        return {"privacy": self.dp.record(self.state["step"], self.state.get("best_step"))}

    def privacy(self) -> dict[str, Any] | None:
        """Where the privacy budget stands (None without DP)."""
        return self._privacy_extra().get("privacy")

    def _last_eval_seconds(self) -> float:
        """Training time at the last validation (0 before any)."""
        return float(self.state["history"][-1]["seconds"]) if self.state["history"] else 0.0

    def progress_line(self, short: bool = False) -> str:
        """Where training stands (`simulators.training.progress.Progress.line`)."""
        return self._progress.line(self.state, short)

    def _budget_left(self, total: int) -> bool:
        """True while steps, epochs and minutes all remain."""
        minutes = self.cfg.max_minutes
        return (
            self.state["step"] < total
            and self.state["epoch"] < self.cfg.epochs
            and (minutes is None or self.state["train_seconds"] < 60 * minutes)
        )

    def _evaluate(self, writer: Any) -> bool:
        """Validate, keep the best model; True when patience is exhausted.

        With `ema_decay` the averaged weights are validated and saved; training goes on from
        the weights themselves.
        """
        swap = self.average.swapped() if self.average is not None else contextlib.nullcontext()
        with swap:
            return self._evaluate_current(writer)

    def _evaluate_current(self, writer: Any) -> bool:
        metrics = self.validate()
        step = self.state["step"]
        self.state["history"].append(
            {"step": step, **metrics, "seconds": round(self.state["train_seconds"], 1)}
        )
        if writer is not None:
            for k, v in metrics.items():
                writer.add_scalar(f"val/{k}", v, step)
        best = self.state["best_val"]
        if best is None or metrics["val_loss"] < best - 1e-6:
            self.state["best_val"] = metrics["val_loss"]
            self.state["best_step"] = step
            self.state["bad_evals"] = 0
            calibration = self.calibrate()
            self.state["calibration"] = calibration  # of the kept model (--json, --resume)
            with self._calibrated(calibration):
                self.save_simulator(
                    self.out,
                    extra={
                        "training": {
                            "best_val_loss": metrics["val_loss"],
                            **{k: v for k, v in metrics.items()},
                            "step": step,
                            "train_config": asdict(self.cfg),
                            "log_meta": self.logs.meta,
                            "train_users": len(self.train_users),
                            "train_windows": len(self.train_windows),
                            **({"calibration": calibration} if calibration else {}),
                        },
                        **self._privacy_extra(),
                    },
                )
        else:
            self.state["bad_evals"] += 1
            if self.dp is not None and self.is_main_process:  # the kept one depends on this step
                update_extra(self.out, self._privacy_extra())
        log.info("train-sim %s", self.progress_line())
        return self.state["bad_evals"] >= self.cfg.patience

    def calibrate(self) -> dict[str, Any] | None:
        """Fit the engagement calibration of the current weights on the calibration users.

        Returns:
            None without calibration users. Otherwise the record saved with the checkpoint:
            `fitted`, `users`, `responses`, and either slope, intercept and the engagement
            log-loss before and after, or the `reason` it could not be fitted (all engaged, all
            skipped, or odds that do not rank the responses: the model is then saved
            uncalibrated, with a warning).
        """
        if not self.calibration_rows:
            return None
        model = self.accelerator.unwrap_model(self.model)
        z, engaged = engagement_evidence(
            model,
            self.calibration_rows,
            self.rows_per_eval_batch,
            self.accelerator.device,
            self.accelerator.autocast,
        )
        users = plural(self.calibration_users, "user")
        record: dict[str, Any] = {"users": self.calibration_users, "responses": len(z)}
        try:
            slope, intercept = fit_platt(z, engaged)
        except ValueError as e:
            log.warning(
                "train-sim: step %d saved without calibration on %s: %s (more calibration "
                "users or more training may help)",
                self.state["step"],
                users,
                e,
            )
            return {"fitted": False, "reason": str(e), **record}
        before = engagement_log_loss(z, engaged)
        after = engagement_log_loss(z, engaged, slope, intercept)
        log.info(
            "train-sim calibration on %s (%d responses): slope %.3f, intercept %.3f, "
            "engagement log-loss %.4f -> %.4f",
            users,
            len(z),
            slope,
            intercept,
            before,
            after,
        )
        return {
            "fitted": True,
            "slope": slope,
            "intercept": intercept,
            **record,
            "log_loss_before": before,
            "log_loss_after": after,
        }

    @contextlib.contextmanager
    def _calibrated(self, calibration: dict[str, Any] | None) -> Iterator[None]:
        """The network predicts through `calibration` for the duration (to save it)."""
        model = self.accelerator.unwrap_model(self.model)
        kept = model.sim_config
        if calibration is not None and calibration["fitted"]:
            model.sim_config = replace(
                kept, response_calibration=(calibration["slope"], calibration["intercept"])
            )
        try:
            yield
        finally:
            model.sim_config = kept


class WeightAverage:
    """An exponential moving average of parameters (Polyak averaging), kept on their device.

    The decay at step t is min(decay, (1 + t) / (10 + t)), so the first steps' weights (a
    random start) fade fast. The average is float32 whatever the parameters' autocast.
    """

    def __init__(self, params: Any, decay: float) -> None:
        """Start the average at the parameters' current values."""
        self.params = [p for p in params]
        self.decay = decay
        self.averages = [p.detach().clone().float() for p in self.params]

    @torch.no_grad()
    def update(self, step: int) -> None:
        """Fold the parameters after optimiser step `step` (0-based) into the average."""
        d = min(self.decay, (1 + step) / (10 + step))
        for avg, p in zip(self.averages, self.params):
            avg.lerp_(p.detach().float(), 1.0 - d)

    def load(self, averages: list[torch.Tensor]) -> None:
        """Restore a saved average (`--resume`)."""
        for avg, saved in zip(self.averages, averages, strict=True):
            avg.copy_(saved)

    @contextlib.contextmanager
    def swapped(self) -> Any:
        """The average in the parameters for the duration (to validate and save it)."""
        kept = [p.detach().clone() for p in self.params]
        with torch.no_grad():
            for p, avg in zip(self.params, self.averages):
                p.copy_(avg)
        try:
            yield
        finally:
            with torch.no_grad():
                for p, k in zip(self.params, kept):
                    p.copy_(k)


def check_lora_settings(rank: int | None, alpha: int | None, base_model: str | None) -> None:
    """Refuse LoRA settings that cannot work, naming the flag.

    Raises:
        ValueError: a rank below 1, a rank without a base model, or an alpha without a rank or
            not above 0.
    """
    if rank is not None and rank < 1:
        raise ValueError(f"--lora-rank must be >= 1, got {rank}")
    if rank is not None and not base_model:
        raise ValueError(
            "--lora-rank needs --base-model: LoRA adapts a pretrained network's frozen blocks "
            "(a fresh network trains all its weights)"
        )
    if alpha is not None and (rank is None or not alpha > 0):
        raise ValueError(f"--lora-alpha must be > 0 and comes with --lora-rank, got {alpha}")


def _dp_differences(
    saved_cfg: dict | None,
    now_cfg: DPConfig | None,
    saved_state: str | None,
    mechanism: UserLevelDPSGD | None,
) -> list[str]:
    """Why `--resume` cannot continue with these DP settings (empty: it can)."""
    now = None if now_cfg is None else now_cfg.to_dict()
    if saved_cfg is None and now is None:
        return []
    if saved_cfg is None or now is None:
        was = "with" if saved_cfg is not None else "without"
        return [f"the run was trained {was} --dp-epsilon"]
    diffs = [
        f"dp-{k.replace('_', '-')}: saved {saved_cfg.get(k)!r}, now {v!r}"
        for k, v in now.items()
        if saved_cfg.get(k) != v
    ]
    if mechanism is not None and saved_state is not None:
        diffs += mechanism.resume_differences(json.loads(saved_state))
    return diffs


def _epochs_done(epochs: int, steps: int) -> str:
    """The stop reason when the passes over the data ran out."""
    passes = "1 pass" if epochs == 1 else f"{epochs} passes"
    return f"{passes} over the data (--epochs), {plural(steps, 'optimiser step')}"


def _summary_writer(path: Path) -> Any:
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError:  # tensorboard is a dependency, but keep training alive without it
        return None
    return SummaryWriter(str(path))


def _load_init_sim(cfg: TrainConfig, data: SessionData, logs: InteractionLogs) -> GPT2UserSimulator:
    """The checkpoint of `--init-sim`, checked against the logs it is to continue on."""
    if cfg.base_model:
        raise ValueError("--init-sim and --base-model are exclusive: pick one starting point")
    assert cfg.init_sim is not None  # called only with --init-sim
    sim = GPT2UserSimulator.from_pretrained(cfg.init_sim)
    if sim.tokenizer.to_dict() != data.tokenizer.to_dict():
        raise ValueError(
            f"--init-sim {cfg.init_sim}: its vocabulary (profile tokens, {sim.num_items} items) "
            f"differs from the logs' ({data.tokenizer.num_items} items); continue only on logs "
            "of the same catalog and profile fields"
        )
    ids = [str(i) for i in sim.items_table()["item_id"]]
    if ids != [str(i) for i in logs.items["item_id"]]:
        raise ValueError(f"--init-sim {cfg.init_sim}: its catalog's item ids differ from the logs'")
    return sim
